"""The function RQ calls for each queue item: run a batch of jobs and store one result per job.

The payload is JSON that came out of Redis, so every job is validated again here. Whatever goes
wrong, each job of the batch ends with exactly one stored result: a program's outcome, or
``infra_error`` when the service itself failed; a result that cannot be stored is replaced by one
made of nothing but the job's id, and never stops the others. The batch's tenant is read from its
RQ job id (which only that tenant's Redis user, or a worker, can write), never from the payload.
Identical work is answered from the cache only if the entry's signature holds.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timezone
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import redis
from pydantic import ValidationError
from rq import get_current_job

from sandbox import broker
from sandbox.errors import JobValidationError, validation_reasons
from sandbox.models import JobResult, JobSpec, Verdict
from sandbox.plan import Planner, PreparedJob
from sandbox.runner import Runner
from sandbox.settings import Settings
from sandbox.signing import CacheSigner

__all__ = ["WorkerContext", "install", "run_batch"]

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    """What one worker process owns; built by ``worker.main`` before it serves the queues."""

    runner: Runner
    connection: redis.Redis
    settings: Settings
    owner: str
    signer: CacheSigner | None = None     # signs and checks cache entries; None: no cache is read or written
    counts: Counter[str] = field(default_factory=Counter)
    current_batch: str = ""
    batch_started: float = 0.0


_context: WorkerContext | None = None


def install(context: WorkerContext) -> None:
    global _context
    _context = context


def run_batch(payload: dict[str, Any]) -> dict[str, Any]:
    if _context is None:
        raise RuntimeError("run_batch runs only inside `sandbox worker`, which installs its context first")
    context = _context
    rq_job = get_current_job()
    batch_id = rq_job.id if rq_job is not None else "local"
    tenant = broker.tenant_of_batch(batch_id)
    if tenant is None:  # not enqueued by this version's clients: whose results would these be?
        log.error("batch %s has no tenant in its id (an older client, or not ours): refused", batch_id)
        context.counts["batches_refused"] += 1
        return {"refused": "no tenant in the batch id"}
    batch = broker.BatchPayload.model_validate(payload)
    submission, ttl = batch.submission, batch.result_ttl_s
    budget = context.settings.result_budget_mib << 20
    jobs, invalid = _validate(batch.raw_jobs(), context.runner.planner, tenant)
    stored = Counter[str]()

    queued_s = _queued_for(rq_job)

    def store(result: JobResult, cache_key: str) -> None:
        """Store one job's result; if it cannot be, a last-resort one: never a reason to lose the others."""
        if queued_s is not None and not result.reused:
            result = result.model_copy(update={"timings": {**result.timings, "queue_s": queued_s}})
        cache_as = cache_key if batch.cache else ""  # a --no-reuse submission leaves no cache behind
        try:
            saved = _with_redis_retry(lambda: broker.store_result(context.connection, tenant, submission, result,
                                                                  cache_as, ttl, context.signer, budget))
        except ValueError as exc:  # unserialisable: a bug (validated jobs make serialisable results)
            log.exception("result of job %r could not be stored", result.job_id)
            result = last_resort(result.job_id, f"the result could not be stored: {exc}")
            saved = _with_redis_retry(lambda: broker.store_result(context.connection, tenant, submission, result,
                                                                  "", ttl, None, budget))
        if saved:
            stored[result.verdict.value] += 1
            context.counts[result.verdict.value] += 1

    for result in invalid:
        store(result, "")
    done = _with_redis_retry(lambda: broker.known_result_ids(context.connection, tenant, submission,
                                                             [p.job.id for p in jobs]))
    jobs = [prepared for prepared in jobs if prepared.job.id not in done]
    if batch.reuse and batch.cache and context.signer is not None and jobs:  # identical work already judged: answered at once
        signer = context.signer
        cached = _with_redis_retry(lambda: broker.cached_results(context.connection,
                                                                 sorted({p.cache_key for p in jobs}), signer))
        for prepared in [p for p in jobs if p.cache_key in cached]:
            store(cached[prepared.cache_key].model_copy(update={"job_id": prepared.job.id, "reused": True,
                                                                "metadata": prepared.job.metadata}), "")
        jobs = [prepared for prepared in jobs if prepared.cache_key not in cached]
    keys = {prepared.job.id: prepared.cache_key for prepared in jobs}
    stop = _keep_lease(context, batch_id)
    context.current_batch, context.batch_started = batch_id, time.time()
    finished: set[str] = set()
    try:
        for result in context.runner.iter_prepared(jobs):
            store(result, keys[result.job_id])
            finished.add(result.job_id)
    except Exception:  # a bug met on this batch: each job left gets one more chance alone, so one cannot sink all
        log.exception("batch %s failed; running its unfinished jobs one at a time", batch_id)
        context.counts["batches_failed"] += 1
        for prepared in jobs:
            if prepared.job.id in finished:
                continue
            try:
                for result in context.runner.iter_prepared([prepared]):
                    store(result, keys[result.job_id])
            except Exception as exc:
                log.exception("job %s failed alone too", prepared.job.id)
                store(last_resort(prepared.job.id, f"worker failure: {exc}"), "")
    finally:
        stop()
        context.current_batch = ""
        _with_redis_retry(lambda: broker.release_lease(context.connection, batch_id))
    context.counts["batches"] += 1
    return {"samples": len(batch.jobs), "stored": dict(stored)}


