"""Measuring alternatives at compile time: which library call or kernel plan is fastest for a shape."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from functools import cache
from pathlib import Path

import torch

BUDGET_S = 0.01
# Written before each timed call with `evict`: more than a core's L2 cache (512 KiB on Zen 1, 1-2 MiB on
# newer cores), so that the call finds its weights and operands in L3 or memory, as it does inside a model
# where the other layers ran in between; timed hot, a library that reorders its weights on every call
# (oneDNN without a prepacked weight) looks faster than it runs there.
_EVICT_BYTES = 4 << 20
_evict_buffers: dict[int, torch.Tensor] = {}


def evict_caches(nbytes: int = _EVICT_BYTES) -> None:
    """Push what the last calls touched out of the caches by writing `nbytes`: the core's private caches by
    default, every cache with `memory_evict_bytes()`."""
    if nbytes not in _evict_buffers:
        _evict_buffers[nbytes] = torch.zeros(nbytes // 4)
    _evict_buffers[nbytes].add_(1.0)


@cache
def memory_evict_bytes() -> int:
    """Bytes to write so that a call finds its operands in memory: 1.5x the largest cache the kernel lists
    for cpu0 (sysfs), or 48 MiB where none can be read."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip()
        if text[:-1].isdigit() and text[-1] in units:
            sizes.append(int(text[:-1]) * units[text[-1]])
    return 3 * max(sizes, default=32 << 20) // 2


def fastest_runs(runs: dict[Hashable, Callable[[], object]], budget_s: float = BUDGET_S,
                 evict: bool = False, evict_bytes: int = _EVICT_BYTES) -> dict[Hashable, float]:
    """Each run's fastest time in seconds after a warm-up call, the runs taking turns (so that load from
    other processes hits them alike) until `budget_s` is spent, at least twice each (the minimum resists
    load on a shared machine), at most 20 times. With `evict`, `evict_bytes` are written before each timed
    call (`evict_caches`; not counted), to time the call as it runs among other work."""
    best = {}
    for name, fn in runs.items():
        fn()
        best[name] = float("inf")
    deadline = time.perf_counter() + budget_s
    for turn in range(20):
        for name, fn in runs.items():
            if evict:
                evict_caches(evict_bytes)
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
        if turn >= 1 and time.perf_counter() > deadline:
            break
    if evict_bytes != _EVICT_BYTES:
        _evict_buffers.pop(evict_bytes, None)  # tens of MiB: not kept between timings
    return best
