"""``sandbox worker`` / ``sandbox-worker``: the process shell that serves the queues.

Start-up fails fast: policies, the engine, gVisor and the image are checked, leftover sandboxes
of dead workers are removed, and canary programs with known verdicts must be judged right before
the worker takes any work. While serving, a background thread publishes the worker's state,
renews nothing but its heartbeat, requeues batches of dead workers and reaps orphaned sandboxes.
SIGTERM finishes the batch in hand, then exits (RQ's warm shutdown); the pool is always closed.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import click
import docker.errors
import psutil
import redis
import requests.exceptions
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer

from sandbox import broker
from sandbox.container import docker_client, owner_id, require_runtimes
from sandbox.errors import SandboxError
from sandbox.images import require_image
from sandbox.models import JobSpec, Verdict
from sandbox.plan import Planner
from sandbox.policy import LimitOverrides, load_all_policies
from sandbox.pool import SandboxPool
from sandbox.reaper import reap_orphans, remove_own
from sandbox.runner import Runner
from sandbox.settings import Settings
from sandbox.signing import CacheSigner, load_signer
from worker.tasks import WorkerContext, install

log = logging.getLogger("sandbox.worker")

CANARY_CHECK = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(0, 0) == 0\n"
CANARIES: list[tuple[str, str, Verdict]] = [
    ("passes", "def add(a, b):\n    return a + b\n", Verdict.passed),
    ("fails", "def add(a, b):\n    return a - b\n", Verdict.failed),
    ("syntax", "def add(a, b)\n    return a\n", Verdict.error),
    ("loops", "def add(a, b):\n    while True:\n        pass\n", Verdict.timeout),
    ("gvisor", "import os\ndef add(a, b):\n    return a + b if os.uname().release == '4.4.0' else -1\n", Verdict.passed),
]


class CanaryFailure(RuntimeError):
    pass


def run_canaries(runner: Runner, policy: str) -> None:
    """Known programs must get their known verdicts, or this worker must not serve."""
    quick = LimitOverrides(cpu_time_s=1, wall_time_s=3)
    jobs = [JobSpec(id=f"canary-{name}", program=program, check=CANARY_CHECK, entry_point="add", policy=policy,
                    limits=quick if name == "loops" else None)
            for name, program, _ in CANARIES]
    results = runner.run(jobs)
    wrong = [f"{job.id}: expected {expected.value}, got {result.verdict.value} {result.error}"
             for job, (_, _, expected), result in zip(jobs, CANARIES, results) if result.verdict is not expected]
    if wrong:
        raise CanaryFailure("canary verdicts are wrong, refusing to serve: " + "; ".join(wrong))


def publish_state(context: WorkerContext, pool: SandboxPool, queues: list[str], started: float,
                  process: psutil.Process) -> None:
    """The heartbeat first (cheap: a loaded host must not make a busy worker look silent), then the
    CPU and memory of its sandboxes, which take a scan of the host's processes."""
    now = time.time()
    state: dict[Any, Any] = {  # redis-py types hset mappings by a key union that dict[str, ...] does not match
        "id": context.owner, "host": socket.gethostname(), "pid": os.getpid(), "queues": ",".join(queues),
        "state": "busy" if context.current_batch else "idle", "current_batch": context.current_batch,
        "batch_started": context.batch_started if context.current_batch else 0, "started_at": started,
        "last_heartbeat": now, "cpu_percent": process.cpu_percent(), "rss_mib": process.memory_info().rss >> 20,
        "sandboxes_idle": pool.idle_count(), "sandboxes_live": len(pool.container_ids()),
        "sandboxes_started": pool.started, "restarts": int(os.environ.get("SANDBOX_WORKER_RESTARTS", "0")),
        **{f"count_{k}": v for k, v in context.counts.items()},
    }
    _write_state(context, state, now)
    children = sandbox_processes(pool.container_ids())
    usage = {"sandbox_cpu_percent": sum(_cpu(p) for p in children), "sandbox_rss_mib": sum(_rss(p) for p in children) >> 20}
    _write_state(context, usage, None)


def _write_state(context: WorkerContext, state: dict[Any, Any], now: float | None) -> None:
    ttl = int(context.settings.heartbeat_s * 3) + 1
    with context.connection.pipeline() as pipe:
        pipe.hset(broker.worker_key(context.owner), mapping=state)
        pipe.expire(broker.worker_key(context.owner), ttl)
        pipe.hset(broker.WORKER_LAST + context.owner, mapping=state)
        if now is not None:
            pipe.sadd(broker.WORKERS_SET, context.owner)
            pipe.hset(broker.LAST_SEEN, context.owner, now)
            pipe.expire(broker.WORKER_LAST + context.owner, 3600)  # a dead worker stays flagged for an hour
        pipe.execute()


