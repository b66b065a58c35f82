"""Several hosts on one machine: Redis, two worker hosts and a client, each in its own network namespace.

The namespaces are joined by a bridge that lives in a fifth namespace; none of them has a route
out, and the root namespace has no address on their network, so nothing here can leave the machine
(198.18.0.0/15 is the benchmarking range, never routed). Redis requires a user and password: the
workers and the client log in as the separate ACL users of `sandbox redis-acl`. The test itself
reaches Redis only through its unix socket, as an admin user. One worker host is killed mid-run;
every job must still get exactly one result, and no command of either user may have been refused.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import docker
import pytest
import redis
from rq import Queue
from rq.registry import StartedJobRegistry

from sandbox import broker
from sandbox.container import OWNER_LABEL
from sandbox.settings import REPO_ROOT

pytestmark = pytest.mark.integration

HOSTS = ("redis", "host-a", "host-b", "client")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Network:
    """Namespaces joined by a bridge in a namespace of its own; addresses 198.18.N.1-4 by host."""

    def __init__(self) -> None:
        self.tag = f"sbx{os.getpid() % 10000}{random.randrange(100)}"
        self.subnet = random.randrange(1, 250)
        self.namespaces: list[str] = []

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def address(self, host: str) -> str:
        return f"198.18.{self.subnet}.{HOSTS.index(host) + 1}"

    def create(self) -> None:
        lan = self.ns("lan")
        ip("netns", "add", lan)
        self.namespaces.append(lan)
        ip("-n", lan, "link", "add", "br0", "type", "bridge")
        ip("-n", lan, "link", "set", "br0", "up")
        for index, host in enumerate(HOSTS):
            name = self.ns(host)
            ip("netns", "add", name)
            self.namespaces.append(name)
            ip("-n", name, "link", "set", "lo", "up")
            inside, outside = f"{self.tag}i{index}", f"{self.tag}o{index}"
            ip("link", "add", inside, "type", "veth", "peer", "name", outside)
            ip("link", "set", inside, "netns", name)
            ip("link", "set", outside, "netns", lan)
            ip("-n", lan, "link", "set", outside, "master", "br0")
            ip("-n", lan, "link", "set", outside, "up")
            ip("-n", name, "addr", "add", f"{self.address(host)}/24", "dev", inside)
            ip("-n", name, "link", "set", inside, "up")

    def delete(self) -> None:
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)

    def popen(self, host: str, command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as handle:  # the child keeps its own copy of the descriptor
            return subprocess.Popen(["ip", "netns", "exec", self.ns(host), *command], env={**os.environ, **env},
                                    cwd=log.parent, stdout=handle, stderr=handle, start_new_session=True)


@pytest.fixture
def network() -> Iterator[Network]:
    net = Network()
    try:
        net.create()
        yield net
    finally:
        net.delete()


def descendants(pid: int) -> list[int]:
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return children + [d for child in children for d in descendants(child)]


def batch_held_by(admin: redis.Redis, pid: int) -> str | None:
    """The RQ batch the worker with this pid is running now, if any (ip netns exec execs the worker)."""
    started = StartedJobRegistry(queue=Queue("bulk", connection=admin))
    for job_id in started.get_job_ids(cleanup=False):
        worker = admin.hget(f"rq:job:{job_id}", "worker_name")
        if worker and f":{pid}-" in broker.text(worker):
            return job_id
    return None


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 120) -> None:
    """End a process group this test started (ip netns exec execs the command: the group is ours)."""
    if process.poll() is None:
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def test_workers_on_two_hosts_reach_an_authenticated_redis_and_survive_a_host_dying(
        network: Network, tmp_path: Path, client: docker.DockerClient, image: str) -> None:
    dead_owners: set[str] = set()
    worker_pw, client_pw, admin_pw = "w-" + os.urandom(8).hex(), "c-" + os.urandom(8).hex(), os.urandom(8).hex()
    (tmp_path / "users.acl").write_text(broker.acl_file(worker_pw, {"default": client_pw}, admin_password=admin_pw))
    socket_path = tmp_path / "redis.sock"
    redis_server = network.popen("redis", [
        "redis-server", "--bind", network.address("redis"), "--port", "6379", "--aclfile", str(tmp_path / "users.acl"),
        "--unixsocket", str(socket_path), "--unixsocketperm", "700", "--dir", str(tmp_path), "--save", "",
        "--appendonly", "yes", "--daemonize", "no"], {}, tmp_path / "redis.log")
    admin = redis.Redis(unix_socket_path=str(socket_path), username="admin", password=admin_pw)
    pools: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for _ in range(100):
            try:
                admin.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        url = f"redis://{{user}}:{{pw}}@{network.address('redis')}:6379/0"
        worker_env = {"SANDBOX_REDIS_URL": url.format(user="sandbox-worker", pw=worker_pw), "SANDBOX_HEARTBEAT_S": "1",
                      "PYTHONPATH": str(REPO_ROOT)}
        for host in ("host-a", "host-b"):
            pools[host] = network.popen(host, [sys.executable, "-m", "worker.main", "--concurrency", "1"],
                                        worker_env, tmp_path / f"{host}.log")
        deadline = time.monotonic() + 120
        while admin.scard(broker.WORKERS_SET) < 2:
            assert time.monotonic() < deadline, (tmp_path / "host-a.log").read_text()[-2000:]
            time.sleep(0.5)

        # Wrong credentials and the default user get nowhere; each user is refused what it does not need.
        as_client = redis.Redis(unix_socket_path=str(socket_path), username="sandbox-client", password=client_pw)
        as_worker = redis.Redis(unix_socket_path=str(socket_path), username="sandbox-worker", password=worker_pw)
        for forbidden in (lambda: as_client.flushall(), lambda: as_client.eval("return 1", 0),
                          lambda: as_client.config_get("*"), lambda: as_worker.flushall(),
                          lambda: as_worker.keys("*"), lambda: as_client.get("elsewhere:key")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                forbidden()
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(unix_socket_path=str(socket_path), username="sandbox-client", password="wrong").ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(unix_socket_path=str(socket_path)).ping()
        admin.acl_log_reset()  # those refusals were ours; from here on the log must stay empty

        jobs = tmp_path / "jobs.jsonl"
        check = "def check(candidate):\n    assert candidate(3) == 9\n"
        programs = [(f"def f(x):\n    import time\n    s = time.process_time()\n    while time.process_time() - s < 0.3:\n"
                     f"        pass\n    return x * x  # {i}\n") if i % 2 else f"def f(x):\n    return x + x  # {i}\n"
                    for i in range(40)]
        jobs.write_text("".join(json.dumps({"id": f"j{i}", "program": p, "check": check, "entry_point": "f",
                                            "policy": "humaneval"}) + "\n" for i, p in enumerate(programs)))
        client_env = {"SANDBOX_REDIS_URL": url.format(user="sandbox-client", pw=client_pw), "SANDBOX_HEARTBEAT_S": "1",
                      "SANDBOX_BATCH_SIZE": "4", "PYTHONPATH": str(REPO_ROOT)}
        submit = network.popen("client", [sys.executable, "-m", "sandbox.cli", "submit", str(jobs), "--out",
                                          str(tmp_path / "results.jsonl")], client_env, tmp_path / "client.log")
        results = tmp_path / "results.jsonl"
        deadline = time.monotonic() + 300
        while not results.exists() or len(results.read_text().splitlines()) < 8 or \
                not (in_hand := batch_held_by(admin, pools["host-a"].pid)):
            assert submit.poll() is None and time.monotonic() < deadline, (tmp_path / "client.log").read_text()
            time.sleep(0.05)
        killed = pools.pop("host-a")
        dead_owners |= {f"{os.uname().nodename}:{pid}" for pid in [killed.pid, *descendants(killed.pid)]}
        stop(killed, signal.SIGKILL)  # the whole host: its pool and its worker, mid-batch
        assert submit.wait(timeout=600) == 0, (tmp_path / "client.log").read_text()[-3000:]
        assert admin.exists(f"sandbox:requeued:{in_hand}")  # the batch the dead host held ran again elsewhere

        rows = [json.loads(line) for line in results.read_text().splitlines()]
        assert sorted(row["job_id"] for row in rows) == sorted(f"j{i}" for i in range(40))  # each exactly once
        for row in rows:
            i = int(row["job_id"][1:])
            assert row["verdict"] == ("passed" if i % 2 else "failed"), row
        totals = {broker.text(k): int(v) for k, v in admin.hgetall(broker.TOTALS).items()}
        assert sum(totals.values()) == 40  # counters equal stored results, although a batch was run again
        denied = admin.acl_log()
        assert denied == [], denied  # neither user needed anything its ACL refuses
    finally:
        for process in pools.values():
            stop(process)
        stop(redis_server)
        # What the killed host left behind (if the other host's reaper did not get to it first).
        for owner in dead_owners:
            for container in client.containers.list(all=True, sparse=True, filters={"label": f"{OWNER_LABEL}={owner}"}):
                container.remove(force=True)
