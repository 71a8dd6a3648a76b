"""Import ONNX models into the IR.

`import_onnx` loads a model (path, bytes, `onnx.ModelProto` or `onnx_ir.Model`), validates it and
upgrades opsets below 13 (`onnx_upgrade`), inlines local functions, runs ONNX shape inference, turns
initializers and Constant nodes into graph constants and lowers every node through the rule table
in `onnx_lowering` (rules in `onnx_rules_*`). Nodes without a rule are an `OnnxImportError`, or,
with `fallback="reference"` / `"onnxruntime"`, `opaque` nodes that run the single ONNX node with
that evaluator (`run_onnx_node`).
"""

from __future__ import annotations

import base64
import functools
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.inliner
import onnx.shape_inference
import torch
from google.protobuf.message import DecodeError

from . import onnx_rules_math, onnx_rules_nn, onnx_rules_resize, onnx_rules_shape  # noqa: F401  (registration)
from .graph import Graph, Value
from .numbers import shortest_f32
from .onnx_functions import expand, function_body
from .onnx_lowering import (
    DTYPE_TO_ONNX,
    RULES,
    NodeContext,
    NotConstant,
    OnnxImportError,
    Unsupported,
    dtype_of,
    to_numpy,
    to_torch,
)
from .onnx_upgrade import DEFAULT_DOMAINS, first_line, upgrade, validate
from .ops import OpError, encode_call
from .types import DType, TensorType

MIN_OPSET = 13
FALLBACKS = ("reference", "onnxruntime")
_NAME = re.compile(r"[^A-Za-z0-9_.]")

__all__ = ["OnnxImportError", "OnnxProgram", "import_onnx", "run_onnx_node"]


@dataclass
class OnnxProgram:
    """An imported ONNX model: the graph, the ONNX names of its inputs and outputs (in graph order)
    and the default-domain opset the model was lowered at."""

    graph: Graph
    input_names: list[str]
    output_names: list[str]
    opset: int


def sanitize(name: str) -> str:
    """An IR value name for an ONNX name: characters outside [A-Za-z0-9_.] become `_`."""
    return _NAME.sub("_", name) or "v"


def import_onnx(model: str | os.PathLike | bytes | onnx.ModelProto | Any, *, strict: bool = True,
                fallback: str | None = None, bind: Mapping[str, Any] | None = None) -> OnnxProgram:
    """Import an ONNX model into a heteropass graph.

    `strict=True` makes an op without a lowering rule an error unless `fallback` names an evaluator
    ("reference" for `onnx.reference`, "onnxruntime"); `strict=False` falls back to the reference
    evaluator by default. `bind` maps graph input names to arrays that become constants (for inputs
    a rule needs at import time, such as a Reshape's shape).
    """
    if fallback is not None and fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS} or None, got {fallback!r}")
    if not strict and fallback is None:
        fallback = "reference"
    proto = load_model(model)
    opset = default_opset(proto)
    validate(proto, opset)
    if opset < MIN_OPSET:
        proto, opset = upgrade(proto, opset, MIN_OPSET)
    if proto.functions:
        proto = onnx.inliner.inline_local_functions(proto)
    importer = _Importer(proto, opset, fallback, dict(bind or {}))
    program = importer.run()
    if importer.fallbacks:
        listing = "\n  ".join(importer.fallbacks)
        warnings.warn(f"{len(importer.fallbacks)} ONNX node(s) run with the {fallback} evaluator:\n  {listing}",
                      stacklevel=2)
    if importer.shape_disagreements:
        first, count = importer.shape_disagreements[0], len(importer.shape_disagreements)
        warnings.warn(f"ONNX shape inference disagrees with the lowering, which computes shapes as ONNX Runtime "
                      f"does, at {count} output(s); the lowering's shapes are kept. First: {first}", stacklevel=2)
    return program


