"""SandboxFusion's ``POST /run_code`` and ``GET /v1/ping`` (bytedance/SandboxFusion @469de08), over the queue.

Exact to its contract where its clients look (verl's reward, the ``sandbox-fusion`` SDK): always HTTP
200 for a request that ran; ``status`` Success / Failed / SandboxError; ``return_code`` null only on a
timeout, negative for a signal; ``compile_result`` null for interpreted languages; a request it
cannot take (an unknown language, a missing field) is a 422 with ``detail``.

Differences on purpose (README, "HTTP service"):
- ``run_timeout`` is the run's CPU limit (a loaded machine does not turn a pass into a timeout); the
  wall clock is a backstop at twice that plus 2 s. ``compile_timeout`` is not a limit here: the
  policy's compile limits apply. Either is clamped to the ``sandboxfusion`` policy, and a clamp is
  said in ``message``.
- ``memory_limit_MB`` is the address-space limit of each process (RLIMIT_AS) for C, C++, Python and
  Rust; Java, JavaScript, TypeScript and Go reserve address space far beyond their use, so their
  policy's limit stands.
- Output beyond 1 MiB ends the run (as an output limit: ``Finished``, the kill's ``-9``, and
  ``stdout_truncated: true``), where SandboxFusion silently cuts it.
- ``SandboxError`` means only that the service failed (``infra_error``); nothing a program does
  produces it. A request that cannot finish inside its caller's window (verl's: compile + run + 10 s)
  is answered 504, which verl retries; the retry joins the run still going instead of starting one.
- ``files`` and ``fetch_files`` are not supported yet: a request carrying any is a 422.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
from typing import Literal

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sandbox.errors import JobValidationError
from sandbox.languages import language as language_entry
from sandbox.models import JobResult, JobSpec, StdioCase, StdioCases, TestStatus, Verdict
from sandbox.policy import LimitOverrides
from sandbox.server.core import CaseAnswer, Grouper, ProgramKey, Service

__all__ = ["RunCodeRequest", "RunCodeResponse", "CommandRunResult", "mount", "LANGUAGES"]

POLICY = "sandboxfusion"
WINDOW_MARGIN_S = 1.5          # answer 504 this long before the caller's own timeout

# SandboxFusion's language names -> this service's (C is sent as cpp, JavaScript as nodejs)
LANGUAGES = {"python": "python", "cpp": "cpp", "nodejs": "javascript", "typescript": "typescript", "go": "go",
             "java": "java", "rust": "rust"}
SfLanguage = Literal["python", "cpp", "nodejs", "typescript", "go", "java", "rust"]
RESERVING_RUNTIMES = frozenset({"java", "javascript", "typescript", "go"})   # memory_limit_MB does not apply


class RunCodeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")   # as SandboxFusion's own model

    code: str
    language: SfLanguage
    compile_timeout: float = Field(default=10, gt=0)
    run_timeout: float = Field(default=10, gt=0)
    memory_limit_MB: int = -1
    stdin: str | None = None
    files: dict[str, str | None] = Field(default_factory=dict)
    fetch_files: list[str] = Field(default_factory=list)

    @field_validator("files", "fetch_files")
    @classmethod
    def _inside_scratch(cls, value: dict[str, str | None] | list[str]) -> dict[str, str | None] | list[str]:
        for name in value:
            normal = posixpath.normpath(name)
            if name.startswith("/") or normal == ".." or normal.startswith("../") or not name:
                raise ValueError(f"path {name!r} is outside the scratch directory: give a relative path without '..'")
        return value


class CommandRunResult(BaseModel):
    status: Literal["Finished", "TimeLimitExceeded", "Error"]
    execution_time: float | None = None
    return_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    stdout_truncated: bool = Field(default=False, description="not SandboxFusion's: the output limit ended the run")


class RunCodeResponse(BaseModel):
    status: Literal["Success", "Failed", "SandboxError"]
    message: str
    compile_result: CommandRunResult | None = None
    run_result: CommandRunResult | None = None
    executor_pod_name: str | None = None
    files: dict[str, str] = Field(default_factory=dict)


def mount(app: FastAPI, service: Service, grouper: Grouper, config: object) -> None:
    @app.get("/v1/ping", tags=["sandboxfusion"])
    async def ping() -> str:
        return "pong"

    @app.post("/run_code", tags=["sandboxfusion"], response_model=RunCodeResponse,
              responses={504: {"description": "cannot finish inside the caller's window: retry (verl does)"}})
    async def run_code(request: RunCodeRequest) -> RunCodeResponse | JSONResponse:
        service.figures.add("requests_sandboxfusion")
        sent_files = {name: data for name, data in request.files.items() if data is not None and "IGNORE_THIS_FILE" not in name}
        if sent_files or request.fetch_files:
            return JSONResponse(status_code=422, content={"detail": "files and fetch_files are not supported by this "
                                                          "service yet: send the program and its stdin only"})
        key, notes = program_key(service, request)
        if isinstance(key, str):
            return JSONResponse(status_code=422, content={"detail": key})
        window = request.compile_timeout + request.run_timeout + 10 - WINDOW_MARGIN_S
        try:
            answer = await asyncio.wait_for(asyncio.shield(grouper.submit(key, request.stdin or "")), max(1.0, window))
        except asyncio.TimeoutError:
            service.figures.add("answered_504")
            return JSONResponse(status_code=504, content={"detail": f"no result within {window:.1f} s (the caller's "
                                                          "window): retry, the run goes on and a retry joins it"})
        return response_for(answer, key.language, notes)


def program_key(service: Service, request: RunCodeRequest) -> tuple[ProgramKey | str, list[str]]:
    """The request's program and limits, tightened from the policy; or why it cannot run (a 422)."""
    name = LANGUAGES[request.language]
    entry = language_entry(name)
    policy = service.client.planner.policy(POLICY).for_language(name, bool(entry.compile))
    notes = []
    cpu = min(request.run_timeout, policy.case_cpu_time_s)
    if cpu < request.run_timeout:
        notes.append(f"run_timeout clamped to {cpu:g} s (policy {POLICY})")
    wall = min(2 * cpu + 2, policy.case_wall_time_s)
    memory = None
    if request.memory_limit_MB > 0 and name not in RESERVING_RUNTIMES:
        memory = min(max(64, request.memory_limit_MB), policy.memory_mib)
        if memory != request.memory_limit_MB:
            notes.append(f"memory_limit_MB clamped to {memory} (policy {POLICY}; at least 64)")
    limits = LimitOverrides(case_cpu_time_s=cpu, case_wall_time_s=wall, memory_mib=memory)
    key = ProgramKey(language=name, program=request.code, policy=POLICY, limits=limits)
    try:  # the job as it will run, with one case: a bad program (empty, oversized) is the caller's 422
        service.client.validate(JobSpec(language=name, program=request.code, policy=POLICY, limits=limits,
                                        stdio=StdioCases(cases=(StdioCase(input=""),), capture=True)))
    except (JobValidationError, ValueError) as exc:
        return str(exc), notes
    return key, notes


