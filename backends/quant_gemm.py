"""Int8 linear layers on the CPU: Numba kernels for `linear_weight_int8` and `linear_dynamic_int8`.

Each op has a few ways to run; `choose_quant_plan` times them on the node's shapes and keeps the fastest:

- "gemv" (weight-only, `activation_bits=32`): one pass over the int8 weight; the dot product's vector loop
  converts it to float32 (vpmovsxbd, vcvtdq2ps, vfmadd on AVX2) and applies the scale once per output,
  or once per block for group-wise scales. A single row of x runs `_dot_i8`, a loop written in LLVM IR
  on 4-lane vectors: on Zen 1 (8-lane AVX ops split in two halves) the 8-lane loop that LLVM picks for
  the same source is 15-30% slower. The int8 -> float32 conversion bounds it at ~6 G weights/s here.
- "int-streams" (weight-only with `activation_bits=16`, and dynamic): x rounded per row (or per tensor)
  to 16-bit (or 8-bit) integers by one kernel that finds the row's amax, then int16 x int8 dot products
  by pmaddwd (`_dot4_i16`, LLVM IR: no conversion of the weights beyond a sign extension), exact in int32
  over chunks of 512 inputs (16-bit) or the whole row (8-bit), rescaled `acc * x_scale * w_scale + bias`.
  Four weight rows a quarter of the matrix apart are read at once: four memory streams draw about 1.5x
  the DRAM bandwidth of one on this CPU (12-14 G weights/s from DRAM against 8-9 for one stream).
- "int-rows" (dynamic, several rows of x): each weight row widened to int16 once for all rows of x.
- "int-mm" (dynamic): x rounded to 8 bits by `quantize_rows`, the int8 product by `torch._int_mm` (oneDNN),
  rescaled by a Numba kernel. Offered only where a probe at the node's sizes finds `torch._int_mm` exact
  (`int_mm_is_exact`): with AVX-512 VNNI oneDNN's u8 x s8 kernel (x + 128, then a compensation) sums
  `vpdpbusd` products in int32, and there it is 3-7x faster than float32 `F.linear` (64x4096x4096: 11 ms
  against 34 on a Zen 4). On AVX2 it sums pairs in saturating int16 (vpmaddubsw: 255 * 127 * 2 > 32767),
  wrong for full-range 8-bit x, and torch 2.13 returns garbage for an inner size of 1.
- "ort-int" (dynamic, constant weight): the same with ONNX Runtime's `MatMulInteger` on x stored as uint8
  (ort_int8.py), likewise offered where a probe finds it exact; about twice `torch._int_mm`'s speed on the
  Zen 4 (64x4096x4096: 5.5 against 10.4 ms), which prepacks nothing.
- "dequant-mm" (both): the weight dequantized per call, a chunk of rows at a time into a float32
  buffer that stays in cache, each chunk multiplied by MKL (`torch.mm`); x is rounded first exactly
  as the op rounds it (16 or 8 bits), so this computes the reference's float product. Best for
  large batches.

The kernels are functions of this module with the sizes as arguments: each compiles once (or loads
from Numba's cache beside this file) and serves every shape. They run on one thread; the library
calls use PyTorch's threads.

Other library int8 products are not used: fbgemm's dynamic linear quantizes x asymmetrically per tensor,
which is not this op, and on the first-generation Zen `torch._int_mm` was a slow fallback (about 15x slower
than float32 `F.linear` at 64x768x768) besides inexact (the timed choice would not take it).
Half-precision linears are left to the reference backend: on AVX2 without native bf16/fp16
arithmetic, torch's bf16 and fp16 `F.linear` are slower than float32 (bench/quant_kernels.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial

import numpy as np
import torch
from llvmlite import ir
from numba import carray, cfunc, njit, types, uint32, uint64
from numba.core import cgutils
from numba.extending import intrinsic

from ..ir import DType, Node
from .ort_int8 import ZERO_POINT, ort_int8_is_exact, ort_int8_product
from .timing import fastest_runs, memory_evict_bytes

QUANT_LINEAR_OPS = ("linear_weight_int8", "linear_dynamic_int8")
# reassoc lets the dot products vectorize; no arcp: quantizing x divides by its scale exactly as torch does.
_JIT = {"fastmath": {"nsz", "contract", "reassoc"}, "error_model": "numpy", "nogil": True, "cache": True}
# Scaling without reassoc: the product's order keeps it finite (see `_rescale`); integer sums need no flag.
_JIT_ORDERED = {**_JIT, "fastmath": {"nsz", "contract"}}
_CHUNK_BYTES = 1 << 20  # dequantized weight rows per library call: about L2-sized


def supports_quant_linear(node: Node) -> bool:
    """Whether the kernels here compute `node`: a quantized linear on float32 x with static shapes."""
    if node.op not in QUANT_LINEAR_OPS:
        return False
    x, qweight, scale, *bias = node.inputs
    types = [v.type for v in [*node.inputs, *node.outputs]]
    if not all(t.is_static for t in types) or x.type.rank < 1 or qweight.type.rank != 2:
        return False
    floats = [x, scale, *bias, *node.outputs]
    if any(v.type.dtype is not DType.f32 for v in floats) or qweight.type.dtype is not DType.i8:
        return False
    if x.type.shape[-1] == 0:
        return False  # no inputs: the result is the bias, which the reference backend gives
    if node.op == "linear_weight_int8":
        return node.attrs["block_size"] >= 0
    # int32 sums of 127 * 127 products are exact up to 2**31 / 127**2 = 133,143 terms.
    return node.attrs["granularity"] in ("row", "tensor") and scale.type.rank == 1 and x.type.shape[-1] <= 1 << 17


# ---------------------------------------------------------------------------------------------
# Kernels: flat row-major arrays; sizes are unsigned so that Numba needs no negative-index wraparound,
# which would keep the loops from vectorizing.


_DOT_LANES, _DOT_CHAINS = 4, 4  # <4 x float> accumulators: four FMA chains hide the FMA latency


@intrinsic
def _dot_i8(typingctx, x, w, x_start, w_start, length):
    """float32 sum of x[x_start + t] * float32(w[w_start + t]) for t < length (x float32, w int8 arrays):
    a vector loop of _DOT_CHAINS accumulators of _DOT_LANES floats, then a scalar loop for the rest."""
    sig = types.float32(x, w, types.uint64, types.uint64, types.uint64)

    def codegen(context, builder, signature, args):
        xs, ws, x0, w0, n = args
        f32, i64 = ir.FloatType(), ir.IntType(64)
        vf, vi, vb = (ir.VectorType(t, _DOT_LANES) for t in (f32, ir.IntType(32), ir.IntType(8)))
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf] * 3),
                                             f"llvm.fma.v{_DOT_LANES}f32")
        xp = builder.gep(context.make_array(signature.args[0])(context, builder, xs).data, [x0])
        wp = builder.gep(context.make_array(signature.args[1])(context, builder, ws).data, [w0])
        step = ir.Constant(i64, _DOT_LANES * _DOT_CHAINS)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(vf, [0.0] * _DOT_LANES)) for _ in range(_DOT_CHAINS)]
        steps = builder.udiv(n, step)
        with cgutils.for_range(builder, steps) as loop:
            base = builder.mul(loop.index, step)
            for c, acc in enumerate(accs):
                at = builder.add(base, ir.Constant(i64, c * _DOT_LANES))
                wv = builder.load(builder.bitcast(builder.gep(wp, [at]), vb.as_pointer()), align=1)
                xv = builder.load(builder.bitcast(builder.gep(xp, [at]), vf.as_pointer()), align=4)
                builder.store(builder.call(fma, [xv, builder.sitofp(builder.sext(wv, vi), vf), builder.load(acc)]), acc)
        total = builder.load(accs[0])
        for acc in accs[1:]:
            total = builder.fadd(total, builder.load(acc))
        lanes = [builder.extract_element(total, ir.Constant(ir.IntType(32), t)) for t in range(_DOT_LANES)]
        while len(lanes) > 1:
            lanes = [builder.fadd(a, b) for a, b in zip(lanes[::2], lanes[1::2], strict=True)]
        result = cgutils.alloca_once_value(builder, lanes[0])
        done = builder.mul(steps, step)
        with cgutils.for_range(builder, builder.sub(n, done)) as loop:
            at = builder.add(done, loop.index)
            wf = builder.sitofp(builder.load(builder.gep(wp, [at])), f32)
            builder.store(builder.fma(builder.load(builder.gep(xp, [at])), wf, builder.load(result)), result)
        return builder.load(result)

    return sig, codegen


_PAIRS = 8  # int16 lanes per pmaddwd: 128-bit vectors (on Zen 1 a 256-bit op is two 128-bit halves anyway)


@intrinsic
def _dot4_i16(typingctx, q, w, q_start, r0, r1, r2, r3, length):
    """int32 sums of q[q_start + t] * w[r + t] for t < length, for the four weight offsets r (q int16, w int8
    arrays): one loop loads each q vector once and multiplies it with the four rows by pmaddwd (pairs of
    int16 products summed into int32 lanes), then a scalar loop for the rest. Exact while
    length * max|q| * max|w| < 2**31."""
    sig = types.UniTuple(types.int32, 4)(q, w, *[types.uint64] * 6)

    def codegen(context, builder, signature, args):
        qs, ws, q0, *rows, n = args
        i64, i32, i16 = ir.IntType(64), ir.IntType(32), ir.IntType(16)
        vq, vw, vacc = ir.VectorType(i16, _PAIRS), ir.VectorType(ir.IntType(8), _PAIRS), ir.VectorType(i32, _PAIRS // 2)
        pmadd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vacc, [vq, vq]),
                                               "llvm.x86.sse2.pmadd.wd")
        qp = builder.gep(context.make_array(signature.args[0])(context, builder, qs).data, [q0])
        wdata = context.make_array(signature.args[1])(context, builder, ws).data
        wps = [builder.gep(wdata, [r]) for r in rows]
        accs = [cgutils.alloca_once_value(builder, ir.Constant(vacc, [0] * (_PAIRS // 2))) for _ in rows]
        step = ir.Constant(i64, _PAIRS)
        steps = builder.udiv(n, step)
        with cgutils.for_range(builder, steps) as loop:
            at = builder.mul(loop.index, step)
            qv = builder.load(builder.bitcast(builder.gep(qp, [at]), vq.as_pointer()), align=2)
            for wp, acc in zip(wps, accs, strict=True):
                wv = builder.sext(builder.load(builder.bitcast(builder.gep(wp, [at]), vw.as_pointer()), align=1), vq)
                builder.store(builder.add(builder.load(acc), builder.call(pmadd, [qv, wv])), acc)
        done = builder.mul(steps, step)
        sums = []
        for wp, acc in zip(wps, accs, strict=True):
            lanes = [builder.extract_element(builder.load(acc), ir.Constant(i32, t)) for t in range(_PAIRS // 2)]
            while len(lanes) > 1:
                lanes = [builder.add(a, b) for a, b in zip(lanes[::2], lanes[1::2], strict=True)]
            total = cgutils.alloca_once_value(builder, lanes[0])
            with cgutils.for_range(builder, builder.sub(n, done)) as loop:
                at = builder.add(done, loop.index)
                product = builder.mul(builder.sext(builder.load(builder.gep(qp, [at])), i32),
                                      builder.sext(builder.load(builder.gep(wp, [at])), i32))
                builder.store(builder.add(builder.load(total), product), total)
            sums.append(builder.load(total))
        return context.make_tuple(builder, signature.return_type, sums)

    return sig, codegen


@njit(**_JIT)
def _weight_gemv(x, w, s, bias, y, m, n, k, bs):
    """y[i, j] = sum over blocks b of s[j, b] * (x[i, b-th block] . w[j, b-th block]) + bias[j]; four rows
    of x at a time share each converted weight vector, the rows left over take `_dot_i8`."""
    inner, block, cols = uint64(k), uint64(bs), uint64(n)
    nb = (inner + block - uint64(1)) // block
    fours = uint64(m) - uint64(m) % uint64(4)
    for j in range(cols):
        wr = j * inner
        for i in range(uint64(0), fours, uint64(4)):
            x0 = i * inner
            x1, x2, x3 = x0 + inner, x0 + uint64(2) * inner, x0 + uint64(3) * inner
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for b in range(nb):
                start = b * block
                p0 = p1 = p2 = p3 = np.float32(0.0)
                for kk in range(start, min(start + block, inner)):
                    v = np.float32(w[wr + kk])
                    p0 += x[x0 + kk] * v
                    p1 += x[x1 + kk] * v
                    p2 += x[x2 + kk] * v
                    p3 += x[x3 + kk] * v
                sb = s[j * nb + b]
                a0 += p0 * sb
                a1 += p1 * sb
                a2 += p2 * sb
                a3 += p3 * sb
            y[i * cols + j] = a0 + bias[j]
            y[(i + uint64(1)) * cols + j] = a1 + bias[j]
            y[(i + uint64(2)) * cols + j] = a2 + bias[j]
            y[(i + uint64(3)) * cols + j] = a3 + bias[j]
        for i in range(fours, uint64(m)):
            xr = i * inner
            acc = np.float32(0.0)
            for b in range(nb):
                start = b * block
                acc += _dot_i8(x, w, xr + start, wr + start, min(start + block, inner) - start) * s[j * nb + b]
            y[i * cols + j] = acc + bias[j]


@njit(**_JIT)
def _dequantize_rows(w, s, out, first, last, k, bs):
    """out[j - first, :] = w[j, :] * its scales (what `dequantize` computes) for first <= j < last."""
    inner, block, top = uint64(k), uint64(bs), uint64(first)
    nb = (inner + block - uint64(1)) // block
    for j in range(top, uint64(last)):
        wr = j * inner
        orow = (j - top) * inner
        for b in range(nb):
            start = b * block
            sb = s[j * nb + b]
            for kk in range(start, min(start + block, inner)):
                out[orow + kk] = np.float32(w[wr + kk]) * sb


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is uint32 `bits`."""
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


