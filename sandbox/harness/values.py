"""Exact-type encoding of values crossing between a sample's process and the test driver (stdlib only).

The sample's process encodes what the program returned (and the arguments it mutated); the driver,
which runs under another uid, decodes it and the test compares. Only plain data survives the trip,
rebuilt with its exact type: ``int``, ``float`` (bit-exact), ``str``, containers, ``Counter``,
``OrderedDict``, ``defaultdict``, ``deque``, iterators and generators (drained, up to a bound),
``Fraction``, ``Decimal``, numeric numpy arrays. Anything else (a program-defined class, an
``int`` subclass, an object with its own ``__eq__``) arrives as :class:`Unsupported`, which refuses
every use, so it can neither pass nor fail a comparison by itself.

The encoded form is JSON: ``{"t": tag, "v": value}``. Decoding treats its input as hostile:
depth, item count and tags are checked, and any fault raises :class:`MalformedValue`.
"""

from __future__ import annotations

import collections
import decimal
import fractions
import math

TYPE_CHECKING = False  # importing typing costs ~4 ms per process under gVisor
if TYPE_CHECKING:
    from typing import Any, Callable

MAX_DEPTH = 64
MAX_ITEMS = 200_000

_DEFAULT_FACTORIES = {"int": int, "float": float, "str": str, "list": list, "dict": dict, "set": set, "tuple": tuple,
                      "bool": bool, "frozenset": frozenset, "None": None}
_SEQUENCES = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}
_ITERATOR_TYPES = (type(iter([])), type(iter(())), type(iter("")), type(iter(range(0))), type(iter(set())),
                   type(iter({})), type(iter({}.values())), type(iter({}.items())), type(reversed([])), map, filter,
                   zip, enumerate, reversed)


class MalformedValue(Exception):
    """Encoded data that no honest encoder produces."""


class UnsupportedUse(BaseException):
    """A test used a value the service cannot carry. Not an ``Exception``: a test's ``except`` cannot hide it."""


REFUSED: list[str] = []  # every refused use in this process, newest last (the driver clears it per sample)


class Unsupported:
    """Stands in for a value the codec refused; every use raises :class:`UnsupportedUse`."""

    __slots__ = ("description",)

    def __init__(self, description: str) -> None:
        object.__setattr__(self, "description", description)

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        message = (f"the program returned {self.description}, which the service does not carry "
                   "(only plain data with exact builtin types)")
        REFUSED.append(message)  # noticed even if a test's bare `except:` swallows the exception
        raise UnsupportedUse(message)

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = __len__ = __iter__ = __contains__ = _refuse
    __hash__ = __getitem__ = __call__ = __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _refuse
    __truediv__ = __floordiv__ = __mod__ = __neg__ = __abs__ = __float__ = __int__ = __index__ = __round__ = _refuse
    __getattr__ = __setattr__ = _refuse

    def __repr__(self) -> str:
        return f"<unsupported: {self.description}>"

    __str__ = __repr__


class _Budget:
    __slots__ = ("items", "refused", "drain")

    def __init__(self, drain: bool = True) -> None:
        self.items = 0
        self.refused: list[str] = []
        self.drain = drain


# -- encoding (runs in the sample's process) ---------------------------------------------------------
def encode(value: Any, refs: Callable[[Any], int | None] | None = None, refused: list[str] | None = None,
           drain: bool = True) -> Any:
    """Encode ``value``; ``refs`` may turn objects of program-defined classes into handles.

    What the codec refuses is encoded as ``unsupported``, and described in ``refused`` if given. With
    ``drain=False`` (the tracer's snapshots) an iterator or generator is refused, never consumed: consuming
    it would change the program being observed."""
    budget = _Budget(drain)
    encoded = _encode(value, 0, budget, refs)
    if refused is not None:
        refused.extend(budget.refused)
    return encoded


def _unsupported(description: str, budget: _Budget | None = None) -> dict[str, Any]:
    if budget is not None and len(budget.refused) < 8:
        budget.refused.append(description)
    return {"t": "unsupported", "v": description[:200]}


