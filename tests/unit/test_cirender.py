"""`sandbox trace` on the host: records are hostile data (bounded, validated, decoded; never eval'd, never
pickled) and checks are written only from decoded builtin values."""

from __future__ import annotations

import ast
import json
from typing import Any

import pytest

from sandbox.citrace import BlockError, TracedFunction, TraceRecords, read_block
from sandbox.cirender import NotRenderable, ProjectInfo, render_function, render_value
from sandbox.harness import tracer, values

INFO = ProjectInfo("demo", "1.0", "0" * 64, "MIT")
SOURCE = '''"""A module."""
import re
import os.path
from collections import OrderedDict
import requests
from .sibling import helper

LIMIT = 10
PATTERN = re.compile(r"[a-z]+")
STATE = []


class Thing:
    pass


def words(text, lower=True):
    """Return the lowercase words of text, at most LIMIT of them."""
    found = PATTERN.findall(text.lower() if lower else text)
    return found[:LIMIT]


def needs_class(x):
    """Wrap x in a Thing, which is a project class."""
    return Thing()


def needs_library(x):
    """Fetch x over the network with requests."""
    return requests.get(x)


def bad_default(x, y=os.path.sep):
    """Join x and y, where y defaults to something computed."""
    return x + y


def undocumented(x):
    return x


def relative(x):
    """Call a helper from a sibling module of the package."""
    return helper(x)
'''


def call(*args: Any, result: Any = None, raised: list[str] | None = None, impure: bool = False,
         items: list[Any] | None = None, end: str = "") -> dict[str, Any]:
    record: dict[str, Any] = {"args": [values.encode(a) for a in args], "varargs": [], "kwargs": [],
                              "test": "t.py::test"}
    if raised is not None:
        record.update(outcome="raised", exception=raised)
    elif items is not None:
        record.update(outcome="generator", items=[values.encode(i) for i in items], end=end)
    else:
        record.update(outcome="returned", value=values.encode(result))
    if impure:
        record["impure"] = ["time.time"]
    return record


def function(name: str, calls: list[dict[str, Any]], line: int | None = None) -> TracedFunction:
    if line is None:
        line = next(i for i, text in enumerate(SOURCE.splitlines(), 1) if text.startswith(f"def {name}("))
    return TracedFunction.model_validate({"module": "demo", "qualname": name, "file": "demo/__init__.py", "line": line,
                                          "generator": False, "attempts": len(calls), "calls": calls})


WORDS_CALLS = [call("Hello World", result=["hello", "world"]), call("a b", result=["a", "b"]),
               call("", result=[]), call("x y z", result=["x", "y", "z"])]


def test_a_self_contained_function_becomes_a_problem() -> None:
    rendered = render_function(INFO, function("words", WORDS_CALLS), SOURCE)
    assert rendered.candidate is not None, rendered.reason
    row = rendered.candidate.row
    # the imports and constants it needs, in file order, then its signature and docstring; not the rest
    assert row["prompt"].startswith("import re\n\nLIMIT = 10\n\nPATTERN = re.compile(")
    assert row["prompt"].endswith('    """Return the lowercase words of text, at most LIMIT of them."""\n')
    assert "requests" not in row["prompt"] and "class Thing" not in row["prompt"] and "STATE" not in row["prompt"]
    assert row["canonical_solution"].startswith("    found = PATTERN.findall(")
    assert row["prompt_trusted"] is False and row["ci"]["trusted_prompt"] is False
    assert row["task_id"] == "CI/demo-1.0/demo.words" and row["entry_point"] == "words"
    assert "assert same(candidate('Hello World'), ['hello', 'world'])" in row["test"]
    ast.parse(row["prompt"] + row["canonical_solution"] + "\n" + row["test"])


@pytest.mark.parametrize("name, reason", [
    ("needs_class", "needs the rest of the project"), ("needs_library", "non-stdlib"),
    ("bad_default", "not a literal"), ("undocumented", "no docstring"), ("relative", "from the project"),
])
def test_functions_that_are_not_standalone_are_dropped_with_a_reason(name: str, reason: str) -> None:
    rendered = render_function(INFO, function(name, [call(i, result=i) for i in ("a", "b", "c")]), SOURCE)
    assert rendered.candidate is None and reason in rendered.reason


def test_too_few_pure_consistent_calls() -> None:
    impure = [call("a", result=["a"], impure=True), call("b", result=["b"], impure=True), *WORDS_CALLS[:2]]
    rendered = render_function(INFO, function("words", impure), SOURCE)
    assert rendered.candidate is None and "fewer than 3" in rendered.reason and rendered.dropped_calls["impure"] == 2
    inconsistent = [*WORDS_CALLS[:2], call("q", result=["q"]), call("q", result=["r"])]
    rendered = render_function(INFO, function("words", inconsistent), SOURCE)
    assert rendered.candidate is None and rendered.dropped_calls["same arguments, different outcomes"] == 1


