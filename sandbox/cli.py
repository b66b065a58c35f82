"""The ``sandbox`` command line. Every option can also be set by its ``SANDBOX_*`` variable."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from sandbox.errors import SandboxError
from sandbox.models import JobResult, JobSpec, TestSnippet
from sandbox.settings import Settings

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def fail(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(2)


class SandboxGroup(click.Group):
    """Turns the package's own errors into one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SandboxError as exc:
            fail(str(exc))
        except ValidationError as exc:
            fail(_validation_message(exc))


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'job'}: {e['msg']}" for e in exc.errors())


@click.group(cls=SandboxGroup, context_settings=CONTEXT)
@click.option("-v", "--verbose", is_flag=True, help="Log what the service does (INFO level).")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Run untrusted programs against their tests in gVisor sandboxes.

    \b
    First time on a machine:   sandbox doctor --fix && sandbox images build
    One job, no queue:         sandbox run job.json
    Many jobs, through Redis:  sandbox worker --concurrency 2 &  sandbox submit jobs.jsonl --out results.jsonl
    HumanEval pass@k:          sandbox evaluate samples.jsonl --k 1,10
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = Settings()


# -- host and images -----------------------------------------------------------------------------
@main.command(context_settings=CONTEXT)
@click.option("--fix", is_flag=True, help="Install and start what is missing (needs root; idempotent).")
def doctor(fix: bool) -> None:
    """Check the host: Docker engine, gVisor (runsc), daemon configuration, Redis.

    Without --fix, prints what is wrong and how to fix it; exits 1 if anything is.
    """
    from sandbox.host import run_doctor

    healthy = run_doctor(fix=fix, say=click.echo)
    settings: Settings = click.get_current_context().obj
    healthy = _check_image(settings) and healthy
    sys.exit(0 if healthy else 1)


def _check_image(settings: Settings) -> bool:
    from sandbox.container import docker_client
    from sandbox.images import image_exists, load_definition

    tag = load_definition(settings.images_dir).tag
    try:
        present = image_exists(docker_client(), tag)
    except SandboxError:
        present = False
    click.echo(f"[ok]   image {tag}" if present else f"[FAIL] image {tag} is not built\n       fix: sandbox images build")
    return present


@main.command(context_settings=CONTEXT)
@click.pass_obj
def setup(settings: Settings) -> None:
    """Make this machine ready, idempotently: doctor --fix, validate policies, build the image.

    Installs the Docker engine, gVisor, Redis and debootstrap if missing (needs root), starts
    dockerd and redis-server, and builds the sandbox image (about a minute the first time).
    """
    from sandbox.container import docker_client
    from sandbox.host import run_doctor
    from sandbox.images import build_image, load_definition
    from sandbox.policy import load_all_policies

    if not run_doctor(fix=True, say=click.echo):
        fail("the host is not ready (see above)")
    click.echo(f"[ok]   policies: {', '.join(load_all_policies(settings.policies_dir))}")
    build_image(docker_client(), load_definition(settings.images_dir), say=lambda line: click.echo(f"[image] {line}"))


@main.group(context_settings=CONTEXT)
def images() -> None:
    """Build and inspect sandbox images (made from Debian packages; no registry needed)."""


@images.command("build", context_settings=CONTEXT)
@click.option("--force", is_flag=True, help="Rebuild even if the image for this definition exists.")
@click.pass_obj
def images_build(settings: Settings, force: bool) -> None:
    """Build the Python sandbox image if its definition or the harness changed."""
    from sandbox.container import docker_client
    from sandbox.images import build_image, load_definition

    build_image(docker_client(), load_definition(settings.images_dir), say=click.echo, force=force)


@main.command(context_settings=CONTEXT)
@click.pass_obj
def policies(settings: Settings) -> None:
    """Validate every policy file in policies/ and list them (exit 2 naming file and field if one is bad)."""
    from sandbox.policy import load_all_policies

    for policy in load_all_policies(settings.policies_dir).values():
        click.echo(f"{policy.name:<12} runtime={policy.runtime} cpu={policy.cpu_time_s}s wall={policy.wall_time_s}s "
                   f"memory={policy.memory_mib}MiB processes={policy.processes} scratch={policy.scratch_mib}MiB")
        click.echo(f"{'':<12} {' '.join(policy.description.split())}")


