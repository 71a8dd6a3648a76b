"""ONNX lowering rules: convolution, pooling, normalization and softmax."""

from __future__ import annotations

import math

import torch

from .graph import Value
from .onnx_lowering import NodeContext, normalize_axis, rule, static_shape
from .types import DType


def explicit_pads(ctx: NodeContext, spatial: tuple[int, ...], kernel: list[int], strides: list[int],
                  dilations: list[int]) -> list[int]:
    """ONNX pads (begin_0.., end_0..) with auto_pad SAME_UPPER / SAME_LOWER / VALID resolved."""
    n = len(spatial)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        return begins + ends
    if auto_pad == "VALID":
        return [0] * (2 * n)
    pads = list(ctx.attr("pads") or [0] * (2 * n))
    if len(pads) != 2 * n:
        raise ctx.fail(f"pads must hold {2 * n} values (a begin and an end per spatial dim), got {len(pads)}")
    return pads


def _window_attrs(ctx: NodeContext, x: Value, kernel: list[int]) -> tuple[list[int], list[int], list[int]]:
    n = x.type.rank - 2
    strides = list(ctx.attr("strides") or [1] * n)
    dilations = list(ctx.attr("dilations") or [1] * n)
    for name, values in (("kernel_shape", kernel), ("strides", strides), ("dilations", dilations)):
        if len(values) != n:
            raise ctx.fail(f"{name} must hold {n} values (one per spatial dim), got {len(values)}")
    pads = explicit_pads(ctx, static_shape(x, ctx)[2:], kernel, strides, dilations)
    return strides, dilations, pads


def _pad_input(ctx: NodeContext, x: Value, pads: list[int]) -> Value:
    n = len(pads) // 2
    torch_pads = [p for d in reversed(range(n)) for p in (pads[d], pads[n + d])]
    return ctx.call("pad", x, pads=tuple(torch_pads))


@rule("Conv")
def conv(ctx: NodeContext) -> list[Value]:
    return [_conv(ctx, ctx.input(0), ctx.input(1), ctx.optional(2))]


@rule("ConvInteger")
def conv_integer(ctx: NodeContext) -> list[Value]:
    # Small integer products are exact in f64, which torch convolves.
    x, weight = ctx.cast(ctx.input(0), DType.f64), ctx.cast(ctx.input(1), DType.f64)
    x_zero, w_zero = ctx.optional(2), ctx.optional(3)
    if x_zero is not None:
        x = ctx.call("sub", x, ctx.cast(x_zero, DType.f64))
    if w_zero is not None:
        shape = (-1,) + (1,) * (weight.type.rank - 1) if w_zero.type.rank == 1 else ()
        w_zero = ctx.cast(w_zero, DType.f64)
        weight = ctx.call("sub", weight, ctx.reshape(w_zero, shape) if shape else w_zero)
    return [ctx.cast(_conv(ctx, x, weight, None), DType.i32)]


def _conv(ctx: NodeContext, x: Value, weight: Value, bias: Value | None) -> Value:
    kernel = list(static_shape(weight, ctx)[2:])
    strides, dilations, pads = _window_attrs(ctx, x, kernel)
    n = len(kernel)
    if pads[:n] != pads[n:]:
        x, pads = _pad_input(ctx, x, pads), [0] * (2 * n)
    args = [x, weight] if bias is None else [x, weight, bias]
    return ctx.call("conv", *args, stride=tuple(strides), padding=tuple(pads[:n]), dilation=tuple(dilations),
                    groups=ctx.attr("group", 1))


