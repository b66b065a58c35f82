"""Tracing a project's own test suite, inside the sandbox (stdlib only; `sandbox trace`).

Runs in a sample's process, under the sample's uid, with the project's code: everything here is at the
mercy of that code, so what it writes is only ever a *claim* the host decodes as hostile data, and no
expected value is trusted from it (the host replays every candidate in fresh sandboxes).

* :func:`unpack` takes the project's archive (bytes) apart into the working directory: regular files
  and directories only, no absolute paths or ``..``, bounded in count and size.
* :class:`Tracer` (``sys.setprofile``) records calls of the project's module-level functions (not its
  tests, methods, nested functions or class bodies): the arguments at call time in the exact-type
  encoding of ``values.py`` (an iterator argument is refused, never consumed), the outcome (returned
  value, the builtin class of a raised exception, a generator's items and how it ended), arguments the
  call mutated, and C calls into I/O, time, randomness or the OS (impure). Attempts are capped per
  function, records per function and in total, so a hot function cannot make tracing cost much more
  than the untraced run.
* :class:`Plugin` (pytest) traces only test bodies (``pytest_runtest_call``) and keeps a test's calls
  only if the test passed.
* :func:`main` is what the trace job's program calls: unpack, run the tests, print one framed block.
"""

from __future__ import annotations

import collections
import io
import json
import opcode
import os
import sys
import tarfile
import threading
import time
import types

if __package__:  # on the host, as sandbox.harness.tracer (its constants frame the records)
    from . import values
else:  # in the sandbox, beside the other harness modules
    import values

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FORMAT = "citrace/1"
MARK = b"\n@@citrace/1@@"          # the block: MARK, its length in decimal, a newline, then the JSON
MAX_ATTEMPTS = 500                 # calls of one function looked at, after which it is ignored
MAX_CALLS = 64                     # distinct calls kept per function
MAX_CALL_BYTES = 10 << 10          # one encoded call
MAX_ITEMS = 100                    # generator items recorded per call
MAX_TOTAL_BYTES = 4 << 20          # all calls together (the block must fit the policy's output_max_kib)
MAX_SOURCE_BYTES = 512 << 10       # one module's source text sent back
MAX_SOURCES_BYTES = 2 << 20
MAX_FUNCTIONS = 2000
# archives
MAX_MEMBERS = 5000
MAX_UNPACKED_BYTES = 64 << 20

CO_VARARGS, CO_VARKEYWORDS, CO_GENERATOR = 0x04, 0x08, 0x20
CO_COROUTINE, CO_ITERABLE_COROUTINE, CO_ASYNC_GENERATOR = 0x80, 0x100, 0x200
RETURNS = {opcode.opmap[name] for name in ("RETURN_VALUE", "RETURN_CONST") if name in opcode.opmap}
YIELD = opcode.opmap["YIELD_VALUE"]
RESUME = opcode.opmap.get("RESUME", -1)
TEST_DIRS = {"tests", "test", "testing", "docs", "doc", "examples", "benchmarks", "bench"}
# C functions whose calls make a traced call impure, by module (None: every function of it)
IMPURE: dict[str, Any] = {
    "builtins": {"open", "print", "input", "breakpoint", "exec", "eval", "compile", "__import__", "globals", "locals",
                 "vars", "id"},
    "posix": None, "nt": None, "os": None, "time": None, "_random": None, "random": None, "_socket": None,
    "socket": None, "select": None, "_io": None, "io": None, "_posixsubprocess": None, "subprocess": None,
    "signal": None, "_signal": None, "datetime": {"now", "utcnow", "today", "fromtimestamp", "utcfromtimestamp"},
    "_datetime": {"now", "utcnow", "today", "fromtimestamp", "utcfromtimestamp"}, "_thread": None, "threading": None,
    "gc": None, "sys": {"exit", "settrace", "setprofile", "_getframe", "getrefcount", "setrecursionlimit"},
    "_locale": None, "locale": None, "fcntl": None, "mmap": None, "resource": None, "_sha256": None,
}


