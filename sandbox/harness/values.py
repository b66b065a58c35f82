"""Exact-type encoding of the values a candidate returns (stdlib only; runs inside the sandbox).

The candidate process encodes what the program returned; the checker process decodes it and
evaluates the assertions. Only plain data survives the trip: an object with a custom ``__eq__``,
a subclass of ``int`` or ``str``, or anything else the codec does not know becomes an
``Unsupported`` marker that compares unequal to everything, so it can never make a test pass.
"""

from __future__ import annotations

import collections
import math
TYPE_CHECKING = False  # importing typing costs ~4 ms per process under gVisor
if TYPE_CHECKING:
    from typing import Any

MAX_DEPTH = 64
MAX_ITEMS = 200_000

# Standard-library container types that behave like their base for equality with plain values.
_DICT_LIKE = (dict, collections.OrderedDict, collections.defaultdict, collections.Counter)


class Unsupported:
    """Stands in for a value the codec refused; equal to nothing, not even itself."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def __eq__(self, other: object) -> bool:
        return False

    def __ne__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"<unsupported {self.type_name} returned by the program>"


class _Budget:
    def __init__(self) -> None:
        self.items = 0


def encode(value: Any) -> Any:
    """Encode ``value`` as JSON-compatible data tagged with exact types."""
    return _encode(value, 0, _Budget())


def _encode(value: Any, depth: int, budget: _Budget) -> Any:
    budget.items += 1
    if depth > MAX_DEPTH or budget.items > MAX_ITEMS:
        return {"t": "unsupported", "v": "value too deep or too large"}
    kind = type(value)
    if value is None or kind is bool:
        return {"t": "atom", "v": value}
    if kind is int:
        return {"t": "int", "v": str(value)}
    if kind is float:
        return {"t": "float", "v": value.hex() if math.isfinite(value) else repr(value)}
    if kind is complex:
        return {"t": "complex", "v": [value.real.hex(), value.imag.hex()]}
    if kind is str:
        return {"t": "str", "v": value}
    if kind is bytes:
        return {"t": "bytes", "v": value.hex()}
    if kind in (list, tuple, set, frozenset):
        items = [_encode(item, depth + 1, budget) for item in value]
        if kind in (set, frozenset):
            items.sort(key=repr)
        return {"t": kind.__name__, "v": items}
    if kind in _DICT_LIKE:
        pairs = [[_encode(k, depth + 1, budget), _encode(v, depth + 1, budget)] for k, v in value.items()]
        return {"t": "dict", "v": pairs}
    numpy_value = _encode_numpy(value, depth, budget)
    if numpy_value is not None:
        return numpy_value
    return {"t": "unsupported", "v": f"{kind.__module__}.{kind.__qualname__}"}


def _encode_numpy(value: Any, depth: int, budget: _Budget) -> Any:
    kind = type(value)
    if kind.__module__ != "numpy":
        return None
    import numpy  # only reached when the program already imported numpy

    if kind is numpy.ndarray and value.dtype.kind in "biufc":
        return {"t": "ndarray", "dtype": value.dtype.str, "v": _encode(value.tolist(), depth + 1, budget)}
    if isinstance(value, numpy.generic) and value.dtype.kind in "biufc":
        return {"t": "npscalar", "dtype": value.dtype.str, "v": _encode(value.item(), depth + 1, budget)}
    return None


def decode(data: Any) -> Any:
    """Rebuild a value from :func:`encode` output; malformed data becomes ``Unsupported``."""
    try:
        return _decode(data)
    except (KeyError, TypeError, ValueError, AttributeError):
        return Unsupported("malformed record")


def _decode(data: Any) -> Any:
    tag, raw = data["t"], data["v"]
    if tag == "atom" and (raw is None or type(raw) is bool):
        return raw
    if tag == "int":
        return int(raw)
    if tag == "float":
        return float.fromhex(raw) if raw not in ("nan", "inf", "-inf") else float(raw)
    if tag == "complex":
        return complex(float.fromhex(raw[0]), float.fromhex(raw[1]))
    if tag == "str" and type(raw) is str:
        return raw
    if tag == "bytes":
        return bytes.fromhex(raw)
    if tag in ("list", "tuple", "set", "frozenset"):
        builder = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag]
        return builder(_decode(item) for item in raw)
    if tag == "dict":
        return {_decode(k): _decode(v) for k, v in raw}
    if tag in ("ndarray", "npscalar"):
        import numpy

        dtype = numpy.dtype(data["dtype"])
        plain = _decode(raw)
        return numpy.array(plain, dtype=dtype) if tag == "ndarray" else dtype.type(plain)
    if tag == "unsupported":
        return Unsupported(str(raw))
    raise ValueError(f"unknown tag {tag!r}")