@rule("ConvTranspose")
def conv_transpose(ctx: NodeContext) -> list[Value]:
    x, weight, bias = ctx.input(0), ctx.input(1), ctx.optional(2)
    kernel = list(static_shape(weight, ctx)[2:])
    n = len(kernel)
    spatial = static_shape(x, ctx)[2:]
    strides = list(ctx.attr("strides") or [1] * n)
    dilations = list(ctx.attr("dilations") or [1] * n)
    out_pad = list(ctx.attr("output_padding") or [0] * n)
    full = [(i - 1) * s + (k - 1) * d + 1 for i, s, k, d in zip(spatial, strides, kernel, dilations, strict=True)]
    output_shape = ctx.attr("output_shape")
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if output_shape is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        output_shape = [i * s for i, s in zip(spatial, strides, strict=True)]
    if output_shape is not None:
        output_shape = list(output_shape)[-n:]
        total = [f + p - o for f, p, o in zip(full, out_pad, output_shape, strict=True)]
        first = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
        pads = first + [t - b for t, b in zip(total, first, strict=True)]
    else:
        pads = list(ctx.attr("pads") or [0] * (2 * n)) if auto_pad != "VALID" else [0] * (2 * n)
    group = ctx.attr("group", 1)
    symmetric = pads[:n] == pads[n:] and all(p >= 0 for p in pads)
    if symmetric and all(p < max(s, d) for p, s, d in zip(out_pad, strides, dilations, strict=True)):
        args = [x, weight] if bias is None else [x, weight, bias]
        return [ctx.call("conv_transpose", *args, stride=tuple(strides), padding=tuple(pads[:n]),
                         dilation=tuple(dilations), groups=group, output_padding=tuple(out_pad))]
    # General case: the full result, cropped (or zero-extended) per side, then the bias.
    y = ctx.call("conv_transpose", x, weight, stride=tuple(strides), dilation=tuple(dilations), groups=group,
                 padding=(0,) * n)
    crop = [-p for p in pads[:n]] + [p_out - p for p_out, p in zip(out_pad, pads[n:], strict=True)]
    y = _pad_input(ctx, y, crop)
    if bias is not None:
        y = ctx.call("add", y, ctx.reshape(bias, (-1,) + (1,) * n))
    return [y]


def _pool(ctx: NodeContext, mode: str) -> list[Value | None]:
    x = ctx.input(0)
    kernel = list(ctx.attr("kernel_shape"))
    n = len(kernel)
    strides, dilations, pads = _window_attrs(ctx, x, kernel)
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    count_include_pad = bool(ctx.attr("count_include_pad", 0))
    symmetric = pads[:n] == pads[n:] and all(2 * p <= k for p, k in zip(pads[:n], kernel, strict=True))
    with_indices = mode == "max" and ctx.wants_output(1)
    if with_indices and ctx.attr("storage_order", 0):
        raise ctx.unsupported("with storage_order=1 indices is not supported")
    floating = x.type.dtype.is_floating
    if mode == "max" and symmetric and floating and not with_indices and n <= 3:
        return [ctx.call("max_pool", x, kernel=tuple(kernel), stride=tuple(strides), padding=tuple(pads[:n]),
                         dilation=tuple(dilations), ceil_mode=ceil_mode)]
    if mode == "avg" and symmetric and not ceil_mode and all(d == 1 for d in dilations) and n <= 3:
        return [ctx.call("avg_pool", x, kernel=tuple(kernel), stride=tuple(strides), padding=tuple(pads[:n]),
                         count_include_pad=count_include_pad)]
    attrs = {"mode": mode, "kernel": tuple(kernel), "strides": tuple(strides), "pads": tuple(pads),
             "dilations": tuple(dilations), "ceil_mode": ceil_mode, "count_include_pad": count_include_pad,
             "p": ctx.attr("p", 2), "indices": with_indices}
    results: list[Value | None] = list(ctx.call_multi("onnx_pool", [x], attrs))
    return results


@rule("MaxPool")
def max_pool(ctx: NodeContext) -> list[Value | None]:
    return _pool(ctx, "max")


@rule("AveragePool")
def average_pool(ctx: NodeContext) -> list[Value | None]:
    return _pool(ctx, "avg")


@rule("LpPool")
def lp_pool(ctx: NodeContext) -> list[Value | None]:
    return _pool(ctx, "lp")


