"""ONNX Resize: interpolation is separable, so each resized axis becomes one constant interpolation
matrix computed at import time (as ONNX's reference computes its coefficients), applied with
`take` for nearest mode (a pure gather) or `matmul` otherwise; tf_crop_and_resize's out-of-range
positions take `extrapolation_value` through a constant mask."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .graph import Value
from .onnx_lowering import NodeContext, normalize_axis, rule, static_shape

Coeffs = Callable[[float, float], np.ndarray]


def _nearest(mode: str) -> Coeffs:
    def coeffs(ratio: float, scale: float) -> np.ndarray:
        if float(ratio).is_integer():
            return np.array([0.0, 1.0])
        prefer_ceil = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5, "floor": False,
                       "ceil": True}[mode]
        return np.array([0.0, 1.0]) if prefer_ceil else np.array([1.0, 0.0])

    return coeffs


def _linear(antialias: bool) -> Coeffs:
    def coeffs(ratio: float, scale: float) -> np.ndarray:
        if not antialias:
            return np.array([1 - ratio, ratio])
        scale = min(scale, 1.0)
        start = int(np.floor(-1 / scale) + 1)
        args = (np.arange(start, start + 2 - 2 * start) - ratio) * scale
        weights = np.clip(1 - np.abs(args), 0, 1)
        return weights / weights.sum()

    return coeffs


def _cubic(a: float, antialias: bool) -> Coeffs:
    def kernel(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        if x < 2:
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return 0.0

    def coeffs(ratio: float, scale: float) -> np.ndarray:
        if not antialias:
            return np.array([kernel(ratio + 1), kernel(ratio), kernel(1 - ratio), kernel(2 - ratio)])
        scale = min(scale, 1.0)
        start = int(np.floor(-2 / scale) + 1)
        weights = np.array([kernel(scale * (i - ratio)) for i in range(start, 2 - start)])
        return weights / weights.sum()

    return coeffs


def _source_coords(mode: str, out_size: int, in_size: int, scale: float,
                   roi: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Each output index's coordinate in the input, and (tf_crop_and_resize) which fall outside it."""
    y = np.arange(out_size, dtype=np.float64)
    out_width = scale * in_size
    if mode == "align_corners":
        # Over scale * in, as the ONNX reference and its node tests map it; ONNX Runtime divides by the
        # whole output length instead, and differs where scale * in is not whole.
        return (np.zeros(out_size) if out_width == 1 else y * (in_size - 1) / (out_width - 1)), None
    if mode == "asymmetric":
        return y / scale, None
    if mode == "tf_crop_and_resize":
        lo, hi = roi if roi is not None else (0.0, 1.0)
        if out_width == 1:
            x = np.full(out_size, (hi - lo) * (in_size - 1) / 2)
        else:
            x = y * (hi - lo) * (in_size - 1) / (out_width - 1)
        x = x + lo * (in_size - 1)
        return x, (x < 0) | (x > in_size - 1)
    if mode == "pytorch_half_pixel":  # the spec's `length_resized > 1 ? ... : 0`, by the whole output length
        return (np.zeros(out_size) if out_size == 1 else (y + 0.5) / scale - 0.5), None
    if mode == "half_pixel_symmetric":
        offset = in_size / 2 * (1 - out_size / out_width)
        return offset + (y + 0.5) / scale - 0.5, None
    if mode == "half_pixel":
        return (y + 0.5) / scale - 0.5, None
    raise ValueError(f"unknown coordinate_transformation_mode {mode!r}")