# -- loading --------------------------------------------------------------------------------------
def load_model(model: str | os.PathLike | bytes | onnx.ModelProto | Any) -> onnx.ModelProto:
    """The model as a ModelProto with external data loaded; external files must lie in the model's folder."""
    base: Path | None = None
    if isinstance(model, onnx.ModelProto):
        proto = model
    elif isinstance(model, bytes | bytearray):
        proto = _parse(bytes(model), "bytes")
    elif isinstance(model, str | os.PathLike):
        path = Path(model)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise OnnxImportError(f"cannot read ONNX model {str(path)!r}: {exc.strerror}") from None
        proto = _parse(data, repr(str(path)))
        base = path.resolve().parent
    elif type(model).__module__.startswith("onnx_ir"):
        import onnx_ir

        proto = onnx_ir.serde.serialize_model(model)
    else:
        raise TypeError("import_onnx takes a path, bytes, onnx.ModelProto or onnx_ir.Model, "
                        f"not {type(model).__name__}")
    external = [t for t in _all_tensors(proto.graph) if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        if base is None:
            raise OnnxImportError(f"tensor {external[0].name!r} keeps its data in an external file; "
                                  "load the model from its path so the file can be found")
        for tensor in external:
            _check_location(tensor, base)
        proto = onnx.ModelProto.FromString(proto.SerializeToString())
        try:
            onnx.external_data_helper.load_external_data_for_model(proto, str(base))
        except (OSError, ValueError) as exc:
            raise OnnxImportError(f"cannot read external data: {first_line(exc)}") from None
    return proto


def _parse(data: bytes, what: str) -> onnx.ModelProto:
    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise OnnxImportError(f"cannot parse ONNX model from {what}: truncated or corrupt protobuf ({exc})") from None
    if not proto.HasField("graph"):
        raise OnnxImportError(f"ONNX model from {what} has no graph (empty, truncated or not an ONNX file)")
    return proto


def _all_tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    tensors = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                tensors.append(attr.t)
            tensors.extend(attr.tensors)
            for sub in [attr.g, *attr.graphs] if attr.HasField("g") else attr.graphs:
                tensors.extend(_all_tensors(sub))
    return tensors


def _check_location(tensor: onnx.TensorProto, base: Path) -> None:
    """Reject external data outside the model's folder (absolute, `..` or a symlink out), before reading it."""
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    problem = None
    if not location:
        problem = "has no location"
    elif os.path.isabs(location) or Path(location).drive:
        problem = "is an absolute path"
    elif ".." in Path(location).parts:
        problem = "leaves the model's folder ('..')"
    else:
        resolved = (base / location).resolve()
        if not resolved.is_relative_to(base):
            problem = "resolves (through a symlink) outside the model's folder"
        elif not resolved.is_file():
            problem = "does not exist"
    if problem:
        raise OnnxImportError(f"external data of tensor {tensor.name!r}: location {location!r} {problem}")


def default_opset(proto: onnx.ModelProto) -> int:
    for entry in proto.opset_import:
        if entry.domain in DEFAULT_DOMAINS:
            return entry.version
    return onnx.defs.onnx_opset_version() if not proto.opset_import else MIN_OPSET


# -- conversion -----------------------------------------------------------------------------------
def _tensor_type(type_proto: onnx.TypeProto) -> TensorType | None:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    tensor = type_proto.tensor_type
    try:
        dtype = dtype_of(tensor.elem_type, "")
    except OnnxImportError:
        return None
    dims: list[int | str] = []
    for i, d in enumerate(tensor.shape.dim):
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or f"d{i}"))
    return TensorType(tuple(dims), dtype)


