"""`sandbox trace` on the four real sdists of tests/data/ci-trace: the funnel, and what tracing costs.

    python -m tests.benchmarks.citrace                  # all four
    python -m tests.benchmarks.citrace --projects inflection,titlecase

Each project runs twice under gVisor through the Runner (no queue): its tests traced (the trace job), and
the same runner with tracing off, for the CPU each took (the sample's CPU over all its processes, as the
supervisor counts it). Then the funnel of the traced run (replay in two fresh sandboxes per candidate).
One run on a shared machine: read the ratios. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from sandbox.citrace import ProjectSpec, mine, read_archive, trace_job
from sandbox.container import docker_client, owner_id
from sandbox.imagedef import load_definition
from sandbox.images import build_image
from sandbox.models import JobResult, JobSpec
from sandbox.plan import Planner
from sandbox.policy import load_all_policies
from sandbox.pool import SandboxPool
from sandbox.runner import Runner
from sandbox.settings import REPO_ROOT

DATA = REPO_ROOT / "tests" / "data" / "ci-trace"
PROJECTS = {
    "inflection": ProjectSpec(archive=DATA / "inflection-0.5.1.tar.gz", project="inflection", version="0.5.1",
                              sha256="1a29730d366e996aaacffb2f1f1cb9593dc38e2ddd30c91250c6dde09ea9b417", license="MIT"),
    "titlecase": ProjectSpec(archive=DATA / "titlecase-2.4.1.tar.gz", project="titlecase", version="2.4.1",
                             sha256="7d83a277ccbbda11a2944e78a63e5ccaf3d32f828c594312e4862f9a07f635f5", license="MIT",
                             tests=("titlecase/tests.py",)),
    "toolz": ProjectSpec(archive=DATA / "toolz-1.2.0.tar.gz", project="toolz", version="1.2.0",
                         sha256="9667a038e9d6ecba37995e26cb2f59ec6420b6ad8dd9677de59db9b956b08490", license="BSD-3-Clause"),
    "more_itertools": ProjectSpec(archive=DATA / "more_itertools-11.2.1.tar.gz", project="more_itertools",
                                  version="11.2.1", license="MIT", tests=("tests",),
                                  sha256="cbf08fd0af284dc69718b9b76a8e6203df624d70209ea511e4219d350c856f63"),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--projects", default=",".join(PROJECTS))
    parser.add_argument("--budget", type=float, default=180.0)
    parser.add_argument("--out", type=Path, default=Path("citrace-candidates.jsonl"))
    options = parser.parse_args()
    specs = [PROJECTS[name] for name in options.projects.split(",")]
    client = docker_client()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # clean up on kill too
    tag = build_image(client, load_definition(REPO_ROOT / "images"), say=print)
    # a created (never started) container keeps the image from being pruned by another checkout's build meanwhile
    guard = client.containers.create(tag, command=["true"], labels={"io.sandbox-exec.owner": owner_id()})
    pool = SandboxPool(client, owner_id(), warm=True)
    runner = Runner(pool, Planner(load_all_policies(REPO_ROOT / "policies"), REPO_ROOT / "images"))

    def run(jobs: list[JobSpec], reuse: bool) -> dict[str, JobResult]:
        return {r.job_id: r for r in runner.run(jobs)}

    try:
        untraced = []
        for spec in specs:
            data, digest = read_archive(spec)
            untraced.append(trace_job(spec, data, digest, options.budget, traced=False))
        plain = run(untraced, False)
        rows, funnel = mine(specs, run, options.budget)
        for spec, job, item in zip(specs, untraced, funnel.projects):
            result = plain[job.id]
            print(f"{spec.project}: CPU untraced {result.cpu_time_s} s ({result.verdict.value}), traced {item.cpu_s} s"
                  + (f", ratio {item.cpu_s / result.cpu_time_s:.2f}" if item.cpu_s and result.cpu_time_s else ""))
        for line in funnel.lines():
            print(line)
        options.out.write_text("".join(json.dumps(row) + "\n" for row in rows))
        print(f"{len(rows)} problems -> {options.out}")
    finally:
        pool.close()
        guard.remove(force=True)


if __name__ == "__main__":
    main()
