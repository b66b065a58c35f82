"""Competitive-programming problem sets end to end: `sandbox evaluate` on APPS, CodeContests and
LiveCodeBench files through Redis, serving workers and gVisor, with raw and filtered pass@k.

Expected values are computed by hand from which samples pass (and which pass the public examples);
the shared developers' set (tests/data/stdio, real problems and reference solutions) must pass as
its sources' own harnesses said."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

from sandbox.settings import REPO_ROOT
from tests.integration.services import RedisServer, Worker, sandbox_cli, write_jsonl

pytestmark = pytest.mark.integration

STDIO_DATA = REPO_ROOT / "tests" / "data" / "stdio"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory, image: str) -> Iterator[str]:
    """A private Redis and two workers already serving it (as in production: evaluate starts none)."""
    directory = tmp_path_factory.mktemp("stdio-service")
    server = RedisServer(directory)
    server.start()
    workers = [Worker(server.url, directory / f"worker{i}.log") for i in range(2)]
    try:
        for worker in workers:
            worker.wait_ready(redis.Redis.from_url(server.url))
        yield server.url
    finally:
        for worker in workers:
            worker.close()
        server.stop()


def evaluate(redis_url: str, cwd: Path, *args: str) -> tuple[str, list[dict[str, Any]]]:
    """Run `sandbox evaluate`; its printed summary and its result rows (one per sample, in order)."""
    done = sandbox_cli(redis_url, cwd, "evaluate", *args, "--local-workers", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    results = re.search(r"results: (\S+)", done.stderr)
    assert results, done.stderr
    rows = [json.loads(line) for line in (cwd / results.group(1)).read_text().splitlines()]
    return done.stdout, rows


def reported(summary: str, label: str) -> float:
    """A value from evaluate's printed table, e.g. ``filtered pass@2``."""
    found = re.search(rf"^  {re.escape(label)}\s+([0-9.]+)", summary, re.M)
    assert found, f"{label} not in:\n{summary}"
    return float(found.group(1))


SUM_TWO = {  # APPS stdin/stdout: the first case stands for the statement's example
    "problem_id": 9001, "question": "Print the sum of two integers.", "difficulty": "introductory",
    "input_output": {"inputs": ["1 2\n", "5 7\n", "10 -3\n"], "outputs": ["3\n", "12\n", "7\n"]},
    "solutions": ["a, b = map(int, input().split())\nprint(a + b)\n"],
}
DOUBLE = {  # APPS call-based, LeetCode style; expected values wrapped in a list as APPS ships them
    "problem_id": 9002, "question": "Double it.", "difficulty": "interview", "starter_code": "class Solution:\n",
    "input_output": {"fn_name": "double", "inputs": [[2], [5]], "outputs": [[4], [10]]},
    "solutions": ["class Solution:\n    def double(self, x):\n        return 2 * x\n"],
}
SUM_SAMPLES = [
    # right, and guarded as judges run programs (a real process named __main__)
    "import sys\ndef main():\n    a, b = map(int, sys.stdin.readline().split())\n    print(a + b)\n"
    "if __name__ == '__main__':\n    main()\n",
    "print(3)\n",                                              # prints the example's answer it guessed
    "a, b = map(int, input().split())\nprint(a - b)\n",        # wrong from the first case
    "a, b = map(int, input().split())\nc = input()\nprint(a + b)\n",  # reads more input than given
    "a, b = map(int, input().split())\nprint(a + b)\nwhile a >= 10:\n    pass\n",  # right, but loops on case 3
]
DOUBLE_SAMPLES = [
    "class Solution:\n    def double(self, x):\n        return x * 2\n",
    "class Solution:\n    def double(self, x):\n        return x + 2\n",  # right on the example (2) only
]


