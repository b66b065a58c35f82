"""Run jobs in sandboxes: job specs in, exactly one ``JobResult`` per job out, whatever fails.

Jobs that share their tests, policy and image travel to one sandbox as a batch. Samples the
sandbox did not start (it asked to be discarded after an unclean sample) go on in a fresh one.
If a sandbox dies in a batch, the batch is split so each job runs alone; a job whose lone sandbox
dies twice gets ``error`` (or ``timeout``), its own fault, but only after a known-good canary has
run fine in a fresh sandbox: if the canary fails too, the service is at fault and the job gets
``infra_error``. Failures to create or reach sandboxes are retried with backoff and end as
``infra_error``, never blamed on a program.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Iterable, Iterator

from sandbox.errors import InfrastructureError, JobValidationError, SandboxCrashed, SandboxRefused, SandboxTimeout
from sandbox.harness.messages import BatchReply
from sandbox.models import JobResult, JobSpec, TestStatus, Verdict
from sandbox.plan import Planner, PreparedJob, batch_deadline_s, batch_request, frame_batches, reply_bound_bytes
from sandbox.pool import SandboxPool
from sandbox.verdict import to_result, whole_job_result

__all__ = ["Runner", "CANARY"]

log = logging.getLogger(__name__)

REPLY_OVERHEAD_BYTES = 1 << 20
CANARY = JobSpec(id="canary", program="def add(a, b):\n    return a + b\n",
                 check="def check(candidate):\n    assert candidate(2, 3) == 5\n", entry_point="add", policy="default")


class Runner:
    def __init__(self, pool: SandboxPool, planner: Planner, infra_attempts: int = 3, backoff_s: float = 0.5) -> None:
        self.pool = pool
        self.planner = planner
        self.infra_attempts = infra_attempts
        self.backoff_s = backoff_s

    def run(self, jobs: Iterable[JobSpec]) -> list[JobResult]:
        jobs = list(jobs)
        results = {result.job_id: result for result in self.iter_results(jobs)}
        return [results[job.id] for job in jobs]

    def iter_results(self, jobs: list[JobSpec]) -> Iterator[JobResult]:
        """Yield one result per job, batch by batch, as they finish."""
        prepared = []
        for job in jobs:
            try:
                prepared.append(self.planner.prepare(job))
            except JobValidationError as exc:
                yield JobResult(job_id=job.id, verdict=Verdict.error, error=f"invalid job: {exc}", metadata=job.metadata)
        yield from self.iter_prepared(prepared)

    def iter_prepared(self, prepared: list[PreparedJob]) -> Iterator[JobResult]:
        """Like ``iter_results``, for jobs the caller has prepared already."""
        groups: dict[tuple[Any, ...], list[PreparedJob]] = {}
        for item in prepared:
            groups.setdefault(item.group_key, []).append(item)
        for group in groups.values():
            yield from self._run_group(group)

    def _run_group(self, group: list[PreparedJob]) -> Iterator[JobResult]:
        batches: deque[list[PreparedJob]] = deque(frame_batches(group))  # each request and reply fits a frame
        failures: dict[str, list[InfrastructureError]] = {p.job.id: [] for p in group}
        split: set[str] = set()  # ran again alone because their batch failed: an attempt that counts
        unrun: dict[str, int] = {p.job.id: 0 for p in group}  # times a job came back unjudged from a discarded sandbox
        while batches:
            batch = batches.popleft()
            started = time.monotonic()
            try:
                reply, runtime, sandbox_id, container_cpu_s = self._execute(batch)
            except InfrastructureError as exc:
                if len(batch) > 1:  # isolate whichever sample brought the sandbox down
                    batches.extend([p] for p in batch)
                    split.update(p.job.id for p in batch)
                    continue
                prepared = batch[0]
                failures[prepared.job.id].append(exc)
                final = self._final_failure(prepared, failures[prepared.job.id])
                if final is not None:
                    yield final
                else:
                    time.sleep(self.backoff_s * 2 ** (len(failures[prepared.job.id]) - 1))
                    batches.append(batch)
                continue
            by_id = {p.job.id: p for p in batch}
            anomalies = () if reply.healthy else tuple(f"sandbox discarded after this batch: {a}" for a in reply.anomalies)
            share = {"sandbox_s": round((time.monotonic() - started) / max(1, len(reply.samples)), 4)}
            charged = sum(report.cpu_s for report in reply.samples)
            for report in reply.samples:
                prepared = by_id.pop(report.id)
                attempts = len(failures[prepared.job.id]) + 1 + (prepared.job.id in split)
                yield to_result(prepared, report, runtime, sandbox_id, attempts=attempts, anomalies=anomalies,
                                timings=share, container_cpu_s=container_cpu_s, others_charged_s=charged - report.cpu_s)
            if by_id:  # not started, or cut short: the sandbox had to be discarded first
                yield from self._unrun(batch, list(by_id.values()), reply, failures, unrun, split, batches)

    def _unrun(self, batch: list[PreparedJob], again: list[PreparedJob], reply: BatchReply,
               failures: dict[str, list[InfrastructureError]], unrun: dict[str, int], split: set[str],
               batches: deque[list[PreparedJob]]) -> Iterator[JobResult]:
        """Jobs a discarded sandbox did not judge go on in a fresh one, but not forever: a job that comes back
        unjudged twice runs alone, and a lone job whose sandbox is given up while it runs (its processes outlived
        their sweep, say) counts that as its sandbox failing: twice, and a canary decides whose fault it was."""
        if len(batch) == 1:
            prepared = again[0]
            why = "; ".join(reply.anomalies)[:500] or "no reason given"
            failures[prepared.job.id].append(SandboxCrashed(f"the sandbox was given up while it judged this sample: {why}"))
            final = self._final_failure(prepared, failures[prepared.job.id])
            if final is not None:
                yield final
            else:
                batches.append(again)
            return
        for prepared in again:
            unrun[prepared.job.id] += 1
        alone = [p for p in again if unrun[p.job.id] >= 2]
        batches.extend([p] for p in alone)
        split.update(p.job.id for p in alone)
        rest = [p for p in again if unrun[p.job.id] < 2]
        if rest:
            batches.append(rest)

    def _execute(self, batch: list[PreparedJob]) -> tuple[BatchReply, str, str, float | None]:
        """The batch's reply, the runtime and short id of the sandbox that ran it, and the CPU the host gave that
        sandbox over the batch (None where its cgroup cannot be read)."""
        first = batch[0]
        sandbox = self.pool.acquire(first.policy, first.image)
        sandbox_id = sandbox.id[:12]
        request = batch_request(batch)
        max_bytes = len(batch) * reply_bound_bytes(first.policy) + REPLY_OVERHEAD_BYTES
        try:
            reply = sandbox.run(request, timeout_s=batch_deadline_s(first.policy, len(batch)), max_reply_bytes=max_bytes)
        except BaseException:
            self.pool.discard(sandbox)
            raise
        if {report.id for report in reply.samples} | set(reply.unrun) != {p.job.id for p in batch}:
            self.pool.discard(sandbox)
            raise SandboxCrashed("the sandbox answered for other samples than it was given")
        self.pool.release(sandbox, recycle=not reply.healthy)
        return reply, sandbox.runtime, sandbox_id, sandbox.batch_cpu_s

    def _final_failure(self, prepared: PreparedJob, failures: list[InfrastructureError]) -> JobResult | None:
        """Decide whether a lone job's sandbox failures are final, and whose fault they are."""
        last = failures[-1]
        if isinstance(last, SandboxRefused):  # before any of it ran: the service's fault, and it would not change
            return whole_job_result(prepared, Verdict.infra_error, TestStatus.not_run, str(last), len(failures))
        crashes = [f for f in failures if isinstance(f, SandboxCrashed)]
        if len(crashes) >= 2:
            healthy, why = self._canary_passes(prepared)
            if not healthy:
                return whole_job_result(prepared, Verdict.infra_error, TestStatus.not_run,
                                        f"the sandbox failed and so did a known-good canary ({why}): {last}", len(failures))
            if all(isinstance(f, SandboxTimeout) for f in crashes[-2:]):
                return whole_job_result(prepared, Verdict.timeout, TestStatus.timeout,
                                        f"the sandbox stopped answering twice (host backstop "
                                        f"{prepared.policy.job_wall_time_s} s): {last}", len(failures))
            return whole_job_result(prepared, Verdict.error, TestStatus.not_run,
                                    f"the program brought its sandbox down twice (a canary then ran fine): {last}",
                                    len(failures))
        if len(failures) >= self.infra_attempts:
            return whole_job_result(prepared, Verdict.infra_error, TestStatus.not_run,
                                    f"infrastructure failure after {len(failures)} attempts: {last}", len(failures))
        log.warning("job %s attempt %d failed: %s", prepared.job.id, len(failures), last)
        return None

    def _canary_passes(self, prepared: PreparedJob) -> tuple[bool, str]:
        """Run a known-good program under the same policy and image in a fresh sandbox."""
        # The policy's own limits, not the job's tightened ones: a job cannot make the canary fail.
        canary = self.planner.prepare(CANARY.model_copy(update={"policy": prepared.job.policy}))
        canary = PreparedJob(canary.job, self.planner.policy(prepared.job.policy), canary.tests, prepared.image)
        try:
            reply, _, _, _ = self._execute([canary])
        except InfrastructureError as exc:
            return False, str(exc)[:200]
        result = to_result(canary, reply.samples[0], "") if reply.samples else None
        if result is None or result.verdict is not Verdict.passed:
            return False, f"canary verdict {result.verdict.value if result else 'missing'}"
        return True, ""
