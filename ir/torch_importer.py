"""Import PyTorch programs into the IR.

`import_module` captures an `nn.Module` with `torch.export` (falling back to
`torch.fx.symbolic_trace` + `make_fx` when export fails), `import_aten_graph` takes an ATen-level
FX graph as torch.compile hands it to a backend. Both lower ATen ops through the rule table in
`aten_lowering`; ops without a rule become `opaque` nodes that call the ATen op.
"""

from __future__ import annotations

import inspect
import math
import operator
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch.export.graph_signature import ConstantArgument, InputKind, OutputKind, TensorArgument

from .aten_lowering import Lowerer, Unsupported, aten, find_rule
from .graph import Graph, Value
from .ops import encode_call
from .printer import format_node
from .torch_inplace import InPlaceError, InPlaceWrite, in_place_writes
from .types import DType, TensorType


class TorchImportError(Exception):
    """The program cannot be imported (symbolic shapes, an unsupported input or output kind, ...)."""


class UnsupportedOpError(TorchImportError):
    """`strict=True` and some ATen ops have no IR mapping; the message lists them with locations."""


@dataclass(frozen=True)
class Literal:
    """A non-tensor leaf of the model's inputs or outputs, fixed at import time."""

    value: Any


@dataclass
class TorchProgram:
    """An imported program: the graph, and how the model's call arguments and results map onto it.

    `input_spec` is the pytree structure of `(args, kwargs)` and `input_leaves[i]` says what its
    i-th leaf is: the index of a graph input, or a `Literal` the import specialized on.
    `output_leaves` does the same for the leaves of `output_spec` against the graph's outputs.

    A model that updates tensors in place (a buffer such as a running sum or a cache, or one of its
    inputs) has them as graph inputs and their new values as extra graph outputs: `state` gives the
    model's live buffers by graph-input index, `write_back` which graph output the call copies into
    which graph input afterwards (`write_state`), so the model's tensors change as in eager.
    """

    graph: Graph
    input_spec: pytree.TreeSpec
    output_spec: pytree.TreeSpec
    input_leaves: list[int | Literal] = field(default_factory=list)
    output_leaves: list[int | Literal] = field(default_factory=list)
    state: dict[int, torch.Tensor] = field(default_factory=dict)
    write_back: list[tuple[int, int]] = field(default_factory=list)
    # How `import_module` captured the model, for the compile report: torch.export's graph as exported or
    # decomposed first (and why), or torch.fx.
    route: str = field(default="", compare=False)
    # n when the program takes n positional tensors in graph-input order and no keywords: such a
    # call needs no pytree flattening (~40 us a call, a percent of a small model's latency).
    _positional: int | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.input_leaves)
        if self.input_leaves == list(range(n)) and self.input_spec == pytree.tree_structure((tuple(range(n)), {})):
            self._positional = n

    def flatten_inputs(self, args: Sequence[Any], kwargs: dict[str, Any] | None = None) -> list[torch.Tensor]:
        """The graph's input tensors for a model call `model(*args, **kwargs)`."""
        if not kwargs and len(args) == self._positional and all(type(a) is torch.Tensor for a in args):
            return [*args, *self.state.values()] if self.state else list(args)
        kwargs = _order_like(kwargs or {}, self.input_spec)
        leaves, spec = pytree.tree_flatten((tuple(args), kwargs))
        if spec != self.input_spec:
            raise ValueError(_structure_mismatch(tuple(args), kwargs, self.input_spec))
        tensors: list[torch.Tensor | None] = [None] * len(self.graph.inputs)
        for leaf, slot in zip(leaves, self.input_leaves, strict=True):
            if isinstance(slot, Literal):
                if not _same_literal(leaf, slot.value):
                    raise ValueError(f"input {leaf!r} differs from {slot.value!r}, which the import specialized on")
            else:
                graph_input = self.graph.inputs[slot]
                tensors[slot] = leaf if isinstance(leaf, torch.Tensor) else torch.tensor(
                    leaf, dtype=graph_input.type.dtype.torch)
        for slot, buffer in self.state.items():
            tensors[slot] = buffer
        return tensors  # type: ignore[return-value]

    def write_state(self, inputs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor]) -> None:
        """Copy the new values of the tensors the model updates in place into them (`write_back`)."""
        with torch.no_grad():  # a parameter is a leaf that requires grad
            for output, graph_input in self.write_back:
                inputs[graph_input].copy_(outputs[output])

    def unflatten_outputs(self, outputs: Sequence[torch.Tensor]) -> Any:
        """The model's result (tuple, dict, ModelOutput, ...) from the graph's outputs."""
        leaves = [slot.value if isinstance(slot, Literal) else outputs[slot] for slot in self.output_leaves]
        return pytree.tree_unflatten(leaves, self.output_spec)


def _describe(spec: pytree.TreeSpec) -> str:
    if spec.is_leaf():
        return "a tensor or scalar"
    return f"a {spec.type.__name__} of {spec.num_children} items"


def _structure_mismatch(args: tuple, kwargs: dict[str, Any], expected: pytree.TreeSpec) -> str:
    """Say in words how a call's arguments differ from the ones the program was imported with."""
    arg_specs, kwarg_spec = expected.children()
    names = sorted(kwarg_spec.context or [])
    if len(args) != arg_specs.num_children or sorted(kwargs) != names:
        return (f"expected {arg_specs.num_children} positional argument(s) and keyword argument(s) {names}, "
                f"got {len(args)} positional and {sorted(kwargs)}")
    for i, (arg, arg_spec) in enumerate(zip(args, arg_specs.children(), strict=True)):
        if pytree.tree_structure(arg) != arg_spec:
            return f"argument {i} should be {_describe(arg_spec)}, got {type(arg).__name__}"
    return f"keyword arguments should have structure {kwarg_spec}"


def _order_like(kwargs: dict[str, Any], spec: pytree.TreeSpec) -> dict[str, Any]:
    """Keyword arguments in the order the spec recorded, so equal calls flatten equally."""
    keys = spec.child(1).context if spec.num_children == 2 else None
    if keys is not None and set(keys) == set(kwargs):
        return {k: kwargs[k] for k in keys}
    return kwargs


def _same_literal(a: Any, b: Any) -> bool:
    """Equal and of the same type: 2.0 is not 2 (the result's dtype follows it), True is not 1."""
    if type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:
        return a is b


# -- locations and names -----------------------------------------------------------------------

_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep


def _location(node: fx.Node) -> str | None:
    """`file:line in function` of the user's code that made the node (its trace's last frame outside torch);
    a file under the working directory is named relative to it, so dumps do not depend on the checkout."""
    frames = [f for f in _FRAME.findall(node.meta.get("stack_trace") or "") if not f[0].startswith(_TORCH_DIR)]
    if not frames:
        return None
    path, line, function = frames[-1]
    relative = os.path.relpath(path) if os.path.isabs(path) else path
    return f"{path if relative.startswith('..') else relative}:{line} in {function}"


def _sanitize(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.]", "_", name)
    return name if name and not name[0].isdigit() else f"_{name}"


# -- lowering the FX graph ---------------------------------------------------------------------

def _meta_types(node: fx.Node, val: Any = None) -> list[TensorType | None] | None:
    """The output types PyTorch recorded for a node (or `val`, part of its record), checking that every
    size is static."""
    val = node.meta.get("val") if val is None else val
    if val is None:
        return None
    vals = list(val) if isinstance(val, list | tuple) else [val]
    types: list[TensorType | None] = []
    for v in vals:
        if isinstance(v, torch.Tensor):
            if not all(isinstance(d, int) for d in v.shape):
                raise TorchImportError(f"node {node.name} ({node.target}) has symbolic shape {tuple(v.shape)}; "
                                       "heteropass imports static shapes only")
            types.append(TensorType.of(v))
        elif isinstance(v, torch.SymInt | torch.SymFloat | torch.SymBool):
            raise TorchImportError(f"node {node.name} ({node.target}) computes a symbolic value; "
                                   "heteropass imports static shapes only")
        else:
            types.append(None)
    return types


