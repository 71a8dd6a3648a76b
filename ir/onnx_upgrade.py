"""Checks and opset upgrades of an ONNX model before the importer lowers it.

`validate` rejects what ONNX Runtime rejects before it runs a model, naming the node; `upgrade` runs
onnx's version converter and corrects the upgrades it gets wrong.
"""

from __future__ import annotations

import onnx
import onnx.version_converter

from .onnx_lowering import OnnxImportError

DEFAULT_DOMAINS = ("", "ai.onnx")


def first_line(exc: Exception) -> str:
    """The first line of an exception's message, or its type's name."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def validate(proto: onnx.ModelProto, opset: int) -> None:
    """What ONNX Runtime rejects before it runs a model: an opset newer than onnx knows, a name defined
    twice (single assignment), and nodes whose attributes or input count break their op's schema
    (onnx.checker.check_node; deprecated schemas, which ONNX Runtime still runs, are not checked).
    Node order and declared shapes are not required (ONNX Runtime sorts the nodes itself and accepts
    types without a shape). Operand types are checked against the ops' constraints by type inference."""
    known = onnx.defs.onnx_opset_version()
    if opset > known:
        raise OnnxImportError(f"the model uses opset {opset}; onnx {onnx.__version__} knows opsets up to {known}")
    context = onnx.checker.C.CheckerContext()
    context.ir_version = proto.ir_version or onnx.IR_VERSION
    context.opset_imports = {"": opset, **{e.domain: e.version for e in proto.opset_import if e.domain}}
    defined: dict[str, str] = {}
    for graph_input in proto.graph.input:
        if graph_input.name in defined:
            raise OnnxImportError(f"invalid ONNX model: graph input {graph_input.name!r} is listed twice")
        defined[graph_input.name] = "a graph input"
    initializers = {t.name for t in proto.graph.initializer}
    for i, node in enumerate(proto.graph.node):
        what = f"node {node.name or (node.output[0] if node.output else str(i))!r} ({node.op_type})"
        for name in filter(None, node.output):
            if name in defined or name in initializers:
                raise OnnxImportError(f"invalid ONNX model: {name!r} is defined twice: by "
                                      f"{defined.get(name, 'an initializer')} and by {what}")
            defined[name] = what
        if node.domain in DEFAULT_DOMAINS and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                                       for a in node.attribute):
            deprecated = _deprecated_schema(node, opset)
            try:
                if deprecated is None:
                    onnx.checker.check_node(node, context)
                else:
                    _check_against(node, deprecated)
            except onnx.checker.ValidationError as exc:
                raise OnnxImportError(f"invalid ONNX model: {what}: {first_line(exc)}") from None


def _deprecated_schema(node: onnx.NodeProto, opset: int) -> onnx.defs.OpSchema | None:
    """The node's schema at this opset if it is deprecated, which check_node refuses outright; ONNX
    Runtime still runs such nodes (GroupNormalization-18 in an opset-18 model)."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return None
    return schema if schema.deprecated else None


def _check_against(node: onnx.NodeProto, schema: onnx.defs.OpSchema) -> None:
    """check_node's attribute and arity checks, for a deprecated schema."""
    given = {a.name for a in node.attribute}
    if unknown := sorted(given - set(schema.attributes)):
        raise onnx.checker.ValidationError(f"Unrecognized attribute: {unknown[0]} for operator {node.op_type}")
    if missing := sorted(n for n, a in schema.attributes.items() if a.required and n not in given):
        raise onnx.checker.ValidationError(f"Required attribute '{missing[0]}' is missing")
    if not schema.min_input <= len(node.input) <= schema.max_input:
        raise onnx.checker.ValidationError(f"Node has input size {len(node.input)} not in range "
                                           f"[min={schema.min_input}, max={schema.max_input}]")
    if not schema.min_output <= len(node.output) <= schema.max_output:
        raise onnx.checker.ValidationError(f"Node has output size {len(node.output)} not in range "
                                           f"[min={schema.min_output}, max={schema.max_output}]")


_FLATTENING = ("Softmax", "LogSoftmax", "Hardmax")


