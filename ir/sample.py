"""Random inputs for a graph, for differential checks (never zeros)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .graph import Graph
from .types import DType, TensorType


def random_tensor(type: TensorType, generator: torch.Generator, int_high: int = 4) -> torch.Tensor:
    """Standard-normal floats; integers in [0, int_high) (valid as small indices); random bools."""
    shape = type.static_shape()
    if type.dtype.is_floating:
        return torch.randn(shape, generator=generator).to(type.dtype.torch)
    if type.dtype is DType.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    return torch.randint(0, int_high, shape, generator=generator).to(type.dtype.torch)


def random_inputs(graph: Graph | Sequence[TensorType], seed: int = 0, int_high: int = 4) -> list[torch.Tensor]:
    types = [v.type for v in graph.inputs] if isinstance(graph, Graph) else list(graph)
    generator = torch.Generator().manual_seed(seed)
    return [random_tensor(t, generator, int_high) for t in types]
