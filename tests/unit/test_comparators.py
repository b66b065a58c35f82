"""Each named comparison on its edge cases (pure logic; the driver runs these inside the sandbox)."""

from __future__ import annotations

import pytest

from sandbox.harness import comparators

STDIO = comparators.STDIO


def passes(name: str, output: str, expected: str, tolerance: float = 1e-6) -> bool:
    return bool(STDIO[name](output, expected, tolerance)[0])


@pytest.mark.parametrize("name, output, expected, verdict", [
    ("exact", "3\n", "3\n", True),
    ("exact", "3", "3\n", False),
    ("exact", "3 \n", "3\n", False),
    ("lines", "3  \n4\t\n\n\n", "3\n4\n", True),           # trailing whitespace and blank lines at the end
    ("lines", " 3\n", "3\n", False),                        # leading whitespace counts
    ("lines", "3\n\n4\n", "3\n4\n", False),                 # a blank line inside counts
    ("tokens", "1  2\n3\n", "1 2 3", True),
    ("tokens", "1 2", "1 2 3", False),
    ("float", "1e-9", "0.000000001", True),
    ("float", "0.1000001", "0.1", True),                    # within 1e-6
    ("float", "0.10001", "0.1", False),
    ("float", "-0", "0", True),
    ("float", "nan", "nan", True),
    ("float", "nan", "1", False),
    ("float", "inf", "inf", True),
    ("float", "YES", "YES", True),
    ("float", "YES", "NO", False),
    ("apps", "  3\n4  \n", "3\n4", True),                    # whole output stripped, lines stripped
    ("apps", "3\n\n4\n", "3\n4\n", True),                    # empty lines dropped
    ("apps", "1.0000001\n", "1.0\n", True),                  # numpy.allclose
    ("apps", "2 1\n", "1 2\n", True),                        # a line's tokens as a set: order inside a line ignored
    ("apps", "1 1 2\n", "1 2\n", True),                      # ... and duplicates too (APPS's leniency)
    ("apps", "0.1234\n", "0.1231\n", True),                  # numbers rounded to 3 decimals
    ("apps", "1\n2\n", "2\n1\n", True),                      # lines as a set of token sets
    ("apps", "1 2\n", "1 3\n", False),
    ("livecodebench", " 3 \n4\n", "3\n4", True),
    ("livecodebench", "1.50\n", "1.5\n", True),              # decimals compared by value
    ("livecodebench", "2 1\n", "1 2\n", False),              # order matters
    ("livecodebench", "3\n4\n5\n", "3\n4\n", False),
    ("livecodebench", "1e-9\n", "0.000000001\n", True),
])
def test_stdio_comparators(name: str, output: str, expected: str, verdict: bool) -> None:
    assert passes(name, output, expected) is verdict


def test_a_wrong_answer_says_where() -> None:
    ok, why = STDIO["lines"]("1\n2\n9\n", "1\n2\n3\n", 0)
    assert not ok and "line 3" in why and "'9'" in why and "'3'" in why


@pytest.mark.parametrize("name, result, expected, verdict", [
    ("exact", (1, 2), [1, 2], True),                         # a tuple returned for a list: both harnesses accept
    ("exact", [1, 2], [[1, 2]], False),
    ("apps", [1, 2], [[1, 2]], True),                        # APPS: the expected value unwrapped
    ("apps", [(1, 2)], [[[1, 2]]], True),                    # ... and tuples inside against lists
    ("apps", 3, [4], False),
    ("livecodebench", (0, 1), [0, 1], True),
    ("livecodebench", 1.0, 1, True),
    ("livecodebench", True, 1, True),                        # LiveCodeBench's plain ==
    ("exact", True, 1, False),                               # exact: bool is not int ...
    ("exact", 1.0, 1, False),                                # ... nor float int ...
    ("exact", [True, False], [1, 0], False),                 # ... at any depth
    ("exact", {"a": (1, 2)}, {"a": [1, 2]}, True),
    ("exact", {"a": 1.0}, {"a": 1}, False),
    ("exact", {1: 2}, {"1": 2}, False),
    ("exact", float("nan"), float("nan"), False),
])
def test_call_comparators(name: str, result: object, expected: object, verdict: bool) -> None:
    assert comparators.CALLS[name](result, expected)[0] is verdict


# -- numbers as the claimed judges read them ----------------------------------------------------------
@pytest.mark.parametrize("output, expected, verdict", [
    ("1_0", "10", False),            # Python's float() reads 10; testlib's readDouble reads no number
    ("１０", "10", False),            # fullwidth digits: float() reads 10
    ("٣", "3", False),               # Arabic-Indic digit
    ("1e1", "10", True),
    ("+10", "10", True),
    (".5", "0.5", True),
    ("5.", "5", True),
    ("-.5e+1", "-5", True),
    ("1e", "1", False),              # sscanf would stop before the 'e': the token is not a number
    ("0x10", "16", False),           # hex: letters are not allowed
    ("infinity", "inf", False),      # neither reads as a number in testlib: text, and unequal
    ("NaN", "nan", False),
    ("1e999", "2e999", True),        # both overflow to +infinity (sscanf's HUGE_VAL), equal as testlib has it
    ("1e999", "-1e999", False),
    ("1.0000001", "1_0.0000001", False),
])
def test_float_reads_numbers_as_testlib_does(output: str, expected: str, verdict: bool) -> None:
    assert passes("float", output, expected) is verdict


@pytest.mark.parametrize("token, value", [("10", 10.0), ("-0.5", -0.5), ("1E+2", 100.0), ("1_0", None), ("１", None),
                                          ("nan", None), ("inf", None), ("", None), ("1 ", None), ("1\n", None),
                                          ("--1", None), ("1.2.3", None), ("e5", None)])
def test_testlib_number_grammar(token: str, value: float | None) -> None:
    assert comparators.testlib_number(token) == value


def test_apps_and_livecodebench_keep_their_harnesses_number_parsing() -> None:
    # The APPS harness compares all-number outputs by numpy.allclose over Python's float() of each line, and
    # LiveCodeBench by decimal.Decimal of each token; both read '1_0' and fullwidth digits as numbers. Matching
    # those harnesses means accepting what they accept.
    assert passes("apps", "1_0\n", "10\n")
    assert passes("apps", "１０\n", "10\n")
    assert passes("livecodebench", "1_0\n", "10\n")
    assert not passes("float", "1_0\n", "10\n")
