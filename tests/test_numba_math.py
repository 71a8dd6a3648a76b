"""The float32 approximations in numba_math stay within their documented error bounds over dense ranges."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from numba import njit

from heteropass.backends import numba_math as nm
from heteropass.backends.numba_codegen import FASTMATH_ELEMENTWISE, FASTMATH_REDUCTION


def _gelu(x: float) -> float:
    return 0.5 * x * (1 + math.erf(x / math.sqrt(2)))


def _gelu_tanh(x: float) -> float:
    return 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


# function, float64 reference, range, relative bound, absolute bound
CASES = [
    (nm.exp_f32, math.exp, (-86.9, 88.7), 5e-7, 0.0),  # results below 2**-125 (x < -86.99) flush to 0
    (nm.exp_f32, math.exp, (-1.0, 1.0), 2.5e-7, 0.0),
    (nm.log_f32, math.log, (1e-30, 1e6), 4e-7, 0.0),
    (nm.log_f32, math.log, (0.5, 2.0), 4e-7, 1e-7),
    (nm.tanh_f32, math.tanh, (-12.0, 12.0), 8e-7, 0.0),
    (nm.tanh_f32, math.tanh, (-1e-3, 1e-3), 8e-7, 0.0),
    (nm.sigmoid_f32, lambda x: 1 / (1 + math.exp(-x)), (-80.0, 80.0), 5e-7, 0.0),
    (nm.erf_f32, math.erf, (-6.0, 6.0), 5e-7, 0.0),
    (nm.log1p_f32, math.log1p, (-0.999, 1e3), 4e-7, 0.0),
    (nm.log1p_f32, math.log1p, (-1e-5, 1e-5), 4e-7, 0.0),
    (nm.expm1_f32, math.expm1, (-20.0, 80.0), 5e-7, 0.0),
    (nm.expm1_f32, math.expm1, (-1e-5, 1e-5), 4e-7, 0.0),
    (nm.gelu_f32, _gelu, (-10.0, 10.0), 1e-6, 1e-6),  # measured 7.3e-7 absolute near x = -4.8
    (nm.gelu_f32, _gelu, (-1e-3, 1e-3), 1e-6, 0.0),
    (nm.gelu_tanh_f32, _gelu_tanh, (-10.0, 10.0), 1e-6, 1e-6),  # measured 6.6e-7 near x = -5.0
    (nm.gelu_tanh_f32, _gelu_tanh, (-1e-3, 1e-3), 1e-6, 0.0),
    (nm.silu_f32, lambda x: x / (1 + math.exp(-x)), (-80.0, 80.0), 1e-6, 1e-30),
]


def _vectorized(fn, flags):
    @njit(fastmath=flags, error_model="numpy")
    def apply(x, out):
        for i in range(x.shape[0]):
            out[i] = fn(x[i])

    return apply


@pytest.mark.parametrize("flags", [FASTMATH_ELEMENTWISE, FASTMATH_REDUCTION], ids=["elementwise", "reduction"])
@pytest.mark.parametrize("fn, reference, bounds, rel, abs_", CASES,
                         ids=[f"{c[0].py_func.__name__}{list(c[2])}" for c in CASES])
def test_error_within_bounds_in_a_vectorized_loop(fn, reference, bounds, rel, abs_, flags) -> None:
    x = np.linspace(*bounds, 200_001, dtype=np.float64).astype(np.float32)
    out = np.empty_like(x)
    _vectorized(fn, flags)(x, out)
    expected = np.array([reference(float(v)) for v in x])
    error = np.abs(out.astype(np.float64) - expected)
    allowed = rel * np.abs(expected) + abs_
    worst = int(np.argmax(error - allowed))
    assert error[worst] <= allowed[worst], f"x={x[worst]!r}: got {out[worst]!r}, expected {expected[worst]!r}"


# PyTorch: gelu(-inf) and silu(-inf) are NaN (-inf * 0); very negative x gives exactly -0.
_GELU_SPECIAL = ([np.inf, -np.inf, np.nan, 1e30, -1e30, -6.0, 0.0], [np.inf, np.nan, np.nan, 1e30, 0.0, 0.0, 0.0])
SPECIAL = [
    (nm.exp_f32, [np.inf, -np.inf, np.nan, 89.0, 88.73, 88.72, -110.0, -87.7, 0.0],
     [np.inf, 0.0, np.nan, np.inf, np.inf, math.exp(float(np.float32(88.72))), 0.0, 0.0, 1.0]),
    (nm.log_f32, [0.0, -1.0, np.inf, np.nan, 1.0, 1e-45],  # 1e-45 is the smallest denormal, 1.4e-45
     [-np.inf, np.nan, np.inf, np.nan, 0.0, math.log(float(np.float32(1e-45)))]),
    (nm.tanh_f32, [np.inf, -np.inf, np.nan, 0.0, 1e30], [1.0, -1.0, np.nan, 0.0, 1.0]),
    (nm.erf_f32, [np.inf, -np.inf, np.nan, 0.0], [1.0, -1.0, np.nan, 0.0]),
    (nm.sigmoid_f32, [np.inf, -np.inf, np.nan, -200.0], [1.0, 0.0, np.nan, 0.0]),
    (nm.gelu_f32, *_GELU_SPECIAL),
    (nm.gelu_tanh_f32, *_GELU_SPECIAL),
    (nm.silu_f32, [np.inf, -np.inf, np.nan, 200.0, -200.0], [np.inf, np.nan, np.nan, 200.0, 0.0]),
]


@pytest.mark.parametrize("flags", [FASTMATH_ELEMENTWISE, FASTMATH_REDUCTION], ids=["elementwise", "reduction"])
@pytest.mark.parametrize("fn, x, expected", SPECIAL, ids=[s[0].py_func.__name__ for s in SPECIAL])
def test_special_values(fn, x, expected, flags) -> None:
    xs = np.array(x * 8, dtype=np.float32)  # 8 copies: the vector loop, not only its scalar remainder
    out = np.empty_like(xs)
    _vectorized(fn, flags)(xs, out)
    np.testing.assert_allclose(out, np.array(expected * 8, dtype=np.float32), rtol=1e-6)


@pytest.mark.parametrize("flags", [FASTMATH_ELEMENTWISE, FASTMATH_REDUCTION], ids=["elementwise", "reduction"])
def test_tanh_saturates_to_exactly_one_and_never_passes_it(flags) -> None:
    """float32 tanh is exactly +-1 from |x| = 9.01: a gradient 1 - tanh(x)^2 must be 0 there, or tanh-GELU's
    derivative (which multiplies it by ~x^3) grows without bound."""
    x = np.concatenate([np.linspace(-12.0, 12.0, 200_001, dtype=np.float32), [9.02, -9.02, 20.0, -1e4]]).astype(
        np.float32)
    out = np.empty_like(x)
    _vectorized(nm.tanh_f32, flags)(x, out)
    assert np.all(np.abs(out) <= 1.0)
    far = np.abs(x) >= 9.01
    np.testing.assert_array_equal(out[far], np.sign(x[far]))


@pytest.mark.parametrize("fn", sorted({c[0] for c in CASES}, key=lambda f: f.py_func.__name__),
                         ids=lambda f: f.py_func.__name__)
def test_loop_over_the_function_is_vector_code_without_calls(fn) -> None:
    """The loop vectorizes and calls nothing that lowers to libm (llvm.exp.v8f32 becomes 8 scalar calls)."""
    apply = _vectorized(fn, FASTMATH_ELEMENTWISE)
    apply.compile("void(float32[::1], float32[::1])")
    llvm = apply.inspect_llvm(apply.signatures[0])
    [body] = [m.group(0) for m in re.finditer(r"define [^\n]*@(\S+?)\(.*?\n}\n", llvm, re.S)
              if "apply" in m.group(1) and not m.group(1).startswith(("_ZN7cpython", "cfunc."))]
    calls = set(re.findall(r"call [^@\n]*@([\w.]+)", body))
    assert "x float>" in body, "the loop stays scalar"
    assert all(re.match(r"llvm\.(fma|fmuladd|rint|fabs|copysign)\.", c) for c in calls), calls


def test_nan_propagating_min_max_and_integer_division() -> None:
    @njit(fastmath=FASTMATH_ELEMENTWISE, error_model="numpy")
    def probe(a, b):
        return nm.fmax_nan(a, b), nm.fmin_nan(b, a), nm.div_trunc_int(a, b), nm.fmod_int(a, b)

    big, small, _, _ = probe(np.float32(np.nan), np.float32(1.0))
    assert math.isnan(big) and math.isnan(small)
    assert probe(-7, 2)[2:] == (-3, -1)
    assert probe(7, -2)[2:] == (-3, 1)