def _encode(value: Any, depth: int, budget: _Budget, refs: Any) -> Any:
    budget.items += 1
    if depth > MAX_DEPTH:
        return _unsupported(f"a value nested deeper than {MAX_DEPTH} levels", budget)
    if budget.items > MAX_ITEMS:
        return _unsupported(f"a value with more than {MAX_ITEMS} items", budget)
    kind = type(value)
    if value is None or kind is bool:
        return {"t": "atom", "v": value}
    if kind is int:
        return {"t": "int", "v": hex(value)}  # hex: no digit limit, linear time
    if kind is float:
        return {"t": "float", "v": value.hex() if math.isfinite(value) else repr(value)}
    if kind is complex:
        return {"t": "complex", "v": [_encode(value.real, depth + 1, budget, refs)["v"],
                                      _encode(value.imag, depth + 1, budget, refs)["v"]]}
    if kind is str:
        return {"t": "str", "v": value}
    if kind is bytes or kind is bytearray:
        return {"t": kind.__name__, "v": value.hex()}
    if kind in (list, tuple, set, frozenset, collections.deque):
        items = [_encode(item, depth + 1, budget, refs) for item in value]
        if kind is collections.deque:
            return {"t": "deque", "v": items, "maxlen": value.maxlen}
        return {"t": kind.__name__, "v": items}
    if kind in (dict, collections.OrderedDict, collections.Counter, collections.defaultdict):
        pairs = [[_encode(k, depth + 1, budget, refs), _encode(v, depth + 1, budget, refs)] for k, v in value.items()]
        encoded = {"t": kind.__name__, "v": pairs}
        if kind is collections.defaultdict:
            factory = value.default_factory
            name = "None" if factory is None else getattr(factory, "__name__", "")
            if _DEFAULT_FACTORIES.get(name, False) is not factory:
                return _unsupported("a defaultdict whose default factory is not a builtin type", budget)
            encoded["factory"] = name
        return encoded
    if kind is range:
        return {"t": "range", "v": [hex(value.start), hex(value.stop), hex(value.step)]}
    if kind is fractions.Fraction:
        return {"t": "Fraction", "v": [hex(value.numerator), hex(value.denominator)]}
    if kind is decimal.Decimal:
        return {"t": "Decimal", "v": str(value)}
    if kind in (type({}.keys()), type({}.values()), type({}.items())):
        return {"t": kind.__name__, "v": [_encode(item, depth + 1, budget, refs) for item in value]}
    if kind.__name__ == "generator" or kind in _ITERATOR_TYPES:
        if not budget.drain:
            return _unsupported("an iterator (not consumed)", budget)
        return _encode_iterator(value, depth, budget, refs)
    numpy_value = _encode_numpy(value, depth, budget, refs)
    if numpy_value is not None:
        return numpy_value
    handle = refs(value) if refs is not None else None
    if handle is not None:
        return {"t": "ref", "v": handle, "type": kind.__qualname__[:100]}
    return _unsupported(f"a value of type {kind.__module__}.{kind.__qualname__}", budget)


def _encode_iterator(value: Any, depth: int, budget: _Budget, refs: Any) -> Any:
    items = []
    for item in value:  # the program's own code may run here, in its own process and time
        if budget.items > MAX_ITEMS:
            return _unsupported(f"an iterator of more than {MAX_ITEMS} items", budget)
        items.append(_encode(item, depth + 1, budget, refs))
    return {"t": "generator" if type(value).__name__ == "generator" else "iterator", "v": items}


def _encode_numpy(value: Any, depth: int, budget: _Budget, refs: Any) -> Any:
    kind = type(value)
    if kind.__module__ != "numpy":
        return None
    import numpy  # only reached when the program already imported numpy

    if kind is numpy.ndarray and value.dtype.kind in "biufc":
        return {"t": "ndarray", "dtype": value.dtype.str, "shape": list(value.shape),
                "v": _encode(value.ravel().tolist(), depth + 1, budget, refs)}
    if isinstance(value, numpy.generic) and value.dtype.kind in "biufc":
        return {"t": "npscalar", "dtype": value.dtype.str, "v": _encode(value.item(), depth + 1, budget, refs)}
    return None


# -- decoding (runs in the driver: the data is hostile) ----------------------------------------------
def decode(data: Any, ref_factory: Callable[[int, str], Any] | None = None) -> Any:
    """Rebuild a value from :func:`encode`'s output; raises :class:`MalformedValue` on anything else."""
    try:
        return _decode(data, 0, _Budget(), ref_factory)
    except MalformedValue:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError, decimal.InvalidOperation,
            ZeroDivisionError, RecursionError) as exc:
        raise MalformedValue(f"{type(exc).__name__}: {str(exc)[:200]}") from None


def _int(raw: Any) -> int:
    if type(raw) is not str or len(raw) > 1 << 20:
        raise MalformedValue("bad int")
    return int(raw, 16)


def _float(raw: Any) -> float:
    if type(raw) is not str:
        raise MalformedValue("bad float")
    if raw in ("nan", "inf", "-inf"):
        return float(raw)
    return float.fromhex(raw)


