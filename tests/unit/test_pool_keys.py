"""Sandboxes started for a key (a re-run round) serve that key only: never unkeyed jobs, never another key."""

from __future__ import annotations

from typing import Any

from sandbox import pool as pool_module
from sandbox.pool import SandboxPool


class FakeSandbox:
    def __init__(self, policy: Any, image: str) -> None:
        self.policy, self.image, self.runs, self.closed = policy, image, 0, False

    def close(self) -> None:
        self.closed = True


def make_pool(monkeypatch: Any) -> SandboxPool:
    pool = SandboxPool(client=None, owner="test", warm=True)  # type: ignore[arg-type]
    monkeypatch.setattr(pool, "_new", lambda policy, image: FakeSandbox(policy, image))
    monkeypatch.setattr(pool, "_warm_up", lambda policy, image: None)
    return pool


def test_keyed_sandboxes_serve_their_key_only(monkeypatch: Any) -> None:
    pool = make_pool(monkeypatch)
    warm = pool.acquire("p", "img")  # type: ignore[arg-type]
    pool.release(warm, recycle=False)
    first = pool.acquire("p", "img", "rerun-0")  # type: ignore[arg-type]
    assert first is not warm                     # a warm unkeyed sandbox never serves a key
    pool.release(first, recycle=False)
    assert pool.acquire("p", "img", "rerun-0") is first   # the same round reuses its own   # type: ignore[arg-type]
    pool.release(first, recycle=False)
    second = pool.acquire("p", "img", "rerun-1")  # type: ignore[arg-type]
    assert second is not first and second is not warm
    pool.release(second, recycle=False)
    assert pool.acquire("p", "img") is warm       # and unkeyed jobs never get a keyed one  # type: ignore[arg-type]


def test_old_keys_idle_sandboxes_are_closed(monkeypatch: Any) -> None:
    pool = make_pool(monkeypatch)
    started = []
    for round_number in range(pool_module.MAX_KEYS + 2):
        sandbox = pool.acquire("p", "img", f"k{round_number}")  # type: ignore[arg-type]
        pool.release(sandbox, recycle=False)
        started.append(sandbox)
    assert [s.closed for s in started] == [True, True] + [False] * pool_module.MAX_KEYS
    assert pool.idle_count() == pool_module.MAX_KEYS
