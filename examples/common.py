"""Shared steps of the example scripts: compile, check against eager, time, show the dumps."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

import heteropass as hp


def median_ms(fn: Callable[[], Any], repeats: int = 30, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def max_relative_error(actual: Any, expected: Any) -> float:
    """The worst max |actual - expected| / max |expected| over the float outputs; NaN when any is NaN."""
    errors = [((a - e).abs().max() / e.abs().max().clamp_min(1e-12)).item()
              for a, e in zip(tree_leaves(actual), tree_leaves(expected), strict=True)
              if isinstance(e, torch.Tensor) and e.is_floating_point()]
    return max(errors, key=lambda error: (math.isnan(error), error), default=0.0)


def run_example(name: str, model: torch.nn.Module, inputs: tuple[Any, ...], opt_level: int = 2) -> None:
    torch.set_num_threads(1)
    dump_dir = Path("dumps") / name
    start = time.perf_counter()
    cm = hp.compile(model, inputs, opt_level=opt_level, dump_dir=str(dump_dir))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    numba = hp.compile(model, inputs, opt_level=opt_level, backends=["numba"])
    numba_s = time.perf_counter() - start
    with torch.no_grad():
        expected = model(*inputs)
        error = max_relative_error(cm(*inputs), expected)
        numba_error = max_relative_error(numba(*inputs), expected)
        eager = median_ms(lambda: model(*inputs))
    compiled = median_ms(lambda: cm(*inputs))
    compiled_numba = median_ms(lambda: numba(*inputs))

    print(f"== {name}: compiled at O{opt_level} in {compile_s:.2f} s "
          f"({len(cm.graph.nodes)} nodes, {len(cm.graph.constants)} constants)")
    print(cm.report)
    print(f"median latency, 1 thread (max relative error vs eager):\n"
          f"  eager PyTorch                 {eager:8.3f} ms\n"
          f"  heteropass, reference backend {compiled:8.3f} ms  {eager / compiled:.2f}x eager  ({error:.1e})\n"
          f"  heteropass, numba backend     {compiled_numba:8.3f} ms  {eager / compiled_numba:.2f}x eager  "
          f"({numba_error:.1e}, compiled in {numba_s:.2f} s)")
    files = sorted(p.name for p in dump_dir.iterdir())
    print(f"dumps in {dump_dir}/: {', '.join(files)}")
