"""Split a job's tests into independent tests, each in two versions (pure; parses, never executes).

* HumanEval-style ``check(candidate)`` programs: every statement of ``check`` that contains an
  ``assert`` becomes one test, together with the setup statements it needs (found by name
  dependency), so one failing assertion does not hide the others.
* Named snippets: each snippet is one test.

Each test gets a *phase 1* version, run beside the untrusted program, in which every assertion
is reduced to the calls it makes into the program (``assert f(x) == 3`` becomes ``f(x)``: the
expected value never enters the program's process), and a *phase 2* version, run later in a
process that never ran the program, with the calls answered from phase 1's record.
"""

from __future__ import annotations

import ast
import builtins
import copy
import symtable
from dataclasses import dataclass

from sandbox.errors import JobValidationError

TEST_FUNCTION = "__sandbox_test__"
_BUILTINS = frozenset(dir(builtins))


@dataclass(frozen=True)
class SplitTest:
    name: str
    phase1: str
    phase2: str


@dataclass(frozen=True)
class SplitTests:
    tests: tuple[SplitTest, ...]
    untrusted_names: tuple[str, ...]  # program names whose calls are recorded and replayed
    prelude_names: tuple[str, ...]    # names the trusted prelude defines for phase 2


def split_check_program(check_source: str, entry_point: str, prelude: str | None = None) -> SplitTests:
    module = _parse(check_source, "test program")
    check = next((node for node in module.body if isinstance(node, ast.FunctionDef) and node.name == "check"), None)
    if check is None or len(check.args.args) != 1:
        raise JobValidationError("the test program must define `def check(candidate): ...` with one parameter")
    param = check.args.args[0].arg
    prefix = [node for node in module.body if node is not check and not _calls_check(node)]
    body = [node for node in check.body if not _is_docstring(node)]
    units: list[tuple[list[ast.stmt], ast.stmt]] = []
    setup: list[ast.stmt] = []
    for statement in body:
        if _contains_assert(statement):
            units.append((list(setup), statement))
        else:
            setup.append(statement)
    if not units:
        raise JobValidationError("the check function contains no assert statement, so nothing would be tested")
    module_defined = _defined_names(prefix)
    untrusted, prelude_names = _program_names(check_source, module_defined, entry_point, prelude)
    calls = untrusted | {param}
    tests = []
    for index, (setup_before, statement) in enumerate(units, start=1):
        name = f"#{index} {_first_line(statement)}"
        phase1_stmt = _calls_only(statement, calls)
        phase1 = _function_source(prefix, _slice(setup_before, [phase1_stmt]), phase1_stmt, param)
        phase2 = _function_source(prefix, _slice(setup_before, [statement]), statement, param)
        tests.append(SplitTest(name, phase1, phase2))
    return SplitTests(tuple(tests), tuple(sorted(untrusted)), tuple(sorted(prelude_names)))


def split_snippets(snippets: list[tuple[str, str]], entry_point: str, prelude: str | None = None) -> SplitTests:
    tests, untrusted, prelude_names = [], {entry_point}, set()
    for name, code in snippets:
        module = _parse(code, f"test {name!r}")
        names, from_prelude = _program_names(code, set(), entry_point, prelude)
        untrusted |= names
        prelude_names |= from_prelude
        tests.append((name, module.body))
    result = []
    for name, body in tests:
        phase1 = [_calls_only(statement, untrusted) for statement in body]
        result.append(SplitTest(name, _function_source([], [], phase1, "candidate"),
                                _function_source([], [], body, "candidate")))
    return SplitTests(tuple(result), tuple(sorted(untrusted)), tuple(sorted(prelude_names)))


def defined_names_of(source: str) -> set[str]:
    """Top-level names a source defines, or an empty set when it does not parse."""
    try:
        return _defined_names(ast.parse(source).body)
    except SyntaxError:
        return set()


