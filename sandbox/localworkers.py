"""Workers started for the length of one command, so a single command can run a whole evaluation.

They are ordinary ``sandbox-worker`` processes (this package never imports the worker package),
stopped with SIGTERM by pid when the command ends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import redis

from sandbox import broker
from sandbox.errors import InfrastructureError

__all__ = ["LocalWorkers", "live_workers"]


def live_workers(connection: redis.Redis) -> list[str]:
    """Ids of workers whose heartbeat has not expired."""
    members = [broker.text(m) for m in connection.smembers(broker.WORKERS_SET)]
    return [m for m in members if broker.worker_alive(connection, m)]


class LocalWorkers:
    def __init__(self, count: int, redis_url: str, log_dir: Path, ready_timeout_s: float = 120) -> None:
        self.count, self.redis_url, self.log_dir, self.ready_timeout_s = count, redis_url, log_dir, ready_timeout_s
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> "LocalWorkers":
        """Start the workers and return at once: they warm up (canaries, sandboxes) in the background."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "SANDBOX_REDIS_URL": self.redis_url}
        for index in range(self.count):
            log = (self.log_dir / f"worker-{index}.log").open("ab")
            self.processes.append(subprocess.Popen([sys.executable, "-m", "worker.main", "--concurrency", "1"],
                                                   env=env, stdout=log, stderr=log))
        return self

    def __enter__(self) -> "LocalWorkers":
        if not self.processes:
            self.start()
        return self

    def wait_ready(self) -> None:
        """Until every worker serves (its canaries passed), or one died: then an ``InfrastructureError``."""
        connection = broker.connect(self.redis_url)
        owners = {f"{socket.gethostname()}:{p.pid}" for p in self.processes}
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if all(broker.worker_alive(connection, owner) for owner in owners):
                return
            dead = [p for p in self.processes if p.poll() is not None]
            if dead:
                self.__exit__(None, None, None)
                raise InfrastructureError(f"a local worker exited with {dead[0].returncode}: {self._last_error()} "
                                          f"(logs in {self.log_dir})")
            time.sleep(0.3)
        self.__exit__(None, None, None)
        raise InfrastructureError(f"local workers not ready after {self.ready_timeout_s:.0f} s; see {self.log_dir}")

    def _last_error(self) -> str:
        lines = [line for path in sorted(self.log_dir.glob("worker-*.log"))
                 for line in path.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1].strip() if lines else "no output"

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes = []
