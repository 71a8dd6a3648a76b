"""Export a graph to an ONNX model: every op through its rule in `onnx_export_rules`, constants as
initializers named after them, nested-graph regions (a `fused` node's body) as ONNX local functions
in the "heteropass" domain or inlined.

    model = export_onnx(graph)                 # onnx.ModelProto
    save_onnx(graph, "model.onnx", opset=21)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import onnx
import torch
from onnx import FunctionProto, ModelProto, NodeProto, TensorProto, ValueInfoProto, helper

from .graph import Graph, Node, Value
from .printer import format_graph
from .types import DType, TensorType

__all__ = ["DEFAULT_OPSET", "DOMAIN", "OnnxExportError", "export_onnx", "save_onnx"]

# Opset 21 has everything the rules use (Gelu since 20, Pad "wrap" since 19) and every onnxruntime
# since 1.18 runs it. Below 18, Reduce*/Split take their axes as attributes, which the rules do not emit.
DEFAULT_OPSET = 21
MIN_OPSET = 18
DOMAIN = "heteropass"

ConstantNamer = Callable[[Value], str]


class OnnxExportError(Exception):
    """A node that has no ONNX equivalent; the message names the node and its op."""


ONNX_DTYPES = {
    DType.f64: TensorProto.DOUBLE, DType.f32: TensorProto.FLOAT, DType.f16: TensorProto.FLOAT16,
    DType.bf16: TensorProto.BFLOAT16, DType.i64: TensorProto.INT64, DType.i32: TensorProto.INT32,
    DType.i16: TensorProto.INT16, DType.i8: TensorProto.INT8, DType.u8: TensorProto.UINT8,
    DType.bool: TensorProto.BOOL,
}


def sanitize(name: str) -> str:
    """A readable ONNX name: letters, digits, `_` and `.` only."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", name) or "v"


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    tensor = tensor.detach().cpu().contiguous()
    return (tensor.view(torch.int16) if tensor.dtype is torch.bfloat16 else tensor).numpy().tobytes()


def tensor_proto(name: str, tensor: torch.Tensor) -> TensorProto:
    """An ONNX tensor holding `tensor`'s raw little-endian bytes (bf16 included)."""
    dtype = ONNX_DTYPES[DType.from_torch(tensor.dtype)]
    return helper.make_tensor(name, dtype, list(tensor.shape), _raw_bytes(tensor), raw=True)


