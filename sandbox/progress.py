"""A progress bar over a stream of results: done/total, rate, ETA and the verdict mix."""

from __future__ import annotations

from collections import Counter
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

from sandbox.models import JobResult

__all__ = ["track"]


def track(results: Iterable[JobResult], total: int, initial: int = 0, description: str = "jobs",
          on_result: Callable[[JobResult], None] | None = None) -> Iterator[JobResult]:
    """Yield results unchanged while a bar on stderr shows progress (hidden when stderr is not a terminal)."""
    counts: Counter[str] = Counter()
    with tqdm(total=total, initial=initial, unit="job", desc=description, dynamic_ncols=True, disable=None) as bar:
        for result in results:
            counts[result.verdict.value] += 1
            counts["reused"] += result.reused
            bar.update(1)
            bar.set_postfix({k: v for k, v in counts.items() if v}, refresh=False)
            if on_result is not None:
                on_result(result)
            yield result
