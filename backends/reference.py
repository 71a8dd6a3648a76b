"""The reference backend: runs any node with its op's PyTorch reference semantics.

A partition compiles to straight-line Python that calls the reference functions directly, with
attributes as keyword arguments and constants bound as globals, so a call costs one Python call
per node and no table lookups:

    def reference_0(x):
        v0 = linear(x, fc1_weight, fc1_bias)
        v1 = relu(v0)
        del v0
        v2, v3 = split(v1, sizes=(16, 16), dim=1)
        return [v2, v3]
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..ir import DType, Graph, Node, get_op
from ..ir.inline import inline_regions
from ..ir.ops.registry import as_outputs
from .base import Backend, Kernel
from .codegen import Namer, load_function, py_literal, python_name


class ReferenceBackend(Backend):
    """Claims every node, opaque ones included; the fallback at the end of a backend list."""

    name: ClassVar[str] = "reference"
    device: ClassVar[str] = "cpu"

    def supports(self, node: Node) -> bool:
        return True

    def compile(self, partition: Graph) -> Kernel:
        source, namespace = kernel_source(partition)
        return load_function(source, namespace, python_name(partition.name))


def kernel_source(graph: Graph) -> tuple[str, dict[str, Any]]:
    """The Python source of `graph` as one function, and the globals it needs. Region ops (`fused`)
    are inlined: in PyTorch a region costs the same as its nodes, and a call of its own would not."""
    graph = inline_regions(graph)
    op_names = {node.op for node in graph.nodes}
    function = python_name(graph.name)
    namer = Namer([*op_names, function, "DType", "as_outputs"])
    namespace: dict[str, Any] = {"DType": DType, "as_outputs": as_outputs}
    namespace.update((op, get_op(op).reference) for op in sorted(op_names))
    params = [namer(v) for v in graph.inputs]
    for value in graph.constants.values():
        namespace[namer(value)] = value.const

    # An intermediate dies after the node that reads it last, unless the function returns it.
    last_reader: dict[int, Node] = {}
    for node in graph.nodes:
        for value in node.inputs:
            last_reader[id(value)] = node
    returned = {id(v) for v in graph.outputs}

    lines = [f"def {function}({', '.join(params)}):"]
    for node in graph.nodes:
        # The node's origin (an ONNX node's name) ends its line, so a traceback through it names it.
        lines.append(f"    {_statement(node, namer)}" + (f"  # {node.source}" if node.source else ""))
        dead = [v for v in node.outputs if id(v) not in last_reader and id(v) not in returned]
        dead += [v for v in dict.fromkeys(node.inputs) if v.producer is not None and
                 last_reader[id(v)] is node and id(v) not in returned]
        if dead:
            lines.append(f"    del {', '.join(namer(v) for v in dead)}")
    lines.append(f"    return [{', '.join(namer(v) for v in graph.outputs)}]")
    return "\n".join(lines) + "\n", namespace


def _statement(node: Node, namer: Namer) -> str:
    targets = ", ".join(namer(v) for v in node.outputs)
    args = [namer(v) for v in node.inputs] + [f"{k}={py_literal(v)}" for k, v in node.attrs.items()]
    call = f"{node.op}({', '.join(args)})"
    kind = get_op(node.op).kind
    if kind == "opaque":
        # An opaque target may return a tensor or a sequence; as_outputs makes it a list either way.
        return f"[{targets}] = as_outputs({call})"
    if len(node.outputs) == 1 and kind != "split":
        return f"{targets} = {call}"
    return f"[{targets}] = {call}"