def _decode(data: Any, depth: int, budget: _Budget, refs: Any) -> Any:
    budget.items += 1
    if depth > MAX_DEPTH + 2 or budget.items > MAX_ITEMS + 64:
        raise MalformedValue("value too deep or too large")
    if type(data) is not dict:
        raise MalformedValue("not a tagged value")
    tag, raw = data["t"], data["v"]
    if tag == "atom":
        if raw is None or type(raw) is bool:
            return raw
        raise MalformedValue("bad atom")
    if tag == "int":
        return _int(raw)
    if tag == "float":
        return _float(raw)
    if tag == "complex":
        return complex(_float(raw[0]), _float(raw[1]))
    if tag == "str":
        if type(raw) is not str:
            raise MalformedValue("bad str")
        return raw
    if tag in ("bytes", "bytearray"):
        return (bytes if tag == "bytes" else bytearray).fromhex(raw)
    if tag in _SEQUENCES or tag in ("deque", "generator", "iterator", "dict_keys", "dict_values", "dict_items"):
        items = [_decode(item, depth + 1, budget, refs) for item in _list(raw)]
        if tag in _SEQUENCES:
            return _SEQUENCES[tag](items)
        if tag == "deque":
            maxlen = data["maxlen"]
            if maxlen is not None and (type(maxlen) is not int or maxlen < 0):
                raise MalformedValue("bad deque maxlen")
            return collections.deque(items, maxlen)
        if tag == "generator":
            return (item for item in items)
        if tag == "iterator":
            return iter(items)
        if tag == "dict_keys":
            return dict.fromkeys(items).keys()
        if tag == "dict_values":
            return dict(enumerate(items)).values()
        return dict(items).items()
    if tag in ("dict", "OrderedDict", "Counter", "defaultdict"):
        pairs = [(_decode(k, depth + 1, budget, refs), _decode(v, depth + 1, budget, refs)) for k, v in _list(raw)]
        if tag == "dict":
            return dict(pairs)
        if tag == "OrderedDict":
            return collections.OrderedDict(pairs)
        if tag == "Counter":
            counter: collections.Counter[Any] = collections.Counter()
            dict.update(counter, pairs)  # Counter.update would add to counts; keep the values as sent
            return counter
        factory = data["factory"]
        if factory not in _DEFAULT_FACTORIES:
            raise MalformedValue("bad defaultdict factory")
        return collections.defaultdict(_DEFAULT_FACTORIES[factory], pairs)
    if tag == "range":
        return range(_int(raw[0]), _int(raw[1]), _int(raw[2]))
    if tag == "Fraction":
        return fractions.Fraction(_int(raw[0]), _int(raw[1]))
    if tag == "Decimal":
        if type(raw) is not str or len(raw) > 10_000:
            raise MalformedValue("bad Decimal")
        return decimal.Decimal(raw)
    if tag in ("ndarray", "npscalar"):
        return _decode_numpy(tag, data, depth, budget, refs)
    if tag == "ref":
        if refs is None or type(raw) is not int:
            raise MalformedValue("unexpected object handle")
        return refs(raw, str(data.get("type", "object"))[:100])
    if tag == "unsupported":
        return Unsupported(str(raw)[:200])
    raise MalformedValue(f"unknown tag {str(tag)[:40]!r}")


def _list(raw: Any) -> list[Any]:
    if type(raw) is not list:
        raise MalformedValue("expected a list")
    return raw


def _decode_numpy(tag: str, data: dict[str, Any], depth: int, budget: _Budget, refs: Any) -> Any:
    import numpy

    dtype = numpy.dtype(str(data["dtype"])[:16])
    if dtype.kind not in "biufc":
        raise MalformedValue("unsupported numpy dtype")
    plain = _decode(data["v"], depth + 1, budget, refs)
    if tag == "npscalar":
        return dtype.type(plain)
    shape = data["shape"]
    if type(shape) is not list or len(shape) > 32 or any(type(n) is not int or n < 0 for n in shape):
        raise MalformedValue("bad ndarray shape")
    return numpy.array(plain, dtype=dtype).reshape(shape)


def apply_mutation(original: Any, updated: Any) -> bool:
    """Make ``original`` (an argument the test passed) equal to what the program left in its copy.

    Returns False when the types do not allow an in-place update (the test keeps its original)."""
    if type(original) is not type(updated):
        return False
    if isinstance(original, (list, bytearray)):
        original[:] = updated
    elif isinstance(original, dict):
        original.clear()
        original.update(updated)
    elif isinstance(original, set):
        original.clear()
        original.update(updated)
    elif isinstance(original, collections.deque):
        original.clear()
        original.extend(updated)
    else:
        return False
    return True


MUTABLE_TYPES = (list, dict, set, bytearray, collections.deque, collections.OrderedDict, collections.Counter,
                 collections.defaultdict)