_PROCESS_CACHE: dict[int, psutil.Process] = {}


def sandbox_processes(container_ids: list[str]) -> list[psutil.Process]:
    """gVisor's host processes of these containers: sentry and gofer, and the systrap stub processes
    (their descendants, with empty command lines) where the programs' code actually runs.
    Cached, so that cpu_percent has a baseline between calls."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "runsc" in cmdline and any(cid in cmdline for cid in container_ids):
            try:
                for member in [proc, *proc.children(recursive=True)]:
                    found[member.pid] = _PROCESS_CACHE.setdefault(member.pid, member)
            except psutil.Error:
                continue
    for pid in list(_PROCESS_CACHE):
        if pid not in found:
            del _PROCESS_CACHE[pid]
    return list(found.values())


def _cpu(proc: psutil.Process) -> float:
    try:
        return proc.cpu_percent()
    except psutil.Error:
        return 0.0


def _rss(proc: psutil.Process) -> int:
    try:
        return proc.memory_info().rss
    except psutil.Error:
        return 0


class Health:
    """Liveness: the housekeeping loop is turning. Readiness: canaries passed and not shutting down."""

    def __init__(self, heartbeat_s: float) -> None:
        self.heartbeat_s = heartbeat_s
        self.last_beat = time.monotonic()
        self.ready = False

    def live(self) -> bool:
        return time.monotonic() - self.last_beat < 3 * self.heartbeat_s

    def serve(self, port: int) -> None:
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                ok = {"/livez": health.live, "/readyz": lambda: health.live() and health.ready}.get(self.path)
                code = 404 if ok is None else (200 if ok() else 503)
                body = {200: b"ok\n", 503: b"not ok\n", 404: b"unknown probe\n"}[code]
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=server.serve_forever, name="health", daemon=True).start()


def housekeeping(context: WorkerContext, pool: SandboxPool, queues: list[str], stop: threading.Event,
                 health: Health) -> None:
    started, process = time.time(), psutil.Process()
    process.cpu_percent()
    client = pool.client
    next_sweep = 0.0
    while not stop.is_set():
        health.last_beat = time.monotonic()
        try:
            publish_state(context, pool, queues, started, process)
            if time.monotonic() >= next_sweep:
                broker.requeue_abandoned(context.connection, grace_s=context.settings.heartbeat_s * 3)
                reap_orphans(client, lambda owner: broker.worker_alive(context.connection, owner))
                next_sweep = time.monotonic() + context.settings.heartbeat_s * 2
        except (redis.RedisError, OSError) as exc:
            log.warning("housekeeping failed (will retry): %s", exc)
        except Exception:  # docker or psutil hiccups must not kill the thread that keeps us visible
            log.exception("housekeeping failed (will retry)")
        stop.wait(context.settings.heartbeat_s)


def preflight(settings: Settings) -> tuple[dict[str, Any], docker.DockerClient, str, redis.Redis, CacheSigner]:
    """What a worker needs before it can serve: policies, the engine with its runtimes, the image, Redis,
    the cache-signing key. Raises ``SandboxError`` or ``redis.RedisError``, which ``main`` turns into one
    line with the fix."""
    policies = load_all_policies(settings.policies_dir)
    client = docker_client()
    require_runtimes(client, {policy.runtime for policy in policies.values()})
    image = require_image(client, settings.images_dir)
    signer = load_signer(settings)
    connection = broker.connect(settings.redis_url)
    connection.ping()
    return policies, client, image, connection, signer


class BatchWorker(SimpleWorker):
    """RQ's worker, serving this service's task and nothing else. Whoever can enqueue writes the RQ job
    hash, function name, callbacks and webhooks included: a job that names anything but ``run_batch``
    with one payload, or asks for callbacks, webhooks, retries or dependencies, is failed unrun, so
    enqueueing never runs code (or sends requests) on the worker's host."""

    def execute_job(self, job: Job, queue: Queue) -> None:
        problem = broker.foreign_job(job)
        if problem is None:
            super().execute_job(job, queue)
            return
        log.error("refused RQ job %s: %s", job.id, problem)
        job.webhooks = []
        job._success_callback_name = job._failure_callback_name = job._stopped_callback_name = None
        job.retries_left = None
        job._dependency_ids = []
        self.handle_job_failure(job, queue, exc_string=f"refused by the sandbox worker: {problem}")