def is_test_file(relative: str) -> bool:
    parts = relative.split("/")
    name = parts[-1]
    return (any(part in TEST_DIRS for part in parts[:-1]) or name in ("conftest.py", "tests.py", "test.py", "setup.py")
            or name.startswith("test_") or name.endswith("_test.py"))


class Function:
    __slots__ = ("code", "module", "qualname", "file", "line", "attempts", "calls", "keys", "refused", "generator")

    def __init__(self, code: types.CodeType, module: str, file: str) -> None:
        self.code, self.module, self.file = code, module, file
        self.qualname = code.co_name
        self.line = code.co_firstlineno
        self.attempts = 0
        self.calls: list[dict[str, Any]] = []
        self.keys: set[str] = set()
        self.refused: collections.Counter[str] = collections.Counter()
        self.generator = bool(code.co_flags & CO_GENERATOR)

    def to_json(self) -> dict[str, Any]:
        return {"module": self.module, "qualname": self.qualname, "file": self.file, "line": self.line,
                "generator": self.generator, "attempts": self.attempts, "calls": self.calls,
                "refused": dict(self.refused.most_common(20))}


class Call:
    """One call in flight (or a generator between its items)."""

    __slots__ = ("function", "record", "key", "mutable", "items", "closing", "exception", "test", "impure")

    def __init__(self, function: Function, record: dict[str, Any], key: str, mutable: list[Any], test: str) -> None:
        self.function, self.record, self.key, self.mutable, self.test = function, record, key, mutable, test
        self.items: list[Any] = []
        self.closing = False
        self.exception: Any = None
        self.impure: list[str] = []


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=False)