_MAGNITUDE_BITS, _INF_BITS = 0x7FFFFFFF, 0x7F800000  # float32 |x| as bits; at or above inf: inf or NaN


@njit(**_JIT)
def _quantize_rows(x, q, xs, m, k, per_row, top, offset):
    """q = round_half_even(x / scale) clamped to [-top, top], plus `offset`, with scale = max(amax |x|, 1e-12)
    / top over each row (per_row) or the whole tensor; xs gets the scales (one, or one per row). A row
    holding a NaN or an infinity gets scale NaN and q = 0 (plus offset), as `quantize_rows_symmetric`: its
    results are NaN. (Offset 128 stores int8 values as uint8, ONNX Runtime's fast activation type.)

    amax is the integer max of the magnitudes' bits (for floats >= 0 the same order): unlike a float
    max(), which skips a NaN, it sees NaN and inf as the largest, at the same speed."""
    inner = uint64(k)
    rows = uint64(m) if per_row else uint64(1)
    span = inner if per_row else uint64(m) * inner
    limit = np.float32(top)
    bits = x.view(np.uint32)
    for r in range(rows):
        base = r * span
        amax_bits = uint32(0)
        for t in range(span):
            amax_bits = max(amax_bits, bits[base + t] & uint32(_MAGNITUDE_BITS))
        if amax_bits >= uint32(_INF_BITS):
            xs[r] = np.float32(np.nan)
            for t in range(span):
                q[base + t] = offset
            continue
        scale = max(_float32_from_bits(amax_bits), np.float32(1e-12)) / limit
        xs[r] = scale
        for t in range(span):
            v = np.rint(x[base + t] / scale)
            q[base + t] = np.int16(min(max(v, -limit), limit)) + offset