def serve(settings: Settings, queues: list[str], burst: bool, canary_policy: str, health_port: int) -> None:
    owner = owner_id()
    policies, client, image, connection, signer = preflight(settings)
    try:
        reap_orphans(client, lambda owner: broker.worker_alive(connection, owner))
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:  # housekeeping retries it
        log.warning("could not sweep orphaned sandboxes at start-up: %s", exc)
    pool = SandboxPool(client, owner, max_runs=settings.sandbox_max_runs)
    runner = Runner(pool, Planner(policies, settings.images_dir), infra_attempts=settings.infra_attempts)
    context = WorkerContext(runner=runner, connection=connection, settings=settings, owner=owner, signer=signer)
    stop = threading.Event()
    health = Health(settings.heartbeat_s)
    if health_port:
        health.serve(health_port)
    try:
        run_canaries(runner, canary_policy)
        install(context)
        thread = threading.Thread(target=housekeeping, args=(context, pool, queues, stop, health), daemon=True)
        thread.start()
        health.ready = True
        log.info("worker %s serving %s with image %s", owner, ", ".join(queues), image)
        _work(settings, connection, owner, queues, burst)
    finally:
        health.ready = False
        stop.set()
        closing = time.monotonic()
        pool.close()
        if time.monotonic() - closing > 10:
            log.warning("closing the sandbox pool took %.0f s", time.monotonic() - closing)
        try:
            remove_own(client, owner)  # by label: nothing of this worker's may outlive it
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            log.warning("could not sweep this worker's sandboxes at exit: %s", exc)
        try:
            broker.forget_worker(connection, owner)
        except redis.RedisError:
            pass


def _work(settings: Settings, connection: redis.Redis, owner: str, queues: list[str], burst: bool) -> None:
    """Run RQ's loop; if Redis goes away, wait for it and carry on."""
    while True:
        worker = BatchWorker([broker.queue(connection, name) for name in queues], connection=connection,
                              serializer=JSONSerializer, name=f"sandbox-{owner}-{time.monotonic_ns()}")
        try:
            worker.work(burst=burst, with_scheduler=False, logging_level="WARNING")
            return
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if worker._stop_requested:
                return
            log.warning("lost Redis (%s); reconnecting", exc)
            _wait_for_redis(connection)


def _wait_for_redis(connection: redis.Redis) -> None:
    delay = 0.5
    while True:
        try:
            connection.ping()
            return
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError):
            time.sleep(delay)
            delay = min(delay * 2, 5)


CRASH_LOOP_RESTARTS = 5        # this many unexpected exits within CRASH_LOOP_WINDOW_S: stop restarting, say so
CRASH_LOOP_WINDOW_S = 300.0


class PoolSlot:
    """One worker process of a pool, restarted with backoff when it dies, given up when it crash-loops."""

    def __init__(self, index: int, command: list[str], backoff_s: float) -> None:
        self.index, self.command, self.backoff_s = index, command, backoff_s
        self.process: subprocess.Popen[bytes] | None = None
        self.exits: list[float] = []      # times of unexpected exits
        self.restarts = 0
        self.restart_at: float | None = 0.0
        self.given_up = ""
        self.dead_owner = ""

    def start(self) -> None:
        env = {**os.environ, "SANDBOX_WORKER_RESTARTS": str(self.restarts), "SANDBOX_POOL_PARENT": str(os.getpid())}
        self.process = subprocess.Popen(self.command, env=env)
        self.restart_at = None

    def died(self, now: float) -> str | None:
        """Record an unexpected exit; returns a crash-loop message when it is time to give up."""
        assert self.process is not None
        code = self.process.returncode
        self.exits = [t for t in self.exits if now - t < CRASH_LOOP_WINDOW_S] + [now]
        if len(self.exits) > CRASH_LOOP_RESTARTS:
            self.given_up = (f"worker {self.index} of pool {owner_id()} exited {len(self.exits)} times in "
                             f"{CRASH_LOOP_WINDOW_S:.0f} s (last exit code {code}); not restarted: see its log")
            return self.given_up
        self.dead_owner = f"{socket.gethostname()}:{self.process.pid}"
        delay = min(self.backoff_s * 2 ** (len(self.exits) - 1), 30 * self.backoff_s)
        log.error("worker %d (pid %d) exited with %s; restarting in %.0f s", self.index, self.process.pid, code, delay)
        self.restarts += 1
        self.restart_at = now + delay
        self.process = None
        return None


def _end_with_pool_parent() -> None:
    """A pool's worker ends (SIGTERM: it finishes its batch) when the pool's process dies, even by SIGKILL:
    no unsupervised worker keeps serving after its pool is gone (and a restarted pool would double it)."""
    parent = os.environ.pop("SANDBOX_POOL_PARENT", "")
    if not parent.isdigit():
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(parent):  # the pool died before the request took effect
        sys.exit(0)


