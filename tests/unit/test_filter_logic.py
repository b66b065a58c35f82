"""The filter's decision rules, with a stand-in client that returns canned verdicts (pure logic only;
the real path is tested end to end in tests/integration/test_scoring_e2e.py)."""

from __future__ import annotations

from typing import Iterable

from sandbox.evaluate import filter_problems, human_eval_result
from sandbox.models import JobResult, JobSpec, TestResult, TestStatus, Verdict
from sandbox.problems import Problem, Sample


class CannedSubmission:
    def __init__(self, results: list[JobResult]) -> None:
        self._results = results

    def results(self, idle_timeout_s: float | None = None) -> Iterable[JobResult]:
        return iter(self._results)


class CannedClient:
    """Verdict chosen by the completion text: 'ok' passes, 'infra' is an infrastructure error."""

    def submit(self, jobs: list[JobSpec], reuse: bool = True) -> CannedSubmission:
        def verdict(job: JobSpec) -> Verdict:
            return Verdict.passed if "ok" in job.completion else (
                Verdict.infra_error if "infra" in job.completion else Verdict.failed)
        return CannedSubmission([JobResult(job_id=j.id, verdict=verdict(j)) for j in jobs])


def problem(task: str) -> Problem:
    return Problem(task_id=task, prompt="def f():\n", check="def check(c):\n    assert c()\n", entry_point="f",
                   continues_prompt=True)


def test_infra_only_problems_are_undetermined_not_unsolvable() -> None:
    problems = {t: problem(t) for t in ("solved", "unsolved", "infra", "mixed", "lonely")}
    samples = [(1, Sample(task_id="solved", completion="ok")), (2, Sample(task_id="solved", completion="no")),
               (3, Sample(task_id="unsolved", completion="no")), (4, Sample(task_id="infra", completion="infra")),
               (5, Sample(task_id="infra", completion="infra")), (6, Sample(task_id="mixed", completion="infra")),
               (7, Sample(task_id="mixed", completion="no"))]
    report = filter_problems(CannedClient(), problems, samples, "humaneval")  # type: ignore[arg-type]
    assert report.kept == ["solved"]
    assert report.unsolved == ["unsolved", "mixed"]
    assert report.undetermined == ["infra"]
    assert report.no_samples == ["lonely"]
    assert report.counts["mixed"] == (2, 0, 1)


def test_threshold_counts_passing_samples() -> None:
    problems = {"a": problem("a")}
    samples = [(1, Sample(task_id="a", completion="ok 1")), (2, Sample(task_id="a", completion="no"))]
    assert filter_problems(CannedClient(), problems, samples, "p", threshold=2).unsolved == ["a"]  # type: ignore[arg-type]


def test_human_eval_result_strings() -> None:
    failed = JobResult(job_id="x", verdict=Verdict.failed,
                       tests=(TestResult(name="#1 t", status=TestStatus.passed),
                              TestResult(name="#2 u", status=TestStatus.failed, message="assertion failed: x")))
    assert human_eval_result(failed) == "failed: #2 u: assertion failed: x"
    assert human_eval_result(JobResult(job_id="x", verdict=Verdict.timeout)) == "timed out"
    assert human_eval_result(JobResult(job_id="x", verdict=Verdict.passed)) == "passed"
    assert human_eval_result(JobResult(job_id="x", verdict=Verdict.error, error="SyntaxError: bad")) == "failed: SyntaxError: bad"
