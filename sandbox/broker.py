"""How work and results are laid out in Redis: the only module that knows the keys.

* Work: RQ queues (``interactive`` served before ``bulk``) with the JSON serializer, never pickle.
  One queue item is a batch of jobs that share their tests, so queue overhead is paid per batch.
* Tenants: every key a client writes or reads carries its tenant (``rq:job:batch_<tenant>_<id>``,
  ``sandbox:t:<tenant>:...``), and each tenant's Redis user reaches only those (``acl_file``). A worker
  takes a batch's tenant from the RQ job id, which only that tenant's user (or a worker) can write, so
  a client can neither read nor feed another tenant's results.
* Results: per submission, a hash (job id -> verdict) written with HSETNX, so each job has exactly
  one result however often it runs, and a list the client pops in the order results finish. What a
  submission's results may hold in Redis is bounded (``Settings.result_budget_mib``): beyond it they
  are stored compact (``compact``: outputs and messages cut, statuses kept).
* Reuse: finished results are also kept by content key, compact and signed by the workers (only they
  write them, only they hold the key: ``sandbox.signing``); a worker answers identical work from an
  entry whose signature holds, and runs the job when it does not.
* Leases: a worker renews a lease on the batch it runs; a batch whose lease lapsed (its worker
  died) is enqueued again, minus the jobs that already have results.
* Workers publish their state in ``sandbox:worker:<id>`` hashes that expire when they go silent.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from datetime import timezone
from typing import Any, Iterable

import redis
from pydantic import BaseModel, ConfigDict, Field
from rq import Queue
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import utcparse

from sandbox.models import JobResult, JobSpec, Verdict
from sandbox.settings import TENANT_PATTERN
from sandbox.signing import CacheSigner

__all__ = ["QUEUES", "connect", "redact", "redis_problem", "queue", "enqueue_batch", "store_result", "pop_results",
           "known_result_ids", "cached_results", "renew_lease", "release_lease", "requeue_abandoned", "worker_key",
           "worker_alive", "WORKERS_SET", "LAST_SEEN", "verdict_key", "enqueued_key", "TOTALS", "DURATIONS", "DURATION_BUCKETS",
           "WORKER_LAST", "TASK", "ALERTS", "report_alert", "alerts", "forget_worker", "BatchPayload", "ACL_RULES", "acl_file",
           "client_user", "client_acl", "tenant_of_batch", "foreign_job", "compact", "cacheable", "redis_memory"]

log = logging.getLogger(__name__)

QUEUES = ("interactive", "bulk")  # workers serve them in this order
TASK = "worker.tasks.run_batch"
PREFIX = "sandbox"
WORKERS_SET = f"{PREFIX}:workers"
LAST_SEEN = f"{PREFIX}:workers:last-seen"
QUEUE_TIMEOUT_MARGIN_S = 60

# Redis ACL rules (`sandbox redis-acl` prints them). Workers are trusted with the service's keys (never
# anything administrative or dangerous: FLUSHALL, CONFIG, KEYS, DEBUG, MONITOR, ACL, SHUTDOWN) and alone
# run the script that stores results and cache entries. A client (one user per tenant) gets exactly
# what submitting and collecting need: it may create its own RQ jobs and push their ids, pop its own
# tenant's result streams, count enqueued samples, and read the shared pool state `sandbox status`
# shows; it can neither read nor write another tenant's jobs and results, nor the cache.
ACL_RULES = {
    "worker": ("resetchannels ~rq:* ~sandbox:* &rq:* -@all +@read +@write +@keyspace +@list +@hash +@set "
               "+@sortedset +@string +@transaction +@connection +@stream +@pubsub -@dangerous -@admin +info "
               "+@scripting -script|flush -script|kill -function"),
}
_CLIENT_READS = ("+llen +lrange +lindex +smembers +sismember +scard +exists +hget +hmget +hgetall +hvals +hlen +get "
                 "+mget +zrange +zcard +ttl +type")
_SHARED_STATE = ("%R~rq:queue:* %R~rq:queues %R~rq:wip:* %R~sandbox:workers %R~sandbox:workers:* %R~sandbox:worker:* "
                 "%R~sandbox:worker-last:* %R~sandbox:verdicts:* %R~sandbox:enqueued:* %R~sandbox:stats:* "
                 "%R~sandbox:alerts %R~sandbox:lease:*")


def client_user(tenant: str) -> str:
    """The Redis user of a tenant's clients (the default tenant's keeps its historic name)."""
    return "sandbox-client" if tenant == "default" else f"sandbox-client-{tenant}"


def client_acl(tenant: str) -> str:
    """ACL rules of one tenant's client user (Redis 7 selectors: each write is allowed on its keys only)."""
    _check_tenant(tenant)
    own = f"{PREFIX}:t:{tenant}"
    return (f"resetkeys resetchannels -@all +@connection +info +ping +multi +exec +discard {_CLIENT_READS} "
            f"{_SHARED_STATE} %R~rq:job:batch_{tenant}_* %R~{own}:* "
            f"(~rq:queues ~rq:queue:interactive ~rq:queue:bulk +sadd +rpush) "
            f"(~rq:job:batch_{tenant}_* +hset) "
            f"(~{PREFIX}:enqueued:* +hincrby +expire) "
            f"(~{own}:sub:*:stream +blpop +lpop +lrange +ltrim)")


