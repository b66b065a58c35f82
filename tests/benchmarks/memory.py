"""Memory at scale: client, workers and Redis while `sandbox submit` streams a large jobs file.

    python -m tests.benchmarks.memory --samples 50000
    python -m tests.benchmarks.memory --samples 1000000 --distinct 1000

Real parts throughout: the `sandbox submit` command on a JSONL file, two `sandbox-worker`
processes running gVisor sandboxes, a private Redis on loopback. Every line is its own job (its
own id and result line); ``--distinct`` programs among them run in sandboxes and the rest are
identical work, answered from what already ran (in flight or cached): that is what makes a
million samples fit in a benchmark run on 2 cores (a sample costs ~60 ms of sandbox CPU, so a
million distinct ones would take hours) while the client, the queue and the result path still
carry every one of them. Samples RSS of each process and Redis's ``used_memory`` every 0.5 s and
prints the peaks, at each tenth of the run (flat memory shows as flat rows). Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

from sandbox.client import Client
from sandbox.settings import Settings
from tests.integration.services import RedisServer, Worker

CHECK = "def check(candidate):\n    assert candidate(3) == 9\n"


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its descendants (a worker's gVisor sandboxes are not its children)."""
    total = 0.0
    for path in [f"/proc/{pid}"] + [f"/proc/{c}" for c in _descendants(pid)]:
        try:
            for line in Path(path, "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def _descendants(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    found = [int(c) for c in children]
    for child in list(found):
        found += _descendants(child)
    return found


def write_jobs(path: Path, samples: int, distinct: int) -> None:
    with path.open("w") as handle:
        for i in range(samples):
            handle.write(json.dumps({"id": f"s{i}", "program": f"def f(x):\n    return x * x  # {i % distinct}\n",
                                     "check": CHECK, "entry_point": "f", "policy": "humaneval",
                                     "metadata": {"task": i % 164}}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--distinct", type=int, default=1000, help="programs among them that run in sandboxes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        jobs_file, out_file = directory / "jobs.jsonl", directory / "results.jsonl"
        write_jobs(jobs_file, args.samples, args.distinct)
        server = RedisServer(directory)
        server.start()
        connection = redis.Redis.from_url(server.url)
        workers = [Worker(server.url, directory / f"w{i}.log") for i in range(2)]
        for worker in workers:
            worker.wait_ready(Client(Settings(redis_url=server.url)).connection)
        baseline_redis = connection.info("memory")["used_memory"] / 2**20
        cpu_before = _redis_cpu_s(connection)
        start = time.perf_counter()
        client = subprocess.Popen([sys.executable, "-m", "sandbox.cli", "submit", str(jobs_file), "--out", str(out_file)],
                                  env={**os.environ, "SANDBOX_REDIS_URL": server.url}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        peaks = {"client": 0.0, "workers": 0.0, "redis": 0.0}
        rows: list[tuple[int, float, float, float]] = []
        stop = threading.Event()

        counted = {"offset": 0, "lines": 0}

        def results_so_far() -> int:  # counts only what was appended since the last look
            try:
                with out_file.open("rb") as handle:
                    handle.seek(counted["offset"])
                    chunk = handle.read()
            except OSError:
                return 0
            counted["offset"] += len(chunk)
            counted["lines"] += chunk.count(b"\n")
            return counted["lines"]

        def sample() -> None:
            next_tenth = 1
            while not stop.wait(0.5):
                client_mib = rss_mib(client.pid)
                workers_mib = sum(rss_mib(w.process.pid) for w in workers)
                redis_mib = connection.info("memory")["used_memory"] / 2**20 - baseline_redis
                for key, value in (("client", client_mib), ("workers", workers_mib), ("redis", redis_mib)):
                    peaks[key] = max(peaks[key], value)
                done = results_so_far()
                if done >= next_tenth * args.samples / 10:
                    rows.append((done, client_mib, workers_mib, redis_mib))
                    next_tenth = int(done * 10 / args.samples) + 1

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, stderr = client.communicate()
        elapsed = time.perf_counter() - start
        stop.set()
        sampler.join()
        retained = connection.info("memory")["used_memory"] / 2**20 - baseline_redis
        redis_cpu_s = _redis_cpu_s(connection) - cpu_before
        for worker in workers:
            worker.close()
        server.stop()
        results = _lines(out_file)
    print(f"\n{args.samples} samples ({args.distinct} distinct programs), {results} result lines, "
          f"exit {client.returncode}, {elapsed:.0f} s ({args.samples / elapsed:.0f} samples/s)")
    if client.returncode:
        print(stderr[-2000:])
    print(f"{'results':>10}{'client MiB':>12}{'workers MiB':>13}{'Redis MiB':>11}")
    for done, client_mib, workers_mib, redis_mib in rows:
        print(f"{done:>10}{client_mib:>12.0f}{workers_mib:>13.0f}{redis_mib:>11.1f}")
    print(f"peaks: client {peaks['client']:.0f} MiB RSS, workers {peaks['workers']:.0f} MiB RSS (2 processes), "
          f"Redis {peaks['redis']:.1f} MiB used_memory above its start; left in Redis after the run: "
          f"{retained:.1f} MiB ({retained * 2**20 / args.distinct:.0f} bytes per sample that ran: its cached result "
          f"and exactly-once marker, until the results' TTL; copies answered by the client add nothing)")
    print(f"Redis CPU: {redis_cpu_s:.1f} s in all; {1000 * redis_cpu_s / args.distinct:.2f} ms per distinct sample "
          f"(those that ran; with --distinct = --samples this is the capacity figure: Redis cores needed per "
          f"1000 samples/s = that figure)")


def _redis_cpu_s(connection: redis.Redis) -> float:
    info = connection.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _lines(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except OSError:
        return 0


if __name__ == "__main__":
    main()
