"""`sandbox trace` through gVisor: projects' test suites traced in the sandbox, candidates replayed in fresh
sandboxes; a hostile project; and `sandbox filter --reruns` meeting set-order non-determinism."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from sandbox.citrace import REPLAY_ROUNDS, ProjectSpec, mine, read_block, replay_jobs, trace_job
from sandbox.cirender import Candidate
from sandbox.models import JobResult, JobSpec, Verdict
from sandbox.runner import Runner
from tests.integration.services import RedisServer, sandbox_cli, write_jsonl

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data" / "ci-trace"


def tar_of(directory: Path, top: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(directory.rglob("*")):
            if "__pycache__" in path.parts:
                continue
            archive.add(path, arcname=f"{top}/{path.relative_to(directory)}", recursive=False)
    return buffer.getvalue()


class Recording:
    """Runs jobs through the test's runner, keeping every result and the sandbox each ran in."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.results: list[JobResult] = []

    def __call__(self, jobs: list[JobSpec], reuse: bool) -> dict[str, JobResult]:
        results = self.runner.run(jobs)
        self.results += results
        return {r.job_id: r for r in results}


def mine_one(runner: Runner, archive: Path, tests: tuple[str, ...] = (), budget: float = 120) -> tuple[Any, Any, Recording]:
    name, _, version = archive.name.removesuffix(".tar.gz").rpartition("-")
    spec = ProjectSpec(archive=archive, project=name, version=version, license="MIT", tests=tests)
    recording = Recording(runner)
    rows, funnel = mine([spec], recording, budget)
    return rows, funnel, recording


@pytest.fixture(scope="module")
def fixture_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fixture") / "fixture-1.0.tar.gz"
    path.write_bytes(tar_of(DATA / "fixture_project", "fixture-1.0"))
    return path


@pytest.fixture(scope="module")
def fixture_mined(runner: Runner, fixture_archive: Path) -> tuple[Any, Any, Recording]:
    return mine_one(runner, fixture_archive)


def test_fixture_project_end_to_end(fixture_mined: tuple[Any, Any, Recording]) -> None:
    rows, funnel, recording = fixture_mined
    trace = recording.results[0]
    assert trace.verdict is Verdict.passed, (trace.error, trace.stderr[-2000:])
    records = read_block(trace.stdout)
    assert records.status.tests == {"passed": 13, "failed": 1}
    kept = {row["entry_point"]: row for row in rows}
    assert {"add", "parse_int", "sort_in_place", "count_up", "factorial", "slug", "hot"} <= set(kept)
    # dropped, each for its reason: impure, too few calls, needs a project class, no docstring, returns None
    assert not {"stamp", "roll", "first", "checked_sqrt", "_normalise", "nothing"} & set(kept)
    reasons = " | ".join(funnel.projects[0].reasons)
    assert "NegativeError" not in reasons and "needs the rest of the project" in reasons
    assert funnel.projects[0].calls["impure"] == 2
    slug = kept["slug"]
    assert slug["prompt"].startswith("import re\n") and "def _normalise(word)" in slug["prompt"]
    assert slug["ci"]["trusted_prompt"] is False and slug["ci"]["license"] == "MIT"
    assert "assert same(candidate('Hello World'), 'hello-world')" in slug["test"]
    assert "assert raises(ValueError, 'x')" in kept["parse_int"]["test"]
    assert "assert same(arg0_0, [1, 2, 3])" in kept["sort_in_place"]["test"]
    # the replay: every candidate ran in REPLAY_ROUNDS sandboxes of its own, none shared with another round
    replays = [r for r in recording.results if "~replay" in r.job_id]
    assert len(replays) == REPLAY_ROUNDS * funnel.total().stages["deterministic"]
    by_round = [{r.sandbox_id for r in replays if r.job_id.endswith(f"~replay{n}")} for n in range(REPLAY_ROUNDS)]
    assert not set.intersection(*by_round) and trace.sandbox_id not in set.union(*by_round)
    stages = funnel.total().stages
    assert stages["seen"] >= stages["traced"] >= stages["encodable"] >= stages["self-contained"] \
        >= stages["deterministic"] >= stages["kept"] == len(rows)


def test_every_emitted_problem_passes_its_check_in_two_fresh_sandboxes(
        runner: Runner, fixture_mined: tuple[Any, Any, Recording]) -> None:
    rows = fixture_mined[0]
    jobs = [job for row in rows for job in replay_jobs(Candidate(row, [], []))]
    results = runner.run([job.model_copy(update={"id": job.id + "-again"}) for job in jobs])
    assert [r.job_id for r in results if r.verdict is not Verdict.passed] == []
    assert len({r.sandbox_id for r in results}) >= 2


def test_inflection_sdist(runner: Runner) -> None:
    rows, funnel, recording = mine_one(runner, DATA / "inflection-0.5.1.tar.gz")
    trace = recording.results[0]
    assert trace.verdict is Verdict.passed, (trace.error, trace.stderr[-2000:])
    print("\n".join(funnel.lines()))
    names = {row["entry_point"] for row in rows}
    assert {"dasherize", "underscore", "parameterize"} <= names, names
    for row in rows:
        assert row["ci"]["sdist_sha256"] == "1a29730d366e996aaacffb2f1f1cb9593dc38e2ddd30c91250c6dde09ea9b417"