def axis_weights(in_size: int, out_size: int, scale: float, coeffs: Coeffs, mode: str,
                 roi: tuple[float, float] | None, exclude_outside: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The [out, in] interpolation matrix of one axis and its extrapolation mask (or None)."""
    x, outside = _source_coords(mode, out_size, in_size, scale, roi)
    floor = np.floor(x)
    ratios = np.where(x == floor, 1.0, x - floor)
    table = np.stack([coeffs(float(r), scale) for r in ratios]) if out_size else np.zeros((0, 2))
    n = table.shape[1]
    pad = math.ceil(n / 2)
    shifted = x + pad
    base = np.floor(shifted)
    frac = shifted - base
    if n % 2 == 0:
        offset = np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        offset = np.where(frac <= 0.5, -((n - 1) // 2), -((n - 1) // 2) + 1)
    neighbours = (base + offset).astype(np.int64)[:, None] + np.arange(n)[None, :] - pad
    if exclude_outside:
        table = np.where((neighbours < 0) | (neighbours >= in_size), 0.0, table)
        sums = table.sum(-1, keepdims=True)
        table = table / np.where(sums == 0, 1.0, sums)
    weights = np.zeros((out_size, in_size))
    rows = np.repeat(np.arange(out_size), n)
    np.add.at(weights, (rows, np.clip(neighbours, 0, in_size - 1).reshape(-1)), table.reshape(-1))
    return weights, (outside if outside is not None and outside.any() else None)


def _pytorch_kernel(ctx: NodeContext, x: Value, shape: list[int], axes: list[int], factors: list[float],
                    targets: list[int], by_scales: bool) -> dict[str, object] | None:
    """The `interpolate` attributes of a Resize that PyTorch's upsample kernels compute exactly (one kernel
    instead of a gather or product per axis), else None: a float tensor [N, C, *spatial] resized over its
    spatial dims only, in a mode both define alike. Nearest keeps to power-of-two ratios, where
    ONNX's dst / scale and PyTorch's dst * (in / out) floor alike; scales must give whole sizes."""
    rank, mode = len(shape), ctx.attr("mode", "nearest")
    resized = {a: (f, t) for a, f, t in zip(axes, factors, targets, strict=True)
               if t != shape[a] or not math.isclose(f, 1.0)}
    if (not x.type.dtype.is_floating or not 3 <= rank <= 5 or min(resized, default=0) < 2
            or ctx.attr("antialias", 0) or ctx.attr("exclude_outside", 0)
            or any(t != f * shape[a] for a, (f, t) in resized.items())):
        return None
    transform = ctx.attr("coordinate_transformation_mode", "half_pixel")
    size = [resized.get(a, (1.0, shape[a]))[1] for a in range(2, rank)]
    scales = [resized.get(a, (1.0, 0))[0] for a in range(2, rank)] if by_scales else None
    if mode == "nearest":
        nearest = {("asymmetric", "floor"): "nearest", ("half_pixel", "round_prefer_ceil"): "nearest_exact"}.get(
            (transform, ctx.attr("nearest_mode", "round_prefer_floor")))
        ratios = [max(t, shape[a]) / min(t, shape[a]) if min(t, shape[a]) else 0.0 for a, (_, t) in resized.items()]
        if nearest is None or not all(r >= 1 and r.is_integer() and int(r) & (int(r) - 1) == 0 for r in ratios):
            return None
        return {"mode": nearest, "size": size}
    if transform == "pytorch_half_pixel" and min(size) > 1:
        transform = "half_pixel"
    if transform not in ("half_pixel", "align_corners") or (mode == "cubic" and (
            rank != 4 or ctx.attr("cubic_coeff_a", -0.75) != -0.75)):
        return None
    return {"mode": mode, "size": size, "align_corners": transform == "align_corners", "scales": scales}


@rule("Resize")
def resize(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    shape = static_shape(x, ctx)
    rank = len(shape)
    axes = [normalize_axis(a, rank, ctx) for a in (ctx.attr("axes") or range(rank))]
    roi_values, scales, sizes = ctx.const(1), ctx.const(2), ctx.const(3)
    roi = None
    if roi_values is not None and roi_values.numel():
        flat = roi_values.double().tolist()
        roi = {axis: (flat[i], flat[len(axes) + i]) for i, axis in enumerate(axes)}
    if sizes is not None and sizes.numel():
        targets = [int(s) for s in sizes.tolist()]
        factors = [t / shape[a] for t, a in zip(targets, axes, strict=True)]
        policy = ctx.attr("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            common = min(factors) if policy == "not_larger" else max(factors)
            factors = [common] * len(axes)
            targets = [int(common * shape[a] + 0.5) for a in axes]
    elif scales is not None:
        factors = [float(s) for s in scales.double().tolist()]
        targets = [int(f * shape[a]) for f, a in zip(factors, axes, strict=True)]
    else:
        raise ctx.fail("needs scales or sizes")
    mode = ctx.attr("mode", "nearest")
    antialias = bool(ctx.attr("antialias", 0))
    if mode not in ("nearest", "linear", "cubic"):
        raise ctx.fail(f"mode must be nearest, linear or cubic, got {mode!r}")
    if mode == "nearest":
        nearest_mode = ctx.attr("nearest_mode", "round_prefer_floor")
        if nearest_mode not in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
            raise ctx.fail(f"nearest_mode must be round_prefer_floor, round_prefer_ceil, floor or ceil, "
                           f"got {nearest_mode!r}")
        coeffs = _nearest(nearest_mode)
    elif mode == "linear":
        coeffs = _linear(antialias)
    else:
        coeffs = _cubic(ctx.attr("cubic_coeff_a", -0.75), antialias)
    if mode != "nearest" and not x.type.dtype.is_floating:
        raise ctx.unsupported(f"in {mode} mode of {x.type.dtype} tensors is not supported")
    transform = ctx.attr("coordinate_transformation_mode", "half_pixel")
    extrapolation = ctx.attr("extrapolation_value", 0.0)
    kernel = _pytorch_kernel(ctx, x, shape, axes, factors, targets, by_scales=sizes is None or not sizes.numel())
    if kernel is not None:
        return [ctx.call("interpolate", x, **kernel)]
    y = x
    for axis, factor, target in zip(axes, factors, targets, strict=True):
        axis_roi = roi.get(axis) if roi is not None and transform == "tf_crop_and_resize" else None
        if math.isclose(factor, 1.0) and target == shape[axis] and (axis_roi is None or axis_roi == (0.0, 1.0)):
            continue
        weights, outside = axis_weights(shape[axis], target, factor, coeffs, transform, axis_roi,
                                        bool(ctx.attr("exclude_outside", 0)))
        if mode == "nearest":
            y = ctx.call("take", y, ctx.constant(torch.from_numpy(weights.argmax(1))), dim=axis)
        else:
            moved = ctx.call("transpose", y, dim0=axis, dim1=-1) if axis != rank - 1 else y
            mixed = ctx.call("matmul", moved, ctx.constant(torch.from_numpy(weights.T.copy()), dtype=x.type.dtype))
            y = ctx.call("transpose", mixed, dim0=axis, dim1=-1) if axis != rank - 1 else mixed
        if outside is not None:
            mask_shape = [1] * rank
            mask_shape[axis] = target
            mask = ctx.constant(torch.from_numpy(outside.reshape(mask_shape)))
            y = ctx.call("where", mask, ctx.scalar(extrapolation, y), y)
    return [y]
