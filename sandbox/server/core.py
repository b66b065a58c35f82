"""What every surface shares: the queue client, grouping of identical programs into one job, figures.

Requests run as jobs through the ordinary :class:`~sandbox.client.Client` (in threads: it blocks on
Redis), on the ``interactive`` queue, with the content-addressed cache on, so an identical request
(a client's retry) is answered from the cache instead of running again.

Grouping: SandboxFusion's callers (verl) send one request per test case, all with the same program;
Judge0's batches often share their source. Requests for the same program (language, code, limits,
caller) that arrive within ``group_window_s`` become one stdio job in capture mode with one case per
distinct input: one compile, one warm sandbox, its results fanned back. A request identical to one
still running (a retry after a 504) waits for that run instead of starting another.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field

import anyio
import anyio.to_thread

from sandbox import broker
from sandbox.client import Client
from sandbox.errors import InfrastructureError
from sandbox.models import JobResult, JobSpec, StdioCase, StdioCases
from sandbox.policy import LimitOverrides

__all__ = ["Service", "ProgramKey", "CaseAnswer", "Grouper"]

log = logging.getLogger(__name__)

RESULT_IDLE_S = 600.0     # a job thread gives up after this long without a result (no worker serves the queue)


class Figures:
    """The server's own counters (thread-safe), served at /v1/metrics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.counts[name] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


class Service:
    """The queue client shared by every surface; jobs run in threads, at most ``max_threads`` at once."""

    def __init__(self, client: Client, max_threads: int = 256) -> None:
        self.client = client
        self.limiter = anyio.CapacityLimiter(max_threads)
        self.figures = Figures()

    async def run(self, jobs: list[JobSpec]) -> list[JobResult]:
        """Submit and wait for every job's result (``InfrastructureError`` when the queue is unreachable)."""
        results = await anyio.to_thread.run_sync(self._run, jobs, limiter=self.limiter, abandon_on_cancel=True)
        return results

    def _run(self, jobs: list[JobSpec]) -> list[JobResult]:
        try:
            results = self.client.run(jobs, queue="interactive", timeout_s=RESULT_IDLE_S)
        except InfrastructureError:
            raise
        except Exception as exc:  # Redis went away mid-submission, or worse: never the program's fault
            raise InfrastructureError(f"the queue failed: {type(exc).__name__}: {exc}") from exc
        for result in results:
            self.figures.add("jobs")
            self.figures.add("cases", len(result.tests))
            if result.reused:
                self.figures.add("jobs_reused")
            elif "compile_s" in result.timings:
                self.figures.add("compiles")
        return results

    async def queue_depth(self) -> int:
        def depth() -> int:
            return int(broker.queue(self.client.connection, "interactive").count)
        return await anyio.to_thread.run_sync(depth, limiter=self.limiter)


@dataclass(frozen=True)
class ProgramKey:
    """What makes requests share one job: the same program, under the same limits, for the same caller."""

    language: str
    program: str
    policy: str
    limits: LimitOverrides
    caller: str = ""


@dataclass(frozen=True)
class CaseAnswer:
    """One request's share of a grouped job: the job's result and the index of its case, or why there is none."""

    result: JobResult | None
    index: int = 0
    infra_error: str = ""


@dataclass
class _Group:
    inputs: list[str] = field(default_factory=list)
    waiting: dict[str, asyncio.Future[CaseAnswer]] = field(default_factory=dict)


class Grouper:
    """Collects requests for the same program for ``window_s`` (or ``max_cases``) and runs them as one job."""

    def __init__(self, service: Service, window_s: float, max_cases: int) -> None:
        self.service = service
        self.window_s = window_s
        self.max_cases = max_cases
        self._open: dict[ProgramKey, _Group] = {}
        self._running: dict[tuple[ProgramKey, str], asyncio.Future[CaseAnswer]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, key: ProgramKey, stdin: str) -> asyncio.Future[CaseAnswer]:
        """The future answer for one input of this program (shared with an identical request in flight)."""
        known = self._running.get((key, stdin))
        if known is not None:
            self.service.figures.add("requests_joined")
            return known
        loop = asyncio.get_running_loop()
        future: asyncio.Future[CaseAnswer] = loop.create_future()
        self._running[(key, stdin)] = future
        future.add_done_callback(lambda done: self._forget(key, stdin, done))
        group = self._open.get(key)
        if group is None:
            group = self._open[key] = _Group()
            loop.call_later(self.window_s, self._flush, key, group)
        group.inputs.append(stdin)
        group.waiting[stdin] = future
        if len(group.inputs) >= self.max_cases:
            self._flush(key, group)
        return future

    def _forget(self, key: ProgramKey, stdin: str, done: asyncio.Future[CaseAnswer]) -> None:
        if self._running.get((key, stdin)) is done:
            del self._running[(key, stdin)]

    def _flush(self, key: ProgramKey, group: _Group) -> None:
        if self._open.get(key) is not group:
            return  # already flushed when it filled up
        del self._open[key]
        task = asyncio.get_running_loop().create_task(self._run(key, group))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: ProgramKey, group: _Group) -> None:
        figures = self.service.figures
        figures.add("groups")
        figures.add("grouped_requests", len(group.inputs))
        job = JobSpec(language=key.language, program=key.program, policy=key.policy, limits=key.limits,
                      stdio=StdioCases(cases=tuple(StdioCase(input=text) for text in group.inputs), capture=True))
        try:
            [result] = await self.service.run([job])
            answers = [CaseAnswer(result, index) for index in range(len(group.inputs))]
        except InfrastructureError as exc:
            answers = [CaseAnswer(None, infra_error=str(exc))] * len(group.inputs)
        except Exception as exc:  # a job the surface validated can still fail here: never leave a caller waiting
            log.exception("grouped job failed")
            answers = [CaseAnswer(None, infra_error=f"{type(exc).__name__}: {exc}")] * len(group.inputs)
        for text, answer in zip(group.inputs, answers):
            future = group.waiting[text]
            if not future.done():
                future.set_result(answer)
