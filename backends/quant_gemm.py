"""Int8 linear layers on the CPU: Numba kernels for `linear_weight_int8` and `linear_dynamic_int8`.

Each op has a few ways to run; `choose_quant_plan` times them on the node's shapes and keeps the fastest:

- "gemv" (weight-only): one pass over the int8 weight; the dot product's vector loop converts it to
  float32 (vpmovsxbd, vcvtdq2ps, vfmadd on AVX2) and applies the scale once per output, or once per
  block for group-wise scales. Best for a few rows of x (decode). A single row of x runs `_dot_i8`,
  a loop written in LLVM IR on 4-lane vectors: on Zen 1 (8-lane AVX ops split in two halves) the
  8-lane loop that LLVM picks for the same source is 15-30% slower.
- "int-gemv" / "int-rows" (dynamic): x quantized to int8 per row (or per tensor) by one kernel that
  finds the row's amax and rounds, then exact int32 dot products (vpmaddwd) and the rescale
  `acc * x_scale[row] * w_scale[col] + bias`. "int-rows" widens each weight row to int16 once
  for all rows of x.
- "dequant-mm" (both): the weight dequantized per call, a chunk of rows at a time into a float32
  buffer that stays in cache, each chunk multiplied by MKL (`torch.mm`); for the dynamic op x is
  quantized and dequantized first, so this computes the reference's float product. Best for
  large batches.

The kernels are functions of this module with the sizes as arguments: each compiles once (or loads
from Numba's cache beside this file) and serves every shape. They run on one thread; the library
calls use PyTorch's threads.

Library int8 products are not used: on CPU `torch._int_mm` is a slow fallback (about 15x slower
than float32 `F.linear` at 64x768x768), and oneDNN's and fbgemm's u8*s8 kernels on AVX2 sum pairs
of products in saturating int16 (vpmaddubsw), so full-range 8-bit activations come out wrong
(fbgemm's dynamic linear also quantizes x asymmetrically per tensor): neither is this op.
Half-precision linears are left to the reference backend: on AVX2 without native bf16/fp16
arithmetic, torch's bf16 and fp16 `F.linear` are slower than float32 (bench/quant_kernels.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from llvmlite import ir
from numba import carray, cfunc, njit, types, uint64
from numba.core import cgutils
from numba.extending import intrinsic

from ..ir import DType, Node
from .timing import fastest_runs

QUANT_LINEAR_OPS = ("linear_weight_int8", "linear_dynamic_int8")
# reassoc lets the dot products vectorize; no arcp: quantizing x divides by its scale exactly as torch does.
_JIT = {"fastmath": {"nsz", "contract", "reassoc"}, "error_model": "numpy", "nogil": True, "cache": True}
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


@njit(**_JIT)
def _quantize_rows(x, q, xs, m, k, per_row):
    """q = round_half_even(x / scale) clamped to [-127, 127] with scale = max(amax |x|, 1e-12) / 127
    over each row (per_row) or the whole tensor; xs gets the scales (one, or one per row)."""
    inner = uint64(k)
    rows = uint64(m) if per_row else uint64(1)
    span = inner if per_row else uint64(m) * inner
    for r in range(rows):
        base = r * span
        amax = np.float32(0.0)
        for t in range(span):
            amax = max(amax, abs(x[base + t]))
        scale = max(amax, np.float32(1e-12)) / np.float32(127.0)
        xs[r] = scale
        for t in range(span):
            v = np.rint(x[base + t] / scale)
            q[base + t] = np.int16(min(max(v, np.float32(-127.0)), np.float32(127.0)))


@njit(**_JIT)
def _int_gemv(q, w, xs, ws, bias, y, m, n, k, xs_step):
    """y[i, j] = (q[i, :] . w[j, :]) * xs[i] * ws[j] + bias[j], the dot product exact in int32 (|q|, |w| <= 127
    and in < 2**17). Numba types the products int64; reading the sum back as int32 lets LLVM narrow the loop
    to pairwise int16 products summed in int32 (vpmaddwd)."""
    inner, cols, step = uint64(k), uint64(n), uint64(xs_step)
    for j in range(cols):
        wr = j * inner
        for i in range(uint64(m)):
            xr = i * inner
            acc = np.int32(0)
            for kk in range(inner):
                acc += np.int32(q[xr + kk]) * np.int32(w[wr + kk])
            y[i * cols + j] = np.float32(np.int32(acc)) * xs[i * step] * ws[j] + bias[j]


@njit(**_JIT)
def _int_rows(q, w, xs, ws, bias, y, m, n, k, xs_step):
    """`_int_gemv` with each weight row widened to int16 once, for many rows of x."""
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
            y[i * cols + j] = np.float32(np.int32(acc)) * xs[i * step] * ws[j] + bias[j]


# C entry points: the kernels on the arrays at the given addresses (ctypes calls cost less than
# Numba's dispatch on tensor views, and release the GIL).

def _weight_gemv_entry(px, pw, ps, pb, py, m, n, k, bs, ns):
    _weight_gemv(carray(px, (m * k,), np.float32), carray(pw, (n * k,), np.int8), carray(ps, (ns,), np.float32),
                 carray(pb, (n,), np.float32), carray(py, (m * n,), np.float32), m, n, k, bs)


def _dequantize_rows_entry(pw, ps, po, first, last, n, k, bs, ns):
    _dequantize_rows(carray(pw, (n * k,), np.int8), carray(ps, (ns,), np.float32),
                     carray(po, ((last - first) * k,), np.float32), first, last, k, bs)


def _quantize_rows_entry(px, pq, pxs, m, k, per_row):
    _quantize_rows(carray(px, (m * k,), np.float32), carray(pq, (m * k,), np.int16),
                   carray(pxs, (m if per_row else 1,), np.float32), m, k, per_row)


def _int_gemv_entry(pq, pw, pxs, pws, pb, py, m, n, k, xs_step):
    _int_gemv(carray(pq, (m * k,), np.int16), carray(pw, (n * k,), np.int8),
              carray(pxs, (m if xs_step else 1,), np.float32),
              carray(pws, (n,), np.float32), carray(pb, (n,), np.float32), carray(py, (m * n,), np.float32),
              m, n, k, xs_step)


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
        "quantize_rows": (_quantize_rows_entry, 3, 3), "int_gemv": (_int_gemv_entry, 6, 4),
        "int_rows": (_int_rows_entry, 6, 4)}[name]
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


def weight_dequant_mm(shape: _Shape) -> QuantPlan:
    def call(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
             out: torch.Tensor | None = None) -> torch.Tensor:
        return _chunked_product(shape, x.reshape(shape.rows, shape.inner), qweight, scale, bias, out, x.shape)

    return QuantPlan("dequant-mm", call, "Numba dequantize_rows by chunks, each chunk times x by torch.mm")


def _quantize(x: torch.Tensor, shape: _Shape, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x's int8 values (as int16, what the int kernels read) and scales: one per row or one."""
    x = x.contiguous()
    q = torch.empty(shape.rows, shape.inner, dtype=torch.int16)
    xs = torch.empty(shape.rows if per_row else 1)
    entry("quantize_rows")(x.data_ptr(), q.data_ptr(), xs.data_ptr(), shape.rows, shape.inner, int(per_row))
    return q, xs


