"""Achieved memory bandwidth of Numba fused elementwise kernels against `y.copy_(x)`, at 1 and 2 threads.

    OMP_WAIT_POLICY=passive .venv/bin/python bench/roofline.py [--numel N] [--repeats R] [--threads 1 2]

Bytes moved = every operand read once plus every output written once; a kernel is memory-bound
when it reaches a good share of the copy's bandwidth. Each kernel call is paired with a copy timed
right before it, and the share is the median of the pairs' ratios.

The "in cache" column (one thread) is the share the kernel would reach if memory cost nothing: its
time per element on operands that fit in L2 (a call over 16 elements subtracted, to remove the call
overhead) against the large copy's time per element. A kernel whose in-cache share is below 70% is
bound by the core's arithmetic, not by memory bandwidth.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from heteropass.backends.numba_backend import NumbaBackend
from heteropass.ir import parse_graph

# name -> (region body over %x: f32[N] (and %y), operand count)
CHAINS: dict[str, tuple[str, int]] = {
    "gelu(x*a+b)": ("%0: f32[{n}] = mul(%x, %a)\n      %1: f32[{n}] = add(%0, %b)\n"
                    "      %2: f32[{n}] = gelu(%1)\n      return %2", 1),
    "gelu_tanh(x*a+b)": ("%0: f32[{n}] = mul(%x, %a)\n      %1: f32[{n}] = add(%0, %b)\n"
                         '      %2: f32[{n}] = gelu(%1) {{approximate="tanh"}}\n      return %2', 1),
    "relu(x+y)": ("%0: f32[{n}] = add(%x, %y)\n      %1: f32[{n}] = relu(%0)\n      return %1", 2),
    "x*a+b": ("%0: f32[{n}] = mul(%x, %a)\n      %1: f32[{n}] = add(%0, %b)\n      return %1", 1),
    "sigmoid(x)*y": ("%0: f32[{n}] = sigmoid(%x)\n      %1: f32[{n}] = mul(%0, %y)\n      return %1", 2),
    "silu(x)*y": ("%0: f32[{n}] = silu(%x)\n      %1: f32[{n}] = mul(%0, %y)\n      return %1", 2),
    "silu(x)": ("%0: f32[{n}] = silu(%x)\n      return %0", 1),
    "tanh(x)": ("%0: f32[{n}] = tanh(%x)\n      return %0", 1),
    "exp(x)": ("%0: f32[{n}] = exp(%x)\n      return %0", 1),
}


def region(body: str, operands: int, n: int) -> str:
    params = ", ".join(f"%{p}: f32[{n}]" for p in "xy"[:operands])
    args = ", ".join(f"%{p}" for p in "xy"[:operands])
    text = body.format(n=n)
    return (f"graph m({params}) -> (f32[{n}]) {{\n"
            f'  %r: f32[{n}] = fused[op]({args}) {{kind="elementwise"}}\n    graph region({params}) -> (f32[{n}]) {{\n'
            f"      const %a: f32[] = 1.5\n      const %b: f32[] = 0.25\n      {text}\n    }}\n  return %r\n}}\n")


def paired_rates(kernel: Callable[[], object], kernel_bytes: int, copy: Callable[[], object], copy_bytes: int,
                 repeats: int) -> tuple[float, float, float]:
    """Median bytes/s of `kernel` and of `copy`, timed alternately, and the median of their per-pair
    ratio: a slow moment of a shared machine slows both sides of a pair."""
    kernel(), copy()
    kernel_rates, copy_rates = [], []
    for _ in range(repeats):
        for fn, rates, size in ((copy, copy_rates, copy_bytes), (kernel, kernel_rates, kernel_bytes)):
            start = time.perf_counter()
            fn()
            rates.append(size / (time.perf_counter() - start))
    ratios = [k / c for k, c in zip(kernel_rates, copy_rates, strict=True)]
    return statistics.median(kernel_rates), statistics.median(copy_rates), statistics.median(ratios)


def compile_chain(backend: NumbaBackend, name: str, n: int) -> Callable[..., object]:
    """The Numba kernel of chain `name` over float32 operands of `n` elements."""
    body, operands = CHAINS[name]
    return backend.compile(parse_graph(region(body, operands, n)))


def per_element_seconds(backend: NumbaBackend, name: str, n: int, repeats: int) -> float:
    """Median seconds per element of chain `name` over `n` elements, minus the cost of a 16-element call."""
    def median_call(size: int) -> float:
        kernel = compile_chain(backend, name, size)
        inputs, out = [torch.randn(size) for _ in range(CHAINS[name][1])], torch.empty(size)
        kernel(*inputs, out=[out])
        calls = max(1, (1 << 22) // size)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                kernel(*inputs, out=[out])
            times.append((time.perf_counter() - start) / calls)
        return statistics.median(times)

    return (median_call(n) - median_call(16)) / (n - 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=1 << 24)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cache-numel", type=int, default=1 << 15,
                        help="elements per operand for the in-cache figure (three operands must fit in L2)")
    args = parser.parse_args()
    n = args.numel
    x, y, out = torch.randn(n), torch.randn(n), torch.empty(n)
    backend = NumbaBackend()
    kernels = {name: (compile_chain(backend, name, n), (x, y)[:operands]) for name, (_, operands) in CHAINS.items()}
    for threads in args.threads:
        # Kernels over this many elements split their loop across torch.get_num_threads() threads.
        torch.set_num_threads(threads)
        print(f"{threads} thread(s), {n} float32, each kernel timed alternately with y.copy_(x)"
              + (f"; in cache: {args.cache_numel} elements per operand" if threads == 1 else "") + ":")
        for name, (kernel, inputs) in kernels.items():
            rate, copy, ratio = paired_rates(lambda k=kernel, i=inputs: k(*i, out=[out]), (len(inputs) + 1) * 4 * n,
                                             lambda: out.copy_(x), 2 * 4 * n, args.repeats)
            line = f"{name:>18}: {rate / 1e9:6.1f} GB/s  {100 * ratio:5.1f}% of copy (copy {copy / 1e9:.1f} GB/s)"
            if threads == 1:
                seconds = per_element_seconds(backend, name, args.cache_numel, args.repeats)
                in_cache_rate = (len(inputs) + 1) * 4 / seconds
                line += f"  in cache {100 * in_cache_rate / copy:5.1f}% of copy"
            print(line)


if __name__ == "__main__":
    main()
