"""Every message that crosses a process boundary of a sandbox, defined once (stdlib only).

    host ──BatchRequest──> supervisor (PID 1) ──BatchReply──> host        HMAC frames, attach stream
    supervisor ──ForkRequest──> zygote ──Forked / Exited──> supervisor    SEQPACKET socket (+ fds)
    supervisor ──DriverJob (boot pipe), Judge (+ fds), CaseRun──> driver ──RunCase, Judged──> supervisor
    supervisor ──ProgramBoot (boot pipe)──> a sample's program process
    driver ──call / resolve / getattr / end──> sample ──replies──> driver  frames on two pipes

The host validates ``BatchReply`` with pydantic over these same dataclasses; inside the sandbox,
:func:`from_dict` rebuilds the messages trusted processes send each other. What a *sample* sends
(its replies to the driver, its output) is never read through these types: the driver parses it
by hand, bounded, as hostile input.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

# -- host <-> supervisor --------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    cpu_time_s: float          # CPU of all the sample's processes together
    wall_time_s: float         # wall-clock backstop of one sample, enforced by the supervisor
    judge_cpu_time_s: float    # CPU the driver may spend judging one sample
    memory_mib: int            # address space of each process
    processes: int             # processes and threads of one sample process tree (its own uid)
    file_size_mib: int
    open_files: int
    output_max_bytes: int      # stdout and stderr kept per sample (per case for stdio)
    reply_max_bytes: int       # largest reply the driver accepts from a sample
    case_cpu_time_s: float     # stdio: CPU of one case's run
    case_wall_time_s: float    # stdio: wall-clock backstop of one case's run
    case_output_max_bytes: int  # stdio: stdout judged per case; more is "output limit exceeded"
    compile_cpu_time_s: float = 10.0   # compiled languages: CPU of the compile step (not counted in cpu_time_s)
    compile_wall_time_s: float = 30.0
    compile_memory_mib: int = 1024     # address space of each compiler process
    compile_output_max_bytes: int = 65536  # compiler messages kept
    build_max_bytes: int = 64 << 20    # what a compile step may leave in out/ for the runs
    cpus: float = 1.0                  # the sandbox's CPUs: what its tasks' charged CPU is bounded by, per interval


@dataclass(frozen=True)
class TestUnit:
    """Test code the driver runs: the whole instrumented ``check`` program, or one snippet."""

    __test__ = False
    name: str
    source: str


@dataclass(frozen=True)
class FunctionTests:
    """Tests written in Python that call the program's functions: ``check(candidate)`` or snippets."""

    form: Literal["check", "snippets"]
    entry_point: str
    prelude: Optional[str]             # the problem's trusted prompt, run by the driver
    program_names: tuple[str, ...]     # names the tests take from the program: the entry point and declared ones
    units: tuple[TestUnit, ...]
    modules: tuple[str, ...] = ()      # modules the tests use without importing: the driver's own imports


@dataclass(frozen=True)
class CallCase:
    args: tuple[Any, ...]              # JSON values, passed positionally
    expected: Any


@dataclass(frozen=True)
class CallTests:
    """Call-based cases (APPS / LiveCodeBench ``fn_name``): one call per case, judged by a comparator."""

    form: Literal["calls"]
    fn_name: str
    class_name: Optional[str]          # LeetCode style: the method of a fresh ``Solution()`` per case
    cases: tuple[CallCase, ...]
    comparator: str


@dataclass(frozen=True)
class StdioCase:
    input: str
    output: Optional[str]              # expected stdout; None when only the checker decides


@dataclass(frozen=True)
class StdioTests:
    """Standard input/output cases: each case is a fresh run of the program, judged by a comparator or checker."""

    form: Literal["stdio"]
    cases: tuple[StdioCase, ...]
    comparator: str
    float_tolerance: float
    checker: Optional[str]             # Python source of a special judge: check(input, output, expected)
    apps_wrap: bool = False            # a program that does not compile is tried as APPS runs it: in a function
    capture: bool = False              # no expected output: each case's stdout, stderr and exit status are returned


