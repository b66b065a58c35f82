"""A sample's own process (untrusted from the moment its program runs; stdlib only).

Forked by the zygote (often ahead of need, as a spare) and switched to a uid of its own before
anything here runs. Reads a ``ProgramBoot`` from the boot pipe (fd 3): the program, its CPU limit
and how to run it, then runs the program as the module ``__main__``:

* ``serve``: answers the test driver's requests on fd 4 (in) and fd 5 (out): resolve names, call
  functions, read attributes of objects the program made, end. Every reply is the value in the
  exact-type encoding of ``values.py``.
* ``run``: runs once with stdin on fd 0 and exits as ``python3 main.py`` would (stdio cases).
* ``exec``: other languages: writes the boot's files (a compile step's source) into the working
  directory, says the CPU used so far on fd 5 and closes it, and replaces itself with the boot's
  command (a compiler, or the built program). The uid, limits and seccomp filter stay: they
  survive exec, and no_new_privs forbids gaining any.

This process never holds the test code, expected values, or other samples' data; whatever it
writes on fd 5 is only ever taken as *its own* answer, parsed by the driver as hostile.
"""

from __future__ import annotations

import builtins
import json
import os
import resource
import sys
import types

import hardening
import protocol
import values

TYPE_CHECKING = False  # importing typing costs ~4 ms per process under gVisor
if TYPE_CHECKING:
    from typing import Any

BOOT_FD, REQUEST_FD, REPLY_FD = 3, 4, 5
MAX_REQUEST_BYTES = 256 << 20  # requests come from the trusted driver
MAX_HANDLES = 10_000

# Bound before the program runs: a program that patches json or os only breaks its own answers.
_dumps = json.JSONEncoder(separators=(",", ":")).encode  # ASCII: lone surrogates stay escaped
_loads = json.loads
_write_frame = protocol.write_frame_fd


def describe(exc: BaseException) -> dict[str, Any]:
    """An exception as the driver rebuilds it: its type, its builtin ancestors, its message."""
    try:
        message = str(exc)
    except BaseException:  # a program's exception whose __str__ raises
        message = "<unprintable>"
    bases = [k.__name__ for k in type(exc).__mro__ if k.__module__ == "builtins"]
    return {"type": type(exc).__qualname__[:100], "bases": bases[:20], "message": message[:1000]}


class Server:
    def __init__(self, module: types.ModuleType) -> None:
        self.module = module
        self.handles: list[Any] = []

    def ref(self, value: Any) -> int | None:
        """Objects of classes the program defined travel as handles the driver can use remotely."""
        if getattr(type(value), "__module__", None) != "__main__" or len(self.handles) >= MAX_HANDLES:
            return None
        self.handles.append(value)
        return len(self.handles) - 1

    def encode(self, value: Any) -> Any:
        return values.encode(value, self.ref)

    def handed_back(self, index: int, type_name: str) -> Any:
        """An object the program made earlier, passed back by the test."""
        return self.handles[index]

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "resolve":
            return {"op": "resolved", "names": {name: self.resolve(name) for name in request["names"]}}
        if op == "getattr":
            target = self.handles[request["ref"]]
            try:
                value = getattr(target, request["name"])
            except BaseException as exc:
                return {"op": "raised", "exception": describe(exc)}
            return {"op": "value", "value": self.describe_member(value)}
        if op == "call":
            return self.call(request)
        raise ValueError(f"unknown op {op!r}")

    def resolve(self, name: str) -> dict[str, Any]:
        if name not in self.module.__dict__:
            return {"kind": "missing"}
        return self.describe_member(self.module.__dict__[name])

    def describe_member(self, value: Any) -> dict[str, Any]:
        if isinstance(value, types.ModuleType):
            return {"kind": "module", "name": str(getattr(value, "__name__", ""))[:200]}
        if callable(value):
            return {"kind": "callable"}
        return {"kind": "value", "value": self.encode(value)}

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        target = request["target"]
        if "ref" in target:
            function = getattr(self.handles[target["ref"]], target["name"])
        else:
            function = self.module.__dict__[target["name"]]
        args = [values.decode(item, self.handed_back) for item in request["args"]]
        kwargs = {key: values.decode(item, self.handed_back) for key, item in request["kwargs"].items()}
        before = [_dumps(item) if type(value) in values.MUTABLE_TYPES else None
                  for item, value in zip(request["args"], args)]
        try:
            result = function(*args, **kwargs)
        except BaseException as exc:  # the program's own exception, even SystemExit: it is the answer
            return {"op": "raised", "exception": describe(exc)}
        reply: dict[str, Any] = {"op": "value", "value": self.encode(result)}
        mutated = {}
        for index, (original, value) in enumerate(zip(before, args)):
            if original is not None:
                now = self.encode(value)
                if _dumps(now) != original:
                    mutated[str(index)] = now
        if mutated:
            reply["mutated"] = mutated
        return reply


def load(source: str | types.CodeType) -> types.ModuleType:
    """Run the program as ``__main__``, as `python3 main.py` would (so its functions pickle by name)."""
    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = builtins
    module.__dict__["__file__"] = os.path.join(os.getcwd(), "main.py")
    sys.modules["__main__"] = module
    sys.argv = ["main.py"]
    exec(source if isinstance(source, types.CodeType) else compile(source, "main.py", "exec"), module.__dict__)
    return module