def acl_file(worker_password: str, clients: dict[str, str], admin_password: str | None = None) -> str:
    """A Redis ACL file for a deployment: the default user off, a worker user and a client user per tenant
    (``clients``: tenant -> password)."""
    lines = ["user default off"]
    if admin_password:
        lines.append(f"user admin on >{admin_password} ~* &* +@all")
    lines.append(f"user sandbox-worker on >{worker_password} {ACL_RULES['worker']}")
    lines += [f"user {client_user(tenant)} on >{password} {client_acl(tenant)}" for tenant, password in clients.items()]
    return "\n".join(lines) + "\n"


def _check_tenant(tenant: str) -> str:
    if not re.fullmatch(TENANT_PATTERN, tenant):
        raise ValueError(f"bad tenant name {tenant!r}: lowercase letters, digits and '-', at most 32")
    return tenant


_BATCH_ID = re.compile(r"^batch_([a-z0-9][a-z0-9-]{0,31})_([0-9a-f]{32})$")


def foreign_job(job: Job) -> str | None:
    """Why an RQ job is not one of this service's batches (None if it is): workers run nothing else."""
    try:
        if job.func_name != TASK:
            return f"it names the function {str(job.func_name)[:100]!r}, not {TASK}"
        if len(job.args) != 1 or not isinstance(job.args[0], dict) or job.kwargs:
            return "its arguments are not one batch payload"
    except Exception as exc:  # rq raises several types for data it cannot deserialise
        return f"its data cannot be read ({type(exc).__name__})"
    extras = [name for name, value in (("success callback", job._success_callback_name),
                                       ("failure callback", job._failure_callback_name),
                                       ("stopped callback", job._stopped_callback_name),
                                       ("webhooks", job.webhooks), ("dependencies", job._dependency_ids),
                                       ("retries", job.retries_left)) if value]
    if extras:
        return f"it asks for {', '.join(extras)}"
    if tenant_of_batch(job.id) is None:
        return "its id names no tenant"
    return None


def batch_id(tenant: str) -> str:
    return f"batch_{_check_tenant(tenant)}_{uuid.uuid4().hex}"


def tenant_of_batch(rq_job_id: str) -> str | None:
    """Whose batch this is: the id's tenant, which only that tenant's user (or a worker) can have written."""
    found = _BATCH_ID.fullmatch(rq_job_id)
    return found.group(1) if found else None