def _bind(op: torch._ops.OpOverload, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments by schema name, defaults filled in."""
    bound: dict[str, Any] = {}
    for i, arg in enumerate(op._schema.arguments):
        if i < len(args) and not arg.kwarg_only:
            bound[arg.name] = args[i]
        elif arg.name in kwargs:
            bound[arg.name] = kwargs[arg.name]
        elif arg.has_default_value():
            bound[arg.name] = arg.default_value
        else:
            bound[arg.name] = None
    return bound


@dataclass
class _Unmapped:
    target: str
    location: str | None
    reason: str

    def __str__(self) -> str:
        where = self.location or "unknown location"
        return f"{self.target} at {where}" + (f" ({self.reason})" if self.reason else "")


# Calls the lowering handles itself, in decomposed and undecomposed graphs alike.
_STRUCTURAL = (operator.getitem, torch.ops.higher_order.with_effects)


class _NeedsDecomposition(Exception):
    """An op of an undecomposed export that only its decomposition can lower (the message names it)."""


class _GraphLowering:
    """Walks an ATen FX graph in order and builds the IR graph."""

    def __init__(self, graph: Graph, *, decomposed: bool = True) -> None:
        self.graph = graph
        self.lx = Lowerer(graph)
        self.env: dict[fx.Node, Any] = {}
        self.unmapped: list[_Unmapped] = []
        # In an undecomposed graph, an op that would become opaque raises `_NeedsDecomposition`
        # instead (its decomposition may well lower); in-place ops lower out of place where
        # `in_place_writes` allows, else they raise it too.
        self.decomposed = decomposed
        self.in_place: dict[fx.Node, InPlaceWrite] = {}
        self.write_views: set[fx.Node] = set()  # lowered at each write through them

    def check_undecomposed(self, fx_graph: fx.Graph) -> None:
        """Raise `_NeedsDecomposition` for what an undecomposed graph holds that only decomposing lowers (a
        subgraph call, an op without a rule, an in-place write `in_place_writes` refuses), before any
        weight is copied; a rule that declines a particular call raises it later, from `_lower`."""
        try:
            self.in_place = in_place_writes(fx_graph)
        except InPlaceError as exc:
            raise _NeedsDecomposition(str(exc)) from exc
        self.write_views = {view for write in self.in_place.values() for view in write.views}
        for node in fx_graph.nodes:
            if node.op == "get_attr" or (node.op == "call_function" and not isinstance(
                    node.target, torch._ops.OpOverload) and node.target not in _STRUCTURAL):
                raise _NeedsDecomposition(f"node {node.name} calls a subgraph ({node.target})")
            target = self.in_place[node].functional if node in self.in_place else node.target
            if (node.op == "call_function" and isinstance(target, torch._ops.OpOverload) and target._schema.returns
                    and find_rule(target) is None and target is not aten.as_strided.default):
                raise _NeedsDecomposition(f"{target}: no lowering rule")

    def run(self, fx_graph: fx.Graph, module: torch.nn.Module | None = None) -> None:
        """Lower every node; `module` holds the tensors that get_attr nodes read (they become constants)."""
        for node in fx_graph.nodes:
            if node.op == "call_function":
                self._call(node)
            elif node.op == "get_attr":
                self.env[node] = self._attribute(node, module)
            elif node.op not in ("placeholder", "output"):
                raise TorchImportError(f"node {node.name}: unexpected FX opcode {node.op} in an ATen graph")

    def _attribute(self, node: fx.Node, module: torch.nn.Module | None) -> Value:
        """A tensor the graph module holds (a constant built in forward, `_tensor_constant0`) as a constant."""
        try:
            tensor = operator.attrgetter(str(node.target))(module)
        except AttributeError:
            tensor = None
        if not isinstance(tensor, torch.Tensor):
            raise TorchImportError(f"get_attr node {node.name} reads {node.target!r}, which is not a tensor of "
                                   "the graph module")
        return self.graph.add_constant(_sanitize(str(node.target)), _snapshot(tensor))

    def _call(self, node: fx.Node) -> None:
        if node.target is operator.getitem:
            source, index = node.args
            self.env[node] = self.env[source][index]
            return
        if node.target is torch.ops.higher_order.with_effects:
            # with_effects(token, op, *args) orders an effectful op (aten._linalg_check_errors) by a token:
            # the op is lowered as if called directly, and the token passes through unchanged.
            token, op, *op_args = node.args
            val = node.meta.get("val")
            result = self._lower(node, op, tuple(op_args), dict(node.kwargs),
                                 val[1:] if isinstance(val, list | tuple) else None)
            rest = () if result is None else result if isinstance(result, tuple) else (result,)
            self.env[node] = (self.env[token] if isinstance(token, fx.Node) else None, *rest)
            return
        if node in self.in_place:
            self._write_in_place(node)
            return
        if node in self.write_views:
            return
        self.env[node] = self._lower(node, node.target, node.args, node.kwargs, node.meta.get("val"))

    def _write_in_place(self, node: fx.Node) -> None:
        """`node` writes a tensor in place: its out-of-place result is that tensor from here on, for the
        node that made it and for every earlier write into it. A write through views computes their
        current values from the tensor's, and scatters the new value back through them."""
        write = self.in_place[node]
        values = [self.env[write.root]]
        self.lx.source = _location(node)
        try:
            for view in write.views:
                values.append(self._view_of(view, values[-1]))
                self.env[view] = values[-1]
            result = self._lower(node, write.functional, node.args, node.kwargs, node.meta.get("val"), in_place=True)
            self.env[node] = result  # the write returns the view it wrote
            for view, parent in zip(reversed(write.views), reversed(values[:-1]), strict=True):
                result = self._scatter(view, parent, result)
        except Unsupported as exc:
            raise _NeedsDecomposition(f"{node.target}: {exc}") from exc
        earlier = [n for n, w in self.in_place.items() if w.root is write.root and not w.views and n in self.env]
        for written in (write.root, *earlier):
            self.env[written] = result

    def _view_of(self, view: fx.Node, base: Value) -> Value:
        """What the `slice`/`select` node `view` gives when applied to `base`."""
        bound = _bind(view.target, fx.node.map_arg(view.args, self.env.__getitem__), view.kwargs)
        self.lx.out_types = None
        return find_rule(view.target)(self.lx, {**bound, "self": base})

    def _scatter(self, view: fx.Node, base: Value, value: Value) -> Value:
        """`base` with `value` in place of the part the `slice`/`select` node `view` views."""
        bound = {**_bind(view.target, fx.node.map_arg(view.args, self.env.__getitem__), view.kwargs),
                 "self": base, "src": value}
        target = aten.select_scatter.default if view.target is aten.select.int else aten.slice_scatter.default
        self.lx.out_types = None
        return find_rule(target)(self.lx, bound)

    def _lower(self, node: fx.Node, target: Any, fx_args: tuple, fx_kwargs: dict[str, Any], val: Any,
               in_place: bool = False) -> Any:
        """The IR value(s) of `target(*fx_args, **fx_kwargs)`, whose result PyTorch recorded as `val`;
        `in_place`: the result is written into the first argument, so it keeps that tensor's dtype."""
        if not isinstance(target, torch._ops.OpOverload):
            raise TorchImportError(f"node {node.name} calls {target}, which is not an ATen op; "
                                   "only static-shape ATen graphs can be imported")
        if not target._schema.returns:
            return None  # runtime assertions such as aten._assert_tensor_metadata
        args, kwargs = fx.node.map_arg((fx_args, fx_kwargs), self.env.__getitem__)
        if target is aten.as_strided.default and (gathered := self._as_strided(node, args)) is not None:
            return gathered
        types = _meta_types(node, val)
        self.lx.source = _location(node)
        self.lx.out_types = [t for t in types if t is not None] if types else None
        self.lx.used_outputs = {u.args[1] for u in node.users if u.target is operator.getitem}
        rule = find_rule(target)
        reason = "no lowering rule"
        if rule is not None:
            try:
                result = rule(self.lx, _bind(target, args, kwargs))
            except Unsupported as exc:
                reason = str(exc)
            except Exception as exc:
                raise TorchImportError(f"lowering {node.format_node()} failed: {exc}") from exc
            else:
                if in_place and types and types[0] is not None and result.type.dtype != types[0].dtype:
                    result = self.lx.emit("cast", result, dtype=types[0].dtype)
                self._check(node, result, types)
                return result
        if not self.decomposed:
            raise _NeedsDecomposition(f"{target}: {reason}")
        self.unmapped.append(_Unmapped(str(target), self.lx.source, reason))
        return self._opaque(node, target, args, kwargs, types, val)

    def _as_strided(self, node: fx.Node, args: tuple) -> Value | None:
        """as_strided reads memory: the elements it reads depend on its operand's layout, which the IR does
        not keep. With the layout torch.export traced, they are a constant gather from the operand's
        elements in order; None where it reads memory outside the operand."""
        base = node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
        x, size, stride = args[0], _ints_of(args[1]), _ints_of(args[2])
        offset = args[3] if len(args) > 3 and args[3] is not None else base.storage_offset() if base is not None else 0
        if not isinstance(base, torch.Tensor) or not isinstance(x, Value) or None in (size, stride, offset):
            return None
        index = _as_strided_index(tuple(base.shape), base.stride(), base.storage_offset(), size, stride, offset)
        if index is None:
            return None
        self.lx.source = _location(node)
        flat = self.lx.emit("reshape", x, shape=(base.numel(),))
        return self.lx.emit("take", flat, self.graph.add_constant(f"{node.name}_index", index), dim=0)

    def _opaque(self, node: fx.Node, target: Any, args: tuple, kwargs: dict[str, Any],
                types: list[TensorType | None] | None, val: Any) -> Any:
        operands, spec = encode_call(args, kwargs)
        if not all(isinstance(v, Value) for v in operands):
            raise TorchImportError(f"{node.format_node()}: cannot pass {operands} to an opaque call")
        output_types = [t for t in types if t is not None] if types is not None else None
        ir_node = self.graph.add_node("opaque", operands, {"target": str(target), "spec": spec},
                                      output_types=output_types, source=self.lx.source)
        if not isinstance(val, list | tuple):
            return ir_node.outputs[0] if len(ir_node.outputs) == 1 else tuple(ir_node.outputs)
        outputs = iter(ir_node.outputs)
        return tuple(next(outputs) if isinstance(v, torch.Tensor) else None for v in val)

    def _check(self, node: fx.Node, result: Any, types: list[TensorType | None] | None) -> None:
        """An importer bug shows here, at its node, instead of as wrong numbers later."""
        if types is None:
            return
        values = result if isinstance(result, tuple) else (result,)
        if len(values) != len(types):
            raise TorchImportError(f"{node.format_node()} lowered to {len(values)} results, but PyTorch computes "
                                   f"{len(types)}")
        for value, expected in zip(values, types, strict=True):
            if value is not None and expected is not None and value.type != expected:
                producer = format_node(value.producer) if value.producer else f"%{value.name}"
                raise TorchImportError(f"{node.format_node()} lowered to `{producer}` of type {value.type}, "
                                       f"but PyTorch computes {expected}")

    def value(self, arg: Any) -> Value | Literal:
        """A graph output: an IR value, or a literal for non-tensor results."""
        if isinstance(arg, fx.Node):
            result = self.env[arg]
            return result if isinstance(result, Value) else Literal(result)
        return Literal(arg)

    def finish(self, outputs: Sequence[Value | Literal], strict: bool, what: str) -> list[int | Literal]:
        """Set the graph outputs, drop dead nodes and constants, report unmapped ops."""
        slots: list[int | Literal] = []
        graph_outputs: list[Value] = []
        for out in outputs:
            if isinstance(out, Literal):
                slots.append(out)
            else:
                slots.append(len(graph_outputs))
                graph_outputs.append(out)
        self.graph.set_outputs(graph_outputs)
        for ir_node in reversed(list(self.graph.nodes)):
            if not any(v.uses or self.graph.is_output(v) for v in ir_node.outputs):
                self.graph.remove_node(ir_node)
        self.graph.remove_unused_constants()
        self.graph = _renumbered(self.graph)
        if self.unmapped:
            unique = list(dict.fromkeys(str(u) for u in self.unmapped))
            listing = "\n  ".join(unique)
            if strict:
                raise UnsupportedOpError(f"{what}: {len(unique)} ATen op(s) have no IR mapping:\n  {listing}")
            warnings.warn(f"{what}: {len(unique)} ATen op(s) have no IR mapping and run as opaque PyTorch "
                          f"calls:\n  {listing}", stacklevel=3)
        return slots


def _renumbered(graph: Graph) -> Graph:
    """A copy whose node outputs are numbered 0, 1, ... again after dead nodes were dropped."""
    new = Graph(graph.name)
    mapping: dict[Value, Value] = {}
    for v in graph.inputs:
        mapping[v] = new.add_input(v.name, v.type)
    for v in graph.constants.values():
        mapping[v] = new.add_constant(v.name, v.const)  # type: ignore[arg-type]
    for node in graph.nodes:
        copy = new.add_node(node.op, [mapping[v] for v in node.inputs], node.attrs,
                            output_types=[v.type for v in node.outputs], source=node.source)
        mapping.update(zip(node.outputs, copy.outputs, strict=True))
    new.set_outputs(mapping[v] for v in graph.outputs)
    return new


# -- torch.export ------------------------------------------------------------------------------

# Ops torch.export would decompose but that the IR represents directly: kept whole so the IR
# reads like the model (linear, layer_norm, attention) instead of their primitive expansions.
KEEP_UNDECOMPOSED = (
    aten.linear.default, aten.matmul.default, aten.layer_norm.default, aten.group_norm.default,
    aten.rms_norm.default, aten.scaled_dot_product_attention.default,
    aten._scaled_dot_product_flash_attention_for_cpu.default, aten.softmax.int, aten.log_softmax.int,
    aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, aten.conv_transpose1d.default,
    aten.conv_transpose2d.input, aten.conv_transpose3d.input, aten.silu.default, aten.hardswish.default,
    aten.hardsigmoid.default, aten.mish.default, aten.softplus.default, aten.masked_fill.Scalar,
    aten.masked_fill.Tensor, aten.tril.default, aten.triu.default, aten.max_pool1d.default,
    aten.max_pool2d.default, aten.max_pool3d.default, aten.avg_pool1d.default, aten.adaptive_avg_pool1d.default,
    aten.adaptive_avg_pool2d.default, aten.adaptive_avg_pool3d.default, aten.adaptive_max_pool1d.default,
    aten.pad.default, aten.stack.default, aten.zeros.default, aten.ones.default, aten.zeros_like.default,
    aten.ones_like.default, aten.transpose.int, aten.t.default,
)


def decomposition_table() -> dict[Any, Any]:
    """torch.export's default decompositions minus the ops kept whole (`KEEP_UNDECOMPOSED`)."""
    table = torch.export.default_decompositions()
    for op in KEEP_UNDECOMPOSED:
        table.pop(op, None)
    return table


def _ints_of(values: Any) -> tuple[int, ...] | None:
    """A static list of ints as a tuple; None when an entry is symbolic."""
    return tuple(values) if all(type(v) is int for v in values) else None


def _as_strided_index(shape: tuple[int, ...], strides: tuple[int, ...], offset: int, size: tuple[int, ...],
                      stride: tuple[int, ...], storage_offset: int) -> torch.Tensor | None:
    """For as_strided(base, size, stride, storage_offset) of a base laid out as (shape, strides, offset): the
    position in base.reshape(-1) of each element it reads; None where it reads memory outside the base."""
    def extent(sizes: Sequence[int], steps: Sequence[int], start: int) -> int:
        return start + 1 + sum((n - 1) * s for n, s in zip(sizes, steps, strict=True)) if math.prod(sizes) else 0

    storage = torch.full((max(extent(shape, strides, offset), extent(size, stride, storage_offset)),), -1)
    torch.as_strided(storage, shape, strides, offset).copy_(torch.arange(math.prod(shape)).reshape(shape))
    index = torch.as_strided(storage, size, stride, storage_offset).clone()
    return None if bool((index < 0).any()) else index


def _distinct_tensors(args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """The example arguments with a copy in place of each repeat of a tensor: torch.export gives one
    tensor passed twice (`model(x, x, x)` for self-attention's query, key and value) a single
    placeholder, and the graph would then read the first argument wherever any of them is used."""
    seen: set[int] = set()

    def distinct(leaf: Any) -> Any:
        if not isinstance(leaf, torch.Tensor):
            return leaf
        if id(leaf) in seen:
            return leaf.clone()
        seen.add(id(leaf))
        return leaf

    return pytree.tree_map(distinct, (args, kwargs))


def import_module(model: torch.nn.Module, example_inputs: tuple, *, strict: bool = False,
                  example_kwargs: dict[str, Any] | None = None) -> TorchProgram:
    """Import `model` as called with `example_inputs` (and `example_kwargs`), static shapes.

    Parameters, buffers and tensor constants become graph constants named by their state-dict
    names; tensor arguments become graph inputs named after the forward's parameters. A buffer the
    model updates in place (or a parameter, as Embedding's max_norm renormalizes it) becomes a graph
    input after them (see `TorchProgram.write_back`).
    """
    args, kwargs = _distinct_tensors(tuple(example_inputs), dict(example_kwargs or {}))
    name = _sanitize(type(model).__name__.lower())
    try:
        exported = torch.export.export(model, args, kwargs, strict=False)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        warnings.warn(f"torch.export failed on {type(model).__name__} ({type(exc).__name__}: {reason}); "
                      "importing through torch.fx.symbolic_trace instead", stacklevel=2)
        try:
            program = _import_traced(model, args, kwargs, name, strict)
        except UnsupportedOpError:
            raise
        except TorchImportError as fallback:
            raise TorchImportError(f"torch.export failed on {type(model).__name__} ({type(exc).__name__}: "
                                   f"{reason}){_export_hint(reason)}; the torch.fx fallback failed too: "
                                   f"{fallback}") from exc
        program.route = "torch.fx.symbolic_trace and make_fx (torch.export failed)"
        return program
    state_tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    # Most exports hold only ops with lowering rules: decomposing them first would re-trace the whole
    # program (about a second for a small transformer) to change nothing the IR needs.
    try:
        program = _import_exported(exported, name, strict, state_tensors, decomposed=False)
    except _NeedsDecomposition as why:
        reason = str(why)
    else:
        program.route = "torch.export, lowered as exported"
        return program
    with warnings.catch_warnings():
        # torch's own run_decompositions trips its LeafSpec deprecation; nothing the user can act on.
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        decomposed = exported.run_decompositions(decomposition_table())
    program = _import_exported(decomposed, name, strict, state_tensors)
    program.route = f"torch.export, decomposed first ({reason})"
    return program


def _export_hint(reason: str) -> str:
    """What to do about a torch.export failure, where there is a usual cause."""
    if "which is not a known type" in reason and "pytree" in reason:
        return (": the model takes or returns an object torch.export cannot flatten (a transformers model's "
                "DynamicCache when use_cache=True): pass use_cache=False (in example_kwargs or the model's "
                "config), or register the type with torch.utils._pytree.register_pytree_node")
    return ""


def _import_exported(ep: torch.export.ExportedProgram, name: str, strict: bool,
                     state_tensors: dict[str, torch.Tensor], *, decomposed: bool = True) -> TorchProgram:
    """Lower `ep`; with `decomposed=False`, raise `_NeedsDecomposition` rather than emit an opaque call."""
    graph = Graph(name)
    lowering = _GraphLowering(graph, decomposed=decomposed)
    if not decomposed:
        lowering.check_undecomposed(ep.graph)
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    input_leaves: list[int | Literal] = []
    mutated = {spec.target for spec in ep.graph_signature.output_specs
               if spec.kind in (OutputKind.BUFFER_MUTATION, OutputKind.PARAMETER_MUTATION)}
    state_nodes: list[tuple[fx.Node, str]] = []
    for node, spec in zip(placeholders, ep.graph_signature.input_specs, strict=True):
        if spec.kind is InputKind.USER_INPUT:
            if isinstance(spec.arg, ConstantArgument):
                lowering.env[node] = spec.arg.value
                input_leaves.append(Literal(spec.arg.value))
            else:
                input_leaves.append(len(graph.inputs))
                lowering.env[node] = graph.add_input(_sanitize(spec.arg.name), _placeholder_type(node))
        elif spec.kind in (InputKind.BUFFER, InputKind.PARAMETER) and spec.target in mutated:
            state_nodes.append((node, spec.target))
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            tensor = ep.state_dict[spec.target] if spec.target in ep.state_dict else ep.constants[spec.target]
            lowering.env[node] = graph.add_constant(_sanitize(spec.target), _snapshot(tensor))
        elif spec.kind is InputKind.TOKEN:
            lowering.env[node] = None  # orders effectful ops (see `_GraphLowering._call`); nothing to compute
        else:
            raise TorchImportError(f"input {spec.arg.name} of kind {spec.kind.name} is not supported")
    # A buffer (or parameter) the model updates is state, read from the model at every call, not a constant.
    state: dict[int, torch.Tensor] = {}
    for node, target in state_nodes:
        state[len(graph.inputs)] = state_tensors[target]
        lowering.env[node] = graph.add_input(_sanitize(target), _placeholder_type(node))
    slot_of = {node.name: lowering.env[node] for node in placeholders}

    lowering.run(ep.graph, ep.graph_module)
    output_node = next(n for n in ep.graph.nodes if n.op == "output")
    outputs: list[Value | Literal] = []
    updates: list[tuple[Value, int]] = []
    for arg, spec in zip(output_node.args[0], ep.graph_signature.output_specs, strict=True):
        if spec.kind is OutputKind.USER_OUTPUT:
            outputs.append(lowering.value(arg) if isinstance(spec.arg, TensorArgument) else Literal(spec.arg.value))
        elif spec.kind in (OutputKind.BUFFER_MUTATION, OutputKind.PARAMETER_MUTATION, OutputKind.USER_INPUT_MUTATION):
            target = slot_of[_mutated_placeholder(ep, spec)]
            updates.append((lowering.value(arg), next(i for i, v in enumerate(graph.inputs) if v is target)))
        elif spec.kind is not OutputKind.TOKEN:
            raise TorchImportError(f"output {spec.arg} of kind {spec.kind.name} is not supported")
    leaves = lowering.finish([*outputs, *(value for value, _ in updates)], strict, f"import of {name}")
    write_back = []
    for leaf, (_, graph_input) in zip(leaves[len(outputs):], updates, strict=True):
        assert isinstance(leaf, int)
        write_back.append((leaf, graph_input))
    return TorchProgram(lowering.graph, ep.call_spec.in_spec, ep.call_spec.out_spec, input_leaves,
                        leaves[:len(outputs)], state, write_back)


def _snapshot(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of a parameter or buffer: the compiled program is a snapshot of the weights at import, as
    after inductor's freezing, so a later in-place update of the model (`load_state_dict`) cannot reach
    the constants some kernels read directly while others fold or repack them."""
    return tensor.detach().clone()


def _mutated_placeholder(ep: torch.export.ExportedProgram, spec: Any) -> str:
    """The name of the placeholder whose tensor a mutation output `spec` updates."""
    if spec.kind is OutputKind.USER_INPUT_MUTATION:
        return spec.target
    return next(i.arg.name for i in ep.graph_signature.input_specs
                if i.kind in (InputKind.BUFFER, InputKind.PARAMETER) and i.target == spec.target)


def _placeholder_type(node: fx.Node) -> TensorType:
    types = _meta_types(node)
    if not types or types[0] is None:
        raise TorchImportError(f"placeholder {node.name} has no recorded tensor type")
    return types[0]


# -- fallback: symbolic_trace + make_fx --------------------------------------------------------

def _import_traced(model: torch.nn.Module, args: tuple, kwargs: dict[str, Any], name: str,
                   strict: bool) -> TorchProgram:
    """Trace with symbolic_trace, which proves the Python control flow does not depend on tensor
    values, then lower that graph to ATen with make_fx on the example inputs."""
    from torch.fx.experimental.proxy_tensor import make_fx

    # Tracing runs the model's code: a buffer it updates in place changes, and is put back below.
    buffers = {name: tensor.detach().clone() for name, tensor in model.named_buffers()}
    try:
        tracer = fx.Tracer()
        tracer.record_stack_traces = True
        traced = fx.GraphModule(model, tracer.trace(model))
    except Exception as exc:
        _restore_changed(model, buffers)
        raise TorchImportError(f"neither torch.export nor torch.fx.symbolic_trace can capture "
                               f"{type(model).__name__}: {exc}") from exc
    runner = _RunTraced(traced)
    state = {**dict(runner.named_parameters()), **dict(runner.named_buffers())}
    leaves, in_spec = pytree.tree_flatten((args, kwargs))
    tensor_slots = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
    signature = inspect.signature(traced.forward)
    out_spec: list[pytree.TreeSpec] = []

    def flat_forward(*flat: torch.Tensor) -> list[Any]:
        params = dict(zip(state, flat[:len(state)], strict=True))
        call_leaves = list(leaves)
        for slot, tensor in zip(tensor_slots, flat[len(state):], strict=True):
            call_leaves[slot] = tensor
        call_args, call_kwargs = pytree.tree_unflatten(call_leaves, in_spec)
        bound = signature.bind(*call_args, **call_kwargs)
        bound.apply_defaults()
        result = torch.func.functional_call(runner, params, tuple(bound.arguments.values()))
        out_leaves, spec = pytree.tree_flatten(result)
        out_spec.append(spec)
        return out_leaves

    try:
        with torch.no_grad(), fx.traceback.preserve_node_meta():
            gm = make_fx(flat_forward)(*state.values(), *(leaves[i] for i in tensor_slots))
    except Exception as exc:
        raise TorchImportError(f"neither torch.export nor make_fx over torch.fx.symbolic_trace can capture "
                               f"{type(model).__name__}: {type(exc).__name__}: {exc}") from exc
    finally:
        changed = _restore_changed(model, buffers)
    if changed:
        raise TorchImportError(f"{type(model).__name__} updates buffer(s) {changed} in place; torch.export failed "
                               "on it and the torch.fx fallback cannot keep such updates (fix what torch.export "
                               "reports to compile it with the buffers as state)")
    graph = Graph(name)
    lowering = _GraphLowering(graph)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    input_names = _argument_names(model, args, kwargs)
    input_leaves: list[int | Literal] = [Literal(leaf) for leaf in leaves]
    for node, (state_name, tensor) in zip(placeholders, state.items(), strict=False):
        lowering.env[node] = graph.add_constant(_sanitize(state_name.removeprefix("traced.")), _snapshot(tensor))
    for node, slot in zip(placeholders[len(state):], tensor_slots, strict=True):
        input_leaves[slot] = len(graph.inputs)
        lowering.env[node] = graph.add_input(input_names[slot], TensorType.of(leaves[slot]))
    lowering.run(gm.graph, gm)
    output_node = next(n for n in gm.graph.nodes if n.op == "output")
    outputs = [lowering.value(arg) for arg in output_node.args[0]]
    output_leaves = lowering.finish(outputs, strict, f"import of {name}")
    return TorchProgram(lowering.graph, in_spec, out_spec[-1], input_leaves, output_leaves)


def _restore_changed(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> list[str]:
    """The buffers that tracing changed (running the model's in-place updates), put back as they were."""
    changed = []
    for name, tensor in model.named_buffers():
        before = saved.get(name)
        if before is not None and not torch.equal(tensor, before):
            with torch.no_grad():
                tensor.copy_(before)
            changed.append(name)
    return changed


class _RunTraced(torch.nn.Module):
    """Runs a traced module node by node, so make_fx gives each ATen node its source's stack trace."""

    def __init__(self, traced: fx.GraphModule) -> None:
        super().__init__()
        self.traced = traced

    def forward(self, *args: Any) -> Any:
        return fx.Interpreter(self.traced).run(*args)


def _argument_names(model: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> list[str]:
    """A name per leaf of (args, kwargs): the forward parameter's name, plus a path for nested leaves."""
    params = list(inspect.signature(model.forward).parameters)
    names = []
    for path, _ in pytree.tree_flatten_with_path((args, kwargs))[0]:
        position = path[1]
        if isinstance(position, pytree.SequenceKey):
            base = params[position.idx] if position.idx < len(params) else f"arg{position.idx}"
        else:
            base = str(getattr(position, "key", position))
        rest = "".join(f"_{getattr(k, 'idx', getattr(k, 'key', k))}" for k in path[2:])
        names.append(_sanitize(base + rest))
    return names


# -- ATen graphs from torch.compile ------------------------------------------------------------

def import_aten_graph(gm: fx.GraphModule, example_inputs: Sequence[Any], *, strict: bool = False,
                      constants: dict[int, torch.Tensor] | None = None) -> TorchProgram:
    """Import an ATen-level FX graph whose placeholders are flat inputs (tensors or Python scalars).

    This is what torch.compile (AOTAutograd) hands a backend: parameters arrive as inputs too.
    Python scalar inputs become 0-d tensor inputs; symbolic shapes are rejected. `constants` maps
    placeholder positions to tensors that become graph constants (copied) instead of inputs; the
    program then takes the other inputs only, in order.
    """
    inputs = list(example_inputs)
    constants = constants or {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(inputs):
        raise TorchImportError(f"the graph has {len(placeholders)} placeholders but {len(inputs)} example inputs")
    graph = Graph(_sanitize(getattr(gm, "_get_name", lambda: "aten_graph")().lower()))
    lowering = _GraphLowering(graph)
    for i, (node, example) in enumerate(zip(placeholders, inputs, strict=True)):
        if i in constants:
            lowering.env[node] = graph.add_constant(_sanitize(node.name), _snapshot(constants[i]))
        else:
            lowering.env[node] = graph.add_input(_sanitize(node.name), _example_type(node, example))
    lowering.run(gm.graph, gm)
    output_node = next(n for n in gm.graph.nodes if n.op == "output")
    out_leaves, out_spec = pytree.tree_flatten(output_node.args[0])
    outputs = [lowering.value(arg) for arg in out_leaves]
    output_leaves = lowering.finish(outputs, strict, f"import of {graph.name}")
    kept = [x for i, x in enumerate(inputs) if i not in constants]
    in_spec = pytree.tree_flatten((tuple(kept), {}))[1]
    return TorchProgram(lowering.graph, in_spec, out_spec, list(range(len(kept))), output_leaves)


def _example_type(node: fx.Node, example: Any) -> TensorType:
    if isinstance(example, torch.SymInt | torch.SymFloat | torch.SymBool):
        raise TorchImportError(f"input {node.name} is symbolic ({example}); heteropass imports static shapes "
                               "only (compile with dynamic=False)")
    if isinstance(example, torch.Tensor):
        if not all(isinstance(d, int) for d in example.shape):
            raise TorchImportError(f"input {node.name} has symbolic shape {tuple(example.shape)}; "
                                   "heteropass imports static shapes only (compile with dynamic=False)")
        return TensorType.of(example)
    if isinstance(example, bool):
        return TensorType((), DType.bool)
    if isinstance(example, int):
        return TensorType((), DType.i64)
    if isinstance(example, float):
        return TensorType((), DType.f32)
    raise TorchImportError(f"input {node.name} is a {type(example).__name__}; expected a tensor or a number")
