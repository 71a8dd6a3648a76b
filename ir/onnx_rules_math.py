"""ONNX lowering rules: elementwise math, activations, casts, reductions, matrix products, quantization."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .graph import Value
from .onnx_lowering import NodeContext, dtype_of, normalize_axis, rule
from .types import DType

_UNARY = {
    "Abs": "abs", "Neg": "neg", "Sqrt": "sqrt", "Reciprocal": "reciprocal", "Floor": "floor", "Ceil": "ceil",
    "Round": "round", "Sign": "sign", "Exp": "exp", "Log": "log", "Sin": "sin", "Cos": "cos", "Tan": "tan",
    "Asin": "asin", "Acos": "acos", "Atan": "atan", "Sinh": "sinh", "Cosh": "cosh", "Asinh": "asinh",
    "Acosh": "acosh", "Atanh": "atanh", "Tanh": "tanh", "Sigmoid": "sigmoid", "Erf": "erf", "Relu": "relu",
    "Mish": "mish", "IsNaN": "isnan", "Not": "logical_not", "BitwiseNot": "bitwise_not", "HardSwish": "hardswish",
}
_BINARY = {
    "Add": "add", "Sub": "sub", "Mul": "mul", "Equal": "eq", "Less": "lt", "Greater": "gt", "LessOrEqual": "le",
    "GreaterOrEqual": "ge", "And": "logical_and", "Or": "logical_or", "Xor": "logical_xor",
    "BitwiseAnd": "bitwise_and", "BitwiseOr": "bitwise_or", "BitwiseXor": "bitwise_xor",
}


@rule(*_UNARY)
def unary(ctx: NodeContext) -> list[Value]:
    return [ctx.call(_UNARY[ctx.node.op_type], ctx.input(0))]


@rule(*_BINARY)
def binary(ctx: NodeContext) -> list[Value]:
    return [ctx.call(_BINARY[ctx.node.op_type], ctx.input(0), ctx.input(1))]


@rule("Div")
def div(ctx: NodeContext) -> list[Value]:
    a, b = ctx.input(0), ctx.input(1)
    # ONNX integer division truncates toward zero (C semantics).
    mode = None if a.type.dtype.is_floating else "trunc"
    return [ctx.call("div", a, b, rounding_mode=mode)]


@rule("Mod")
def mod(ctx: NodeContext) -> list[Value]:
    # fmod=1: the sign of the dividend (C fmod); fmod=0: the sign of the divisor (Python %).
    op = "fmod" if ctx.attr("fmod", 0) else "remainder"
    return [ctx.call(op, ctx.input(0), ctx.input(1))]


@rule("Pow")
def pow_(ctx: NodeContext) -> list[Value]:
    base, exponent = ctx.input(0), ctx.input(1)
    if base.type.dtype.is_floating and exponent.type.dtype.is_floating:
        exponent = ctx.cast(exponent, base.type.dtype)
    # The result has the base's type (a float power of an integer base truncates).
    return [ctx.cast(ctx.call("pow", base, exponent), base.type.dtype)]


@rule("BitShift")
def bit_shift(ctx: NodeContext) -> list[Value]:
    op = "bitwise_left_shift" if ctx.attr("direction") == "LEFT" else "bitwise_right_shift"
    return [ctx.call(op, ctx.input(0), ctx.input(1))]


@rule("Max", "Min", "Sum", "Mean")
def variadic(ctx: NodeContext) -> list[Value]:
    op = {"Max": "maximum", "Min": "minimum", "Sum": "add", "Mean": "add"}[ctx.node.op_type]
    operands = [v for v in ctx.inputs if v is not None]
    result = operands[0]
    for value in operands[1:]:
        result = ctx.call(op, result, value)
    if ctx.node.op_type == "Mean":
        result = ctx.call("div", result, ctx.scalar(len(operands), result))
    return [result]


@rule("IsInf")
def is_inf(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    checks = []
    if ctx.attr("detect_positive", 1):
        checks.append(ctx.call("eq", x, ctx.scalar(math.inf, x)))
    if ctx.attr("detect_negative", 1):
        checks.append(ctx.call("eq", x, ctx.scalar(-math.inf, x)))
    if not checks:
        return [ctx.constant(torch.zeros(x.type.static_shape(), dtype=torch.bool))]
    return [checks[0] if len(checks) == 1 else ctx.call("logical_or", *checks)]


# -- activations ----------------------------------------------------------------------------------
@rule("LeakyRelu")
def leaky_relu(ctx: NodeContext) -> list[Value]:
    return [ctx.call("leaky_relu", ctx.input(0), negative_slope=ctx.attr("alpha", 0.01))]


@rule("Elu")
def elu(ctx: NodeContext) -> list[Value]:
    return [ctx.call("elu", ctx.input(0), alpha=ctx.attr("alpha", 1.0))]


@rule("Selu")
def selu(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    gamma = ctx.attr("gamma", 1.0507009873554804934193349852946)
    return [ctx.call("mul", ctx.call("elu", x, alpha=ctx.attr("alpha", 1.6732632423543772848170429916717)),
                     ctx.scalar(gamma, x))]


@rule("Celu")
def celu(ctx: NodeContext) -> list[Value]:
    x, alpha = ctx.input(0), ctx.attr("alpha", 1.0)
    scaled = ctx.call("elu", ctx.call("div", x, ctx.scalar(alpha, x)), alpha=1.0)
    return [ctx.call("mul", scaled, ctx.scalar(alpha, x))]


@rule("HardSigmoid")
def hard_sigmoid(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    y = ctx.call("add", ctx.call("mul", x, ctx.scalar(ctx.attr("alpha", 0.2), x)), ctx.scalar(ctx.attr("beta", 0.5), x))
    return [ctx.call("clamp", y, min=0.0, max=1.0)]


@rule("Softplus")
def softplus(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    return [ctx.call("log1p", ctx.call("exp", x))]


@rule("Softsign")
def softsign(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    return [ctx.call("div", x, ctx.call("add", ctx.call("abs", x), ctx.scalar(1, x)))]


@rule("ThresholdedRelu")
def thresholded_relu(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    keep = ctx.call("gt", x, ctx.scalar(ctx.attr("alpha", 1.0), x))
    return [ctx.call("where", keep, x, ctx.scalar(0, x))]


@rule("PRelu")
def prelu(ctx: NodeContext) -> list[Value]:
    x, slope = ctx.input(0), ctx.input(1)
    negative = ctx.call("lt", x, ctx.scalar(0, x))
    return [ctx.call("where", negative, ctx.call("mul", x, slope), x)]


@rule("Gelu")
def gelu(ctx: NodeContext) -> list[Value]:
    return [ctx.call("gelu", ctx.input(0), approximate=ctx.attr("approximate", "none"))]


@rule("Swish")
def swish(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    alpha = ctx.attr("alpha", 1.0)
    if alpha == 1.0:
        return [ctx.call("silu", x)]
    return [ctx.call("mul", x, ctx.call("sigmoid", ctx.call("mul", x, ctx.scalar(alpha, x))))]


@rule("Shrink")
def shrink(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    bias, lambd = ctx.attr("bias", 0.0), ctx.attr("lambd", 0.5)
    low = ctx.call("lt", x, ctx.scalar(-lambd, x))
    high = ctx.call("gt", x, ctx.scalar(lambd, x))
    inner = ctx.call("where", high, ctx.call("sub", x, ctx.scalar(bias, x)), ctx.scalar(0, x))
    return [ctx.call("where", low, ctx.call("add", x, ctx.scalar(bias, x)), inner)]


@rule("Clip")
def clip(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    low, high = ctx.optional(1), ctx.optional(2)
    if x.type.dtype.is_floating and all(v is None or v.const is not None for v in (low, high)):
        bounds = {name: None if v is None else float(v.const) for name, v in (("min", low), ("max", high))}  # type: ignore[arg-type]
        return [ctx.call("clamp", x, **bounds) if any(b is not None for b in bounds.values()) else x]
    if low is not None:
        x = ctx.call("maximum", x, low)
    if high is not None:
        x = ctx.call("minimum", x, high)
    return [x]


@rule("Where")
def where(ctx: NodeContext) -> list[Value]:
    return [ctx.call("where", ctx.input(0), ctx.input(1), ctx.input(2))]


@rule("Cast")
def cast(ctx: NodeContext) -> list[Value]:
    return [ctx.cast(ctx.input(0), dtype_of(ctx.attr("to"), ctx.where))]


@rule("CastLike")
def cast_like(ctx: NodeContext) -> list[Value]:
    return [ctx.cast(ctx.input(0), ctx.input(1).type.dtype)]


@rule("Identity")
def identity(ctx: NodeContext) -> list[Value]:
    return [ctx.input(0)]


@rule("Dropout")
def dropout(ctx: NodeContext) -> list[Value | None]:
    training = ctx.const(2)
    if training is not None and bool(training):
        raise ctx.unsupported("in training mode is not supported")
    x = ctx.input(0)
    mask = ctx.constant(torch.ones(x.type.static_shape(), dtype=torch.bool)) if ctx.wants_output(1) else None
    return [x, mask]


# -- matrix products ------------------------------------------------------------------------------
@rule("MatMul")
def matmul(ctx: NodeContext) -> list[Value]:
    return [ctx.call("matmul", ctx.input(0), ctx.input(1))]


@rule("Gemm")
def gemm(ctx: NodeContext) -> list[Value]:
    a, b, c = ctx.input(0), ctx.input(1), ctx.optional(2)
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    if ctx.attr("transA", 0):
        a = ctx.call("permute", a, dims=(1, 0))
    if alpha == 1.0 and beta == 1.0 and ctx.attr("transB", 0) and (c is None or c.type.rank == 1) \
            and a.type.dtype.is_floating:
        return [ctx.call("linear", *([a, b] if c is None else [a, b, c]))]
    if ctx.attr("transB", 0):
        b = ctx.call("permute", b, dims=(1, 0))
    y = ctx.call("matmul", a, b)
    if alpha != 1.0:
        y = ctx.call("mul", y, ctx.scalar(alpha, y))
    if c is not None:
        if beta != 1.0:
            c = ctx.call("mul", c, ctx.scalar(beta, c))
        y = ctx.call("add", y, c)
    return [y]


@rule("Einsum")
def einsum(ctx: NodeContext) -> list[Value]:
    return [ctx.call("einsum", *[v for v in ctx.inputs if v is not None], equation=ctx.attr("equation"))]


@rule("Det")
def det(ctx: NodeContext) -> list[Value]:
    return [ctx.call("det", ctx.input(0))]


@rule("MatMulInteger")
def matmul_integer(ctx: NodeContext) -> list[Value]:
    a, b = ctx.cast(ctx.input(0), DType.i32), ctx.cast(ctx.input(1), DType.i32)
    a_zero, b_zero = ctx.optional(2), ctx.optional(3)
    if a_zero is not None:
        a_zero = ctx.cast(a_zero, DType.i32)
        a = ctx.call("sub", a, ctx.reshape(a_zero, (-1, 1)) if a_zero.type.rank == 1 else a_zero)
    if b_zero is not None:
        b = ctx.call("sub", b, ctx.cast(b_zero, DType.i32))
    return [ctx.call("matmul", a, b)]


# -- reductions -----------------------------------------------------------------------------------
def reduce_axes(ctx: NodeContext, rank: int) -> tuple[int, ...] | None:
    """The reduced dims (from the `axes` input or attribute); None means no reduction at all."""
    axes = ctx.const_ints(1) if len(ctx.inputs) > 1 else ctx.attr("axes")
    if not axes:
        return None if ctx.attr("noop_with_empty_axes", 0) else tuple(range(rank))
    if not rank:
        raise ctx.fail(f"axes {list(axes)} are out of range for rank 0")
    return tuple(sorted({normalize_axis(a, rank, ctx) for a in axes}))


_EMPTY = {"ReduceSum": 0.0, "ReduceL1": 0.0, "ReduceL2": 0.0, "ReduceSumSquare": 0.0, "ReduceProd": 1.0,
          "ReduceMax": -math.inf, "ReduceMin": math.inf, "ReduceLogSum": -math.inf, "ReduceLogSumExp": -math.inf,
          "ReduceMean": math.nan}


@rule(*_EMPTY)
def reduce(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    op_type = ctx.node.op_type
    dims = reduce_axes(ctx, x.type.rank)
    if dims is None:  # noop_with_empty_axes: the elementwise steps still run (ReduceL1 gives |x|)
        if op_type == "ReduceLogSumExp":  # log(exp(x)) shifted by the max of x alone is x, as ORT gives
            return [x]
        if op_type in _SUM_OF_STEPS:
            x = ctx.cast(_reduction_steps(ctx, ctx.cast(x, _work_type(x.type.dtype)), op_type, None), x.type.dtype)
        return [x]
    keep = bool(ctx.attr("keepdims", 1))
    shape = x.type.static_shape()
    if any(shape[d] == 0 for d in dims):
        out = [1 if d in dims else s for d, s in enumerate(shape) if keep or d not in dims]
        fill = _EMPTY[op_type]
        if x.type.dtype is DType.bool:
            fill = fill > 0
        elif not x.type.dtype.is_floating and not math.isfinite(fill):
            info = torch.iinfo(x.type.dtype.torch)
            fill = info.min if fill < 0 else info.max
        return [ctx.constant(torch.full(out, fill, dtype=x.type.dtype.torch))]
    dtype = x.type.dtype
    dims = dims or None  # a 0-d input: the IR spells "every dim" as none
    if op_type in ("ReduceMax", "ReduceMin"):
        return [ctx.call("amax" if op_type == "ReduceMax" else "amin", x, dims=dims, keepdim=keep)]
    work = ctx.cast(x, _work_type(dtype))
    if op_type == "ReduceProd":
        return [ctx.cast(ctx.call("prod", x, dims=dims, keepdim=keep), dtype)]
    if op_type == "ReduceMean":
        return [ctx.cast(ctx.call("mean", work, dims=dims, keepdim=keep), dtype)]
    if op_type == "ReduceSum" and not dtype.is_floating:
        return [ctx.call("sum", x, dims=dims, keepdim=keep, dtype=dtype)]
    if op_type == "ReduceLogSumExp":
        return [ctx.cast(_log_sum_exp(ctx, work, dims, keep), dtype)]
    return [ctx.cast(_reduction_steps(ctx, work, op_type, lambda v: ctx.call("sum", v, dims=dims, keepdim=keep)),
                     dtype)]


_SUM_OF_STEPS = ("ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum")


def _work_type(dtype: DType) -> DType:
    return dtype if dtype.is_floating else DType.f64


def _log_sum_exp(ctx: NodeContext, x: Value, dims: tuple[int, ...] | None, keep: bool) -> Value:
    """m + log(sum(exp(x - m))) with m the max over `dims`, so exp neither overflows nor underflows.
    A non-finite m shifts by 0 instead: all -inf gives log(0) = -inf and a +inf gives +inf, not NaN."""
    peak = ctx.call("amax", x, dims=dims, keepdim=True)
    finite = ctx.call("lt", ctx.call("abs", peak), ctx.scalar(math.inf, peak))
    shift = ctx.call("where", finite, peak, ctx.scalar(0.0, peak))
    total = ctx.call("sum", ctx.call("exp", ctx.call("sub", x, shift)), dims=dims, keepdim=keep)
    return ctx.call("add", ctx.call("log", total), ctx.reshape(shift, total.type.static_shape()))


def _reduction_steps(ctx: NodeContext, x: Value, op_type: str, total: Callable[[Value], Value] | None) -> Value:
    """A sum-based ONNX reduction: its elementwise step before the sum, the sum (`total`; none when
    noop_with_empty_axes leaves it out) and its step after."""
    if op_type == "ReduceL1":
        x = ctx.call("abs", x)
    if op_type in ("ReduceL2", "ReduceSumSquare"):
        x = ctx.call("mul", x, x)
    if total is not None:
        x = total(x)
    post = {"ReduceL2": "sqrt", "ReduceLogSum": "log"}.get(op_type)
    return ctx.call(post, x) if post else x


@rule("ArgMax", "ArgMin")
def arg_extreme(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    axis = normalize_axis(ctx.attr("axis", 0), x.type.rank, ctx)
    keep = bool(ctx.attr("keepdims", 1))
    op = "argmax" if ctx.node.op_type == "ArgMax" else "argmin"
    if not ctx.attr("select_last_index", 0):
        return [ctx.call(op, x, dim=axis, keepdim=keep)]
    # The last extreme is the first one of the reversed tensor.
    flipped = ctx.call(op, ctx.call("flip", x, dims=(axis,)), dim=axis, keepdim=keep)
    last = ctx.scalar(x.type.static_shape()[axis] - 1, DType.i64)
    return [ctx.call("sub", last, flipped)]


@rule("TopK")
def top_k(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    k = ctx.const_ints(1)
    assert k is not None
    axis = normalize_axis(ctx.attr("axis", -1), x.type.rank, ctx)
    return ctx.call_multi("topk", [x], {"k": k[0], "dim": axis, "largest": bool(ctx.attr("largest", 1)),
                                        "sorted": bool(ctx.attr("sorted", 1))})


def scan(ctx: NodeContext, op: str, identity: float) -> Value:
    """CumSum/CumProd with ONNX's `reverse` and `exclusive` attributes."""
    x = ctx.input(0)
    axis_values = ctx.const_ints(1)
    assert axis_values is not None
    axis = normalize_axis(axis_values[0], x.type.rank, ctx)
    if ctx.attr("reverse", 0):
        x = ctx.call("flip", x, dims=(axis,))
    y = ctx.call(op, x, dim=axis, **({"dtype": x.type.dtype} if op == "cumsum" else {}))
    if ctx.attr("exclusive", 0):
        # Shift by one along the axis: the identity first, the last running value dropped.
        pads = [0, 0] * (x.type.rank - 1 - axis) + [1, 0]
        padded = ctx.call("pad", y, pads=pads, value=identity)
        y = ctx.call("slice", padded, dim=axis, start=0, end=x.type.static_shape()[axis])
    if ctx.attr("reverse", 0):
        y = ctx.call("flip", y, dims=(axis,))
    return y


