"""Ops that ONNX models need and the core table lacks: more math, numpy-style indexing, ONNX pooling
and padding modes, top-k, einsum."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .elementwise import register_binary, register_unary
from .registry import Attr, register

_UNARY = {
    "tan": torch.tan, "asin": torch.asin, "acos": torch.acos, "atan": torch.atan, "sinh": torch.sinh,
    "cosh": torch.cosh, "asinh": torch.asinh, "acosh": torch.acosh, "atanh": torch.atanh,
}
_BINARY = {
    "bitwise_xor": (torch.bitwise_xor, True), "bitwise_left_shift": (torch.bitwise_left_shift, False),
    "bitwise_right_shift": (torch.bitwise_right_shift, False),
}


for _name, _fn in _UNARY.items():
    register_unary(_name, _fn)
for _name, (_fn, _comm) in _BINARY.items():
    register_binary(_name, _fn, _comm)


@register("flip", ["x"], {"dims": Attr("ints")}, kind="shape")
def flip(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Reverse the order of elements along `dims`."""
    return torch.flip(x, dims)


@register("tile", ["x"], {"repeats": Attr("ints")}, kind="shape")
def tile(x: torch.Tensor, repeats: tuple[int, ...]) -> torch.Tensor:
    """Repeat the whole tensor `repeats[d]` times along each dim d (numpy.tile with len(repeats) == rank)."""
    return x.repeat(repeats) if repeats else x.clone()


@register("take", ["x", "indices"], {"dim": Attr("int", 0), "wrap": Attr("bool", True)}, kind="index")
def take(x: torch.Tensor, indices: torch.Tensor, dim: int, wrap: bool) -> torch.Tensor:
    """numpy.take along `dim`: negative indices count from the end, or with `wrap` false are an error
    (as torch.embedding's are); the result has shape x.shape[:dim] + indices.shape + x.shape[dim+1:]."""
    dim %= max(x.dim(), 1)
    flat = indices.reshape(-1).long()
    if wrap:
        flat = torch.where(flat < 0, flat + x.shape[dim], flat)
    elif flat.device.type != "meta" and flat.numel() and int(flat.min()) < 0:
        raise IndexError(f"index {int(flat.min())} is out of range: indices must be in [0, {x.shape[dim]})")
    picked = torch.index_select(x, dim, flat)
    return picked.reshape((*x.shape[:dim], *indices.shape, *x.shape[dim + 1:]))