@njit(**_JIT)
def _int_streams(q, w, xs, ws, bias, y, m, n, k, bs, chunk, xs_step):
    """y[i, j] = sum over blocks b of ws[j, b] * (q[i, block] . w[j, block]) * xs[i] + bias[j]: int16 x
    int8 dot products, exact in int32 over `chunk` inputs at a time (`_dot4_i16`), summed in float32.
    Four weight rows a quarter of the matrix apart are read together: four memory streams draw
    about 1.5x the DRAM bandwidth of one on this CPU. Past the last row the streams repeat it (the
    same value is written twice)."""
    inner, cols, block, step, span = uint64(k), uint64(n), uint64(bs), uint64(xs_step), uint64(chunk)
    nb = (inner + block - uint64(1)) // block
    part = (cols + uint64(3)) // uint64(4)
    last = cols - uint64(1)
    for j0 in range(part):
        j1, j2, j3 = min(j0 + part, last), min(j0 + uint64(2) * part, last), min(j0 + uint64(3) * part, last)
        for i in range(uint64(m)):
            xr = i * inner
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for b in range(nb):
                start = b * block
                stop = min(start + block, inner)
                p0 = p1 = p2 = p3 = np.float32(0.0)
                for c in range(start, stop, span):
                    d0, d1, d2, d3 = _dot4_i16(q, w, xr + c, j0 * inner + c, j1 * inner + c, j2 * inner + c,
                                               j3 * inner + c, min(c + span, stop) - c)
                    p0 += np.float32(d0)
                    p1 += np.float32(d1)
                    p2 += np.float32(d2)
                    p3 += np.float32(d3)
                a0 += p0 * ws[j0 * nb + b]
                a1 += p1 * ws[j1 * nb + b]
                a2 += p2 * ws[j2 * nb + b]
                a3 += p3 * ws[j3 * nb + b]
            xsi = xs[i * step]
            y[i * cols + j0] = a0 * xsi + bias[j0]
            y[i * cols + j1] = a1 * xsi + bias[j1]
            y[i * cols + j2] = a2 * xsi + bias[j2]
            y[i * cols + j3] = a3 * xsi + bias[j3]


