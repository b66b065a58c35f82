"""Named output comparisons, for stdio cases and call-based cases (stdlib only; the driver runs them).

A comparator answers ``(passed, why)``: ``why`` is a short explanation when it did not pass. A new
comparison is a new entry in ``STDIO`` or ``CALLS``. Peer tools compare differently, and their
rules are here under their own names so a paper's numbers can be reproduced:

* ``exact``: byte for byte (after decoding as UTF-8).
* ``lines``: trailing whitespace on each line and trailing blank lines ignored (most online judges).
* ``tokens``: the whitespace-separated tokens are equal.
* ``float``: tokens equal, or both numbers within ``tolerance`` (absolute or relative). A number is
  what testlib's ``readDouble`` reads (``stringToDouble``): ASCII digits with an optional sign, point and
  exponent, nothing else (no ``nan``, ``inf``, hex, ``_`` separators or other scripts' digits, all of which
  Python's ``float()`` would take); other tokens must be equal as text.
* ``apps``: the APPS reference harness's rules (hendrycks/apps ``eval/testing_util.py``), in order:
  whole outputs equal after stripping; lines equal after dropping empty ones and stripping each;
  every line a float and ``numpy.allclose``; each line's *set* of tokens equal (order within a line
  and duplicates ignored), also after rounding numbers to 3 decimals. Numbers are what Python's
  ``float()`` reads, as in that harness (``1_0`` and fullwidth digits included): kept on purpose.
* ``livecodebench``: LiveCodeBench's rules (``lcb_runner/evaluation/testing_util.py``): outputs
  stripped, split into lines, each line stripped; same number of lines; each line equal, or all
  its tokens parse as decimals and the decimals are equal (``decimal.Decimal``, as that harness parses
  them: it too takes ``1_0`` and other scripts' digits).

Call-based: ``exact`` (equal with exact types all the way down: ``True`` is not ``1`` nor ``1.0``;
a returned tuple counts as a list), ``apps`` (Python's ``==``, as the APPS harness compares, also
against the expected value unwrapped from its one-element list, and a list of tuples against
lists), ``livecodebench`` (Python's ``==`` after tuple -> list).

Inline tests (tests in the program's own language, one run; ``INLINE``): ``exit_zero`` (exit status
0 and the nonce printed after the last test: MultiPL-E's rule, and HumanEval-X's for C++, Java,
Go and Rust) and ``silent`` (also no other output on stdout or stderr: HumanEval-X's JavaScript
rule, whose ``console.assert`` prints and exits 0).
"""

from __future__ import annotations

import decimal
import math
import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

Verdict = tuple  # (passed: bool, why: str)


def _short(text: str, limit: int = 60) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit] + "..."


def _first_difference(got: list[str], want: list[str]) -> str:
    for line, (a, b) in enumerate(zip(got, want), start=1):
        if a != b:
            return f"line {line}: got {_short(a)!r}, expected {_short(b)!r}"
    return f"got {len(got)} line(s), expected {len(want)}"


def exact(output: str, expected: str, tolerance: float) -> Verdict:
    if output == expected:
        return True, ""
    return False, _first_difference(output.split("\n"), expected.split("\n"))


def _judge_lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def lines(output: str, expected: str, tolerance: float) -> Verdict:
    got, want = _judge_lines(output), _judge_lines(expected)
    return (True, "") if got == want else (False, _first_difference(got, want))


def tokens(output: str, expected: str, tolerance: float) -> Verdict:
    got, want = output.split(), expected.split()
    if got == want:
        return True, ""
    return False, _first_difference(got, want).replace("line", "token")


# testlib's stringToDouble: only [0-9.eE+-], at least one digit, the whole token read by sscanf("%lf"), and
# NaN refused; i.e. this grammar, in ASCII ([0-9], never \d, which matches any script's digits). Overflow reads as
# an infinity there (HUGE_VAL) and here (float()).
_TESTLIB_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def testlib_number(token: str) -> float | None:
    """The token as testlib's ``readDouble`` reads it, or None where testlib reads no number."""
    return float(token) if _TESTLIB_NUMBER.fullmatch(token) else None


def _close(a: str, b: str, tolerance: float) -> bool:
    if a == b:
        return True
    x, y = testlib_number(a), testlib_number(b)
    if x is None or y is None:
        return False
    if math.isinf(x) or math.isinf(y):  # no NaN reaches here: the grammar has no letters
        return x == y
    return abs(x - y) <= tolerance or abs(x - y) <= tolerance * max(abs(x), abs(y))


def floats(output: str, expected: str, tolerance: float) -> Verdict:
    got, want = output.split(), expected.split()
    if len(got) != len(want):
        return False, f"got {len(got)} token(s), expected {len(want)}"
    for index, (a, b) in enumerate(zip(got, want), start=1):
        if not _close(a, b, tolerance):
            return False, f"token {index}: got {_short(a)!r}, expected {_short(b)!r} (tolerance {tolerance:g})"
    return True, ""


