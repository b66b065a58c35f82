"""Phase 1, inside the sandbox: run the untrusted program and record what it returns.

Runs in a child forked by the zygote: executes the program, then each test's call-only version
with the program's functions wrapped by recorders. Records go to file descriptor 3, one JSON
line per event. Everything written there is treated as untrusted by the supervisor: the
program can forge it, but it can only forge values that the checker then judges.
"""

from __future__ import annotations

import json
import os
import random
import time

import replay
import values

TYPE_CHECKING = False  # importing typing costs ~4 ms per process under gVisor
if TYPE_CHECKING:
    from typing import Any, Callable


# Bound before the program runs, so a program that patches `json` or `os` does not break its own record.
_encode_json = json.JSONEncoder(separators=(",", ":")).encode


class Recorder:
    def __init__(self, out: Any) -> None:
        self.out = out
        self.calls: list[dict[str, Any]] = []
        self.counters: dict[str, int] = {}

    def emit(self, event: dict[str, Any]) -> None:
        self.out.write(_encode_json(event) + "\n")
        self.out.flush()

    def wrap(self, function: Callable[..., Any], label: str) -> Callable[..., Any]:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            key = replay.call_key(label, args, kwargs, self.counters)
            state = random.getstate()  # the program's use of `random` must not shift the test's inputs,
            random.seed()              # and the program gets fresh randomness (so reruns can expose flakiness)
            try:
                result = function(*args, **kwargs)
            except BaseException as exc:
                self.calls.append({"k": key, "e": replay.describe_exception(exc)})
                raise
            finally:
                random.setstate(state)
            self.calls.append({"k": key, "r": values.encode(result)})
            return result

        return recorded


def _traceback() -> str:
    import traceback  # only on the error path: imports cost milliseconds under gVisor

    return traceback.format_exc(limit=5)[-2000:]


def run(job: dict[str, Any], record_fd: int) -> None:
    """Load the program and record every test's calls to ``record_fd`` (one JSON line per event)."""
    out = os.fdopen(record_fd, "w", buffering=1)
    recorder = Recorder(out)
    program: dict[str, Any] = {}
    try:
        exec(compile(job["program"], "<program>", "exec"), program)
    except BaseException as exc:  # the program's own error: SyntaxError, exceptions, even SystemExit
        recorder.emit({"event": "program_error", "error": replay.describe_exception(exc),
                       "traceback": _traceback()})
        return
    entry = program.get(job["entry_point"])
    if not callable(entry):
        recorder.emit({"event": "missing_entry_point"})
        return
    recorder.emit({"event": "loaded"})
    for index, test in enumerate(job["tests"]):
        run_test(recorder, program, job, index, test)
    recorder.emit({"event": "end"})


def run_test(recorder: Recorder, program: dict[str, Any], job: dict[str, Any], index: int,
             test: dict[str, str]) -> None:
    recorder.calls, recorder.counters = [], {}
    namespace: dict[str, Any] = {}
    for name in job["untrusted_names"]:
        if name in program:
            value = program[name]
            namespace[name] = recorder.wrap(value, name) if callable(value) else value
    for name in job.get("prelude_names", []):  # helpers the checker takes from the trusted prelude
        if name in program:
            namespace[name] = program[name]
    started = time.perf_counter()
    outcome = "ok"
    try:
        exec(replay.compile_test(test["source"], test["name"]), namespace)
        replay.seed_for_test(index)
        namespace[replay.TEST_FUNCTION](recorder.wrap(program[job["entry_point"]], job["entry_point"]))
    except BaseException as exc:
        outcome = "raised: " + ": ".join(replay.describe_exception(exc))
    recorder.emit({"event": "test", "name": test["name"], "calls": recorder.calls, "outcome": outcome[:600],
                   "duration_s": round(time.perf_counter() - started, 6)})