@njit(**_JIT_ORDERED)
def _int_rows(q, w, xs, ws, bias, y, m, n, k, xs_step):
    """y[i, j] = (q[i, :] . w[j, :]) * ws[j] * xs[i] + bias[j] for int8-range q, with each weight row widened to
    int16 once for all rows of x. Numba types the products int64; reading the sum back as int32 lets LLVM
    narrow the loop to pmaddwd (exact: |q|, |w| <= 127 and k < 2**17)."""
    inner, cols, step = uint64(k), uint64(n), uint64(xs_step)
    row = np.empty(inner, np.int16)
    for j in range(cols):
        wr = j * inner
        for kk in range(inner):
            row[kk] = w[wr + kk]
        for i in range(uint64(m)):
            xr = i * inner
            acc = np.int32(0)
            for kk in range(inner):
                acc += np.int32(q[xr + kk]) * np.int32(row[kk])
            y[i * cols + j] = np.float32(np.int32(acc)) * ws[j] * xs[i * step] + bias[j]


@njit(**_JIT_ORDERED)
def _rescale(acc, xs, ws, bias, y, m, n, xs_step):
    """y[i, j] = acc[i, j] * ws[j] * xs[i] + bias[j]: a library's exact int32 products scaled as `_int_rows`
    scales its own. The weight scale comes first, as in `_int_streams`: x's scale is amax / 127, up to
    2.7e36, and acc (up to 2e9) times it would overflow where the result does not."""
    cols, step = uint64(n), uint64(xs_step)
    for i in range(uint64(m)):
        scale = xs[i * step]
        for j in range(cols):
            y[i * cols + j] = np.float32(acc[i * cols + j]) * ws[j] * scale + bias[j]