def response_for(answer: CaseAnswer, language: str, notes: list[str]) -> RunCodeResponse:
    """One case of a job's result, as SandboxFusion would have reported that run."""
    message = "; ".join(notes)
    result = answer.result
    if result is None or result.verdict is Verdict.infra_error:
        why = answer.infra_error if result is None else result.error
        return RunCodeResponse(status="SandboxError", message=why or "the service failed")
    compiled = bool(language_entry(language).compile)
    compile_time = result.timings.get("compile_s")
    if result.error.startswith("compile error: ") and all(t.status is TestStatus.not_run for t in result.tests):
        said = result.error[len("compile error: "):]
        timed_out = said.startswith("compile step exceeded its")
        compile_result = CommandRunResult(status="TimeLimitExceeded" if timed_out else "Finished",
                                          return_code=None if timed_out else 1, stdout="", stderr=said,
                                          execution_time=compile_time)
        return RunCodeResponse(status="Failed", message=message, compile_result=compile_result)
    built = CommandRunResult(status="Finished", return_code=0, stdout="", stderr="",
                             execution_time=compile_time) if compiled else None
    run = run_result(result, answer.index)
    success = run.status == "Finished" and run.return_code == 0
    return RunCodeResponse(status="Success" if success else "Failed", message=message, compile_result=built,
                           run_result=run, executor_pod_name=os.uname().nodename)


def run_result(result: JobResult, index: int) -> CommandRunResult:
    test = result.tests[index] if index < len(result.tests) else None
    if test is None or test.output is None:  # the program did not load (Python's SyntaxError), or never ran
        if test is not None and test.status is TestStatus.timeout:
            return CommandRunResult(status="TimeLimitExceeded", execution_time=test.duration_s, stdout="", stderr="")
        return CommandRunResult(status="Finished", return_code=1, stdout="", stderr=result.error or
                                (test.message if test is not None else "the program did not run"))
    output = test.output
    if test.status is TestStatus.timeout:
        return CommandRunResult(status="TimeLimitExceeded", execution_time=test.duration_s, stdout=output.stdout,
                                stderr=output.stderr)
    code = output.exit_code if output.exit_code is not None else -(output.signal or 9)
    return CommandRunResult(status="Finished", execution_time=test.duration_s, return_code=code, stdout=output.stdout,
                            stderr=output.stderr, stdout_truncated=output.stdout_truncated)
