"""A fleet that heals itself: supervised worker pools, atomic counters, one clear line per missing part."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest
import redis

from sandbox import broker
from sandbox.client import Client
from sandbox.container import OWNER_LABEL, require_runtimes
from sandbox.errors import RuntimeUnavailable
from sandbox.models import JobResult, JobSpec, Verdict
from sandbox.settings import REPO_ROOT, Settings
from tests.integration.services import RedisServer, free_port, wait_for

pytestmark = pytest.mark.integration

CHECK = "def check(candidate):\n    assert candidate(3) == 9\n"




def status(url: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "sandbox.cli", "status", "--json"], capture_output=True, text=True,
                          env={**os.environ, "SANDBOX_REDIS_URL": url, "SANDBOX_HEARTBEAT_S": "1"}, cwd=REPO_ROOT,
                          timeout=60)
    assert done.returncode in (0, 1), done.stderr
    return dict(json.loads(done.stdout))


def start_pool(url: str, log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SANDBOX_REDIS_URL": url, "SANDBOX_HEARTBEAT_S": "1", "SANDBOX_RESTART_BACKOFF_S": "0.2"}
    with log.open("ab") as handle:
        return subprocess.Popen([sys.executable, "-m", "worker.main", *args], env=env, cwd=REPO_ROOT,
                                stdout=handle, stderr=handle)


def test_a_pool_restarts_a_dead_worker_and_says_so(redis_server: RedisServer, tmp_path: Path,
                                                  client: docker.DockerClient, image: str) -> None:
    pool = start_pool(redis_server.url, tmp_path / "pool.log", "--concurrency", "2")
    try:
        live = wait_for(lambda: (ws := [w for w in status(redis_server.url)["workers"] if w["alive"]]) and
                        len(ws) == 2 and ws, 120, "two live workers")
        victim = live[0]
        os.kill(int(victim["pid"]), signal.SIGKILL)
        replaced = wait_for(lambda: (ws := status(redis_server.url)["workers"]) and
                            any(w["alive"] and w.get("restarts") == 1 for w in ws) and
                            sum(w["alive"] for w in ws) == 2 and ws, 120, "the killed worker replaced")
        assert victim["id"] not in {w["id"] for w in replaced}  # the dead one is not left to look silent
        settings = Settings(redis_url=redis_server.url)
        results = Client(settings).run([JobSpec(id=f"j{i}", program=f"def f(x):\n    return x * x  # {i}\n", check=CHECK,
                                                entry_point="f", policy="humaneval") for i in range(4)], timeout_s=120)
        assert [r.verdict for r in results] == [Verdict.passed] * 4
    finally:
        pool.send_signal(signal.SIGTERM)
        assert pool.wait(timeout=120) == 0
    owners = {f"{os.uname().nodename}:{w['pid']}" for w in replaced}
    for owner in owners | {victim["id"]}:
        leftovers = client.containers.list(all=True, sparse=True, filters={"label": f"{OWNER_LABEL}={owner}"})
        for container in leftovers:
            container.remove(force=True)
        assert owner == victim["id"] or not leftovers  # the killed worker's sandboxes are its replacement's to reap


def test_a_crash_looping_worker_is_reported_and_not_retried_forever(redis_server: RedisServer, tmp_path: Path,
                                                                   image: str) -> None:
    pool = start_pool(redis_server.url, tmp_path / "pool.log", "--concurrency", "2", "--canary-policy", "no-such-policy")
    assert pool.wait(timeout=180) == 3  # every worker gave up
    warnings = status(redis_server.url)["warnings"]
    loops = [w for w in warnings if w["kind"] == "worker_crash_loop"]
    assert len(loops) == 2 and all("exited 6 times" in w["message"] for w in loops), warnings
    assert "no-such-policy" in (tmp_path / "pool.log").read_text()  # the reason is in the log, once per attempt


def test_workers_end_when_their_pool_is_killed(redis_server: RedisServer, tmp_path: Path, image: str,
                                              client: docker.DockerClient) -> None:
    pool = start_pool(redis_server.url, tmp_path / "pool.log", "--concurrency", "2")
    children = wait_for(lambda: len(status(redis_server.url)["workers"]) == 2 and
                        [int(w["pid"]) for w in status(redis_server.url)["workers"]], 120, "two workers")
    pool.send_signal(signal.SIGKILL)  # no chance to pass anything on
    pool.wait()
    try:
        wait_for(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                                 for pid in children), 120, "the pool's workers to end with it")
    finally:
        for pid in children:
            for container in client.containers.list(all=True, sparse=True,
                                                    filters={"label": f"{OWNER_LABEL}={os.uname().nodename}:{pid}"}):
                container.remove(force=True)


def test_counters_equal_stored_results_even_when_a_write_is_retried(redis_server: RedisServer) -> None:
    connection = broker.connect(redis_server.url)
    results = [JobResult(job_id=f"j{i}", verdict=Verdict.passed if i % 3 else Verdict.failed, wall_time_s=0.01 * i)
               for i in range(30)]
    for result in results:
        assert broker.store_result(connection, "default", "sub", result, f"key{result.job_id}", 600)
    for result in results[:10]:  # a worker that lost Redis's reply writes again: nothing may count twice
        assert not broker.store_result(connection, "default", "sub", result, f"key{result.job_id}", 600)
    totals = {broker.text(k): int(v) for k, v in connection.hgetall(broker.TOTALS).items()}
    assert totals == {"passed": 20, "failed": 10}
    durations = {broker.text(k): float(v) for k, v in connection.hgetall(broker.DURATIONS).items()}
    assert sum(v for k, v in durations.items() if k != "sum") == 30


# -- one clear line for every missing or broken part --------------------------------------------------
def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT,
            module: str = "sandbox.cli") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=120)


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    return lines[0]


@pytest.mark.parametrize("command", [["status"], ["submit", "JOBS", "--out", "out.jsonl"],
                                     ["evaluate", "--canonical", "--local-workers", "0"]])
def test_redis_down_is_one_line_from_every_command(tmp_path: Path, command: list[str]) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"program": "def f(x):\n    return x\n", "check": CHECK, "entry_point": "f"}) + "\n")
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    line = one_line(run_cli(*[str(jobs) if part == "JOBS" else part for part in command],
                            env={"SANDBOX_REDIS_URL": url}, cwd=tmp_path))
    assert "cannot reach Redis at redis://:***@127.0.0.1" in line and "SANDBOX_REDIS_URL" in line
    assert "secret" not in line


def test_redis_down_is_one_line_from_the_worker(tmp_path: Path, image: str) -> None:
    line = one_line(run_cli(env={"SANDBOX_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, module="worker.main"))
    assert "cannot reach Redis" in line


def test_a_wrong_redis_password_is_one_line(tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--requirepass", "right",
                               "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: redis.Redis(port=port, password="right").ping(), 10, "redis with a password")
        line = one_line(run_cli("status", env={"SANDBOX_REDIS_URL": f"redis://:wrong@127.0.0.1:{port}/0"}))
        assert "refused the credentials" in line and "wrong" not in line
        line = one_line(run_cli("status", env={"SANDBOX_REDIS_URL": f"redis://127.0.0.1:{port}/0"}))
        assert "refused the credentials" in line
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_engine_down_is_one_line(tmp_path: Path) -> None:
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    for done in (run_cli("run", "examples/add_job.json", env=env), run_cli(env=env, module="worker.main")):
        assert "the Docker engine is not reachable" in one_line(done) and "sandbox doctor --fix" in one_line(done)


def test_an_image_not_built_and_a_missing_policy_are_one_line(tmp_path: Path) -> None:
    images = tmp_path / "images"
    (images / "python").mkdir(parents=True)
    (images / "python" / "image.toml").write_text(
        (REPO_ROOT / "images/python/image.toml").read_text().replace('version = "1"', 'version = "never-built"'))
    line = one_line(run_cli("run", "examples/add_job.json", env={"SANDBOX_IMAGES_DIR": str(images)}))
    assert "is not built" in line and "sandbox images build" in line
    line = one_line(run_cli("run", "examples/add_job.json", "--policy", "no-such-policy"))
    assert "unknown policy 'no-such-policy'" in line


def test_a_runtime_the_engine_lacks_is_one_clear_error(client: docker.DockerClient) -> None:
    require_runtimes(client, {"runsc"})  # registered by `sandbox setup`
    with pytest.raises(RuntimeUnavailable, match="no runtime runsc-missing .*sandbox doctor --fix"):
        require_runtimes(client, {"runsc", "runsc-missing"})
