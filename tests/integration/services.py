"""Processes the queue tests start and stop themselves, always by pid: a private Redis and workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import redis

from sandbox.settings import REPO_ROOT


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A redis-server on loopback with its own data directory, so tests can restart it."""

    def __init__(self, directory: Path, args: tuple[str, ...] = (), login: str = "") -> None:
        """``args``: more redis-server options (an ``--aclfile``...); ``login``: USER:PASSWORD for ``url``."""
        self.directory = directory
        self.port = free_port()
        self.args = args
        self.url = f"redis://{login + '@' if login else ''}127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def url_for(self, user: str, password: str) -> str:
        return f"redis://{user}:{password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--appendonly", "yes", "--save", "", "--daemonize", "no", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("test redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # clean shutdown: the AOF is complete
            self.process.wait(timeout=30)
        self.process = None

    def restart(self, down_s: float = 1.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


class Worker:
    """One `sandbox-worker` process (concurrency 1) serving the test Redis."""

    def __init__(self, redis_url: str, log_path: Path, heartbeat_s: float = 1.0, env: dict[str, str] | None = None) -> None:
        env = {**os.environ, "SANDBOX_HEARTBEAT_S": str(heartbeat_s), "SANDBOX_REDIS_URL": redis_url, **(env or {})}
        self.log_path = log_path
        self.log = log_path.open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", "worker.main", "--concurrency", "1"], env=env,
                                        cwd=REPO_ROOT, stdout=self.log, stderr=self.log)
        self.owner = f"{socket.gethostname()}:{self.process.pid}"

    def wait_ready(self, connection: redis.Redis, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if connection.exists(f"sandbox:worker:{self.owner}"):
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready after {timeout_s} s: {self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout_s: float = 120) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def close(self) -> None:
        """Stop as an operator would (SIGTERM); SIGKILL only if it hangs."""
        try:  # a worker finishes its batch in hand and its sandboxes' warm-ups before it leaves
            self.terminate(timeout_s=150)
        except subprocess.TimeoutExpired:
            self.kill()
        self.log.close()


def sandbox_cli(redis_url: str, cwd: Path, *args: str, timeout_s: float = 900) -> subprocess.CompletedProcess[str]:
    """The `sandbox` command as a user runs it, against the test Redis."""
    env = {**os.environ, "SANDBOX_REDIS_URL": redis_url}
    return subprocess.run([sys.executable, "-m", "sandbox.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout_s)


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    import json

    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll until ``condition()`` is truthy and return it, or fail naming what never happened."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")