@register("gather_nd", ["x", "indices"], {"batch_dims": Attr("int", 0)}, kind="index")
def gather_nd(x: torch.Tensor, indices: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """ONNX GatherND: slices of `x` addressed by the last axis of `indices`, after `batch_dims`
    leading dimensions shared by both."""
    batch = x.shape[:batch_dims]
    depth = indices.shape[-1]
    xs = x.reshape(-1, *x.shape[batch_dims:])
    idx = indices.reshape(xs.shape[0], -1, depth).long()
    sizes = torch.tensor(x.shape[batch_dims:batch_dims + depth], device=x.device)
    idx = torch.where(idx < 0, idx + sizes, idx)
    rows = torch.arange(xs.shape[0], device=x.device).unsqueeze(1).expand(-1, idx.shape[1])
    picked = xs[(rows, *idx.unbind(-1))]
    return picked.reshape((*batch, *indices.shape[batch_dims:-1], *x.shape[batch_dims + depth:]))


_REDUCE = {"none": None, "add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


@register("scatter_elements", ["x", "indices", "updates"], {"dim": Attr("int", 0), "reduction": Attr("str", "none")},
          kind="index")
def scatter_elements(x: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor, dim: int,
                     reduction: str) -> torch.Tensor:
    """ONNX ScatterElements: a copy of x with updates written (or reduced: add, mul, max, min) at
    `indices` along `dim`; negative indices count from the end."""
    idx = indices.long()
    idx = torch.where(idx < 0, idx + x.shape[dim], idx)
    if reduction == "none":
        return x.scatter(dim, idx, updates)
    return x.scatter_reduce(dim, idx, updates, _REDUCE[reduction], include_self=True)  # type: ignore[arg-type]


_INDEX_REDUCE = {"mul": "prod", "max": "amax", "min": "amin"}


@register("scatter_nd", ["x", "indices", "updates"], {"reduction": Attr("str", "none")}, kind="index")
def scatter_nd(x: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor, reduction: str) -> torch.Tensor:
    """ONNX ScatterND: a copy of x with the slices addressed by the last axis of `indices` replaced
    by (or reduced with: add, mul, max, min) `updates`."""
    depth = indices.shape[-1]
    lead = x.shape[:depth]
    idx = indices.reshape(-1, depth).long()
    sizes = torch.tensor(lead, device=x.device)
    idx = torch.where(idx < 0, idx + sizes, idx)
    strides = torch.tensor([math.prod(lead[i + 1:]) for i in range(depth)], device=x.device)
    flat = (idx * strides).sum(-1)
    rows = x.reshape(math.prod(lead), -1)
    upd = updates.reshape(flat.numel(), -1).to(x.dtype)
    if reduction == "none":
        out = rows.index_copy(0, flat, upd)
    elif reduction == "add":
        out = rows.index_add(0, flat, upd)
    else:
        out = rows.index_reduce(0, flat, upd, _INDEX_REDUCE[reduction])  # type: ignore[arg-type]
    return out.reshape(x.shape)


@register("topk", ["x"], {"k": Attr("int"), "dim": Attr("int", -1), "largest": Attr("bool", True),
                          "sorted": Attr("bool", True)}, kind="reduction")
def topk(x: torch.Tensor, k: int, dim: int, largest: bool, sorted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest (or smallest) values along `dim` and their i64 indices; equal values keep index
    order, as ONNX TopK requires."""
    values, indices = torch.sort(x, dim=dim, descending=largest, stable=True)
    return values.narrow(dim, 0, k), indices.narrow(dim, 0, k)


@register("einsum", ["*operands"], {"equation": Attr("str")}, kind="matmul")
def einsum(*operands: torch.Tensor, equation: str) -> torch.Tensor:
    """Einstein summation as numpy.einsum spells it."""
    return torch.einsum(equation, *operands)


@register("cumprod", ["x"], {"dim": Attr("int")}, kind="scan")
def cumprod(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Running product along `dim`, keeping the element type."""
    return torch.cumprod(x, dim, dtype=x.dtype)


@register("det", ["x"], kind="matmul")
def det(x: torch.Tensor) -> torch.Tensor:
    """Determinant of the trailing square matrices."""
    return torch.linalg.det(x)


@register("local_response_norm", ["x"], {"size": Attr("int"), "alpha": Attr("float", 1e-4),
                                         "beta": Attr("float", 0.75), "bias": Attr("float", 1.0)}, kind="norm")
def local_response_norm(x: torch.Tensor, size: int, alpha: float, beta: float, bias: float) -> torch.Tensor:
    """x / (bias + alpha / size * sum of squares over `size` neighbouring channels) ** beta."""
    return F.local_response_norm(x, size, alpha, beta, bias)


def _windows(x: torch.Tensor, kernel: tuple[int, ...], strides: tuple[int, ...],
             dilations: tuple[int, ...]) -> torch.Tensor:
    """[N, C, *out, *kernel]: every pooling window of the spatial dims (x is already padded)."""
    for i, (k, s, d) in enumerate(zip(kernel, strides, dilations, strict=True)):
        x = x.unfold(2 + i, (k - 1) * d + 1, s)[..., ::d]
    return x


@register("onnx_pool", ["x"], {"mode": Attr("str"), "kernel": Attr("ints"), "strides": Attr("ints"),
                               "pads": Attr("ints"), "dilations": Attr("ints"), "ceil_mode": Attr("bool", False),
                               "count_include_pad": Attr("bool", False), "p": Attr("int", 2),
                               "indices": Attr("bool", False)}, kind="pool")
def onnx_pool(x: torch.Tensor, mode: str, kernel: tuple[int, ...], strides: tuple[int, ...], pads: tuple[int, ...],
              dilations: tuple[int, ...], ceil_mode: bool, count_include_pad: bool, p: int,
              indices: bool) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """ONNX MaxPool ("max"), AveragePool ("avg") and LpPool ("lp") with explicit pads (begin..., end...),
    dilations and ceil_mode: windows that run past the padded input are cut there, and the average
    counts the padding only with `count_include_pad`. With `indices`, max pooling also returns the
    row-major flat index of each maximum in x."""
    n = len(kernel)
    spatial = x.shape[2:]
    extra = []
    for i in range(n):
        window = (kernel[i] - 1) * dilations[i] + 1
        size = spatial[i] + pads[i] + pads[n + i] - window
        out = (-(-size // strides[i]) if ceil_mode else size // strides[i]) + 1
        if ceil_mode and (out - 1) * strides[i] >= spatial[i] + pads[i]:
            out -= 1
        extra.append(max(0, (out - 1) * strides[i] + window - (spatial[i] + pads[i] + pads[n + i])))
    # F.pad lists the last dim first.
    explicit = [v for i in reversed(range(n)) for v in (pads[i], pads[n + i])]
    ceil_extra = [v for i in reversed(range(n)) for v in (0, extra[i])]
    if mode == "max":
        fill = float("-inf") if x.is_floating_point() else torch.iinfo(x.dtype).min
        padded = F.pad(F.pad(x, explicit, value=fill), ceil_extra, value=fill)
        win = _windows(padded, kernel, strides, dilations).flatten(-n)
        values, arg = win.max(-1)
        if not indices:
            return values
        plane = math.prod(spatial)
        grid = torch.arange(plane, device=x.device).reshape(spatial).expand(x.shape)
        channels = torch.arange(x.shape[0] * x.shape[1], device=x.device).reshape(x.shape[0], x.shape[1], *[1] * n)
        grid = grid + channels * plane
        grid = F.pad(F.pad(grid, explicit, value=-1), ceil_extra, value=-1)
        where = _windows(grid, kernel, strides, dilations).flatten(-n)
        return values, where.gather(-1, arg.unsqueeze(-1)).squeeze(-1)
    data = x.abs().pow(p) if mode == "lp" else x
    summed = _windows(F.pad(F.pad(data, explicit), ceil_extra), kernel, strides, dilations).flatten(-n).sum(-1)
    if mode == "lp":
        return summed.pow(1.0 / p)
    ones = torch.ones((1, 1, *spatial), dtype=x.dtype, device=x.device)
    mask = F.pad(F.pad(ones, explicit, value=1.0 if count_include_pad else 0.0), ceil_extra)
    count = _windows(mask, kernel, strides, dilations).flatten(-n).sum(-1)
    return summed / count


@register("onnx_pad", ["x"], {"pads": Attr("ints"), "mode": Attr("str")}, kind="shape")
def onnx_pad(x: torch.Tensor, pads: tuple[int, ...], mode: str) -> torch.Tensor:
    """ONNX Pad in "edge", "reflect" or "wrap" mode; `pads` is (begin_0, ..., begin_n, end_0, ..., end_n)
    and a negative entry crops. "wrap" crops first and wraps around what is left, as ONNX Runtime does."""
    rank = x.dim()
    for dim in range(rank):
        lo, hi = pads[dim], pads[rank + dim]
        if mode == "wrap" and min(lo, hi) < 0:
            x = x.narrow(dim, max(-lo, 0), x.shape[dim] - max(-lo, 0) - max(-hi, 0))
            lo, hi = max(lo, 0), max(hi, 0)
        if lo == 0 and hi == 0:
            continue
        size = x.shape[dim]
        pos = torch.arange(-lo, size + hi, device=x.device)
        if mode == "edge":
            pos = pos.clamp(0, size - 1)
        elif mode == "wrap":
            pos = pos % size
        else:
            period = max(2 * (size - 1), 1)
            pos = pos.abs() % period
            pos = torch.where(pos >= size, period - pos, pos)
        x = torch.index_select(x, dim, pos)
    return x


@register("grid_sample", ["x", "grid"], {"mode": Attr("str", "bilinear"), "padding_mode": Attr("str", "zeros"),
                                         "align_corners": Attr("bool", False)}, kind="index")
def grid_sample(x: torch.Tensor, grid: torch.Tensor, mode: str, padding_mode: str, align_corners: bool) -> torch.Tensor:
    """Sample x at the normalized coordinates of `grid` (torch.nn.functional.grid_sample)."""
    return F.grid_sample(x, grid.to(x.dtype), mode, padding_mode, align_corners)


@register("bitcast", ["x"], {"dtype": Attr("dtype")}, kind="elementwise")
def bitcast(x: torch.Tensor, dtype: object) -> torch.Tensor:
    """Reinterpret the bits of each element as `dtype`, which has the same width."""
    return x.view(dtype.torch)  # type: ignore[attr-defined]
