"""The trusted test driver (stdlib only): runs a job's tests unchanged and judges one sample at a time.

Forked by the zygote under a judge uid that no sample ever has, so no program can signal it,
stop it, change its limits or open its file descriptors. It never executes a program's code:
every call the tests make into the program goes over a pipe to the sample's own process, which
answers with the value in the exact-type encoding of ``values.py``; comparisons happen here.

Per-test verdicts come from the test program itself, with each ``assert`` statement instrumented
by the host (``sandbox/testprogram.py``) to report its outcome here. Directly in ``check``, a
failed assert is recorded and execution continues, so one failure does not hide the others;
inside ``try``/``with`` blocks and helper functions an assert raises as usual (its outcome is
recorded, and a failure the test program handles itself counts as handled, not failed).

A sample that vanishes, answers garbage, or returns a value that cannot be carried ends its
judging with an exception that is not an ``Exception``: a test's own ``except Exception`` cannot
swallow it, and a bare ``except`` that does is overruled by the flag it leaves here.
"""

from __future__ import annotations

import builtins
import copy
import ctypes
import dataclasses
import gc
import json
import mmap
import os
import random
import signal
import socket
import sys
import time
import traceback

import comparators
import messages
import protocol
import values
from values import MalformedValue, UnsupportedUse

TYPE_CHECKING = False  # importing typing costs ~4 ms per process under gVisor
if TYPE_CHECKING:
    from typing import Any, Callable

BOOT_FD, CONTROL_FD = 3, 4
TEST_FILENAME = "<test>"
MESSAGE_CHARS = 300
STDERR_TAIL = 2000            # characters of a stdio run's stderr the supervisor hands over (its tail)
SHARED_MODULES = frozenset({"math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string", "copy",
                            "typing", "hashlib", "statistics", "fractions", "decimal", "operator", "random", "json"})
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def clean(text: str, limit: int = MESSAGE_CHARS) -> str:
    """Text safe to send anywhere: bounded, and no lone surrogates (they cannot be UTF-8 encoded)."""
    return text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def describe(exc: BaseException) -> str:
    try:
        message = str(exc)
    except BaseException:
        message = "<unprintable>"
    return clean(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)


class Abort(BaseException):
    """Ends the judging of a sample; not an ``Exception``, so tests cannot catch it by accident."""


class SampleGone(Abort):
    """The sample's process ended, or broke its channel, while the test waited for it."""


class FirstFailure(Abort):
    """The job asked to stop at the first failing test."""


class ProgramExit(BaseException):
    """The program raised SystemExit or another non-``Exception`` during a call."""


class TestArgumentError(Exception):
    """The test passed something to the program that cannot cross into the sample's process."""

    __test__ = False