def _bound_value(value_info: onnx.ValueInfoProto, tensor: torch.Tensor) -> torch.Tensor:
    """A value bound to a graph input, which must have the input's declared type; a value with the declared
    static shape's element count takes that shape (a one-element array bound to a scalar input)."""
    declared = _tensor_type(value_info.type)
    if declared is None:
        return tensor
    fits = len(declared.shape) == tensor.dim() and all(
        not isinstance(d, int) or d == n for d, n in zip(declared.shape, tensor.shape, strict=True))
    if not fits and declared.is_static and declared.numel == tensor.numel():
        tensor, fits = tensor.reshape(declared.static_shape()), True
    if declared.dtype is not DType.from_torch(tensor.dtype) or not fits:
        raise OnnxImportError(f"the value bound to graph input {value_info.name!r} is "
                              f"{TensorType.of(tensor)}; the model declares {declared}")
    return tensor


def attribute_values(node: onnx.NodeProto, opset: int, where: str) -> dict[str, Any]:
    """The node's attributes as Python values, each checked against the op schema's attribute type."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        schema = None
    values: dict[str, Any] = {}
    for attr in node.attribute:
        if schema is not None and attr.name in schema.attributes:
            expected = schema.attributes[attr.name].type
            if attr.type != expected:
                raise OnnxImportError(f"{where}: attribute '{attr.name}' must be {expected.name}, "
                                      f"got {onnx.AttributeProto.AttributeType.Name(attr.type)}")
        value = onnx.helper.get_attribute_value(attr)
        # ONNX stores float attributes as float32; read each as the decimal it was written as (1e-05).
        if attr.type == onnx.AttributeProto.FLOAT:
            value = shortest_f32(value)
        elif attr.type == onnx.AttributeProto.FLOATS:
            value = [shortest_f32(v) for v in value]
        elif isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        elif isinstance(value, onnx.TensorProto):
            value = _tensor_value(value, f"{where}: attribute '{attr.name}'")
        values[attr.name] = value
    return values


def _tensor_value(tensor: onnx.TensorProto, where: str) -> torch.Tensor:
    dtype_of(tensor.data_type, where)
    return to_torch(onnx.numpy_helper.to_array(tensor))


def _topological(nodes: Sequence[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """The nodes in an order where each reads only values defined before it; names what is undefined
    or cyclic otherwise."""
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    for node in nodes:
        for name in node.input:
            if name and name not in available and name not in producer:
                label = node.name or node.op_type
                raise OnnxImportError(f"node '{label}' ({node.op_type}) reads {name!r}, which is neither a graph "
                                      "input, an initializer nor the output of any node")
    order: list[onnx.NodeProto] = []
    done: set[int] = set()
    defined = set(available)
    progress = True
    while progress and len(done) < len(nodes):
        progress = False
        for i, node in enumerate(nodes):
            if i not in done and all(not n or n in defined for n in node.input):
                order.append(node)
                done.add(i)
                defined.update(node.output)
                progress = True
    if len(done) < len(nodes):
        stuck = [nodes[i].name or nodes[i].op_type for i in range(len(nodes)) if i not in done]
        raise OnnxImportError(f"the graph has a cycle: nodes {stuck[:5]} depend on each other's outputs")
    return order


class _Importer:
    def __init__(self, proto: onnx.ModelProto, opset: int, fallback: str | None, bind: dict[str, Any]) -> None:
        self.proto = proto
        self.opset = opset
        self.fallback = fallback
        self.bind = bind
        name = sanitize(proto.graph.name or "onnx_model")
        self.graph = Graph(name if name[0].isalpha() or name[0] == "_" else f"_{name}")
        self.env: dict[str, Value] = {}
        self.types: dict[str, TensorType | None] = {}
        self.expansions = 0
        self.fallbacks: list[str] = []
        self.shape_disagreements: list[str] = []

    def run(self) -> OnnxProgram:
        onnx_graph = self.proto.graph
        initializers = {t.name for t in onnx_graph.initializer}
        input_names = [v.name for v in onnx_graph.input if v.name not in initializers and v.name not in self.bind]
        unknown = set(self.bind) - {v.name for v in onnx_graph.input}
        if unknown:
            raise OnnxImportError(f"cannot bind {sorted(unknown)}: not graph inputs of the model")
        for tensor in onnx_graph.initializer:
            self.env[tensor.name] = self.graph.add_constant(
                sanitize(tensor.name), _tensor_value(tensor, f"initializer {tensor.name!r}"))
        for value_info in onnx_graph.input:
            if value_info.name in self.bind:
                tensor = _bound_value(value_info, to_torch(np.asarray(self.bind[value_info.name])))
                self.env[value_info.name] = self.graph.add_constant(sanitize(value_info.name), tensor)
            elif value_info.name not in initializers:
                type_ = _tensor_type(value_info.type)
                if type_ is None:
                    self._input_type_error(value_info)
                self.env[value_info.name] = self.graph.add_input(sanitize(value_info.name), type_)
        nodes = _topological(list(onnx_graph.node), set(self.env))
        self._infer_types()
        for node in nodes:
            self._lower(node)
        outputs = []
        for value_info in onnx_graph.output:
            if value_info.name not in self.env:
                raise OnnxImportError(f"graph output {value_info.name!r} is not produced by any node")
            outputs.append(self.env[value_info.name])
        self.graph.set_outputs(outputs)
        self.graph.remove_unused_constants()
        return OnnxProgram(self.graph, input_names, [v.name for v in onnx_graph.output], self.opset)

    def _input_type_error(self, value_info: onnx.ValueInfoProto) -> None:
        kind = value_info.type.WhichOneof("value")
        if kind == "tensor_type":
            dtype_of(value_info.type.tensor_type.elem_type, f"graph input {value_info.name!r}")
            raise OnnxImportError(f"graph input {value_info.name!r} has no shape")
        raise OnnxImportError(f"graph input {value_info.name!r} is a {kind}; only tensors are supported")

    def _infer_types(self) -> None:
        proto = self.proto
        if self.bind:
            proto = onnx.ModelProto.FromString(proto.SerializeToString())
            bound = [v for v in proto.graph.input if v.name in self.bind]
            for v in bound:
                array = np.asarray(self.bind[v.name])
                proto.graph.initializer.append(onnx.numpy_helper.from_array(array, v.name))
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True, check_type=True)
        except Exception as typed_exc:
            try:
                inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
            except Exception:  # a model ONNX cannot infer still imports; rules check what they need
                inferred = proto
            else:  # only the type check fails: operands break their op's type constraints, as ORT finds too
                raise OnnxImportError(f"invalid ONNX model: {first_line(typed_exc)}") from None
        for value_info in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
            self.types[value_info.name] = _tensor_type(value_info.type)

    def _lower(self, node: onnx.NodeProto) -> None:
        label = node.name or (node.output[0] if node.output else node.op_type)
        where = f"node '{label}' ({node.op_type}, opset {self.opset})"
        inputs = [self.env[name] if name else None for name in node.input]
        out_types = [self.types.get(name) for name in node.output]
        domain = node.domain if node.domain not in DEFAULT_DOMAINS else ""
        if domain == "" and node.op_type == "If" and self._inline_if(node, inputs, where):
            return None
        if domain == "" and node.op_type == "Scan":
            return self._unroll_scan(node, inputs, out_types, where)
        rule = RULES.get(node.op_type) if domain == "" else None
        if rule is None:
            if self._expand(node, inputs):
                return None
            reason = f"op {domain + '.' if domain else ''}{node.op_type} is not supported"
            return self._fall_back(node, inputs, out_types, where, reason)
        attrs = attribute_values(node, self.opset, where)
        ctx = NodeContext(self.graph, node, self.opset, inputs, out_types, attrs)
        try:
            results = list(rule(ctx))
        except Unsupported as exc:
            if self._expand(node, inputs):
                return None
            return self._fall_back(node, inputs, out_types, where, f"{node.op_type} {exc}")
        except NotConstant as exc:
            needs = self._graph_inputs_behind(exc.value)
            raise OnnxImportError(f"{where}: operand %{exc.value.name} must be known at import time (it is "
                                  f"computed from graph inputs {needs} at run time)", needs_values=needs) from None
        except OnnxImportError:
            raise
        except Exception as exc:  # a rule meeting a node it cannot read: name the node, not the rule's line
            known = isinstance(exc, OpError | RuntimeError | ValueError | IndexError)
            message = str(exc) if known else f"{type(exc).__name__} {exc}".strip()
            raise OnnxImportError(message if message.startswith(where) else f"{where}: {message}") from exc
        self._bind_outputs(node, results, out_types, where)

    def _inline_if(self, node: onnx.NodeProto, inputs: list[Value | None], where: str) -> bool:
        """Lower an If whose condition is known at import time as the nodes of the branch it takes."""
        condition = inputs[0]
        if condition is None or condition.const is None:
            return False
        branch_name = "then_branch" if bool(condition.const.reshape(-1)[0]) else "else_branch"
        branch = next((a.g for a in node.attribute if a.name == branch_name), None)
        if branch is None:
            raise OnnxImportError(f"{where}: required attribute '{branch_name}' is missing")
        for inner in _topological(list(branch.node), set(self.env)):
            self._lower(inner)
        for name, result in zip(node.output, branch.output, strict=True):
            if name:
                if result.name not in self.env:
                    raise OnnxImportError(f"{where}: branch output {result.name!r} is not defined")
                self.env[name] = self.env[result.name]
        return True

    def _unroll_scan(self, node: onnx.NodeProto, inputs: list[Value | None], out_types: list[TensorType | None],
                     where: str) -> None:
        """Lower a Scan as its body repeated once per step (the sequence length is static), the
        scanned slices taken with `take` and the per-step outputs joined with `stack`."""
        attrs = attribute_values(node, self.opset, where)
        body: onnx.GraphProto = attrs["body"]
        ctx = NodeContext(self.graph, node, self.opset, inputs, out_types, attrs)
        m = attrs["num_scan_inputs"]
        n = len(inputs) - m
        states, scans = inputs[:n], inputs[n:]
        k = len(body.output) - n
        in_axes = list(attrs.get("scan_input_axes") or [0] * m)
        in_dirs = list(attrs.get("scan_input_directions") or [0] * m)
        out_axes = list(attrs.get("scan_output_axes") or [0] * k)
        out_dirs = list(attrs.get("scan_output_directions") or [0] * k)
        if not scans or any(v is None for v in [*states, *scans]):
            return self._fall_back(node, inputs, out_types, where, "Scan without scan inputs is not supported")
        in_axes = [a % scans[j].type.rank for j, a in enumerate(in_axes)]  # type: ignore[union-attr]
        length = scans[0].type.static_shape()[in_axes[0]]  # type: ignore[union-attr]
        local = {v.name for v in body.input} | {out for inner in body.node for out in inner.output if out}
        steps: list[list[Value]] = [[] for _ in range(k)]
        for t in range(length):
            prefix = f"{node.name or 'scan'}__t{t}__"
            for formal, value in zip(body.input[:n], states, strict=True):
                self.env[prefix + formal.name] = value  # type: ignore[assignment]
            for j, formal in enumerate(body.input[n:]):
                position = ctx.constant(torch.tensor(t if in_dirs[j] == 0 else length - 1 - t))
                self.env[prefix + formal.name] = ctx.call("take", scans[j], position, dim=in_axes[j])  # type: ignore[arg-type]
            for inner in body.node:
                copy = onnx.NodeProto()
                copy.CopyFrom(inner)
                copy.name = prefix + (inner.name or inner.op_type)
                for field in (copy.input, copy.output):
                    for i, name in enumerate(field):
                        if name in local:
                            field[i] = prefix + name
                self._lower(copy)
            states = [self.env[prefix + out.name] for out in body.output[:n]]
            for i, out in enumerate(body.output[n:]):
                steps[i].append(self.env[prefix + out.name])
        results: list[Value | None] = list(states)
        for i, values in enumerate(steps):
            ordered = values if out_dirs[i] == 0 else values[::-1]
            results.append(ctx.call("stack", *ordered, dim=out_axes[i] % (ordered[0].type.rank + 1)))
        self._bind_outputs(node, results, out_types, where)
        return None

    def _expand(self, node: onnx.NodeProto, inputs: list[Value | None]) -> bool:
        """Lower `node` as the body of its schema's function, if it has one."""
        function = function_body(node, self.opset, [None if v is None else v.type for v in inputs])
        if function is None:
            return False
        self.expansions += 1
        for inner in expand(node, function, f"{node.name or node.op_type}__f{self.expansions}__"):
            self._lower(inner)
        return True

    def _bind_outputs(self, node: onnx.NodeProto, results: list[Value | None], out_types: list[TensorType | None],
                      where: str) -> None:
        for i, name in enumerate(node.output):
            if not name:
                continue
            value = results[i] if i < len(results) else None
            if value is None:
                raise OnnxImportError(f"{where}: output {i} ({name!r}) is not supported")
            expected = out_types[i]
            if expected is not None and expected.is_static and expected != value.type:
                message = f"{where}: lowering gives {value.type} for output {name!r}, ONNX infers {expected}"
                if (expected.dtype, expected.rank) != (value.type.dtype, value.type.rank):
                    raise OnnxImportError(message)
                # onnx's inference misses ONNX Runtime's rules in places (a ceil_mode window that would
                # start in the padding is dropped; Einsum broadcasts size-1 dims)
                self.shape_disagreements.append(message)
            self._name_after(value, name)
            self.env[name] = value

    def _name_after(self, value: Value, onnx_name: str) -> None:
        """Give a value the rule created under a generated name its ONNX name, for readable dumps."""
        generated = value.name.isdigit() or value.name.startswith("folded")
        if not generated or value in self.graph.inputs:
            return
        new = self.graph.fresh_name(sanitize(onnx_name))
        if value.const is not None:
            self.graph.constants[new] = self.graph.constants.pop(value.name)
        value.name = new

    def _graph_inputs_behind(self, value: Value) -> list[str]:
        by_value = {id(v): name for name, v in self.env.items() if v in self.graph.inputs}
        seen: set[int] = set()
        stack, found = [value], []
        while stack:
            v = stack.pop()
            if id(v) in seen:
                continue
            seen.add(id(v))
            if id(v) in by_value:
                found.append(by_value[id(v)])
            if v.producer is not None:
                stack.extend(v.producer.inputs)
        return sorted(found)

    def _fall_back(self, node: onnx.NodeProto, inputs: list[Value | None], out_types: list[TensorType | None],
                   where: str, reason: str) -> None:
        if self.fallback is None:
            raise OnnxImportError(f"{where}: {reason} (import with fallback='reference' to run it with the "
                                  "ONNX reference evaluator)")
        self.fallbacks.append(f"{where}: {reason}")
        wanted = [i for i, name in enumerate(node.output) if name]
        types = [out_types[i] for i in wanted]
        if any(t is None or not t.is_static for t in types):
            raise OnnxImportError(f"{where}: {reason}, and ONNX shape inference gives no static output types "
                                  "to fall back with")
        captured = sorted(n for n in outer_scope_names(node) if n in self.env and n not in node.input)
        present = [v for v in inputs if v is not None] + [self.env[name] for name in captured]
        opsets = sorted([e.domain, e.version] for e in self.proto.opset_import)
        spec = {"node": base64.b64encode(node.SerializeToString()).decode(), "opsets": opsets,
                "engine": self.fallback, "outputs": [[list(t.shape), str(t.dtype)] for t in types],  # type: ignore[union-attr]
                "captured": captured}
        operands, spec_json = encode_call(tuple(present), spec)
        result = self.graph.add_node("opaque", operands, {"target": f"{__name__}.run_onnx_node", "spec": spec_json},
                                     output_types=types, names=[sanitize(node.output[i]) for i in wanted],  # type: ignore[arg-type]
                                     source=where)
        for i, value in zip(wanted, result.outputs, strict=True):
            self.env[node.output[i]] = value