@dataclass(frozen=True)
class InlineTests:
    """Tests in the program's own language, appended to it (HumanEval-X, MultiPL-E): one run, judged by
    ``rule`` on its exit status and output. ``code`` is trusted; the supervisor replaces ``NONCE_MARK`` in it
    with a secret per sample, which the tests print once they have all run (an early ``exit(0)`` lacks it)."""

    form: Literal["inline"]
    code: str
    rule: str                          # a rule of comparators.INLINE
    preamble: str = ""                 # trusted text before the program (HumanEval-X's includes, Go's package)
    support: tuple[tuple[str, str], ...] = ()  # (file name, trusted text) beside the program, e.g. Go's TestMain


NONCE_MARK = "@@SANDBOX_NONCE@@"


Tests = Union[FunctionTests, CallTests, StdioTests, InlineTests]
Form = Literal["check", "snippets", "calls", "stdio", "inline"]


@dataclass(frozen=True)
class Toolchain:
    """How programs of one language are built and run. Python (``native``) runs in the harness's own
    interpreter; every other language writes ``source_name``, runs ``compile`` (if any) as a process of its
    own uid in a build directory, and runs ``run`` once per case in a fresh directory holding a read-only
    copy of what the compile step left in ``out/`` (``{out}`` in ``run``)."""

    language: str
    native: bool                       # Python: the harness's modes (serve, run) instead of exec
    compile: tuple[str, ...] = ()      # argv; empty: nothing to compile (the source itself goes to out/)
    run: tuple[str, ...] = ()          # argv; "{out}" is the build output, "{main}" the program's main name
    env: tuple[tuple[str, str], ...] = ()  # extra environment for compile and run ("{home}": the working directory)
    compile_guard: str = "sigchld"     # hardening.GUARDS, or "none": what else a process of it may not do
    run_guard: str = "sigchld"


@dataclass(frozen=True)
class SampleProgram:
    id: str
    source: str
    source_name: str = "main.py"       # file the program is written to (Java: its public class's name)
    main: str = "main"                 # what {main} stands for in the run command (Java: the class to run)


@dataclass(frozen=True)
class BatchRequest:
    op: Literal["run"]
    tests: Tests
    samples: tuple[SampleProgram, ...]
    limits: Limits
    stop_on_first_failure: bool = False
    toolchain: Toolchain = Toolchain(language="python", native=True)


OutcomeStatus = Literal["passed", "failed", "error", "interrupted", "timeout", "output_limit", "memory_limit"]


TimeLimit = Literal["", "cpu", "wall"]


@dataclass(frozen=True)
class Captured:
    """One stdio run in capture mode: its output (capped, and flagged when cut) and how it ended."""

    stdout: str
    stderr: str                        # the tail of what it wrote to stderr
    exit_status: Optional[int]         # negative: the signal that ended it; None: stopped at a time limit
    stdout_truncated: bool = False     # more than the case's output cap, or cut to fit the report
    stderr_truncated: bool = False


@dataclass(frozen=True)
class TestOutcome:
    """What happened to one test (an assert, a snippet, a call case or a stdio case)."""

    __test__ = False
    index: int
    status: OutcomeStatus      # interrupted: the sample's process vanished during this test
    message: str = ""
    runs: int = 1              # times executed (an assert in a loop runs many times)
    handled: int = 0           # failures the test program caught itself (not failures of the sample)
    duration_s: float = 0.0
    cpu_s: Optional[float] = None       # stdio cases: the run's own figures
    max_rss_kib: Optional[int] = None
    limit: TimeLimit = ""               # stdio cases: which of the case's own time limits stopped it
    captured: Optional[Captured] = None  # stdio capture mode: what the run printed and how it ended


LoadState = Literal["loaded", "program_error", "missing_entry_point", "no_report"]


MAX_TESTS = 10_000            # tests (asserts, snippets, cases) one job may have: their report must fit below
JUDGED_MAX_BYTES = 4 << 20    # a Judged, encoded: the driver shortens messages to fit; the socket carries 8 MiB


