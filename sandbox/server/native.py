"""The native surface, ``/v1``: jobs and results exactly as this service defines them (``JobSpec``, ``JobResult``).

- ``POST /v1/jobs``: run jobs and answer with their results (in the order given).
- ``GET /healthz``: the process answers. ``GET /readyz``: Redis answers and a worker is alive.
- ``GET /v1/metrics``: the server's own figures (requests, jobs, cases, compiles, groups, 504s).

Under overload (the interactive queue at ``queue_max_items``) a submission is refused with 429,
``Retry-After`` and the queue's depth. Identical jobs are answered from the content-addressed cache.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from sandbox.errors import InfrastructureError, JobValidationError
from sandbox.localworkers import live_workers
from sandbox.models import JobResult, JobSpec
from sandbox.server.core import Grouper, Service

__all__ = ["JobsRequest", "JobsResponse", "mount"]

MAX_JOBS = 1000


class JobsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: list[JobSpec] = Field(min_length=1, max_length=MAX_JOBS)


class JobsResponse(BaseModel):
    results: list[JobResult]


def mount(app: FastAPI, service: Service, grouper: Grouper, config: object) -> None:
    @app.get("/healthz", tags=["native"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["native"])
    async def readyz() -> Any:
        def workers() -> int:
            return len(live_workers(service.client.connection))
        try:
            alive = await anyio.to_thread.run_sync(workers, limiter=service.limiter)
        except Exception as exc:
            return JSONResponse(status_code=503, content={"status": "not ready", "reason": f"Redis: {exc}"})
        if not alive:
            return JSONResponse(status_code=503, content={"status": "not ready", "reason": "no worker is alive"})
        return {"status": "ready", "workers": alive}

    @app.get("/v1/metrics", tags=["native"])
    async def metrics() -> dict[str, int]:
        return service.figures.snapshot()

    @app.post("/v1/jobs", tags=["native"], response_model=JobsResponse,
              responses={429: {"description": "the queue is full: retry after Retry-After seconds"}})
    async def run_jobs(request: JobsRequest) -> Any:
        service.figures.add("requests_native")
        if len({job.id for job in request.jobs}) != len(request.jobs):
            return JSONResponse(status_code=422, content={"detail": "job ids must be unique within a request"})
        try:
            for job in request.jobs:
                service.client.validate(job)
        except JobValidationError as exc:
            return JSONResponse(status_code=422, content={"detail": str(exc)})
        try:
            depth = await service.queue_depth()
        except Exception as exc:
            return JSONResponse(status_code=503, content={"detail": f"the queue is unreachable: {exc}"})
        if depth >= service.client.settings.queue_max_items:
            return JSONResponse(status_code=429, headers={"Retry-After": "5"},
                                content={"detail": "the queue is full", "queue_depth": depth})
        try:
            results = await service.run(request.jobs)
        except InfrastructureError as exc:
            return JSONResponse(status_code=503, content={"detail": str(exc)})
        return JobsResponse(results=results)