def test_apps_file_raw_and_filtered_pass_at_k(redis_url: str, tmp_path: Path) -> None:
    problems = write_jsonl(tmp_path / "apps.jsonl", [SUM_TWO, DOUBLE])
    samples = write_jsonl(tmp_path / "samples.jsonl", [{"task_id": "9001", "completion": c} for c in SUM_SAMPLES]
                          + [{"task_id": "9002", "completion": c} for c in DOUBLE_SAMPLES])
    summary, rows = evaluate(redis_url, tmp_path, str(samples), "--problems", str(problems), "--k", "1,2")

    verdicts = [(row["verdict"], row.get("passed_public"), [t["status"] for t in row["tests"]]) for row in rows]
    assert verdicts == [
        ("passed", True, ["passed", "passed", "passed"]),
        ("failed", True, ["passed", "failed", "failed"]),
        ("failed", False, ["failed", "failed", "failed"]),
        ("failed", False, ["error", "error", "error"]),  # EOFError: a runtime error in every case
        ("timeout", True, ["passed", "passed", "timeout"]),
        ("passed", True, ["passed", "passed"]),
        ("failed", True, ["passed", "failed"]),
    ]
    assert [t["name"] for t in rows[0]["tests"]] == ["public 1", "hidden 1", "hidden 2"]
    assert rows[4]["time_limit"] == "cpu"  # a CPU limit is final at once, unless charged beyond what the host gave
    assert rows[4]["reruns"] == 0 or rows[4]["rerun_because"].startswith("charged"), rows[4]
    # raw: 9001 has n=5, c=1; 9002 has n=2, c=1
    assert reported(summary, "pass@1") == pytest.approx((1 / 5 + 1 / 2) / 2, abs=1e-4)
    assert reported(summary, "pass@2") == pytest.approx(
        ((1 - math.comb(4, 2) / math.comb(5, 2)) + 1) / 2, abs=1e-4)
    # filtered: only samples passing the public example count: 9001 keeps 3 (c=1), 9002 keeps 2 (c=1)
    assert reported(summary, "filtered pass@1") == pytest.approx((1 / 3 + 1 / 2) / 2, abs=1e-4)
    assert reported(summary, "filtered pass@2") == pytest.approx(((1 - 1 / 3) + 1) / 2, abs=1e-4)
    assert "1 sample(s) failed no test but ran out of time" in summary  # listed apart, as the Codex paper does


def test_codecontests_file_raw_and_filtered_pass_at_k(redis_url: str, tmp_path: Path) -> None:
    problem = {"name": "1000_A. Triple", "description": "Print 3n.",
               "public_tests": {"input": ["1\n"], "output": ["3\n"]},
               "private_tests": {"input": ["2\n", "7\n"], "output": ["6\n", "21\n"]},
               "generated_tests": {"input": ["100\n"], "output": ["300\n"], "is_valid_test": None}}
    problems = write_jsonl(tmp_path / "cc.jsonl", [problem])
    samples = write_jsonl(tmp_path / "samples.jsonl", [
        {"task_id": problem["name"], "completion": "print(3 * int(input()), ' ')\nprint()\n"},  # "3  \n\n": by lines
        {"task_id": problem["name"], "completion": "print(3)\n"},
        {"task_id": problem["name"], "completion": "import sys\nsys.exit(int(input()))\n"},  # exits non-zero: runtime errors
        {"task_id": problem["name"], "completion": "```python\nprint(int(input()) * 3)\n```"},  # markdown: run as is
    ])
    done = sandbox_cli(redis_url, tmp_path, "evaluate", str(samples), "--problems", str(problems), "--k", "1,2",
                       "--json", "--local-workers", "0")
    assert done.returncode == 0, done.stderr
    table = json.loads(done.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()]
    # markdown run as is does not compile: the program's own error (no case runs)
    assert [row["verdict"] for row in rows] == ["passed", "failed", "failed", "error"]
    assert [t["status"] for t in rows[2]["tests"]] == ["error"] * 4
    assert [row["passed_public"] for row in rows] == [True, True, False, False]
    assert [t["name"] for t in rows[0]["tests"]] == ["public 1", "private 1", "private 2", "generated 1"]
    assert table["pass@1"] == pytest.approx(1 / 4) and table["pass@2"] == pytest.approx(1 - math.comb(3, 2) / 6)
    assert table["filtered_pass@1"] == pytest.approx(1 / 2) and table["filtered_pass@2"] == pytest.approx(1.0)

    # the model's answer as markdown passes once its code is extracted
    extracted = sandbox_cli(redis_url, tmp_path, "evaluate", str(samples), "--problems", str(problems), "--k", "1",
                            "--json", "--extract-code", "first", "--out", "extracted.jsonl", "--local-workers", "0")
    assert extracted.returncode == 0, extracted.stderr
    rows = [json.loads(line) for line in (tmp_path / "extracted.jsonl").read_text().splitlines()]
    assert [row["verdict"] for row in rows] == ["passed", "failed", "failed", "passed"]


