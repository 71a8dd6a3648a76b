"""Measuring alternatives at compile time: which library call or kernel plan is fastest for a shape."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

import torch

BUDGET_S = 0.01
# Written before each timed call with `evict`: more than a core's L2 cache (512 KiB on Zen 1, 1-2 MiB on
# newer cores), so that the call finds its weights and operands in L3 or memory, as it does inside a model
# where the other layers ran in between; timed hot, a library that reorders its weights on every call
# (oneDNN without a prepacked weight) looks faster than it runs there.
_EVICT_BYTES = 4 << 20
_evict_buffer: list[torch.Tensor] = []


def evict_caches() -> None:
    """Push what the last calls touched out of the core's private caches."""
    if not _evict_buffer:
        _evict_buffer.append(torch.zeros(_EVICT_BYTES // 4))
    _evict_buffer[0].add_(1.0)


def fastest_runs(runs: dict[Hashable, Callable[[], object]], budget_s: float = BUDGET_S,
                 evict: bool = False) -> dict[Hashable, float]:
    """Each run's fastest time in seconds after a warm-up call, the runs taking turns (so that load from
    other processes hits them alike) until `budget_s` is spent, at least twice each (the minimum resists
    load on a shared machine), at most 20 times. With `evict`, the caches are flushed before each timed
    call (`evict_caches`; not counted), to time the call as it runs among other work."""
    best = {}
    for name, fn in runs.items():
        fn()
        best[name] = float("inf")
    deadline = time.perf_counter() + budget_s
    for turn in range(20):
        for name, fn in runs.items():
            if evict:
                evict_caches()
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
        if turn >= 1 and time.perf_counter() > deadline:
            break
    return best