class Tracer:
    """Records calls of a project's module-level functions (see the module's docstring)."""

    def __init__(self, roots: list[str], project: str) -> None:
        self.roots = tuple(os.path.realpath(root) + os.sep for root in roots)
        self.project = os.path.realpath(project) + os.sep
        self.codes: dict[types.CodeType, Function | None] = {}
        self.functions: list[Function] = []
        self.stacks: dict[int, list[Call]] = {}          # thread -> traced calls in flight, innermost last
        self.generators: dict[types.FrameType, Call] = {}
        self.pending: list[Call] = []                    # finished calls of the running test
        self.test = ""
        self.total_bytes = 0
        self.full = False                                # the total cap was reached: nothing more is kept
        self.active = False
        self.tracing_depth: dict[int, int] = {}
        self.faults = 0

    # -- switching ---------------------------------------------------------------------------------
    def start(self, test: str) -> None:
        self.test, self.pending, self.active = test, [], True
        threading.setprofile(self.hook)
        sys.setprofile(self.hook)

    def stop(self) -> None:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
        self.active = False
        for frame, call in list(self.generators.items()):  # generators the test never finished
            self.generators.pop(frame, None)
            self._end_generator(call, "abandoned")
        self.stacks.clear()
        if sys.gettrace() is self._global_trace:
            sys.settrace(None)
        self.tracing_depth.clear()

    def commit(self, passed: bool) -> None:
        """The running test ended: keep its calls if it passed."""
        pending, self.pending = self.pending, []
        if not passed:
            return
        for call in pending:
            self._keep(call)

    # -- the hook ----------------------------------------------------------------------------------
    def hook(self, frame: types.FrameType, event: str, arg: Any) -> None:
        try:
            if event == "c_call":
                stack = self.stacks.get(threading.get_ident())
                if stack:
                    self._c_call(stack, arg)
            elif event == "call":
                self._call(frame)
            elif event == "return":
                stack = self.stacks.get(threading.get_ident())
                if stack and stack[-1].record.get("frame") is frame:
                    self._return(stack, frame, arg)
        except Exception:  # the tracer never fails the project's tests
            self.faults += 1

    def _classify(self, frame: types.FrameType) -> Function | None:
        code = frame.f_code
        filename = code.co_filename
        if not isinstance(filename, str) or not filename.endswith(".py"):
            return None
        path = os.path.realpath(filename)
        if not path.startswith(self.roots) or not path.startswith(self.project):
            return None
        relative = path[len(self.project):].replace(os.sep, "/")
        if is_test_file(relative):
            return None
        qualname = getattr(code, "co_qualname", code.co_name)
        if "." in qualname or "<" in qualname or code.co_flags & (CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR):
            return None
        candidate = frame.f_globals.get(code.co_name) if type(frame.f_globals) is dict else None
        if type(candidate) is not types.FunctionType or candidate.__code__ is not code:
            return None  # a class body, a decorated or replaced function
        if len(self.functions) >= MAX_FUNCTIONS:
            return None
        module = relative[:-3].replace("/", ".")
        module = module[:-len(".__init__")] if module.endswith(".__init__") else module
        function = Function(code, module, relative)
        self.functions.append(function)
        return function

    def _call(self, frame: types.FrameType) -> None:
        code = frame.f_code
        if code in self.codes:
            function = self.codes[code]
        else:
            function = self.codes[code] = self._classify(frame)
        if function is None:
            return
        thread = threading.get_ident()
        if function.generator:
            known = self.generators.get(frame)
            if known is not None:  # resumed: by next()/send() at RESUME, by throw()/close() elsewhere
                if code.co_code[frame.f_lasti] != RESUME:
                    known.closing = True
                self.stacks.setdefault(thread, []).append(known)
                self._trace_exceptions(frame, thread)
                return
        if function.attempts >= MAX_ATTEMPTS or self.full:
            return
        function.attempts += 1
        record, key, mutable = self._snapshot(function, frame)
        if record is None:
            return
        call = Call(function, record, key, mutable, self.test)
        record["frame"] = frame
        if function.generator:
            self.generators[frame] = call
        self.stacks.setdefault(thread, []).append(call)
        self._trace_exceptions(frame, thread)

    def _snapshot(self, function: Function, frame: types.FrameType) -> tuple[Any, str, list[Any]]:
        code = frame.f_code
        local = frame.f_locals
        count = code.co_argcount
        names = code.co_varnames
        refused: list[str] = []
        mutable: list[Any] = []
        positional = []
        for index in range(count):
            value = local[names[index]]
            positional.append(values.encode(value, refused=refused, drain=False))
            mutable.append(value if type(value) in values.MUTABLE_TYPES else None)
        keywords = []
        for name in names[count:count + code.co_kwonlyargcount]:
            keywords.append([name, values.encode(local[name], refused=refused, drain=False)])
        position = count + code.co_kwonlyargcount
        varargs: list[Any] = []
        if code.co_flags & CO_VARARGS:
            varargs = [values.encode(item, refused=refused, drain=False) for item in local[names[position]]]
            position += 1
        if code.co_flags & CO_VARKEYWORDS:
            extra = local[names[position]]
            keywords += [[str(k), values.encode(v, refused=refused, drain=False)] for k, v in extra.items()]
        if refused:
            function.refused["argument: " + refused[0][:80]] += 1
            return None, "", []
        record = {"args": positional, "varargs": varargs, "kwargs": keywords}
        key = _dumps(record)
        if len(key) > MAX_CALL_BYTES:
            function.refused["arguments too large"] += 1
            return None, "", []
        if key in function.keys:
            function.refused["repeated arguments"] += 1
            # still traced: a repeat with another outcome shows state or non-determinism
        snapshot = [(_dumps(values.encode(v, drain=False)) if v is not None else None) for v in mutable]
        return record, key, [(v, s) for v, s in zip(mutable, snapshot)]

    def _trace_exceptions(self, frame: types.FrameType, thread: int) -> None:
        """Which exception a call raised is not visible to a profiler: have this frame's exceptions traced
        (``frame.f_trace``, lines off) while it runs, as debuggers do."""
        frame.f_trace_lines = False
        frame.f_trace = self._frame_trace
        depth = self.tracing_depth.get(thread, 0)
        if depth == 0 and sys.gettrace() is None:
            sys.settrace(self._global_trace)
        self.tracing_depth[thread] = depth + 1

    def _global_trace(self, frame: types.FrameType, event: str, arg: Any) -> None:
        return None  # no other frame is traced

    def _frame_trace(self, frame: types.FrameType, event: str, arg: Any) -> Any:
        if event == "exception":
            stack = self.stacks.get(threading.get_ident())
            if stack and stack[-1].record.get("frame") is frame:
                stack[-1].exception = arg[0]
        return self._frame_trace

    def _untrace(self, thread: int) -> None:
        depth = self.tracing_depth.get(thread, 1) - 1
        self.tracing_depth[thread] = depth
        if depth <= 0 and sys.gettrace() is self._global_trace:
            sys.settrace(None)

    def _return(self, stack: list[Call], frame: types.FrameType, arg: Any) -> None:
        call = stack.pop()
        self._untrace(threading.get_ident())
        op = frame.f_code.co_code[frame.f_lasti] if frame.f_lasti >= 0 else -1
        if call.function.generator:
            if op == YIELD and not call.closing:
                call.exception = None
                if len(call.items) >= MAX_ITEMS:
                    call.record["truncated"] = True
                else:
                    call.items.append(values.encode(arg, drain=False))
                return
            self.generators.pop(frame, None)
            if call.closing:
                self._end_generator(call, "abandoned")
            elif op in RETURNS:
                self._end_generator(call, "finished")
            else:
                self._end_generator(call, "raised")
            return
        record = call.record
        if op in RETURNS:
            record["outcome"] = "returned"
            record["value"] = values.encode(arg, drain=False)
        else:
            record["outcome"] = "raised"
            record["exception"] = _exception_names(call.exception)
        self._mutations(call)
        self._finish(call)

    def _end_generator(self, call: Call, end: str) -> None:
        record = call.record
        record["outcome"] = "generator"
        record["items"] = call.items
        record["end"] = end
        if end == "raised":
            record["exception"] = _exception_names(call.exception)
        self._mutations(call)
        self._finish(call)

    def _mutations(self, call: Call) -> None:
        changed = []
        for index, (value, before) in enumerate(call.mutable):
            if value is not None:
                now = values.encode(value, drain=False)
                if _dumps(now) != before:
                    changed.append([index, now])
        if changed:
            call.record["mutated"] = changed

    def _finish(self, call: Call) -> None:
        call.record.pop("frame", None)
        if call.impure:
            call.record["impure"] = call.impure
        call.record["test"] = call.test[:300]
        if call.test == self.test and self.active:
            self.pending.append(call)

    def _c_call(self, stack: list[Call], function: Any) -> None:
        module = getattr(function, "__module__", None)
        owner = getattr(function, "__self__", None)
        if module is None and owner is not None:
            module = owner.__module__ if isinstance(owner, type) else type(owner).__module__
        name = getattr(function, "__name__", "?")
        if not isinstance(module, str) or module not in IMPURE:
            return
        names = IMPURE[module]
        if names is not None and name not in names:
            return
        label = f"{module}.{name}"[:80]
        for call in stack:
            if len(call.impure) < 4 and label not in call.impure:
                call.impure.append(label)

    def _keep(self, call: Call) -> None:
        function = call.function
        record = call.record
        text = _dumps(record)
        if len(text) > MAX_CALL_BYTES:
            function.refused["outcome too large"] += 1
            return
        if call.key in function.keys and "impure" not in record:
            # the same arguments again: kept only if the outcome differs (the host drops such functions' calls)
            if any(_same_outcome(record, kept) for kept in function.calls if _dumps(_args(kept)) == call.key):
                return
        if len(function.calls) >= MAX_CALLS:
            function.refused["enough calls kept"] += 1
            return
        if self.total_bytes + len(text) > MAX_TOTAL_BYTES:
            self.full = True
            return
        self.total_bytes += len(text)
        function.keys.add(call.key)
        function.calls.append(record)

    # -- the report --------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        functions = [f.to_json() for f in self.functions if f.attempts]
        sources: dict[str, str] = {}
        size = 0
        for function in self.functions:
            if not function.calls or function.file in sources:
                continue
            try:
                with open(os.path.join(self.project, function.file), encoding="utf-8") as handle:
                    text = handle.read(MAX_SOURCE_BYTES + 1)
            except (OSError, UnicodeDecodeError):
                continue
            if len(text) > MAX_SOURCE_BYTES or size + len(text) > MAX_SOURCES_BYTES:
                continue
            size += len(text)
            sources[function.file] = text
        return {"functions": functions, "sources": sources, "full": self.full, "faults": self.faults}


