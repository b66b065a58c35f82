"""What the candidate and checker processes share: call keys and test execution (stdlib only).

A *test* arrives as source that defines ``__sandbox_test__(candidate)``. The candidate process
runs a version of it that only calls the program (its assertions removed) and records every
call's arguments and result; the checker process runs the full version with each call answered
from that record. Calls are matched by their encoded arguments, so evaluation order need not agree.
"""

from __future__ import annotations

import builtins
import json
import random
import values

TYPE_CHECKING = False  # importing typing costs ~4 ms per process under gVisor
if TYPE_CHECKING:
    from typing import Any

TEST_FUNCTION = "__sandbox_test__"
_encode_key = json.JSONEncoder(sort_keys=True).encode  # bound before any program can patch json


def call_key(label: str, args: tuple[Any, ...], kwargs: dict[str, Any], counters: dict[str, int]) -> str:
    """Key a call by its encoded arguments, or by call position when they cannot be encoded."""
    encoded = _encode_key(values.encode([list(args), kwargs]))
    if '"unsupported"' in encoded:
        counters[label] = counters.get(label, 0) + 1
        return f"{label}#{counters[label]}"
    return f"{label}:{encoded}"


def seed_for_test(index: int) -> None:
    """Both processes start each test from the same random state, so generated inputs agree."""
    random.seed(1_000_003 * (index + 1))


def compile_test(source: str, name: str) -> Any:
    return compile(source, f"<test {name}>", "exec")


def describe_exception(exc: BaseException) -> list[str]:
    return [type(exc).__name__, str(exc)[:500]]


class CandidateError(Exception):
    """Replays an exception whose type is not a builtin exception class."""


def rebuild_exception(type_name: str, message: str) -> BaseException:
    """Re-raise a recorded exception as its builtin type where possible (for tests that expect one)."""
    kind = getattr(builtins, type_name, None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            return kind(message)
        except Exception:  # builtin exception types with unusual constructors (UnicodeError...)
            pass
    return CandidateError(f"{type_name}: {message}")
