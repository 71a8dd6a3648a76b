"""Expand an ONNX op into the nodes of its schema's function body (LayerNormalization, Attention,
NegativeLogLikelihoodLoss, ... are defined as functions of simpler ops), so ops without a lowering
rule of their own still import."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import onnx

from .onnx_lowering import DTYPE_TO_ONNX
from .types import TensorType


def function_body(node: onnx.NodeProto, opset: int,
                  input_types: Sequence[TensorType | None]) -> onnx.FunctionProto | None:
    """The function that defines `node`'s op at `opset` (context-dependent ones built for the operand
    types), or None when the schema has none."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return None
    plain = [v for v in schema.function_opset_versions if v <= opset]
    dependent = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
    if dependent and (not plain or max(dependent) >= max(plain)):
        # An absent optional operand has an empty type.
        types = [onnx.TypeProto().SerializeToString() if t is None else
                 onnx.helper.make_tensor_type_proto(DTYPE_TO_ONNX[t.dtype], list(t.shape)).SerializeToString()
                 for t in input_types]
        data = schema.get_context_dependent_function_with_opset_version(max(dependent), node.SerializeToString(), types)
    elif plain:
        data = schema.get_function_with_opset_version(max(plain))
    else:
        return None
    if not data:
        return None
    return onnx.FunctionProto.FromString(data)


def expand(node: onnx.NodeProto, function: onnx.FunctionProto, prefix: str) -> list[onnx.NodeProto]:
    """The function's nodes wired to `node`'s inputs and outputs, internal values renamed apart with
    `prefix` and attribute references replaced by the node's attributes (absent ones take their defaults)."""
    names = {formal: (node.input[i] if i < len(node.input) else "") for i, formal in enumerate(function.input)}
    names.update({formal: node.output[i] for i, formal in enumerate(function.output)
                  if i < len(node.output) and node.output[i]})
    attributes = {a.name: a for a in node.attribute}

    def rename(name: str) -> str:
        return names.get(name, prefix + name if name else "")

    local = set(function.input) | set(function.output) | {out for inner in function.node for out in inner.output}

    body = []
    for inner in function.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(inner)
        copy.name = prefix + (inner.name or inner.op_type)
        copy.ClearField("input")
        copy.ClearField("output")
        copy.input.extend(rename(n) for n in inner.input)
        copy.output.extend(rename(n) for n in inner.output)
        copy.ClearField("attribute")
        for attr in inner.attribute:
            if attr.ref_attr_name:
                if attr.ref_attr_name in attributes:
                    bound = onnx.AttributeProto()
                    bound.CopyFrom(attributes[attr.ref_attr_name])
                    bound.name = attr.name
                    copy.attribute.append(bound)
            else:
                copy.attribute.append(attr)
        for attr in copy.attribute:
            for graph in [attr.g] if attr.HasField("g") else attr.graphs:
                _rename_captures(graph, local, rename)
        body.append(copy)
    return body


def _rename_captures(graph: onnx.GraphProto, local: set[str], rename: Callable[[str], str]) -> None:
    """Rename the function values a subgraph (a Scan body, an If branch) reads from the function."""
    own = {v.name for v in graph.input} | {out for node in graph.node for out in node.output}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in local and name not in own:
                node.input[i] = rename(name)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else attr.graphs:
                _rename_captures(sub, local - own, rename)
    for out in graph.output:
        if out.name in local and out.name not in own:
            out.name = rename(out.name)