# -- one job, no queue ---------------------------------------------------------------------------
@main.command(context_settings=CONTEXT)
@click.argument("job_file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--code", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Program file.")
@click.option("--tests", "tests_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A check(candidate) program (.py) or a JSON list of {name, code} snippets (.json).")
@click.option("--entry-point", help="Function the tests call.")
@click.option("--policy", default=None, help="Policy name from policies/ (default: the job's, else 'default').")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def run(settings: Settings, job_file: Path | None, code: Path | None, tests_file: Path | None,
        entry_point: str | None, policy: str | None, as_json: bool) -> None:
    """Run one job in a fresh gVisor sandbox and print its per-test verdicts.

    \b
    sandbox run job.json
    sandbox run --code solution.py --tests check.py --entry-point add
    Exit status: 0 if the job passed, 1 if not, 2 on bad input or infrastructure failure.
    """
    job = _job_from_options(job_file, code, tests_file, entry_point, policy)
    from sandbox.container import docker_client, owner_id
    from sandbox.images import require_image
    from sandbox.policy import load_all_policies
    from sandbox.pool import SandboxPool
    from sandbox.runner import Runner, prepare

    all_policies = load_all_policies(settings.policies_dir)
    if job.policy not in all_policies:
        fail(f"unknown policy {job.policy!r} (known: {', '.join(sorted(all_policies))})")
    prepare(job, all_policies[job.policy])  # bad input fails here, before any container starts
    client = docker_client()
    pool = SandboxPool(client, require_image(client, settings.images_dir), owner_id(), warm=False)
    try:
        result = Runner(pool, all_policies, infra_attempts=settings.infra_attempts).run([job])[0]
    finally:
        pool.close()
    click.echo(result.model_dump_json(indent=2) if as_json else format_result(result))
    sys.exit(0 if result.passed else 1)


def _job_from_options(job_file: Path | None, code: Path | None, tests_file: Path | None, entry_point: str | None,
                      policy: str | None) -> JobSpec:
    if job_file is not None:
        if code or tests_file or entry_point:
            fail("give a JOB_FILE or --code/--tests/--entry-point, not both")
        try:
            data = json.loads(job_file.read_text())
        except ValueError as exc:
            fail(f"{job_file} is not valid JSON: {exc}")
        if not isinstance(data, dict):
            fail(f"{job_file} must hold one JSON object (a job)")
        if policy:
            data["policy"] = policy
        return JobSpec.model_validate(data)
    if not (code and tests_file and entry_point):
        fail("give a JOB_FILE, or all of --code, --tests and --entry-point (see `sandbox run --help`)")
    assert code and tests_file and entry_point
    fields: dict[str, Any] = {"program": code.read_text(), "entry_point": entry_point, "policy": policy or "default"}
    if tests_file.suffix == ".json":
        fields["tests"] = tuple(TestSnippet.model_validate(t) for t in json.loads(tests_file.read_text()))
    else:
        fields["check"] = tests_file.read_text()
    return JobSpec.model_validate(fields)


# -- the queue -----------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT)
@click.argument("jobs_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Results, one JSON line per job, appended as they finish. Rerunning resumes: jobs already here are skipped.")
@click.option("--queue", default="bulk", show_default=True, type=click.Choice(["interactive", "bulk"]),
              help="interactive is served before bulk.")
@click.option("--skip-invalid", is_flag=True, help="Submit the valid lines even if some are invalid (they are still listed).")
@click.option("--idle-timeout", default=600.0, show_default=True, help="Give up after this many seconds without a result.")
@click.pass_obj
def submit(settings: Settings, jobs_file: Path, out_file: Path, queue: str, skip_invalid: bool,
           idle_timeout: float) -> None:
    """Queue every job of a JSONL file and write their results as they finish.

    \b
    Each line is a job: {"id", "program" | "prompt"+"completion", "check" | "tests", "entry_point",
    "policy", "limits", "metadata"}; a line without "id" gets FILE:LINE. Workers must be running:
    `sandbox worker --concurrency 2`. Exit status 2 if any line is invalid.
    """
    from sandbox.client import Client
    from sandbox.jsonl import read_jobs, read_result_ids

    client = Client(settings)
    jobs, problems = read_jobs(jobs_file, client.validate)
    for problem in problems:
        click.secho(f"{jobs_file}:{problem}", fg="red", err=True)
    if problems and not skip_invalid:
        fail(f"{len(problems)} invalid line(s); nothing submitted (fix them, or pass --skip-invalid)")
    done = read_result_ids(out_file)
    todo = [job for job in jobs if job.id not in done]
    click.echo(f"{len(jobs)} job(s) in {jobs_file}: {len(jobs) - len(todo)} already in {out_file}, "
               f"{len(todo)} to run", err=True)
    counts = _stream_results(client.submit(todo, queue=queue), out_file, idle_timeout, initial=len(jobs) - len(todo),
                             total=len(jobs))
    click.echo(" ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "nothing to do", err=True)
    sys.exit(2 if problems else 0)


def _stream_results(submission: Any, out_file: Path, idle_timeout: float, initial: int, total: int) -> dict[str, int]:
    from collections import Counter

    from tqdm import tqdm

    counts: Counter[str] = Counter()
    if out_file.exists() and out_file.stat().st_size and not out_file.read_bytes().endswith(b"\n"):
        with out_file.open("a") as out:
            out.write("\n")  # a previous run died mid-line; keep the next result on its own line
    with out_file.open("a") as out, tqdm(total=total, initial=initial, unit="job", dynamic_ncols=True,
                                         disable=None) as bar:
        for result in submission.results(idle_timeout_s=idle_timeout):
            out.write(result.model_dump_json() + "\n")
            out.flush()
            counts[result.verdict.value] += 1
            counts["reused"] += result.reused
            bar.update(1)
            bar.set_postfix({k: v for k, v in counts.items() if v}, refresh=False)
    return dict(counts)


@main.command(context_settings={**CONTEXT, "ignore_unknown_options": True}, add_help_option=False)
@click.argument("worker_args", nargs=-1, type=click.UNPROCESSED)
def worker(worker_args: tuple[str, ...]) -> None:
    """Serve the queues (same as `sandbox-worker`; see `sandbox worker --help`)."""
    os.execvp(sys.executable, [sys.executable, "-m", "worker.main", *worker_args])


STATUS_COLORS = {"passed": "green", "failed": "red", "error": "red", "timeout": "yellow", "not_run": "yellow",
                 "infra_error": "magenta"}


def format_result(result: JobResult) -> str:
    verdict = result.verdict.value
    lines = [click.style(f"{result.job_id}: {verdict.upper()}", fg=STATUS_COLORS.get(verdict), bold=True)
             + (f"  {result.error}" if result.error else "")]
    width = max([len(t.name) for t in result.tests] + [4])
    for test in result.tests:
        duration = f"{test.duration_s * 1000:7.1f} ms" if test.duration_s is not None else " " * 10
        status = click.style(f"{test.status.value:<8}", fg=STATUS_COLORS.get(test.status.value))
        lines.append(f"  {test.name:<{width}}  {status} {duration}  {test.message}")
    passed = sum(t.status.value == "passed" for t in result.tests)
    lines.append(f"  {passed}/{len(result.tests)} tests passed · wall {result.wall_time_s}s · cpu {result.cpu_time_s}s"
                 f" · peak {result.peak_memory_kib} KiB · runtime {result.runtime} · attempts {result.attempts}")
    for stream in ("stdout", "stderr"):
        text = getattr(result, stream)
        if text.strip():
            cut = " (truncated)" if getattr(result, f"{stream}_truncated") else ""
            lines.append(f"  --- {stream}{cut} ---\n" + "\n".join("  " + line for line in text.rstrip().splitlines()[-20:]))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
