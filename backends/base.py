"""The backend contract: claim the nodes you support, compile a partition into a callable."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from ..ir import Graph, Node

Kernel = Callable[..., list[torch.Tensor]]


class Backend:
    """A code generator and executor for some nodes.

    `supports(node)` claims a node; `compile(partition)` turns a graph made only of claimed nodes
    into a callable taking the partition's inputs positionally and returning its outputs as a list.
    """

    name: ClassVar[str]
    device: ClassVar[str] = "cpu"

    def supports(self, node: Node) -> bool:
        raise NotImplementedError

    def compile(self, partition: Graph) -> Kernel:
        raise NotImplementedError