# -- fallback execution ---------------------------------------------------------------------------
def outer_scope_names(node: onnx.NodeProto) -> set[str]:
    """The names the node's subgraphs (If branches, Loop and Scan bodies, nested) read from outside."""
    names: set[str] = set()
    for attr in node.attribute:
        for graph in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
            defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
            defined |= {t.name for t in graph.sparse_initializer}
            for inner in graph.node:
                names |= {n for n in [*inner.input, *outer_scope_names(inner)] if n and n not in defined}
                defined |= set(inner.output)
            names |= {v.name for v in graph.output if v.name not in defined}
    return names


def _loop_with_cond(node: onnx.NodeProto) -> tuple[onnx.NodeProto, str]:
    """The Loop reading its omitted `cond` from a name that the caller binds to a constant true."""
    loop = onnx.NodeProto()
    loop.CopyFrom(node)
    while len(loop.input) < 2:
        loop.input.append("")
    loop.input[1] = "__heteropass_loop_cond"
    return loop, loop.input[1]


def run_onnx_node(*tensors: torch.Tensor, node: str, opsets: list[list[Any]], engine: str,
                  outputs: list[list[Any]], captured: Sequence[str] = ()) -> tuple[torch.Tensor, ...]:
    """Run one serialized ONNX node on `tensors` (its non-empty inputs in order, then the outer-scope
    values its subgraphs read, named by `captured`) with the ONNX reference evaluator or onnxruntime.
    On meta tensors it returns the declared output types."""
    types = [TensorType(tuple(shape), DType.parse(dtype)) for shape, dtype in outputs]
    if any(t.device.type == "meta" for t in tensors):
        return tuple(t.meta() for t in types)
    signature = tuple((tuple(t.shape), str(t.dtype)) for t in tensors)
    run = _node_runner(node, tuple((str(d), int(v)) for d, v in opsets), engine, signature, tuple(captured))
    results = run([to_numpy(t) for t in tensors])
    return tuple(to_torch(np.asarray(r)).to(t.dtype.torch).reshape(t.static_shape())
                 for r, t in zip(results, types, strict=True))


