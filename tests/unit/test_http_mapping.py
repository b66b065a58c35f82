"""Pure logic of the HTTP service: how a job's result becomes SandboxFusion's and Judge0's answers, the gate
(token, body bound), the bind rule, and the capture mode's models. The servers themselves are tested
against real clients in tests/integration/test_http.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pathlib
import sys
from datetime import datetime
from typing import Any

import pytest
from pydantic import ValidationError

from sandbox.models import CaseOutput, JobResult, JobSpec, StdioCase, StdioCases, TestResult, TestStatus, Verdict
from sandbox.server import judge0, sandboxfusion
from sandbox.server.app import Gate, ServeConfig, check_bind
from sandbox.server.core import CaseAnswer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "sandbox" / "harness"))
import driver  # noqa: E402  (the harness imports its siblings as top-level modules)
import messages  # noqa: E402


def _result(verdict: Verdict, *tests: TestResult, error: str = "", timings: dict[str, float] | None = None) -> JobResult:
    return JobResult(job_id="j", verdict=verdict, tests=tests, error=error, timings=timings or {})


def _case(status: TestStatus, stdout: str = "", exit_code: int | None = 0, signal: int | None = None,
          truncated: bool = False) -> TestResult:
    output = None if status is TestStatus.not_run else CaseOutput(stdout=stdout, stderr="", exit_code=exit_code,
                                                                    signal=signal, stdout_truncated=truncated)
    return TestResult(name="case 1", status=status, duration_s=0.5, cpu_time_s=0.25, output=output)


# -- SandboxFusion ----------------------------------------------------------------------------------------
def test_sandboxfusion_only_infra_error_is_sandbox_error() -> None:
    infra = sandboxfusion.response_for(CaseAnswer(_result(Verdict.infra_error, error="worker lost")), "python", [])
    assert infra.status == "SandboxError" and infra.message == "worker lost"
    down = sandboxfusion.response_for(CaseAnswer(None, infra_error="cannot reach Redis"), "python", [])
    assert down.status == "SandboxError" and "Redis" in down.message
    for verdict, case in ((Verdict.failed, _case(TestStatus.error, exit_code=1)),
                          (Verdict.timeout, _case(TestStatus.timeout, exit_code=None, signal=9)),
                          (Verdict.failed, _case(TestStatus.output_limit, "y" * 10, exit_code=None, signal=9, truncated=True)),
                          (Verdict.failed, _case(TestStatus.memory_limit, exit_code=1)),
                          (Verdict.error, _case(TestStatus.not_run))):
        answer = sandboxfusion.response_for(CaseAnswer(_result(verdict, case, error="x")), "python", [])
        assert answer.status == "Failed", (verdict, case.status)


def test_sandboxfusion_return_codes() -> None:
    def run(case: TestResult) -> Any:
        return sandboxfusion.response_for(CaseAnswer(_result(Verdict.passed, case)), "python", []).run_result
    assert run(_case(TestStatus.passed, "hi\n")).return_code == 0
    timed_out = run(_case(TestStatus.timeout, exit_code=None, signal=9))
    assert timed_out.status == "TimeLimitExceeded" and timed_out.return_code is None   # null only on a timeout
    assert run(_case(TestStatus.error, exit_code=None, signal=11)).return_code == -11
    flooded = run(_case(TestStatus.output_limit, "y", exit_code=None, signal=9, truncated=True))
    assert flooded.status == "Finished" and flooded.return_code == -9 and flooded.stdout_truncated


def test_sandboxfusion_compile_error_and_compile_result() -> None:
    broken = _result(Verdict.error, TestResult(name="case 1", status=TestStatus.not_run),
                     error="compile error: main.cpp:1: error", timings={"compile_s": 0.7})
    answer = sandboxfusion.response_for(CaseAnswer(broken), "cpp", [])
    assert answer.status == "Failed" and answer.run_result is None
    assert answer.compile_result is not None and answer.compile_result.return_code == 1
    assert answer.compile_result.stderr == "main.cpp:1: error" and answer.compile_result.execution_time == 0.7
    fine = sandboxfusion.response_for(CaseAnswer(_result(Verdict.passed, _case(TestStatus.passed, "3\n"))), "cpp", [])
    assert fine.status == "Success" and fine.compile_result is not None and fine.compile_result.return_code == 0
    assert sandboxfusion.response_for(CaseAnswer(_result(Verdict.passed, _case(TestStatus.passed))), "python",
                                      []).compile_result is None


def test_sandboxfusion_paths_confined() -> None:
    for bad in ("/etc/passwd", "../x", "a/../../x", ""):
        with pytest.raises(ValidationError, match="outside the scratch"):
            sandboxfusion.RunCodeRequest(code="x", language="python", files={bad: "eA=="})
    assert sandboxfusion.RunCodeRequest(code="x", language="python", files={"a/b.txt": None}).files == {"a/b.txt": None}
    with pytest.raises(ValidationError, match="language"):
        sandboxfusion.RunCodeRequest(code="x", language="php")  # type: ignore[arg-type]


# -- Judge0 -----------------------------------------------------------------------------------------------
def _record(**request: Any) -> judge0.Record:
    fields = {"source_code": "x", "language_id": 71, **request}
    return judge0.Record(token="t", request=judge0.SubmissionRequest(**fields), created_at=datetime(2026, 1, 1))


@pytest.mark.parametrize("case, expected_output, status", [
    (_case(TestStatus.passed, "3\n"), None, 3),
    (_case(TestStatus.passed, "3  \n\n"), "3", 3),
    (_case(TestStatus.passed, "4\n"), "3", 4),
    (_case(TestStatus.timeout, exit_code=None, signal=9), None, 5),
    (_case(TestStatus.error, exit_code=None, signal=11), None, 7),
    (_case(TestStatus.output_limit, exit_code=None, signal=9, truncated=True), None, 8),
    (_case(TestStatus.error, exit_code=None, signal=8), None, 9),
    (_case(TestStatus.error, exit_code=None, signal=6), None, 10),
    (_case(TestStatus.error, exit_code=3), None, 11),
    (_case(TestStatus.memory_limit, exit_code=1), None, 12),
    (_case(TestStatus.error, exit_code=None, signal=31), None, 12),
])
def test_judge0_statuses(case: TestResult, expected_output: str | None, status: int) -> None:
    record = _record(expected_output=expected_output)
    judge0.fill(record, CaseAnswer(_result(Verdict.passed, case)))
    assert record.status_id == status


def test_judge0_internal_error_only_from_the_service() -> None:
    record = _record()
    judge0.fill(record, CaseAnswer(None, infra_error="Redis down"))
    assert record.status_id == 13 and record.message == "Redis down"
    compile_failed = _record(language_id=54)
    judge0.fill(compile_failed, CaseAnswer(_result(Verdict.error, TestResult(name="c", status=TestStatus.not_run),
                                                   error="compile error: bad")))
    assert compile_failed.status_id == 6 and compile_failed.compile_output == "bad"
    syntax = _record()
    judge0.fill(syntax, CaseAnswer(_result(Verdict.error, TestResult(name="c", status=TestStatus.not_run),
                                           error="SyntaxError: x")))
    assert syntax.status_id == 11 and syntax.stderr == "SyntaxError: x"


def test_judge0_view_fields_and_base64() -> None:
    record = _record(stdin="in")
    judge0.fill(record, CaseAnswer(_result(Verdict.passed, _case(TestStatus.passed, "héllo\n"))))
    shown = record.view(judge0.DEFAULT_FIELDS, encoded=True)
    assert set(shown) == set(judge0.DEFAULT_FIELDS)
    assert shown["stdout"] == "aMOpbGxvCg==" and shown["status"] == {"id": 3, "description": "Accepted"}
    everything = record.view(judge0.ALL_FIELDS, encoded=False)
    assert everything["created_at"] == "2026-01-01T00:00:00.000Z" and everything["time"] == "0.250"
    import judge0 as sdk  # the SDK's own model accepts every key shown with fields=*
    submission = sdk.Submission(source_code="x")
    submission.set_attributes(record.view(judge0.ALL_FIELDS, encoded=True))
    assert submission.stdout == "héllo\n" and submission.status == sdk.Status.ACCEPTED


def test_judge0_config_info_complete_for_the_sdk() -> None:
    import judge0 as sdk

    assert sdk.base_types.Config(**judge0.CONFIG_INFO).max_submission_batch_size == judge0.MAX_BATCH


# -- the gate and the bind rule ---------------------------------------------------------------------------
def _call(gate: Gate, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        seen.update(path=scope["path"], body=message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
    gate.app = app
    sent: list[dict[str, Any]] = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return chunks.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    asyncio.run(gate(scope, receive, send))
    return sent[0]["status"], seen


def test_gate_tokens() -> None:
    gate = Gate(None, "s" * 20, 1024)
    assert _call(gate, "/run_code")[0] == 401
    assert _call(gate, "/run_code", {"Authorization": "Bearer wrong"})[0] == 401
    assert _call(gate, "/run_code", {"Authorization": "Bearer " + "s" * 20})[0] == 200
    assert _call(gate, "/languages", {"X-Auth-Token": "s" * 20})[0] == 200
    status, seen = _call(gate, f"/token/{'s' * 20}/run_code", body=b"{}")
    assert status == 200 and seen["path"] == "/run_code" and seen["body"] == b"{}"
    assert _call(gate, "/token/wrong/run_code")[0] == 401
    assert _call(gate, "/v1/ping")[0] == 200   # health checks need no token
    assert _call(Gate(None, None, 1024), "/run_code")[0] == 200


def test_gate_bounds_the_body() -> None:
    gate = Gate(None, None, 1024)
    assert _call(gate, "/run_code", body=b"x" * 1025)[0] == 413
    assert _call(gate, "/run_code", {"Content-Length": "5000"}, body=b"x")[0] == 413
    assert _call(gate, "/run_code", body=b"x" * 1024)[0] == 200


def test_bind_beyond_loopback_needs_a_token() -> None:
    check_bind(ServeConfig(host="127.0.0.1"))
    check_bind(ServeConfig(host="::1"))
    with pytest.raises(ValueError, match="without a token"):
        check_bind(ServeConfig(host="0.0.0.0"))
    check_bind(ServeConfig(host="0.0.0.0", token="k" * 32))


# -- capture mode -----------------------------------------------------------------------------------------
def test_capture_mode_takes_no_expected_output() -> None:
    JobSpec(program="print(1)", stdio=StdioCases(cases=(StdioCase(input=""),), capture=True))
    with pytest.raises(ValidationError, match="capture mode compares nothing"):
        StdioCases(cases=(StdioCase(input="", output="1"),), capture=True)
    with pytest.raises(ValidationError, match="expected output"):
        StdioCases(cases=(StdioCase(input=""),))


def test_report_cuts_captured_output_to_fit_and_says_so() -> None:
    big = messages.Captured(stdout="z" * (1 << 20), stderr="", exit_status=0)
    outcomes = tuple(messages.TestOutcome(index=i, status="passed", captured=big) for i in range(8))
    report = messages.Judged(sample_id="s", load="loaded", outcomes=outcomes, completed=True)
    data = driver.fitted(report)
    assert len(data) <= messages.JUDGED_MAX_BYTES
    decoded = json.loads(data)
    kept = [o["captured"] for o in decoded["outcomes"]]
    assert all(c["stdout_truncated"] and 0 < len(c["stdout"]) < (1 << 20) for c in kept)
    assert [o["status"] for o in decoded["outcomes"]] == ["passed"] * 8
    small = dataclasses.replace(report, outcomes=outcomes[:1])
    assert json.loads(driver.fitted(small))["outcomes"][0]["captured"]["stdout_truncated"] is False