@dataclass(frozen=True)
class Judged:
    """The driver's account of one sample (driver -> supervisor)."""

    sample_id: str
    load: LoadState
    load_error: str = ""
    outcomes: tuple[TestOutcome, ...] = ()
    completed: bool = False    # the test program ran to its end (every case ran)
    stopped: str = ""          # why it did not: an exception escaped it, or the first failure stopped it
    sample_fault: str = ""     # the sample broke its channel: garbage, oversized reply, vanished
    unsupported: str = ""      # a value the service cannot carry was used by the test
    test_fault: str = ""       # the problem's own prompt or test program failed before testing anything


@dataclass(frozen=True)
class SampleReport:
    """Everything the supervisor knows about one sample (supervisor -> host)."""

    id: str
    judged: Judged
    judge_fault: str = ""      # the driver ran out of time or memory judging this sample's values
    time_limit: TimeLimit = ""
    exit_status: Optional[int] = None
    cpu_s: float = 0.0
    wall_s: float = 0.0
    max_rss_kib: int = 0
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    leftovers: tuple[str, ...] = ()   # what the sample left behind (killed or removed after it)
    timings: tuple[tuple[str, float], ...] = ()  # where the sample's wall time went, for profiles


@dataclass(frozen=True)
class BatchReply:
    op: Literal["result"]
    samples: tuple[SampleReport, ...]
    unrun: tuple[str, ...]             # samples not started: the sandbox must be replaced first
    healthy: bool                      # False: cleanup was incomplete; discard this sandbox
    anomalies: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hello:
    """The host's first frame: the key for authenticating replies, and this sandbox's fixed limits."""

    op: Literal["hello"]
    key: str
    limits: Limits
    slots: int                         # samples judged at once


@dataclass(frozen=True)
class Ready:
    op: Literal["ready"]
    kernel: str
    python: str


@dataclass(frozen=True)
class Failure:
    op: Literal["error"]
    message: str


@dataclass(frozen=True)
class Refused:
    """The supervisor could not take a request (too large, or not a request): no program of it has run."""

    op: Literal["refused"]
    message: str


# -- supervisor <-> zygote ------------------------------------------------------------------------
ProcessKind = Literal["program", "driver"]


@dataclass(frozen=True)
class Rlimits:
    cpu_s: int                  # 0: none (set later from the boot payload, or accounted by the supervisor)
    memory_bytes: int
    file_size_bytes: int
    open_files: int
    processes: int


@dataclass(frozen=True)
class ForkRequest:
    token: int
    kind: ProcessKind
    uid: int
    cwd: str
    env: dict[str, str]
    rlimits: Rlimits


@dataclass(frozen=True)
class Forked:
    event: Literal["forked"]
    token: int
    pid: int


@dataclass(frozen=True)
class Exited:
    event: Literal["exited"]
    pid: int
    status: int
    cpu_s: float
    max_rss_kib: int


# -- supervisor <-> driver, supervisor -> program ---------------------------------------------------
@dataclass(frozen=True)
class DriverJob:
    tests: Tests
    stop_on_first_failure: bool
    reply_max_bytes: int
    judge_cpu_time_s: float            # stdio: a checker's CPU budget per case (a checker past it is the problem's fault)


@dataclass(frozen=True)
class Judge:
    """Judge one sample; for function and call forms the two pipe ends to its process come attached."""

    op: Literal["judge"]
    sample_id: str


@dataclass(frozen=True)
class RunCase:
    """driver -> supervisor: run the program once on stdio case ``index``."""

    op: Literal["run_case"]
    index: int


@dataclass(frozen=True)
class CaseRun:
    """supervisor -> driver: how one run went; its stdout follows the header (after a NUL byte)."""

    op: Literal["case"]
    index: int
    exit_status: Optional[int]         # None: it never exited by itself (killed at a limit)
    limit: Literal["", "cpu", "wall", "sample"]   # which limit stopped it ("sample": the sample's own budget)
    cpu_s: float
    wall_s: float
    max_rss_kib: int
    stdout_truncated: bool             # more than case_output_max_bytes: output limit exceeded
    stderr: str                        # its tail, for messages
    compile_error: str = ""            # the program did not compile (reported before any of it ran)
    stdout_tail: str = ""              # inline tests: the last bytes of stdout (the nonce is printed last)
    nonce: str = ""                    # inline tests: what the tests print once they have all run


