from __future__ import annotations

import collections
import math
import sys

import numpy
import pytest

import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "sandbox" / "harness"))
import values  # noqa: E402  (the harness imports its siblings as top-level modules)



@pytest.mark.parametrize("value", [
    None, True, False, 0, -7, 10**40, 1.5, -0.0, float("inf"), 1e-300, complex(1, -2), "", "héllo", b"\x00\xff",
    [1, [2, (3, "x")]], (1,), {1, 2, 3}, frozenset({"a"}), {"a": [1, 2], 3: None}, {(1, 2): {"x": 1.0}},
])
def test_plain_values_round_trip_with_exact_types(value: object) -> None:
    decoded = values.decode(values.encode(value))
    assert decoded == value
    assert type(decoded) is type(value)


def test_nan_round_trips() -> None:
    assert math.isnan(values.decode(values.encode(float("nan"))))


def test_bool_and_int_stay_distinct() -> None:
    assert type(values.decode(values.encode(True))) is bool
    assert type(values.decode(values.encode(1))) is int


def test_dict_subclasses_become_plain_dicts() -> None:
    counter = collections.Counter("aab")
    assert values.decode(values.encode(counter)) == {"a": 2, "b": 1}


class AlwaysEqual:
    def __eq__(self, other: object) -> bool:
        return True


class SneakyInt(int):
    def __eq__(self, other: object) -> bool:
        return True


@pytest.mark.parametrize("value", [AlwaysEqual(), SneakyInt(3), [1, AlwaysEqual()], (x for x in [1])])
def test_unknown_types_never_compare_equal(value: object) -> None:
    decoded = values.decode(values.encode(value))
    assert decoded != 3 and decoded != [1, 3] and decoded != [1, 1] and decoded != [1]


def test_numpy_values_keep_dtype_and_compare_by_value() -> None:
    array = values.decode(values.encode(numpy.array([1, 2, 3], dtype=numpy.int32)))
    assert array.dtype == numpy.int32 and array.tolist() == [1, 2, 3]
    scalar = values.decode(values.encode(numpy.float64(2.5)))
    assert scalar == 2.5 and isinstance(scalar, numpy.float64)


def test_malformed_records_decode_to_unsupported() -> None:
    for junk in [{}, {"t": "int", "v": "x"}, {"t": "nope", "v": 1}, "string", {"t": "str", "v": 5}]:
        assert isinstance(values.decode(junk), values.Unsupported)


def test_self_referential_value_is_refused_not_looped() -> None:
    loop: list[object] = []
    loop.append(loop)
    assert isinstance(values.decode(values.encode(loop)), list)  # depth cap turns the tail unsupported
