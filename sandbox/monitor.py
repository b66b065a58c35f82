"""What operators see: one snapshot of the pool, read from Redis (and the local Docker engine).

``snapshot`` gathers queues, workers, running batches, the recent verdict mix and warnings;
``render`` prints it for ``sandbox status`` and ``sandbox top``; the Prometheus exporter
(``sandbox.metrics``) serves the same snapshot as metrics.
"""

from __future__ import annotations

import time
from functools import partial
from datetime import datetime, timezone
from typing import Any, Callable

import docker
import psutil
import redis
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from sandbox import broker
from sandbox.reaper import orphans

__all__ = ["snapshot", "render", "VERDICTS", "WARNING_KINDS"]

RATE_WINDOW_MIN = 5
VERDICT_WINDOW_MIN = 15
LOW_DISK_FRACTION = 0.10
VERDICTS = ("passed", "failed", "timeout", "error", "infra_error")
WARNING_KINDS = ("worker_silent", "worker_crash_loop", "batch_stuck", "batch_overdue", "orphan_containers", "low_disk",
                 "no_workers", "infra_errors", "redis_memory")
REDIS_MEMORY_WARN_FRACTION = 0.8   # of maxmemory (or of the machine's memory when Redis has no maxmemory)


def snapshot(connection: redis.Redis, docker_client: docker.DockerClient | None, heartbeat_s: float,
             disk_paths: tuple[str, ...] = ("/", "/var/lib/docker")) -> dict[str, Any]:
    now = time.time()
    minute = int(now // 60)
    workers = _workers(connection, now, heartbeat_s)
    queues = [_queue(connection, name, now, minute) for name in broker.QUEUES]
    running = [batch for q in queues for batch in q.pop("running_batches")]
    recent = _sum_hashes(connection, [broker.verdict_key(m) for m in range(minute - VERDICT_WINDOW_MIN + 1, minute + 1)])
    last_minutes = _sum_hashes(connection, [broker.verdict_key(m) for m in range(minute - RATE_WINDOW_MIN + 1, minute + 1)])
    orphans = _orphan_containers(docker_client, connection) if docker_client is not None else []
    disks = [_disk(path) for path in disk_paths if _disk(path) is not None]
    state = {
        "time": now, "queues": queues, "workers": workers, "running_batches": running,
        "verdicts_last_15_min": {v: recent.get(v, 0) for v in VERDICTS},
        "completed_per_min": sum(last_minutes.values()) / RATE_WINDOW_MIN,
        "totals": {v: int(c) for v, c in _hash(connection, broker.TOTALS).items()},
        "orphan_containers": orphans, "disks": disks, "alerts": broker.alerts(connection),
        "redis_memory": broker.redis_memory(connection),
    }
    state["warnings"] = _warnings(state, heartbeat_s)
    return state


def _hash(connection: redis.Redis, key: str) -> dict[str, str]:
    return {broker.text(k): broker.text(v) for k, v in connection.hgetall(key).items()}


def _sum_hashes(connection: redis.Redis, keys: list[str]) -> dict[str, int]:
    totals: dict[str, int] = {}
    with connection.pipeline() as pipe:
        for key in keys:
            pipe.hgetall(key)
        for mapping in pipe.execute():
            for field, value in mapping.items():
                totals[broker.text(field)] = totals.get(broker.text(field), 0) + int(value)
    return totals


def _queue(connection: redis.Redis, name: str, now: float, minute: int) -> dict[str, Any]:
    rq_queue = broker.queue(connection, name)
    waiting = rq_queue.count
    oldest = None
    first = rq_queue.get_job_ids(0, 1)
    if first:
        enqueued = _allowed(lambda: connection.hget(f"rq:job:{first[0]}", "enqueued_at"))
        oldest = now - broker.rq_timestamp(enqueued) if enqueued else None
    enqueued_recent = sum(int(connection.hget(broker.enqueued_key(m), name) or 0)
                          for m in range(minute - RATE_WINDOW_MIN + 1, minute + 1))
    registry = StartedJobRegistry(queue=rq_queue)
    running = [_running_batch(connection, broker.text(entry).split(":")[0], name, now)
               for entry in connection.zrange(registry.key, 0, -1)]
    return {"name": name, "waiting_batches": waiting, "running": len(running), "oldest_age_s": oldest,
            "enqueued_per_min": enqueued_recent / RATE_WINDOW_MIN, "running_batches": running}


def _running_batch(connection: redis.Redis, rq_job_id: str, queue_name: str, now: float) -> dict[str, Any]:
    lease_owner = connection.get(f"{broker.PREFIX}:lease:{rq_job_id}")
    started = _allowed(lambda: connection.hget(f"rq:job:{rq_job_id}", "started_at"))
    meta: dict[str, Any] = {}
    try:
        meta = Job.fetch(rq_job_id, connection=connection, serializer=JSONSerializer).meta
    except Exception:  # rq raises several types for vanished or unreadable jobs; the row is still useful
        pass
    return {"id": rq_job_id, "queue": queue_name, "worker": broker.text(lease_owner) if lease_owner else None,
            "elapsed_s": now - broker.rq_timestamp(started) if started else None, "samples": meta.get("samples"),
            "expected_s": meta.get("expected_s")}


def _workers(connection: redis.Redis, now: float, heartbeat_s: float) -> list[dict[str, Any]]:
    workers = []
    for member in sorted(broker.text(m) for m in connection.smembers(broker.WORKERS_SET)):
        live = _hash(connection, broker.worker_key(member))
        last = live or _hash(connection, broker.WORKER_LAST + member)
        if not last:
            _allowed(partial(connection.srem, broker.WORKERS_SET, member))  # silent for more than an hour: forgotten
            continue
        row: dict[str, Any] = {key: _number(value) for key, value in last.items()}
        row["silent_s"] = now - float(last.get("last_heartbeat", 0))
        row["alive"] = bool(live) and row["silent_s"] < 3 * heartbeat_s
        workers.append(row)
    return workers


def _allowed(read: Callable[[], Any]) -> Any:
    """A read (or tidy-up) a client's Redis user may not be allowed: another tenant's batch. None then."""
    try:
        return read()
    except redis.exceptions.NoPermissionError:
        return None


def _number(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _orphan_containers(client: docker.DockerClient, connection: redis.Redis) -> list[dict[str, str]]:
    found = orphans(client, lambda owner: broker.worker_alive(connection, owner))
    return [{"id": container.id[:12], "owner": owner} for container, owner in found]


def _disk(path: str) -> dict[str, Any] | None:
    try:
        usage = psutil.disk_usage(path)
    except OSError:
        return None
    return {"path": path, "free_gib": usage.free / 2**30, "free_fraction": usage.free / usage.total}


def _warnings(state: dict[str, Any], heartbeat_s: float) -> list[dict[str, str]]:
    warnings: list[dict[str, str]] = []

    def warn(kind: str, message: str) -> None:
        assert kind in WARNING_KINDS
        warnings.append({"kind": kind, "message": message})

    for message in state["alerts"]:
        warn("worker_crash_loop", message)
    for worker in state["workers"]:
        if not worker["alive"]:
            doing = f", was busy on {worker.get('current_batch')}" if worker.get("current_batch") else ""
            warn("worker_silent", f"worker {worker['id']} silent for {worker['silent_s']:.0f} s{doing}")
    live_workers = {w["id"] for w in state["workers"] if w["alive"]}
    for batch in state["running_batches"]:
        elapsed, expected = batch["elapsed_s"], batch["expected_s"]
        if batch["worker"] is None and (elapsed or 0) > 3 * heartbeat_s:
            warn("batch_stuck", f"batch {batch['id']} has no live worker (lease expired after "
                                f"{elapsed:.0f} s); it will be requeued")
        elif expected and elapsed and elapsed > expected:
            warn("batch_overdue", f"batch {batch['id']} running {elapsed:.0f} s, past its {expected:.0f} s budget "
                                  f"(worker {batch['worker']})")
        elif batch["worker"] is not None and batch["worker"] not in live_workers:
            warn("batch_stuck", f"batch {batch['id']} is held by silent worker {batch['worker']}")
    if state["orphan_containers"]:
        ids = ", ".join(o["id"] for o in state["orphan_containers"][:5])
        warn("orphan_containers", f"{len(state['orphan_containers'])} sandbox container(s) without a live owner: {ids}")
    for disk in state["disks"]:
        if disk["free_fraction"] < LOW_DISK_FRACTION:
            warn("low_disk", f"{disk['path']}: only {disk['free_gib']:.1f} GiB ({disk['free_fraction']:.0%}) free")
    for queue in state["queues"]:
        if queue["waiting_batches"] and not live_workers:
            warn("no_workers", f"queue {queue['name']} has {queue['waiting_batches']} batch(es) and no live worker")
    memory = state["redis_memory"]
    if memory["limit"] and memory["used"] >= REDIS_MEMORY_WARN_FRACTION * memory["limit"]:
        of = "its maxmemory" if memory["maxmemory"] else "this machine's memory (no maxmemory set)"
        warn("redis_memory", f"Redis uses {memory['used'] / 2**20:.0f} MiB, {memory['used'] / memory['limit']:.0%} of "
                             f"{of}; with maxmemory-policy {memory['policy']} a full Redis stops every worker")
    infra = state["verdicts_last_15_min"].get("infra_error", 0)
    if infra:
        warn("infra_errors", f"{infra} infrastructure error(s) in the last {VERDICT_WINDOW_MIN} min (sandboxes failing?)")
    return warnings


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def render(state: dict[str, Any], style: Callable[..., str] = lambda text, **_: text) -> str:
    stamp = datetime.fromtimestamp(state["time"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [style(f"sandbox status  {stamp}", bold=True), "",
             style(f"{'QUEUE':<12}{'waiting':>9}{'running':>9}{'oldest':>8}{'in/min':>9}", bold=True)]
    for queue in state["queues"]:
        lines.append(f"{queue['name']:<12}{queue['waiting_batches']:>9}{queue['running']:>9}"
                     f"{_age(queue['oldest_age_s']):>8}{queue['enqueued_per_min']:>9.0f}")
    lines += ["", style(f"{'WORKER':<22}{'state':<8}{'batch':<16}{'samples':>8}{'infra':>6}{'restarts':>9}{'up':>6}{'beat':>6}"
                        f"{'cpu%':>6}{'MiB':>6}{'sbx cpu%':>9}{'sbx MiB':>8}{'warm/live':>10}", bold=True)]
    for worker in state["workers"]:
        counts = sum(int(worker.get(f"count_{v}", 0)) for v in VERDICTS)
        status = worker.get("state", "?") if worker["alive"] else "SILENT"
        row = (f"{str(worker['id'])[-22:]:<22}{status:<8}{str(worker.get('current_batch', ''))[:15]:<16}{counts:>8}"
               f"{int(worker.get('count_infra_error', 0)):>6}{int(worker.get('restarts', 0)):>9}"
               f"{_age(state['time'] - float(worker.get('started_at', 0))):>6}"
               f"{_age(worker['silent_s']):>6}{float(worker.get('cpu_percent', 0)):>6.0f}{int(worker.get('rss_mib', 0)):>6}"
               f"{float(worker.get('sandbox_cpu_percent', 0)):>9.0f}{int(worker.get('sandbox_rss_mib', 0)):>8}"
               f"{str(worker.get('sandboxes_idle', 0)) + '/' + str(worker.get('sandboxes_live', 0)):>10}")
        lines.append(row if worker["alive"] else style(row, fg="red"))
    if not state["workers"]:
        lines.append("(no workers)")
    mix = "  ".join(f"{v} {n}" for v, n in state["verdicts_last_15_min"].items())
    memory = state["redis_memory"]
    limit = f"{memory['limit'] / 2**20:.0f} MiB" + ("" if memory["maxmemory"] else " (machine; no maxmemory)")
    lines += ["", style("VERDICTS, last 15 min: ", bold=True) + mix,
              f"completed {state['completed_per_min']:.0f}/min over the last {RATE_WINDOW_MIN} min",
              style("REDIS MEMORY: ", bold=True) + f"{memory['used'] / 2**20:.1f} MiB used of {limit}"
              + (f" ({memory['used'] / memory['limit']:.0%})" if memory["limit"] else "")]
    lines += ["", style("WARNINGS", bold=True)]
    lines += [style(f"  ! {w['message']}", fg="yellow") for w in state["warnings"]] or ["  none"]
    return "\n".join(lines)
