"""Prometheus metrics for the whole pool, computed from the same snapshot ``sandbox status`` shows.

One exporter (``sandbox metrics``) serves every worker's figures, since all of them live in Redis.
Conventional names: ``_total`` counters, ``_seconds``/``_bytes`` units, labels for queue, worker,
verdict and warning kind. Listens on loopback unless told otherwise.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import redis
from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from sandbox import broker
from sandbox.monitor import VERDICTS, WARNING_KINDS

__all__ = ["PoolCollector", "serve_metrics"]


class PoolCollector(Collector):
    def __init__(self, take_snapshot: Callable[[], dict[str, Any]], connection: redis.Redis) -> None:
        self.take_snapshot = take_snapshot
        self.connection = connection

    def collect(self) -> Iterator[Any]:
        state = self.take_snapshot()
        yield from self._queues(state)
        yield from self._workers(state)
        samples = CounterMetricFamily("sandbox_samples", "Samples finished, by verdict", labels=["verdict"])
        for verdict in VERDICTS:
            samples.add_metric([verdict], state["totals"].get(verdict, 0))
        yield samples
        yield self._durations()
        rate = GaugeMetricFamily("sandbox_samples_completed_per_minute", "Samples finished per minute (5 min mean)")
        rate.add_metric([], state["completed_per_min"])
        yield rate
        warnings = GaugeMetricFamily("sandbox_warnings", "Active warnings, by kind", labels=["kind"])
        for kind in WARNING_KINDS:
            warnings.add_metric([kind], sum(w["kind"] == kind for w in state["warnings"]))
        yield warnings
        orphans = GaugeMetricFamily("sandbox_orphan_containers", "Sandbox containers without a live owner")
        orphans.add_metric([], len(state["orphan_containers"]))
        yield orphans
        used = GaugeMetricFamily("sandbox_redis_memory_used_bytes", "Memory Redis uses (INFO used_memory)")
        used.add_metric([], state["redis_memory"]["used"])
        yield used
        limit = GaugeMetricFamily("sandbox_redis_memory_max_bytes", "Redis's maxmemory (0: none set)")
        limit.add_metric([], state["redis_memory"]["maxmemory"])
        yield limit

    def _queues(self, state: dict[str, Any]) -> Iterator[Any]:
        waiting = GaugeMetricFamily("sandbox_queue_waiting_batches", "Batches waiting in the queue", labels=["queue"])
        running = GaugeMetricFamily("sandbox_queue_running_batches", "Batches being run", labels=["queue"])
        oldest = GaugeMetricFamily("sandbox_queue_oldest_age_seconds", "Age of the oldest waiting batch",
                                   labels=["queue"])
        enqueued = GaugeMetricFamily("sandbox_queue_enqueued_per_minute", "Samples enqueued per minute (5 min mean)",
                                     labels=["queue"])
        for queue in state["queues"]:
            waiting.add_metric([queue["name"]], queue["waiting_batches"])
            running.add_metric([queue["name"]], queue["running"])
            oldest.add_metric([queue["name"]], queue["oldest_age_s"] or 0.0)
            enqueued.add_metric([queue["name"]], queue["enqueued_per_min"])
        yield from (waiting, running, oldest, enqueued)

    def _workers(self, state: dict[str, Any]) -> Iterator[Any]:
        count = GaugeMetricFamily("sandbox_workers", "Workers by state", labels=["state"])
        states: dict[str, float] = {"idle": 0, "busy": 0, "silent": 0}
        for worker in state["workers"]:
            states["silent" if not worker["alive"] else str(worker.get("state", "idle"))] += 1
        for name, value in states.items():
            count.add_metric([name], value)
        yield count
        families = {
            "cpu_percent": GaugeMetricFamily("sandbox_worker_cpu_percent", "Worker process CPU", labels=["worker"]),
            "rss_mib": GaugeMetricFamily("sandbox_worker_memory_bytes", "Worker process RSS", labels=["worker"]),
            "sandbox_cpu_percent": GaugeMetricFamily("sandbox_worker_sandbox_cpu_percent",
                                                     "CPU of the worker's gVisor sandboxes", labels=["worker"]),
            "sandbox_rss_mib": GaugeMetricFamily("sandbox_worker_sandbox_memory_bytes",
                                                 "RSS of the worker's gVisor sandboxes", labels=["worker"]),
            "sandboxes_live": GaugeMetricFamily("sandbox_worker_sandboxes", "Sandboxes the worker owns",
                                                labels=["worker"]),
            "sandboxes_idle": GaugeMetricFamily("sandbox_worker_sandboxes_idle", "Warm sandboxes waiting for work",
                                                labels=["worker"]),
            "last_heartbeat": GaugeMetricFamily("sandbox_worker_last_heartbeat_timestamp_seconds",
                                                "Time of the worker's last heartbeat", labels=["worker"]),
            "restarts": GaugeMetricFamily("sandbox_worker_restarts", "Times the worker's pool slot was restarted "
                                          "after the process died", labels=["worker"]),
        }
        for worker in state["workers"]:
            for field, family in families.items():
                value = float(worker.get(field, 0))
                family.add_metric([str(worker["id"])], value * 2**20 if field.endswith("rss_mib") else value)
        yield from families.values()

    def _durations(self) -> HistogramMetricFamily:
        raw = {broker.text(k): float(v) for k, v in self.connection.hgetall(broker.DURATIONS).items()}
        buckets: list[tuple[str, float]] = []
        running = 0.0
        for bound in broker.DURATION_BUCKETS:
            running += raw.get(str(bound), 0)
            buckets.append((str(bound), running))
        running += raw.get("+Inf", 0)
        buckets.append(("+Inf", running))
        histogram = HistogramMetricFamily("sandbox_sample_duration_seconds", "Wall time of a sample in its sandbox")
        histogram.add_metric([], buckets, sum_value=raw.get("sum", 0.0))
        return histogram


def serve_metrics(collector: PoolCollector, host: str, port: int) -> Any:
    registry = CollectorRegistry()
    registry.register(collector)
    return start_http_server(port, addr=host, registry=registry)
