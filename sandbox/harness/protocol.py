"""Framing between the host and the supervisor inside a sandbox (stdlib only; used on both sides).

A frame is a 4-byte big-endian length, then a JSON object. Frames from the supervisor carry an
HMAC keyed by a secret the host sends in its first frame, so that nothing a program writes can be
taken for a supervisor message, even if it found a way onto the supervisor's stdout.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os as _os
import struct
from typing import Any, BinaryIO

HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 64 * 1024 * 1024


class FrameError(Exception):
    """A frame was truncated, oversized, malformed or failed authentication."""


def pack(message: dict[str, Any], key: bytes | None = None) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    if key is not None:
        body = _sign(body, key) + body
    return HEADER.pack(len(body)) + body


def authenticated(body: bytes, key: bytes) -> bytes:
    """The JSON text of a signed frame body; ``FrameError`` unless its HMAC is right."""
    mac, body = body[:64], body[64:]
    if not hmac.compare_digest(mac, _sign(body, key)):
        raise FrameError("frame failed authentication")
    return body


def unpack(body: bytes, key: bytes | None = None) -> dict[str, Any]:
    if key is not None:
        body = authenticated(body, key)
    try:
        message = json.loads(body)
    except ValueError as exc:
        raise FrameError(f"frame is not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise FrameError("frame is not a JSON object")
    return message


def frame_length(header: bytes) -> int:
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
    return length


def read_frame(stream: BinaryIO, key: bytes | None = None) -> dict[str, Any] | None:
    """Read one frame from a blocking stream; None at a clean end of stream."""
    header = _read_exact(stream, HEADER.size)
    if header is None:
        return None
    body = _read_exact(stream, frame_length(header))
    if body is None:
        raise FrameError("stream ended inside a frame")
    return unpack(body, key)


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    chunks, remaining = [], size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            if remaining == size:
                return None
            raise FrameError("stream ended inside a frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _sign(body: bytes, key: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).hexdigest().encode()


# -- frames on raw file descriptors (pipes inside the sandbox) ------------------------------------
def write_frame_fd(fd: int, body: bytes) -> None:
    """Write one frame; blocks until the reader has taken it (pipes hold 64 KiB)."""
    data = memoryview(HEADER.pack(len(body)) + body)
    while data:
        written = _os.write(fd, data)
        data = data[written:]


class FrameReader:
    """Reads frames from a file descriptor; refuses frames over ``max_bytes`` without reading them whole."""

    def __init__(self, fd: int, max_bytes: int) -> None:
        self.fd, self.max_bytes = fd, max_bytes
        self._buffer = bytearray()

    def read(self) -> bytes | None:
        """The next frame's body; None at a clean end of stream; ``FrameError`` otherwise."""
        if not self._fill(HEADER.size):
            if self._buffer:
                raise FrameError("stream ended inside a frame header")
            return None
        (length,) = HEADER.unpack(self._buffer[:HEADER.size])
        if length > self.max_bytes:
            raise FrameError(f"a frame of {length} bytes exceeds the limit of {self.max_bytes}")
        if not self._fill(HEADER.size + length):
            raise FrameError("stream ended inside a frame")
        body = bytes(self._buffer[HEADER.size:HEADER.size + length])
        del self._buffer[:HEADER.size + length]
        return body

    def _fill(self, size: int) -> bool:
        while len(self._buffer) < size:
            chunk = _os.read(self.fd, max(size - len(self._buffer), 65536))
            if not chunk:
                return False
            self._buffer += chunk
        return True