def test_exceptions_only_by_builtin_name_and_generators_only_when_finished() -> None:
    calls = [*WORDS_CALLS, call(None, raised=["EvilError", "ValueError", "Exception"]),
             call(1, raised=["__import__('os').system('x')", "object"])]
    check = render_function(INFO, function("words", calls), SOURCE).candidate.row["test"]  # type: ignore[union-attr]
    assert "assert raises(ValueError, None)" in check and "system" not in check and "EvilError" not in check
    gen = [call(1, items=[0], end="finished"), call(2, items=[0, 1], end="finished"), call(3, items=[0], end="abandoned"),
           call(4, items=[0, 1, 2, 3], end="finished")]
    rendered = render_function(INFO, function("words", gen), SOURCE)
    assert rendered.candidate is not None and rendered.dropped_calls["unfinished or unencodable outcome"] == 1
    assert "assert same(list(candidate(4)), [0, 1, 2, 3])" in rendered.candidate.row["test"]


def test_hostile_strings_stay_literals_in_the_check() -> None:
    evil = "'); import os; os.system('touch /tmp/x'); ('"
    calls = [call(evil, result=[evil]), call("\"\"\"", result=["\n"]), call("\udcff", result=["\x00"]),
             call("é\u202e", result=[])]
    check = render_function(INFO, function("words", calls), SOURCE).candidate.row["test"]  # type: ignore[union-attr]
    tree = ast.parse(check)
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert names <= {"candidate", "same", "raises", "list", "type", "len", "all", "zip", "a", "b", "x", "y", "k", "kind",
                     "args", "kwargs", "tuple", "dict", "float", "Exception", "True", "False"}, names
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_render_value_is_exact_and_refuses_the_rest() -> None:
    for value in [1, -2**70, 1.5, float("inf"), True, None, "x'\"", b"\x00", (1,), [1, (2, 3)], {"a": {1, 2}},
                  frozenset({1}), set(), bytearray(b"ab"), {}]:
        assert repr(eval(render_value(value))) == repr(value)  # noqa: S307 (our own rendering of our own values)
        assert type(eval(render_value(value))) is type(value)  # noqa: S307
    assert render_value(float("nan")) == "float('nan')"
    for value in [object(), complex(1, 2), values.Unsupported("x"), iter([])]:
        with pytest.raises(NotRenderable):
            render_value(value)


def block(body: Any) -> str:
    text = body if isinstance(body, str) else json.dumps(body)
    return "noise" + tracer.MARK.decode() + str(len(text)) + "\n" + text + "\n"


GOOD = {"functions": [], "sources": {}, "status": {"format": tracer.FORMAT}}


def test_read_block_takes_the_last_well_framed_block() -> None:
    records = read_block(block({**GOOD, "status": {"format": tracer.FORMAT, "tests": {"passed": 1}}}))
    assert isinstance(records, TraceRecords) and records.status.tests == {"passed": 1}
    forged_first = block({**GOOD, "status": {"format": tracer.FORMAT, "tests": {"passed": 99}}}) + block(GOOD)
    assert read_block(forged_first).status.tests == {}


@pytest.mark.parametrize("stdout, message", [
    ("no block at all", "printed no records"),
    (tracer.MARK.decode() + "x\n{}", "frame is malformed"),
    (tracer.MARK.decode() + "100\n{}", "cut short"),
    (block("[" * 100_000 + "]" * 100_000), "malformed"),
    (block({**GOOD, "status": {"format": "other/9"}}), "unknown records format"),
    (block({**GOOD, "extra": 1}), "malformed"),
    (block({**GOOD, "functions": [{"module": "os; rm", "qualname": "f", "file": "a.py", "line": 1, "generator": False,
                                   "attempts": 1, "calls": []}]}), "malformed"),
    (block({**GOOD, "functions": [{"module": "m", "qualname": "class", "file": "a.py", "line": 1, "generator": False,
                                   "attempts": 1, "calls": []}]}), "malformed"),
    (block({**GOOD, "functions": [{"module": "m", "qualname": "f", "file": "../../etc/x.py", "line": 1,
                                   "generator": False, "attempts": 1, "calls": []}]}), "malformed"),
    (block({**GOOD, "functions": [{"module": "m", "qualname": "f", "file": "a.py", "line": 1, "generator": False,
                                   "attempts": 1, "calls": [call(1, result=1)] * (tracer.MAX_CALLS + 1)}]}), "malformed"),
])
def test_read_block_refuses_what_no_honest_tracer_writes(stdout: str, message: str) -> None:
    with pytest.raises(BlockError, match=message):
        read_block(stdout)


def test_malformed_values_drop_the_call_not_the_host() -> None:
    bad = [{**call(1, result=1), "value": {"t": "int", "v": "zz"}}, {**call(2, result=2), "args": [{"t": "pickle"}]},
           {**call(3, result=3), "value": {"t": "ref", "v": 0}}]
    rendered = render_function(INFO, function("words", [*bad, *WORDS_CALLS[:2]]), SOURCE)
    assert rendered.candidate is None and rendered.dropped_calls["malformed value"] == 3
