"""ONNX lowering rules: constants, shape arithmetic, layout, indexing, padding and tensor creation."""

from __future__ import annotations

import math

import numpy as np
import torch

from .graph import Value
from .onnx_lowering import NodeContext, dtype_of, normalize_axis, rule, static_shape
from .types import DType


@rule("Constant")
def constant(ctx: NodeContext) -> list[Value]:
    attrs = ctx.attrs
    if "value" in attrs:
        return [ctx.constant(attrs["value"], hint="const")]
    for name, dtype in (("value_float", torch.float32), ("value_floats", torch.float32),
                        ("value_int", torch.int64), ("value_ints", torch.int64)):
        if name in attrs:
            return [ctx.constant(torch.tensor(attrs[name], dtype=dtype), hint="const")]
    raise ctx.unsupported(f"with attribute(s) {sorted(attrs)} is not supported")


@rule("Shape")
def shape(ctx: NodeContext) -> list[Value]:
    dims = static_shape(ctx.input(0), ctx)
    start, end = ctx.attr("start", 0), ctx.attr("end", None)
    return [ctx.constant(torch.tensor(dims[slice(start, end)], dtype=torch.int64), hint="shape")]


@rule("Size")
def size(ctx: NodeContext) -> list[Value]:
    return [ctx.constant(torch.tensor(math.prod(static_shape(ctx.input(0), ctx)), dtype=torch.int64), hint="size")]


@rule("ConstantOfShape")
def constant_of_shape(ctx: NodeContext) -> list[Value]:
    dims = ctx.const_ints(0)
    value = ctx.attr("value")
    fill = value.reshape(-1) if value is not None else torch.zeros(1, dtype=torch.float32)
    return [ctx.constant(torch.full(dims or (), fill.item(), dtype=fill.dtype), hint="filled")]


@rule("Range")
def range_(ctx: NodeContext) -> list[Value]:
    start, limit, delta = (ctx.const(i) for i in range(3))
    assert start is not None and limit is not None and delta is not None
    count = max(math.ceil((limit.item() - start.item()) / delta.item()), 0)
    values = start + torch.arange(count, dtype=start.dtype) * delta
    return [ctx.constant(values.to(start.dtype), hint="range")]


