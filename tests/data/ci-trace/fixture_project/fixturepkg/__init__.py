"""A small project written for the tests of `sandbox trace`: one function per thing the tracer must get right."""

import random
import re
import time

SEPARATOR = "-"
WORD = re.compile(r"[a-z]+")


def add(a, b):
    """Return the sum of a and b."""
    return a + b


def parse_int(text):
    """Parse text as a decimal integer; raise ValueError if it is not one."""
    return int(text, 10)


def nothing(value):
    """Do nothing with the value and return None."""
    return None


def sort_in_place(items):
    """Sort the list items in place (ascending); return None."""
    items.sort()


def count_up(n):
    """Yield the integers from 0 up to n, excluded."""
    for i in range(n):
        yield i


def factorial(n):
    """Return n! computed recursively."""
    return 1 if n <= 1 else n * factorial(n - 1)


def first(iterable):
    """Return the first item of an iterable."""
    for item in iterable:
        return item
    raise ValueError("empty")


def stamp(x):
    """Return x together with the current time."""
    return (x, time.time())


def roll(sides):
    """Roll a die with the given number of sides."""
    return random.randint(1, sides)


def _normalise(word):
    return word.strip().lower()


def slug(text):
    """Join the lowercase words of text with dashes."""
    return SEPARATOR.join(WORD.findall(_normalise(text)))


class NegativeError(ValueError):
    pass


def checked_sqrt(x):
    """Return the integer square root of x; raise ValueError for negative x."""
    if x < 0:
        raise NegativeError(x)
    return int(x ** 0.5)


def hot(x):
    """Return x doubled (called very often by the tests)."""
    return 2 * x


class Box:
    """A box holding one value (methods are not traced)."""

    size = add(1, 1)  # a call from a class body, at import: not in a test

    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value