@rule("CumSum")
def cum_sum(ctx: NodeContext) -> list[Value]:
    return [scan(ctx, "cumsum", 0.0)]


@rule("CumProd")
def cum_prod(ctx: NodeContext) -> list[Value]:
    return [scan(ctx, "cumprod", 1.0)]


# -- quantization ---------------------------------------------------------------------------------
def _per_axis(ctx: NodeContext, param: Value, x: Value) -> Value:
    """A per-axis scale or zero point reshaped to broadcast along `axis` of x; a blocked one
    (`block_size`) repeated to x's shape."""
    block = ctx.attr("block_size", 0)
    if param.type.rank == 0 or x.type.rank <= 1:
        return param
    axis = normalize_axis(ctx.attr("axis", 1), x.type.rank, ctx)
    if block:
        shape = list(param.type.static_shape())
        grown = ctx.call("unsqueeze", param, dim=axis + 1)
        grown = ctx.call("expand", grown, shape=(*shape[:axis + 1], block, *shape[axis + 1:]))
        merged = ctx.reshape(grown, [*shape[:axis], shape[axis] * block, *shape[axis + 1:]])
        return ctx.call("slice", merged, dim=axis, start=0, end=x.type.static_shape()[axis])
    shape = [1] * x.type.rank
    shape[axis] = param.type.static_shape()[0]
    return ctx.reshape(param, shape)


