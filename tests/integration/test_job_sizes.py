"""Bounded tests, refused up front (issue 17, finding 6), through the real service.

Before: a batch over the supervisor's 64 MiB frame limit killed it, and a job that alone was over the limit
brought its sandbox down twice and got its program's `error`, cached, after ~100 s. Now an oversized job is
invalid input, refused before anything runs with an error naming the limit, and batches are cut to fit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import docker
import pytest
import redis

from sandbox.client import Client
from sandbox.container import SERVICE_LABEL, owner_id
from sandbox.errors import JobValidationError
from sandbox.models import JobSpec, TestStatus, Verdict
from sandbox.runner import Runner
from sandbox.settings import REPO_ROOT, Settings
from tests.integration.services import RedisServer

pytestmark = pytest.mark.integration

MIB = 1 << 20


def huge_job() -> dict[str, object]:
    """Four valid cases of 13 MiB each (each within case_input_max_mib, 52 MiB together: over tests_max_mib)."""
    return {"id": "huge", "program": "print(1)\n", "policy": "stdio",
            "stdio": {"cases": [{"input": "7" * (13 * MIB), "output": "1\n"} for _ in range(4)]}}


def test_sandbox_run_refuses_huge_valid_stdio_cases_naming_the_limit(tmp_path: Path, client: docker.DockerClient) -> None:
    job_file = tmp_path / "huge.json"
    job_file.write_text(json.dumps(huge_job()))
    process = subprocess.Popen([sys.executable, "-m", "sandbox.cli", "run", str(job_file)], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 2, (out, err)
    assert "the tests are 52.0 MiB" in err and "at most 48 MiB (tests_max_mib)" in err, err
    assert "Traceback" not in err
    owner = f"{owner_id().split(':')[0]}:{process.pid}"
    assert not client.containers.list(all=True, filters={"label": [SERVICE_LABEL, f"io.sandbox-exec.owner={owner}"]})


def test_submission_refuses_huge_valid_cases_before_queueing_anything(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        service = Client(Settings(redis_url=server.url))
        small = JobSpec(id="small", program="print(1)\n", policy="stdio",
                        stdio={"cases": [{"input": "", "output": "1\n"}]})  # type: ignore[arg-type]
        with pytest.raises(JobValidationError, match=r"job huge: the tests are 52\.0 MiB .*\(tests_max_mib\)"):
            service.submit([small, JobSpec.model_validate(huge_job())])
        assert not redis.Redis.from_url(server.url).keys("rq:queue:*")  # nothing was queued, not even `small`
    finally:
        server.stop()


def test_a_batch_over_the_frame_limit_is_cut_to_fit_and_judged_whole(runner: Runner) -> None:
    # 45 MiB of tests that every job shares, and programs of ~1.5 MiB each as JSON (a comment of control
    # characters, escaped 6-fold): 16 of them are ~69 MiB, more than one frame. Before, that batch killed the
    # supervisor and every job was run again alone (attempts 2); now the batch is cut before it is sent.
    cases = [{"input": str(i) * (15 * MIB), "output": "1\n"} for i in range(3)]
    padding = "#" + "\x01" * (250 * 1024) + "\n"
    programs = [padding + "print(1)\n"] * 14 + [padding + "print(2)\n", padding + "raise SystemExit(3)\n"]
    jobs = [JobSpec(program=f"# sample {i}\n" + program, policy="stdio", stdio={"cases": cases})  # type: ignore[arg-type]
            for i, program in enumerate(programs)]
    results = runner.run(jobs)
    assert [r.verdict for r in results] == [Verdict.passed] * 14 + [Verdict.failed, Verdict.failed], \
        [(r.verdict, r.error[:200]) for r in results]
    assert [t.status for t in results[-1].tests] == [TestStatus.error] * 3
    assert all(r.attempts == 1 and not r.anomalies for r in results), [(r.attempts, r.anomalies) for r in results]


def test_a_request_no_frame_can_carry_is_never_the_programs_fault(runner: Runner,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A job the planner refuses, forced past it (as a planner bug would): 75 MiB of tests. Before, the supervisor
    # died reading it, twice, a canary passed, and the program got `error`; now nothing is sent: infra_error at once.
    from sandbox import plan

    monkeypatch.setattr(plan, "check_size", lambda prepared: None)
    job = JobSpec(id="forced", program="print(1)\n", policy="stdio",
                  stdio={"cases": [{"input": str(i) * (15 * MIB), "output": "1\n"} for i in range(5)]})  # type: ignore[arg-type]
    [result] = list(runner.iter_prepared([runner.planner.prepare(job)]))
    assert result.verdict is Verdict.infra_error and result.attempts == 1, (result.verdict, result.error[:300])
    assert "refused" in result.error and "nothing was sent" in result.error, result.error
    [innocent] = runner.run([JobSpec(program="print(1)\n", policy="stdio",
                                     stdio={"cases": [{"input": "", "output": "1\n"}]})])  # type: ignore[arg-type]
    assert innocent.verdict is Verdict.passed, innocent