# C entry points: the kernels on the arrays at the given addresses (ctypes calls cost less than
# Numba's dispatch on tensor views, and release the GIL).

def _weight_gemv_entry(px, pw, ps, pb, py, m, n, k, bs, ns):
    _weight_gemv(carray(px, (m * k,), np.float32), carray(pw, (n * k,), np.int8), carray(ps, (ns,), np.float32),
                 carray(pb, (n,), np.float32), carray(py, (m * n,), np.float32), m, n, k, bs)


def _dequantize_rows_entry(pw, ps, po, first, last, n, k, bs, ns):
    _dequantize_rows(carray(pw, (n * k,), np.int8), carray(ps, (ns,), np.float32),
                     carray(po, ((last - first) * k,), np.float32), first, last, k, bs)


def _quantize_rows_entry(px, pq, pxs, m, k, per_row, top):
    _quantize_rows(carray(px, (m * k,), np.float32), carray(pq, (m * k,), np.int16),
                   carray(pxs, (m if per_row else 1,), np.float32), m, k, per_row, top, 0)


def _int_streams_entry(px, pq, pxs, pw, pws, pb, py, m, n, k, bs, chunk, per_row, top, ns):
    """x rounded into q and xs by `_quantize_rows`, then `_int_streams`: one call from Python."""
    q = carray(pq, (m * k,), np.int16)
    xs = carray(pxs, (m if per_row else 1,), np.float32)
    _quantize_rows(carray(px, (m * k,), np.float32), q, xs, m, k, per_row, top, 0)
    _int_streams(q, carray(pw, (n * k,), np.int8), xs, carray(pws, (ns,), np.float32), carray(pb, (n,), np.float32),
                 carray(py, (m * n,), np.float32), m, n, k, bs, chunk, per_row)


def _quantize_rows8_entry(px, pq, pxs, m, k, per_row, top):
    _quantize_rows(carray(px, (m * k,), np.float32), carray(pq, (m * k,), np.int8),
                   carray(pxs, (m if per_row else 1,), np.float32), m, k, per_row, top, 0)


def _quantize_rows_u8_entry(px, pq, pxs, m, k, per_row, top):
    _quantize_rows(carray(px, (m * k,), np.float32), carray(pq, (m * k,), np.uint8),
                   carray(pxs, (m if per_row else 1,), np.float32), m, k, per_row, top, ZERO_POINT)


def _rescale_entry(pacc, pxs, pws, pb, py, m, n, xs_step):
    _rescale(carray(pacc, (m * n,), np.int32), carray(pxs, (m if xs_step else 1,), np.float32),
             carray(pws, (n,), np.float32), carray(pb, (n,), np.float32), carray(py, (m * n,), np.float32),
             m, n, xs_step)


def _int_rows_entry(pq, pw, pxs, pws, pb, py, m, n, k, xs_step):
    _int_rows(carray(pq, (m * k,), np.int16), carray(pw, (n * k,), np.int8),
              carray(pxs, (m if xs_step else 1,), np.float32),
              carray(pws, (n,), np.float32), carray(pb, (n,), np.float32), carray(py, (m * n,), np.float32),
              m, n, k, xs_step)


def _signature(pointers: int, sizes: int) -> str:
    return f"void({', '.join(['voidptr'] * pointers + ['int64'] * sizes)})"


