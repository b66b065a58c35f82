"""Run jobs in sandboxes: job specs in, one ``JobResult`` per job out, whatever fails.

Jobs that share their tests and policy travel to one sandbox as a batch. If a sandbox dies in a
batch, the batch is split so each job runs alone in a fresh sandbox; a job that kills its own
sandbox twice gets the verdict ``error`` (its fault), while failures to create or reach sandboxes
are retried with backoff and end as ``infra_error``, never blamed on the program.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Iterator

from sandbox.errors import InfrastructureError, JobValidationError, SandboxCrashed, SandboxTimeout
from sandbox.models import JobResult, JobSpec, TestResult, TestStatus, Verdict
from sandbox.policy import Policy
from sandbox.pool import SandboxPool
from sandbox.testsplit import SplitTests, defined_names_of, split_check_program, split_snippets

__all__ = ["Runner", "prepare", "PreparedJob", "batch_deadline_s", "RECORD_MAX_BYTES"]

log = logging.getLogger(__name__)

RECORD_MAX_BYTES = 32 << 20
HOST_STARTUP_MARGIN_S = 10.0


@dataclass(frozen=True)
class PreparedJob:
    job: JobSpec
    policy: Policy
    split: SplitTests
    prelude: str | None

    @property
    def group_key(self) -> tuple[Any, ...]:
        """Jobs with equal keys can share one batch: same tests, prelude and limits."""
        return (self.job.check, self.job.tests, self.job.entry_point, self.prelude, self.policy)


def prepare(job: JobSpec, base_policy: Policy) -> PreparedJob:
    """Check a job against its policy and split its tests; raises ``JobValidationError``."""
    policy = base_policy.tightened(job.limits)
    limit = policy.program_max_kib * 1024
    if len(job.source.encode()) > limit:
        raise JobValidationError(f"job {job.id}: program is {len(job.source.encode())} bytes, "
                                 f"policy {policy.name!r} accepts at most {limit} (program_max_kib)")
    test_size = len((job.check or "").encode()) + sum(len(t.code.encode()) for t in job.tests or ())
    if test_size > limit:
        raise JobValidationError(f"job {job.id}: tests are {test_size} bytes, at most {limit} accepted")
    prelude = _trusted_prelude(job)
    split = _split(job.check, job.tests, job.entry_point, prelude)
    return PreparedJob(job, policy, split, prelude)


def _trusted_prelude(job: JobSpec) -> str | None:
    """The prompt is the problem's own text: trusted to define helpers (like HumanEval's ``poly``)."""
    if job.program is not None or not job.prompt.strip():
        return None
    return job.prompt if defined_names_of(job.prompt) else None


@lru_cache(maxsize=512)
def _split(check: str | None, tests: Any, entry_point: str, prelude: str | None) -> SplitTests:
    if check is not None:
        return split_check_program(check, entry_point, prelude)
    return split_snippets([(t.name, t.code) for t in tests], entry_point, prelude)


def batch_deadline_s(policy: Policy, samples: int) -> float:
    """The host's wall-clock backstop for a batch; the queue's job timeout is set above it."""
    return policy.job_wall_time_s * samples + policy.check_cpu_time_s * 2 + HOST_STARTUP_MARGIN_S


def batch_message(prepared: list[PreparedJob]) -> dict[str, Any]:
    first = prepared[0]
    policy = first.policy
    return {
        "samples": [{"id": p.job.id, "program": p.job.source} for p in prepared],
        "entry_point": first.job.entry_point,
        "untrusted_names": list(first.split.untrusted_names),
        "prelude_names": list(first.split.prelude_names),
        "prelude": first.prelude,
        "tests": [{"name": t.name, "phase1": t.phase1, "phase2": t.phase2} for t in first.split.tests],
        "limits": {"cpu_time_s": policy.cpu_time_s, "wall_time_s": policy.wall_time_s,
                   "memory_mib": policy.memory_mib, "processes": policy.processes,
                   "file_size_mib": policy.file_size_mib, "open_files": policy.open_files,
                   "output_max_bytes": policy.output_max_kib * 1024, "record_max_bytes": RECORD_MAX_BYTES,
                   "check_cpu_time_s": policy.check_cpu_time_s},
    }


class Runner:
    def __init__(self, pool: SandboxPool, policies: dict[str, Policy], infra_attempts: int = 3,
                 backoff_s: float = 0.5) -> None:
        self.pool = pool
        self.policies = policies
        self.infra_attempts = infra_attempts
        self.backoff_s = backoff_s

    def run(self, jobs: Iterable[JobSpec]) -> list[JobResult]:
        jobs = list(jobs)
        results = {result.job_id: result for result in self.iter_results(jobs)}
        return [results[job.id] for job in jobs]

    def iter_results(self, jobs: list[JobSpec]) -> Iterator[JobResult]:
        """Yield one result per job, batch by batch, as they finish."""
        groups: dict[tuple[Any, ...], list[PreparedJob]] = {}
        for job in jobs:
            try:
                prepared = prepare(job, self._policy(job))
            except JobValidationError as exc:
                yield JobResult(job_id=job.id, verdict=Verdict.error, error=f"invalid job: {exc}",
                                metadata=job.metadata)
                continue
            groups.setdefault(prepared.group_key, []).append(prepared)
        for group in groups.values():
            yield from self._run_group(group)

    def _policy(self, job: JobSpec) -> Policy:
        if job.policy not in self.policies:
            raise JobValidationError(f"unknown policy {job.policy!r} (known: {', '.join(sorted(self.policies))})")
        return self.policies[job.policy]

    def _run_group(self, group: list[PreparedJob]) -> Iterator[JobResult]:
        batches: deque[list[PreparedJob]] = deque([group])
        failures: dict[str, list[InfrastructureError]] = {p.job.id: [] for p in group}
        while batches:
            batch = batches.popleft()
            try:
                reply, runtime, sandbox_id = self._execute(batch)
            except InfrastructureError as exc:
                if len(batch) > 1:  # isolate whichever sample brought the sandbox down
                    batches.extend([p] for p in batch)
                    continue
                prepared = batch[0]
                failures[prepared.job.id].append(exc)
                final = _final_failure(prepared, failures[prepared.job.id], self.infra_attempts)
                if final is not None:
                    yield final
                else:
                    time.sleep(self.backoff_s * 2 ** (len(failures[prepared.job.id]) - 1))
                    batches.append(batch)
                continue
            by_id = {p.job.id: p for p in batch}
            for sample in reply["samples"]:
                prepared = by_id[sample["id"]]
                yield to_result(prepared, sample, runtime, sandbox_id, attempts=len(failures[prepared.job.id]) + 1)
            unrun = [by_id[job_id] for job_id in reply["unrun"]]
            if unrun:
                batches.append(unrun)

    def _execute(self, batch: list[PreparedJob]) -> tuple[dict[str, Any], str, str]:
        policy = batch[0].policy
        sandbox = self.pool.acquire(policy)
        sandbox_id = sandbox.id[:12]
        try:
            reply = sandbox.run(batch_message(batch), timeout_s=batch_deadline_s(policy, len(batch)))
        except BaseException:
            self.pool.discard(sandbox)
            raise
        if reply.get("checker_error"):
            self.pool.discard(sandbox)
            raise InfrastructureError(f"the checker failed: {reply['checker_error']}")
        self.pool.release(sandbox, recycle=bool(reply.get("recycle")))
        return reply, sandbox.runtime, sandbox_id


def _final_failure(prepared: PreparedJob, failures: list[InfrastructureError], attempts: int) -> JobResult | None:
    """Decide whether a lone job's sandbox failures are final, and whose fault they are."""
    job, last = prepared.job, failures[-1]
    crashes = [f for f in failures if isinstance(f, SandboxCrashed)]
    if len(crashes) >= 2 and all(isinstance(f, SandboxTimeout) for f in crashes[-2:]):
        return _whole_job_result(prepared, Verdict.timeout, TestStatus.timeout,
                                 f"the sandbox stopped answering twice (host backstop {prepared.policy.job_wall_time_s}"
                                 f" s): {last}", len(failures))
    if len(crashes) >= 2 and not any(isinstance(f, SandboxTimeout) for f in crashes[-2:]):
        return _whole_job_result(prepared, Verdict.error, TestStatus.not_run,
                                 f"the program brought its sandbox down twice: {last}", len(failures))
    if len(failures) >= attempts:
        return _whole_job_result(prepared, Verdict.infra_error, TestStatus.not_run,
                                 f"infrastructure failure after {len(failures)} attempts: {last}", len(failures))
    log.warning("job %s attempt %d failed: %s", job.id, len(failures), last)
    return None


