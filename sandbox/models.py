"""Jobs and results: the data that crosses every boundary (client, Redis, worker, sandbox).

Models are frozen and forbid unknown fields; the worker validates again what comes out of Redis.
"""

from __future__ import annotations

import json
import keyword
import math
import uuid
from enum import Enum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sandbox import languages
from sandbox.harness import comparators
from sandbox.harness.messages import MAX_TESTS
from sandbox.policy import LimitOverrides

__all__ = ["Verdict", "TestStatus", "TestSnippet", "StdioCase", "StdioCases", "CallCase", "CallCases", "JobSpec",
           "CaseOutput", "TestResult", "JobResult"]

MAX_SOURCE_CHARS = 16 * 1024 * 1024  # hard ceiling; each policy sets its own, lower, program_max_kib
MAX_DEPTH = 100                      # nesting of any value in a job: deeper JSON is a mistake and breaks encoders
METADATA_MAX_DEPTH = 20
METADATA_MAX_BYTES = 64 * 1024       # metadata travels with the job and comes back in every result


def unfit_for_json(value: Any, max_depth: int = MAX_DEPTH, json_only: bool = False, root: str = "") -> str | None:
    """Why ``value`` cannot travel as JSON, or None: text that is not strict UTF-8 (a lone surrogate),
    nesting deeper than ``max_depth``, and with ``json_only`` a value JSON has no type for (a set, bytes,
    a non-finite number, a key that is not text). Iterative: no input makes it recurse."""
    stack: list[tuple[Any, str, int]] = [(value, root, 0)]
    while stack:
        item, path, depth = stack.pop()
        where = (path or "value") if len(path) <= 120 else path[:60] + " ... " + path[-55:]
        if depth > max_depth:
            return f"{where}: nested more than {max_depth} levels deep"
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                return f"{where}: not valid UTF-8 text (a lone surrogate {item[exc.start]!r} at character {exc.start})"
        elif isinstance(item, BaseModel):
            stack.extend((v, f"{path}.{k}" if path else k, depth + 1) for k, v in item.__dict__.items())
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str) and json_only:
                    return f"{where}: the key {key!r} is not text"
                stack.append((key, f"{path}[key]", depth + 1))
                stack.append((child, f"{path}.{key}" if path else str(key), depth + 1))
        elif isinstance(item, (list, tuple)):
            stack.extend((child, f"{path}[{index}]", depth + 1) for index, child in enumerate(item))
        elif isinstance(item, float) and json_only and not math.isfinite(item):
            return f"{where}: {item} is not a JSON number"
        elif json_only and item is not None and not isinstance(item, (bool, int, float)):
            return f"{where}: a {type(item).__name__} is not a JSON value"
    return None


class Verdict(str, Enum):
    passed = "passed"
    failed = "failed"
    timeout = "timeout"
    error = "error"              # the program's own error: SyntaxError, crash while loading...
    infra_error = "infra_error"  # the service failed; never the program's fault


class TestStatus(str, Enum):
    __test__ = False

    passed = "passed"
    failed = "failed"    # an assertion was false
    error = "error"      # the test raised (for example the program raised while being called)
    timeout = "timeout"  # the sample ran out of time before this test finished
    not_run = "not_run"  # never reached: the program failed to load, or the test program stopped before it
    skipped = "skipped"  # the test program completed without reaching this assert (a branch not taken)
    output_limit = "output_limit"  # a stdio case printed more than the policy's case_output_max_kib
    memory_limit = "memory_limit"  # a stdio case ran out of memory


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TestSnippet(_Frozen):
    __test__: ClassVar[bool] = False  # not a pytest test class

    name: str = Field(min_length=1, max_length=200)
    code: str = Field(min_length=1, max_length=MAX_SOURCE_CHARS)


class StdioCase(_Frozen):
    """One stdin/stdout case: the program runs once with ``input`` on stdin; its stdout is judged."""

    input: str = Field(max_length=MAX_SOURCE_CHARS)
    output: str | None = Field(default=None, max_length=MAX_SOURCE_CHARS, description="expected stdout")
    name: str | None = Field(default=None, max_length=200)


class StdioCases(_Frozen):
    """Stdio tests: cases, and how outputs are compared (a named comparator, or a checker program)."""

    cases: tuple[StdioCase, ...] = Field(min_length=1, max_length=MAX_TESTS)
    comparator: str = Field(default="lines", description=f"one of: {', '.join(comparators.STDIO)}")
    float_tolerance: float = Field(default=1e-6, ge=0, le=1, description="for the 'float' comparator")
    checker: str | None = Field(default=None, max_length=MAX_SOURCE_CHARS,
                                description="Python source defining check(input, output, expected) -> bool or "
                                            "(bool, reason); it decides every case instead of the comparator")
    apps_wrap: bool = Field(default=False, description="a program that does not compile as a module is tried as the "
                            "body of a function, as the APPS harness runs every program (top-level `return` works)")
    capture: bool = Field(default=False, description="no expected output: each case's stdout, stderr, exit code or "
                          "signal and times are returned (a case passes when its run ends by itself with status 0)")

    @field_validator("comparator")
    @classmethod
    def _known_comparator(cls, value: str) -> str:
        if value not in comparators.STDIO:
            raise ValueError(f"unknown comparator {value!r}: use one of {', '.join(comparators.STDIO)}")
        return value

    @model_validator(mode="after")
    def _judgeable(self) -> "StdioCases":
        if self.capture:
            if self.checker is not None or any(case.output is not None for case in self.cases):
                raise ValueError("capture mode compares nothing: give no expected outputs and no checker")
            return self
        if self.checker is None and any(case.output is None for case in self.cases):
            raise ValueError("every case needs an expected output unless a checker decides")
        return self