@cache
def entry(name: str) -> Callable[..., None]:
    """The ctypes function of kernel `name`, compiled on first use (or loaded from Numba's disk cache)."""
    function, pointers, sizes = {
        "weight_gemv": (_weight_gemv_entry, 5, 5), "dequantize_rows": (_dequantize_rows_entry, 3, 6),
        "quantize_rows": (_quantize_rows_entry, 3, 4), "int_streams": (_int_streams_entry, 7, 8),
        "int_rows": (_int_rows_entry, 6, 4), "quantize_rows8": (_quantize_rows8_entry, 3, 4),
        "quantize_rows_u8": (_quantize_rows_u8_entry, 3, 4),
        "rescale": (_rescale_entry, 5, 3)}[name]
    return cfunc(_signature(pointers, sizes), cache=True, nogil=True)(function).ctypes


# ---------------------------------------------------------------------------------------------
# Plans: `call(x, qweight, scale, bias, out=None)` on tensors; x is [..., in], the result [..., out].


@dataclass
class QuantPlan:
    """One way to compute a quantized linear node; `call` writes into `out` (contiguous) when given one."""

    name: str
    call: Callable[..., torch.Tensor]
    text: str


@dataclass(frozen=True)
class _Shape:
    rows: int
    out: int
    inner: int
    block: int  # the scale's block along `inner`: `inner` for one scale per output channel

    @classmethod
    def of(cls, node: Node) -> _Shape:
        x_shape = node.inputs[0].type.static_shape()
        out, inner = node.inputs[1].type.static_shape()
        block = node.attrs.get("block_size", 0) or inner
        return cls(int(np.prod(x_shape[:-1], dtype=np.int64)), out, inner, block)


def _result(x: torch.Tensor, shape: _Shape, out: torch.Tensor | None) -> torch.Tensor:
    return torch.empty((*x.shape[:-1], shape.out), dtype=torch.float32) if out is None else out


@cache
def _zeros(size: int) -> torch.Tensor:
    return torch.zeros(size)


def _bias(bias: torch.Tensor | None, shape: _Shape) -> torch.Tensor:
    # A zero bias keeps the kernels branch-free; adding 0 changes no result. The kernels never write it.
    return _zeros(shape.out) if bias is None else bias.contiguous()


def weight_gemv(shape: _Shape) -> QuantPlan:
    kernel = entry("weight_gemv")

    def call(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
             out: torch.Tensor | None = None) -> torch.Tensor:
        x, qweight, scale, b = x.contiguous(), qweight.contiguous(), scale.contiguous(), _bias(bias, shape)
        y = _result(x, shape, out)
        kernel(x.data_ptr(), qweight.data_ptr(), scale.data_ptr(), b.data_ptr(), y.data_ptr(), shape.rows,
               shape.out, shape.inner, shape.block, scale.numel())
        return y

    return QuantPlan("gemv", call, "Numba weight_gemv: int8 rows converted in the dot product")


