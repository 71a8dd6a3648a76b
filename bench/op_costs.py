"""What one 8-wide float32 vector operation costs in a Numba elementwise loop on this core (one thread, in L1).

    OMP_WAIT_POLICY=passive .venv/bin/python bench/op_costs.py [--repeats R]

Every body is `y[i] = f(x[i] * a + b)` over 2048 float32 elements (operands in L1, a 16-element call
subtracted), compiled as the backend compiles elementwise kernels (no fastmath flags,
error_model="numpy"). A base of 8 dependent FMAs, then the same base with 4 independent operations of
one kind added: the difference per added operation is what that kind costs beside FMAs (whether the
core issues it on otherwise idle pipes or not). The last rows take `numba_math.gelu_f32` apart
the same way. Answers "would moving work from FMAs to adds, or removing a clamp, make a kernel faster?"
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
from numba import njit

from heteropass.backends import numba_math as nm
from heteropass.backends.numba_codegen import FASTMATH_ELEMENTWISE

F32 = np.float32
A, B = F32(1.5), F32(0.25)
C0, C1, C2, C3, C4, C5, C6, C7, C8 = (F32(v) for v in (0.11, 0.23, 0.37, 0.41, 0.53, 0.67, 0.71, 0.83, 0.97))
HALF, ZERO, ONE = F32(0.5), F32(0.0), F32(1.0)


@njit(inline="always")
def fmas(x):
    p = x * C0 + C1
    p = p * x + C2
    p = p * x + C3
    p = p * x + C4
    p = p * x + C5
    p = p * x + C6
    p = p * x + C7
    return p * x + C8


@njit(inline="always")
def fmas_and_adds(x):
    q = ((x + C0) + C1) + C2
    return fmas(x) - (q + C3)


@njit(inline="always")
def fmas_and_muls(x):
    q = ((x * C0) * C1) * C2
    return fmas(x) - q * C3


@njit(inline="always")
def fmas_and_min_max(x):
    q = max(min(max(x, C0), C1), C2)
    return fmas(x) - min(q, C3)


@njit(inline="always")
def fmas_and_division(x):
    return fmas(x) / x


def _gelu_parts(clip: bool, divide: bool, clamp: bool) -> Callable[..., object]:
    """`numba_math.gelu_f32` with its clip of Phi, its division and its clamp of x^2 optional."""
    @njit(inline="always")
    def gelu(x):
        u = min(x * x, F32(27.5625)) if clamp else x * x
        p, q = nm.gelu_fit_f32(u)
        phi = (p / q if divide else p * q) * x + HALF
        return x * (min(max(phi, ZERO), ONE) if clip else phi)

    return gelu


# name -> (body, vector operations per 8 elements besides the load, the prologue FMA and the store)
BODIES: dict[str, tuple[Callable[..., object], str]] = {
    "8 FMAs": (fmas, "8 FMA"),
    "8 FMAs + 4 adds": (fmas_and_adds, "8 FMA, 4 add, 1 sub"),
    "8 FMAs + 4 muls": (fmas_and_muls, "8 FMA, 4 mul, 1 sub"),
    "8 FMAs + 4 min/max": (fmas_and_min_max, "8 FMA, 4 min/max, 1 sub"),
    "8 FMAs + 1 division": (fmas_and_division, "8 FMA, 1 div"),
    "gelu_f32": (nm.gelu_f32, "10 FMA, 2 mul, 1 add, 1 div, 3 min/max"),
    "gelu_f32 without its clip": (_gelu_parts(clip=False, divide=True, clamp=True), "2 min/max fewer"),
    "gelu_f32, p*q for p/q": (_gelu_parts(clip=True, divide=False, clamp=True), "div -> mul"),
    "gelu_f32, neither": (_gelu_parts(clip=False, divide=False, clamp=False), "3 min/max fewer, div -> mul"),
    "silu_f32": (nm.silu_f32, "exp (13), add, div"),
}


def loop(body: Callable[..., object]) -> Callable[..., None]:
    @njit(fastmath=FASTMATH_ELEMENTWISE, error_model="numpy", boundscheck=False)
    def kernel(x, y):
        for i in range(x.shape[0]):
            y[i] = body(x[i] * A + B)

    return kernel


def ns_per_8_elements(kernel: Callable[..., None], repeats: int, n: int = 2048) -> float:
    def median_call(size: int) -> float:
        x = np.random.default_rng(0).standard_normal(size).astype(np.float32)
        y = np.empty_like(x)
        kernel(x, y)
        calls = max(1, (1 << 23) // size)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                kernel(x, y)
            times.append((time.perf_counter() - start) / calls)
        return statistics.median(times)

    return (median_call(n) - median_call(16)) / (n - 16) * 8 * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=31)
    args = parser.parse_args()
    print("ns per 8 float32 elements, operands in L1, one thread:")
    base = None
    for name, (body, ops) in BODIES.items():
        ns = ns_per_8_elements(loop(body), args.repeats)
        base = ns if base is None else base
        print(f"{name:>28}: {ns:6.2f} ns  ({ns / base:4.2f}x the 8 FMAs; {ops})")


if __name__ == "__main__":
    main()