def _saturate(ctx: NodeContext, y: Value, dtype: DType) -> Value:
    info = torch.iinfo(dtype.torch)
    return ctx.cast(ctx.call("clamp", y, min=float(info.min), max=float(info.max)), dtype)


def _quant_attrs(ctx: NodeContext, x: Value, scale: Value) -> dict[str, int]:
    """The IR's `axis` / `block_size` attributes for an ONNX (De)QuantizeLinear node; a per-tensor scale
    ignores the axis, and a 1-D operand has only axis 0 (ONNX's default axis 1 included)."""
    per_axis = scale.type.rank > 0 and x.type.rank > 1
    return {"axis": normalize_axis(ctx.attr("axis", 1), x.type.rank, ctx) if per_axis else 0,
            "block_size": ctx.attr("block_size", 0)}


@rule("QuantizeLinear")
def quantize_linear(ctx: NodeContext) -> list[Value]:
    x, scale, zero = ctx.input(0), ctx.input(1), ctx.optional(2)
    out = ctx.attr("output_dtype", 0)
    dtype = dtype_of(out, ctx.where) if out else (zero.type.dtype if zero is not None else DType.u8)
    if dtype.is_floating or dtype is DType.bool:
        raise ctx.unsupported(f"to {dtype} is not supported")
    if dtype in (DType.i8, DType.u8) and scale.type.dtype.is_floating and x.type.rank > 0:
        # The IR's own op: int8 quantization stays one readable node that exports back as QuantizeLinear.
        zero_point = [zero] if zero is not None else []
        return [ctx.call("quantize", x, scale, *zero_point, dtype=dtype, **_quant_attrs(ctx, x, scale))]
    xf = ctx.cast(x, DType.f32)
    y = ctx.call("round", ctx.call("div", xf, ctx.cast(_per_axis(ctx, scale, x), DType.f32)))
    if zero is not None:
        y = ctx.call("add", y, ctx.cast(_per_axis(ctx, zero, x), DType.f32))
    return [_saturate(ctx, y, dtype)]