@functools.lru_cache(maxsize=256)
def _node_runner(node_b64: str, opsets: tuple[tuple[str, int], ...], engine: str,
                 signature: tuple[tuple[tuple[int, ...], str], ...], captured: tuple[str, ...]) -> Any:
    node = onnx.NodeProto.FromString(base64.b64decode(node_b64))
    names = [n for n in node.input if n] + list(captured)
    inputs = []
    for name, (shape, dtype) in zip(names, signature, strict=True):
        elem_type = DTYPE_TO_ONNX[DType.from_torch(getattr(torch, dtype.split(".")[1]))]
        inputs.append(onnx.helper.make_tensor_value_info(name, elem_type, list(shape)))
    outputs = [onnx.helper.make_empty_tensor_value_info(name) for name in node.output if name]
    constants = []
    if engine == "reference" and node.op_type == "Loop" and (len(node.input) < 2 or not node.input[1]):
        node, cond = _loop_with_cond(node)  # onnx's evaluator runs a Loop without `cond` zero times
        constants.append(onnx.numpy_helper.from_array(np.array(True), cond))
    model = onnx.helper.make_model(onnx.helper.make_graph([node], "fallback", inputs, outputs, constants),
                                   opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets])
    if engine == "onnxruntime":
        import onnxruntime

        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return lambda arrays: session.run(None, dict(zip(names, arrays, strict=True)))
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(model)
    return lambda arrays: evaluator.run(None, dict(zip(names, arrays, strict=True)))