def _parse(source: str, what: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError as exc:
        raise JobValidationError(f"the {what} is not valid Python: {exc.msg} (line {exc.lineno})") from exc


def _program_names(source: str, module_defined: set[str], entry_point: str,
                   prelude: str | None) -> tuple[set[str], set[str]]:
    """Free names of the test code: the ones that can only come from the program under test."""
    free = _free_globals(symtable.symtable(source, "<tests>", "exec")) - module_defined - _BUILTINS
    from_prelude = (free & defined_names_of(prelude)) - {entry_point} if prelude else set()
    return (free - from_prelude) | {entry_point}, from_prelude


def _free_globals(table: symtable.SymbolTable) -> set[str]:
    names: set[str] = set()
    for child in table.get_children():
        names |= {s.get_name() for s in child.get_symbols() if s.is_global() and s.is_referenced()}
        names |= _free_globals(child)
    if table.get_type() == "module":
        names |= {s.get_name() for s in table.get_symbols() if s.is_referenced() and not s.is_assigned()
                  and not s.is_imported()}
    return names


def _calls_only(statement: ast.stmt, calls: set[str]) -> ast.stmt:
    """Copy of ``statement`` whose asserts only make the calls into the program they contained."""

    class StripAsserts(ast.NodeTransformer):
        def visit_Assert(self, node: ast.Assert) -> ast.stmt:
            expression = _call_part(node.test, calls)
            return ast.copy_location(ast.Expr(expression) if expression is not None else ast.Pass(), node)

    return ast.fix_missing_locations(StripAsserts().visit(copy.deepcopy(statement)))


def _call_part(test: ast.expr, calls: set[str]) -> ast.expr | None:
    """The part of an assertion that must run beside the program; None when it makes no calls."""
    if not _has_call(test, calls):
        return None
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return _call_part(test.operand, calls)
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        left, right = test.left, test.comparators[0]
        if _is_call(left, calls) and not _has_call(right, calls):
            return left
        if _is_call(right, calls) and not _has_call(left, calls):
            return right
    if _is_call(test, calls):
        return test
    return test  # a compound expression: evaluated whole, its outcome ignored


def _is_call(node: ast.expr, calls: set[str]) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in calls


def _has_call(node: ast.AST, calls: set[str]) -> bool:
    return any(isinstance(n, ast.Name) and n.id in calls for n in ast.walk(node))


def _slice(setup: list[ast.stmt], targets: list[ast.stmt]) -> list[ast.stmt]:
    """The setup statements the targets need: those defining a needed name, and side-effect-only ones."""
    needed = set().union(*(_used_names(t) for t in targets))
    kept: list[ast.stmt] = []
    for statement in reversed(setup):
        defined = _defined_names([statement])
        if not defined or defined & needed:
            kept.append(statement)
            needed |= _used_names(statement)
    return list(reversed(kept))


def _function_source(prefix: list[ast.stmt], setup: list[ast.stmt], body: ast.stmt | list[ast.stmt],
                     param: str) -> str:
    statements = setup + (body if isinstance(body, list) else [body])
    prefix_needed = _slice(prefix, statements)
    function = ast.FunctionDef(name=TEST_FUNCTION, args=ast.arguments(
        posonlyargs=[], args=[ast.arg(arg=param)], kwonlyargs=[], kw_defaults=[], defaults=[]),
        body=statements or [ast.Pass()], decorator_list=[], returns=None)
    module = ast.Module(body=[*prefix_needed, function], type_ignores=[])
    return ast.unparse(ast.fix_missing_locations(module))


def _defined_names(statements: list[ast.stmt]) -> set[str]:
    names: set[str] = set()
    for statement in statements:
        for node in ast.walk(statement):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                names.add(node.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


def _used_names(statement: ast.AST) -> set[str]:
    return {node.id for node in ast.walk(statement) if isinstance(node, ast.Name)}


def _contains_assert(statement: ast.stmt) -> bool:
    return any(isinstance(node, ast.Assert) for node in ast.walk(statement))


def _calls_check(statement: ast.stmt) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "check"
               for n in ast.walk(statement))


def _is_docstring(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) \
        and isinstance(statement.value.value, str)


def _first_line(statement: ast.stmt) -> str:
    text = ast.unparse(statement).splitlines()[0]
    return text if len(text) <= 80 else text[:77] + "..."
