"""Reading and writing JSON Lines files, with every bad line reported by number, never dropped."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import ValidationError

from sandbox.errors import JobValidationError, validation_reasons
from sandbox.models import JobSpec

__all__ = ["read_lines", "read_jobs", "read_result_ids"]


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
            if not isinstance(data, dict):
                yield number, None, "not a JSON object"
                continue
            yield number, data, ""


def read_jobs(path: Path, validate: Callable[[JobSpec], object]) -> tuple[list[JobSpec], list[str]]:
    """Parse and validate jobs; returns the good ones and one "LINE: reason" per bad line."""
    jobs, problems, seen = [], [], set()
    for number, data, problem in read_lines(path):
        if data is None:
            problems.append(f"{number}: {problem}")
            continue
        data.setdefault("id", f"{path.name}:{number}")
        try:
            job = JobSpec.model_validate(data)
            validate(job)
        except ValidationError as exc:
            problems.append(f"{number}: {validation_reasons(exc)}")
            continue
        except JobValidationError as exc:
            problems.append(f"{number}: {exc}")
            continue
        if job.id in seen:
            problems.append(f"{number}: duplicate job id {job.id!r}")
            continue
        seen.add(job.id)
        jobs.append(job)
    return jobs, problems


def read_result_ids(path: Path) -> set[str]:
    """Job ids already in a results file (a line cut short by a crash is ignored and rerun)."""
    if not path.exists():
        return set()
    return {data["job_id"] for _, data, _ in read_lines(path) if data and isinstance(data.get("job_id"), str)}