@rule("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def global_pool(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    if x.type.rank < 3:
        raise ctx.fail(f"takes an input of rank 3 or more, [N, C, spatial...], got {x.type}")
    dims = tuple(range(2, x.type.rank))
    if ctx.node.op_type == "GlobalAveragePool":
        return [ctx.call("mean", x, dims=dims, keepdim=True)]
    if ctx.node.op_type == "GlobalMaxPool":
        return [ctx.call("amax", x, dims=dims, keepdim=True)]
    p = ctx.attr("p", 2)
    powered = ctx.call("pow", ctx.call("abs", x), ctx.scalar(p, x))
    return [ctx.call("pow", ctx.call("sum", powered, dims=dims, keepdim=True), ctx.scalar(1.0 / p, x))]


# -- normalization --------------------------------------------------------------------------------
@rule("BatchNormalization")
def batch_norm(ctx: NodeContext) -> list[Value]:
    if ctx.attr("training_mode", 0) or ctx.wants_output(1):
        raise ctx.unsupported("in training mode is not supported")
    x, scale, bias, mean, var = (ctx.input(i) for i in range(5))
    return [ctx.call("batch_norm", x, mean, var, scale, bias, eps=ctx.attr("epsilon", 1e-5))]


def _normalize(ctx: NodeContext, x: Value, dims: tuple[int, ...], eps: float, stash: DType,
               center: bool = True) -> tuple[Value, Value, Value]:
    """(x - mean) / sqrt(var + eps) over `dims` computed in `stash`, with the mean and the inverse
    standard deviation (kept dims). Without `center`, the RMS normalization."""
    xs = ctx.cast(x, stash)
    mean = ctx.call("mean", xs, dims=dims, keepdim=True)
    centered = ctx.call("sub", xs, mean) if center else xs
    var = ctx.call("mean", ctx.call("mul", centered, centered), dims=dims, keepdim=True)
    inv = ctx.call("rsqrt", ctx.call("add", var, ctx.scalar(eps, var)))
    return ctx.call("mul", centered, inv), mean, inv


def _stash(ctx: NodeContext, x: Value) -> DType:
    stash = ctx.attr("stash_type", 1)
    return DType.f32 if stash == 1 else (DType.f64 if stash == 11 else x.type.dtype)


@rule("LayerNormalization")
def layer_norm(ctx: NodeContext) -> list[Value | None]:
    x, scale, bias = ctx.input(0), ctx.input(1), ctx.optional(2)
    shape = static_shape(x, ctx)
    axis = normalize_axis(ctx.attr("axis", -1), len(shape), ctx)
    eps = ctx.attr("epsilon", 1e-5)
    normalized = shape[axis:]
    simple = (not ctx.wants_output(1) and not ctx.wants_output(2) and x.type.dtype is DType.f32
              and scale.type.shape == normalized and (bias is None or bias.type.shape == normalized))
    if simple:
        args = [x, scale] if bias is None else [x, scale, bias]
        return [ctx.call("layer_norm", *args, normalized_shape=normalized, eps=eps)]
    y, mean, inv = _normalize(ctx, x, tuple(range(axis, len(shape))), eps, _stash(ctx, x))
    y = ctx.call("mul", ctx.cast(y, x.type.dtype), scale)
    if bias is not None:
        y = ctx.call("add", y, bias)
    return [y, mean if ctx.wants_output(1) else None, inv if ctx.wants_output(2) else None]


@rule("RMSNormalization")
def rms_norm(ctx: NodeContext) -> list[Value]:
    x, scale = ctx.input(0), ctx.input(1)
    shape = static_shape(x, ctx)
    axis = normalize_axis(ctx.attr("axis", -1), len(shape), ctx)
    eps = ctx.attr("epsilon", 1e-5)
    y, _, _ = _normalize(ctx, x, tuple(range(axis, len(shape))), eps, _stash(ctx, x), center=False)
    return [ctx.call("mul", ctx.cast(y, x.type.dtype), scale)]


@rule("InstanceNormalization")
def instance_norm(ctx: NodeContext) -> list[Value]:
    x, scale, bias = ctx.input(0), ctx.input(1), ctx.input(2)
    channels = static_shape(x, ctx)[1]
    return [ctx.call("group_norm", x, scale, bias, groups=channels, eps=ctx.attr("epsilon", 1e-5))]


@rule("GroupNormalization")
def group_norm(ctx: NodeContext) -> list[Value]:
    x, scale, bias = ctx.input(0), ctx.input(1), ctx.input(2)
    groups = ctx.attr("num_groups")
    channels = static_shape(x, ctx)[1]
    eps = ctx.attr("epsilon", 1e-5)
    if scale.type.shape != (channels,):
        # Opset 18 gives one scale and bias per group: repeat them for the group's channels.
        def per_channel(v: Value) -> Value:
            grid = ctx.call("expand", ctx.reshape(v, (groups, 1)), shape=(groups, channels // groups))
            return ctx.reshape(grid, (channels,))

        scale, bias = per_channel(scale), per_channel(bias)
    stash = _stash(ctx, x)
    if stash is x.type.dtype or x.type.dtype is DType.f32:
        return [ctx.call("group_norm", x, scale, bias, groups=groups, eps=eps)]
    y = ctx.call("group_norm", ctx.cast(x, stash), groups=groups, eps=eps)
    shape = (channels,) + (1,) * (x.type.rank - 2)
    return [ctx.call("add", ctx.call("mul", ctx.cast(y, x.type.dtype), ctx.reshape(scale, shape)),
                     ctx.reshape(bias, shape))]


@rule("LpNormalization")
def lp_normalization(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    axis = normalize_axis(ctx.attr("axis", -1), x.type.rank, ctx)
    p = ctx.attr("p", 2)
    if p == 1:
        norm = ctx.call("sum", ctx.call("abs", x), dims=(axis,), keepdim=True)
    else:
        norm = ctx.call("sqrt", ctx.call("sum", ctx.call("mul", x, x), dims=(axis,), keepdim=True))
    zero = ctx.scalar(0, x)
    return [ctx.call("where", ctx.call("eq", norm, zero), zero, ctx.call("div", x, norm))]


@rule("MeanVarianceNormalization")
def mean_variance_normalization(ctx: NodeContext) -> list[Value]:
    """(x - E[x]) / (sqrt(E[(x - E[x])^2]) + 1e-9): the variance of the centered values, where the spec's
    function body takes E[x^2] - E[x]^2, which cancels in float32 for inputs with an offset (pixels)."""
    x = ctx.input(0)
    dims = tuple(sorted(normalize_axis(a, x.type.rank, ctx) for a in (ctx.attr("axes") or (0, 2, 3))))
    centered = ctx.call("sub", x, ctx.call("mean", x, dims=dims, keepdim=True))
    std = ctx.call("sqrt", ctx.call("mean", ctx.call("mul", centered, centered), dims=dims, keepdim=True))
    return [ctx.call("div", centered, ctx.call("add", std, ctx.scalar(1e-9, x)))]


@rule("LRN")
def lrn(ctx: NodeContext) -> list[Value]:
    return [ctx.call("local_response_norm", ctx.input(0), size=ctx.attr("size"), alpha=ctx.attr("alpha", 1e-4),
                     beta=ctx.attr("beta", 0.75), bias=ctx.attr("bias", 1.0))]


@rule("Softmax", "LogSoftmax")
def softmax(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    axis = normalize_axis(ctx.attr("axis", -1), x.type.rank, ctx)
    if ctx.node.op_type == "Softmax" and x.type.dtype in (DType.f16, DType.bf16):
        # ONNX defines Softmax by its function body, whose Exp and ReduceSum results are of the input
        # type; a fused softmax rounds only once, which differs by an ulp in half precision.
        shifted = ctx.call("sub", x, ctx.call("amax", x, dims=(axis,), keepdim=True))
        exp = ctx.call("exp", shifted)
        return [ctx.call("div", exp, ctx.call("sum", exp, dims=(axis,), keepdim=True))]
    return [ctx.call("softmax" if ctx.node.op_type == "Softmax" else "log_softmax", x, dim=axis)]


@rule("Hardmax")
def hardmax(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    axis = normalize_axis(ctx.attr("axis", -1), x.type.rank, ctx)
    first = ctx.call("argmax", x, dim=axis, keepdim=True)
    positions = [1] * x.type.rank
    positions[axis] = static_shape(x, ctx)[axis]
    hot = ctx.call("eq", first, ctx.constant(torch.arange(math.prod(positions)).reshape(positions)))
    return [ctx.cast(hot, x.type.dtype)]


@rule("GridSample")
def grid_sample(ctx: NodeContext) -> list[Value]:
    x, grid = ctx.input(0), ctx.input(1)
    mode = {"linear": "bilinear", "cubic": "bicubic"}.get(ctx.attr("mode", "linear"), ctx.attr("mode", "linear"))
    if (x.type.rank != 4 and mode == "bicubic") or x.type.rank not in (4, 5):
        raise ctx.unsupported(f"of rank {x.type.rank} in {mode} mode is not supported")
    return [ctx.call("grid_sample", x, grid, mode=mode, padding_mode=ctx.attr("padding_mode", "zeros"),
                     align_corners=bool(ctx.attr("align_corners", 0)))]
