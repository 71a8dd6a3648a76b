"""The dump format: one line per node, types inline, device once placed.

    graph mlp(%x: f32[8,16]) -> (f32[8,32]) {
      const %fc.weight: f32[32,16]
      const %c0: f32[] = 0.5
      %0: f32[8,32] = linear(%x, %fc.weight)
      %1: f32[8,32] = mul(%0, %c0)                      @cpu
      return %1
    }

Constants print by name and type; only tiny ones (scalars, short vectors) also print their value.
Attributes equal to the op's default are left out.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch

from .graph import Graph, Node, Value
from .ops import get_op
from .types import DType

INLINE_CONST_LIMIT = 8
_DEVICE_COLUMN = 56


def format_attr_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, DType):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_attr_value(v) for v in value) + "]"
    raise TypeError(f"cannot print attribute value {value!r}")


def format_attrs(node: Node) -> str:
    """Attributes other than nested graphs and defaults, as ` {name=value, ...}`."""
    schema = get_op(node.op).attrs
    shown = [f"{k}={format_attr_value(v)}" for k, v in node.attrs.items()
             if k not in schema or (schema[k].kind != "graph" and (
                 schema[k].required or format_attr_value(schema[k].default) != format_attr_value(v)))]
    return " {" + ", ".join(shown) + "}" if shown else ""


def op_label(node: Node) -> str:
    """The op as printed: a region op lists the ops of its body, `fused[mul, add, gelu]`."""
    bodies = [node.attrs[name] for name in get_op(node.op).graph_attrs]
    if not bodies:
        return node.op
    return f"{node.op}[{', '.join(n.op for body in bodies for n in body.nodes)}]"


def format_node(node: Node) -> str:
    """The node on one line (nested graphs of region ops are not shown)."""
    outs = ", ".join(f"%{v.name}: {v.type}" for v in node.outputs)
    args = ", ".join(f"%{v.name}" for v in node.inputs)
    text = f"{outs} = {op_label(node)}({args}){format_attrs(node)}"
    if node.device is not None:
        text = f"{text.ljust(_DEVICE_COLUMN)} @{node.device}"
    return text


def format_constant(value: Value) -> str:
    text = f"const %{value.name}: {value.type}"
    assert value.const is not None
    if value.const.numel() <= INLINE_CONST_LIMIT and value.const.device.type != "meta":
        text += " = " + format_attr_value(_shortest(value.const))
    return text


def _shortest(tensor: torch.Tensor) -> Any:
    """Tensor data as nested lists whose floats print in the fewest digits that still read back
    to the same value in the tensor's own precision (f32 0.1 prints as 0.1, not 0.10000000149)."""
    if not tensor.is_floating_point() or tensor.dtype == torch.float64:
        return tensor.tolist()
    scalar = np.float16 if tensor.dtype == torch.float16 else np.float32
    data = tensor.to(torch.float32).numpy().astype(scalar)
    return np.vectorize(lambda v: float(str(scalar(v))), otypes=[object])(data).tolist()


def format_graph(graph: Graph, header: str | None = None, indent: str = "") -> str:
    """The graph in the dump format; the bodies of region ops follow their node, indented."""
    params = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
    results = ", ".join(str(v.type) for v in graph.outputs)
    lines = [f"{indent}# {line}" for line in header.splitlines()] if header else []
    lines.append(f"{indent}graph {graph.name}({params}) -> ({results}) {{")
    lines += [f"{indent}  {format_constant(v)}" for v in graph.constants.values()]
    for node in graph.nodes:
        lines.append(f"{indent}  {format_node(node)}")
        for name in get_op(node.op).graph_attrs:
            lines.append(format_graph(node.attrs[name], indent=indent + "    ").rstrip("\n"))
    lines.append(f"{indent}  return " + ", ".join(f"%{v.name}" for v in graph.outputs))
    lines.append(f"{indent}}}")
    return "\n".join(lines) + "\n"