class CallCase(_Frozen):
    args: tuple[Any, ...] = Field(default=(), description="JSON values, passed positionally")
    expected: Any = None
    name: str | None = Field(default=None, max_length=200)


class CallCases(_Frozen):
    """Call-based tests (APPS / LiveCodeBench ``fn_name``): one call per case, compared by a named rule."""

    fn_name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    class_name: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                   description="LeetCode style: call this method of the program's class (Solution)")
    cases: tuple[CallCase, ...] = Field(min_length=1, max_length=MAX_TESTS)
    comparator: str = Field(default="exact", description=f"one of: {', '.join(comparators.CALLS)}")

    @field_validator("comparator")
    @classmethod
    def _known_comparator(cls, value: str) -> str:
        if value not in comparators.CALLS:
            raise ValueError(f"unknown comparator {value!r}: use one of {', '.join(comparators.CALLS)}")
        return value


class InlineTests(_Frozen):
    """Tests in the program's own language (HumanEval-X, MultiPL-E): appended to the program, run with it
    as one process; the verdict is the run's exit status (and output, by ``rule``). Weaker than the other
    forms: the program runs in the same process as its tests (see the README's guarantees)."""

    code: str = Field(min_length=1, max_length=MAX_SOURCE_CHARS, description="test code, after the program")
    preamble: str = Field(default="", max_length=MAX_SOURCE_CHARS,
                          description="trusted text before the program (includes, package clause)")
    rule: str = Field(default="exit_zero", description=f"one of: {', '.join(comparators.INLINE)}")

    @field_validator("rule")
    @classmethod
    def _known_rule(cls, value: str) -> str:
        if value not in comparators.INLINE:
            raise ValueError(f"unknown rule {value!r}: use one of {', '.join(comparators.INLINE)}")
        return value