@rule("DequantizeLinear")
def dequantize_linear(ctx: NodeContext) -> list[Value]:
    x, scale, zero = ctx.input(0), ctx.input(1), ctx.optional(2)
    if x.type.dtype.is_floating:
        raise ctx.unsupported(f"from {x.type.dtype} is not supported")
    out = ctx.attr("output_dtype", 0)
    if x.type.dtype in (DType.i8, DType.u8) and scale.type.dtype.is_floating and x.type.rank > 0:
        zero_point = [zero] if zero is not None else []
        y = ctx.call("dequantize", x, scale, *zero_point, **_quant_attrs(ctx, x, scale))
        return [ctx.cast(y, dtype_of(out, ctx.where) if out else scale.type.dtype)]
    xf = ctx.cast(x, DType.f32)
    if zero is not None:
        xf = ctx.call("sub", xf, ctx.cast(_per_axis(ctx, zero, x), DType.f32))
    y = ctx.call("mul", xf, ctx.cast(_per_axis(ctx, scale, x), DType.f32))
    return [ctx.cast(y, dtype_of(out, ctx.where) if out else scale.type.dtype)]


@rule("DynamicQuantizeLinear")
def dynamic_quantize_linear(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    zero = ctx.scalar(0.0, x)
    high = ctx.call("maximum", ctx.call("amax", x), zero)
    low = ctx.call("minimum", ctx.call("amin", x), zero)
    scale = ctx.call("div", ctx.call("sub", high, low), ctx.scalar(255.0, x))
    zero_point = _saturate(ctx, ctx.call("round", ctx.call("sub", zero, ctx.call("div", low, scale))), DType.u8)
    y = ctx.call("add", ctx.call("round", ctx.call("div", x, scale)), ctx.cast(zero_point, x.type.dtype))
    return [_saturate(ctx, y, DType.u8), scale, zero_point]


@rule("BitCast")
def bit_cast(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    dtype = dtype_of(ctx.attr("to"), ctx.where)
    if dtype.torch.itemsize != x.type.dtype.torch.itemsize:
        raise ctx.unsupported(f"from {x.type.dtype} to {dtype} changes the element width")
    return [ctx.call("bitcast", x, dtype=dtype)]


@rule("QLinearMatMul")
def qlinear_matmul(ctx: NodeContext) -> list[Value]:
    a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero = (ctx.input(i) for i in range(8))
    if a_scale.type.rank == 1 and a.type.rank > 1:
        a_scale, a_zero = ctx.reshape(a_scale, (-1, 1)), ctx.reshape(a_zero, (-1, 1))
    a_int = ctx.call("sub", ctx.cast(a, DType.i32), ctx.cast(a_zero, DType.i32))
    b_int = ctx.call("sub", ctx.cast(b, DType.i32), ctx.cast(b_zero, DType.i32))
    product = ctx.cast(ctx.call("matmul", a_int, b_int), DType.f32)
    scale = ctx.call("div", ctx.call("mul", ctx.cast(a_scale, DType.f32), ctx.cast(b_scale, DType.f32)),
                     ctx.cast(y_scale, DType.f32))
    y = ctx.call("add", ctx.call("round", ctx.call("mul", product, scale)), ctx.cast(y_zero, DType.f32))
    return [_saturate(ctx, y, y_zero.type.dtype)]
