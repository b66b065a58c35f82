"""Phase 2, inside the sandbox: judge recorded results in a process that never ran the program.

Forked by the zygote only after every process of the program is gone. It executes the trusted
prelude (the problem's prompt, when the job gives one) and each test's full source, answering every
call of a program function from the record. Values come back with exact plain types, so objects
with a forged ``__eq__``, patched builtins or a patched ``AssertionError`` cannot reach this process.
"""

from __future__ import annotations

import collections
import traceback

import replay
import values

TYPE_CHECKING = False  # importing typing costs ~4 ms per process under gVisor
if TYPE_CHECKING:
    from typing import Any, Callable


class ReplayMismatch(Exception):
    """The test made a call the program's run never answered (nondeterministic test or early stop)."""


def replayer(label: str, calls: dict[str, collections.deque[Any]], counters: dict[str, int]) -> Callable[..., Any]:
    def replayed(*args: Any, **kwargs: Any) -> Any:
        key = replay.call_key(label, args, kwargs, counters)
        queue = calls.get(key)
        if not queue:
            raise ReplayMismatch(f"{label}() was not called with these arguments in the program's run")
        call = queue.popleft()
        if "e" in call:
            raise replay.rebuild_exception(*call["e"][:2])
        return values.decode(call["r"])

    return replayed


def judge(job: dict[str, Any], prelude: Any, index: int, test: dict[str, str], record: dict[str, Any]) -> dict[str, str]:
    calls: dict[str, collections.deque[Any]] = collections.defaultdict(collections.deque)
    for call in record.get("calls", []):
        if isinstance(call, dict) and isinstance(call.get("k"), str):
            calls[call["k"]].append(call)
    counters: dict[str, int] = {}
    namespace: dict[str, Any] = {}
    try:
        if prelude is not None:
            exec(prelude, namespace)
        for name in job["untrusted_names"]:
            namespace[name] = replayer(name, calls, counters)
        exec(replay.compile_test(test["source"], test["name"]), namespace)
        replay.seed_for_test(index)
        namespace[replay.TEST_FUNCTION](replayer(job["entry_point"], calls, counters))
    except AssertionError as exc:
        return {"status": "failed", "message": _assertion_message(exc, test["source"])}
    except Exception as exc:
        return {"status": "error", "message": ": ".join(replay.describe_exception(exc))}
    return {"status": "passed", "message": ""}


def _assertion_message(exc: AssertionError, source: str) -> str:
    if str(exc):
        return f"AssertionError: {str(exc)[:300]}"
    lines = source.splitlines()
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.startswith("<test ") and frame.lineno and frame.lineno <= len(lines):
            return f"assertion failed: {lines[frame.lineno - 1].strip()[:300]}"
    return "assertion failed"


def run(job: dict[str, Any]) -> dict[str, dict[str, dict[str, str]]]:
    """Judge every sample's record of every test: {sample id: {test name: {status, message}}}."""
    prelude = None
    if job.get("prelude"):
        prelude = compile(job["prelude"], "<prelude>", "exec")
    verdicts: dict[str, dict[str, dict[str, str]]] = {}
    for sample in job["samples"]:
        per_test = verdicts[sample["id"]] = {}
        for index, test in enumerate(job["tests"]):
            record = sample["records"].get(test["name"])
            if record is not None:
                per_test[test["name"]] = judge(job, prelude, index, test, record)
    return verdicts