_STORE = """
-- The result, its place in the stream, its cache entry and every counter of it: one atomic step,
-- so totals always equal stored results (a retried write after a lost reply changes nothing).
-- The submission's hash keeps only a marker (the verdict) per job, for exactly-once; the body travels
-- in the stream, which the client drains, so Redis holds bodies only for results not yet read. Once the
-- submission's bodies passed its byte budget, the compact body is stored instead.
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[5]) == 0 then
  return 0
end
local body = ARGV[2]
local used = tonumber(redis.call('GET', KEYS[7]) or '0')
if used + #body > tonumber(ARGV[9]) then body = ARGV[8] end
redis.call('INCRBY', KEYS[7], #body)
redis.call('EXPIRE', KEYS[7], ARGV[3])
redis.call('RPUSH', KEYS[2], body)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if ARGV[4] ~= '' then redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[3]) end
redis.call('HINCRBY', KEYS[4], ARGV[5], 1)
redis.call('EXPIRE', KEYS[4], 10800)
redis.call('HINCRBY', KEYS[5], ARGV[5], 1)
if ARGV[6] ~= '' then
  redis.call('HINCRBY', KEYS[6], ARGV[6], 1)
  redis.call('HINCRBYFLOAT', KEYS[6], 'sum', ARGV[7])
end
return 1
"""


def redact(url: str) -> str:
    """A Redis URL fit for messages: the password replaced by ***."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = credentials.partition(":")
    return f"{scheme}{sep}{user}{':***' if colon else ''}@{host}"


def redis_problem(url: str, exc: BaseException) -> str:
    """One line saying what is wrong with the Redis at ``url`` and how to fix it."""
    where = redact(url)
    if isinstance(exc, redis.AuthenticationError):
        return (f"Redis at {where} refused the credentials ({exc}): put the right user and password in "
                "SANDBOX_REDIS_URL (redis://USER:PASSWORD@HOST:PORT/0)")
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return f"the Redis user in {where} lacks a permission this command needs ({exc}): check its ACL"
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return (f"cannot reach Redis at {where} ({exc}): start it (`sandbox setup` runs one on 127.0.0.1:6379) "
                "or point SANDBOX_REDIS_URL at yours")
    return f"Redis at {where} failed: {exc}"


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=5, socket_keepalive=True, health_check_interval=10,
                                retry_on_timeout=True)


def queue(connection: redis.Redis, name: str) -> Queue:
    if name not in QUEUES:
        raise ValueError(f"unknown queue {name!r}: use one of {', '.join(QUEUES)}")
    return Queue(name, connection=connection, serializer=JSONSerializer)


def text(value: Any) -> str:
    """Redis answers bytes (the connection does not decode); keys and fields are UTF-8 text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _submission_prefix(tenant: str, submission: str) -> str:
    return f"{PREFIX}:t:{_check_tenant(tenant)}:sub:{submission}"


def _results_key(tenant: str, submission: str) -> str:
    return f"{_submission_prefix(tenant, submission)}:results"


def _stream_key(tenant: str, submission: str) -> str:
    return f"{_submission_prefix(tenant, submission)}:stream"


def _bytes_key(tenant: str, submission: str) -> str:
    return f"{_submission_prefix(tenant, submission)}:bytes"


def _cache_key(cache_key: str) -> str:
    return f"{PREFIX}:cache:{cache_key}"


def _lease_key(rq_job_id: str) -> str:
    return f"{PREFIX}:lease:{rq_job_id}"