@dataclass(frozen=True)
class ProgramBoot:
    """What the supervisor writes to a fresh program process: its program and how to run it, nothing else."""

    mode: Literal["serve", "run", "exec"]  # serve: answer the driver's calls; run: Python once on stdin;
    source: str                        # exec: execve ``argv`` (a compiler, or a built program once on stdin)
    cpu_s: int                         # RLIMIT_CPU for this process beyond the harness's own CPU (the run's limit)
    apps_wrap: bool = False            # run: if it does not compile, try it as APPS's harness would
    argv: tuple[str, ...] = ()         # exec: the command, looked up on PATH
    memory_bytes: int = 0              # RLIMIT_AS, lowered from what the spare was forked with (0: kept)
    files: tuple[tuple[str, str], ...] = ()  # exec: (name, text) written to the working directory first
    env: tuple[tuple[str, str], ...] = ()    # exec: added to the environment
    guard: str = "sigchld"             # stacked on the seccomp filter before any of the program runs


@dataclass(frozen=True)
class Started:
    """A run's or compile step's first word on its reply pipe, written by the harness in the sample's process
    before any of the program exists or runs (the pipe is closed before it does): whether a Python program
    compiles, and the CPU the process had used until then (the fork, the harness's set-up), which is not
    the program's."""

    ok: bool
    harness_cpu_s: float = 0.0
    error: str = ""                    # run: the program does not compile (message and traceback)


# -- building messages from JSON inside the sandbox (trusted senders) ------------------------------
class MessageError(ValueError):
    """A message did not have the shape its type declares."""


_HINTS: dict[type, dict[str, Any]] = {}


def to_dict(message: Any) -> dict[str, Any]:
    return dataclasses.asdict(message)


def from_dict(cls: type, data: Any) -> Any:
    """Rebuild dataclass ``cls`` from JSON data, checking every field's type."""
    if not isinstance(data, dict):
        raise MessageError(f"{cls.__name__}: expected an object")
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise MessageError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    values = {}
    for item in dataclasses.fields(cls):
        if item.name in data:
            values[item.name] = _convert(hints[item.name], data[item.name], f"{cls.__name__}.{item.name}")
        elif item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
            raise MessageError(f"{cls.__name__}: missing field {item.name}")
    return cls(**values)


def _convert(kind: Any, value: Any, where: str) -> Any:
    if kind is Any:
        return value
    origin = typing.get_origin(kind)
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return from_dict(kind, value)
    if origin is Literal:
        if value not in typing.get_args(kind):
            raise MessageError(f"{where}: {value!r} is not one of {typing.get_args(kind)}")
        return value
    if origin in (Union, types.UnionType):
        for option in typing.get_args(kind):
            try:
                return _convert(option, value, where)
            except MessageError:
                continue
        raise MessageError(f"{where}: {type(value).__name__} fits none of {kind}")
    if origin is tuple:
        item_type = typing.get_args(kind)[0]
        if item_type is Any:
            if not isinstance(value, list):
                raise MessageError(f"{where}: expected a list")
            return tuple(value)
        if not isinstance(value, list):
            raise MessageError(f"{where}: expected a list")
        return tuple(_convert(item_type, item, where) for item in value)
    if origin is dict:
        key_type, value_type = typing.get_args(kind)
        if not isinstance(value, dict):
            raise MessageError(f"{where}: expected an object")
        return {_convert(key_type, k, where): _convert(value_type, v, where) for k, v in value.items()}
    if kind is type(None):
        if value is not None:
            raise MessageError(f"{where}: expected null")
        return None
    if kind is float and type(value) in (int, float):
        return float(value)
    if kind in (str, int, bool) and type(value) is kind:
        return value
    raise MessageError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}")


__all__ = [name for name, value in list(globals().items())
           if isinstance(value, type) and value.__module__ == __name__] + ["from_dict", "to_dict", "field"]