class Names:
    """Unique, sanitized names within one ONNX scope (a graph or a function body)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def unique(self, hint: str) -> str:
        base = sanitize(hint)
        name, n = base, 0
        while name in self.used:
            n += 1
            name = f"{base}_{n}"
        self.used.add(name)
        return name


class Emitter:
    """Collects the ONNX nodes of one scope. Helper constants (axes, shapes, scalars) become
    initializers in the main graph and `Constant` nodes inside functions, which cannot hold
    initializers; equal ones are emitted once."""

    def __init__(self, names: Names, opset: int, initializers: list[TensorProto] | None) -> None:
        self.names = names
        self.opset = opset
        self.initializers = initializers
        self.nodes: list[NodeProto] = []
        self.constant_names: set[str] = set()
        self.scope = "node"
        self.doc = ""
        self._consts: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        return self.names.unique(hint)

    def emit(self, op_type: str, inputs: Sequence[str | None], outputs: Sequence[str], domain: str = "",
             **attrs: Any) -> None:
        node = helper.make_node(op_type, ["" if x is None else x for x in inputs], list(outputs),
                                name=self.fresh(f"{self.scope}/{op_type}"), domain=domain or None,
                                **{k: v for k, v in attrs.items() if v is not None})
        if self.doc:
            node.doc_string = self.doc
        self.nodes.append(node)

    def op(self, op_type: str, *inputs: str | None, **attrs: Any) -> str:
        """Emit a single-output ONNX node and return its output name."""
        out = self.fresh(f"{self.scope}_{op_type.lower()}")
        self.emit(op_type, inputs, [out], **attrs)
        return out

    def const(self, tensor: torch.Tensor, hint: str = "const") -> str:
        key = (tensor.dtype, tuple(tensor.shape), _raw_bytes(tensor))
        if key in self._consts:
            return self._consts[key]
        name = self.fresh(hint)
        if self.initializers is not None:
            self.initializers.append(tensor_proto(name, tensor))
        else:
            self.emit("Constant", [], [name], value=tensor_proto(name, tensor))
            self.constant_names.add(name)
        self._consts[key] = name
        return name

    def ints(self, values: Sequence[int]) -> str:
        """A 1-D i64 constant, as Reshape/Unsqueeze/Slice/ReduceX take their shapes and axes."""
        return self.const(torch.tensor(list(values), dtype=torch.int64), "ints")

    def scalar(self, value: float | int | bool, dtype: DType) -> str:
        return self.const(torch.tensor(value, dtype=dtype.torch), "scalar")

    def cast(self, name: str, src: DType, dst: DType) -> str:
        return name if src is dst else self.op("Cast", name, to=ONNX_DTYPES[dst])


def fail(node: Node, why: str) -> OnnxExportError:
    return OnnxExportError(f"cannot export `{node!r}` (op '{node.op}') to ONNX: {why}")


def _value_info(name: str, type: TensorType) -> ValueInfoProto:
    return helper.make_tensor_value_info(name, ONNX_DTYPES[type.dtype], list(type.static_shape()))


def _regions(node: Node) -> list[Graph]:
    """The nested graphs among a node's attributes: a region runs its body on the node's operands."""
    return [v for v in node.attrs.values() if isinstance(v, Graph)]


def _lifted_constants(body: Graph) -> list[Value]:
    """Constants of a region and of the regions nested in it, in a fixed order, passed to its function
    as inputs (ONNX functions hold no initializers, and weights belong in the model's initializers)."""
    found = list(body.constants.values())
    for node in body.nodes:
        for region in _regions(node):
            found.extend(_lifted_constants(region))
    return found


class _ModelBuilder:
    """Lowers a graph and its regions, collecting initializers and local functions."""

    def __init__(self, opset: int, as_functions: bool) -> None:
        self.opset = opset
        self.as_functions = as_functions
        self.initializers: list[TensorProto] = []
        self.functions: dict[str, FunctionProto] = {}
        self.function_names = Names()
        self._initializer_names: dict[int, str] = {}

    def initializer(self, em: Emitter, value: Value) -> str:
        """The main graph's initializer for a constant (one per tensor, named after the constant)."""
        key = id(value.const)
        if key not in self._initializer_names:
            name = em.fresh(value.name)
            self.initializers.append(tensor_proto(name, value.const))  # type: ignore[arg-type]
            self._initializer_names[key] = name
        return self._initializer_names[key]

    def lower(self, em: Emitter, graph: Graph, bound: dict[int, str], output_names: Sequence[str],
              constant: ConstantNamer, value_info: list[ValueInfoProto]) -> None:
        """Emit `graph`'s nodes into `em`, its inputs read from `bound` and its results written to
        `output_names` (through Identity where an output is an input, a constant or repeated)."""
        env = dict(bound)
        for c in graph.constants.values():
            if c.uses:
                env[id(c)] = constant(c)
        targets: dict[int, str] = {}
        copies: list[tuple[Value, str]] = []
        for value, name in zip(graph.outputs, output_names, strict=True):
            if value.producer is not None and id(value) not in targets:
                targets[id(value)] = name
            else:
                copies.append((value, name))
        for node in graph.nodes:
            desired = [targets.get(id(v)) or em.fresh(v.name) for v in node.outputs]
            self.lower_node(em, node, [env[id(v)] for v in node.inputs], desired, constant, value_info)
            for value, name in zip(node.outputs, desired, strict=True):
                env[id(value)] = name
                if id(value) not in targets:
                    value_info.append(_value_info(name, value.type))
        for value, name in copies:
            if id(value) not in env:
                env[id(value)] = constant(value)
            if env[id(value)] != name:  # else the output is the graph input of that name
                em.emit("Identity", [env[id(value)]], [name])

    def lower_node(self, em: Emitter, node: Node, inputs: list[str], desired: list[str],
                   constant: ConstantNamer, value_info: list[ValueInfoProto]) -> None:
        em.scope = sanitize(f"{node.op}_{node.outputs[0].name}" if node.outputs else node.op)
        em.doc = node.source or ""
        regions = _regions(node)
        if len(regions) > 1:
            raise fail(node, "a node with several nested graphs has no single body to export")
        if regions and self.as_functions:
            name = self.function(node, regions[0])
            em.emit(name, inputs + [constant(c) for c in _lifted_constants(regions[0])], desired, domain=DOMAIN)
        elif regions:
            body = regions[0]
            bound = {id(v): name for v, name in zip(body.inputs, inputs, strict=True)}
            self.lower(em, body, bound, desired, constant, value_info)
        else:
            self._apply_rule(em, node, inputs, desired)

    def _apply_rule(self, em: Emitter, node: Node, inputs: list[str], desired: list[str]) -> None:
        from .onnx_export_rules import RULES  # the rules build on this module's Emitter

        rule = RULES.get(node.op)
        if rule is None:
            raise fail(node, "the exporter has no rule for this op")
        start = len(em.nodes)
        try:
            result = rule(em, node, inputs)
        except OnnxExportError:
            raise
        except Exception as exc:  # a rule that trips over an unusual node: say which node
            raise fail(node, f"{type(exc).__name__}: {exc}") from exc
        results = [result] if isinstance(result, str) else result
        emitted = em.nodes[start:]
        produced = {out for n in emitted for out in n.output} - em.constant_names
        for got, want in zip(results, desired, strict=True):
            if got == want:
                continue
            if got in produced and results.count(got) == 1:
                _rename(emitted, got, want)  # the rule's last node writes the result directly
            else:
                em.emit("Identity", [got], [want])

    def function(self, node: Node, body: Graph) -> str:
        """The local function for a region body, one per distinct body; its trailing inputs are the
        body's lifted constants, so bodies that differ only in constant values share it."""
        key = re.sub(r"^(\s*const %\S+ \S+) = .*$", r"\1", format_graph(body), flags=re.MULTILINE)
        if key not in self.functions:
            names = Names()
            fem = Emitter(names, self.opset, initializers=None)
            inputs = [names.unique(v.name) for v in body.inputs]
            constants = {id(c): names.unique(c.name) for c in _lifted_constants(body)}
            outputs = [names.unique(v.name) for v in body.outputs]
            value_info: list[ValueInfoProto] = []
            bound = {id(v): name for v, name in zip(body.inputs, inputs, strict=True)}
            self.lower(fem, body, bound, outputs, lambda c: constants[id(c)], value_info)
            opsets = [helper.make_opsetid("", self.opset)]
            if any(n.domain == DOMAIN for n in fem.nodes):
                opsets.append(helper.make_opsetid(DOMAIN, 1))
            name = self.function_names.unique(body.name if body.name != "main" else node.op)
            proto = helper.make_function(DOMAIN, name, inputs + list(constants.values()), outputs, fem.nodes,
                                         opsets, doc_string=f"heteropass region of op '{node.op}'",
                                         value_info=value_info)
            self.functions[key] = proto
        return self.functions[key].name


def _rename(nodes: Sequence[onnx.NodeProto], old: str, new: str) -> None:
    for n in nodes:
        for names in (n.input, n.output):
            for i, name in enumerate(names):
                if name == old:
                    names[i] = new


def _io_names(given: Sequence[str] | None, values: Sequence[Value], names: Names, what: str,
              inputs: dict[str, int] | None = None) -> list[str]:
    """The ONNX names of graph inputs or outputs; an output may keep the name of the graph input (in
    `inputs`: name -> id of the value) that it is, as ONNX allows."""
    if given is None:
        return [names.unique(v.name) for v in values]
    given = list(given)
    if len(given) != len(values):
        raise ValueError(f"{len(given)} {what} names for {len(values)} graph {what}s")
    for name, value in zip(given, values, strict=True):
        if name in names.used and (inputs or {}).get(name) != id(value):
            raise ValueError(f"{what} name {name!r} is used twice")
        names.used.add(name)
    return given


def export_onnx(graph: Graph, *, opset: int = DEFAULT_OPSET, as_functions: bool = True,
                input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None) -> ModelProto:
    """An ONNX model computing what `graph` computes (static shapes, PyTorch semantics).

    With `as_functions`, each region (a node with a nested graph) becomes a call of a local function
    in the "heteropass" domain, one per distinct body; without, its body is inlined. Raises
    `OnnxExportError` naming the first node that has no ONNX equivalent.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old; the exporter emits opset {MIN_OPSET} or newer")
    if opset > onnx.defs.onnx_opset_version():
        raise ValueError(f"opset {opset} is newer than the {onnx.defs.onnx_opset_version()} this onnx knows")
    for value in graph.values():
        if not value.type.is_static:
            raise OnnxExportError(f"cannot export %{value.name}: {value.type} has symbolic dimensions")
    names = Names()
    inputs = _io_names(input_names, graph.inputs, names, "input")
    outputs = _io_names(output_names, graph.outputs, names, "output",
                        {name: id(v) for name, v in zip(inputs, graph.inputs, strict=True)})
    builder = _ModelBuilder(opset, as_functions)
    em = Emitter(names, opset, builder.initializers)
    value_info: list[ValueInfoProto] = []
    bound = {id(v): name for v, name in zip(graph.inputs, inputs, strict=True)}
    builder.lower(em, graph, bound, outputs, lambda c: builder.initializer(em, c), value_info)
    onnx_graph = helper.make_graph(
        em.nodes, sanitize(graph.name), [_value_info(n, v.type) for n, v in zip(inputs, graph.inputs, strict=True)],
        [_value_info(n, v.type) for n, v in zip(outputs, graph.outputs, strict=True)],
        initializer=builder.initializers, value_info=value_info)
    opsets = [helper.make_opsetid("", opset)]
    if builder.functions:
        opsets.append(helper.make_opsetid(DOMAIN, 1))
    ir_version = max(helper.find_min_ir_version_for(opsets, ignore_unknown=True), 8)  # 8: local functions
    return helper.make_model(onnx_graph, opset_imports=opsets, producer_name="heteropass", ir_version=ir_version,
                             functions=list(builder.functions.values()))


def save_onnx(graph: Graph, path: str, **kwargs: object) -> None:
    """Export `graph` (keywords as for `export_onnx`) and write the model to `path`, once ONNX's checker
    with type inference accepts it: ONNX defines no bf16 Conv or MaxPool, say, and a runtime would refuse
    the file."""
    model = export_onnx(graph, **kwargs)  # type: ignore[arg-type]
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise OnnxExportError(f"ONNX rejects the exported {graph.name}: {str(exc).strip().splitlines()[0]}") from exc
    onnx.save_model(model, path)
