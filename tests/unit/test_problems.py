"""Problem-set readers, code extraction and filtered pass@k (pure logic, on the shared real data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox.errors import JobValidationError
from sandbox.problems import Sample, extract_code, load_problems, sample_job
from sandbox.scoring import Outcome, Tally, filtered_pass_at_k, pass_at_k
from sandbox.settings import REPO_ROOT

STDIO_DATA = REPO_ROOT / "tests" / "data" / "stdio"


def test_apps_file_reads_stdio_and_call_based_problems() -> None:
    problems = load_problems(STDIO_DATA / "apps_codechain_minival.jsonl")
    assert len(problems) == 62
    stdio = [p for p in problems.values() if p.stdio is not None]
    calls = [p for p in problems.values() if p.calls is not None]
    assert len(stdio) == 51 and len(calls) == 11
    assert all(p.stdio.comparator == "apps" and p.stdio.apps_wrap and p.header == "apps" for p in stdio)
    leet = problems["2401"]
    assert leet.calls is not None and leet.calls.fn_name == "wordPattern" and leet.calls.class_name == "Solution"
    assert leet.calls.cases[0].args == ('"abba"', '"dog cat cat dog"')  # passed exactly as APPS passes them
    assert sum(sum(p.canonical_passed or ()) for p in problems.values()) == 477
    competition = next(p for p in stdio if len(p.test_names) > 5)
    assert competition.public == 1 and competition.test_names[:2] == ["public 1", "hidden 1"]


def test_codecontests_file_keeps_its_public_private_and_generated_tests() -> None:
    [problem] = load_problems(STDIO_DATA / "codecontests_alphacodium_example.jsonl").values()
    assert problem.stdio is not None and len(problem.stdio.cases) == 201 and problem.public == 1
    assert problem.test_names[0] == "public 1" and problem.test_names[1] == "generated 1"
    assert len(problem.canonical_solutions) == 1


def test_livecodebench_file_reads_stdin_and_functional_problems() -> None:
    problems = load_problems(STDIO_DATA / "livecodebench_sandboxfusion.jsonl")
    functional = problems["2727"]
    assert functional.calls is not None and functional.calls.fn_name == "countSeniors"
    assert functional.calls.cases[0].args == (["7868190130M7522", "5303914400F9211", "9273338290F4010"],)
    assert problems["1873_A"].stdio is not None and problems["1873_A"].stdio.comparator == "livecodebench"


def test_a_problem_file_in_an_unknown_shape_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "problems.jsonl"
    good = json.loads((STDIO_DATA / "livecodebench_sandboxfusion.jsonl").read_text().splitlines()[0])
    bad.write_text(json.dumps(good) + "\n{not json\n" + json.dumps({**good, "input_output": {"inputs": 3}}) + "\n")
    with pytest.raises(JobValidationError) as caught:
        load_problems(bad)
    assert "problems.jsonl:2: line: Invalid JSON" in str(caught.value)
    assert "problems.jsonl:3: not a known problem" in str(caught.value)
    (tmp_path / "other.jsonl").write_text(json.dumps({"hello": 1}) + "\n")
    with pytest.raises(JobValidationError, match="cannot tell the problem set's format"):
        load_problems(tmp_path / "other.jsonl")


def test_samples_become_jobs_with_the_sources_program_conventions() -> None:
    problems = load_problems(STDIO_DATA / "apps_codechain_minival.jsonl")
    job = sample_job(3, Sample(task_id="5", completion="print(np.zeros(1))\n"), problems["5"], "stdio")
    assert job.program is not None and job.program.startswith("import sys\n") and "import numpy as np" in job.program
    plain = sample_job(4, Sample(task_id="5", completion="print(1)\n"), problems["5"], "stdio")
    assert plain.program is not None and "numpy" not in plain.program  # only when the program names np
    assert job.stdio is problems["5"].stdio  # shared, not copied: planned once per problem


@pytest.mark.parametrize("text, which, code", [
    ("Here:\n```python\nprint(1)\n```\nand\n```python\nprint(2)\n```\n", "first", "print(1)\n"),
    ("Here:\n```python\nprint(1)\n```\nand\n```python\nprint(2)\n```\n", "last", "print(2)\n"),
    ("print(3)\n", "last", "print(3)\n"),                   # no fence: the text itself
])
def test_code_is_taken_out_of_markdown(text: str, which: str, code: str) -> None:
    assert extract_code(text, which) == code  # type: ignore[arg-type]


def test_filtered_pass_at_k_counts_only_samples_that_pass_the_examples() -> None:
    tally = Tally()
    # p1: 4 samples, 2 pass the examples, 1 of them passes everything; p2: none passes the examples.
    for passed, public in [(True, True), (False, True), (False, False), (False, False)]:
        tally.add(Outcome("p1", passed), public)
    for _ in range(3):
        tally.add(Outcome("p2", False), False)
    score = tally.score([1, 2])
    assert score.table[0].value == pytest.approx((pass_at_k(4, 1, 1) + 0) / 2)
    assert score.filtered[0].value == pytest.approx((pass_at_k(2, 1, 1) + 0.0) / 2)
    assert score.filtered[1].value == pytest.approx((pass_at_k(2, 1, 2) + 0.0) / 2)
    assert filtered_pass_at_k({"a": (1, 1)}, 5).value == 1.0  # fewer than k left: all of them count