def apps(output: str, expected: str, tolerance: float) -> Verdict:
    got = output.splitlines()  # APPS captures the program's output as a list of lines
    if "\n".join(got).strip() == expected.strip() or "\n".join(x.strip() for x in got).strip() == expected.strip():
        return True, ""
    if got == [expected]:
        return True, ""
    want = [x.strip() for x in expected.split("\n") if x]
    if got == want:
        return True, ""
    got = [x for x in got if x]
    if got == want:
        return True, ""
    try:
        got_f, want_f = [float(x) for x in got], [float(x) for x in want]
        if len(got_f) == len(want_f) and all(abs(a - b) <= 1e-08 + 1e-05 * abs(b) for a, b in zip(got_f, want_f)):
            return True, ""
    except ValueError:
        pass
    got_sets = {frozenset(x.split()) for x in got if x.split()}
    want_sets = {frozenset(x.split()) for x in want}
    if got_sets == want_sets:
        return True, ""
    try:
        if {frozenset(round(float(t), 3) for t in s) for s in got_sets} == \
                {frozenset(round(float(t), 3) for t in s) for s in want_sets}:
            return True, ""
    except ValueError:
        pass
    return False, _first_difference(got, want)


def livecodebench(output: str, expected: str, tolerance: float) -> Verdict:
    got = [line.strip() for line in output.strip().split("\n")]
    want = [line.strip() for line in expected.strip().split("\n")]
    if len(got) != len(want):
        return False, f"got {len(got)} line(s), expected {len(want)}"
    for index, (a, b) in enumerate(zip(got, want), start=1):
        if a == b:
            continue
        try:
            if [decimal.Decimal(t) for t in a.split()] == [decimal.Decimal(t) for t in b.split()]:
                continue
        except decimal.InvalidOperation:
            pass
        return False, f"line {index}: got {_short(a)!r}, expected {_short(b)!r}"
    return True, ""


STDIO: dict[str, Callable[[str, str, float], Verdict]] = {
    "exact": exact, "lines": lines, "tokens": tokens, "float": floats, "apps": apps, "livecodebench": livecodebench,
}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _same(result: Any, expected: Any) -> bool:
    """``==`` with exact types all the way down (``True`` is not ``1``, ``1.0`` is not ``1``); a tuple
    stands for a list, as JSON cannot tell them apart."""
    result = _plain(result)
    if type(result) is not type(expected):
        return False
    if isinstance(expected, list):
        return len(result) == len(expected) and all(_same(r, e) for r, e in zip(result, expected))
    if isinstance(expected, dict):
        return result.keys() == expected.keys() and all(_same(result[key], expected[key]) for key in expected)
    return bool(result == expected)


def call_exact(result: Any, expected: Any) -> Verdict:
    if _same(result, expected):
        return True, ""
    return False, f"returned {_short(repr(_plain(result)))}, expected {_short(repr(expected))}"


def call_equal(result: Any, expected: Any) -> Verdict:
    """Python's ``==`` after tuple -> list, as LiveCodeBench compares (``True == 1`` holds there)."""
    result = _plain(result)
    return (True, "") if result == expected else (False, f"returned {_short(repr(result))}, expected {_short(repr(expected))}")


def call_apps(result: Any, expected: Any) -> Verdict:
    result = _plain(result)
    if result == expected:
        return True, ""
    if isinstance(expected, list) and expected:
        if result == expected[0]:
            return True, ""
        if isinstance(result, list) and result and isinstance(result[0], tuple) \
                and [list(x) for x in result] == expected[0]:
            return True, ""
    return False, f"returned {_short(repr(result))}, expected {_short(repr(expected))}"


CALLS: dict[str, Callable[[Any, Any], Verdict]] = {
    "exact": call_exact, "apps": call_apps, "livecodebench": call_equal,
}


def _finished(exit_status: Any, stdout: str, nonce: str) -> Verdict:
    if exit_status != 0:
        return False, f"the tests failed: exit status {exit_status}"
    if nonce not in stdout.splitlines():
        return False, "the program ended before its tests did (exit status 0, but the tests' end was never reached)"
    return True, ""


def inline_exit_zero(exit_status: Any, stdout: str, stderr: str, nonce: str) -> Verdict:
    return _finished(exit_status, stdout, nonce)


def inline_silent(exit_status: Any, stdout: str, stderr: str, nonce: str) -> Verdict:
    passed, why = _finished(exit_status, stdout, nonce)
    if not passed:
        return passed, why
    said = "\n".join(line for line in stdout.splitlines() if line != nonce).strip() or stderr.strip()
    return (False, f"the tests printed {_short(said)}") if said else (True, "")


INLINE: dict[str, Callable[[Any, str, str, str], Verdict]] = {
    "exit_zero": inline_exit_zero, "silent": inline_silent,
}
