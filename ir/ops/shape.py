"""Layout ops (reshape, permute, ...) and indexing, concatenation and splitting."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import Attr, register


@register("reshape", ["x"], {"shape": Attr("ints")}, kind="shape")
def reshape(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Same elements in row-major order with a new shape; one entry may be -1."""
    return x.reshape(shape)


@register("permute", ["x"], {"dims": Attr("ints")}, kind="shape")
def permute(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return x.permute(dims)


@register("transpose", ["x"], {"dim0": Attr("int"), "dim1": Attr("int")}, kind="shape")
def transpose(x: torch.Tensor, dim0: int, dim1: int) -> torch.Tensor:
    return x.transpose(dim0, dim1)


@register("expand", ["x"], {"shape": Attr("ints")}, kind="shape")
def expand(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Broadcast to `shape`; -1 keeps a dimension."""
    return x.expand(shape)


@register("squeeze", ["x"], {"dims": Attr("ints", None, optional=True)}, kind="shape")
def squeeze(x: torch.Tensor, dims: tuple[int, ...] | None) -> torch.Tensor:
    """Drop size-1 dims among `dims` (none: all size-1 dims)."""
    return x.squeeze() if dims is None else x.squeeze(dims)


@register("unsqueeze", ["x"], {"dim": Attr("int")}, kind="shape")
def unsqueeze(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.unsqueeze(dim)


@register("flatten", ["x"], {"start_dim": Attr("int", 0), "end_dim": Attr("int", -1)}, kind="shape")
def flatten(x: torch.Tensor, start_dim: int, end_dim: int) -> torch.Tensor:
    return torch.flatten(x, start_dim, end_dim)


@register("slice", ["x"], {"dim": Attr("int", 0), "start": Attr("int", 0), "end": Attr("int", None, optional=True),
                           "step": Attr("int", 1)}, kind="shape")
def slice_(x: torch.Tensor, dim: int, start: int, end: int | None, step: int) -> torch.Tensor:
    """x[start:end:step] along `dim` (Python slicing bounds; end none = to the end)."""
    index = [slice(None)] * x.dim()
    index[dim] = slice(start, end, step)
    return x[tuple(index)]


@register("index_select", ["x", "index"], {"dim": Attr("int")}, kind="index")
def index_select(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.index_select(x, dim, index)


@register("gather", ["x", "index"], {"dim": Attr("int")}, kind="index")
def gather(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.gather(x, dim, index)


@register("embedding", ["weight", "indices"], kind="index")
def embedding(weight: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Rows of `weight` [num, dim] picked by integer `indices` of any shape."""
    return F.embedding(indices, weight)


@register("concat", ["*xs"], {"dim": Attr("int", 0)}, kind="concat")
def concat(*xs: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.cat(xs, dim)


@register("stack", ["*xs"], {"dim": Attr("int", 0)}, kind="concat")
def stack(*xs: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.stack(xs, dim)


@register("split", ["x"], {"sizes": Attr("ints"), "dim": Attr("int", 0)}, kind="split")
def split(x: torch.Tensor, sizes: tuple[int, ...], dim: int) -> tuple[torch.Tensor, ...]:
    """Cut `x` along `dim` into pieces of the given sizes; one output per piece."""
    return torch.split(x, list(sizes), dim)


@register("pad", ["x"], {"pads": Attr("ints"), "mode": Attr("str", "constant"), "value": Attr("float", 0.0)},
          kind="shape")
def pad(x: torch.Tensor, pads: tuple[int, ...], mode: str, value: float) -> torch.Tensor:
    """torch.nn.functional.pad: `pads` is (last_lo, last_hi, prev_lo, prev_hi, ...)."""
    return F.pad(x, pads, mode, value if mode == "constant" else None)


@register("tril", ["x"], {"diagonal": Attr("int", 0)}, kind="elementwise")
def tril(x: torch.Tensor, diagonal: int) -> torch.Tensor:
    return torch.tril(x, diagonal)


@register("triu", ["x"], {"diagonal": Attr("int", 0)}, kind="elementwise")
def triu(x: torch.Tensor, diagonal: int) -> torch.Tensor:
    return torch.triu(x, diagonal)
