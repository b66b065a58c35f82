"""Every message that crosses a process boundary of a sandbox, defined once (stdlib only).

    host ──BatchRequest──> supervisor (PID 1) ──BatchReply──> host        HMAC frames, attach stream
    supervisor ──ForkRequest──> zygote ──Forked / Exited──> supervisor    SEQPACKET socket (+ fds)
    supervisor ──DriverJob (boot pipe), Judge (+ fds)──> driver ──Judged──> supervisor
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
Form = Literal["check", "snippets"]


@dataclass(frozen=True)
class Limits:
    cpu_time_s: float          # CPU of all the sample's processes together
    wall_time_s: float         # wall-clock backstop of one sample, enforced by the supervisor
    judge_cpu_time_s: float    # CPU the driver may spend judging one sample
    memory_mib: int            # address space of each process
    processes: int             # processes and threads of one sample (its own uid)
    file_size_mib: int
    open_files: int
    output_max_bytes: int      # stdout and stderr kept per sample
    reply_max_bytes: int       # largest reply the driver accepts from a sample


@dataclass(frozen=True)
class TestUnit:
    """Test code the driver runs: the whole instrumented ``check`` program, or one snippet."""

    __test__ = False
    name: str
    source: str


@dataclass(frozen=True)
class SampleProgram:
    id: str
    source: str


@dataclass(frozen=True)
class BatchRequest:
    op: Literal["run"]
    form: Form
    entry_point: str
    prelude: Optional[str]             # the problem's trusted prompt, run by the driver
    program_names: tuple[str, ...]     # names the tests take from the program
    units: tuple[TestUnit, ...]
    samples: tuple[SampleProgram, ...]
    limits: Limits
    stop_on_first_failure: bool = False


OutcomeStatus = Literal["passed", "failed", "error", "interrupted"]


@dataclass(frozen=True)
class TestOutcome:
    """What happened to one test (an assert statement, or a snippet) while the test program ran."""

    __test__ = False
    index: int
    status: OutcomeStatus      # interrupted: the sample's process vanished during this test
    message: str = ""
    runs: int = 1              # times executed (an assert in a loop runs many times)
    handled: int = 0           # failures the test program caught itself (not failures of the sample)
    duration_s: float = 0.0


LoadState = Literal["loaded", "program_error", "missing_entry_point", "no_report"]


@dataclass(frozen=True)
class Judged:
    """The driver's account of one sample (driver -> supervisor)."""

    sample_id: str
    load: LoadState
    load_error: str = ""
    outcomes: tuple[TestOutcome, ...] = ()
    completed: bool = False    # the test program ran to its end
    stopped: str = ""          # why it did not: an exception escaped it, or the first failure stopped it
    sample_fault: str = ""     # the sample broke its channel: garbage, oversized reply, vanished
    unsupported: str = ""      # a value the service cannot carry was used by the test
    test_fault: str = ""       # the problem's own prompt or test program failed before testing anything


TimeLimit = Literal["", "cpu", "wall"]


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


@dataclass(frozen=True)
class BatchReply:
    op: Literal["result"]
    samples: tuple[SampleReport, ...]
    unrun: tuple[str, ...]             # samples not started: the sandbox must be replaced first
    healthy: bool                      # False: cleanup was incomplete; discard this sandbox
    anomalies: tuple[str, ...] = ()


@dataclass(frozen=True)
class Ready:
    op: Literal["ready"]
    kernel: str
    python: str


@dataclass(frozen=True)
class Failure:
    op: Literal["error"]
    message: str


# -- supervisor <-> zygote ------------------------------------------------------------------------
ProcessKind = Literal["sample", "driver"]


@dataclass(frozen=True)
class Rlimits:
    cpu_s: int                  # 0: none (the supervisor accounts the driver's CPU per sample)
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


# -- supervisor <-> driver ------------------------------------------------------------------------
@dataclass(frozen=True)
class DriverJob:
    form: Form
    entry_point: str
    prelude: Optional[str]
    program_names: tuple[str, ...]
    units: tuple[TestUnit, ...]
    stop_on_first_failure: bool
    reply_max_bytes: int


@dataclass(frozen=True)
class Judge:
    sample_id: str


@dataclass(frozen=True)
class SampleBoot:
    """What the supervisor writes to a fresh sample process: its program, nothing else."""

    source: str


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
