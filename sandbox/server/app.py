"""The ASGI application: one FastAPI app, the surfaces mounted from a registry, a gate in front.

FastAPI on uvicorn: request and response models are pydantic (as the rest of the service), the
OpenAPI schema is served at /openapi.json (and /docs), and SandboxFusion's own server is FastAPI too,
so its 422 answers for a bad request have the same shape here.

The gate: a bearer token (``Authorization: Bearer``), Judge0's ``X-Auth-Token``, or, for clients that
cannot send headers (the SandboxFusion SDK, verl), the token as a path prefix ``/token/<token>/...``.
Without a configured token only a loopback bind is allowed (``serve`` refuses anything else). Bodies
are bounded before any of them is parsed.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from sandbox.client import Client
from sandbox.server import judge0, native, sandboxfusion
from sandbox.server.core import Grouper, Service

__all__ = ["ServeConfig", "create_app", "SURFACES", "check_bind"]

OPEN_PATHS = frozenset({"/v1/ping", "/healthz", "/readyz"})   # answered without a token (health checks)
_TOKEN_PREFIX = re.compile(r"^/token/([^/]+)(/.*)$")


class ServeConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    token: str | None = Field(default=None, min_length=16, description="required of every caller when set")
    max_body_bytes: int = Field(default=8 << 20, ge=1024, description="larger request bodies get 413")
    group_window_s: float = Field(default=0.03, ge=0, le=1, description="how long requests for one program gather")
    group_max_cases: int = Field(default=24, ge=1, le=1000, description="cases of one grouped job")
    max_threads: int = Field(default=256, ge=4, le=4096, description="jobs waiting on the queue at once")


# The surfaces: a name -> a function adding its routes to the app. A new surface is a new entry.
SURFACES: dict[str, Callable[[FastAPI, Service, Grouper, ServeConfig], None]] = {
    "native": native.mount,
    "sandboxfusion": sandboxfusion.mount,
    "judge0": judge0.mount,
}


def check_bind(config: ServeConfig) -> None:
    """Refuse to listen beyond loopback without a token (``ValueError`` saying so)."""
    try:
        loopback = ipaddress.ip_address(config.host).is_loopback
    except ValueError:
        loopback = config.host == "localhost"
    if not loopback and not config.token:
        raise ValueError(f"refusing to listen on {config.host} without a token: anyone who reaches it could run "
                         "programs. Set SANDBOX_SERVE_TOKEN (or --token-file), or bind 127.0.0.1")


def create_app(client: Client, config: ServeConfig) -> Any:
    service = Service(client, config.max_threads)
    grouper = Grouper(service, config.group_window_s, config.group_max_cases)
    app = FastAPI(title="sandbox-exec", version="0.1.0",
                  description="Untrusted programs judged in gVisor sandboxes, over a Redis queue. Surfaces: native "
                              "/v1, SandboxFusion (/run_code), Judge0 CE (/submissions).")
    app.state.service, app.state.grouper, app.state.config = service, grouper, config
    for mount in SURFACES.values():
        mount(app, service, grouper, config)
    return Gate(app, config.token, config.max_body_bytes)


class Gate:
    """ASGI middleware: the token, then the body's size, before the application sees anything."""

    def __init__(self, app: Any, token: str | None, max_body_bytes: int) -> None:
        self.app, self.token, self.max_body_bytes = app, token, max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, presented = scope["path"], None
        prefixed = _TOKEN_PREFIX.match(path)
        if prefixed:
            presented, path = prefixed.group(1), prefixed.group(2)
            scope = {**scope, "path": path, "raw_path": path.encode()}
        headers = {name.lower(): value for name, value in scope["headers"]}
        bearer = headers.get(b"authorization", b"").decode("latin-1")
        if bearer.lower().startswith("bearer "):
            presented = bearer[7:].strip()
        if b"x-auth-token" in headers:
            presented = headers[b"x-auth-token"].decode("latin-1").strip()
        if self.token and path not in OPEN_PATHS and not hmac.compare_digest((presented or "").encode(), self.token.encode()):
            await _answer(send, 401, {"error": "Authentication failed", "detail": "a valid token is required: "
                                      "Authorization: Bearer <token>, X-Auth-Token: <token>, or /token/<token>/<path>"})
            return
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await _answer(send, 413, {"detail": f"request body larger than {self.max_body_bytes} bytes"})
            return
        if scope["method"] in ("POST", "PUT", "PATCH"):
            body, more = bytearray(), True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > self.max_body_bytes:
                    await _answer(send, 413, {"detail": f"request body larger than {self.max_body_bytes} bytes"})
                    return
            receive = _replay(bytes(body), receive)
        await self.app(scope, receive, send)


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return dict(await receive())
    return replayed


async def _answer(send: Any, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
