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


TACO_COLUMNS = ("question", "solutions", "starter_code", "input_output", "difficulty", "raw_tags", "name", "source",
                "tags", "skill_types", "url", "Expected Auxiliary Space", "time_limit", "date", "picture_num",
                "memory_limit", "Expected Time Complexity")  # BAAI/TACO's columns: no problem_id, no id


def taco_row(apps_row: dict[str, object], **fields: object) -> dict[str, object]:
    """A real APPS row of the developers' set in TACO's published shape (its columns; HF stores input_output and
    solutions as JSON text)."""
    row = {"question": apps_row["question"], "solutions": json.dumps(apps_row["solutions"]),
           "starter_code": apps_row["starter_code"], "input_output": json.dumps(apps_row["input_output"]),
           "difficulty": "MEDIUM", "raw_tags": "[]", "name": None, "source": "codeforces", "tags": "[]",
           "skill_types": "[]", "url": apps_row["url"], "Expected Auxiliary Space": None, "time_limit": "1 second",
           "date": "2020-10-04", "picture_num": "0", "memory_limit": "256 megabytes", "Expected Time Complexity": None}
    assert set(row) == set(TACO_COLUMNS)
    return {**row, **fields}


def test_taco_files_as_published_are_read_with_ids_from_their_rows_or_lines(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (STDIO_DATA / "apps_codechain_minival.jsonl").read_text().splitlines()[:4]]
    taco = tmp_path / "taco.jsonl"
    taco.write_text("\n".join(json.dumps(row) for row in [
        taco_row(rows[0]),                                   # no id at all: named by its line, 1
        taco_row(rows[1], task_id="taco/17"),                # an id the file carries is used
        taco_row(rows[2], name="Bargain"),                   # TACO's own `name`, when filled
        taco_row(rows[3], name="  "),                        # blank: the line number again, 4
    ]) + "\n")
    problems = load_problems(taco)   # before: every line refused, "task_id: String should have at least 1 character"
    assert list(problems) == ["1", "taco/17", "Bargain", "4"]
    first = problems["1"]
    expected = rows[0]["input_output"]
    assert isinstance(expected, dict)
    assert first.stdio is not None and len(first.stdio.cases) == len(expected["inputs"])
    assert first.stdio.comparator == "apps" and first.canonical_solutions == tuple(rows[0]["solutions"])
    sample = Sample(task_id="taco/17", completion="print(1)\n")
    assert sample_job(5, sample, problems["taco/17"], "stdio").metadata["task_id"] == "taco/17"


def test_apps_ids_come_from_the_first_field_that_has_one(tmp_path: Path) -> None:
    row = json.loads((STDIO_DATA / "apps_codechain_minival.jsonl").read_text().splitlines()[0])
    path = tmp_path / "apps.jsonl"
    path.write_text(json.dumps({**row, "task_id": "APPS/5"}) + "\n" + json.dumps({**row, "problem_id": 7}) + "\n")
    assert list(load_problems(path)) == ["APPS/5", "7"]   # task_id first; before, task_id was ignored
