"""Measuring alternatives at compile time: which library call or kernel plan is fastest for a shape."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

BUDGET_S = 0.01


def fastest_runs(runs: dict[Hashable, Callable[[], object]], budget_s: float = BUDGET_S) -> dict[Hashable, float]:
    """Each run's fastest time in seconds after a warm-up call, the runs taking turns (so that load from
    other processes hits them alike) until `budget_s` is spent, at least twice each (the minimum resists
    load on a shared machine), at most 20 times."""
    best = {}
    for name, fn in runs.items():
        fn()
        best[name] = float("inf")
    deadline = time.perf_counter() + budget_s
    for turn in range(20):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
        if turn >= 1 and time.perf_counter() > deadline:
            break
    return best
