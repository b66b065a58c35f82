import threading

import pytest

import fixturepkg as f


def test_add():
    assert f.add(1, 2) == 3
    assert f.add(2, 3) == 5
    assert f.add("a", "b") == "ab"
    assert f.add(1.5, 2.0) == 3.5


def test_parse_int():
    assert f.parse_int("12") == 12
    assert f.parse_int("-3") == -3
    with pytest.raises(ValueError):
        f.parse_int("x")
    with pytest.raises(ValueError):
        f.parse_int("1.5")


def test_nothing():
    assert f.nothing(1) is None
    assert f.nothing([1]) is None
    assert f.nothing("a") is None


def test_sort_in_place():
    for items in ([3, 1, 2], [2, 1], [5, 4, 3, 9]):
        f.sort_in_place(items)
        assert items == sorted(items)


def test_generators():
    assert list(f.count_up(3)) == [0, 1, 2]
    assert list(f.count_up(0)) == []
    assert list(f.count_up(1)) == [0]
    gen = f.count_up(10)
    assert next(gen) == 0 and next(gen) == 1
    gen.close()


def test_recursion():
    assert f.factorial(5) == 120


def test_iterator_argument_not_consumed():
    it = iter([7, 8, 9])
    assert f.first(it) == 7
    assert list(it) == [8, 9]   # the tracer must not have drained it
    assert f.first([4, 5]) == 4


def test_impure():
    assert f.stamp(1)[0] == 1
    assert 1 <= f.roll(6) <= 6


def test_slug():
    assert f.slug("Hello World") == "hello-world"
    assert f.slug("  a b c ") == "a-b-c"
    assert f.slug("x") == "x"


def test_checked_sqrt():
    assert f.checked_sqrt(16) == 4
    assert f.checked_sqrt(10) == 3
    with pytest.raises(ValueError):
        f.checked_sqrt(-1)


def test_methods_are_not_traced():
    assert f.Box(3).get() == 3


def test_threads():
    results = []
    thread = threading.Thread(target=lambda: results.append(f.add(10, 20)))
    thread.start()
    thread.join()
    assert results == [30]


def test_hot():
    for i in range(2000):
        assert f.hot(i) == 2 * i


def test_that_fails():
    assert f.add(100, 200) == 300
    assert f.parse_int("77") == 0   # fails: calls made by this test are not kept
