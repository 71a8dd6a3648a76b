"""The reference interpreter: runs a graph node by node with each op's reference semantics.

It is the oracle every pass and backend is tested against. Subclass and override `run_node` to
observe or change execution of single nodes (as torch.fx's Interpreter).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .graph import Graph, Node
from .ops import get_op
from .printer import format_node


class InterpreterError(Exception):
    """A node failed at run time; the message names it."""


class Interpreter:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    def run(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        graph = self.graph
        if len(inputs) != len(graph.inputs):
            raise InterpreterError(f"graph {graph.name} takes {len(graph.inputs)} inputs, got {len(inputs)}")
        env: dict[int, torch.Tensor] = {id(v): t for v, t in zip(graph.inputs, inputs, strict=True)}
        env.update({id(v): v.const for v in graph.constants.values()})  # type: ignore[misc]
        for node in graph.nodes:
            args = [env[id(v)] for v in node.inputs]
            try:
                results = self.run_node(node, args)
            except Exception as exc:
                raise InterpreterError(f"`{format_node(node)}` failed: {exc}") from exc
            for value, result in zip(node.outputs, results, strict=True):
                env[id(value)] = result
        return [env[id(v)] for v in graph.outputs]

    def run_node(self, node: Node, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return get_op(node.op).run(args, node.attrs)


def run_graph(graph: Graph, *inputs: torch.Tensor) -> list[torch.Tensor]:
    """Evaluate `graph` on `inputs` with reference semantics."""
    return Interpreter(graph).run(*inputs)
