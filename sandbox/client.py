"""Submit jobs to the queue and collect their results: the Python client.

    client = Client(Settings())
    for result in client.submit(jobs).results():
        ...

Jobs are validated against their policy before anything is queued. Identical jobs (same program,
tests and limits) run once: later copies in this submission wait for the first and get its result
marked ``reused`` (unless that result is not final: then they run), and workers answer work that an
earlier submission left in the cache (signed entries only; the client never reads the cache). Jobs
sharing tests travel in batches. The queue is bounded: a large submission enqueues only while there
is room, and keeps collecting results meanwhile. Everything a client writes or reads in Redis is
under its tenant (``Settings.tenant``).
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from collections import OrderedDict, defaultdict, deque
from collections.abc import Sequence
from typing import Any, Iterable, Iterator

import redis

from sandbox import broker
from sandbox.errors import InfrastructureError, JobValidationError
from sandbox.models import JobResult, JobSpec
from sandbox.plan import Planner, PreparedJob, batch_deadline_s
from sandbox.policy import Policy, load_all_policies
from sandbox.settings import Settings

__all__ = ["Client", "Submission"]

LOOKUP_CHUNK = 256        # jobs read from the source per cache lookup
MAX_OPEN_GROUPS = 64      # batches being filled at once (problems interleaved in the source)
_REDIS_AWAY = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError)
MAX_HELD = 20_000         # answers waiting to be read plus copies waiting for in-flight work: stop reading beyond
MEMO_CHARS = 16 << 20     # this submission's final results kept (compact) to answer copies read after they finished


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
               reuse: bool = True, total: int | None = None) -> "Submission":
        """Plan a submission; batches are enqueued as ``results()`` is consumed, while the queue has room.

        A list of jobs is validated whole before anything is queued. Any other iterable is read as
        the queue drains, so a file of millions of jobs runs in flat memory (validate it first: a bad
        job met halfway raises then). ``reuse=False`` runs every job even if identical work has a
        cached result (for reruns). Job ids must be unique within a submission.
        """
        broker.queue(self.connection, queue)  # unknown queue names fail here
        if submission_id is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", submission_id):
            raise JobValidationError(f"bad submission id {submission_id[:60]!r}: letters, digits, '_', '.', '-' (at most 128)")
        if isinstance(jobs, Sequence):
            prepared: Iterable[PreparedJob] = [self._prepare(job) for job in jobs]
            ids = [p.job.id for p in prepared]  # type: ignore[union-attr]
            if len(set(ids)) != len(ids):
                raise JobValidationError("job ids must be unique within a submission")
            total = len(ids)
        else:
            prepared = (self._prepare(job) for job in jobs)
        return Submission(self, iter(prepared), queue, submission_id or uuid.uuid4().hex, reuse, total)

    def _prepare(self, job: JobSpec) -> PreparedJob:
        try:
            return self.planner.prepare(job, self.settings.tenant)
        except JobValidationError as exc:
            raise type(exc)(f"job {job.id}: {exc}") from None

    def run(self, jobs: Iterable[JobSpec], queue: str = "interactive", timeout_s: float | None = None) -> list[JobResult]:
        """Submit and wait; results in the order of ``jobs``."""
        jobs = list(jobs)
        results = {r.job_id: r for r in self.submit(jobs, queue=queue).results(idle_timeout_s=timeout_s)}
        return [results[job.id] for job in jobs]


class Submission:
    """One submission's flow: jobs are pulled from their source only as the bounded queue has room.

    What it holds at any time is bounded by the queue, not by the submission: the batches being
    filled (at most ``MAX_OPEN_GROUPS`` of them), the jobs in flight, and copies of in-flight work.
    """

    def __init__(self, client: Client, source: Iterator[PreparedJob], queue: str, submission_id: str,
                 reuse: bool = True, total: int | None = None) -> None:
        self.id = submission_id
        self.client = client
        self.queue = queue
        self.total = total
        self.reused = 0
        self._source: Iterator[PreparedJob] | None = source
        self._reuse = reuse
        self._open: OrderedDict[tuple[Any, ...], list[PreparedJob]] = OrderedDict()  # batches being filled
        self._batches: deque[list[PreparedJob]] = deque()                            # full batches, not yet queued
        self._in_flight: dict[str, str] = {}               # cache key -> the job id that runs it
        self._keys: dict[str, str] = {}                    # job id in flight -> its cache key
        self._copies: dict[str, list[JobSpec]] = defaultdict(list)  # job id in flight -> identical jobs
        self._held_copies = 0
        self._fresh: set[str] = set()                     # added jobs not yet enqueued: never answered from the cache
        self._memo: OrderedDict[str, tuple[JobResult, int]] = OrderedDict()  # cache key -> (compact result, its size)
        self._memo_chars = 0
        self._ready: deque[JobResult] = deque()
        self._outstanding: set[str] = set()
        self._added: deque[PreparedJob] = deque()          # jobs added while running (reruns): never from the cache
        self._enqueue_what_fits()

    def add(self, jobs: list[JobSpec]) -> None:
        """Run more jobs in this submission (for example, a timed-out sample once more); never from the cache."""
        for job in jobs:
            self._added.append(self.client._prepare(job))
            self._outstanding.add(job.id)
            self._fresh.add(job.id)

    def _pull(self, wanted: int) -> None:
        """Read jobs from the source until ``wanted`` batches are full (or it ends); copies of this submission's
        finished work are answered at once, copies of work in flight wait for it."""
        size = self.client.settings.batch_size
        while self._added:
            item = self._added.popleft()
            batch = self._open.setdefault(("added", item.group_key), [])
            batch.append(item)
            if len(batch) >= size or self._source is None:
                self._batches.append(self._open.pop(("added", item.group_key)))
        # Copies fill no batch: without a bound on them, a file of repeats would be read whole.
        while self._source is not None and len(self._batches) < wanted \
                and self._held_copies + len(self._ready) < MAX_HELD:
            chunk = list(itertools.islice(self._source, LOOKUP_CHUNK))
            if not chunk:
                self._source = None
                self._batches.extend(self._open.values())
                self._open.clear()
                break
            for item in chunk:
                key = item.cache_key
                if key in self._memo:  # this submission's own final result: no need to queue it again
                    self._ready.append(_reuse(self._memo[key][0], item.job))
                    self.reused += 1
                elif key in self._in_flight:
                    self._copies[self._in_flight[key]].append(item.job)
                    self._held_copies += 1
                else:
                    self._in_flight[key], self._keys[item.job.id] = item.job.id, key
                    self._outstanding.add(item.job.id)
                    batch = self._open.setdefault(item.group_key, [])
                    self._open.move_to_end(item.group_key)
                    batch.append(item)
                    if len(batch) >= size:
                        self._batches.append(self._open.pop(item.group_key))
                    elif len(self._open) > MAX_OPEN_GROUPS:  # interleaved problems: ship the oldest partial batch
                        self._batches.append(self._open.popitem(last=False)[1])
        if self._source is not None and self._held_copies + len(self._ready) >= MAX_HELD:
            self._batches.extend(self._open.values())  # reading paused: the work the copies wait for must run
            self._open.clear()

    def results(self, idle_timeout_s: float | None = None) -> Iterator[JobResult]:
        """Yield every job's result once, in the order they finish; enqueue while the queue has room.

        ``idle_timeout_s``: give up (``InfrastructureError``) after this long without any result.
        """
        connection = self.client.connection
        last_progress = time.monotonic()
        while True:
            try:
                self._enqueue_what_fits()
            except _REDIS_AWAY:
                time.sleep(1)  # Redis restarting: nothing is lost, the jobs not yet sent are still ours
                continue
            while self._ready:
                yield self._ready.popleft()
                last_progress = time.monotonic()  # idle is time spent waiting for results, not the caller's time
            if not self._outstanding:
                if self._source is None and not self._batches and not self._added:
                    return
                time.sleep(0.2)  # everything so far was answered from the cache; the queue is full of others' work
                continue
            try:  # (batches of a dead worker are enqueued again by the live workers, which alone may)
                finished = broker.pop_results(connection, self.client.settings.tenant, self.id, wait_s=1)
            except _REDIS_AWAY:
                time.sleep(1)  # Redis restarting: results wait for us there
                continue
            for result in finished:
                if result.job_id not in self._outstanding:
                    continue
                self._outstanding.discard(result.job_id)
                key = self._keys.pop(result.job_id, "")
                self._in_flight.pop(key, None)
                last_progress = time.monotonic()
                self.reused += result.reused
                if key and self._reuse and (result.reused or broker.cacheable(result)):
                    self._remember(key, result)
                yield result
                last_progress = time.monotonic()
                copies = self._copies.pop(result.job_id, [])
                self._held_copies -= len(copies)
                if not broker.cacheable(result) and not result.reused:  # not final: each copy is judged itself
                    self.add(copies)
                    continue
                for copy in copies:
                    self.reused += 1
                    yield _reuse(result, copy)
            if idle_timeout_s is not None and time.monotonic() - last_progress > idle_timeout_s:
                raise InfrastructureError(f"no result for {idle_timeout_s:.0f} s with {len(self._outstanding)} "
                                          "job(s) outstanding: are workers running? (`sandbox status`)")

    def _remember(self, key: str, result: JobResult) -> None:
        kept = broker.compact(result).model_copy(update={"metadata": {}})
        size = len(kept.model_dump_json())
        self._memo[key] = (kept, size)
        self._memo_chars += size
        while self._memo_chars > MEMO_CHARS:
            self._memo_chars -= self._memo.popitem(last=False)[1][1]

    def _enqueue_what_fits(self) -> None:
        settings = self.client.settings
        rq_queue = broker.queue(self.client.connection, self.queue)
        room = settings.queue_max_items - rq_queue.count
        if room <= 0:
            return
        self._pull(room)
        while self._batches and room > 0:
            batch = self._batches[0]
            timeout = batch_deadline_s(batch[0].policy, len(batch)) + 20  # beyond the host's own deadline
            fresh = {p.job.id for p in batch} & self._fresh
            broker.enqueue_batch(self.client.connection, self.queue, self.client.settings.tenant, self.id,
                                 [p.job for p in batch], timeout_s=timeout, result_ttl_s=settings.result_ttl_s,
                                 cache=self._reuse, reuse=self._reuse and not fresh)
            self._batches.popleft()  # only once it is in Redis: a failed enqueue is tried again
            self._fresh -= fresh
            room -= 1


def _reuse(result: JobResult, job: JobSpec) -> JobResult:
    return result.model_copy(update={"job_id": job.id, "metadata": job.metadata, "reused": True})
