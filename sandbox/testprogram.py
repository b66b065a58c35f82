"""What the test driver runs for a job's tests (pure: parses and rewrites, never executes).

* ``check(candidate)`` programs (HumanEval's form) run unchanged except that every ``assert``
  statement reports its outcome to the driver: each assert is one *test* in the results. Asserts
  directly in ``check`` (also in its loops and ``if``s) record a failure and let ``check`` go on,
  so one failing assert does not hide the next. Everywhere else (inside ``try`` or ``with``, in
  helper functions, at module level) an assert still raises as it always did, so tests that catch
  or rely on ``AssertionError`` keep their meaning; the driver only notes the outcome.
* Named snippets: each snippet is one test, run unchanged.

The test's namespace is the test's: of the program it sees only the entry point and the names
the job declares (``program_names``); a free name that is a standard module (or numpy, which the
Python image installs) is imported by the driver itself, never taken from the program; names the
trusted prompt defines are the prompt's. Any other free name is refused here, before anything
runs: the test must import or define it.
"""

from __future__ import annotations

import ast
import builtins
import symtable
import sys
from dataclasses import dataclass

from sandbox.errors import JobValidationError
from sandbox.harness.messages import FunctionTests, TestUnit

__all__ = ["FunctionPlan", "plan_check", "plan_snippets", "defined_names_of", "JUDGE_MODULES"]

_BUILTINS = frozenset(dir(builtins))
# Modules a test may use without importing them: the driver imports them itself (images/python installs
# python3-numpy; a unit test holds the two together). Never taken from the program.
JUDGE_MODULES = frozenset(name for name in sys.stdlib_module_names if not name.startswith("_")) | {"numpy"}
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


def plan_check(source: str, entry_point: str, prelude: str | None = None,
               declared: tuple[str, ...] = ()) -> FunctionPlan:
    """``prelude``: the trusted prompt the driver runs first; ``declared``: names (besides the entry point)
    the tests may take from the program."""
    module = _parse(source, "test program")
    check = next((node for node in module.body if isinstance(node, ast.FunctionDef) and node.name == "check"), None)
    if check is None or len(check.args.args) != 1:
        raise JobValidationError("the test program must define `def check(candidate): ...` with one parameter")
    instrument = _Instrument(check)
    instrumented = ast.fix_missing_locations(instrument.visit(module))
    if not instrument.names:
        raise JobValidationError("the test program contains no assert statement, so nothing would be tested")
    program, modules = _test_names([source], entry_point, prelude, declared, provided=set())
    tests = FunctionTests(form="check", entry_point=entry_point, prelude=prelude, program_names=program,
                          modules=modules, units=(TestUnit("check", ast.unparse(instrumented)),))
    return FunctionPlan(tuple(instrument.names), tests)


def plan_snippets(snippets: list[tuple[str, str]], entry_point: str, prelude: str | None = None,
                  declared: tuple[str, ...] = ()) -> FunctionPlan:
    for name, code in snippets:
        _parse(code, f"test {name!r}")
    # the driver gives each snippet the entry point as `candidate` too
    program, modules = _test_names([code for _, code in snippets], entry_point, prelude, declared, provided={"candidate"})
    tests = FunctionTests(form="snippets", entry_point=entry_point, prelude=prelude, program_names=program,
                          modules=modules, units=tuple(TestUnit(name, code) for name, code in snippets))
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


def _test_names(sources: list[str], entry_point: str, prelude: str | None, declared: tuple[str, ...],
                provided: set[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(names the driver takes from the program: the entry point, then the declared ones; modules the driver
    imports for the tests). A free name of the tests that is neither is refused: the tests must import it."""
    refused = sorted(name for name in declared if name in JUDGE_MODULES or name in _BUILTINS)
    if refused:
        kind = "module" if refused[0] in JUDGE_MODULES else "builtin"
        raise JobValidationError(f"`{refused[0]}` is a {kind}: the tests' own, never taken from the program "
                                 "(remove it from program_names)")
    from_prelude = defined_names_of(prelude) if prelude else set()
    program = (entry_point, *dict.fromkeys(name for name in declared if name != entry_point))
    modules: set[str] = set()
    unknown: set[str] = set()
    for source in sources:
        free = _free_names(symtable.symtable(source, "<tests>", "exec")) - _BUILTINS - provided - from_prelude - set(program)
        modules |= free & JUDGE_MODULES
        if not _star_imports(source):  # a star import (the driver's own) may define any name: nothing to refuse
            unknown |= free - JUDGE_MODULES
    if unknown:
        listed = ", ".join(f"`{name}`" for name in sorted(unknown)[:5])
        raise JobValidationError(f"the tests use {listed} without defining or importing "
                                 f"{'them' if len(unknown) > 1 else 'it'}: import it in the tests (the driver takes "
                                 "nothing from the program but `entry_point` and the job's `program_names`)")
    return program, tuple(sorted(modules))


def _free_names(table: symtable.SymbolTable) -> set[str]:
    """Global names the code reads but never binds at module level (nor through a ``global`` statement)."""
    referenced, bound = set(), set()
    stack = [table]
    while stack:
        scope = stack.pop()
        stack.extend(scope.get_children())
        module = scope.get_type() == "module"
        for symbol in scope.get_symbols():
            name = symbol.get_name()
            if module or symbol.is_global():
                if (module or symbol.is_declared_global()) and (symbol.is_assigned() or symbol.is_imported()):
                    bound.add(name)
                if symbol.is_referenced():
                    referenced.add(name)
    return referenced - bound


def _star_imports(source: str) -> bool:
    return any(isinstance(node, ast.ImportFrom) and any(alias.name == "*" for alias in node.names)
               for node in ast.walk(ast.parse(source)))


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
