"""Normalization, softmax and pooling."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import Attr, register


@register("batch_norm", ["x", "mean", "var", "weight?", "bias?"], {"eps": Attr("float", 1e-5)}, kind="norm")
def batch_norm(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, *, eps: float) -> torch.Tensor:
    """Inference batch norm over dim 1 with running statistics."""
    return F.batch_norm(x, mean, var, weight, bias, training=False, eps=eps)


@register("layer_norm", ["x", "weight?", "bias?"],
          {"normalized_shape": Attr("ints"), "eps": Attr("float", 1e-5)}, kind="norm")
def layer_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, *,
               normalized_shape: tuple[int, ...], eps: float) -> torch.Tensor:
    """Normalize over the trailing `normalized_shape` dims, then scale and shift."""
    return F.layer_norm(x, normalized_shape, weight, bias, eps)


@register("rms_norm", ["x", "weight?"],
          {"normalized_shape": Attr("ints"), "eps": Attr("float", None, optional=True)}, kind="norm")
def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, *, normalized_shape: tuple[int, ...],
             eps: float | None) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the trailing dims (eps none: dtype's epsilon)."""
    return F.rms_norm(x, normalized_shape, weight, eps)


@register("group_norm", ["x", "weight?", "bias?"], {"groups": Attr("int"), "eps": Attr("float", 1e-5)},
          kind="norm")
def group_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, *,
               groups: int, eps: float) -> torch.Tensor:
    """Normalized over each group of channels (and the dims after them), then scaled and shifted per channel.
    torch.group_norm: F.group_norm refuses groups of one value, a check meant for training."""
    return torch.group_norm(x, groups, weight, bias, eps)


@register("softmax", ["x"], {"dim": Attr("int")}, kind="softmax")
def softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.softmax(x, dim)


@register("log_softmax", ["x"], {"dim": Attr("int")}, kind="softmax")
def log_softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.log_softmax(x, dim)


_POOL_ATTRS = {"kernel": Attr("ints"), "stride": Attr("ints", ()), "padding": Attr("ints", (0,)),
               "ceil_mode": Attr("bool", False)}


def _pool_fn(kind: str, rank: int):  # type: ignore[no-untyped-def]
    table = {"max": {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d},
             "avg": {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d},
             "adaptive_avg": {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d},
             "adaptive_max": {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}}
    try:
        return table[kind][rank]
    except KeyError:
        raise ValueError(f"{kind} pooling over {rank} spatial dims is not supported") from None


@register("max_pool", ["x"], {**_POOL_ATTRS, "dilation": Attr("ints", (1,))}, kind="pool")
def max_pool(x: torch.Tensor, *, kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...],
             dilation: tuple[int, ...], ceil_mode: bool) -> torch.Tensor:
    """Max pooling over len(kernel) trailing dims; empty stride means stride = kernel."""
    fn = _pool_fn("max", len(kernel))
    return fn(x, kernel, stride or kernel, padding, dilation, ceil_mode)


@register("avg_pool", ["x"], {**_POOL_ATTRS, "count_include_pad": Attr("bool", True),
                              "divisor_override": Attr("int", None, optional=True)}, kind="pool")
def avg_pool(x: torch.Tensor, *, kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...],
             ceil_mode: bool, count_include_pad: bool, divisor_override: int | None) -> torch.Tensor:
    """Average pooling over len(kernel) trailing dims; empty stride means stride = kernel."""
    fn = _pool_fn("avg", len(kernel))
    if len(kernel) == 1:
        return fn(x, kernel, stride or kernel, padding, ceil_mode, count_include_pad)
    return fn(x, kernel, stride or kernel, padding, ceil_mode, count_include_pad, divisor_override)


@register("adaptive_avg_pool", ["x"], {"output_size": Attr("ints")}, kind="pool")
def adaptive_avg_pool(x: torch.Tensor, *, output_size: tuple[int, ...]) -> torch.Tensor:
    """Average pooling to a fixed output size over len(output_size) trailing dims."""
    return _pool_fn("adaptive_avg", len(output_size))(x, output_size)


@register("adaptive_max_pool", ["x"], {"output_size": Attr("ints")}, kind="pool")
def adaptive_max_pool(x: torch.Tensor, *, output_size: tuple[int, ...]) -> torch.Tensor:
    return _pool_fn("adaptive_max", len(output_size))(x, output_size)


_aten = torch.ops.aten
# PyTorch's upsample kernels by (mode, number of resized dims); the antialiased ones by mode.
_UPSAMPLE = {("nearest", 1): _aten.upsample_nearest1d, ("nearest", 2): _aten.upsample_nearest2d,
             ("nearest", 3): _aten.upsample_nearest3d, ("nearest_exact", 1): _aten._upsample_nearest_exact1d,
             ("nearest_exact", 2): _aten._upsample_nearest_exact2d,
             ("nearest_exact", 3): _aten._upsample_nearest_exact3d, ("linear", 1): _aten.upsample_linear1d,
             ("linear", 2): _aten.upsample_bilinear2d, ("linear", 3): _aten.upsample_trilinear3d,
             ("cubic", 2): _aten.upsample_bicubic2d}
_ANTIALIASED = {"linear": _aten._upsample_bilinear2d_aa, "cubic": _aten._upsample_bicubic2d_aa}


@register("interpolate", ["x"], {"mode": Attr("str"), "size": Attr("ints"), "align_corners": Attr("bool", False),
                                 "scales": Attr("floats", None, optional=True), "antialias": Attr("bool", False)},
          kind="pool")
def interpolate(x: torch.Tensor, *, mode: str, size: tuple[int, ...], align_corners: bool,
                scales: tuple[float, ...] | None, antialias: bool) -> torch.Tensor:
    """Resize the len(size) trailing dims as F.interpolate does: mode nearest (source floor(dst * in / out)),
    nearest_exact (floor((dst + 0.5) * in / out)), linear (1-3 dims) or cubic (2 dims), antialiased (linear
    and cubic over 2 dims: a filter as wide as the shrink); `scales`, where given, stand for out / in in
    the mapping, as the scale factors F.interpolate was called with (ATen's scales_h, scales_w)."""
    k = len(size)
    op = _ANTIALIASED.get(mode) if antialias and k == 2 else None if antialias else _UPSAMPLE.get((mode, k))
    if op is None or (scales is not None and len(scales) != k) or (align_corners and mode.startswith("nearest")):
        raise ValueError(f"interpolate: no {'antialiased ' if antialias else ''}{mode} mode over {k} dims"
                         f"{' with align_corners' if align_corners else ''}"
                         f"{f' with {len(scales)} scales' if scales is not None and len(scales) != k else ''}")
    corners = () if mode.startswith("nearest") else (align_corners,)
    return op.default(x, list(size), *corners, *(scales if scales is not None else (None,) * k))