def _args(record: dict[str, Any]) -> dict[str, Any]:
    return {"args": record["args"], "varargs": record["varargs"], "kwargs": record["kwargs"]}


def _same_outcome(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("outcome", "value", "exception", "items", "end", "mutated")
    return all(_dumps(a.get(k)) == _dumps(b.get(k)) for k in keys)


def _exception_names(kind: Any) -> list[str]:
    """The exception's own name, then its builtin ancestors (the host keeps only known builtin names)."""
    if not isinstance(kind, type):
        return []
    try:
        return [kind.__qualname__[:100]] + [k.__name__ for k in kind.__mro__ if k.__module__ == "builtins"][:20]
    except Exception:
        return []


# -- pytest ---------------------------------------------------------------------------------------
class Plugin:
    """Traces test bodies only; keeps a test's calls only if the test passed; stops near the CPU budget."""

    def __init__(self, tracer: Tracer, cpu_budget_s: float) -> None:
        self.tracer, self.cpu_budget_s = tracer, cpu_budget_s
        self.counts: collections.Counter[str] = collections.Counter()
        self.stopped = ""
        self.tracing = True

    def pytest_runtest_call(self, item: Any) -> Any:  # hookwrapper, set up in main (pytest's marker API)
        traced = self.tracing
        if traced:
            self.tracer.start(str(getattr(item, "nodeid", "?")))
        try:
            yield
        finally:
            if traced:
                self.tracer.stop()

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call":
            self.counts[str(report.outcome)] += 1
            self.tracer.commit(report.outcome == "passed")
        elif report.outcome == "failed":
            self.counts[f"{report.when} failed"] += 1

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        if self.tracing and time.process_time() > self.cpu_budget_s:
            self.tracing = False  # the rest of the suite runs untraced (and is stopped below)
            self.stopped = f"tracing stopped after {self.cpu_budget_s:g} s of CPU"

    def pytest_runtest_protocol(self, item: Any, nextitem: Any) -> Any:
        if time.process_time() > self.cpu_budget_s * 1.2:
            item.session.shouldstop = self.stopped or "CPU budget"
        return None


def _hookwrapper(plugin: Plugin) -> Plugin:
    import pytest  # the image's (Debian's python3-pytest)

    function = Plugin.__dict__["pytest_runtest_call"]
    if not hasattr(function, "pytest_impl"):
        pytest.hookimpl(hookwrapper=True)(function)  # marks the function itself
    return plugin


# -- the archive ----------------------------------------------------------------------------------
class ArchiveError(Exception):
    pass


def unpack(data: bytes, target: str) -> str:
    """Unpack a source archive (tar, optionally compressed) into ``target``; return the project's directory
    (the archive's single top-level directory, as sdists have, or ``target``)."""
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"not a tar archive: {exc}") from None
    total = 0
    members = []
    with archive:
        for count, member in enumerate(archive, start=1):
            if count > MAX_MEMBERS:
                raise ArchiveError(f"more than {MAX_MEMBERS} entries")
            name = member.name
            parts = [p for p in name.split("/") if p not in ("", ".")]
            if name.startswith("/") or ".." in parts or not parts or "\\" in name or "\0" in name:
                raise ArchiveError(f"unsafe path {name[:100]!r}")
            if not (member.isreg() or member.isdir()):
                continue  # links, devices, fifos: never created
            if member.isreg():
                total += member.size
                if total > MAX_UNPACKED_BYTES:
                    raise ArchiveError(f"more than {MAX_UNPACKED_BYTES >> 20} MiB unpacked")
            members.append((member, parts))
        for member, parts in members:
            path = os.path.join(target, *parts)
            if member.isdir():
                os.makedirs(path, 0o700, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
            source = archive.extractfile(member)
            if source is None:
                continue
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                left = member.size
                while left > 0:
                    chunk = source.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    out.write(chunk)
                    left -= len(chunk)
    tops = {parts[0] for _, parts in members}
    if len(tops) == 1 and os.path.isdir(os.path.join(target, next(iter(tops)))):
        return os.path.join(target, next(iter(tops)))
    return target


def package_roots(project: str) -> list[str]:
    """The project's own code: top-level packages and modules that are not tests or build scripts
    (also under ``src/``)."""
    roots = []
    for base in (project, os.path.join(project, "src")):
        if not os.path.isdir(base):
            continue
        for name in sorted(os.listdir(base)):
            path = os.path.join(base, name)
            if os.path.isdir(path) and name not in TEST_DIRS and os.path.isfile(os.path.join(path, "__init__.py")):
                roots.append(path)
            elif name.endswith(".py") and not is_test_file(name):
                roots.append(path)
    return roots


# -- the trace job's program ----------------------------------------------------------------------
def trace_project(project: str, test_args: list[str], cpu_budget_s: float, home: str,
                  traced: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the project's tests (pytest, in this process) under the tracer: (report, status). ``traced=False``
    runs them the same way without tracing (to measure what tracing costs)."""
    roots = package_roots(project)
    status: dict[str, Any] = {"roots": [os.path.relpath(r, project) for r in roots][:50]}
    tracer = Tracer(roots, project)
    plugin = _hookwrapper(Plugin(tracer, cpu_budget_s))
    plugin.tracing = traced
    os.chdir(project)
    sys.path.insert(0, project)
    if os.path.isdir(os.path.join(project, "src")):
        sys.path.insert(0, os.path.join(project, "src"))
    ini = os.path.join(home, "empty.ini")  # the project's own pytest settings may name plugins the image lacks
    with open(ini, "w") as handle:
        handle.write("[pytest]\n")
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    import pytest

    try:
        code = pytest.main(["-q", "-c", ini, "--rootdir", project, "-p", "no:cacheprovider", "-p", "no:doctest",
                            *test_args], plugins=[plugin])
    except SystemExit as exc:  # a project that exits from its tests
        code = exc.code
    sys.setprofile(None)
    threading.setprofile(None)  # type: ignore[arg-type]
    status.update(exit=str(code)[:50], tests=dict(plugin.counts), stopped=plugin.stopped)
    return tracer.report(), status


def main(archive_b64: str, test_args: list[str], cpu_budget_s: float, traced: bool = True) -> str:
    """Unpack, run the tests under the tracer, print the block on the original stdout; returns a status."""
    import base64

    started = time.process_time()
    status: dict[str, Any] = {"format": FORMAT}
    out = os.dup(1)
    os.set_inheritable(out, False)
    report: dict[str, Any] = {"functions": [], "sources": {}}
    try:
        home = os.getcwd()
        project = unpack(base64.b64decode(archive_b64), os.path.join(home, "project"))
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)  # the project's own output goes nowhere; the block goes to the saved stdout
        os.close(null)
        report, more = trace_project(project, test_args, cpu_budget_s, home, traced)
        status.update(more)
    except ArchiveError as exc:
        status["error"] = f"archive: {exc}"
    except BaseException as exc:  # the project broke the runner: say so, with what was traced
        status["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
    status["cpu_s"] = round(time.process_time() - started, 3)
    body = json.dumps({**report, "status": status}, separators=(",", ":")).encode()
    block = MARK + str(len(body)).encode() + b"\n" + body + b"\n"
    view = memoryview(block)
    while view:
        view = view[os.write(out, view):]
    return "error" if "error" in status else "done"