def _whole_job_result(prepared: PreparedJob, verdict: Verdict, status: TestStatus, message: str,
                      attempts: int) -> JobResult:
    tests = tuple(TestResult(name=t.name, status=status, message=message[:300]) for t in prepared.split.tests)
    return JobResult(job_id=prepared.job.id, verdict=verdict, tests=tests, error=message,
                     attempts=attempts, metadata=prepared.job.metadata, runtime=prepared.policy.runtime)


def to_result(prepared: PreparedJob, sample: dict[str, Any], runtime: str, sandbox_id: str = "",
              attempts: int = 1) -> JobResult:
    """Turn the supervisor's report on one sample into the job's result."""
    tests, verdict, error = _judge(prepared, sample)
    return JobResult(
        job_id=prepared.job.id, verdict=verdict, tests=tests, error=error,
        stdout=sample.get("stdout", ""), stderr=sample.get("stderr", ""),
        stdout_truncated=bool(sample.get("stdout_truncated")), stderr_truncated=bool(sample.get("stderr_truncated")),
        wall_time_s=sample.get("wall_s"), cpu_time_s=sample.get("cpu_s"), peak_memory_kib=sample.get("max_rss_kib"),
        runtime=runtime, sandbox_id=sandbox_id, attempts=attempts, metadata=prepared.job.metadata)


