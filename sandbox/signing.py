"""Signed cache entries: only workers can make a cached result another caller will be answered with.

A cached result is stored as ``v1:<key id>:<HMAC-SHA256>:<result JSON>``; the MAC covers the Redis
key the entry is stored under as well as the body, so an entry cannot be copied to another job's key.
Workers hold the key and check every entry before they reuse it; an unsigned entry, one signed with
another key or one whose MAC does not match is a miss (the job runs), and is logged.

Where the key comes from: ``SANDBOX_CACHE_KEY`` (the same secret on every worker host; `sandbox
redis-acl` prints one), else a file (``Settings.cache_key_file``) made on first use with 32 random
bytes, mode 0600 in a 0700 directory, readable only by the worker's user. Clients never need it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import tempfile
from pathlib import Path

from sandbox.errors import InfrastructureError
from sandbox.settings import Settings

__all__ = ["CacheSigner", "load_signer"]

log = logging.getLogger(__name__)

VERSION = "v1"
KEY_MIN_BYTES = 32


class CacheSigner:
    def __init__(self, key: bytes) -> None:
        if len(key) < KEY_MIN_BYTES:
            raise InfrastructureError(f"the cache-signing key must have at least {KEY_MIN_BYTES} bytes")
        self._key = key
        self.key_id = hashlib.sha256(b"sandbox cache key id\n" + key).hexdigest()[:12]
        self._foreign_ids_seen: set[str] = set()

    def _mac(self, redis_key: str, body: str) -> str:
        return hmac.new(self._key, redis_key.encode() + b"\n" + body.encode(), hashlib.sha256).hexdigest()

    def seal(self, redis_key: str, body: str) -> str:
        """The entry to store under ``redis_key`` for ``body``."""
        return f"{VERSION}:{self.key_id}:{self._mac(redis_key, body)}:{body}"

    def open(self, redis_key: str, entry: bytes | str) -> str | None:
        """The body of a genuine entry; None (logged) for anything else."""
        try:
            text = entry.decode() if isinstance(entry, bytes) else entry
        except UnicodeDecodeError:
            text = ""
        version, _, rest = text.partition(":")
        key_id, _, rest = rest.partition(":")
        mac, _, body = rest.partition(":")
        if version != VERSION or not body:
            log.warning("cache entry %s is not signed: ignored (the job runs)", redis_key)
            return None
        if key_id != self.key_id:
            if key_id not in self._foreign_ids_seen:  # workers with different keys: a miss each time, logged once
                self._foreign_ids_seen.add(key_id)
                log.warning("cache entry %s is signed with another key (%s, this worker's is %s): ignored; give "
                            "every worker the same SANDBOX_CACHE_KEY to share the cache", redis_key, key_id, self.key_id)
            return None
        if not hmac.compare_digest(mac, self._mac(redis_key, body)):
            log.warning("cache entry %s has a signature that does not match: tampered with, ignored (the job runs)",
                        redis_key)
            return None
        return body


def load_signer(settings: Settings) -> CacheSigner:
    """The workers' signer: ``SANDBOX_CACHE_KEY`` if set, else the key file (made on first use)."""
    if settings.cache_key is not None:
        return CacheSigner(settings.cache_key.get_secret_value().encode())
    return CacheSigner(_key_file(settings.cache_key_file))


def _key_file(path: Path) -> bytes:
    try:
        return _read_private(path)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".cache-key.")  # mode 0600
        try:
            os.write(descriptor, secrets.token_hex(32).encode() + b"\n")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        try:
            os.link(temporary, path)  # atomic and never replaces: of workers starting at once, the first key wins
        except FileExistsError:
            pass
        finally:
            os.unlink(temporary)
    except OSError as exc:
        raise InfrastructureError(f"cannot create the cache-signing key file {path} ({exc}): set SANDBOX_CACHE_KEY "
                                  "or SANDBOX_CACHE_KEY_FILE to a writable place") from exc
    log.warning("made a new cache-signing key in %s (workers on other hosts need the same key to share the cache: "
                "SANDBOX_CACHE_KEY)", path)
    return _read_private(path)


def _read_private(path: Path) -> bytes:
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise InfrastructureError(f"cannot read the cache-signing key {path}: {exc}") from exc
    try:
        status = os.fstat(descriptor)
        if status.st_uid != os.geteuid() or status.st_mode & 0o077:
            raise InfrastructureError(f"the cache-signing key {path} must belong to this user and be readable by no one "
                                      f"else: chown {os.geteuid()} {path} && chmod 600 {path}")
        key = os.read(descriptor, 4096).strip()
    finally:
        os.close(descriptor)
    if len(key) < KEY_MIN_BYTES:
        raise InfrastructureError(f"the cache-signing key {path} is shorter than {KEY_MIN_BYTES} bytes: remove it "
                                  "(a new one is made) or write a longer one")
    return key