def _traceback(exc: BaseException) -> str:
    """The program's part of a traceback (the harness's own frames are left out)."""
    import traceback  # only on the error path: imports cost milliseconds under gVisor

    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != "main.py":
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))[-3000:]


def main() -> None:
    reader = protocol.FrameReader(BOOT_FD, MAX_REQUEST_BYTES)
    boot = _loads(reader.read() or b"{}")
    os.close(BOOT_FD)
    if boot["cpu_s"]:  # counts this process's CPU from its fork: the harness's part so far is not the program's
        soft = boot["cpu_s"] + int(harness_cpu()) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 1))
    if boot["memory_bytes"]:  # spares are forked with room for a compiler; each boot lowers it to its own
        resource.setrlimit(resource.RLIMIT_AS, (boot["memory_bytes"], boot["memory_bytes"]))
    if boot["guard"] != "none":
        hardening.guard(boot["guard"])
    if boot["mode"] == "exec":
        execute(boot["argv"], boot["files"], boot["env"])
    elif boot["mode"] == "run":
        run(boot["source"], boot.get("apps_wrap") is True)
    else:
        serve(boot["source"])


def harness_cpu() -> float:
    """CPU this process has used so far: before the program exists, all of it is the harness's."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return round(usage.ru_utime + usage.ru_stime, 4)


def execute(argv: list[str], files: list[list[str]], env: list[list[str]]) -> None:
    """Become the boot's command, in this process (the supervisor accounts for it by this pid and uid)."""
    os.close(REQUEST_FD)
    os.makedirs("out", exist_ok=True)
    for name, text in files:
        with open(name, "w", encoding="utf-8", errors="surrogatepass") as handle:
            handle.write(text)
    os.environ.update({key: value.replace("{home}", os.getcwd()) for key, value in env})
    _write_frame(REPLY_FD, _dumps({"ok": True, "harness_cpu_s": harness_cpu()}).encode())
    os.close(REPLY_FD)  # the command never holds it: this word stays the harness's
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:  # the toolchain's own command is missing: the image is broken, said on stderr
        os.write(2, f"sandbox: cannot run {argv[0]}: {exc.strerror}\n".encode())
        os._exit(127)


def apps_wrapped(source: str) -> str:
    """The program as the APPS harness runs it: import lines kept, every other line the body of ``code()``."""
    body = [line if line.startswith(("from ", "import ")) else "\t" + line for line in source.split("\n")]
    first = next((i for i, line in enumerate(body) if line.startswith("\t")), len(body))
    return "\n".join([*body[:first], "import sys", "stdin = sys.stdin", "stdout = sys.stdout", "def code():",
                      *[("\t" + line if line.startswith(("from ", "import ")) else line) for line in body[first:]],
                      "code()", ""])


def run(source: str, apps_wrap: bool = False) -> None:
    """Run the program once, as a judge would: its exit status is what `python3 main.py` would give.

    Whether it compiles, and the CPU used before it did (``messages.Started``), is said on fd 5 before
    any of it runs (so that report is the harness's own), then fds 4 and 5 are closed."""
    os.close(REQUEST_FD)
    before_program = harness_cpu()  # compiling the program is the program's cost, as for `python3 main.py`
    try:
        try:
            code_object = compile(source, "main.py", "exec")
        except SyntaxError:
            if not apps_wrap:
                raise
            code_object = compile(apps_wrapped(source), "main.py", "exec")
    except BaseException as exc:  # SyntaxError, or a program too deeply nested to compile
        error = describe(exc)
        _write_frame(REPLY_FD, _dumps({"ok": False, "error": f"{error['type']}: {error['message']}\n"
                                                             f"{_traceback(exc)}"}).encode())
        os._exit(1)
    _write_frame(REPLY_FD, _dumps({"ok": True, "harness_cpu_s": before_program}).encode())
    os.close(REPLY_FD)
    code = 0
    try:
        load(code_object)
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code & 0xFF
        else:
            _report(str(exc.code))
            code = 1
    except BaseException as exc:  # the program's own error: a traceback on stderr, exit status 1
        _report(_traceback(exc))
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # a program that closed or replaced its streams
            pass
    os._exit(code)


def _report(text: str) -> None:
    try:
        sys.stderr.write(text if text.endswith("\n") else text + "\n")
    except BaseException:
        pass


def serve(source: str) -> None:
    requests = protocol.FrameReader(REQUEST_FD, MAX_REQUEST_BYTES)
    try:
        module = load(source)
    except BaseException as exc:  # SyntaxError, exceptions, SystemExit at import: the program's own error
        _write_frame(REPLY_FD, _dumps({"op": "loaded", "ok": False, "error": describe(exc),
                                       "traceback": _traceback(exc)}).encode())
        return
    _write_frame(REPLY_FD, b'{"op":"loaded","ok":true}')
    server = Server(module)
    while True:
        body = requests.read()
        if body is None:
            return
        request = _loads(body)
        if request["op"] == "end":
            return
        try:
            reply = server.handle(request)
            data = _dumps(reply).encode()
        except BaseException as exc:  # the program broke the harness's own work (encoding, lookups)
            data = _dumps({"op": "raised", "exception": describe(exc)}).encode()
        _write_frame(REPLY_FD, data)