def worker_key(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"


def worker_alive(connection: redis.Redis, worker_id: str) -> bool:
    """A worker is alive while its heartbeat hash has not expired."""
    return bool(connection.exists(worker_key(worker_id)))


def verdict_key(minute: int) -> str:
    return f"{PREFIX}:verdicts:{minute}"


def enqueued_key(minute: int) -> str:
    return f"{PREFIX}:enqueued:{minute}"


TOTALS = f"{PREFIX}:stats:totals"            # verdict -> samples, since the Redis data began
DURATIONS = f"{PREFIX}:stats:duration"       # histogram of sample wall time: bucket -> count, plus sum
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WORKER_LAST = f"{PREFIX}:worker-last:"       # last state of each worker, kept after it goes silent


ALERTS = f"{PREFIX}:alerts"                   # operator alerts (crash-looping workers...): id -> message
ALERT_TTL_S = 3600


def report_alert(connection: redis.Redis, alert_id: str, message: str) -> None:
    """Raise an alert ``sandbox status`` shows for an hour (ids are unique per reporter and kind)."""
    with connection.pipeline() as pipe:
        pipe.hset(ALERTS, alert_id, json.dumps({"message": message, "time": time.time()}))
        pipe.expire(ALERTS, ALERT_TTL_S)
        pipe.execute()


def alerts(connection: redis.Redis) -> list[str]:
    now = time.time()
    found = []
    for raw in connection.hvals(ALERTS):
        alert = json.loads(raw)
        if now - float(alert["time"]) < ALERT_TTL_S:
            found.append(str(alert["message"]))
    return found


def forget_worker(connection: redis.Redis, owner: str) -> None:
    """Remove a worker that ended on purpose (or was replaced) from what ``sandbox status`` watches."""
    with connection.pipeline() as pipe:
        pipe.delete(worker_key(owner))
        pipe.srem(WORKERS_SET, owner)
        pipe.hdel(LAST_SEEN, owner)
        pipe.delete(WORKER_LAST + owner)
        pipe.execute()


TEST_FIELDS = ("check", "tests", "stdio", "calls")


class BatchPayload(BaseModel):
    """A batch as it travels through RQ: the tests its jobs share are sent once, not once per job.

    ``jobs`` stay raw here: each is validated on its own by the worker, so one malformed job gets its
    own ``error`` result instead of sinking the batch."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    submission: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    result_ttl_s: int = Field(ge=1)
    cache: bool = True          # store results for reuse by identical work (off for --no-reuse submissions)
    reuse: bool = True          # answer jobs from the cache (never for reruns, nor with cache off)
    shared: dict[str, Any] = Field(default_factory=dict)
    jobs: list[Any]

    @classmethod
    def of(cls, submission: str, result_ttl_s: int, jobs: list[JobSpec], cache: bool = True,
           reuse: bool = True) -> "BatchPayload":
        shared = jobs[0].model_dump(mode="json", include=set(TEST_FIELDS), exclude_none=True)
        return cls(submission=submission, result_ttl_s=result_ttl_s, cache=cache, reuse=reuse and cache, shared=shared,
                   jobs=[job.model_dump(mode="json", exclude=set(TEST_FIELDS)) for job in jobs])

    def raw_jobs(self) -> list[Any]:
        """Each job with the shared tests put back (still to be validated)."""
        return [{**raw, **self.shared} if isinstance(raw, dict) else raw for raw in self.jobs]


def enqueue_batch(connection: redis.Redis, queue_name: str, tenant: str, submission: str, jobs: list[JobSpec],
                  timeout_s: float, result_ttl_s: int, cache: bool = True, reuse: bool = True) -> str:
    payload = BatchPayload.of(submission, result_ttl_s, jobs, cache, reuse).model_dump(mode="json")
    # The worker's own deadlines come first; RQ's timeout is a last resort, wide enough for the worker to
    # split a batch whose sandbox died and run its jobs alone, with retries.
    rq_job = queue(connection, queue_name).enqueue(
        TASK, payload, job_id=batch_id(tenant), job_timeout=int(timeout_s * 4) + QUEUE_TIMEOUT_MARGIN_S,
        result_ttl=600, failure_ttl=24 * 3600,
        meta={"submission": submission, "samples": len(jobs), "expected_s": timeout_s})
    minute = int(time.time() // 60)
    with connection.pipeline() as pipe:
        pipe.hincrby(enqueued_key(minute), queue_name, len(jobs))
        pipe.expire(enqueued_key(minute), 3 * 3600)
        pipe.execute()
    return str(rq_job.id)


# What a result keeps of what its sample chose to print or say, once at rest in Redis (the cache, and
# results past their submission's budget): JSON may escape each character 6-fold, so at most ~75 KB.
KEPT_OUTPUT_CHARS = 1024        # of stdout and of stderr each
KEPT_ERROR_CHARS = 2048
KEPT_MESSAGE_CHARS = 256        # of one test's message
KEPT_MESSAGES_CHARS = 8192      # of all test messages together


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:max(0, limit - 1)] + ("…" if limit else "")


def compact(result: JobResult) -> JobResult:
    """The result as Redis keeps it at rest: outputs, error and test messages cut; verdict, statuses and
    figures as they were (a cut output says so: ``stdout_truncated``)."""
    left = KEPT_MESSAGES_CHARS
    tests = []
    for test in result.tests:
        message = _cut(test.message, min(KEPT_MESSAGE_CHARS, left))
        left -= len(message)
        tests.append(test if message == test.message else test.model_copy(update={"message": message}))
    return result.model_copy(update={
        "tests": tuple(tests), "error": _cut(result.error, KEPT_ERROR_CHARS),
        "stdout": _cut(result.stdout, KEPT_OUTPUT_CHARS), "stderr": _cut(result.stderr, KEPT_OUTPUT_CHARS),
        "stdout_truncated": result.stdout_truncated or len(result.stdout) > KEPT_OUTPUT_CHARS,
        "stderr_truncated": result.stderr_truncated or len(result.stderr) > KEPT_OUTPUT_CHARS})


def cacheable(result: JobResult) -> bool:
    """Only final verdicts are cached: never what the service failed at, nor what came from a sandbox that
    showed an anomaly, nor a provisional timeout (one the machine's load may have caused), nor a result
    that was itself reused. Workers answer only from the cache, so a result not cached is never reused
    by a later submission, and copies waiting for it in the same submission run themselves."""
    return (result.verdict is not Verdict.infra_error and not result.anomalies and not result.reused
            and not result.provisional)  # a timeout the machine's load may have caused (verdict.py)


def store_result(connection: redis.Redis, tenant: str, submission: str, result: JobResult, cache_key: str,
                 ttl_s: int, signer: CacheSigner | None = None, budget_bytes: int = 64 << 20) -> bool:
    """Record a job's result once, with its counters; returns False if it already had one.

    It is cached (compact, signed) when ``cache_key`` and ``signer`` are given and it is ``cacheable``.
    Raises ``ValueError`` if the result cannot be serialised (then nothing was stored)."""
    body = result.model_dump_json()
    small = compact(result)
    entry = ""
    if cache_key and signer is not None and cacheable(result):
        entry = signer.seal(_cache_key(cache_key), small.model_copy(update={"metadata": {}}).model_dump_json())
    bucket = ""
    if result.wall_time_s is not None:
        bucket = next((str(b) for b in DURATION_BUCKETS if result.wall_time_s <= b), "+Inf")
    minute = int(time.time() // 60)
    stored = connection.eval(_STORE, 7, _results_key(tenant, submission), _stream_key(tenant, submission),
                             _cache_key(cache_key), verdict_key(minute), TOTALS, DURATIONS, _bytes_key(tenant, submission),
                             result.job_id, body, ttl_s, entry, result.verdict.value, bucket,
                             repr(result.wall_time_s or 0.0), small.model_dump_json(), budget_bytes)
    return bool(stored)


def pop_results(connection: redis.Redis, tenant: str, submission: str, wait_s: float) -> list[JobResult]:
    """Results that finished since the last call, oldest first; waits up to ``wait_s`` for the first."""
    stream = _stream_key(tenant, submission)
    first = connection.blpop([stream], timeout=max(1, int(wait_s)))
    if first is None:
        return []
    with connection.pipeline() as pipe:
        pipe.lrange(stream, 0, 999)
        pipe.ltrim(stream, 1000, -1)
        rest = pipe.execute()[0]
    return [JobResult.model_validate_json(body) for body in [first[1], *rest]]


def known_result_ids(connection: redis.Redis, tenant: str, submission: str, job_ids: Iterable[str]) -> set[str]:
    ids = list(job_ids)
    if not ids:
        return set()
    present = connection.hmget(_results_key(tenant, submission), ids)
    return {job_id for job_id, value in zip(ids, present) if value is not None}


def cached_results(connection: redis.Redis, cache_keys: list[str], signer: CacheSigner) -> dict[str, JobResult]:
    """Finished results of identical work (same code, tests, limits, image and harness), by cache key: only
    entries a worker signed with this key; anything else is a miss (and logged by the signer)."""
    if not cache_keys:
        return {}
    found = {}
    for key, entry in zip(cache_keys, connection.mget([_cache_key(key) for key in cache_keys])):
        if not entry:
            continue
        body = signer.open(_cache_key(key), entry)
        if body is None:
            continue
        try:
            found[key] = JobResult.model_validate_json(body)
        except ValueError:
            log.warning("cache entry %s is signed but unreadable (another version?): ignored", _cache_key(key))
    return found


def redis_memory(connection: redis.Redis) -> dict[str, int | str]:
    """Redis's memory: ``used`` bytes, its ``limit`` (maxmemory, else the machine's memory; 0 if unknown),
    whether a maxmemory is set, and the eviction policy."""
    info = connection.info("memory")
    maxmemory = int(info.get("maxmemory", 0) or 0)
    limit = maxmemory or int(info.get("total_system_memory", 0) or 0)
    return {"used": int(info.get("used_memory", 0)), "limit": limit, "maxmemory": maxmemory,
            "policy": str(info.get("maxmemory_policy", ""))}


def renew_lease(connection: redis.Redis, rq_job_id: str, owner: str, ttl_s: float) -> None:
    connection.set(_lease_key(rq_job_id), owner, px=int(ttl_s * 1000))


def release_lease(connection: redis.Redis, rq_job_id: str) -> None:
    connection.delete(_lease_key(rq_job_id))


def requeue_abandoned(connection: redis.Redis, grace_s: float) -> list[str]:
    """Enqueue again the batches whose worker stopped renewing their lease; returns the new ids.

    Only the jobs that have no result yet travel again; a lock keeps sweepers from racing.
    """
    if not connection.set(f"{PREFIX}:sweep-lock", "1", nx=True, px=int(grace_s * 1000)):
        return []
    requeued = []
    for name in QUEUES:
        rq_queue = queue(connection, name)
        registry = StartedJobRegistry(queue=rq_queue)
        for entry in connection.zrange(registry.key, 0, -1):
            rq_job_id = text(entry).split(":")[0]
            if connection.exists(_lease_key(rq_job_id)) or not _older_than(connection, rq_job_id, grace_s):
                continue
            new_id = _requeue(connection, rq_queue, rq_job_id)
            connection.zrem(registry.key, text(entry))
            if new_id:
                requeued.append(new_id)
    return requeued


def _older_than(connection: redis.Redis, rq_job_id: str, seconds: float) -> bool:
    started = connection.hget(f"rq:job:{rq_job_id}", "started_at")
    return started is None or time.time() - rq_timestamp(started) > seconds


def rq_timestamp(raw: Any) -> float:
    """Seconds since the epoch of a timestamp RQ stored (UTC, without a zone)."""
    return utcparse(text(raw)).replace(tzinfo=timezone.utc).timestamp()


def _requeue(connection: redis.Redis, rq_queue: Queue, rq_job_id: str) -> str | None:
    if not connection.set(f"{PREFIX}:requeued:{rq_job_id}", "1", nx=True, ex=24 * 3600):
        return None
    try:
        old = Job.fetch(rq_job_id, connection=connection, serializer=JSONSerializer)
    except Exception as exc:  # rq raises NoSuchJobError or deserialization errors; nothing left to save
        log.warning("abandoned batch %s cannot be read: %s", rq_job_id, exc)
        return None
    tenant = tenant_of_batch(rq_job_id)
    if tenant is None:
        log.warning("abandoned batch %s has no tenant in its id: not enqueued again", rq_job_id)
        return None
    try:
        payload = BatchPayload.model_validate(old.args[0])  # written by enqueue_batch; the client validated its jobs
        jobs = [JobSpec.model_validate(j) for j in payload.raw_jobs()]
    except ValueError as exc:  # a client's write: not trusted to be well formed
        log.warning("abandoned batch %s is malformed: %s", rq_job_id, exc)
        return None
    done = known_result_ids(connection, tenant, payload.submission, [job.id for job in jobs])
    jobs = [job for job in jobs if job.id not in done]
    if not jobs:
        return None
    new_id = enqueue_batch(connection, rq_queue.name, tenant, payload.submission, jobs,
                           timeout_s=(old.timeout or 600) - QUEUE_TIMEOUT_MARGIN_S, result_ttl_s=payload.result_ttl_s,
                           cache=payload.cache, reuse=payload.reuse)
    log.warning("batch %s lost its worker; %d job(s) enqueued again as %s", rq_job_id, len(jobs), new_id)
    return new_id