@rule("Reshape")
def reshape(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    dims = ctx.const_ints(1)
    assert dims is not None
    in_shape = static_shape(x, ctx)
    if not ctx.attr("allowzero", 0):
        dims = [in_shape[i] if d == 0 else d for i, d in enumerate(dims)]
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        dims[dims.index(-1)] = math.prod(in_shape) // known if known else 0
    return [ctx.reshape(x, dims)]


@rule("Flatten")
def flatten(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    dims = static_shape(x, ctx)
    axis = ctx.attr("axis", 1)
    axis = axis + len(dims) if axis < 0 else axis
    return [ctx.reshape(x, (math.prod(dims[:axis]), math.prod(dims[axis:])))]


def _axes(ctx: NodeContext, index: int, rank: int) -> list[int] | None:
    axes = ctx.const_ints(index) if len(ctx.inputs) > index else ctx.attr("axes")
    return None if axes is None else sorted(normalize_axis(a, rank, ctx) for a in axes)


@rule("Squeeze")
def squeeze(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    axes = _axes(ctx, 1, x.type.rank)
    dims = static_shape(x, ctx)
    if axes is None:
        axes = [d for d, s in enumerate(dims) if s == 1]
    return [ctx.reshape(x, [s for d, s in enumerate(dims) if d not in axes]) if axes else x]


@rule("Unsqueeze")
def unsqueeze(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    rank = x.type.rank
    axes = ctx.const_ints(1) if len(ctx.inputs) > 1 else ctx.attr("axes")
    assert axes is not None
    out_rank = rank + len(axes)
    axes = sorted(normalize_axis(a, out_rank, ctx) for a in axes)
    if len(axes) == 1:
        return [ctx.call("unsqueeze", x, dim=axes[0])]
    dims = list(static_shape(x, ctx))
    for a in axes:
        dims.insert(a, 1)
    return [ctx.reshape(x, dims)]


@rule("Transpose")
def transpose(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    perm = ctx.attr("perm") or list(reversed(range(x.type.rank)))
    if list(perm) == list(range(x.type.rank)):
        return [x]
    return [ctx.call("permute", x, dims=tuple(perm))]


@rule("Expand")
def expand(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    target = np.broadcast_shapes(static_shape(x, ctx), tuple(ctx.const_ints(1) or ()))
    if tuple(target) == x.type.shape:
        return [x]
    return [ctx.call("expand", x, shape=tuple(target))]


@rule("Tile")
def tile(ctx: NodeContext) -> list[Value]:
    return [ctx.call("tile", ctx.input(0), repeats=tuple(ctx.const_ints(1) or ()))]


@rule("Concat")
def concat(ctx: NodeContext) -> list[Value]:
    values = [v for v in ctx.inputs if v is not None]
    axis = normalize_axis(ctx.attr("axis"), values[0].type.rank, ctx)
    # An empty 1-D operand next to higher-rank ones is a legacy no-op.
    values = [v for v in values if v.type.rank == values[0].type.rank]
    return [values[0] if len(values) == 1 else ctx.call("concat", *values, dim=axis)]


@rule("Split")
def split(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    axis = normalize_axis(ctx.attr("axis", 0), x.type.rank, ctx)
    total = static_shape(x, ctx)[axis]
    sizes = ctx.const_ints(1) if len(ctx.inputs) > 1 and ctx.inputs[1] is not None else ctx.attr("split")
    if not sizes:
        count = ctx.attr("num_outputs")
        if count is not None and count < 1:
            raise ctx.fail(f"num_outputs must be at least 1, got {count}")
        count = count or ctx.num_outputs
        chunk = -(-total // count)
        sizes = [min(chunk, total - i * chunk) for i in range(count)]
    return ctx.call_multi("split", [x], {"sizes": tuple(sizes), "dim": axis})


@rule("Slice")
def slice_(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    dims = static_shape(x, ctx)
    starts, ends = ctx.const_ints(1), ctx.const_ints(2)
    assert starts is not None and ends is not None
    axes = ctx.const_ints(3) or list(range(len(starts)))
    steps = ctx.const_ints(4) or [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = normalize_axis(axis, len(dims), ctx)
        size = dims[axis]
        first, stop, step = slice(start, end, step).indices(size)
        count = len(range(first, stop, step))
        if step < 0:
            # Torch slices forward only: read the reversed tensor instead.
            x = ctx.call("flip", x, dims=(axis,))
            first, step = size - 1 - first, -step
        if count == size and step == 1:
            continue
        x = ctx.call("slice", x, dim=axis, start=first, end=first + (count - 1) * step + 1 if count else first,
                     step=step)
    return [x]


def _positive_indices(ctx: NodeContext, indices: Value, size: int) -> Value:
    indices = ctx.cast(indices, DType.i64)
    negative = ctx.call("lt", indices, ctx.scalar(0, indices))
    return ctx.call("where", negative, ctx.call("add", indices, ctx.scalar(size, indices)), indices)


def _check_constant_indices(ctx: NodeContext, x: Value, indices: Value, axis: int) -> None:
    """Indices known at import must lie in [-size, size) of `axis`, as ONNX Runtime checks when it runs."""
    size = x.type.shape[axis]
    if indices.const is None or not isinstance(size, int) or indices.const.numel() == 0:
        return
    outside = indices.const[(indices.const < -size) | (indices.const >= size)]
    if outside.numel():
        raise ctx.fail(f"index {int(outside.reshape(-1)[0])} is out of range for axis {axis} of size {size}")


@rule("Gather")
def gather(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    axis = normalize_axis(ctx.attr("axis", 0), x.type.rank, ctx)
    _check_constant_indices(ctx, x, ctx.input(1), axis)
    return [ctx.call("take", x, ctx.input(1), dim=axis)]


@rule("GatherElements")
def gather_elements(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    axis = normalize_axis(ctx.attr("axis", 0), x.type.rank, ctx)
    _check_constant_indices(ctx, x, ctx.input(1), axis)
    indices = _positive_indices(ctx, ctx.input(1), static_shape(x, ctx)[axis])
    return [ctx.call("gather", x, indices, dim=axis)]


@rule("GatherND")
def gather_nd(ctx: NodeContext) -> list[Value]:
    return [ctx.call("gather_nd", ctx.input(0), ctx.input(1), batch_dims=ctx.attr("batch_dims", 0))]


@rule("ScatterElements")
def scatter_elements(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    axis = normalize_axis(ctx.attr("axis", 0), x.type.rank, ctx)
    return [ctx.call("scatter_elements", x, ctx.input(1), ctx.input(2), dim=axis,
                     reduction=ctx.attr("reduction", "none"))]


@rule("ScatterND")
def scatter_nd(ctx: NodeContext) -> list[Value]:
    return [ctx.call("scatter_nd", ctx.input(0), ctx.input(1), ctx.input(2), reduction=ctx.attr("reduction", "none"))]


@rule("Pad")
def pad(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    rank = x.type.rank
    given = ctx.const_ints(1) or []
    axes = ctx.const_ints(3) if len(ctx.inputs) > 3 and ctx.inputs[3] is not None else None
    axes = [normalize_axis(a, rank, ctx) for a in axes] if axes is not None else list(range(rank))
    pads = [0] * (2 * rank)
    for i, axis in enumerate(axes):
        pads[axis], pads[rank + axis] = given[i], given[len(axes) + i]
    mode = ctx.attr("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise ctx.fail(f"mode must be constant, reflect, edge or wrap, got {mode!r}")
    if not any(pads):
        return [x]
    if mode != "constant":
        return [ctx.call("onnx_pad", x, pads=tuple(pads), mode=mode)]
    value = ctx.const(2)
    fill = 0.0 if value is None or value.numel() == 0 else float(value.reshape(-1)[0])
    torch_pads = [p for d in reversed(range(rank)) for p in (pads[d], pads[rank + d])]
    return [ctx.call("pad", x, pads=tuple(torch_pads), value=fill)]


@rule("Trilu")
def trilu(ctx: NodeContext) -> list[Value]:
    k = ctx.const_ints(1)
    if k is not None and len(k) != 1:
        raise ctx.fail(f"k must hold one value, got {len(k)}")
    op = "triu" if ctx.attr("upper", 1) else "tril"
    return [ctx.call(op, ctx.input(0), diagonal=k[0] if k else 0)]


@rule("EyeLike")
def eye_like(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    rows, cols = static_shape(x, ctx)
    dtype = dtype_of(ctx.attr("dtype"), ctx.where) if ctx.attr("dtype") is not None else x.type.dtype
    eye = np.eye(rows, cols, k=ctx.attr("k", 0))
    return [ctx.constant(torch.from_numpy(eye).to(dtype.torch), hint="eye")]


@rule("OneHot")
def one_hot(ctx: NodeContext) -> list[Value]:
    indices, values = ctx.input(0), ctx.input(2)
    depth_values = ctx.const(1)
    assert depth_values is not None
    depth = int(depth_values.reshape(-1)[0])
    out_rank = indices.type.rank + 1
    axis = normalize_axis(ctx.attr("axis", -1), out_rank, ctx)
    idx = _positive_indices(ctx, ctx.cast(indices, DType.i64) if indices.type.dtype.is_floating else indices, depth)
    idx = ctx.call("unsqueeze", idx, dim=axis)
    positions = [1] * out_rank
    positions[axis] = depth
    hot = ctx.call("eq", idx, ctx.constant(torch.arange(depth).reshape(positions)))
    off = ctx.call("take", values, ctx.constant(torch.tensor(0)), dim=0)
    on = ctx.call("take", values, ctx.constant(torch.tensor(1)), dim=0)
    return [ctx.call("where", hot, on, off)]


@rule("DepthToSpace")
def depth_to_space(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    b, c, h, w = static_shape(x, ctx)
    bs = ctx.attr("blocksize")
    if ctx.attr("mode", "DCR") == "DCR":
        y = ctx.call("permute", ctx.reshape(x, (b, bs, bs, c // bs**2, h, w)), dims=(0, 3, 4, 1, 5, 2))
    else:
        y = ctx.call("permute", ctx.reshape(x, (b, c // bs**2, bs, bs, h, w)), dims=(0, 1, 4, 2, 5, 3))
    return [ctx.reshape(y, (b, c // bs**2, h * bs, w * bs))]


@rule("SpaceToDepth")
def space_to_depth(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    b, c, h, w = static_shape(x, ctx)
    bs = ctx.attr("blocksize")
    order = (0, 3, 5, 1, 2, 4) if ctx.attr("mode", "DCR") == "DCR" else (0, 1, 3, 5, 2, 4)
    y = ctx.call("permute", ctx.reshape(x, (b, c, h // bs, bs, w // bs, bs)), dims=order)
    return [ctx.reshape(y, (b, c * bs * bs, h // bs, w // bs))]


@rule("NonZero")
def non_zero(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    if x.const is None:
        raise ctx.unsupported("of a run-time tensor has a data-dependent shape")
    return [ctx.constant(torch.nonzero(x.const).T.contiguous(), hint="nonzero")]


@rule("Compress")
def compress(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    condition = ctx.const(1)
    assert condition is not None
    axis = ctx.attr("axis")
    if axis is None:
        x, axis = ctx.reshape(x, (-1,) if x.type.rank else (1,)), 0
    axis = normalize_axis(axis, x.type.rank, ctx)
    keep = torch.nonzero(condition.reshape(-1)[: static_shape(x, ctx)[axis]]).reshape(-1)
    return [ctx.call("take", x, ctx.constant(keep), dim=axis)]


_WINDOWS = {
    "HannWindow": (0.5, 0.5, 0.0), "HammingWindow": (25 / 46, 21 / 46, 0.0), "BlackmanWindow": (0.42, 0.5, 0.08),
}


@rule(*_WINDOWS)
def window(ctx: NodeContext) -> list[Value]:
    size_values = ctx.const_ints(0)
    assert size_values is not None
    size = size_values[0]
    a0, a1, a2 = _WINDOWS[ctx.node.op_type]
    n = size if ctx.attr("periodic", 1) else size - 1
    k = np.arange(size, dtype=np.float64)
    values = a0 - a1 * np.cos(2 * np.pi * k / n) + a2 * np.cos(4 * np.pi * k / n)
    dtype = dtype_of(ctx.attr("output_datatype", 1), ctx.where)
    return [ctx.constant(torch.from_numpy(values).to(dtype.torch), hint="window")]
