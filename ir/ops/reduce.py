"""Reductions. `dims` none reduces over every dimension; an empty list is refused (PyTorch reads `dim=[]`
as every dimension for sum and as none for any/all, so importers spell out which they mean)."""

from __future__ import annotations

import torch

from .registry import Attr, register

_DIMS = {"dims": Attr("ints", None, optional=True), "keepdim": Attr("bool", False)}


def _dims(x: torch.Tensor, dims: tuple[int, ...] | None) -> tuple[int, ...]:
    if dims == ():
        raise ValueError("dims=[] is ambiguous: give none to reduce every dimension")
    return tuple(range(x.dim())) if dims is None else dims


@register("sum", ["x"], {**_DIMS, "dtype": Attr("dtype", None, optional=True)}, kind="reduction")
def sum_(x: torch.Tensor, dims: tuple[int, ...] | None, keepdim: bool, dtype: object) -> torch.Tensor:
    """Sum over `dims`; integer and bool inputs accumulate in i64 (torch semantics)."""
    return torch.sum(x, _dims(x, dims), keepdim=keepdim, dtype=None if dtype is None else dtype.torch)  # type: ignore[attr-defined]


@register("mean", ["x"], {**_DIMS, "dtype": Attr("dtype", None, optional=True)}, kind="reduction")
def mean(x: torch.Tensor, dims: tuple[int, ...] | None, keepdim: bool, dtype: object) -> torch.Tensor:
    return torch.mean(x, _dims(x, dims), keepdim=keepdim, dtype=None if dtype is None else dtype.torch)  # type: ignore[attr-defined]


@register("amax", ["x"], _DIMS, kind="reduction")
def amax(x: torch.Tensor, dims: tuple[int, ...] | None, keepdim: bool) -> torch.Tensor:
    return torch.amax(x, _dims(x, dims), keepdim=keepdim)


@register("amin", ["x"], _DIMS, kind="reduction")
def amin(x: torch.Tensor, dims: tuple[int, ...] | None, keepdim: bool) -> torch.Tensor:
    return torch.amin(x, _dims(x, dims), keepdim=keepdim)


@register("prod", ["x"], _DIMS, kind="reduction")
def prod(x: torch.Tensor, dims: tuple[int, ...] | None, keepdim: bool) -> torch.Tensor:
    for d in sorted((d % max(x.dim(), 1) for d in _dims(x, dims)), reverse=True):
        x = torch.prod(x, d, keepdim=keepdim) if x.dim() else x
    return x


@register("any", ["x"], _DIMS, kind="reduction")
def any_(x: torch.Tensor, dims: tuple[int, ...] | None, keepdim: bool) -> torch.Tensor:
    return torch.any(x, _dims(x, dims), keepdim=keepdim) if x.dim() else x.bool()


@register("all", ["x"], _DIMS, kind="reduction")
def all_(x: torch.Tensor, dims: tuple[int, ...] | None, keepdim: bool) -> torch.Tensor:
    return torch.all(x, _dims(x, dims), keepdim=keepdim) if x.dim() else x.bool()


@register("var", ["x"], {**_DIMS, "correction": Attr("float", 1.0)}, kind="reduction")
def var(x: torch.Tensor, dims: tuple[int, ...] | None, keepdim: bool, correction: float) -> torch.Tensor:
    return torch.var(x, _dims(x, dims), correction=correction, keepdim=keepdim)


@register("std", ["x"], {**_DIMS, "correction": Attr("float", 1.0)}, kind="reduction")
def std(x: torch.Tensor, dims: tuple[int, ...] | None, keepdim: bool, correction: float) -> torch.Tensor:
    return torch.std(x, _dims(x, dims), correction=correction, keepdim=keepdim)


@register("argmax", ["x"], {"dim": Attr("int", None, optional=True), "keepdim": Attr("bool", False)},
          kind="reduction")
def argmax(x: torch.Tensor, dim: int | None, keepdim: bool) -> torch.Tensor:
    """Index of the first maximum along `dim` (none: of the flattened tensor); not of bools, as in PyTorch."""
    _no_bool(x, "argmax")
    return torch.argmax(x, dim, keepdim=keepdim)


@register("argmin", ["x"], {"dim": Attr("int", None, optional=True), "keepdim": Attr("bool", False)},
          kind="reduction")
def argmin(x: torch.Tensor, dim: int | None, keepdim: bool) -> torch.Tensor:
    _no_bool(x, "argmin")
    return torch.argmin(x, dim, keepdim=keepdim)


def _no_bool(x: torch.Tensor, op: str) -> None:
    """PyTorch's CPU kernel refuses bools; its meta kernel does not, so inference checks here."""
    if x.dtype == torch.bool:
        raise TypeError(f"{op} takes no bool tensor: cast it to u8 first")


@register("cumsum", ["x"], {"dim": Attr("int"), "dtype": Attr("dtype", None, optional=True)}, kind="scan")
def cumsum(x: torch.Tensor, dim: int, dtype: object) -> torch.Tensor:
    return torch.cumsum(x, dim, dtype=None if dtype is None else dtype.torch)  # type: ignore[attr-defined]
