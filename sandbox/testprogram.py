"""What the test driver runs for a job's tests (pure: parses and rewrites, never executes).

* ``check(candidate)`` programs (HumanEval's form) run unchanged except that every ``assert``
  statement reports its outcome to the driver: each assert is one *test* in the results. Asserts
  directly in ``check`` (also in its loops and ``if``s) record a failure and let ``check`` go on,
  so one failing assert does not hide the next. Everywhere else (inside ``try`` or ``with``, in
  helper functions, at module level) an assert still raises as it always did, so tests that catch
  or rely on ``AssertionError`` keep their meaning; the driver only notes the outcome.
* Named snippets: each snippet is one test, run unchanged.

Names the tests use but neither define nor get from builtins or the problem's trusted prompt
are the program's: the driver asks the sample's process for them.
"""

from __future__ import annotations

import ast
import builtins
import symtable
from dataclasses import dataclass

from sandbox.errors import JobValidationError
from sandbox.harness.messages import FunctionTests, TestUnit

__all__ = ["FunctionPlan", "plan_check", "plan_snippets", "defined_names_of"]

_BUILTINS = frozenset(dir(builtins))
_RECORDER = "__sandbox__"

_TEMPLATE = f"""
{_RECORDER}.begin(INDEX)
try:
    __sandbox_ok = not not (TEST)
except BaseException as __sandbox_exc:
    {_RECORDER}.raised(INDEX, __sandbox_exc, PROPAGATE)
else:
    if __sandbox_ok:
        {_RECORDER}.passed(INDEX)
    else:
        {_RECORDER}.failed(INDEX, MESSAGE, PROPAGATE)
"""


@dataclass(frozen=True)
class FunctionPlan:
    names: tuple[str, ...]           # one per test, in order: assert statements, or snippets
    tests: FunctionTests             # what the driver executes


def plan_check(source: str, entry_point: str, prelude: str | None = None) -> FunctionPlan:
    module = _parse(source, "test program")
    check = next((node for node in module.body if isinstance(node, ast.FunctionDef) and node.name == "check"), None)
    if check is None or len(check.args.args) != 1:
        raise JobValidationError("the test program must define `def check(candidate): ...` with one parameter")
    instrument = _Instrument(check)
    instrumented = ast.fix_missing_locations(instrument.visit(module))
    if not instrument.names:
        raise JobValidationError("the test program contains no assert statement, so nothing would be tested")
    names = _program_names(source, _defined_names(module.body), entry_point, prelude)
    tests = FunctionTests(form="check", entry_point=entry_point, prelude=prelude, program_names=names,
                          units=(TestUnit("check", ast.unparse(instrumented)),))
    return FunctionPlan(tuple(instrument.names), tests)


def plan_snippets(snippets: list[tuple[str, str]], entry_point: str, prelude: str | None = None) -> FunctionPlan:
    names: dict[str, None] = {}
    for name, code in snippets:
        _parse(code, f"test {name!r}")
        names.update(dict.fromkeys(_program_names(code, set(), entry_point, prelude)))
    tests = FunctionTests(form="snippets", entry_point=entry_point, prelude=prelude, program_names=tuple(names),
                          units=tuple(TestUnit(name, code) for name, code in snippets))
    return FunctionPlan(tuple(name for name, _ in snippets), tests)


def defined_names_of(source: str) -> set[str]:
    """Top-level names a source defines, or an empty set when it does not parse."""
    try:
        return _defined_names(ast.parse(source).body)
    except SyntaxError:
        return set()


class _Instrument(ast.NodeTransformer):
    """Numbers the asserts in source order and rewrites each to report to the driver."""

    def __init__(self, check: ast.FunctionDef) -> None:
        self.check = check
        self.names: list[str] = []
        self._direct = False  # inside check's own body, outside try/with/nested definitions

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        return self._scope(node, direct=node is self.check)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        return self._scope(node, direct=False)

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        return self._scope(node, direct=False)

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        return self._scope(node, direct=False)

    def visit_Try(self, node: ast.Try) -> ast.AST:
        return self._scope(node, direct=False)

    def visit_TryStar(self, node: ast.TryStar) -> ast.AST:
        return self._scope(node, direct=False)

    def visit_With(self, node: ast.With) -> ast.AST:  # a context manager may swallow the AssertionError
        return self._scope(node, direct=False)

    def visit_AsyncWith(self, node: ast.AsyncWith) -> ast.AST:
        return self._scope(node, direct=False)

    def _scope(self, node: ast.AST, direct: bool) -> ast.AST:
        outer, self._direct = self._direct, direct
        try:
            return self.generic_visit(node)
        finally:
            self._direct = outer

    def visit_Assert(self, node: ast.Assert) -> list[ast.stmt]:
        index = len(self.names)
        text = ast.unparse(node).splitlines()[0]
        self.names.append(f"#{index + 1} {text if len(text) <= 80 else text[:77] + '...'}")
        replacement = ast.parse(_TEMPLATE).body
        substitutes = {"INDEX": ast.Constant(index), "PROPAGATE": ast.Constant(not self._direct),
                       "TEST": node.test, "MESSAGE": node.msg if node.msg is not None else ast.Constant(None)}

        class Fill(ast.NodeTransformer):
            def visit_Name(self, name: ast.Name) -> ast.AST:
                return substitutes.get(name.id, name)

        statements = [Fill().visit(statement) for statement in replacement]
        for statement in statements:
            for child in ast.walk(statement):
                if hasattr(child, "lineno") or isinstance(child, (ast.stmt, ast.expr)):
                    ast.copy_location(child, node)
        return statements


def _parse(source: str, what: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError as exc:
        raise JobValidationError(f"the {what} is not valid Python: {exc.msg} (line {exc.lineno})") from exc


def _program_names(source: str, module_defined: set[str], entry_point: str, prelude: str | None) -> tuple[str, ...]:
    """Free names of the test code that only the program under test can provide (the entry point first)."""
    free = _free_globals(symtable.symtable(source, "<tests>", "exec")) - module_defined - _BUILTINS
    if prelude:
        free -= defined_names_of(prelude)
    return (entry_point, *sorted(free - {entry_point}))


def _free_globals(table: symtable.SymbolTable) -> set[str]:
    names: set[str] = set()
    for child in table.get_children():
        names |= {s.get_name() for s in child.get_symbols() if s.is_global() and s.is_referenced()}
        names |= _free_globals(child)
    if table.get_type() == "module":
        names |= {s.get_name() for s in table.get_symbols() if s.is_referenced() and not s.is_assigned()
                  and not s.is_imported()}
    return names


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