def _judge(prepared: PreparedJob, sample: dict[str, Any]) -> tuple[tuple[TestResult, ...], Verdict, str]:
    names = [t.name for t in prepared.split.tests]
    state, timed_out = sample.get("state"), bool(sample.get("timed_out"))
    exit_note = f"exit status {sample.get('returncode')}"
    if state == "program_error":
        kind, message = (sample.get("error") or ["Error", ""])[:2]
        error = f"{kind}: {message}".strip()
        return tuple(TestResult(name=n, status=TestStatus.not_run, message=f"program failed to load: {error}"[:300])
                     for n in names), Verdict.error, error
    if state == "missing_entry_point":
        reason = f"the program does not define {prepared.job.entry_point!r}"
        return tuple(TestResult(name=n, status=TestStatus.failed, message=reason) for n in names), Verdict.failed, reason
    if state != "loaded":
        if timed_out:
            reason = "time limit exceeded while loading the program"
            return tuple(TestResult(name=n, status=TestStatus.timeout, message=reason) for n in names), \
                Verdict.timeout, reason
        reason = f"the program ended its process while loading ({exit_note})"
        return tuple(TestResult(name=n, status=TestStatus.not_run, message=reason) for n in names), \
            Verdict.error, reason
    tests = []
    for name in names:
        record = sample["tests"].get(name)
        if record is None or "verdict" not in record:
            status = TestStatus.timeout if timed_out else TestStatus.error
            message = "time limit exceeded before this test finished" if timed_out else \
                f"the program ended its process before this test finished ({exit_note})"
            tests.append(TestResult(name=name, status=status, message=message))
            continue
        verdict = record["verdict"]
        tests.append(TestResult(name=name, status=TestStatus(verdict["status"]), message=verdict["message"][:300],
                                duration_s=record.get("duration_s")))
    statuses = {t.status for t in tests}
    if timed_out:
        return tuple(tests), Verdict.timeout, "time limit exceeded"
    if statuses == {TestStatus.passed}:
        return tuple(tests), Verdict.passed, ""
    return tuple(tests), Verdict.failed, ""