def dynamic_int(shape: _Shape, per_row: bool, widen_rows: bool) -> QuantPlan:
    kernel = entry("int_rows" if widen_rows else "int_gemv")

    def call(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
             out: torch.Tensor | None = None) -> torch.Tensor:
        q, xs = _quantize(x, shape, per_row)
        qweight, scale, b = qweight.contiguous(), scale.contiguous(), _bias(bias, shape)
        y = _result(x, shape, out)
        kernel(q.data_ptr(), qweight.data_ptr(), xs.data_ptr(), scale.data_ptr(), b.data_ptr(), y.data_ptr(),
               shape.rows, shape.out, shape.inner, int(per_row))
        return y

    name = "int-rows" if widen_rows else "int-gemv"
    return QuantPlan(name, call, f"Numba quantize_rows, then {name.replace('-', '_')}: exact int32 dot products")


def dynamic_dequant_mm(shape: _Shape, per_row: bool) -> QuantPlan:
    def call(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
             out: torch.Tensor | None = None) -> torch.Tensor:
        q, xs = _quantize(x, shape, per_row)
        xf = q.to(torch.float32).mul_(xs.unsqueeze(1) if per_row else xs)
        return _chunked_product(shape, xf, qweight, scale, bias, out, x.shape)

    return QuantPlan("dequant-mm", call, "Numba quantize_rows, dequantized x times dequantize_rows chunks by torch.mm")


def quant_plans(node: Node) -> list[QuantPlan]:
    """Every way to compute quantized linear `node` (see the module docstring)."""
    shape = _Shape.of(node)
    if node.op == "linear_weight_int8":
        return [weight_gemv(shape), weight_dequant_mm(shape)]
    per_row = node.attrs["granularity"] == "row"
    plans = [dynamic_int(shape, per_row, widen_rows=False), dynamic_dequant_mm(shape, per_row)]
    if shape.rows > 1:
        plans.insert(1, dynamic_int(shape, per_row, widen_rows=True))
    return plans


# Measured choices per (op, shapes, attributes, threads) in this process: timing is a property of the machine.
_CHOICES: dict[tuple, str] = {}


def choose_quant_plan(node: Node, choices: dict[tuple, str] = _CHOICES) -> QuantPlan:
    """The fastest of `quant_plans(node)`, timed on random operands of the node's shapes (its constants
    where it has them) and remembered in `choices`."""
    plans = quant_plans(node)
    key = (node.op, tuple(tuple(v.type.static_shape()) for v in node.inputs), tuple(sorted(node.attrs.items())),
           torch.get_num_threads())
    if key not in choices:
        args = example_operands(node)
        times = fastest_runs({plan.name: (lambda p=plan: p.call(*args)) for plan in plans})
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
