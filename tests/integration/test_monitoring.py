"""Operator views against a live pool: `sandbox status --json`, /metrics, health probes, and the
warnings for a stuck batch (its worker stopped) and a dead worker (killed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import docker
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sandbox.client import Client
from sandbox.container import OWNER_LABEL
from sandbox.models import JobSpec
from sandbox.settings import REPO_ROOT, Settings
from tests.integration.services import RedisServer, free_port, wait_for

pytestmark = pytest.mark.integration

CHECK = "def check(candidate):\n    assert candidate(3) == 9\n"


def slow_job(index: int, seconds: float) -> JobSpec:
    program = (f"import time\n# {index}\ndef f(x):\n    start = time.process_time()\n"
               f"    while time.process_time() - start < {seconds}:\n        pass\n    return x * x\n")
    return JobSpec(id=f"m{index}", program=program, check=CHECK, entry_point="f", policy="humaneval")


class Pool:
    def __init__(self, tmp_path: Path, image: str) -> None:
        self.redis = RedisServer(tmp_path)
        self.redis.start()
        self.env = {**os.environ, "SANDBOX_REDIS_URL": self.redis.url, "SANDBOX_HEARTBEAT_S": "1"}
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen[bytes]] = []
        self.health_ports: list[int] = []

    def start_worker(self) -> subprocess.Popen[bytes]:
        port = free_port()
        with (self.tmp_path / f"worker-{port}.log").open("ab") as log:  # the child keeps its own copy
            process = subprocess.Popen([sys.executable, "-m", "worker.main", "--concurrency", "1", "--health-port", str(port)],
                                       env=self.env, cwd=REPO_ROOT, stdout=log, stderr=log)
        self.processes.append(process)
        self.health_ports.append(port)
        return process

    def start_metrics(self) -> int:
        port = free_port()
        self.processes.append(subprocess.Popen([sys.executable, "-m", "sandbox.cli", "metrics", "--port", str(port)],
                                               env=self.env, cwd=REPO_ROOT, stderr=subprocess.DEVNULL))
        return port

    def status(self) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-m", "sandbox.cli", "status", "--json"], capture_output=True,
                              text=True, env=self.env, cwd=REPO_ROOT, timeout=60)
        assert done.returncode in (0, 1), done.stderr
        state = json.loads(done.stdout)
        assert done.returncode == (1 if state["warnings"] else 0)
        return state

    def close(self, client: docker.DockerClient) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
        for process in self.processes:
            owner = f"{os.uname().nodename}:{process.pid}"
            for container in client.containers.list(all=True, sparse=True, filters={"label": f"{OWNER_LABEL}={owner}"}):
                container.remove(force=True)
        self.redis.stop()


@pytest.fixture
def pool(tmp_path: Path, image: str, client: docker.DockerClient) -> Iterator[Pool]:
    live = Pool(tmp_path, image)
    yield live
    live.close(client)


def metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def probe(port: int, path: str) -> int:
    try:
        return int(urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=5).status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_status_metrics_health_and_fault_warnings(pool: Pool) -> None:
    first, second = pool.start_worker(), pool.start_worker()
    metrics_port = pool.start_metrics()
    wait_for(lambda: sum(w["alive"] for w in pool.status()["workers"]) == 2, 90, "two live workers")
    assert [probe(port, "readyz") for port in pool.health_ports] == [200, 200]
    assert [probe(port, "livez") for port in pool.health_ports] == [200, 200]

    client = Client(Settings(redis_url=pool.redis.url, batch_size=2, heartbeat_s=1.0))
    quick = list(client.submit([slow_job(i, 0.05) for i in range(4)]).results(idle_timeout_s=120))
    assert len(quick) == 4
    state = pool.status()
    assert state["totals"]["passed"] == 4 and state["verdicts_last_15_min"]["passed"] == 4
    assert {w["id"] for w in state["workers"]} == {f"{os.uname().nodename}:{p.pid}" for p in (first, second)}
    assert all(w["rss_mib"] > 0 for w in state["workers"])
    wait_for(lambda: all(w["sandboxes_live"] >= 1 for w in pool.status()["workers"]), 20, "warm sandboxes reported")
    samples = wait_for(lambda: (m := metrics(metrics_port)) and m[("sandbox_samples_total", (("verdict", "passed"),))] == 4
                       and m, 20, "metrics to count 4 passed samples")
    assert samples[("sandbox_sample_duration_seconds_count", ())] == 4
    assert samples[("sandbox_redis_memory_used_bytes", ())] > 0 and state["redis_memory"]["used"] > 0
    assert samples[("sandbox_workers", (("state", "idle"),))] + samples[("sandbox_workers", (("state", "busy"),))] == 2

    slow = client.submit([slow_job(10 + i, 1.5) for i in range(16)])  # 8 batches of ~3 s each: a wide window

    def both_busy() -> dict[str, Any] | None:
        state = pool.status()
        busy = {w["id"] for w in state["workers"] if w["alive"] and w.get("state") == "busy"}
        return state if len(busy) == 2 and len(state["running_batches"]) >= 2 else None

    backlog = wait_for(both_busy, 60, "both workers busy")
    live = {w["id"] for w in backlog["workers"]}
    assert all(batch["worker"] in live and batch["samples"] == 2 for batch in backlog["running_batches"])
    bulk = next(q for q in backlog["queues"] if q["name"] == "bulk")
    assert bulk["running"] >= 2 and bulk["waiting_batches"] + bulk["running"] <= 8

    first.send_signal(signal.SIGSTOP)  # hangs with a batch in hand: its lease and heartbeat stop
    second.send_signal(signal.SIGKILL)  # dies: its sandboxes lose their owner
    second.wait()
    both = {f"{os.uname().nodename}:{p.pid}" for p in (first, second)}

    def flagged_state() -> dict[str, Any] | None:
        state = pool.status()
        kinds = {w["kind"] for w in state["warnings"]}
        silent = {w["id"] for w in state["workers"] if not w["alive"]}
        return state if {"worker_silent", "batch_stuck", "orphan_containers"} <= kinds and silent == both else None

    flagged = wait_for(flagged_state, 30, "the stuck batch and both silent workers flagged")
    assert sum(w["kind"] == "worker_silent" for w in flagged["warnings"]) == 2
    assert any(f":{second.pid}" in o["owner"] for o in flagged["orphan_containers"])
    with pytest.raises(urllib.error.URLError):  # the killed worker no longer answers its probes
        urllib.request.urlopen(f"http://127.0.0.1:{pool.health_ports[1]}/livez", timeout=5)
    warnings = metrics(metrics_port)
    assert warnings[("sandbox_warnings", (("kind", "worker_silent"),))] == 2
    assert warnings[("sandbox_workers", (("state", "silent"),))] == 2
    first.send_signal(signal.SIGCONT)
    del slow