# -- the channel to the sample ------------------------------------------------------------------
class SampleLink:
    """The driver's end of the pipes to one sample's process. Everything read here is hostile."""

    def __init__(self, request_fd: int, reply_fd: int, reply_max_bytes: int) -> None:
        self.request_fd, self.reply_fd = request_fd, reply_fd
        self.reader = protocol.FrameReader(reply_fd, reply_max_bytes)
        self.fault = ""            # set once the sample broke its channel; every later call fails
        self._exceptions: dict[tuple[str, str], type] = {}

    def close(self) -> None:
        for fd in (self.request_fd, self.reply_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def _gone(self, reason: str) -> SampleGone:
        if not self.fault:
            self.fault = clean(reason)
        return SampleGone(self.fault)

    def send(self, request: dict[str, Any]) -> None:
        if self.fault:
            raise SampleGone(self.fault)
        try:
            protocol.write_frame_fd(self.request_fd, _dumps(request).encode())
        except OSError as exc:
            raise self._gone(f"the program's process ended (its request pipe: {exc.strerror})") from None

    def receive(self, expected: tuple[str, ...]) -> dict[str, Any]:
        if self.fault:
            raise SampleGone(self.fault)
        try:
            body = self.reader.read()
            if body is None:
                raise self._gone("the program's process ended while the test waited for its answer")
            message = json.loads(body)
        except protocol.FrameError as exc:
            raise self._gone(f"the program broke its reply channel: {exc}") from None
        except (ValueError, RecursionError):
            raise self._gone("the program's reply is not valid JSON (or nests too deeply)") from None
        except MemoryError:
            raise self._gone("the program's reply does not fit in the test driver's memory") from None
        except OSError as exc:
            raise self._gone(f"the program's reply channel failed: {exc.strerror}") from None
        if type(message) is not dict or message.get("op") not in expected:
            raise self._gone("the program's reply is not a reply the harness sends")
        return message

    def decode(self, data: Any) -> Any:
        try:
            return values.decode(data, self._remote)
        except MalformedValue as exc:
            raise self._gone(f"the program's reply holds a malformed value ({exc})") from None
        except MemoryError:
            raise self._gone("the program's value does not fit in the test driver's memory") from None

    def _remote(self, handle: int, type_name: str) -> RemoteObject:
        return RemoteObject(self, handle, type_name)

    def encode_argument(self, value: Any) -> Any:
        refused: list[str] = []
        encoded = values.encode(value, lambda v: v._handle if type(v) is RemoteObject else None, refused)
        if refused:
            raise TestArgumentError(f"the test passed {refused[0]} to the program; only plain data can cross into "
                                    "the sample's process")
        return encoded

    # -- requests ----------------------------------------------------------------------------
    def loaded(self) -> dict[str, Any]:
        return self.receive(("loaded",))

    def resolve(self, names: tuple[str, ...]) -> dict[str, Any]:
        self.send({"op": "resolve", "names": list(names)})
        reply = self.receive(("resolved",))
        found = reply.get("names")
        if type(found) is not dict:
            raise self._gone("the program's reply to resolve is malformed")
        return {name: self.member(found.get(name), name, None) for name in names}

    def member(self, description: Any, name: str, ref: int | None) -> Any:
        """Turn the sample's description of a name or attribute into what the test sees."""
        if type(description) is not dict:
            raise self._gone("the program described a name in a malformed way")
        kind = description.get("kind")
        if kind == "missing":
            return MISSING
        if kind == "callable":
            return self.proxy(name, ref)
        if kind == "value":
            return self.decode(description.get("value"))
        if kind == "module":
            # Never import on the sample's word (an import runs code): only a plain library module this
            # driver itself has already loaded, named on a fixed list, stands in for the program's.
            module_name = description.get("name")
            if type(module_name) is str and module_name in SHARED_MODULES and module_name in sys.modules:
                return sys.modules[module_name]
            return values.Unsupported(f"a module ({str(module_name)[:60]})")
        raise self._gone("the program described a name in a malformed way")

    def proxy(self, name: str, ref: int | None) -> Callable[..., Any]:
        target = {"name": name} if ref is None else {"ref": ref, "name": name}
        link = self

        def call_program(*args: Any, **kwargs: Any) -> Any:
            return link.call(target, args, kwargs)

        call_program.__name__ = call_program.__qualname__ = name
        return call_program

    def call(self, target: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        encoded_args = [self.encode_argument(arg) for arg in args]
        encoded_kwargs = {str(key): self.encode_argument(value) for key, value in kwargs.items()}
        self.send({"op": "call", "target": target, "args": encoded_args, "kwargs": encoded_kwargs})
        reply = self.receive(("value", "raised"))
        if reply["op"] == "raised":
            raise self.rebuild(reply.get("exception"))
        result = self.decode(reply.get("value"))
        mutated = reply.get("mutated")
        if type(mutated) is dict:
            for key, data in list(mutated.items())[:len(args)]:
                if type(key) is str and key.isdigit() and int(key) < len(args):
                    values.apply_mutation(args[int(key)], self.decode(data))
        return result

    def getattr(self, ref: int, name: str) -> Any:
        self.send({"op": "getattr", "ref": ref, "name": name})
        reply = self.receive(("value", "raised"))
        if reply["op"] == "raised":
            raise self.rebuild(reply.get("exception"))
        found = self.member(reply.get("value"), name, ref)
        if found is MISSING:
            raise AttributeError(name)
        return found

    def rebuild(self, data: Any) -> BaseException:
        """The program's exception as the test can catch it: its nearest builtin class, its message."""
        if type(data) is not dict:
            return self._gone("the program described an exception in a malformed way")
        name, bases, message = data.get("type"), data.get("bases"), data.get("message")
        if type(name) is not str or type(bases) is not list or type(message) is not str:
            return self._gone("the program described an exception in a malformed way")
        base: type = BaseException
        for candidate in bases[:20]:
            found = getattr(builtins, str(candidate), None)
            if isinstance(found, type) and issubclass(found, BaseException):
                base = found
                break
        if not issubclass(base, Exception):  # SystemExit, KeyboardInterrupt...: nothing a test may swallow
            return ProgramExit(clean(f"{name}: {message}"))
        key = (name[:100], base.__name__)
        kind = self._exceptions.get(key)
        if kind is None:
            kind = base if name == base.__name__ else type(name[:100], (base,), {"__module__": "program"})
            self._exceptions[key] = kind
        try:
            return kind(message[:1000])
        except Exception:  # builtin exceptions with unusual constructors (UnicodeDecodeError...)
            return type(name[:100], (Exception,), {"__module__": "program"})(message[:1000])

    def end(self) -> None:
        if not self.fault:
            try:
                protocol.write_frame_fd(self.request_fd, b'{"op":"end"}')
            except OSError:
                pass


class _Missing:
    pass


MISSING = _Missing()


class RemoteObject:
    """An object of a class the program defined; it stays in the sample's process.

    Attributes and method calls go there; comparisons, truth tests and hashing are refused, since
    they would need the program's own ``__eq__`` to run on values from the test."""

    __slots__ = ("_link", "_handle", "_type")

    def __init__(self, link: SampleLink, handle: int, type_name: str) -> None:
        object.__setattr__(self, "_link", link)
        object.__setattr__(self, "_handle", handle)
        object.__setattr__(self, "_type", type_name)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._link.getattr(self._handle, name)

    def _refuse(self, *args: Any) -> Any:
        message = (f"the test compared or tested a {self._type} object of the program's own class; only its "
                   "attributes and methods can be used")
        values.REFUSED.append(message)
        raise UnsupportedUse(message)

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = __len__ = __iter__ = __hash__ = _refuse

    def __repr__(self) -> str:
        return f"<{self._type} object in the program's process>"


# -- recording assertion outcomes ---------------------------------------------------------------
class Stat:
    __slots__ = ("runs", "passed", "failed", "errors", "interrupted", "handled", "message", "duration")

    def __init__(self) -> None:
        self.runs = self.passed = self.failed = self.errors = self.interrupted = self.handled = 0
        self.message = ""
        self.duration = 0.0


class Recorder:
    """What instrumented ``assert`` statements call (bound as ``__sandbox__`` in the test's namespace)."""

    def __init__(self, stop_on_first_failure: bool) -> None:
        self.stop_on_first_failure = stop_on_first_failure
        self.stats: dict[int, Stat] = {}
        self.tentative: list[tuple[BaseException, int, str]] = []  # raised failures the test may handle
        self.unsupported = ""
        self._started = 0.0

    def _stat(self, index: int) -> Stat:
        stat = self.stats.get(index)
        if stat is None:
            stat = self.stats[index] = Stat()
        stat.duration += time.perf_counter() - self._started
        stat.runs += 1
        return stat

    def begin(self, index: int) -> None:
        self._started = time.perf_counter()

    def passed(self, index: int) -> None:
        self._stat(index).passed += 1

    def failed(self, index: int, message: Any, propagate: bool) -> None:
        stat = self._stat(index)
        text = "" if message is None else _message_text(message)
        error = AssertionError(message) if message is not None else AssertionError()
        if propagate:
            self.tentative.append((error, index, text))
            raise error
        stat.failed += 1
        stat.message = stat.message or text
        if self.stop_on_first_failure:
            raise FirstFailure(f"test #{index + 1} failed")

    def raised(self, index: int, exc: BaseException, propagate: bool) -> None:
        if isinstance(exc, SampleGone):
            self._stat(index).interrupted += 1
            raise exc
        if isinstance(exc, FirstFailure):
            raise exc
        stat = self._stat(index)
        if isinstance(exc, UnsupportedUse):  # the value is refused; the other tests can still be judged
            self.unsupported = self.unsupported or clean(str(exc))
        if propagate:
            self.tentative.append((exc, index, describe(exc)))
            raise exc
        stat.errors += 1
        stat.message = stat.message or describe(exc)
        if self.stop_on_first_failure:
            raise FirstFailure(f"test #{index + 1} raised")

    def settle(self, escaped: BaseException | None) -> None:
        """Raised failures count if they ended the test program, and as handled if the test caught them."""
        chain = set()
        while escaped is not None and id(escaped) not in chain:
            chain.add(id(escaped))
            escaped = escaped.__context__ or escaped.__cause__
        for exc, index, text in self.tentative:
            stat = self.stats[index]
            if id(exc) not in chain:
                stat.handled += 1
            elif isinstance(exc, AssertionError):
                stat.failed += 1
                stat.message = stat.message or text
            else:
                stat.errors += 1
                stat.message = stat.message or text
        self.tentative.clear()

    def outcomes(self) -> tuple[messages.TestOutcome, ...]:
        found = []
        for index, stat in sorted(self.stats.items()):
            status = ("failed" if stat.failed else "error" if stat.errors else
                      "interrupted" if stat.interrupted else "passed")
            found.append(messages.TestOutcome(index=index, status=status, message=stat.message, runs=stat.runs,
                                              handled=stat.handled, duration_s=round(stat.duration, 6)))
        return tuple(found)


def _message_text(message: Any) -> str:
    try:
        return clean(f"AssertionError: {message}")
    except BaseException as exc:
        return f"<message raised {describe(exc)}>"


def _where(exc: BaseException) -> str:
    """The test program's line where an exception left it, for messages."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == TEST_FILENAME]
    return f" (test line {frames[-1].lineno})" if frames else ""


# -- judging ------------------------------------------------------------------------------------
class Control:
    """The driver's socket to the supervisor: judge requests in, case runs asked for and received."""

    def __init__(self, fd: int) -> None:
        self.socket = socket.socket(fileno=fd)

    def receive(self) -> tuple[dict[str, Any], list[int], bytes]:
        data, fds, _, _ = socket.recv_fds(self.socket, 16 << 20, 2)
        if not data:
            raise SystemExit(0)  # the supervisor ended this driver's batch
        header, _, payload = data.partition(b"\0")
        return json.loads(header), fds, payload

    def send(self, message: Any) -> None:
        self.socket.sendall(_dumps(messages.to_dict(message)).encode())

    def send_report(self, report: messages.Judged) -> None:
        self.socket.sendall(fitted(report))


def fitted(report: messages.Judged) -> bytes:
    """The report encoded within ``JUDGED_MAX_BYTES``. Thousands of long failure messages (non-ASCII text
    escapes to up to 12 bytes a character) are shortened to fit, and so is captured output (flagged as cut);
    statuses are never touched."""
    data = _dumps(messages.to_dict(report)).encode()
    keep = max((len(o.captured.stdout) for o in report.outcomes if o.captured is not None), default=0)
    while len(data) > messages.JUDGED_MAX_BYTES and keep > 0:
        keep //= 2
        report = dataclasses.replace(report, outcomes=tuple(_cut_capture(o, keep) for o in report.outcomes))
        data = _dumps(messages.to_dict(report)).encode()
    for keep in (60, 0):
        if len(data) <= messages.JUDGED_MAX_BYTES:
            return data
        outcomes = tuple(dataclasses.replace(o, message=o.message[:keep]) for o in report.outcomes)
        data = _dumps(messages.to_dict(dataclasses.replace(report, outcomes=outcomes))).encode()
    if len(data) <= messages.JUDGED_MAX_BYTES:
        return data
    too_many = messages.Judged(sample_id=report.sample_id, load="loaded", test_fault=(
        f"{len(report.outcomes)} test outcomes do not fit in a report"))  # MAX_TESTS is meant to prevent this
    return _dumps(messages.to_dict(too_many)).encode()


def _cut_capture(outcome: messages.TestOutcome, keep: int) -> messages.TestOutcome:
    captured = outcome.captured
    if captured is None or len(captured.stdout) <= keep:
        return outcome
    return dataclasses.replace(outcome, captured=dataclasses.replace(captured, stdout=captured.stdout[:keep],
                                                                     stdout_truncated=True))


class FunctionJudge:
    """``check(candidate)`` programs and named snippets, run unchanged against the sample's process."""

    def __init__(self, tests: messages.FunctionTests, job: messages.DriverJob) -> None:
        self.tests, self.job = tests, job
        self.prelude = compile(tests.prelude, "<prompt>", "exec") if tests.prelude else None
        self.units = [compile(unit.source, TEST_FILENAME, "exec") for unit in tests.units]
        # modules the tests use unimported are the driver's own, never the program's (names the host checked)
        self.modules: dict[str, Any] = {}
        self.module_fault = ""
        for name in tests.modules:
            try:
                self.modules[name] = __import__(name)
            except BaseException as exc:  # the tests' fault: say it for every sample
                self.module_fault = f"the tests use the module {name!r}, which the sandbox cannot import: {describe(exc)}"

    def judge(self, sample_id: str, link: SampleLink | None, control: Control) -> messages.Judged:
        assert link is not None
        tests = self.tests
        result = {"sample_id": sample_id, "load": "no_report"}
        try:
            failed_load = _load(link, sample_id)
            if failed_load is not None:
                return failed_load
            result["load"] = "loaded"
            names = link.resolve(tuple(dict.fromkeys((*tests.program_names, tests.entry_point))))
        except SampleGone:
            return messages.Judged(**result, sample_fault=link.fault)
        if names[tests.entry_point] is MISSING:
            return messages.Judged(sample_id=sample_id, load="missing_entry_point",
                                   load_error=f"the program does not define {tests.entry_point!r}")
        if self.module_fault:
            return messages.Judged(sample_id=sample_id, load="loaded", test_fault=self.module_fault)
        namespace: dict[str, Any] = {"__name__": "__test__", "__builtins__": builtins, **self.modules}
        random.seed(20_210_707)  # tests that draw random inputs draw the same ones for every sample
        if self.prelude is not None:
            try:
                exec(self.prelude, namespace)
            except BaseException as exc:
                return messages.Judged(sample_id=sample_id, load="loaded",
                                       test_fault=f"the problem's prompt failed in the test driver: {describe(exc)}")
        for name, value in names.items():
            if value is not MISSING:
                namespace[name] = value
        recorder = Recorder(self.job.stop_on_first_failure)
        namespace["__sandbox__"] = recorder
        del values.REFUSED[:]
        entry = names[tests.entry_point]
        if tests.form == "check":
            completed, stopped, test_fault = self._run_check(namespace, entry, recorder)
        else:
            completed, stopped, test_fault = self._run_snippets(namespace, entry, recorder)
        link.end()
        unsupported = recorder.unsupported or (clean(values.REFUSED[0]) if values.REFUSED else "")
        return messages.Judged(sample_id=sample_id, load="loaded", outcomes=recorder.outcomes(), completed=completed,
                               stopped=stopped, sample_fault=link.fault, unsupported=unsupported, test_fault=test_fault)

    def _run_check(self, namespace: dict[str, Any], entry: Any, recorder: Recorder) -> tuple[bool, str, str]:
        try:
            exec(self.units[0], namespace)
        except BaseException as exc:
            return False, "", f"the test program failed before calling check(): {describe(exc)}{_where(exc)}"
        check = namespace.get("check")
        if not callable(check):
            return False, "", "the test program does not define check(candidate)"
        escaped: BaseException | None = None
        try:
            check(entry)
        except BaseException as exc:
            escaped = exc
        recorder.settle(escaped)
        if escaped is None:
            return True, "", ""
        if isinstance(escaped, (Abort, UnsupportedUse)):
            if isinstance(escaped, UnsupportedUse):
                recorder.unsupported = recorder.unsupported or clean(str(escaped))
            return False, clean(str(escaped)), ""
        if isinstance(escaped, AssertionError) and any(stat.failed for stat in recorder.stats.values()):
            return False, "an assertion failed and check() stopped there", ""
        return False, f"check() raised {describe(escaped)}{_where(escaped)}", ""

    def _run_snippets(self, namespace: dict[str, Any], entry: Any, recorder: Recorder) -> tuple[bool, str, str]:
        for index, code in enumerate(self.units):
            scope = dict(namespace)
            scope["candidate"] = entry
            recorder.begin(index)
            try:
                exec(code, scope)
                recorder.passed(index)
            except AssertionError as exc:
                try:
                    recorder.failed(index, exc.args[0] if exc.args else None, propagate=False)
                except FirstFailure as stop:
                    return False, clean(str(stop)), ""
            except BaseException as exc:
                try:
                    recorder.raised(index, exc, propagate=False)
                except (Abort, UnsupportedUse) as stop:
                    return False, clean(str(stop)), ""
        return True, "", ""


def _load(link: SampleLink, sample_id: str) -> messages.Judged | None:
    """Wait for the program to load; a ``Judged`` if it failed to."""
    loaded = link.loaded()
    if loaded.get("ok") is True:
        return None
    error = loaded.get("error") if type(loaded.get("error")) is dict else {}
    text = clean(f"{error.get('type', 'Error')}: {error.get('message', '')}", 1000)
    trace = loaded.get("traceback")
    if type(trace) is str and trace:
        text += "\n" + clean(trace, 3000)
    return messages.Judged(sample_id=sample_id, load="program_error", load_error=text)


class CaseLog:
    """Outcomes of call or stdio cases, one per case index."""

    def __init__(self) -> None:
        self.outcomes: list[messages.TestOutcome] = []

    def add(self, index: int, status: str, message: str = "", duration_s: float = 0.0, cpu_s: float | None = None,
            max_rss_kib: int | None = None, limit: str = "", captured: messages.Captured | None = None) -> None:
        self.outcomes.append(messages.TestOutcome(index=index, status=status, message=clean(message),  # type: ignore[arg-type]
                                                  duration_s=round(duration_s, 6), cpu_s=cpu_s, max_rss_kib=max_rss_kib,
                                                  limit=limit, captured=captured))  # type: ignore[arg-type]


class CallJudge:
    """Call-based cases: the program's function (or a ``Solution`` method) called once per case."""

    def __init__(self, tests: messages.CallTests, job: messages.DriverJob) -> None:
        self.tests, self.job = tests, job
        self.compare = comparators.CALLS[tests.comparator]

    def judge(self, sample_id: str, link: SampleLink | None, control: Control) -> messages.Judged:
        assert link is not None
        tests = self.tests
        target_name = tests.class_name or tests.fn_name
        try:
            failed_load = _load(link, sample_id)
            if failed_load is not None:
                return failed_load
            target = link.resolve((target_name,))[target_name]
            if target is MISSING:
                return messages.Judged(sample_id=sample_id, load="missing_entry_point",
                                       load_error=f"the program does not define {target_name!r}")
            function = getattr(target(), tests.fn_name) if tests.class_name else target
        except SampleGone:
            return messages.Judged(sample_id=sample_id, load="loaded", sample_fault=link.fault)
        except BaseException as exc:  # Solution() raised, or has no such method: every case fails alike
            return messages.Judged(sample_id=sample_id, load="missing_entry_point",
                                   load_error=f"{tests.class_name}().{tests.fn_name} is not usable: {describe(exc)}")
        log, stopped = CaseLog(), ""
        del values.REFUSED[:]
        for index, case in enumerate(tests.cases):
            started = time.perf_counter()
            try:
                # a fresh copy per call: the sample may mutate its arguments, and the next sample must not see that
                passed, why = self.compare(function(*copy.deepcopy(case.args)), case.expected)
                status, message = ("passed", "") if passed else ("failed", why)
            except SampleGone as exc:
                log.add(index, "interrupted", str(exc), time.perf_counter() - started)
                stopped = str(exc)
                break
            except BaseException as exc:  # the program raised (its exception rebuilt), or a refused value
                status, message = "error", describe(exc)
            log.add(index, status, message, time.perf_counter() - started)
            if status != "passed" and self.job.stop_on_first_failure:
                stopped = f"case {index + 1} did not pass"
                break
        link.end()
        return messages.Judged(sample_id=sample_id, load="loaded", outcomes=tuple(log.outcomes),
                               completed=len(log.outcomes) == len(tests.cases) and not stopped, stopped=clean(stopped),
                               sample_fault=link.fault, unsupported=clean(values.REFUSED[0]) if values.REFUSED else "")


# What runtimes other than Python print when an allocation fails: C++, Java, Node.js, Go, Rust
OUT_OF_MEMORY = ("std::bad_alloc", "java.lang.OutOfMemoryError", "JavaScript heap out of memory",
                 "fatal error: runtime: out of memory", "memory allocation of ")


class StdioJudge:
    """Stdio cases: the supervisor runs the program once per case; the output is judged here."""

    def __init__(self, tests: messages.StdioTests, job: messages.DriverJob) -> None:
        self.tests, self.job = tests, job
        self.compare = comparators.STDIO[tests.comparator]
        self.checker: Callable[..., Any] | None = None
        self.checker_fault = ""  # the problem's checker cannot be used: said for every sample, blamed on none
        if tests.checker is not None:  # loaded once, in the template: each sample's judge is a fresh fork of it
            scope: dict[str, Any] = {"__name__": "__checker__", "__builtins__": builtins}
            try:
                exec(compile(tests.checker, "<checker>", "exec"), scope)
            except BaseException as exc:
                self.checker_fault = f"the checker failed to load: {describe(exc)}"
            else:
                self.checker = scope["check"] if callable(scope.get("check")) else None
                if self.checker is None:
                    self.checker_fault = "the checker does not define check(input, output, expected)"

    def judge(self, sample_id: str, link: SampleLink | None, control: Control) -> messages.Judged:
        if self.checker_fault:
            return messages.Judged(sample_id=sample_id, load="loaded", test_fault=self.checker_fault)
        log, stopped, unjudged = CaseLog(), "", []
        for index, case in enumerate(self.tests.cases):
            control.send(messages.RunCase(op="run_case", index=index))
            header, _, stdout = control.receive()
            run = messages.from_dict(messages.CaseRun, header)
            if run.compile_error:
                return messages.Judged(sample_id=sample_id, load="program_error", load_error=clean(run.compile_error, 3000))
            status, message = self.verdict(case, run, stdout)
            if status == UNJUDGED:  # the problem's checker failed on this case: no outcome, nothing charged
                unjudged.append(f"case {index + 1}: {message}")
                continue
            # the case's own clock; a spent sample budget is the sample's time_limit, not the case's
            case_limit = run.limit if status == "timeout" and run.limit in ("cpu", "wall") else ""
            captured = None
            if self.tests.capture:  # the stderr tail is at most STDERR_TAIL characters: at that length it was cut
                captured = messages.Captured(stdout=stdout.decode("utf-8", "replace"), stderr=run.stderr,
                                             exit_status=run.exit_status, stdout_truncated=run.stdout_truncated,
                                             stderr_truncated=len(run.stderr) >= STDERR_TAIL)
            log.add(index, status, message, run.wall_s, run.cpu_s, run.max_rss_kib, case_limit, captured)
            if run.limit == "sample":
                stopped = "the sample's own time budget ran out"
                break
            if status != "passed" and self.job.stop_on_first_failure:
                stopped = f"case {index + 1} did not pass"
                break
        test_fault = "; ".join(unjudged[:3]) + (f"; and {len(unjudged) - 3} more case(s)" if len(unjudged) > 3 else "")
        return messages.Judged(sample_id=sample_id, load="loaded", outcomes=tuple(log.outcomes), stopped=stopped,
                               completed=len(log.outcomes) + len(unjudged) == len(self.tests.cases) and not stopped,
                               test_fault=clean(test_fault, 1000))

    def verdict(self, case: messages.StdioCase, run: messages.CaseRun, stdout: bytes) -> tuple[str, str]:
        if run.limit == "sample":
            return "timeout", f"the sample's time budget over all its cases ran out ({run.cpu_s:.2f} s CPU in this case)"
        if run.limit:
            kind = "CPU" if run.limit == "cpu" else "wall-clock"
            return "timeout", f"{kind} time limit exceeded ({run.cpu_s:.2f} s CPU, {run.wall_s:.2f} s wall)"
        if run.stdout_truncated:
            return "output_limit", "output limit exceeded"
        if run.exit_status != 0:
            lines = run.stderr.strip().splitlines()
            tail = lines[-1:] or [""]
            # how the runtime itself says it: Python's last word, or another runtime's fatal message before
            # its stack trace (a program could print either itself: that changes only the name of its failure)
            said = tail[0] if tail[0].startswith("MemoryError") else next(
                (line for line in reversed(lines[-40:]) if any(mark in line for mark in OUT_OF_MEMORY)), None)
            if said is not None:
                return "memory_limit", f"memory limit exceeded: {said.strip()[:200]}"
            if run.exit_status is not None and run.exit_status < 0:
                name = signal.Signals(-run.exit_status).name if -run.exit_status in signal.valid_signals() else ""
                return "error", f"runtime error: killed by signal {-run.exit_status} {name}".strip()
            return "error", f"runtime error: exit status {run.exit_status}: {tail[0]}"
        if self.tests.capture:  # nothing to compare: the run went well, and its output is returned
            return "passed", ""
        output = stdout.decode("utf-8", "surrogateescape")
        if self.checker is not None:
            return self.check(case, output)
        if case.output is None:
            return "error", "the case has no expected output and the problem no checker"
        passed, why = self.compare(output, case.output, self.tests.float_tolerance)
        return ("passed", "") if passed else ("failed", f"wrong answer: {why}")

    def check(self, case: messages.StdioCase, output: str) -> tuple[str, str]:
        """The problem's checker on one case's data, under its own CPU budget (``judge_cpu_time_s`` per case).

        A checker that raises an ``Exception`` rejects the output (a checker reading a number where the program
        printed words raises); one that runs past its budget, or raises what no checker means as a verdict
        (``SystemExit``...), failed by itself: the case is ``UNJUDGED``, the problem's fault, not the sample's."""
        budget = self.job.judge_cpu_time_s
        timer = {"armed": True, "fired": False}

        def expire(signum: int, frame: Any) -> None:
            if timer["armed"]:
                timer["fired"] = True
                raise CheckerOverrun()

        previous = signal.signal(signal.SIGPROF, expire)
        try:
            try:
                signal.setitimer(signal.ITIMER_PROF, budget, 0.05)  # again every 50 ms if the checker swallows it
                verdict = self.checker(case.input, output, case.output)  # type: ignore[misc]
                passed, why = verdict if type(verdict) is tuple else (verdict, "")
                passed, why = bool(passed), str(why)
            finally:
                timer["armed"] = False
                signal.setitimer(signal.ITIMER_PROF, 0, 0)
        except Exception as exc:  # the checker refused what the program printed
            outcome = ("failed", f"the checker rejected the output: {describe(exc)}")
        except BaseException as exc:
            outcome = (UNJUDGED, "" if timer["fired"] else f"the problem's checker raised {describe(exc)}")
        else:
            outcome = ("passed", "") if passed else ("failed", f"wrong answer (checker): {why}")
        finally:
            signal.signal(signal.SIGPROF, previous)
        if timer["fired"]:  # whatever it returned after its budget ran out (it may have swallowed the timer)
            return UNJUDGED, f"the problem's checker ran past its CPU budget of {budget:g} s"
        return outcome


class CheckerOverrun(BaseException):
    """A checker's CPU budget for one case ran out (raised by its timer; not an ``Exception``)."""


UNJUDGED = "unjudged"  # a case the problem's own checker failed to judge: the problem's fault


# Said in every passing inline result: the verdict rests on what the program's own process did.
INLINE_GUARANTEE = ("inline tests passed: exit status 0 and the nonce after the last test; the tests ran in the "
                    "program's own process, which a deliberate program can subvert (stdio cases cannot be)")


class InlineJudge:
    """Tests in the program's own language: one run of program + tests, judged by its rule on the exit
    status and output (the program can forge these, except the nonce it never saw: see README)."""

    def __init__(self, tests: messages.InlineTests, job: messages.DriverJob) -> None:
        self.tests, self.job = tests, job
        self.rule = comparators.INLINE[tests.rule]

    def judge(self, sample_id: str, link: SampleLink | None, control: Control) -> messages.Judged:
        control.send(messages.RunCase(op="run_case", index=0))
        header, _, stdout = control.receive()
        run = messages.from_dict(messages.CaseRun, header)
        if run.compile_error:
            return messages.Judged(sample_id=sample_id, load="program_error", load_error=clean(run.compile_error, 3000))
        if run.limit:
            kind = "CPU" if run.limit in ("cpu", "sample") else "wall-clock"
            status, message = "timeout", f"{kind} time limit exceeded ({run.cpu_s:.2f} s CPU, {run.wall_s:.2f} s wall)"
        elif run.stdout_truncated:
            status, message = "output_limit", "output limit exceeded"
        else:
            passed, why = self.rule(run.exit_status, stdout.decode("utf-8", "replace"), run.stderr, run.nonce)
            status, message = ("passed", INLINE_GUARANTEE) if passed else ("failed", why)
            tail = run.stderr.strip().splitlines()[-1:]
            if not passed and tail:
                message += f": {tail[0]}"
        log = CaseLog()
        log.add(0, status, message, run.wall_s, run.cpu_s, run.max_rss_kib, run.limit if run.limit != "sample" else "cpu")
        return messages.Judged(sample_id=sample_id, load="loaded", outcomes=tuple(log.outcomes), completed=True)


JUDGES: dict[str, Any] = {"check": FunctionJudge, "snippets": FunctionJudge, "calls": CallJudge, "stdio": StdioJudge,
                          "inline": InlineJudge}


def main() -> None:
    """The template: loads the tests once, then forks a pristine judge per sample and never sees sample data.

    Nothing a sample's values do to a judge (a careless test or checker that evaluates what it printed or
    returned can be made to run its code) outlives that sample: the judge's process ends with it, and so do
    processes it started (this template is their subreaper and kills them) before the report is passed on,
    so no leftover can take the next sample's request from the control socket or answer in its name. Each
    judge is forked ahead, as soon as the previous one is done, and takes its own request: a fork costs
    ~50-100 ms of CPU under gVisor, paid while the supervisor finishes one sample and starts the next."""
    boot = protocol.FrameReader(BOOT_FD, 1 << 30).read()
    os.close(BOOT_FD)
    job = messages.from_dict(messages.DriverJob, json.loads(boot or b"{}"))
    judge = JUDGES[job.tests.form](job.tests, job)
    control = Control(CONTROL_FD)
    sys.setrecursionlimit(10_000)
    _prctl(PR_SET_DUMPABLE, 0)          # no judge (same uid) may read or write this template's memory
    _prctl(PR_SET_CHILD_SUBREAPER, 1)   # whatever a judge leaves running comes back here to be ended
    mailbox = mmap.mmap(-1, MAILBOX_BYTES)  # shared with each judge: whom it judged, its report
    template = os.getpid()
    gc.collect()
    gc.freeze()  # a judge's collections skip the template's objects: fewer pages copied per fork
    while True:
        mailbox[:REPORT_AT] = bytes(REPORT_AT)
        pid = os.fork()
        if pid == 0:
            _judge_one(judge, job, control, mailbox, template)  # never returns
        _, status = os.waitpid(pid, 0)
        _end_leftovers()
        id_size, size = int.from_bytes(mailbox[:4], "big"), int.from_bytes(mailbox[4:8], "big")
        if not 0 < id_size <= SAMPLE_ID_BYTES:  # it took no request: the supervisor ended this batch
            return
        if 0 < size <= messages.JUDGED_MAX_BYTES:
            data = mailbox[REPORT_AT:REPORT_AT + size]
            mailbox[REPORT_AT:REPORT_AT + size] = bytes(size)
        else:
            sample_id = mailbox[8:8 + id_size].decode("utf-8", "replace")
            data = fitted(_unreported(job, sample_id, os.waitstatus_to_exitcode(status)))
        control.socket.sendall(data)


def _judge_one(judge: Any, job: messages.DriverJob, control: Control, mailbox: mmap.mmap, template: int) -> None:
    """A judge of exactly one sample, forked from the template ahead of its request; ends the process, never
    returns. It says whom it judges (in case it ends without a report), then leaves its report to be passed on."""
    code = 1
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the template ended (the supervisor stopped it): so does this
        if os.getppid() != template:
            return
        while True:
            try:
                header, fds, _ = control.receive()
            except SystemExit:  # the supervisor ended this driver's batch
                code = 0
                return
            try:
                request = messages.from_dict(messages.Judge, header)
                break
            except messages.MessageError:  # a case's run meant for a judge that has ended: nobody asks now
                for fd in fds:
                    os.close(fd)
        sample_id = request.sample_id.encode("utf-8", "surrogatepass")[:SAMPLE_ID_BYTES]
        mailbox[8:8 + len(sample_id)] = sample_id
        mailbox[:4] = len(sample_id).to_bytes(4, "big")
        link = SampleLink(fds[0], fds[1], job.reply_max_bytes) if fds else None
        try:
            report = judge.judge(request.sample_id, link, control)
        except Exception as exc:  # only a sample's values vary between samples: it is charged with this
            report = messages.Judged(sample_id=request.sample_id, load="loaded",
                                     sample_fault=f"the test driver failed judging this sample: {describe(exc)}")
        finally:
            if link is not None:
                link.close()
        data = fitted(report)
        mailbox[REPORT_AT:REPORT_AT + len(data)] = data
        mailbox[4:8] = len(data).to_bytes(4, "big")
        code = 0
    except BaseException:
        try:
            traceback.print_exc()
        except BaseException:
            pass
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        os._exit(code)


def _unreported(job: messages.DriverJob, sample_id: str, status: int) -> messages.Judged:
    """What the template says for a judge that ended without a report."""
    how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
    if job.tests.form == "stdio" and job.tests.checker is not None:  # nothing else of the problem's ran there
        return messages.Judged(sample_id=sample_id, load="loaded",
                               test_fault=f"the problem's checker ended the test driver's process ({how})")
    return messages.Judged(sample_id=sample_id, load="loaded",
                           sample_fault=f"the test driver's process ended while judging this sample ({how})")


def _end_leftovers() -> None:
    """Kill and reap every process a judge left behind (they are this template's children now)."""
    me = os.getpid()
    deadline = time.monotonic() + LEFTOVER_DEADLINE_S
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0]:
                continue
        except ChildProcessError:
            return  # no child left
        if time.monotonic() > deadline:  # unreachable but for a kernel fault: never take a request with one alive
            os._exit(3)
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat", "rb") as handle:
                        stat = handle.read()
                    if int(stat[stat.rindex(b")") + 2:].split()[1]) == me:
                        os.kill(int(name), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
        time.sleep(0.001)


PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 1, 4, 36
SAMPLE_ID_BYTES = 1024       # a job id: at most 200 characters
REPORT_AT = 8 + SAMPLE_ID_BYTES  # the mailbox: sizes of the sample id and of the report, the id, the report
MAILBOX_BYTES = REPORT_AT + messages.JUDGED_MAX_BYTES
LEFTOVER_DEADLINE_S = 3.0
_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}, {value}) failed")
