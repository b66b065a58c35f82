"""Submit jobs to the queue and collect their results: the Python client.

    client = Client(Settings())
    for result in client.submit(jobs).results():
        ...

Jobs are validated against their policy before anything is queued. Identical jobs (same program,
tests and limits) run once: later copies, in this submission or any earlier one still cached,
are answered with the same result marked ``reused``. Jobs sharing tests travel in batches. The
queue is bounded: a large submission enqueues only while there is room, and keeps collecting
results meanwhile.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict, deque
from typing import Any, Iterable, Iterator

import redis

from sandbox import broker
from sandbox.errors import InfrastructureError, JobValidationError
from sandbox.models import JobResult, JobSpec
from sandbox.plan import Planner, PreparedJob, batch_deadline_s
from sandbox.policy import Policy, load_all_policies
from sandbox.settings import Settings

__all__ = ["Client", "Submission"]

SWEEP_EVERY_S = 5.0


class Client:
    def __init__(self, settings: Settings | None = None, connection: redis.Redis | None = None) -> None:
        self.settings = settings or Settings()
        self.connection = connection or broker.connect(self.settings.redis_url)
        try:
            self.connection.ping()  # fail here, with the fix, rather than halfway through a submission
        except redis.RedisError as exc:
            raise InfrastructureError(broker.redis_problem(self.settings.redis_url, exc)) from exc
        self.policies: dict[str, Policy] = load_all_policies(self.settings.policies_dir)
        self.planner = Planner(self.policies, self.settings.images_dir)

    def validate(self, job: JobSpec) -> PreparedJob:
        """Check a job before it is queued; raises ``JobValidationError`` naming the problem."""
        return self.planner.prepare(job)

    def submit(self, jobs: Iterable[JobSpec], queue: str = "bulk", submission_id: str | None = None,
               reuse: bool = True) -> "Submission":
        """Validate and plan; batches are enqueued as ``results()`` is consumed.

        ``reuse=False`` runs every job even if identical work has a cached result (for reruns).
        """
        broker.queue(self.connection, queue)  # unknown queue names fail here
        prepared = []
        for job in jobs:
            try:
                prepared.append(self.validate(job))
            except JobValidationError as exc:
                raise type(exc)(f"job {job.id}: {exc}") from None
        ids = [p.job.id for p in prepared]
        if len(set(ids)) != len(ids):
            raise JobValidationError("job ids must be unique within a submission")
        return Submission(self, prepared, queue, submission_id or uuid.uuid4().hex, reuse)

    def run(self, jobs: Iterable[JobSpec], queue: str = "interactive", timeout_s: float | None = None) -> list[JobResult]:
        """Submit and wait; results in the order of ``jobs``."""
        jobs = list(jobs)
        results = {r.job_id: r for r in self.submit(jobs, queue=queue).results(idle_timeout_s=timeout_s)}
        return [results[job.id] for job in jobs]


class Submission:
    def __init__(self, client: Client, prepared: list[PreparedJob], queue: str, submission_id: str,
                 reuse: bool = True) -> None:
        self.id = submission_id
        self.client = client
        self.queue = queue
        self.total = len(prepared)
        self.reused = 0
        self._copies: dict[str, list[JobSpec]] = defaultdict(list)  # representative id -> identical jobs
        self._ready: deque[JobResult] = deque()
        self._batches: deque[list[PreparedJob]] = deque()
        self._outstanding: set[str] = set()
        self._plan(prepared, reuse)
        self._enqueue_what_fits()

    def _plan(self, prepared: list[PreparedJob], reuse: bool) -> None:
        representatives: dict[str, PreparedJob] = {}
        for item in prepared:
            key = item.cache_key
            if key in representatives:
                self._copies[representatives[key].job.id].append(item.job)
            else:
                representatives[key] = item
        cached = broker.cached_results(self.client.connection, list(representatives)) if reuse else {}
        groups: dict[tuple[Any, ...], list[PreparedJob]] = defaultdict(list)
        for key, item in representatives.items():
            if key in cached:
                self._ready.append(_reuse(cached[key], item.job))
                self._ready.extend(_reuse(cached[key], copy) for copy in self._copies.pop(item.job.id, []))
            else:
                groups[item.group_key].append(item)
                self._outstanding.add(item.job.id)
        size = self.client.settings.batch_size
        for group in groups.values():
            self._batches.extend(group[i:i + size] for i in range(0, len(group), size))
        self.reused = len(self._ready)

    def results(self, idle_timeout_s: float | None = None) -> Iterator[JobResult]:
        """Yield every job's result once, in the order they finish; enqueue while the queue has room.

        ``idle_timeout_s``: give up (``InfrastructureError``) after this long without any result.
        """
        connection = self.client.connection
        last_progress = next_sweep = time.monotonic()
        while self._ready or self._outstanding:
            while self._ready:
                yield self._ready.popleft()
            if not self._outstanding:
                break
            self._enqueue_what_fits()
            try:
                finished = broker.pop_results(connection, self.id, wait_s=1)
                if time.monotonic() >= next_sweep:
                    broker.requeue_abandoned(connection, grace_s=self.client.settings.heartbeat_s * 3)
                    next_sweep = time.monotonic() + SWEEP_EVERY_S
            except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError):
                time.sleep(1)  # Redis restarting: results wait for us there
                continue
            for result in finished:
                if result.job_id not in self._outstanding:
                    continue
                self._outstanding.discard(result.job_id)
                last_progress = time.monotonic()
                yield result
                for copy in self._copies.pop(result.job_id, []):
                    yield _reuse(result, copy)
            if idle_timeout_s is not None and time.monotonic() - last_progress > idle_timeout_s:
                raise InfrastructureError(f"no result for {idle_timeout_s:.0f} s with {len(self._outstanding)} "
                                          "job(s) outstanding: are workers running? (`sandbox status`)")

    def _enqueue_what_fits(self) -> None:
        if not self._batches:
            return
        settings = self.client.settings
        rq_queue = broker.queue(self.client.connection, self.queue)
        room = settings.queue_max_items - rq_queue.count
        while self._batches and room > 0:
            batch = self._batches.popleft()
            timeout = batch_deadline_s(batch[0].policy, len(batch)) + 20  # beyond the host's own deadline
            broker.enqueue_batch(self.client.connection, self.queue, self.id, [p.job for p in batch],
                                 timeout_s=timeout, result_ttl_s=settings.result_ttl_s)
            room -= 1


def _reuse(result: JobResult, job: JobSpec) -> JobResult:
    return result.model_copy(update={"job_id": job.id, "metadata": job.metadata, "reused": True})
