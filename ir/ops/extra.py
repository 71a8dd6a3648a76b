"""Ops real models need beyond the core table: advanced (tensor) indexing."""

from __future__ import annotations

import torch

from .registry import Attr, register


@register("index", ["x", "*indices"], {"dims": Attr("ints")}, kind="index")
def index(x: torch.Tensor, *indices: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """x[..., indices[0] at dims[0], ..., indices[k] at dims[k]] (torch advanced indexing).

    Dimensions not listed in `dims` are taken whole; integer index tensors broadcast together
    as in `x[i, :, j]`.
    """
    if len(indices) != len(dims):
        raise ValueError(f"index: {len(indices)} index tensors for dims {list(dims)}")
    spec: list[torch.Tensor | None] = [None] * (max(dims) + 1 if dims else 0)
    for dim, idx in zip(dims, indices, strict=True):
        spec[dim] = idx
    return torch.ops.aten.index.Tensor(x, spec)
