"""Stdio cases per second: the service against a fresh unsandboxed process per case on the host.

    python -m tests.benchmarks.stdio                 # the shared set's problems with many cases
    python -m tests.benchmarks.stdio --copies 3

What the APPS harness and most RL reward code do per case is start the program again; the service
does the same inside one warm gVisor sandbox per sample (a fresh process and uid per case, output
compared on the trusted side). Programs are reference solutions their source's harness accepted
(tests/data/stdio: the CodeContests problem with 201 cases and the APPS competition problems with
10-21 cases each), so running them on the host is safe. Both sides use as many parallel workers as
cores, in one run on the same machine; read the ratio. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sandbox.client import Client
from sandbox.harness import comparators
from sandbox.models import JobResult, JobSpec, Verdict
from sandbox.problems import Problem, Sample, load_problems, sample_job
from sandbox.settings import REPO_ROOT, Settings
from tests.integration.services import RedisServer, Worker

CORES = os.cpu_count() or 2
DATA = REPO_ROOT / "tests" / "data" / "stdio"


def reference_programs(copies: int) -> list[tuple[Problem, JobSpec]]:
    """(problem, job) for each accepted reference solution chosen, ``copies`` distinct copies each."""
    chosen: list[tuple[Problem, str]] = []
    cc = load_problems(DATA / "codecontests_alphacodium_example.jsonl")
    chosen += [(p, p.canonical_solutions[0]) for p in cc.values()]
    for problem in load_problems(DATA / "apps_codechain_minival.jsonl").values():
        accepted = problem.canonical_passed or ()
        if problem.stdio is not None and len(problem.stdio.cases) >= 10 and True in accepted:
            chosen.append((problem, problem.canonical_solutions[accepted.index(True)]))
    jobs = []
    for copy in range(copies):
        for problem, code in chosen:
            sample = Sample(task_id=problem.task_id, completion=code + f"\n# copy {copy} {time.time_ns()}\n")
            jobs.append((problem, sample_job(len(jobs), sample, problem, "stdio")))
    return jobs


def run_service(jobs: list[tuple[Problem, JobSpec]], settings: Settings) -> tuple[float, list[JobResult]]:
    start = time.perf_counter()
    results = list(Client(settings).submit([job for _, job in jobs], reuse=False).results(idle_timeout_s=900))
    return time.perf_counter() - start, results


def run_host(jobs: list[tuple[Problem, JobSpec]], directory: Path) -> tuple[float, int]:
    """Each case: `python3 program.py < input`, a fresh process, compared by the problem's comparator."""
    work = []
    for index, (problem, job) in enumerate(jobs):
        assert job.program is not None and problem.stdio is not None
        path = directory / f"program{index}.py"
        path.write_text(job.program)
        compare = comparators.STDIO[problem.stdio.comparator]
        work += [(path, case.input, case.output, compare, problem.stdio.float_tolerance) for case in problem.stdio.cases]

    def one(item: tuple[Path, str, str | None, object, float]) -> bool:
        path, stdin, expected, compare, tolerance = item
        try:
            done = subprocess.run([sys.executable, str(path)], input=stdin, capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0 and compare(done.stdout, expected or "", tolerance)[0]  # type: ignore[operator]

    start = time.perf_counter()
    with ThreadPoolExecutor(CORES) as pool:
        passed = sum(pool.map(one, work))
    return time.perf_counter() - start, passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=2, help="distinct copies of each program")
    args = parser.parse_args()
    jobs = reference_programs(args.copies)
    cases = sum(len(job.stdio.cases) for _, job in jobs if job.stdio is not None)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        host_s, host_passed = run_host(jobs, directory)
        server = RedisServer(directory)
        server.start()
        settings = Settings(redis_url=server.url)
        workers = [Worker(server.url, directory / f"w{i}.log") for i in range(CORES)]
        try:
            for worker in workers:
                worker.wait_ready(Client(settings).connection)
            service_s, results = run_service(jobs, settings)
        finally:
            for worker in workers:
                worker.close()
            server.stop()
    service_passed = sum(t.status.value == "passed" for r in results for t in r.tests)
    print(f"\nmachine: {CORES} cores; {len(jobs)} programs, {cases} cases "
          f"({statistics.median(len(j.stdio.cases) for _, j in jobs if j.stdio):.0f} per program, median)")
    print(f"{'':<34}{'cases/s':>9}{'passed':>9}")
    print(f"{'service (gVisor, warm pool)':<34}{cases / service_s:>9.1f}{service_passed:>9}")
    print(f"{'host: fresh process per case':<34}{cases / host_s:>9.1f}{host_passed:>9}")
    print(f"ratio service/host: {host_s / service_s:.2f}; "
          f"samples passed in the service: {sum(r.verdict is Verdict.passed for r in results)}/{len(results)}")
    per_case = [r.wall_time_s / len(r.tests) for r in results if r.tests and r.wall_time_s]
    print(f"wall time per case inside the sandbox, median: {statistics.median(per_case) * 1000:.0f} ms")
    print(json.dumps({"cases": cases, "service_cases_per_s": cases / service_s, "host_cases_per_s": cases / host_s}))


if __name__ == "__main__":
    main()