class JobSpec(_Frozen):
    """One program and its tests.

    The program is either ``prompt`` + ``completion`` (HumanEval's shape) or a whole ``program``.
    A prompt is trusted only when the job says so (``prompt_trusted``: the problem's own text, run by
    the test driver to define helpers for the tests, like HumanEval's ``poly``); otherwise it is part
    of the program and nothing else. The tests take from the program only ``entry_point`` and the
    ``program_names`` the job declares; standard modules they use are the driver's own.
    Tests are exactly one of: a HumanEval-style ``check`` program, named ``tests`` snippets (both
    call ``entry_point``), ``stdio`` cases, call-based ``calls`` cases (these four for Python), or
    ``inline_tests`` in the program's own language (any language but Python). Stdio cases work in
    every language.
    """

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=200)
    language: str = "python"
    prompt: str = Field(default="", max_length=MAX_SOURCE_CHARS)
    completion: str = Field(default="", max_length=MAX_SOURCE_CHARS)
    program: str | None = Field(default=None, max_length=MAX_SOURCE_CHARS)
    check: str | None = Field(default=None, max_length=MAX_SOURCE_CHARS)
    tests: tuple[TestSnippet, ...] | None = Field(default=None, max_length=1000)
    stdio: StdioCases | None = None
    calls: CallCases | None = None
    inline_tests: InlineTests | None = None
    entry_point: str = Field(default="", pattern=r"^([A-Za-z_][A-Za-z0-9_]*)?$")
    program_names: tuple[str, ...] = Field(default=(), max_length=100, description="names besides `entry_point` that "
                                           "the tests take from the program (helpers it defines); any other name a "
                                           "test uses it must define or import itself")
    prompt_trusted: bool = Field(default=False, description="the prompt is the problem's own trusted text: the test "
                                 "driver runs it before the tests, so they can use its helpers (HumanEval's `poly`); "
                                 "otherwise the prompt is part of the program only")
    stop_on_first_failure: bool = Field(default=False, description="stop a sample at its first failing test "
                                        "(enough for pass/fail: RL rewards, filtering); later tests are not run")
    policy: str = Field(default="default", pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    sandbox_key: str = Field(default="", pattern=r"^[A-Za-z0-9._~-]{0,80}$",
                             description="run only in sandboxes started for this key: never in a warm sandbox of "
                             "unkeyed jobs, never in one of another key (each sandbox is a new interpreter with its own "
                             "string-hash secret: re-run rounds that must see set-order non-determinism use a key each)")
    limits: LimitOverrides | None = None
    metadata: dict[str, Any] = Field(default_factory=dict, description="the caller's own JSON, returned with the "
                                     f"result: strict UTF-8, at most {METADATA_MAX_DEPTH} levels deep and "
                                     f"{METADATA_MAX_BYTES // 1024} KiB")

    @field_validator("metadata")
    @classmethod
    def _json_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        problem = unfit_for_json(value, METADATA_MAX_DEPTH, json_only=True, root="metadata")
        if problem is not None:
            raise ValueError(problem)
        size = len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode())
        if size > METADATA_MAX_BYTES:
            raise ValueError(f"metadata is {size} bytes of JSON, at most {METADATA_MAX_BYTES} accepted")
        return value

    @model_validator(mode="after")
    def _fit_to_travel(self) -> "JobSpec":
        """Every text of a job is strict UTF-8 and no value nests without bound: a job that passes
        validation can always be serialised (to Redis, to the sandbox, into its result)."""
        problem = unfit_for_json(self)
        if problem is not None:
            raise ValueError(problem)
        return self

    @field_validator("program_names")
    @classmethod
    def _identifiers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [name for name in value if not name.isidentifier() or not name.isascii() or keyword.iskeyword(name)]
        if bad:
            raise ValueError(f"program_names must be Python identifiers, not {bad[0][:60]!r}")
        return value

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str) -> str:
        canonical = languages.canonical_name(value)
        if canonical is None:
            raise ValueError(f"unsupported language {value!r}: this service runs {languages.known_languages()}")
        return canonical

    @model_validator(mode="after")
    def _one_of_each(self) -> "JobSpec":
        if self.program is not None and (self.prompt or self.completion):
            raise ValueError("give either `program` or `prompt` + `completion`, not both")
        if self.program is None and not (self.prompt or self.completion):
            raise ValueError("the job has no code: give `program`, or `prompt` + `completion`")
        forms = [name for name in ("check", "tests", "stdio", "calls", "inline_tests") if getattr(self, name) is not None]
        if len(forms) != 1:
            raise ValueError("give exactly one of `check` (a HumanEval-style test program), `tests` (snippets), "
                             "`stdio` (input/output cases), `calls` (call-based cases) or `inline_tests` (tests in "
                             f"the program's language); got {forms or 'none'}")
        allowed = languages.LANGUAGES[self.language].forms
        if forms[0] not in allowed:
            raise ValueError(f"{self.language} programs take {' or '.join(f'`{f}`' for f in allowed)} tests, "
                             f"not `{forms[0]}`")
        if forms[0] in ("check", "tests") and not self.entry_point:
            raise ValueError(f"`{forms[0]}` tests call the program's `entry_point`: name it")
        if self.tests is not None and len({t.name for t in self.tests}) != len(self.tests):
            raise ValueError("test names must be unique")
        if self.prompt_trusted and not self.prompt:
            raise ValueError("`prompt_trusted` is about a `prompt`: the job has none")
        if self.program_names and forms[0] not in ("check", "tests"):
            raise ValueError("`program_names` are for `check` and `tests` tests, which call into the program")
        return self

    @property
    def source(self) -> str:
        """The whole program as it runs: prompt and completion joined as HumanEval joins them."""
        return self.program if self.program is not None else self.prompt + self.completion


class CaseOutput(_Frozen):
    """What one stdio case printed and how its run ended (capture mode)."""

    stdout: str = Field(description="up to the policy's case_output_max_kib")
    stderr: str = Field(description="its tail")
    exit_code: int | None = Field(description="None when a signal or a time limit ended the run")
    signal: int | None = Field(default=None, description="the signal that ended it (9 when killed at a limit)")
    stdout_truncated: bool = False
    stderr_truncated: bool = False


class TestResult(_Frozen):
    __test__: ClassVar[bool] = False

    name: str
    status: TestStatus
    message: str = ""
    duration_s: float | None = None
    cpu_time_s: float | None = None       # stdio cases: the run's own CPU
    peak_memory_kib: int | None = None    # stdio cases: the run's own peak memory
    output: CaseOutput | None = None      # stdio capture mode: what the case printed, how it ended


class JobResult(_Frozen):
    job_id: str
    verdict: Verdict
    tests: tuple[TestResult, ...] = ()
    error: str = Field(default="", description="why the verdict is error or infra_error")
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    wall_time_s: float | None = None
    cpu_time_s: float | None = None
    peak_memory_kib: int | None = None
    time_limit: str = Field(default="", description="for a timeout: 'cpu' or 'wall', the limit that stopped it")
    runtime: str = ""
    sandbox_id: str = Field(default="", description="container that ran the job (short id)")
    attempts: int = 1
    reused: bool = False
    anomalies: tuple[str, ...] = Field(default=(), description="what the sample left behind or broke; never cached")
    provisional: str = Field(default="", description="for a timeout the machine's load may have caused (a wall-clock "
                             "kill, or CPU charged beyond what its sandbox was given): why; such a timeout is not "
                             "final, never cached, and `evaluate` runs it once more")
    timings: dict[str, float] = Field(default_factory=dict, description="where the time went, in seconds: queue_s "
                                      "(waiting in Redis), sandbox_s (its share of the batch's round trip), running_s "
                                      "(program and driver), finishing_s (cleanup), driver_cpu_s")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.passed
