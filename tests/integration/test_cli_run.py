"""`sandbox run` as a user runs it (a subprocess of the CLI): a fork bomb ends within its limits, and whatever
happens, no sandbox is left behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from sandbox.container import SERVICE_LABEL, owner_id
from sandbox.imagedef import load_definition
from sandbox.images import build_image
from sandbox.plan import batch_deadline_s
from sandbox.policy import load_all_policies
from sandbox.settings import REPO_ROOT

pytestmark = pytest.mark.integration

CHECK = "def check(candidate):\n    assert candidate(1, 2) == 3\n"
HUMANEVAL = load_all_policies(REPO_ROOT / "policies")["humaneval"]
# Not a timing assertion: the bound is only that it ends at all. A sample may use its sandbox twice and a
# canary once, each within the host's backstop for one sample, plus starting sandboxes on a loaded machine.
HOST_BACKSTOP_S = 3 * batch_deadline_s(HUMANEVAL, 1) + 240

BOMBS = {
    # the shape from the report: module level, each process dies when fork fails (EAGAIN at `processes`)
    "plain": "import os\ndef f(a, b):\n    return a + b\nwhile True:\n    os.fork()\n",
    # one that never lets go: every process keeps forking, failures swallowed, until the CPU limit
    "resilient": "import os\ndef f(a, b):\n    while True:\n        try:\n            os.fork()\n        except OSError:\n"
                 "            pass\n",
}


def containers_of(client: docker.DockerClient, pid: int) -> list[str]:
    owner = f"{owner_id().split(':')[0]}:{pid}"
    return [c.short_id for c in client.containers.list(all=True, filters={"label": [SERVICE_LABEL,
                                                                                    f"io.sandbox-exec.owner={owner}"]})]


def sandbox_run(tmp_path: Path, program: str, *args: str) -> subprocess.Popen[str]:
    # the CLI needs the image of the tree as it is now (built in seconds if only the harness changed)
    build_image(docker.from_env(), load_definition(REPO_ROOT / "images"), say=lambda _: None)
    (tmp_path / "program.py").write_text(program)
    (tmp_path / "check.py").write_text(CHECK)
    return subprocess.Popen([sys.executable, "-m", "sandbox.cli", "run", "--code", str(tmp_path / "program.py"),
                             "--tests", str(tmp_path / "check.py"), "--entry-point", "f", "--policy", "humaneval", *args],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("shape", BOMBS)
def test_a_fork_bomb_ends_within_its_limits_and_leaves_nothing(tmp_path: Path, client: docker.DockerClient,
                                                                image: str, shape: str) -> None:
    process = sandbox_run(tmp_path, BOMBS[shape], "--json")
    try:
        out, err = process.communicate(timeout=HOST_BACKSTOP_S)
    finally:
        if process.poll() is None:  # (a failure of this test: end the CLI we started, by its pid)
            process.kill()
    assert process.returncode == 1, (out[-2000:], err[-2000:])
    result = json.loads(out)
    allowed = {"plain": {"error", "timeout"}, "resilient": {"timeout"}}[shape]
    assert result["verdict"] in allowed, (result["verdict"], result["error"][:500], result["anomalies"])
    if result["verdict"] == "timeout":
        assert result["time_limit"] == "cpu", result
    assert not containers_of(client, process.pid)
    # the next innocent sample, through the same command, is judged right
    innocent = sandbox_run(tmp_path, "def f(a, b):\n    return a + b\n", "--json")
    out, err = innocent.communicate(timeout=HOST_BACKSTOP_S)
    assert innocent.returncode == 0 and json.loads(out)["verdict"] == "passed", (out[-2000:], err[-2000:])


def test_sandbox_run_stopped_by_sigterm_removes_its_sandbox(tmp_path: Path, client: docker.DockerClient,
                                                            image: str) -> None:
    process = sandbox_run(tmp_path, "import time\ntime.sleep(60)\ndef f(a, b):\n    return a + b\n")  # 10 s wall
    try:
        deadline = time.monotonic() + 300
        while not containers_of(client, process.pid) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert containers_of(client, process.pid), "the CLI never started its sandbox"
        process.send_signal(signal.SIGTERM)   # what a timeout wrapper or a closing terminal does
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 2 and "interrupted" in err, (out[-1000:], err[-1000:])
    assert not containers_of(client, process.pid)   # before: SIGTERM ended the CLI and the container stayed
