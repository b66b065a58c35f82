"""Reading and writing JSON Lines files, with every bad line reported by number, never dropped."""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy

from pydantic import ValidationError

from sandbox.errors import JobValidationError, validation_reasons
from sandbox.models import JobSpec

__all__ = ["read_lines", "check_jobs", "iter_jobs", "read_result_ids", "IdSet", "JobFileCheck"]


def read_lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """Yield (line number, object or None, problem) for each non-blank line (``.gz`` files too)."""
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError as exc:
                yield number, None, f"not valid JSON: {exc}"
                continue
            except RecursionError:  # json's C parser gives up past ~1000 levels: a careless line, not a crash
                yield number, None, "not usable JSON: nested too deeply to parse"
                continue
            except MemoryError:
                yield number, None, f"not usable JSON: {len(line)} characters did not fit in memory once parsed"
                continue
            if not isinstance(data, dict):
                yield number, None, "not a JSON object"
                continue
            yield number, data, ""


class IdSet:
    """A set of job ids in 8 bytes each (64-bit hashes, sorted): flat enough for millions of ids.

    Built once, then queried. Two different ids sharing a 64-bit hash is vanishingly unlikely; if it
    happens, a job is taken for done (resume) or duplicate (checks), never run twice."""

    def __init__(self, ids: Iterable[str] = ()) -> None:
        hashes = numpy.fromiter((_hash(job_id) for job_id in ids), dtype=numpy.int64)
        self._sorted = numpy.sort(hashes)

    def __len__(self) -> int:
        return len(self._sorted)

    def __contains__(self, job_id: object) -> bool:
        if not isinstance(job_id, str) or not len(self._sorted):
            return False
        value = _hash(job_id)
        index = int(numpy.searchsorted(self._sorted, value))
        return index < len(self._sorted) and int(self._sorted[index]) == value

    def duplicates(self) -> set[int]:
        """Hashes that occur more than once."""
        repeated = self._sorted[1:][self._sorted[1:] == self._sorted[:-1]]
        return {int(value) for value in repeated}


def _hash(job_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(job_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big",
                          signed=True)


@dataclass
class JobFileCheck:
    """What a first pass over a job file found: how many good jobs, and what is wrong with the rest."""

    path: Path
    good: int = 0
    problems: list[str] = field(default_factory=list)   # "LINE: reason", at most MAX_REPORTED
    bad_lines: int = 0
    already_done: int = 0
    _bad: list[int] = field(default_factory=list)
    _bad_set: frozenset[int] = frozenset()

    def bad(self, number: int, reason: str) -> None:
        self.bad_lines += 1
        self._bad.append(number)
        if len(self.problems) < MAX_REPORTED:
            self.problems.append(f"{number}: {reason}")

    def is_bad(self, number: int) -> bool:
        return number in self._bad_set

    def seal(self) -> "JobFileCheck":
        self._bad_set = frozenset(self._bad)
        return self


MAX_REPORTED = 1000


def _job(path: Path, number: int, data: dict[str, Any]) -> JobSpec:
    data.setdefault("id", f"{path.name}:{number}")
    return JobSpec.model_validate(data)


def check_jobs(path: Path, validate: Callable[[JobSpec], object], done: IdSet | None = None) -> JobFileCheck:
    """First pass: parse and validate every line (nothing is kept but the reasons); ids must be unique.

    Good jobs whose id is in ``done`` (results already written) are counted in ``already_done``."""
    check = JobFileCheck(path)
    for number, data, problem in read_lines(path):
        if data is None:
            check.bad(number, problem)
            continue
        try:
            job = _job(path, number, data)
            validate(job)
        except ValidationError as exc:
            check.bad(number, validation_reasons(exc))
            continue
        except JobValidationError as exc:
            check.bad(number, str(exc))
            continue
        except (RecursionError, MemoryError) as exc:  # planning parses the tests: absurdly nested code stops it
            check.bad(number, f"the job cannot be planned: {type(exc).__name__} (nested too deeply or too large)")
            continue
        check.good += 1
        check.already_done += done is not None and job.id in done
    seen = IdSet(job.id for _, job in _good_jobs(path, check.seal()))
    repeated = seen.duplicates()
    if repeated:  # a rare third pass, only to name the lines
        first: dict[str, int] = {}
        for number, job in _good_jobs(path, check):
            if _hash(job.id) in repeated:
                if job.id in first:
                    check.bad(number, f"duplicate job id {job.id!r} (first on line {first[job.id]})")
                    check.good -= 1
                else:
                    first[job.id] = number
        check.seal()
    return check


def _good_jobs(path: Path, check: JobFileCheck) -> Iterator[tuple[int, JobSpec]]:
    for number, data, _ in read_lines(path):
        if data is None or check.is_bad(number):
            continue
        yield number, _job(path, number, data)


def iter_jobs(path: Path, check: JobFileCheck, skip: IdSet | None = None) -> Iterator[JobSpec]:
    """Second pass: the good jobs, one at a time, leaving out those in ``skip`` (already done)."""
    for _, job in _good_jobs(path, check):
        if skip is None or job.id not in skip:
            yield job


def read_result_ids(path: Path) -> IdSet:
    """Job ids already in a results file (a line cut short by a crash is ignored and rerun)."""
    if not path.exists():
        return IdSet()
    return IdSet(data["job_id"] for _, data, _ in read_lines(path) if data and isinstance(data.get("job_id"), str))
