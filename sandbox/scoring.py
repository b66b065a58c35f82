"""pass@k and friends: small, pure functions over (problem, passed) outcomes.

pass@k uses the unbiased estimator of the Codex paper in its numerically stable product form:
    pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1..n} (1 - k / i)
A sample counts as passing only if its verdict is ``passed``. Samples whose verdict is
``infra_error`` are left out of n (the service failed, not the program) and reported.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

__all__ = ["pass_at_k", "Outcome", "PassAtK", "Score", "score", "ranked_pass_at_1"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) is correct."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k > n:
        raise ValueError(f"k={k} is larger than the number of samples n={n}")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


@dataclass(frozen=True)
class Outcome:
    task_id: str
    passed: bool
    infra_error: bool = False
    mean_logp: float | None = None


@dataclass
class PassAtK:
    k: int
    value: float | None               # None when no problem has k samples
    problems: int                     # problems with at least k samples
    ci95: tuple[float, float] | None  # bootstrap over problems
    too_few_samples: list[str] = field(default_factory=list)


@dataclass
class Score:
    table: list[PassAtK]
    per_problem: dict[str, tuple[int, int]]  # task_id -> (n, c), infra errors excluded
    infra_errors: int
    ranked_pass_at_1: float | None


def score(outcomes: Iterable[Outcome], ks: list[int], bootstrap: int = 1000, seed: int = 0) -> Score:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    infra = 0
    outcome_list = list(outcomes)
    for outcome in outcome_list:
        if outcome.infra_error:
            infra += 1
            counts.setdefault(outcome.task_id, [0, 0])
            continue
        counts[outcome.task_id][0] += 1
        counts[outcome.task_id][1] += outcome.passed
    per_problem = {task: (n, c) for task, (n, c) in counts.items()}
    table = [_row(per_problem, k, bootstrap, seed) for k in ks]
    return Score(table, per_problem, infra, ranked_pass_at_1(outcome_list))


def _row(per_problem: dict[str, tuple[int, int]], k: int, bootstrap: int, seed: int) -> PassAtK:
    eligible = {task: pass_at_k(n, c, k) for task, (n, c) in per_problem.items() if n >= k}
    too_few = sorted(task for task, (n, _) in per_problem.items() if n < k)
    if not eligible:
        return PassAtK(k, None, 0, None, too_few)
    values = list(eligible.values())
    return PassAtK(k, sum(values) / len(values), len(values), _bootstrap(values, bootstrap, seed), too_few)


def _bootstrap(values: list[float], rounds: int, seed: int) -> tuple[float, float] | None:
    if rounds <= 0 or len(values) < 2:
        return None
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(rounds))
    return means[int(0.025 * rounds)], means[min(rounds - 1, int(0.975 * rounds))]


def ranked_pass_at_1(outcomes: list[Outcome]) -> float | None:
    """The paper's heuristic: per problem, does the sample with the highest mean log-probability pass?"""
    best: dict[str, Outcome] = {}
    for outcome in outcomes:
        if outcome.mean_logp is None or outcome.infra_error:
            continue
        current = best.get(outcome.task_id)
        if current is None or outcome.mean_logp > (current.mean_logp or float("-inf")):
            best[outcome.task_id] = outcome
    if not best:
        return None
    return sum(o.passed for o in best.values()) / len(best)
