"""pass@k and friends: small, pure functions over (problem, passed) outcomes.

pass@k uses the unbiased estimator of the Codex paper in its numerically stable product form:
    pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1..n} (1 - k / i)
A sample counts as passing only if its verdict is ``passed``. Samples whose verdict is
``infra_error`` are left out of n (the service failed, not the program) and reported.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterable

__all__ = ["pass_at_k", "Outcome", "PassAtK", "Score", "score", "ranked_pass_at_1", "Tally", "filtered_pass_at_k"]


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
    filtered: list[PassAtK] = field(default_factory=list)  # over samples that pass the public examples
    timeouts: int = 0          # samples that failed no test but ran out of time (the Codex paper counts them apart)


def score(outcomes: Iterable[Outcome], ks: list[int], bootstrap: int = 1000, seed: int = 0) -> Score:
    tally = Tally()
    for outcome in outcomes:
        tally.add(outcome)
    return tally.score(ks, bootstrap, seed)


class Tally:
    """Running counts per problem: enough for pass@k, filtered pass@k and ranked pass@1 over any number
    of samples, in memory that grows with the problems, not the samples."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}      # task -> [n, c, n passing public, c among those]
        self.best: dict[str, tuple[float, bool]] = {}  # task -> (highest mean log-probability, that sample passed)
        self.infra = 0
        self.timeouts = 0
        self.has_public = False

    def add(self, outcome: Outcome, passed_public: bool | None = None, timed_out: bool = False) -> None:
        row = self.counts.setdefault(outcome.task_id, [0, 0, 0, 0])
        if outcome.infra_error:
            self.infra += 1
            return
        row[0] += 1
        row[1] += outcome.passed
        self.timeouts += timed_out
        if passed_public is not None:
            self.has_public = True
            row[2] += passed_public
            row[3] += passed_public and outcome.passed
        if outcome.mean_logp is not None:
            current = self.best.get(outcome.task_id)
            if current is None or outcome.mean_logp > current[0]:
                self.best[outcome.task_id] = (outcome.mean_logp, outcome.passed)

    def score(self, ks: list[int], bootstrap: int = 1000, seed: int = 0) -> Score:
        per_problem = {task: (n, c) for task, (n, c, _, _) in self.counts.items()}
        table = [_row(per_problem, k, bootstrap, seed) for k in ks]
        filtered = [filtered_pass_at_k({t: (r[2], r[3]) for t, r in self.counts.items() if r[0]}, k)
                    for k in ks] if self.has_public else []
        ranked = sum(p for _, p in self.best.values()) / len(self.best) if self.best else None
        return Score(table, per_problem, self.infra, ranked, filtered, self.timeouts)


def filtered_pass_at_k(per_problem: dict[str, tuple[int, int]], k: int) -> PassAtK:
    """The Codex paper's APPS protocol: keep the samples that pass the public examples; a problem counts
    pass@k over them (all of them when fewer than k are left), and 0 when none is left."""
    values = []
    for n, c in per_problem.values():
        values.append(pass_at_k(n, c, min(k, n)) if n else 0.0)
    return PassAtK(k, sum(values) / len(values) if values else None, len(values), None)


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
    tally = Tally()
    for outcome in outcomes:
        tally.add(outcome)
    return tally.score([]).ranked_pass_at_1