def _queued_for(rq_job: Any) -> float | None:
    """How long this batch waited in Redis before this worker took it."""
    if rq_job is None or rq_job.enqueued_at is None:
        return None
    return round(max(0.0, time.time() - rq_job.enqueued_at.replace(tzinfo=timezone.utc).timestamp()), 4)


def last_resort(job_id: str, error: str) -> JobResult:
    """The result of a job the service failed: made of nothing of the job's but its id (escaped if need be),
    so nothing the job carries can keep it from being stored."""
    def safe(text: str) -> str:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")

    return JobResult(job_id=safe(job_id), verdict=Verdict.infra_error, error=safe(error)[:2000])


def _validate(raw_jobs: list[Any], planner: Planner, tenant: str) -> tuple[list[PreparedJob], list[JobResult]]:
    """The payload is JSON out of Redis: validate and prepare each job once, here (shared tests: once)."""
    jobs, invalid = [], []
    shared: dict[str, Any] = {}  # test field -> the model validated for the first job, reused by the rest
    for raw in raw_jobs:
        job_id = str(raw.get("id", "unknown")) if isinstance(raw, dict) else "unknown"
        try:
            if isinstance(raw, dict) and shared and all(raw.get(f) is value or raw.get(f) == value
                                                        for f, (value, _) in shared.items()):
                raw = {**raw, **{f: model for f, (_, model) in shared.items()}}
            job = JobSpec.model_validate(raw)
            if not shared and isinstance(raw, dict):
                shared = {f: (raw[f], getattr(job, f)) for f in broker.TEST_FIELDS if raw.get(f) is not None}
            jobs.append(planner.prepare(job, tenant))
        except ValidationError as exc:
            invalid.append(JobResult(job_id=job_id, verdict=Verdict.error, error=f"invalid job: {validation_reasons(exc)}"))
        except JobValidationError as exc:
            invalid.append(JobResult(job_id=job_id, verdict=Verdict.error, error=f"invalid job: {exc}"))
        except (RecursionError, MemoryError) as exc:
            invalid.append(JobResult(job_id=job_id, verdict=Verdict.error, error=f"invalid job: cannot be planned "
                                     f"({type(exc).__name__}: nested too deeply or too large)"))
    return jobs, invalid


def _keep_lease(context: WorkerContext, batch_id: str) -> Callable[[], None]:
    """Renew the batch's lease until stopped; a worker that dies stops renewing it."""
    interval = context.settings.heartbeat_s
    stopped = threading.Event()

    def renew() -> None:
        while not stopped.is_set():
            try:
                broker.renew_lease(context.connection, batch_id, context.owner, ttl_s=interval * 3)
            except redis.RedisError as exc:
                log.warning("could not renew lease of %s: %s", batch_id, exc)
            stopped.wait(interval)

    thread = threading.Thread(target=renew, name="lease", daemon=True)
    thread.start()

    def stop() -> None:
        stopped.set()
        thread.join(timeout=5)

    return stop


def _with_redis_retry(action: Callable[[], Any], give_up_after_s: float = 300) -> Any:
    """Redis may restart under us: wait for it rather than drop a result."""
    deadline = time.monotonic() + give_up_after_s
    delay = 0.2
    while True:
        try:
            return action()
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError) as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("Redis unavailable (%s); retrying in %.1f s", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5)