def test_filter_keeps_stdio_problems_some_sample_solves(redis_url: str, tmp_path: Path) -> None:
    """Codex-S filtering on a competitive-programming set: solved problems kept with their passing
    programs, unsolved ones dropped."""
    unsolved = {**SUM_TWO, "problem_id": 9003}
    candidates = write_jsonl(tmp_path / "candidates.jsonl", [SUM_TWO, DOUBLE, unsolved])
    rows = [{"task_id": "9001", "completion": c} for c in SUM_SAMPLES[:3]]
    rows += [{"task_id": "9002", "completion": c} for c in DOUBLE_SAMPLES]
    rows += [{"task_id": "9003", "completion": c} for c in SUM_SAMPLES[1:4]]  # none of these is right
    samples = write_jsonl(tmp_path / "samples.jsonl", rows)
    done = sandbox_cli(redis_url, tmp_path, "filter", str(candidates), "--samples", str(samples), "--out", "kept.jsonl",
                       "--solutions", "solutions.jsonl", "--local-workers", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    kept = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert [p["problem_id"] for p in kept] == [9001, 9002]
    assert kept[0]["input_output"] == SUM_TWO["input_output"]  # fields carried as given
    solutions = [json.loads(line) for line in (tmp_path / "solutions.jsonl").read_text().splitlines()]
    assert solutions == [{"task_id": "9001", "completion": SUM_SAMPLES[0]},
                         {"task_id": "9002", "completion": DOUBLE_SAMPLES[0]}]
    assert "dropped 1 unsolved" in done.stdout and "9003" in done.stdout


def test_shared_apps_reference_solutions_pass(redis_url: str, tmp_path: Path) -> None:
    """One solution the APPS harness accepted for each of the 62 real problems (the full set of 488
    listed solutions: `sandbox evaluate --canonical --problems tests/data/stdio/apps_codechain_minival.jsonl`)."""
    samples = []
    for line in (STDIO_DATA / "apps_codechain_minival.jsonl").read_text().splitlines():
        problem = json.loads(line)
        accepted = problem["reference_check"]["solution_passed"].index(True)
        samples.append({"task_id": str(problem["problem_id"]), "completion": problem["solutions"][accepted]})
    samples_file = write_jsonl(tmp_path / "apps_reference.jsonl", samples)
    summary, rows = evaluate(redis_url, tmp_path, str(samples_file), "--problems",
                             str(STDIO_DATA / "apps_codechain_minival.jsonl"), "--k", "1")
    failed = [(row["task_id"], row["result"]) for row in rows if not row["passed"]]
    assert not failed and len(rows) == 62
    assert reported(summary, "pass@1") == 1.0


@pytest.mark.parametrize("problem_file", ["codecontests_alphacodium_example.jsonl", "livecodebench_sandboxfusion.jsonl"])
def test_shared_model_solutions_their_harness_accepted_pass(redis_url: str, tmp_path: Path, problem_file: str) -> None:
    summary, rows = evaluate(redis_url, tmp_path, "--canonical", "--problems", str(STDIO_DATA / problem_file),
                             "--k", "1")
    assert rows and all(row["passed"] for row in rows), [(r["task_id"], r["result"]) for r in rows]
    assert reported(summary, "pass@1") == 1.0
    if problem_file.startswith("codecontests"):
        assert len(rows[0]["tests"]) == 201  # 1 public, 200 generated: every case run