def _empty_flattening_as_identity(proto: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Before opset 13 Softmax, LogSoftmax and Hardmax flatten their input at `axis`; upgraded, they become
    Flatten -> op -> Reshape to Shape(x), and for an empty x (a 0 in its shape) opset 13's Reshape reads
    that 0 as "copy the input's dim", so the restored shape is wrong. The result of such a node on an
    empty input is the empty input itself: nodes whose input has a 0 dim become Identity. The dims are
    those shape inference derives from the graph's inputs and initializers alone: a model's own
    value_info or output shapes may be stale (ONNX Runtime only warns), and trusting a stale 0 would
    skip a softmax that runs."""
    if opset >= 13 or not any(n.op_type in _FLATTENING and n.domain in DEFAULT_DOMAINS for n in proto.graph.node):
        return proto
    bare = onnx.ModelProto.FromString(proto.SerializeToString())
    del bare.graph.value_info[:]
    for output in bare.graph.output:
        output.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(bare).graph
    except Exception:  # the converter and the importer report what is wrong with the model
        return proto
    empty = {info.name for info in [*inferred.input, *inferred.value_info, *inferred.output]
             if info.type.tensor_type.HasField("shape")
             and any(d.HasField("dim_value") and d.dim_value == 0 for d in info.type.tensor_type.shape.dim)}
    empty |= {t.name for t in proto.graph.initializer if 0 in t.dims}
    if not any(n.op_type in _FLATTENING and n.domain in DEFAULT_DOMAINS and n.input[0] in empty
               for n in proto.graph.node):
        return proto
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    for i, node in enumerate(proto.graph.node):
        if node.op_type in _FLATTENING and node.domain in DEFAULT_DOMAINS and node.input[0] in empty:
            proto.graph.node[i].CopyFrom(onnx.helper.make_node("Identity", [node.input[0]], [node.output[0]],
                                                               name=node.name))
    return proto


def _hardmax_over_rows(proto: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Before opset 13 Hardmax flattens its input to 2-D at `axis` and takes one maximum per row; the
    version converter keeps the node as it is, which opset 13 reads as one maximum along `axis`. Each
    old Hardmax becomes Flatten(axis) -> Hardmax -> Reshape to the input's shape, the same in both."""
    if opset >= 13 or opset < 5 or not any(n.op_type == "Hardmax" and n.domain in DEFAULT_DOMAINS
                                           for n in proto.graph.node):
        return proto
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    nodes = []
    for node in proto.graph.node:
        if node.op_type != "Hardmax" or node.domain not in DEFAULT_DOMAINS:
            nodes.append(node)
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        x, y = node.input[0], node.output[0]
        flat, rows, shape = f"{y}__hardmax_flat", f"{y}__hardmax_rows", f"{y}__hardmax_shape"
        nodes += [onnx.helper.make_node("Flatten", [x], [flat], axis=axis, name=f"{node.name}__flatten"),
                  onnx.helper.make_node("Hardmax", [flat], [rows], axis=1, name=node.name),
                  onnx.helper.make_node("Shape", [x], [shape], name=f"{node.name}__shape"),
                  onnx.helper.make_node("Reshape", [rows, shape], [y], name=f"{node.name}__reshape")]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto


def _asymmetric_linear_resize(graph: onnx.GraphProto) -> None:
    """Resize-10 and Upsample map output to input coordinates as x / scale ("asymmetric"); the version
    converter leaves the mode out, which opset 13 reads as "half_pixel". Linear resizes get it back
    (for nearest, the opset-10 rounding agrees with the opset-13 default)."""
    for node in graph.node:
        attrs = {a.name: a for a in node.attribute}
        if (node.op_type == "Resize" and "coordinate_transformation_mode" not in attrs
                and "mode" in attrs and attrs["mode"].s in (b"linear", b"bilinear")):
            node.attribute.append(onnx.helper.make_attribute("coordinate_transformation_mode", "asymmetric"))


def upgrade(proto: onnx.ModelProto, opset: int, target: int) -> tuple[onnx.ModelProto, int]:
    """The model converted from default-domain `opset` to `target` by onnx's version converter, with the
    upgrades it gets wrong corrected (Hardmax before 13, Softmax/LogSoftmax/Hardmax of an empty input
    before 13, linear Resize/Upsample before 11)."""
    try:
        upgraded = onnx.version_converter.convert_version(
            _hardmax_over_rows(_empty_flattening_as_identity(proto, opset), opset), target)
    except Exception as exc:
        raise OnnxImportError(f"cannot upgrade the model from opset {opset} to {target}: {first_line(exc)}") from None
    if opset < 11:
        _asymmetric_linear_resize(upgraded.graph)
    return upgraded, target
