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
import json
import os
import random
import re
import socket
import sys
import time
import traceback

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
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
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
        encoded = values.encode(value, lambda v: v._handle if type(v) is RemoteObject else None)
        if '"unsupported"' in _dumps(encoded):
            raise TestArgumentError(f"the test passed a {type(value).__name__} to the program; only plain data can "
                                    "cross into the sample's process")
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
            module_name = description.get("name")
            if type(module_name) is str and _MODULE_NAME.match(module_name):
                try:
                    return __import__(module_name, fromlist=["_"])  # the image's own module, never the program's
                except Exception:
                    pass
            return values.Unsupported(f"a module the test driver cannot import ({str(module_name)[:60]})")
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
        return self.member(reply.get("value"), name, ref)

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
class Judge:
    def __init__(self, job: messages.DriverJob) -> None:
        self.job = job
        self.prelude = compile(job.prelude, "<prompt>", "exec") if job.prelude else None
        self.units = [compile(unit.source, TEST_FILENAME, "exec") for unit in job.units]

    def judge(self, sample_id: str, link: SampleLink) -> messages.Judged:
        job = self.job
        result = {"sample_id": sample_id, "load": "no_report"}
        try:
            loaded = link.loaded()
            if loaded.get("ok") is not True:
                error = loaded.get("error") if type(loaded.get("error")) is dict else {}
                text = clean(f"{error.get('type', 'Error')}: {error.get('message', '')}", 1000)
                trace = loaded.get("traceback")
                if type(trace) is str and trace:
                    text += "\n" + clean(trace, 3000)
                return messages.Judged(sample_id=sample_id, load="program_error", load_error=text)
            result["load"] = "loaded"
            names = link.resolve(tuple(dict.fromkeys((*job.program_names, job.entry_point))))
        except SampleGone:
            return messages.Judged(**result, sample_fault=link.fault)
        if names[job.entry_point] is MISSING:
            return messages.Judged(sample_id=sample_id, load="missing_entry_point",
                                   load_error=f"the program does not define {job.entry_point!r}")
        namespace: dict[str, Any] = {"__name__": "__test__", "__builtins__": builtins}
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
        recorder = Recorder(job.stop_on_first_failure)
        namespace["__sandbox__"] = recorder
        del values.REFUSED[:]
        entry = names[job.entry_point]
        if job.form == "check":
            completed, stopped, test_fault = self._run_check(namespace, entry, recorder)
        else:
            completed, stopped, test_fault = self._run_snippets(namespace, entry, recorder)
        link.end()
        unsupported = recorder.unsupported or (clean(values.REFUSED[0]) if values.REFUSED else "")
        return messages.Judged(sample_id=sample_id, load="loaded", outcomes=recorder.outcomes(), completed=completed,
                               stopped=stopped, sample_fault=link.fault, unsupported=unsupported,
                               test_fault=test_fault)

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
        if isinstance(escaped, Abort):
            return False, clean(str(escaped)), ""
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


def main() -> None:
    boot = protocol.FrameReader(BOOT_FD, 1 << 30).read()
    os.close(BOOT_FD)
    job = messages.from_dict(messages.DriverJob, json.loads(boot or b"{}"))
    judge = Judge(job)
    control = socket.socket(fileno=CONTROL_FD)
    sys.setrecursionlimit(10_000)
    while True:
        data, fds, _, _ = socket.recv_fds(control, 1 << 16, 2)
        if not data:
            return
        request = messages.from_dict(messages.Judge, json.loads(data))
        link = SampleLink(fds[0], fds[1], job.reply_max_bytes)
        try:
            report = judge.judge(request.sample_id, link)
        except Exception as exc:  # only a sample's values vary between samples: it is charged with this
            report = messages.Judged(sample_id=request.sample_id, load="loaded",
                                     sample_fault=f"the test driver failed judging this sample: {describe(exc)}")
        finally:
            link.close()
        control.sendall(_dumps(messages.to_dict(report)).encode())
