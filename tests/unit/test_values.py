"""The exact-type codec between a sample's process and the test driver (pure logic)."""

from __future__ import annotations

import collections
import decimal
import fractions
import math
import pathlib
import sys
import types

import numpy
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "sandbox" / "harness"))
import values  # noqa: E402  (the harness imports its siblings as top-level modules)


def round_trip(value: object) -> object:
    return values.decode(values.encode(value))


@pytest.mark.parametrize("value", [
    None, True, False, 0, -7, 10**40, 1.5, -0.0, float("inf"), 1e-300, complex(1, -2), "", "héllo", "\ud800",
    b"\x00\xff", bytearray(b"ab"), [1, [2, (3, "x")]], (1,), {1, 2, 3}, frozenset({"a"}), {"a": [1, 2], 3: None},
    {(1, 2): {"x": 1.0}}, range(2, 10, 3), fractions.Fraction(1, 3), decimal.Decimal("1.10"),
    collections.OrderedDict([("b", 1), ("a", 2)]), collections.Counter("aab"), collections.deque([1, 2], maxlen=3),
])
def test_plain_values_round_trip_with_exact_types(value: object) -> None:
    decoded = round_trip(value)
    assert decoded == value
    assert type(decoded) is type(value)


def test_floats_are_bit_exact() -> None:
    assert math.isnan(round_trip(float("nan")))  # type: ignore[arg-type]
    assert math.copysign(1, round_trip(-0.0)) == -1  # type: ignore[arg-type]
    assert round_trip(0.1 + 0.2) == 0.1 + 0.2


def test_huge_ints_cross_without_the_digit_limit() -> None:
    big = 7 ** 20_000  # str() of this raises under Python's 4300-digit limit; hex does not
    assert round_trip(big) == big


def test_counting_and_ordered_dicts_keep_their_semantics() -> None:
    counter = round_trip(collections.Counter({"a": 2, "b": 0}))
    assert type(counter) is collections.Counter and counter["zzz"] == 0 and counter == collections.Counter(a=2)
    ordered = round_trip(collections.OrderedDict([("b", 1), ("a", 2)]))
    assert ordered != collections.OrderedDict([("a", 2), ("b", 1)])  # order matters between OrderedDicts
    default = round_trip(collections.defaultdict(list, {"k": [1]}))
    assert type(default) is collections.defaultdict and default["missing"] == []


def test_iterators_and_generators_are_drained_and_rebuilt() -> None:
    gen = round_trip(x * x for x in range(4))
    assert isinstance(gen, types.GeneratorType) and list(gen) == [0, 1, 4, 9]
    it = round_trip(iter([3, 1]))
    assert tuple(it) == (3, 1)  # type: ignore[arg-type]
    assert list(round_trip(map(str, [1, 2]))) == ["1", "2"]  # type: ignore[call-overload]
    assert round_trip({1: 2}.keys()) == {1}


class AlwaysEqual:
    def __eq__(self, other: object) -> bool:
        return True


class SneakyInt(int):
    def __eq__(self, other: object) -> bool:
        return True


@pytest.mark.parametrize("value", [AlwaysEqual(), SneakyInt(3), collections.namedtuple("P", "x")(1),
                                   collections.defaultdict(lambda: 5)])
def test_unknown_types_refuse_every_use(value: object) -> None:
    decoded = round_trip(value)
    assert isinstance(decoded, values.Unsupported)
    for use in (lambda: decoded == 3, lambda: decoded != 3, lambda: bool(decoded), lambda: hash(decoded),
                lambda: len(decoded), lambda: decoded < 1, lambda: list(decoded), lambda: decoded.real):
        with pytest.raises(values.UnsupportedUse):
            use()
    # Not an Exception: a test's own `except Exception` cannot turn the refusal into a pass.
    assert not issubclass(values.UnsupportedUse, Exception)


def test_unknown_types_inside_containers_are_refused_too() -> None:
    decoded = round_trip([1, AlwaysEqual()])
    with pytest.raises(values.UnsupportedUse):
        assert decoded == [1, 3]


def test_numpy_values_keep_dtype_and_shape() -> None:
    array = round_trip(numpy.arange(6, dtype=numpy.int32).reshape(2, 3))
    assert array.dtype == numpy.int32 and array.shape == (2, 3) and array.tolist() == [[0, 1, 2], [3, 4, 5]]  # type: ignore[attr-defined]
    scalar = round_trip(numpy.float64(2.5))
    assert scalar == 2.5 and isinstance(scalar, numpy.float64)


@pytest.mark.parametrize("junk", [
    {}, {"t": "int", "v": "x"}, {"t": "nope", "v": 1}, "string", {"t": "str", "v": 5}, {"t": "list", "v": 3},
    {"t": "ndarray", "dtype": "O", "shape": [1], "v": {"t": "list", "v": []}}, {"t": "defaultdict", "v": [], "factory": "os"},
    {"t": "ref", "v": 1}, {"t": "atom", "v": 3}, {"t": "Decimal", "v": "nonsense"},
])
def test_malformed_data_is_refused(junk: object) -> None:
    with pytest.raises(values.MalformedValue):
        values.decode(junk)


def test_deep_nesting_is_refused_not_a_crash() -> None:
    data: object = {"t": "int", "v": "0x1"}
    for _ in range(100_000):
        data = {"t": "list", "v": [data]}
    with pytest.raises(values.MalformedValue):
        values.decode(data)


def test_self_referential_value_is_cut_off_not_looped() -> None:
    loop: list[object] = []
    loop.append(loop)
    decoded = round_trip(loop)
    assert isinstance(decoded, list)  # the depth cap turns the tail unsupported


def test_mutations_apply_in_place() -> None:
    argument = [3, 1, 2]
    assert values.apply_mutation(argument, [1, 2, 3]) and argument == [1, 2, 3]
    mapping = {"a": 1}
    assert values.apply_mutation(mapping, {"b": 2}) and mapping == {"b": 2}
    assert not values.apply_mutation((1, 2), (2, 1))  # immutable: the test keeps its value
