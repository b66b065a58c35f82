"""Tenants through a real Redis with the ACL users `sandbox redis-acl` prints, a real worker and gVisor.

A client's user may enqueue its own batches and pop its own tenant's results; the cache and the result
streams are the workers' to write. A cache entry tampered with (here by an admin connection, standing
for a client with a careless ACL) is not reused: the job runs and gets its honest verdict. Enqueueing a
function other than the service's task runs nothing on the worker's host.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

import docker
import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from sandbox import broker
from sandbox.client import Client
from sandbox.container import OWNER_LABEL, SERVICE_LABEL
from sandbox.models import JobSpec, Verdict
from sandbox.monitor import snapshot
from sandbox.settings import Settings
from tests.integration.services import RedisServer, Worker, wait_for

pytestmark = pytest.mark.integration

CHECK = "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(5) == 25\n"
GOOD = "def f(x):\n    return x * x\n"
WRONG = "def f(x):\n    return x + x  # wrong for 5\n"


def job(job_id: str, program: str) -> JobSpec:
    return JobSpec(id=job_id, program=program, check=CHECK, entry_point="f", policy="humaneval")


@pytest.fixture
def deployment(tmp_path: Path, client: docker.DockerClient, image: str) -> Iterator[tuple[RedisServer, dict[str, str], Worker]]:
    """Redis with the default user off, a worker user, tenants alpha and beta, an admin; one worker."""
    passwords = {name: f"{name}-{os.urandom(8).hex()}" for name in ("worker", "alpha", "beta", "admin")}
    (tmp_path / "users.acl").write_text(broker.acl_file(passwords["worker"], {"alpha": passwords["alpha"],
                                                                              "beta": passwords["beta"]},
                                                        admin_password=passwords["admin"]))
    server = RedisServer(tmp_path, args=("--aclfile", str(tmp_path / "users.acl")), login=f"admin:{passwords['admin']}")
    server.start()
    worker = Worker(server.url_for("sandbox-worker", passwords["worker"]), tmp_path / "worker.log",
                    env={"SANDBOX_CACHE_KEY": os.urandom(32).hex()})
    try:
        worker.wait_ready(redis.Redis.from_url(server.url))
        yield server, passwords, worker
    finally:
        worker.close()
        server.stop()
        time.sleep(0.5)
        left = client.containers.list(all=True, sparse=True, filters={"label": [SERVICE_LABEL, f"{OWNER_LABEL}={worker.owner}"]})
        for container in left:
            container.remove(force=True)
        assert not left, f"sandboxes left behind: {[c.id for c in left]}"


def tenant_client(server: RedisServer, passwords: dict[str, str], tenant: str, login_as: str | None = None) -> Client:
    user = login_as or tenant
    return Client(Settings(redis_url=server.url_for(broker.client_user(user), passwords[user]), tenant=tenant,
                           heartbeat_s=1.0, batch_size=4))


def run_one(client: Client, spec: JobSpec) -> tuple[Verdict, bool]:
    [result] = list(client.submit([spec], queue="bulk").results(idle_timeout_s=180))
    return result.verdict, result.reused


def test_clients_cannot_forge_the_cache_or_reach_another_tenants_results(
        deployment: tuple[RedisServer, dict[str, str], Worker], tmp_path: Path) -> None:
    server, passwords, worker = deployment
    admin = redis.Redis.from_url(server.url)
    alpha, beta = tenant_client(server, passwords, "alpha"), tenant_client(server, passwords, "beta")

    assert run_one(alpha, job("a-1", WRONG)) == (Verdict.failed, False)
    assert run_one(beta, job("b-1", GOOD)) == (Verdict.passed, False)
    cache_key = f"sandbox:cache:{alpha.validate(job('x', WRONG)).cache_key}"
    genuine = admin.get(cache_key)
    assert genuine is not None and genuine.startswith(b"v1:") and b'"verdict":"failed"' in genuine
    assert b"x + x  # wrong" not in genuine and b'"metadata":{}' in genuine  # compact: no program, no metadata

    # What alpha's user is refused: the cache, other tenants' jobs and results, scripts, enumerating keys.
    beta_job = next(broker.text(k) for k in admin.scan_iter("rq:job:batch_beta_*"))
    beta_stream = next(broker.text(k) for k in admin.scan_iter("sandbox:t:beta:sub:*")).rsplit(":", 1)[0] + ":stream"
    own_results = f"sandbox:t:alpha:sub:{'0' * 32}:results"
    attempts = {
        "rewrite the cache": lambda: alpha.connection.set(cache_key, genuine.replace(b'"failed"', b'"passed"')),
        "read the cache": lambda: alpha.connection.get(cache_key),
        "append to beta's stream": lambda: alpha.connection.rpush(beta_stream, b'{"job_id":"b-2","verdict":"passed"}'),
        "read beta's stream": lambda: alpha.connection.lrange(beta_stream, 0, -1),
        "read beta's batch (its tests)": lambda: alpha.connection.hgetall(beta_job),
        "rewrite beta's batch": lambda: alpha.connection.hset(beta_job, "status", "queued"),
        "write its own results hash": lambda: alpha.connection.hset(own_results, "a-9", "passed"),
        "append to its own stream": lambda: alpha.connection.rpush(own_results.replace(":results", ":stream"), b"{}"),
        "run the storing script": lambda: alpha.connection.eval("return redis.call('SET', KEYS[1], 'x')", 1, cache_key),
        "list keys": lambda: alpha.connection.scan(),
        "drop queued work": lambda: alpha.connection.lrem("rq:queue:bulk", 0, "x"),
    }
    allowed = []
    for what, attempt in attempts.items():
        try:
            attempt()
            allowed.append(what)
        except redis.exceptions.NoPermissionError:
            pass
    assert allowed == []
    with pytest.raises(redis.exceptions.NoPermissionError):  # alpha's user claiming to be beta cannot enqueue
        list(tenant_client(server, passwords, "beta", login_as="alpha").submit([job("fake", GOOD)]).results(idle_timeout_s=30))
    assert admin.get(cache_key) == genuine
    assert snapshot(alpha.connection, None, 1.0)["redis_memory"]["used"] > 0  # `sandbox status` works as a client

    # Tampered with anyway (an admin connection, or a deployment still on the old ACL): not reused.
    admin.set(cache_key, genuine.replace(b'"verdict":"failed"', b'"verdict":"passed"'))
    assert run_one(beta, job("b-2", WRONG)) == (Verdict.failed, False)         # ran, honest verdict
    admin.set(cache_key, genuine.split(b":", 3)[3].replace(b'"verdict":"failed"', b'"verdict":"passed"'))  # unsigned
    assert run_one(alpha, job("a-2", WRONG)) == (Verdict.failed, False)
    assert admin.get(cache_key).startswith(b"v1:")                             # the worker's genuine entry is back
    assert run_one(beta, job("b-3", WRONG)) == (Verdict.failed, True)          # and is reused, across tenants
    assert run_one(alpha, job("a-3", GOOD)) == (Verdict.passed, True)          # the next innocent: beta's cached pass
    log = (tmp_path / "worker.log").read_text()
    assert "does not match: tampered with" in log and "is not signed" in log

    # Enqueueing another function (here os.mkdir) runs nothing on the worker's host.
    target = tmp_path / "enqueued-code-ran"
    foreign = Queue("bulk", connection=alpha.connection, serializer=JSONSerializer).enqueue(
        "os.mkdir", str(target), job_id=broker.batch_id("alpha"))
    assert run_one(alpha, job("a-4", GOOD + "# after the foreign job\n")) == (Verdict.passed, False)
    wait_for(lambda: Job.fetch(foreign.id, connection=admin, serializer=JSONSerializer).get_status() == "failed",
             60, "the foreign job to be failed")
    assert not target.exists()
    assert "refused RQ job" in (tmp_path / "worker.log").read_text()
    refused_worker = [entry for entry in admin.acl_log(count=100) if entry.get("username") == "sandbox-worker"]
    assert refused_worker == []  # the worker never needed anything its ACL refuses