def _chunked_product(shape: _Shape, xf: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                     bias: torch.Tensor | None, out: torch.Tensor | None, x_shape: torch.Size) -> torch.Tensor:
    """xf [rows, in] times the dequantized weight, a chunk of weight rows at a time (y^T rows by MKL)."""
    dequantize = entry("dequantize_rows")
    qweight, scale = qweight.contiguous(), scale.contiguous()
    chunk_rows = max(8, min(shape.out, _CHUNK_BYTES // (4 * shape.inner)))
    chunk = torch.empty(chunk_rows, shape.inner)
    yt = torch.empty(shape.out, shape.rows)
    xt = xf.t()
    for first in range(0, shape.out, chunk_rows):
        last = min(shape.out, first + chunk_rows)
        dequantize(qweight.data_ptr(), scale.data_ptr(), chunk.data_ptr(), first, last, shape.out, shape.inner,
                   shape.block, scale.numel())
        torch.mm(chunk[: last - first], xt, out=yt[first:last])
    y = torch.empty((*x_shape[:-1], shape.out)) if out is None else out
    flat = y.view(shape.rows, shape.out)
    if bias is None:
        flat.copy_(yt.t())
    else:
        torch.add(yt.t(), bias, out=flat)
    return y


_INT8_TOP, _INT16_TOP = 127, 32767
_INT16_CHUNK = 512  # inputs per exact int32 sum of int16 x int8 products: 512 * 32767 * 128 < 2**31


def _x_buffers(shape: _Shape, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Room for x's integer values (int16, what the int kernels read) and its scales: one per row or one."""
    return torch.empty(shape.rows, shape.inner, dtype=torch.int16), torch.empty(shape.rows if per_row else 1)


def _thread_buffers(make: Callable[[], tuple[torch.Tensor, ...]]) -> Callable[[], tuple[torch.Tensor, ...]]:
    """The buffers `make` returns, made once per thread and reused by its calls: calls that overlap (an
    executable's other instances, on other threads) never share them."""
    local = threading.local()

    def buffers() -> tuple[torch.Tensor, ...]:
        made = getattr(local, "buffers", None)
        if made is None:
            made = local.buffers = make()
        return made

    return buffers


def _quantize(x: torch.Tensor, shape: _Shape, per_row: bool, top: int,
              buffers: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x rounded to integers in [-top, top] and its scales, written into `buffers` (new ones when None)."""
    x = x.contiguous()
    q, xs = buffers or _x_buffers(shape, per_row)
    entry("quantize_rows")(x.data_ptr(), q.data_ptr(), xs.data_ptr(), shape.rows, shape.inner, int(per_row), top)
    return q, xs


def int_streams(shape: _Shape, per_row: bool, top: int) -> QuantPlan:
    kernel = entry("int_streams")
    chunk = _INT16_CHUNK if top > _INT8_TOP else shape.block
    buffers = _thread_buffers(partial(_x_buffers, shape, per_row))

    def call(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
             out: torch.Tensor | None = None) -> torch.Tensor:
        q, xs = buffers()
        x, qweight, scale, b = x.contiguous(), qweight.contiguous(), scale.contiguous(), _bias(bias, shape)
        y = _result(x, shape, out)
        kernel(x.data_ptr(), q.data_ptr(), xs.data_ptr(), qweight.data_ptr(), scale.data_ptr(), b.data_ptr(),
               y.data_ptr(), shape.rows, shape.out, shape.inner, shape.block, chunk, int(per_row), top, scale.numel())
        return y

    bits = 16 if top > _INT8_TOP else 8
    return QuantPlan("int-streams", call, f"Numba quantize_rows to {bits} bits, then int_streams: int32 dot products "
                                          "with four weight rows at a time")


def int_rows(shape: _Shape, per_row: bool) -> QuantPlan:
    kernel = entry("int_rows")
    buffers = _thread_buffers(partial(_x_buffers, shape, per_row))

    def call(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
             out: torch.Tensor | None = None) -> torch.Tensor:
        q, xs = _quantize(x, shape, per_row, _INT8_TOP, buffers())
        qweight, scale, b = qweight.contiguous(), scale.contiguous(), _bias(bias, shape)
        y = _result(x, shape, out)
        kernel(q.data_ptr(), qweight.data_ptr(), xs.data_ptr(), scale.data_ptr(), b.data_ptr(), y.data_ptr(),
               shape.rows, shape.out, shape.inner, int(per_row))
        return y

    return QuantPlan("int-rows", call, "Numba quantize_rows to 8 bits, then int_rows: exact int32 dot products")


@cache
def int_mm_is_exact(rows: int, inner: int, out: int) -> bool:
    """Whether `torch._int_mm` returns the exact int32 products of full-range int8 operands of these sizes
    on this CPU (see the module docstring), checked once per size on random values with the extremes."""
    if 0 in (rows, inner, out):
        return False  # nothing to multiply: the Numba plans handle empty operands
    g = torch.Generator().manual_seed(rows * 131 + inner * 7 + out)
    q = torch.randint(-127, 128, (rows, inner), generator=g, dtype=torch.int8)
    w = torch.randint(-128, 128, (out, inner), generator=g, dtype=torch.int8)
    q[0], w[0], w[-1] = 127, 127, -128
    q[-1] = -127 if rows > 1 else q[-1]
    try:
        got = torch._int_mm(q, w.t())
    except RuntimeError:
        return False
    return torch.equal(got.double(), q.double() @ w.double().t())  # sums below 2**31: exact in float64


def _library_int8(shape: _Shape, per_row: bool, q_dtype: torch.dtype, product: Callable[..., None], name: str,
                  text: str) -> QuantPlan:
    """x rounded to 8 bits into a `q_dtype` buffer (uint8 holds q + 128), `product(q, qweight, acc)` writing
    the exact int32 products into `acc`, then `_rescale`."""
    quantize, rescale = entry("quantize_rows8" if q_dtype == torch.int8 else "quantize_rows_u8"), entry("rescale")
    buffers = _thread_buffers(lambda: (torch.empty(shape.rows, shape.inner, dtype=q_dtype),
                                       torch.empty(shape.rows if per_row else 1),
                                       torch.empty(shape.rows, shape.out, dtype=torch.int32)))

    def call(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
             out: torch.Tensor | None = None) -> torch.Tensor:
        q, xs, acc = buffers()
        x, scale, b = x.contiguous(), scale.contiguous(), _bias(bias, shape)
        quantize(x.data_ptr(), q.data_ptr(), xs.data_ptr(), shape.rows, shape.inner, int(per_row), _INT8_TOP)
        product(q, qweight, acc)
        y = _result(x, shape, out)
        rescale(acc.data_ptr(), xs.data_ptr(), scale.data_ptr(), b.data_ptr(), y.data_ptr(), shape.rows, shape.out,
                int(per_row))
        return y

    return QuantPlan(name, call, text)


def int_mm(shape: _Shape, per_row: bool) -> QuantPlan:
    def product(q: torch.Tensor, qweight: torch.Tensor, acc: torch.Tensor) -> None:
        torch._int_mm(q, qweight.contiguous().t(), out=acc)

    return _library_int8(shape, per_row, torch.int8, product, "int-mm", "Numba quantize_rows to 8 bits, "
                         "torch._int_mm (oneDNN, exact int32 products on this CPU), Numba rescale")


def ort_int(shape: _Shape, per_row: bool, qweight: torch.Tensor) -> QuantPlan:
    """ONNX Runtime's MatMulInteger on the constant `qweight` (ort_int8.py), x stored as uint8 q + 128."""
    run = ort_int8_product(qweight, shape.rows)
    return _library_int8(shape, per_row, torch.uint8, lambda q, qweight, acc: run(q, acc), "ort-int",
                         "Numba quantize_rows to 8 bits (as uint8 + 128), onnxruntime MatMulInteger (exact int32 "
                         "products on this CPU), Numba rescale")


def dequant_mm(shape: _Shape, per_row: bool, top: int | None) -> QuantPlan:
    """x (rounded to [-top, top] and scaled back unless top is None) times the dequantized weight."""
    def call(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
             out: torch.Tensor | None = None) -> torch.Tensor:
        if top is None:
            xf = x.reshape(shape.rows, shape.inner)
        else:
            q, xs = _quantize(x, shape, per_row, top)
            xf = q.to(torch.float32).mul_(xs.unsqueeze(1) if per_row else xs)
        return _chunked_product(shape, xf, qweight, scale, bias, out, x.shape)

    rounded = "" if top is None else f"Numba quantize_rows to {16 if top > _INT8_TOP else 8} bits and back, "
    return QuantPlan("dequant-mm", call, f"{rounded}Numba dequantize_rows by chunks, each chunk times x by torch.mm")


def quant_plans(node: Node) -> list[QuantPlan]:
    """Every way to compute quantized linear `node` (see the module docstring)."""
    shape = _Shape.of(node)
    if node.op == "linear_weight_int8":
        if node.attrs.get("activation_bits", 32) == 32:
            return [weight_gemv(shape), dequant_mm(shape, per_row=True, top=None)]
        return [int_streams(shape, per_row=True, top=_INT16_TOP), dequant_mm(shape, per_row=True, top=_INT16_TOP)]
    per_row = node.attrs["granularity"] == "row"
    plans = [int_streams(shape, per_row, _INT8_TOP), dequant_mm(shape, per_row, _INT8_TOP)]
    if shape.rows > 1:
        plans.insert(1, int_rows(shape, per_row))
    if int_mm_is_exact(shape.rows, shape.inner, shape.out):
        plans.append(int_mm(shape, per_row))
    qweight = node.inputs[1].const
    if qweight is not None and ort_int8_is_exact(shape.rows, shape.inner, shape.out):
        plans.append(ort_int(shape, per_row, qweight))
    return plans


# Measured choices per (op, shapes, attributes, threads) in this process: timing is a property of the machine.
_CHOICES: dict[tuple, str] = {}


def choose_quant_plan(node: Node, choices: dict[tuple, str] = _CHOICES) -> QuantPlan:
    """The fastest of `quant_plans(node)`, timed on random operands of the node's shapes (its constants
    where it has them) with the weight in memory, not in a cache, as a model's int8 weights mostly are
    (the library products read a cold weight at half int_streams' speed at one row and are faster from
    two rows on, but look twice as fast at one row with the weight in L3), and remembered in `choices`."""
    plans = quant_plans(node)
    key = (node.op, tuple(tuple(v.type.static_shape()) for v in node.inputs), tuple(sorted(node.attrs.items())),
           torch.get_num_threads())
    if key not in choices:
        args = example_operands(node)
        times = fastest_runs({plan.name: (lambda p=plan: p.call(*args)) for plan in plans}, evict=True,
                             evict_bytes=memory_evict_bytes())
        choices[key] = min(times, key=times.__getitem__)
    return next(plan for plan in plans if plan.name == choices[key])


def example_operands(node: Node) -> list[torch.Tensor | None]:
    """Operands of `node`'s types: its constants, else random values (full-range int8 weights)."""
    operands: list[torch.Tensor | None] = []
    for value in node.inputs:
        shape = value.type.static_shape()
        if value.const is not None:
            operands.append(value.const)
        elif value.type.dtype is DType.i8:
            operands.append(torch.randint(-127, 128, shape, dtype=torch.int8))
        else:
            operands.append(torch.rand(shape) + 0.5 if value is node.inputs[2] else torch.randn(shape))
    return operands + [None] * (4 - len(operands))