HOSTILE = {
    "evilpkg/__init__.py": '''"""A project whose every part attacks whoever traces it."""
import os, socket, sys

MARKER = "/tmp/citrace-marker"
try:
    open(MARKER, "w").write("import-time code ran here")  # the sandbox's own /tmp: read-only, or the scratch
except OSError:
    pass
try:
    socket.create_connection(("1.1.1.1", 80), timeout=2)
    REACHED = True
except OSError:
    REACHED = False


def double(x, note=open.__name__):
    """Return x doubled. {}""".format(__import__("os").system("touch /tmp/citrace-marker-doc"))
    return 2 * x


def triple(x):
    """Return x tripled (and try to end the tracer)."""
    sys.setprofile(None)
    return 3 * x


def forge(x):
    """Print a forged records block and flood the output."""
    forged = b"\\n@@citrace/1@@9\\n{forged}\\n"
    for fd in range(1, 40):  # stdout, and any descriptor it can find (the runner's saved stdout among them)
        try:
            os.write(fd, forged)
        except OSError:
            pass
    os.write(1, b"x" * (1 << 20))
    return x
''',
    "conftest.py": '''import os
open(os.path.join(os.environ.get("HOME", "/tmp"), "conftest-ran"), "w").write("conftest ran in the sandbox")
''',
    "tests/test_evil.py": '''import os, sys
import evilpkg


def test_double():
    assert evilpkg.double(1) == 2 and evilpkg.double(2) == 4 and evilpkg.double(5) == 10


def test_triple():
    assert evilpkg.triple(1) == 3
    assert evilpkg.triple(2) == 6


def test_forge():
    assert evilpkg.forge(3) == 3
    print("y" * (1 << 20))
    sys.stderr.write("z" * (1 << 20))


def test_network_was_closed():
    assert evilpkg.REACHED is False
''',
}


def test_hostile_project_runs_only_in_the_sandbox(runner: Runner, tmp_path: Path) -> None:
    project = tmp_path / "evil-1.0"
    for name, text in HOSTILE.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    archive = tmp_path / "evil-1.0.tar.gz"
    archive.write_bytes(tar_of(project, "evil-1.0"))
    for marker in ("/tmp/citrace-marker", "/tmp/citrace-marker-doc"):
        Path(marker).unlink(missing_ok=True)
    rows, funnel, recording = mine_one(runner, archive)
    trace = recording.results[0]
    records = read_block(trace.stdout)  # the forged block went to /dev/null: ours is the one on stdout
    assert records.status.tests.get("passed") == 4, records.status
    # nothing ran on the host: not the import-time code, the conftest, the docstring's expression
    assert not Path("/tmp/citrace-marker").exists() and not Path("/tmp/citrace-marker-doc").exists()
    names = {row["entry_point"]: row for row in rows}
    # triple() turned the profiler off inside its first call: the tracer lost it (and later calls), but the run
    # went on and the other functions' records survive
    assert "double" not in names  # its docstring is an expression, not a literal: no docstring, no problem
    assert funnel.projects[0].stages["seen"] >= 2
    # replayed candidates never executed the prompt in the driver: their jobs are program-only
    for result in recording.results[1:]:
        assert result.verdict in (Verdict.passed, Verdict.failed, Verdict.error)
    # and the next innocent job in the same runner is judged right
    [innocent] = runner.run([JobSpec(program="def f(x):\n    return x + 1\n",
                                     check="def check(candidate):\n    assert candidate(1) == 2\n",
                                     entry_point="f", policy="trace")])
    assert innocent.verdict is Verdict.passed


# -- the hash secret: re-runs in sandboxes of their own ------------------------------------------------
SET_ORDER = 24  # problems whose output depends on the order of a set of strings


@pytest.fixture
def redis_url(tmp_path: Path, image: str) -> Iterator[str]:
    server = RedisServer(tmp_path)
    server.start()
    yield server.url
    server.stop()


def test_filter_reruns_catch_string_set_order(redis_url: str, tmp_path: Path) -> None:
    """Each program returns which of two strings a set iterates first: fixed within one interpreter (its
    hash secret), a coin flip across interpreters. A rerun in the same warm sandbox can never flip it."""
    problems, samples = [], []
    for n in range(SET_ORDER):
        a, b = f"left{n}", f"right{n}"
        problems.append({"task_id": f"s/{n}", "prompt": f"def first{n}():\n", "entry_point": f"first{n}",
                         "canonical_solution": f"    return next(iter({{{a!r}, {b!r}}}))\n",
                         "test": f"def check(candidate):\n    assert candidate() == {a!r}\n"})
        samples.append({"task_id": f"s/{n}", "completion": f"    return next(iter({{{a!r}, {b!r}}}))\n"})
    candidates = write_jsonl(tmp_path / "candidates.jsonl", problems)
    samples_file = write_jsonl(tmp_path / "samples.jsonl", samples)
    done = sandbox_cli(redis_url, tmp_path, "filter", str(candidates), "--samples", str(samples_file),
                       "--out", "kept.jsonl", "--reruns", "2", "--local-workers", "1")
    assert done.returncode == 0, done.stderr
    kept = [json.loads(line)["task_id"] for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    # about half pass the first run (one sandbox, one secret); of those, each rerun round (a new secret) flips
    # about half: P(no passing problem flagged) is below 1e-4 with 24 problems
    assert "flaky" in done.stdout, done.stdout
    flaky = done.stdout.split("flaky", 1)[1]
    assert len(kept) < SET_ORDER and any(f"s/{n}" in flaky for n in range(SET_ORDER))


def test_trace_job_is_planned_as_a_check_job(fixture_archive: Path) -> None:
    spec = ProjectSpec(archive=fixture_archive, project="fixture", version="1.0")
    job = trace_job(spec, fixture_archive.read_bytes(), "0" * 64, 10)
    assert job.policy == "trace" and job.program is not None and "import tracer" in job.program
    assert job.check is not None and job.prompt == ""
