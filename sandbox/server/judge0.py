"""Judge0 CE's REST API (judge0/judge0 @47dfd63, CE 1.13.1), over the queue.

``POST /submissions`` (``wait=true``, or a token to poll), ``POST``/``GET /submissions/batch``,
``GET /submissions/{token}``, ``/languages``, ``/statuses``, ``/about``, ``/version``, ``/config_info``;
``base64_encoded``; statuses 1-14 with Judge0's names. Each submission is one stdio case run in
capture mode; submissions of one program (a batch sharing its source, or single ones arriving
together) are grouped into one job, so they compile once. The expected output is compared here, on
the host, by Judge0's rule (lines right-stripped, trailing blank lines ignored).

Differences on purpose (README, "HTTP service"):
- ``base64_encoded`` defaults to false (CE's documentation), not to Judge0 master's implicit true.
- ``memory_limit`` (KB) is the address-space limit of each process for C, C++, Python and Rust, at
  least 64 MiB; Java, JavaScript, TypeScript and Go keep their policy's limit (their runtimes reserve
  address space). ``cpu_time_limit`` is the run's CPU limit; ``wall_time_limit`` its backstop.
- Submissions are kept in this process's memory (the most recent ``MAX_KEPT``); a restart forgets them.
- Not supported (a 422 naming the field): ``compiler_options``, ``command_line_arguments``,
  ``callback_url``, ``additional_files``, ``enable_network: true``. ``number_of_runs`` runs once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sandbox.errors import JobValidationError
from sandbox.languages import language as language_entry
from sandbox.models import JobResult, JobSpec, StdioCase, StdioCases, TestStatus, Verdict
from sandbox.policy import LimitOverrides
from sandbox.server.core import CaseAnswer, Grouper, ProgramKey, Service

__all__ = ["SubmissionRequest", "mount", "LANGUAGE_IDS", "STATUSES"]

POLICY = "sandboxfusion"
VERSION = "1.13.1"
MAX_BATCH = 20
MAX_QUEUE = 100          # queue items beyond which creation answers 503 queue is full (Judge0's MAX_QUEUE_SIZE)
MAX_KEPT = 100_000

# Judge0 CE 1.13.1 ids clients hard-code, and the newer CE ids -> this service's languages
LANGUAGE_IDS: dict[int, tuple[str, str]] = {
    71: ("python", "Python (3.11)"), 100: ("python", "Python (3.11)"), 113: ("python", "Python (3.11)"),
    48: ("c", "C (GCC, C17)"), 49: ("c", "C (GCC, C17)"), 50: ("c", "C (GCC, C17)"), 103: ("c", "C (GCC, C17)"),
    52: ("cpp", "C++ (GCC, C++17)"), 53: ("cpp", "C++ (GCC, C++17)"), 54: ("cpp", "C++ (GCC, C++17)"),
    105: ("cpp", "C++ (GCC, C++17)"),
    62: ("java", "Java (OpenJDK 17)"), 91: ("java", "Java (OpenJDK 17)"),
    63: ("javascript", "JavaScript (Node.js 18)"), 102: ("javascript", "JavaScript (Node.js 18)"),
    74: ("typescript", "TypeScript (4.8)"), 101: ("typescript", "TypeScript (4.8)"),
    60: ("go", "Go (1.19)"), 107: ("go", "Go (1.19)"),
    73: ("rust", "Rust (1.63)"), 108: ("rust", "Rust (1.63)"),
}
RESERVING_RUNTIMES = frozenset({"java", "javascript", "typescript", "go"})

STATUSES = {1: "In Queue", 2: "Processing", 3: "Accepted", 4: "Wrong Answer", 5: "Time Limit Exceeded",
            6: "Compilation Error", 7: "Runtime Error (SIGSEGV)", 8: "Runtime Error (SIGXFSZ)",
            9: "Runtime Error (SIGFPE)", 10: "Runtime Error (SIGABRT)", 11: "Runtime Error (NZEC)",
            12: "Runtime Error (Other)", 13: "Internal Error", 14: "Exec Format Error"}
SIGNAL_STATUS = {11: 7, 25: 8, 8: 9, 6: 10}

DEFAULT_FIELDS = ("token", "time", "memory", "stdout", "stderr", "compile_output", "message", "status")
ALL_FIELDS = ("source_code", "language_id", "stdin", "expected_output", "stdout", "stderr", "compile_output", "message",
              "exit_code", "exit_signal", "status", "created_at", "finished_at", "token", "time", "wall_time", "memory",
              "cpu_time_limit", "cpu_extra_time", "wall_time_limit", "memory_limit", "stack_limit",
              "max_processes_and_or_threads", "enable_per_process_and_thread_time_limit",
              "enable_per_process_and_thread_memory_limit", "max_file_size", "redirect_stderr_to_stdout",
              "enable_network", "number_of_runs", "language")   # only names the judge0 SDK's Submission knows
ENCODED = frozenset({"source_code", "stdin", "expected_output", "stdout", "stderr", "compile_output", "message"})

CONFIG_INFO: dict[str, Any] = {
    "maintenance_mode": False, "enable_wait_result": True, "enable_compiler_options": False,
    "allowed_languages_for_compile_options": [], "enable_command_line_arguments": False,
    "enable_submission_delete": False, "enable_callbacks": False, "callbacks_max_tries": 0, "callbacks_timeout": 0.0,
    "enable_additional_files": False, "max_queue_size": MAX_QUEUE, "cpu_time_limit": 5.0, "max_cpu_time_limit": 15.0,
    "cpu_extra_time": 1.0, "max_cpu_extra_time": 5.0, "wall_time_limit": 10.0, "max_wall_time_limit": 20.0,
    "memory_limit": 128000, "max_memory_limit": 512000, "stack_limit": 64000, "max_stack_limit": 128000,
    "max_processes_and_or_threads": 60, "max_max_processes_and_or_threads": 120,
    "enable_per_process_and_thread_time_limit": False, "allow_enable_per_process_and_thread_time_limit": False,
    "enable_per_process_and_thread_memory_limit": False, "allow_enable_per_process_and_thread_memory_limit": False,
    "max_file_size": 1024, "max_max_file_size": 4096, "number_of_runs": 1, "max_number_of_runs": 20,
    "redirect_stderr_to_stdout": False, "max_extract_size": 0, "enable_batched_submissions": True,
    "max_submission_batch_size": MAX_BATCH, "submission_cache_duration": 1.0, "use_docs_as_homepage": False,
    "enable_network": False, "allow_enable_network": False,
}


class SubmissionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    source_code: str = Field(min_length=1)
    language_id: int
    compiler_options: str | None = Field(default=None, max_length=512)
    command_line_arguments: str | None = Field(default=None, max_length=512)
    stdin: str | None = None
    expected_output: str | None = None
    cpu_time_limit: float | None = Field(default=None, gt=0, le=15)
    cpu_extra_time: float | None = Field(default=None, ge=0, le=5)
    wall_time_limit: float | None = Field(default=None, gt=0, le=20)
    memory_limit: float | None = Field(default=None, gt=0, le=512000)
    stack_limit: int | None = Field(default=None, ge=0, le=128000)
    max_processes_and_or_threads: int | None = Field(default=None, ge=1, le=120)
    enable_per_process_and_thread_time_limit: bool | None = None
    enable_per_process_and_thread_memory_limit: bool | None = None
    max_file_size: int | None = Field(default=None, ge=0, le=4096)
    redirect_stderr_to_stdout: bool | None = None
    enable_network: bool | None = None
    number_of_runs: int | None = Field(default=None, ge=1, le=20)
    callback_url: str | None = None
    additional_files: str | None = None


@dataclass
class Record:
    """One submission as Judge0 shows it: its request, and its result once there is one."""

    token: str
    request: SubmissionRequest
    created_at: datetime
    status_id: int = 1
    finished_at: datetime | None = None
    stdout: str | None = None
    stderr: str | None = None
    compile_output: str | None = None
    message: str | None = None
    exit_code: int | None = None
    exit_signal: int | None = None
    time: str | None = None
    wall_time: str | None = None
    memory: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def view(self, fields: tuple[str, ...], encoded: bool) -> dict[str, Any]:
        request = self.request
        values: dict[str, Any] = {
            **{name: getattr(request, name) for name in ALL_FIELDS if name in SubmissionRequest.model_fields},
            "token": self.token, "stdout": self.stdout, "stderr": self.stderr, "compile_output": self.compile_output,
            "message": self.message, "exit_code": self.exit_code, "exit_signal": self.exit_signal,
            "status": {"id": self.status_id, "description": STATUSES[self.status_id]},
            "created_at": _stamp(self.created_at), "finished_at": _stamp(self.finished_at) if self.finished_at else None,
            "time": self.time, "wall_time": self.wall_time, "memory": self.memory,
            "language": {"id": request.language_id, "name": LANGUAGE_IDS[request.language_id][1]},
        }
        shown = {}
        for name in fields:
            if name not in values:
                continue
            value = values[name]
            if encoded and name in ENCODED and isinstance(value, str):
                value = base64.b64encode(value.encode()).decode()
            shown[name] = value
        return shown


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Store:
    def __init__(self) -> None:
        self.records: OrderedDict[str, Record] = OrderedDict()

    def add(self, record: Record) -> None:
        self.records[record.token] = record
        while len(self.records) > MAX_KEPT:
            self.records.popitem(last=False)


def mount(app: FastAPI, service: Service, grouper: Grouper, config: object) -> None:
    store = Store()

    def decode(request: SubmissionRequest, encoded: bool) -> SubmissionRequest | dict[str, list[str]]:
        problems: dict[str, list[str]] = {}
        if request.language_id not in LANGUAGE_IDS:
            problems["language_id"] = [f"language with id {request.language_id} doesn't exist"]
        for name, wanted in (("compiler_options", None), ("command_line_arguments", None), ("callback_url", None),
                             ("additional_files", None), ("enable_network", True)):
            value = getattr(request, name)
            if value is not None and value != "" and (wanted is None or value == wanted):
                problems[name] = ["is not supported by this service"]
        if not encoded:
            return problems or request
        decoded = {}
        for name in ("source_code", "stdin", "expected_output"):
            value = getattr(request, name)
            if value is None:
                continue
            try:
                decoded[name] = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                problems[name] = ["is not valid base64 of UTF-8 text (or send base64_encoded=false)"]
        return problems or request.model_copy(update=decoded)

    def program_key(request: SubmissionRequest) -> ProgramKey:
        name = LANGUAGE_IDS[request.language_id][0]
        entry = language_entry(name)
        policy = service.client.planner.policy(POLICY).for_language(name, bool(entry.compile))
        cpu = min(request.cpu_time_limit or CONFIG_INFO["cpu_time_limit"], policy.case_cpu_time_s)
        wall = min(max(request.wall_time_limit or CONFIG_INFO["wall_time_limit"], cpu), policy.case_wall_time_s)
        memory = None
        if request.memory_limit is not None and name not in RESERVING_RUNTIMES:
            memory = min(max(64, int(request.memory_limit) // 1024), policy.memory_mib)
        return ProgramKey(language=name, program=request.source_code, policy=POLICY,
                          limits=LimitOverrides(case_cpu_time_s=cpu, case_wall_time_s=wall, memory_mib=memory))

    def validate(key: ProgramKey) -> str:
        try:
            service.client.validate(JobSpec(language=key.language, program=key.program, policy=POLICY, limits=key.limits,
                                            stdio=StdioCases(cases=(StdioCase(input=""),), capture=True)))
        except (JobValidationError, ValueError) as exc:
            return str(exc)
        return ""

    async def settle(record: Record, future: asyncio.Future[CaseAnswer]) -> None:
        record.status_id = 2
        try:
            fill(record, await future)
        except Exception as exc:  # never leave a waiting caller (or a poller) hanging: the service's own failure
            record.status_id, record.message = 13, f"internal error: {type(exc).__name__}: {exc}"
        finally:
            record.finished_at = datetime.now(timezone.utc).replace(tzinfo=None)
            record.done.set()

    def create(request: SubmissionRequest) -> Record | dict[str, list[str]]:
        key = program_key(request)
        why = validate(key)
        if why:
            return {"source_code": [why]}
        record = Record(token=str(uuid.uuid4()), request=request, created_at=datetime.now(timezone.utc).replace(tzinfo=None))
        store.add(record)
        task = asyncio.get_running_loop().create_task(settle(record, grouper.submit(key, request.stdin or "")))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        service.figures.add("requests_judge0")
        return record

    tasks: set[asyncio.Task[None]] = set()

    async def body_of(request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            return JSONResponse(status_code=400, content={"error": f"the body is not valid JSON: {exc}"})

    async def full(service_: Service) -> bool:
        try:
            return await service_.queue_depth() > MAX_QUEUE
        except Exception:
            return False  # the queue's own failure is reported per submission (status 13)

    @app.post("/submissions", tags=["judge0"], status_code=201)
    @app.post("/submissions/", tags=["judge0"], status_code=201, include_in_schema=False)
    async def create_submission(request: Request, base64_encoded: bool = False, wait: bool = False,
                                fields: str | None = None) -> Any:
        body = await body_of(request)
        if isinstance(body, JSONResponse):
            return body
        parsed = _parse(body)
        if isinstance(parsed, dict):
            return JSONResponse(status_code=422, content=parsed)
        checked = decode(parsed, base64_encoded)
        if isinstance(checked, dict):
            return JSONResponse(status_code=422, content=checked)
        if await full(service):
            return JSONResponse(status_code=503, content={"error": "queue is full"})
        record = create(checked)
        if isinstance(record, dict):
            return JSONResponse(status_code=422, content=record)
        if not wait:
            return JSONResponse(status_code=201, content={"token": record.token})
        await record.done.wait()
        return JSONResponse(status_code=201, content=record.view(_fields(fields), base64_encoded))

    @app.post("/submissions/batch", tags=["judge0"], status_code=201)
    async def create_batch(request: Request, base64_encoded: bool = False) -> Any:
        body = await body_of(request)
        if isinstance(body, JSONResponse):
            return body
        items = body.get("submissions") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            return JSONResponse(status_code=400, content={"error": "give {\"submissions\": [...]} with at least one"})
        if len(items) > MAX_BATCH:
            return JSONResponse(status_code=400, content={"error": f"number of submissions in a batch should be less "
                                                          f"than or equal to {MAX_BATCH}"})
        if await full(service):
            return JSONResponse(status_code=503, content={"error": "queue is full"})
        answers: list[Any] = []
        for item in items:
            parsed = _parse(item)
            checked = parsed if isinstance(parsed, dict) else decode(parsed, base64_encoded)
            record = checked if isinstance(checked, dict) else create(checked)
            answers.append(record if isinstance(record, dict) else {"token": record.token})
        if all("token" not in answer for answer in answers):
            return JSONResponse(status_code=422, content=answers)
        return JSONResponse(status_code=201, content=answers)

    @app.get("/submissions/batch", tags=["judge0"])
    async def get_batch(request: Request, tokens: str | None = None, base64_encoded: bool = False,
                        fields: str | None = None) -> Any:
        wanted = tokens or request.headers.get("tokens") or ""
        shown = _fields(fields)
        found = [store.records.get(token.strip()) for token in wanted.split(",") if token.strip()]
        return {"submissions": [record.view(shown, base64_encoded) if record else None for record in found]}

    @app.get("/submissions/{token}", tags=["judge0"])
    async def get_submission(token: str, base64_encoded: bool = False, fields: str | None = None) -> Any:
        record = store.records.get(token)
        if record is None:
            return JSONResponse(status_code=404, content={"error": "submission not found"})
        return record.view(_fields(fields), base64_encoded)

    @app.delete("/submissions/{token}", tags=["judge0"])
    async def delete_submission(token: str) -> Any:
        return JSONResponse(status_code=400, content={"error": "delete not allowed"})

    @app.get("/languages", tags=["judge0"])
    async def languages() -> list[dict[str, Any]]:
        return [{"id": number, "name": name} for number, (_, name) in sorted(LANGUAGE_IDS.items())]

    @app.get("/languages/all", tags=["judge0"])
    async def languages_all() -> list[dict[str, Any]]:
        return [{"id": number, "name": name, "is_archived": False} for number, (_, name) in sorted(LANGUAGE_IDS.items())]

    @app.get("/languages/{language_id}", tags=["judge0"])
    async def language_detail(language_id: int) -> Any:
        if language_id not in LANGUAGE_IDS:
            return JSONResponse(status_code=404, content={"error": f"language with id {language_id} doesn't exist"})
        name, title = LANGUAGE_IDS[language_id]
        entry = language_entry(name)
        return {"id": language_id, "name": title, "is_archived": False, "source_file": entry.source_name,
                "compile_cmd": " ".join(entry.compile) or None, "run_cmd": " ".join(entry.run) or None}

    @app.get("/statuses", tags=["judge0"])
    async def statuses() -> list[dict[str, Any]]:
        return [{"id": number, "description": text} for number, text in STATUSES.items()]

    @app.get("/about", tags=["judge0"])
    async def about() -> dict[str, str]:
        return {"version": VERSION, "homepage": "https://judge0.com", "source_code": "https://github.com/judge0/judge0",
                "maintainer": "sandbox-exec (a Judge0-compatible surface, not Judge0)"}

    @app.get("/version", tags=["judge0"])
    async def version() -> PlainTextResponse:
        return PlainTextResponse(VERSION)

    @app.get("/config_info", tags=["judge0"])
    async def config_info() -> dict[str, Any]:
        return CONFIG_INFO


def _parse(item: Any) -> SubmissionRequest | dict[str, list[str]]:
    if not isinstance(item, dict):
        return {"submission": ["must be a JSON object"]}
    try:
        return SubmissionRequest.model_validate(item)
    except ValidationError as exc:
        problems: dict[str, list[str]] = {}
        for error in exc.errors():
            problems.setdefault(".".join(map(str, error["loc"])) or "submission", []).append(error["msg"])
        return problems


def _fields(text: str | None) -> tuple[str, ...]:
    if not text:
        return DEFAULT_FIELDS
    if text.strip() == "*":
        return ALL_FIELDS
    return tuple(name.strip() for name in text.split(",") if name.strip())


def fill(record: Record, answer: CaseAnswer) -> None:
    """A Judge0 status and fields from one case of a job's result; only ``infra_error`` is status 13."""
    result: JobResult | None = answer.result
    if result is None or result.verdict is Verdict.infra_error:
        record.status_id, record.message = 13, (answer.infra_error if result is None else result.error) or "internal error"
        return
    test = result.tests[answer.index] if answer.index < len(result.tests) else None
    if result.error.startswith("compile error: ") and all(t.status is TestStatus.not_run for t in result.tests):
        record.status_id, record.compile_output = 6, result.error[len("compile error: "):]
        return
    if test is None or test.output is None:
        if test is not None and test.status is TestStatus.timeout:
            record.status_id, record.time = 5, _seconds(test.cpu_time_s)
            return
        record.status_id, record.exit_code = 11, 1   # the program did not load (Python's SyntaxError)
        record.stderr, record.message = result.error or (test.message if test else ""), "Exited with error status 1"
        return
    output = test.output
    record.stdout, record.stderr = output.stdout, output.stderr
    if record.request.redirect_stderr_to_stdout:
        record.stdout, record.stderr = output.stdout + output.stderr, None
    record.time, record.wall_time, record.memory = _seconds(test.cpu_time_s), _seconds(test.duration_s), test.peak_memory_kib
    record.exit_code, record.exit_signal = output.exit_code, output.signal
    if test.status is TestStatus.timeout:
        record.status_id, record.message = 5, "Time limit exceeded"
    elif test.status is TestStatus.output_limit:
        record.status_id, record.message = 8, "Output limit exceeded"
    elif test.status is TestStatus.memory_limit:
        record.status_id, record.message = 12, "Memory limit exceeded"
    elif output.signal is not None:
        record.status_id, record.message = SIGNAL_STATUS.get(output.signal, 12), f"Exited with signal {output.signal}"
    elif output.exit_code != 0:
        record.status_id, record.message = 11, f"Exited with error status {output.exit_code}"
    elif record.request.expected_output is None or _same(record.stdout or "", record.request.expected_output):
        record.status_id = 3
    else:
        record.status_id = 4


def _same(got: str, expected: str) -> bool:
    """Judge0's comparison: each line right-stripped, then the whole right-stripped."""
    def normal(text: str) -> str:
        return "\n".join(line.rstrip() for line in text.split("\n")).rstrip()
    return normal(got) == normal(expected)


def _seconds(value: float | None) -> str | None:
    return None if value is None else f"{value:.3f}"
