"""Float32 math for generated Numba loops: branch-free, so that LLVM vectorizes the loop around them.

`math.exp` and friends compile to scalar libm calls (no SVML here), which keeps a loop scalar and
makes it ~30x slower. These are range reduction + polynomial or rational approximations written with
float32 constants only (a float64 literal would promote the whole expression). Branches are selects
that compute both sides. Every function is `inline="always"`, so it takes the caller's fastmath flags;
callers must leave out the `nnan`/`ninf` flags, since NaN and infinity checks below rely on them.
Polynomials spell out their FMAs (`_fma`, one rounding each) rather than rely on the caller allowing
`contract`, which the generated kernels do not (numba_codegen.FASTMATH_ELEMENTWISE).

Clamps are `min(max(x, lo), hi)`: Numba computes `max(a, b)` as `select(b > a, b, a)`, which keeps a
NaN `a` and compiles to one vmaxps (two chained `lo if x < lo else x` selects became compare, min, blend).
A large elementwise loop over these functions is bound by the FP pipes, not by memory, so each spends
as few vector operations as its accuracy allows (bench/roofline.py measures them): exp is one
polynomial of degree 5 and a 2**n built from the exponent bits; tanh and both GELUs are one rational
function each, with no exp; sigmoid and silu are exp and one division.

Error bounds, measured against float64 libm over dense grids (tests/test_numba_math.py):
log, log1p: relative error < 4e-7 (a few ulp); erf < 5e-7; exp, expm1, sigmoid < 5e-7 on normal
results (exp's one-step reduction x - n ln2 adds up to 2.4e-7 at |x| near 88); tanh < 8e-7;
silu < 1e-6; exact and tanh GELU < 1e-6 relative plus 1e-6 absolute, reached for x < 0 where
1/2 + x P/Q cancels (PyTorch's own vectorized float32 GELU cancels there too).
exp flushes results below 2**-125 (x < -86.99) to zero, where float32 is subnormal or nearly.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

F32 = np.float32
I32 = np.int32

_LOG2E = F32(1.4426950408889634)
_LN2 = F32(0.6931471805599453)
_LN2_HI = F32(0.693359375)  # ln 2 split so that e * _LN2_HI is exact (log's Cody-Waite reduction)
_LN2_LO = F32(-2.12194440e-4)
_EXP_MIN = F32(-87.6)  # rint(x log2 e) >= -126: the scale's exponent field stays >= 0 (0 gives 0.0)
_EXP_MAX = F32(89.0)  # rint(x log2 e) <= 128; exp overflows to inf above 88.72 by the final product
_EXP_ROUND = F32(12583038.0)  # 1.5 * 2**23 + 126: adding it rounds to an integer, kept in the low bits
_SQRT_HALF = F32(0.70710678118654752)
_SMALLEST_NORMAL = F32(1.17549435e-38)
_TWO_23 = F32(8388608.0)
_TWO_24 = F32(16777216.0)
_TWO_12 = F32(4096.0)
_ONE = F32(1.0)
_HALF = F32(0.5)
_TWO = F32(2.0)
_ZERO = F32(0.0)
_INF = F32(np.inf)
_NAN = F32(np.nan)


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once (llvm.fma.f32), whatever the caller's fastmath flags allow."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32] * 3), "llvm.fma.f32")
        return builder.call(fma, args)

    return sig, codegen


@njit(inline="always")
def exp_f32(x):
    """exp(x) = 2**(n - 1) * 2 exp(r) with n = rint(x log2 e), r = x - n ln2 in one FMA (|r| <= ln2/2) and
    2 exp(r) by a degree-5 minimax polynomial (relative error 1.1e-7).

    t = x log2 e + 1.5 * 2**23 + 126 rounds to n + 126 in its low mantissa bits (no vroundps); shifted
    left 23 they are the exponent field of 2**(n - 1), in [0, 254] after the clamp, so one product
    scales: it rounds to inf exactly where exp overflows, and field 0 gives 0.0 below x = -86.99.
    t comes from llvm.fma, so `reassoc` cannot fold t - (1.5 * 2**23 + 126) back to x log2 e.
    A NaN passes the clamp and the polynomial; its scale is 0.0, and NaN * 0 is NaN.
    """
    xc = min(max(x, _EXP_MIN), _EXP_MAX)
    t = _fma(xc, _LOG2E, _EXP_ROUND)
    n = t - _EXP_ROUND
    r = _fma(-n, _LN2, xc)
    p = F32(1.6625041e-02)
    p = _fma(p, r, F32(8.378031e-02))
    p = _fma(p, r, F32(3.3334229e-01))
    p = _fma(p, r, F32(9.999846e-01))
    p = _fma(p, r, _TWO)
    p = _fma(p, r, _TWO)
    scale = I32(F32(t).view(np.int32) << 23).view(np.float32)
    return p * scale


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
    p = _fma(p, m, F32(-1.1514610310e-1))
    p = _fma(p, m, F32(1.1676998740e-1))
    p = _fma(p, m, F32(-1.2420140846e-1))
    p = _fma(p, m, F32(1.4249322787e-1))
    p = _fma(p, m, F32(-1.6668057665e-1))
    p = _fma(p, m, F32(2.0000714765e-1))
    p = _fma(p, m, F32(-2.4999993993e-1))
    p = _fma(p, m, F32(3.3333331174e-1))
    y = p * m * z + e * _LN2_LO - _HALF * z
    y = m + y + e * _LN2_HI
    y = -_INF if x == _ZERO else y
    y = _INF if x == _INF else y
    return _NAN if (x < _ZERO) | (x != x) else y


@njit(inline="always")
def tanh_f32(x):
    """tanh(x) = x P(x^2) / Q(x^2), clipped to [-1, 1]: one division, no exp.

    P (degree 3) and Q (degree 4, monic) are a minimax fit of the relative error of tanh(x)/x on
    [0, 9] (Sanathanan-Koerner iterations with Lawson weights); max relative error 3.8e-7 before rounding.
    The fit reaches 1 at 8.11 (tanh is within 2 ulp of 1 there) and stays above it up to 8.9, so with x^2
    capped at 8.5^2 the fit times x is 1 or more in magnitude from there on (it grows with x) and the clip
    makes it exactly +-1, as float32 tanh is from 9.01: a gradient 1 - tanh(x)^2 is then 0 for large x, not
    a residue that the x^3 of tanh-GELU's derivative magnifies. (Capping x^2 takes one min where clamping
    x takes a min and a max.)
    """
    u = min(x * x, F32(72.25))
    p = F32(4.8582086e+01)
    p = _fma(p, u, F32(1.3306376e+04))
    p = _fma(p, u, F32(5.981980e+05))
    p = _fma(p, u, F32(4.6605537e+06))
    q = u + F32(1.0499686e+03)
    q = _fma(q, u, F32(1.09150306e+05))
    q = _fma(q, u, F32(2.15170315e+06))
    q = _fma(q, u, F32(4.6605554e+06))
    return min(max(p / q * x, -_ONE), _ONE)


@njit(inline="always")
def rsqrt_f32(x):
    """1 / sqrt(x), divided exactly; 0, inf and subnormals take selects (subnormals scaled by 2**24 first;
    -0.0 gives -inf, as 1 / sqrt(-0.0) does), which keep them right under any fastmath flags."""
    small = x < _SMALLEST_NORMAL
    r = _ONE / np.sqrt(x * _TWO_24 if small else x)
    r = r * _TWO_12 if small else r
    r = np.copysign(_INF, x) if x == _ZERO else r
    return _ZERO if x == _INF else r


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
    xc = min(max(x, F32(-4.0)), F32(4.0))
    u = xc * xc
    p = F32(1.9099443277e-08)
    p = _fma(p, u, F32(-1.9220654498e-06))
    p = _fma(p, u, F32(1.4338746183e-04))
    p = _fma(p, u, F32(3.8406743016e-03))
    p = _fma(p, u, F32(5.1059433140e-02))
    p = _fma(p, u, F32(2.0371192717e-01))
    p = _fma(p, u, F32(1.1283791433e+00))
    q = F32(9.8377789443e-04)
    q = _fma(q, u, F32(1.4657935259e-02))
    q = _fma(q, u, F32(1.1654715917e-01))
    q = _fma(q, u, F32(5.1386704153e-01))
    q = _fma(q, u, _ONE)
    y = xc * p / q
    return max(min(y, _ONE), -_ONE)  # the fit overshoots 1 by up to 4e-7 near the clamp


@njit(inline="always")
def log1p_f32(x):
    """log(1 + x): 2 atanh(s) with s = x / (2 + x) as an odd series below |x| = 0.3, log(1 + x) above.

    No `(1 + x) - 1` trick: under the `reassoc` flag LLVM would fold it to x.
    """
    s = x / (_TWO + x)
    z = s * s
    p = F32(2.0 / 11.0)
    p = _fma(p, z, F32(2.0 / 9.0))
    p = _fma(p, z, F32(2.0 / 7.0))
    p = _fma(p, z, F32(2.0 / 5.0))
    p = _fma(p, z, F32(2.0 / 3.0))
    small = s * _fma(p, z, _TWO)
    return small if abs(x) < F32(0.3) else log_f32(_ONE + x)


@njit(inline="always")
def expm1_f32(x):
    """exp(x) - 1: the degree-9 Taylor polynomial below |x| = 0.7 (its error there is 8e-9), exp(x) - 1 above."""
    p = F32(1.0 / 362880.0)
    p = _fma(p, x, F32(1.0 / 40320.0))
    p = _fma(p, x, F32(1.0 / 5040.0))
    p = _fma(p, x, F32(1.0 / 720.0))
    p = _fma(p, x, F32(1.0 / 120.0))
    p = _fma(p, x, F32(1.0 / 24.0))
    p = _fma(p, x, F32(1.0 / 6.0))
    p = _fma(p, x, _HALF)
    small = _fma(p * x, x, x)
    return small if abs(x) < F32(0.7) else exp_f32(x) - _ONE


@njit(inline="always")
def gelu_f32(x):
    """Exact GELU x Phi(x), Phi(x) = 1/2 + x P(u) / Q(u) with u = min(x^2, 5.25^2), clipped to [0, 1].

    P (degree 4) and Q (degree 5, monic) fit (erf(x / sqrt 2) / 2) / x on [0, 5.25] (Sanathanan-Koerner
    iterations with Lawson weights) to 14% of the GELU error budget 1e-6 + 2e-5 |gelu(x)|; float32
    rounding of 1/2 + x P/Q, which cancels for x < 0, makes most of the rest. Beyond |x| = 5.25 only u
    is clamped: x P/Q keeps growing past +-1/2, so the clip gives Phi exactly 0 or 1 there, and
    gelu(-inf) is NaN (-inf * 0) as in PyTorch.
    """
    u = min(x * x, F32(27.5625))
    p, q = gelu_fit_f32(u)
    return x * min(max(_fma(p / q, x, _HALF), _ZERO), _ONE)


@njit(inline="always")
def gelu_fit_f32(u):
    """Numerator and denominator of `gelu_f32`'s fit at u = x^2 (bench/op_costs.py times them apart)."""
    p = F32(1.2237015e+01)
    p = _fma(p, u, F32(6.6204804e+02))
    p = _fma(p, u, F32(8.509502e+03))
    p = _fma(p, u, F32(8.526399e+04))
    p = _fma(p, u, F32(4.991191e+05))
    q = u + F32(2.4455041e+02)
    q = _fma(q, u, F32(4.852465e+03))
    q = _fma(q, u, F32(6.05109043e+04))
    q = _fma(q, u, F32(4.2216846e+05))
    q = _fma(q, u, F32(1.251127e+06))
    return p, q


