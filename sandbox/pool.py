"""Warm sandboxes, kept per (policy, image) and handed out one batch at a time.

Starting a gVisor container costs most of a second; running one more sample in a warm one costs
tens of milliseconds. A sandbox goes back to the pool only if its supervisor found nothing a
sample left behind; it is replaced after ``max_runs`` batches, and a replacement is started in
the background so the next batch does not wait for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, defaultdict

import docker

from sandbox.container import Sandbox
from sandbox.policy import Policy

__all__ = ["SandboxPool"]

MAX_KEYS = 4  # keys (re-run rounds) whose idle sandboxes are kept

log = logging.getLogger(__name__)


class SandboxPool:
    def __init__(self, client: docker.DockerClient, owner: str, max_runs: int = 500, warm: bool = True) -> None:
        self.owner, self.max_runs, self.warm = owner, max_runs, warm
        self._client = client
        self._idle: dict[tuple[Policy, str, str], list[Sandbox]] = defaultdict(list)  # (policy, image, key)
        self._keys: dict[Sandbox, str] = {}                 # the key each sandbox was started for ("" for none)
        self._recent: OrderedDict[str, None] = OrderedDict()  # keys in the order they were last started for
        self._lock = threading.Lock()
        self._warming: list[threading.Thread] = []
        self._live: set[Sandbox] = set()
        self._closed = False
        self.started = 0

    @property
    def client(self) -> docker.DockerClient:
        return self._client

    def container_ids(self) -> list[str]:
        """Ids of every sandbox this pool owns now, idle or in use."""
        with self._lock:
            return [s.id for s in self._live if s.id]

    def acquire(self, policy: Policy, image: str, key: str = "") -> Sandbox:
        """An idle sandbox for (policy, image) and ``key``, or a new one. A keyed sandbox serves its key only (a job's
        ``sandbox_key``: re-run rounds that need a new interpreter, hence a new string-hash secret, each)."""
        with self._lock:
            if self._idle[policy, image, key]:
                return self._idle[policy, image, key].pop()
        sandbox = self._new(policy, image)
        with self._lock:
            self._keys[sandbox] = key
        if key:
            self._retire_old_keys(key)
        return sandbox

    def _retire_old_keys(self, key: str) -> None:
        """Keys are for rounds: once more than MAX_KEYS have idle sandboxes, those of the oldest keys go."""
        with self._lock:
            self._recent.pop(key, None)
            self._recent[key] = None
            stale = list(self._recent)[:-MAX_KEYS]
            retired = []
            for old in stale:
                del self._recent[old]
                for idle_key in [k for k in self._idle if k[2] == old]:
                    retired += self._idle.pop(idle_key)
        for sandbox in retired:
            self._close(sandbox)

    def release(self, sandbox: Sandbox, recycle: bool) -> None:
        with self._lock:
            key = self._keys.get(sandbox, "")
        if recycle or not self.warm or sandbox.runs >= self.max_runs:
            self._close(sandbox)
            if self.warm and not key:  # keyed sandboxes are started when their key asks, never ahead
                self._warm_up(sandbox.policy, sandbox.image)
            return
        with self._lock:
            self._idle[sandbox.policy, sandbox.image, key].append(sandbox)

    def discard(self, sandbox: Sandbox) -> None:
        self._close(sandbox)

    def _close(self, sandbox: Sandbox) -> None:
        sandbox.close()
        with self._lock:
            self._live.discard(sandbox)
            self._keys.pop(sandbox, None)

    def close(self) -> None:
        """Remove every idle sandbox, after the warm-ups under way finish (their threads are daemons: a worker
        exiting mid-start would leave a container nobody removes); none starts after this."""
        started = time.monotonic()
        with self._lock:
            self._closed = True  # a warm-up still starting closes its own sandbox when it is done
            warming = list(self._warming)
        for thread in warming:
            thread.join(timeout=max(0.0, started + 60 - time.monotonic()))
        if time.monotonic() - started > 10:
            log.warning("closing the pool waited %.0f s for %d sandbox start(s) under way",
                        time.monotonic() - started, len(warming))
        with self._lock:
            idle = [s for sandboxes in self._idle.values() for s in sandboxes]
            self._idle.clear()
        for sandbox in idle:
            self._close(sandbox)

    def idle_count(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._idle.values())

    def _new(self, policy: Policy, image: str) -> Sandbox:
        sandbox = Sandbox(self._client, policy, image, self.owner)
        with self._lock:
            self.started += 1
            self._live.add(sandbox)
        return sandbox

    def _warm_up(self, policy: Policy, image: str) -> None:
        def start() -> None:
            try:
                sandbox = self._new(policy, image)
            except Exception as exc:  # noqa: BLE001 (a background start: the next acquire tries again and reports)
                log.warning("could not pre-start a sandbox: %s", exc)
                return
            with self._lock:
                if not self._closed:
                    self._idle[policy, image, ""].append(sandbox)
                    return
            self._close(sandbox)  # the pool closed meanwhile: nobody else would remove it

        thread = threading.Thread(target=start, name="sandbox-warmup", daemon=True)
        with self._lock:  # registered and started under the lock: close() either sees it or none starts
            if self._closed:
                return
            self._warming = [t for t in self._warming if t.is_alive()]
            self._warming.append(thread)
            thread.start()
