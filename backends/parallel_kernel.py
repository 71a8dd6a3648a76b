"""Large Numba kernels split across PyTorch's thread budget.

A kernel over at least `SPLIT_MIN_NUMEL` elements compiles as a ranged kernel (its outermost loop, or
its flat loop, runs over `range(start, stop)`: `numba_codegen.emit_kernel(spec, ranged=True)`).
`SplitKernel` calls it on `torch.get_num_threads()` disjoint parts, one in the calling thread and the
others in a shared pool of Python threads; the C entry releases the GIL, so the parts run at once.
At one thread it is a single call over the whole range. A fused GELU chain is compute-bound on one
AVX2 core (about half the copy bandwidth there) and memory-bound on two.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import torch

SPLIT_MIN_NUMEL = 1 << 18  # ~1 MiB of float32 per operand: 150-400 us of work against ~30 us to hand off
_FLAT_ALIGN = 16  # flat parts start on a 64-byte line, so two threads never write one line
_PARTS_PER_THREAD = 4

_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def _shared_pool() -> ThreadPoolExecutor:
    """The process's pool; a child made by fork gets a new one (its parent's threads did not come along)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) - 1),
                                       thread_name_prefix="heteropass-kernel")
            _pool_pid = os.getpid()
        return _pool


def split_bounds(extent: int, parts: int, align: int) -> list[tuple[int, int]]:
    """`[0, extent)` as at most `parts` non-empty consecutive ranges whose inner bounds are multiples
    of `align`, as even as that allows."""
    units = -(-extent // align)
    parts = max(1, min(parts, units))
    cuts = [min(extent, (units * k // parts) * align) for k in range(parts + 1)]
    return [(lo, hi) for lo, hi in pairwise(cuts) if hi > lo]


class SplitKernel:
    """Calls a ranged C entry `ranged(*addresses, start, stop)` over `[0, extent)` in parts, on as many
    threads as PyTorch may use. Each thread takes the next part until none is left (`_PARTS_PER_THREAD`
    parts per thread), so a core that another process slows down takes fewer parts."""

    def __init__(self, ranged: Callable[..., None], extent: int, flat: bool) -> None:
        self.ranged = ranged
        self.extent = extent
        self.align = _FLAT_ALIGN if flat else 1

    def __call__(self, *addresses: int) -> None:
        threads = torch.get_num_threads()
        if threads <= 1:
            self.ranged(*addresses, 0, self.extent)
            return
        parts = iter(split_bounds(self.extent, threads * _PARTS_PER_THREAD, self.align))
        lock = threading.Lock()

        def work() -> None:
            while True:
                with lock:
                    part = next(parts, None)
                if part is None:
                    return
                self.ranged(*addresses, *part)

        pool = _shared_pool()
        helpers = [pool.submit(work) for _ in range(threads - 1)]
        work()
        for helper in helpers:
            helper.result()
