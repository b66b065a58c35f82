"""Compile time and cases per second per language: the sandbox against the same toolchain unsandboxed.

    python -m tests.benchmarks.languages                       # every language, 4 programs x 20 cases
    python -m tests.benchmarks.languages --languages cpp,go --programs 8

The reference is the very toolchain of the language's image, run on the host kernel with chroot
into the image's cached root filesystem (no gVisor, no uid switch, no limits): compile the program,
then run it once per case, as a judge or an RL reward loop would. The sandbox side runs the same
programs through the Runner (no queue): *cold* is the first sample in a new sandbox (container
start included), *warm* the next ones in the same sandbox. Programs are this file's own a+b
programs (trusted: safe on the host). One run, same machine; read the ratios. Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

from sandbox.container import docker_client, owner_id
from sandbox.imagedef import load_definition
from sandbox.images import CACHE_DIR, build_image, proc_mounted
from sandbox.languages import language
from sandbox.models import JobSpec, Verdict
from sandbox.plan import Planner
from sandbox.policy import load_all_policies
from sandbox.pool import SandboxPool
from sandbox.runner import Runner
from sandbox.settings import REPO_ROOT
from tests.integration.test_languages import PROGRAMS


def cases(count: int) -> list[tuple[str, str]]:
    return [(f"{i} {i * 7}\n", f"{i + i * 7}\n") for i in range(count)]


def host_reference(name: str, program: str, inputs: list[tuple[str, str]]) -> tuple[float, float]:
    """(compile seconds, cases per second) with the image's toolchain chrooted on the host."""
    entry = language(name)
    root = CACHE_DIR / f"rootfs-{load_definition(REPO_ROOT / 'images', entry.image).rootfs_key}"
    work = root / "tmp" / f"bench-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "out").mkdir(parents=True)
    source_name, main = entry.source_layout(program)
    (work / source_name).write_text(program)
    inside = f"/tmp/{work.name}"
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": inside, "LANG": "C.UTF-8",
           **{k: v.replace("{home}", inside) for k, v in entry.env}}

    def expand(argv: tuple[str, ...]) -> list[str]:
        return [part.replace("{main}", main).replace("{source}", source_name) for part in argv]

    def chrooted(argv: list[str], stdin: str = "") -> str:
        done = subprocess.run(["/usr/sbin/chroot", str(root), "sh", "-c", 'cd "$0" && exec "$@"', inside, *argv], input=stdin,
                              capture_output=True, text=True, env=env, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{name}: {argv[0]} failed: {done.stderr[-500:]}")
        return done.stdout

    try:
        with proc_mounted(root):  # the JVM and rustc read /proc
            compile_s = 0.0
            if entry.compile:
                start = time.perf_counter()
                chrooted(expand(entry.compile))
                compile_s = time.perf_counter() - start
            else:
                shutil.copy(work / source_name, work / "out" / source_name)
            start = time.perf_counter()
            for given, expected in inputs:
                assert chrooted(expand(entry.run), given) == expected
            return compile_s, len(inputs) / (time.perf_counter() - start)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def sandboxed(runner: Runner, name: str, programs: list[str], inputs: list[tuple[str, str]]) -> dict[str, float]:
    stdio = {"cases": [{"input": i, "output": o} for i, o in inputs]}
    jobs = [JobSpec(language=name, program=p, stdio=stdio, policy="stdio") for p in programs]  # type: ignore[arg-type]
    start = time.perf_counter()
    [cold] = runner.run(jobs[:1])
    cold_s = time.perf_counter() - start
    start = time.perf_counter()
    warm = runner.run(jobs[1:])
    warm_s = time.perf_counter() - start
    results = [cold, *warm]
    assert all(r.verdict is Verdict.passed for r in results), [(r.verdict, r.error[:200]) for r in results]
    compiles = [r.timings.get("compile_s", 0.0) for r in warm]
    running = [r.timings.get("running_s", 0.0) for r in warm]
    return {"cold_s": cold_s, "warm_per_sample_s": warm_s / len(warm), "compile_s": statistics.median(compiles),
            "cases_per_s": len(inputs) / statistics.median(running)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--languages", default="c,cpp,java,javascript,typescript,go,rust")
    parser.add_argument("--programs", type=int, default=4, help="distinct programs per language (one is cold)")
    parser.add_argument("--cases", type=int, default=20)
    options = parser.parse_args()
    client = docker_client()
    runner_policies = load_all_policies(REPO_ROOT / "policies")
    inputs = cases(options.cases)
    print(f"{'language':<11} {'compile s':>10} {'(host)':>7} {'ratio':>6} {'cases/s':>8} {'(host)':>7} {'ratio':>6} "
          f"{'cold s':>7} {'warm s/sample':>14}")
    for name in options.languages.split(","):
        entry = language(name)
        build_image(client, load_definition(REPO_ROOT / "images", entry.image), say=lambda _: None)
        base = PROGRAMS[name]["sum"]
        comment = "#" if name == "python" else "//"
        programs = [base + f"\n{comment} copy {i} {time.time_ns()}\n" for i in range(options.programs)]
        try:
            host_compile, host_rate = host_reference(name, programs[0], inputs)
        except RuntimeError as exc:  # e.g. the JVM finds itself through /proc, which a bare chroot lacks
            print(f"{name:<11} no host reference: {str(exc)[:120]}", flush=True)
            host_compile, host_rate = float("nan"), float("nan")
        pool = SandboxPool(client, owner_id(), warm=False)  # host:pid, so that no worker's reaper takes it for an orphan
        try:
            got = sandboxed(Runner(pool, Planner(runner_policies, REPO_ROOT / "images")), name, programs, inputs)
        finally:
            pool.close()
        ratio_compile = got["compile_s"] / host_compile if host_compile else float("nan")
        print(f"{name:<11} {got['compile_s']:>10.2f} {host_compile:>7.2f} {ratio_compile:>6.1f} {got['cases_per_s']:>8.1f} "
              f"{host_rate:>7.1f} {host_rate / got['cases_per_s']:>6.1f} {got['cold_s']:>7.1f} {got['warm_per_sample_s']:>14.2f}",
              flush=True)
    print("ratio: sandbox / host for compile time, host / sandbox for cases per second (higher = sandbox slower)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
