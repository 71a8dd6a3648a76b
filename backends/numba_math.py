"""Float32 math for generated Numba loops: branch-free, so that LLVM vectorizes the loop around them.

`math.exp` and friends compile to scalar libm calls (no SVML here), which keeps a loop scalar and
makes it ~30x slower. These are range reduction + polynomial approximations written with float32
constants only (a float64 literal would promote the whole expression). Branches are selects that
compute both sides. Every function is `inline="always"`, so it takes the caller's fastmath flags;
callers must leave out the `nnan`/`ninf` flags, since NaN and infinity checks below rely on them.

Error bounds, measured against float64 libm over dense grids (tests/test_numba_math.py):
exp, log, tanh, sigmoid, log1p, expm1: relative error < 4e-7 (a few ulp) on normal results; erf < 5e-7;
silu and tanh-GELU < 1e-6 relative (plus ~1e-7 absolute where `1 + tanh` cancels);
exact GELU < 1e-6 relative plus 1.5e-6 absolute for x < -3, where `1 + erf` cancels (PyTorch's own
vectorized float32 GELU cancels there too).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

F32 = np.float32
I32 = np.int32

_LOG2E = F32(1.4426950408889634)
_LN2_HI = F32(0.693359375)  # ln 2 split so that n * _LN2_HI is exact (Cody-Waite)
_LN2_LO = F32(-2.12194440e-4)
_EXP_MAX = F32(88.8)  # exp overflows to inf above ~88.72; the scaling below gets there itself
_EXP_MIN = F32(-104.0)  # exp underflows to 0 below ~-103.97
_SQRT_HALF = F32(0.70710678118654752)
_SMALLEST_NORMAL = F32(1.17549435e-38)
_TWO_23 = F32(8388608.0)
_ONE = F32(1.0)
_HALF = F32(0.5)
_TWO = F32(2.0)
_ZERO = F32(0.0)
_INF = F32(np.inf)
_NAN = F32(np.nan)


@njit(inline="always")
def _pow2(n):
    """2**n as float32 for integer n in [-126, 127], built from the exponent bits."""
    return I32((n + 127) << 23).view(np.float32)


@njit(inline="always")
def exp_f32(x):
    """exp(x): x = n ln2 + r with |r| <= ln2/2, exp(r) by a degree-6 polynomial (Cephes expf)."""
    xc = _EXP_MIN if x < _EXP_MIN else x
    xc = _EXP_MAX if xc > _EXP_MAX else xc
    n = np.floor(xc * _LOG2E + _HALF)
    r = xc - n * _LN2_HI
    r = r - n * _LN2_LO
    p = F32(1.9875691500e-4)
    p = p * r + F32(1.3981999507e-3)
    p = p * r + F32(8.3334519073e-3)
    p = p * r + F32(4.1665795894e-2)
    p = p * r + F32(1.6666665459e-1)
    p = p * r + F32(5.0000001201e-1)
    p = p * (r * r) + r + _ONE
    # 2**n in two factors: n reaches 128 and -150, beyond one float32 exponent.
    ni = I32(n)
    half = ni >> 1
    y = p * _pow2(half) * _pow2(ni - half)
    return x if x != x else y


@njit(inline="always")
def log_f32(x):
    """log(x): x = m 2**e with m in [sqrt(1/2), sqrt(2)), log(m) by a degree-9 polynomial (Cephes logf)."""
    tiny = x < _SMALLEST_NORMAL
    xs = x * _TWO_23 if tiny else x
    bits = F32(xs).view(np.int32)
    e = F32(((bits >> 23) & 0xFF) - 126)
    e = e - F32(23.0) if tiny else e
    m = I32((bits & 0x007FFFFF) | 0x3F000000).view(np.float32)  # in [0.5, 1)
    low = m < _SQRT_HALF
    e = e - _ONE if low else e
    m = m + m - _ONE if low else m - _ONE
    z = m * m
    p = F32(7.0376836292e-2)
    p = p * m - F32(1.1514610310e-1)
    p = p * m + F32(1.1676998740e-1)
    p = p * m - F32(1.2420140846e-1)
    p = p * m + F32(1.4249322787e-1)
    p = p * m - F32(1.6668057665e-1)
    p = p * m + F32(2.0000714765e-1)
    p = p * m - F32(2.4999993993e-1)
    p = p * m + F32(3.3333331174e-1)
    y = p * m * z + e * _LN2_LO - _HALF * z
    y = m + y + e * _LN2_HI
    y = -_INF if x == _ZERO else y
    y = _INF if x == _INF else y
    return _NAN if (x < _ZERO) | (x != x) else y


@njit(inline="always")
def tanh_f32(x):
    """tanh(x): an odd polynomial below |x| = 0.625, 1 - 2 / (exp(2|x|) + 1) above (Cephes tanhf)."""
    a = abs(x)
    big = _ONE - _TWO / (exp_f32(a + a) + _ONE)
    big = big if x >= _ZERO else -big
    z = x * x
    p = F32(-5.70498872745e-3)
    p = p * z + F32(2.06390887954e-2)
    p = p * z - F32(5.37397155531e-2)
    p = p * z + F32(1.33314422036e-1)
    p = p * z - F32(3.33332819422e-1)
    small = p * z * x + x
    return small if a < F32(0.625) else big


@njit(inline="always")
def sigmoid_f32(x):
    """1 / (1 + exp(-x)); exp overflowing to inf gives exactly 0."""
    return _ONE / (_ONE + exp_f32(-x))


@njit(inline="always")
def erf_f32(x):
    """erf(x) = x P(x^2) / Q(x^2) on [-4, 4] (erf rounds to +-1 beyond): one division, no exp.

    P (degree 6) and Q (degree 4) are a rational least-squares fit of erf(x)/x on Chebyshev nodes of
    [0, 4], reweighted by 1/Q (Sanathanan-Koerner iterations); max relative error 4e-7.
    """
    xc = F32(-4.0) if x < F32(-4.0) else x
    xc = F32(4.0) if xc > F32(4.0) else xc
    u = xc * xc
    p = F32(1.9099443277e-08)
    p = p * u - F32(1.9220654498e-06)
    p = p * u + F32(1.4338746183e-04)
    p = p * u + F32(3.8406743016e-03)
    p = p * u + F32(5.1059433140e-02)
    p = p * u + F32(2.0371192717e-01)
    p = p * u + F32(1.1283791433e+00)
    q = F32(9.8377789443e-04)
    q = q * u + F32(1.4657935259e-02)
    q = q * u + F32(1.1654715917e-01)
    q = q * u + F32(5.1386704153e-01)
    q = q * u + _ONE
    y = xc * p / q
    y = _ONE if y > _ONE else y  # the fit overshoots 1 by up to 4e-7 near the clamp
    return -_ONE if y < -_ONE else y


@njit(inline="always")
def log1p_f32(x):
    """log(1 + x): 2 atanh(s) with s = x / (2 + x) as an odd series below |x| = 0.3, log(1 + x) above.

    No `(1 + x) - 1` trick: under the `reassoc` flag LLVM would fold it to x.
    """
    s = x / (_TWO + x)
    z = s * s
    p = F32(2.0 / 11.0)
    p = p * z + F32(2.0 / 9.0)
    p = p * z + F32(2.0 / 7.0)
    p = p * z + F32(2.0 / 5.0)
    p = p * z + F32(2.0 / 3.0)
    small = s * (p * z + _TWO)
    return small if abs(x) < F32(0.3) else log_f32(_ONE + x)


@njit(inline="always")
def expm1_f32(x):
    """exp(x) - 1: the degree-9 Taylor polynomial below |x| = 0.5, exp(x) - 1 above."""
    p = F32(1.0 / 362880.0)
    p = p * x + F32(1.0 / 40320.0)
    p = p * x + F32(1.0 / 5040.0)
    p = p * x + F32(1.0 / 720.0)
    p = p * x + F32(1.0 / 120.0)
    p = p * x + F32(1.0 / 24.0)
    p = p * x + F32(1.0 / 6.0)
    p = p * x + _HALF
    small = (p * x) * x + x
    return small if abs(x) < _HALF else exp_f32(x) - _ONE


_SQRT1_2 = F32(0.70710678118654752)
_SQRT_2_PI = F32(0.79788456080286536)
_GELU_CUBIC = F32(0.044715)


@njit(inline="always")
def gelu_f32(x):
    """Exact GELU: x/2 (1 + erf(x / sqrt 2))."""
    return _HALF * x * (_ONE + erf_f32(x * _SQRT1_2))


@njit(inline="always")
def gelu_tanh_f32(x):
    """Tanh GELU: x/2 (1 + tanh(z)) with z = sqrt(2/pi) (x + 0.044715 x^3), computed as x / (1 + exp(-2z)).

    The identity 1 + tanh(z) = 2 sigmoid(2z) needs one exp and one division and no branch on |z|
    (exp overflowing to inf gives exactly -0 for very negative x).
    """
    z = _SQRT_2_PI * (x + _GELU_CUBIC * x * x * x)
    return x / (_ONE + exp_f32(-(z + z)))


@njit(inline="always")
def silu_f32(x):
    """x * sigmoid(x)."""
    return x / (_ONE + exp_f32(-x))


@njit(inline="always")
def gelu_f64(x):
    return 0.5 * x * (1.0 + math.erf(x * 0.70710678118654752))


@njit(inline="always")
def gelu_tanh_f64(x):
    return 0.5 * x * (1.0 + math.tanh(0.79788456080286536 * (x + 0.044715 * x * x * x)))


@njit(inline="always")
def sigmoid_f64(x):
    return 1.0 / (1.0 + math.exp(-x))


@njit(inline="always")
def fmax_nan(a, b):
    """max propagating NaN from either side (torch.maximum)."""
    return a if (a > b) | (a != a) else b


@njit(inline="always")
def fmin_nan(a, b):
    """min propagating NaN from either side (torch.minimum)."""
    return a if (a < b) | (a != a) else b


@njit(inline="always")
def div_trunc_int(a, b):
    """Integer division rounding toward zero (C semantics); Python's // floors."""
    q = a // b
    return q + 1 if (q < 0) & (q * b != a) else q


@njit(inline="always")
def fmod_int(a, b):
    """Integer remainder with the dividend's sign (C `%`); Python's % takes the divisor's."""
    return a - b * div_trunc_int(a, b)


@njit(inline="always")
def clamp_nan(x, lo, hi):
    """x limited to [lo, hi]; NaN stays NaN (torch.clamp)."""
    y = lo if x < lo else x
    return hi if y > hi else y


@njit(inline="always")
def silu_f64(x):
    return x / (1.0 + math.exp(-x))
