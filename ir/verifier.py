"""Structural and type checks of a graph."""

from __future__ import annotations

import torch

from .graph import Graph, Value
from .ops import OpError, get_op
from .printer import format_node
from .types import TensorType


class VerificationError(Exception):
    """The graph breaks an IR invariant; the message names the node and the rule."""


def verify(graph: Graph, check_types: bool = True) -> None:
    """Check SSA form, topological order, use lists, schemas and (optionally) inferred types."""
    defined: set[int] = set()
    names: set[str] = set()

    def define(value: Value, where: str) -> None:
        if value.name in names:
            raise VerificationError(f"{where}: %{value.name} is defined more than once")
        names.add(value.name)
        defined.add(id(value))

    for value in graph.inputs:
        if value.producer is not None or value.const is not None:
            raise VerificationError(f"graph input %{value.name} must not have a producer or data")
        define(value, "graph inputs")
    for name, value in graph.constants.items():
        if value.const is None or value.name != name:
            raise VerificationError(f"constant %{name} has no data or a mismatched name")
        if check_types and _type_of(value.const) != value.type:
            raise VerificationError(f"constant %{name} is declared {value.type} but holds {_type_of(value.const)}")
        define(value, "constants")

    for position, node in enumerate(graph.nodes):
        where = f"node {position} `{format_node(node)}`"
        if node.graph is not graph:
            raise VerificationError(f"{where}: node does not belong to graph {graph.name}")
        try:
            opdef = get_op(node.op)
            opdef.check_arity(len(node.inputs))
            if opdef.check_attrs(dict(node.attrs)) != node.attrs:
                raise OpError("attributes are not in canonical (checked) form")
        except OpError as exc:
            raise VerificationError(f"{where}: {exc}") from None
        for attr in opdef.graph_attrs:
            try:
                verify(node.attrs[attr], check_types)
            except VerificationError as exc:
                raise VerificationError(f"{where}: in its {attr} graph: {exc}") from None
        for i, value in enumerate(node.inputs):
            if id(value) not in defined:
                raise VerificationError(f"{where}: operand {i} %{value.name} is not defined before use")
            if (node, i) not in value.uses:
                raise VerificationError(f"{where}: use list of %{value.name} misses this use")
        for i, value in enumerate(node.outputs):
            if value.producer is not node or value.index != i:
                raise VerificationError(f"{where}: output %{value.name} does not point back at its node")
            define(value, where)
        if check_types:
            try:
                expected = opdef.infer([v.type for v in node.inputs], node.attrs)
            except OpError as exc:
                raise VerificationError(f"{where}: {exc}") from None
            actual = [v.type for v in node.outputs]
            if expected != actual:
                raise VerificationError(f"{where}: output types ({', '.join(map(str, actual))}) disagree "
                                        f"with inference ({', '.join(map(str, expected))})")

    for value in graph.values():
        for node, index in value.uses:
            if node.graph is not graph or node.inputs[index] is not value:
                raise VerificationError(f"stale use of %{value.name} by `{format_node(node)}`")
    for value in graph.outputs:
        if id(value) not in defined:
            raise VerificationError(f"graph output %{value.name} is not defined")


def _type_of(tensor: torch.Tensor) -> TensorType | str:
    try:
        return TensorType.of(tensor)
    except TypeError:  # an element type heteropass has no name for
        return f"{tensor.dtype}{list(tensor.shape)}"
