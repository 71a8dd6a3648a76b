"""Large Numba kernels split across PyTorch's thread budget.

A kernel over at least `SPLIT_MIN_NUMEL` elements (`SPLIT_MIN_MATH_NUMEL` for one that evaluates
numba_math's functions, which is compute-bound) compiles as a ranged kernel: its C entry takes
`start, stop` and runs those iterations of the outermost loop, or of its flat loop
(`numba_codegen.emit_kernel(spec, ranged=True)`). `SplitKernel` cuts the range into parts and runs
them on `torch.get_num_threads()` threads, the calling one and a shared pool of Python threads; the C
entry releases the GIL, so the parts run at once. At one thread it is a single call over the whole
range. Waking a pool thread costs ~50-100 us on this machine, hence the sizes (measured at two
threads, 2026-11-28): gelu(x*a+b) over 2^18 elements 330 -> 235 us, x*a+b over 2^18 61 -> 113 us
(slower), over 2^20 615 -> 520 us. A fused GELU chain reaches about half of the copy bandwidth on one
AVX2 core, ~70% on two.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import torch

SPLIT_MIN_NUMEL = 1 << 20  # 4 MiB of float32 per operand: past the L2, ~600 us of a memory-bound loop
SPLIT_MIN_MATH_NUMEL = 1 << 18  # ~330 us of GELU, exp, tanh, ...
_FLAT_ALIGN = 16  # flat parts start on a 64-byte line, so two threads never write one line
# Parts per thread from this size on: a core that another process slows down takes fewer of them. Below
# it one part per thread: each part costs a lock and a GIL hand-off.
_DYNAMIC_NUMEL = 1 << 22
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
    threads as PyTorch may use; each thread takes the next part until none is left. A kernel over
    `numel` elements of `_DYNAMIC_NUMEL` or more makes `_PARTS_PER_THREAD` parts per thread, a smaller
    one one part per thread."""

    def __init__(self, ranged: Callable[..., None], extent: int, flat: bool, numel: int) -> None:
        self.ranged = ranged
        self.extent = extent
        self.align = _FLAT_ALIGN if flat else 1
        self.parts_per_thread = _PARTS_PER_THREAD if numel >= _DYNAMIC_NUMEL else 1

    def __call__(self, *addresses: int) -> None:
        threads = torch.get_num_threads()
        if threads <= 1:
            self.ranged(*addresses, 0, self.extent)
            return
        parts = iter(split_bounds(self.extent, threads * self.parts_per_thread, self.align))
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