@njit(inline="always")
def gelu_tanh_f32(x):
    """Tanh GELU x (1 + tanh(z)) / 2 with z = sqrt(2/pi) (x + 0.044715 x^3), in the form of `gelu_f32`
    (no exp, no tanh): P (degree 4) and Q (degree 5, monic) fit tanh(z) / (2 x) on [0, 5]."""
    u = min(x * x, F32(25.0))
    p = F32(1.08031564e+01)
    p = _fma(p, u, F32(4.339735e+02))
    p = _fma(p, u, F32(8.0957543e+03))
    p = _fma(p, u, F32(8.5130085e+04))
    p = _fma(p, u, F32(8.121594e+05))
    q = u + F32(1.84806586e+02)
    q = _fma(q, u, F32(3.45217636e+03))
    q = _fma(q, u, F32(6.1154384e+04))
    q = _fma(q, u, F32(5.5430204e+05))
    q = _fma(q, u, F32(2.03580116e+06))
    return x * min(max(_fma(p / q, x, _HALF), _ZERO), _ONE)


@njit(inline="always")
def silu_f32(x):
    """x * sigmoid(x) as x / (1 + exp(-x)): one exp and one division."""
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
def _div_floor(a, b, zero, one, half):
    """a // b for floats as torch computes it: the floor of the exact quotient (Python's //), from fmod,
    which is exact; flooring the rounded a / b is one too high when it rounds up to an integer
    (1.0 // 0.1 is 9.0). Division by zero gives a / b (inf or NaN)."""
    mod = np.fmod(a, b)
    quotient = (a if b == zero else a - mod) / b  # one division: `arcp` would share a reciprocal of b
    if b == zero:
        return quotient
    if (mod != zero) & ((b < zero) != (mod < zero)):
        quotient = quotient - one
    if quotient == zero:
        return zero
    floored = np.floor(quotient)
    return floored + one if quotient - floored > half else floored


@njit(inline="always")
def div_floor_float32(a, b):
    return _div_floor(a, b, F32(0.0), F32(1.0), F32(0.5))


@njit(inline="always")
def div_floor_float64(a, b):
    return _div_floor(a, b, 0.0, 1.0, 0.5)


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