def run_pool(concurrency: int, argv: list[str], health_port: int, settings: Settings) -> int:
    """Run ``concurrency`` single-process workers; restart any that dies; pass SIGTERM/SIGINT on to them."""
    redis_url = settings.redis_url
    slots = [PoolSlot(index, [sys.executable, "-m", "worker.main", "--concurrency", "1", *argv,
                              "--health-port", str(health_port + index if health_port else 0)], settings.restart_backoff_s)
             for index in range(concurrency)]
    stopping = threading.Event()

    def forward(signum: int, _frame: Any) -> None:
        stopping.set()
        for slot in slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        now = time.monotonic()
        for slot in slots:
            if slot.process is not None and slot.process.poll() is not None and not slot.given_up \
                    and not stopping.is_set():  # (a given-up slot keeps its dead process: count that exit once)
                message = slot.died(now)
                if message is not None:
                    log.critical("%s", message)
                    _tell_redis(redis_url, broker.report_alert, f"crash-loop:{owner_id()}:{slot.index}", message)
                else:  # its replacement reports the restart; the dead process is not a silent worker to chase
                    _tell_redis(redis_url, broker.forget_worker, slot.dead_owner)
            if slot.process is None and slot.restart_at is not None and now >= slot.restart_at \
                    and not slot.given_up and not stopping.is_set():
                slot.start()
        running = [s for s in slots if s.process is not None and s.process.poll() is None]
        if stopping.is_set() and not running:
            return max((s.process.returncode or 0) for s in slots if s.process is not None) if slots else 0
        if all(s.given_up for s in slots):
            return 3
        stopping.wait(0.5)


def _tell_redis(redis_url: str, action: Callable[..., None], *args: str) -> None:
    try:
        action(broker.connect(redis_url), *args)
    except redis.RedisError as exc:
        log.warning("could not update Redis about the pool: %s", exc)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--concurrency", "-c", default=None, type=click.IntRange(1, 256),
              help="Worker processes [default: one per core: a sandbox runs one sample at a time, which measured "
                   "faster than several at once on gVisor]; each runs one batch at a time in its own warm "
                   "sandboxes. With more than one, "
                   "a supervisor restarts a process that dies (with backoff) and reports one that keeps dying "
                   "(`sandbox status`); a single process is the worker itself (let systemd or compose restart it).")
@click.option("--queues", default=",".join(broker.QUEUES), show_default=True,
              help="Queues to serve, in priority order.")
@click.option("--redis-url", envvar="SANDBOX_REDIS_URL", default=None, help="Redis URL [env SANDBOX_REDIS_URL].")
@click.option("--burst", is_flag=True, help="Exit when the queues are empty (for scripts and tests).")
@click.option("--canary-policy", default="humaneval", show_default=True, help="Policy the start-up canaries use.")
@click.option("--health-port", default=0, show_default=True, type=click.IntRange(0, 65535),
              help="Serve /livez and /readyz on 127.0.0.1:PORT (process i of a pool uses PORT+i); 0 = off.")
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def main(concurrency: int | None, queues: str, redis_url: str | None, burst: bool, canary_policy: str,
         health_port: int, verbose: bool) -> None:
    """Serve the sandbox queues: run each queued batch in warm gVisor sandboxes.

    \b
    sandbox-worker --concurrency 2           # two processes on this host
    SANDBOX_REDIS_URL=redis://queue-host:6379/0 sandbox-worker -c 8   # more hosts: same Redis
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    queue_names = [name.strip() for name in queues.split(",") if name.strip()]
    for name in queue_names:
        if name not in broker.QUEUES:
            raise click.BadParameter(f"unknown queue {name!r}; known: {', '.join(broker.QUEUES)}", param_hint="--queues")
    concurrency = concurrency or os.cpu_count() or 1
    if concurrency > 1:
        argv = ["--queues", queues, "--canary-policy", canary_policy, *(["--burst"] if burst else []),
                *(["--redis-url", redis_url] if redis_url else []), *(["-v"] if verbose else [])]
    settings = Settings(redis_url=redis_url) if redis_url else Settings()
    _end_with_pool_parent()
    try:
        if concurrency > 1:
            preflight(settings)  # a missing part is one line here, not a crash loop of every process
            sys.exit(run_pool(concurrency, argv, health_port, settings))
        serve(settings, queue_names, burst, canary_policy, health_port)
    except CanaryFailure as exc:
        log.error("%s", exc)
        sys.exit(3)
    except SandboxError as exc:  # engine down, runtime missing, image not built, bad policy: one line and the fix
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)
    except redis.RedisError as exc:
        click.secho(f"error: {broker.redis_problem(settings.redis_url, exc)}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
