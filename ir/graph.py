"""The IR: a `Graph` of `Node`s in topological order, connected by SSA `Value`s with use lists."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from .types import TensorType


class Value:
    """An SSA value: a graph input, a constant, or one output of a node.

    `uses` lists every `(node, input_index)` that reads the value; the graph keeps it current.
    """

    __slots__ = ("const", "index", "name", "producer", "type", "uses")

    def __init__(self, name: str, type: TensorType, producer: Node | None = None, index: int = 0,
                 const: torch.Tensor | None = None) -> None:
        self.name = name
        self.type = type
        self.producer = producer
        self.index = index
        self.const = const
        self.uses: list[tuple[Node, int]] = []

    @property
    def is_constant(self) -> bool:
        return self.const is not None

    @property
    def users(self) -> list[Node]:
        """The distinct nodes that read this value, in use order."""
        return list(dict.fromkeys(node for node, _ in self.uses))

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node:
    """One operation: `op` applied to `inputs` with typed `attrs`, producing `outputs`.

    `device` is set by partitioning (`"cpu"`, `"cuda"`); `source` records where the op came from
    in the user's program, for messages.
    """

    __slots__ = ("attrs", "device", "graph", "inputs", "op", "outputs", "source")

    def __init__(self, op: str, attrs: dict[str, Any], device: str | None = None,
                 source: str | None = None) -> None:
        self.op = op
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.attrs = attrs
        self.device = device
        self.source = source
        self.graph: Graph | None = None

    @property
    def name(self) -> str:
        """A node is named by its first output (`%linear_1 = linear(...)` is node "linear_1"), as the
        dumps show it; precision overrides (`keep_nodes`) and pass notes use this name."""
        return self.outputs[0].name

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise ValueError(f"node {self.op} has {len(self.outputs)} outputs; use .outputs")
        return self.outputs[0]

    def set_input(self, index: int, value: Value) -> None:
        old = self.inputs[index]
        old.uses.remove((self, index))
        self.inputs[index] = value
        value.uses.append((self, index))

    def __repr__(self) -> str:
        from .printer import format_node

        return format_node(self)


class Graph:
    """A function: typed inputs, named constants, nodes in topological order, and outputs."""

    def __init__(self, name: str = "main") -> None:
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.constants: dict[str, Value] = {}
        self.nodes: list[Node] = []
        self._names: set[str] = set()
        self._counter = 0

    # -- names -------------------------------------------------------------------------------
    def fresh_name(self, hint: str | None = None) -> str:
        """A value name unused in this graph: `hint` if free, else the next number."""
        if hint is not None and hint not in self._names:
            self._names.add(hint)
            return hint
        while str(self._counter) in self._names:
            self._counter += 1
        name = str(self._counter)
        self._names.add(name)
        self._counter += 1
        return name

    # -- building ----------------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> Value:
        value = Value(self.fresh_name(name), type)
        self.inputs.append(value)
        return value

    def add_constant(self, name: str, tensor: torch.Tensor) -> Value:
        tensor = tensor.detach()
        value = Value(self.fresh_name(name), TensorType.of(tensor), const=tensor)
        self.constants[value.name] = value
        return value

    def add_node(self, op: str, inputs: Sequence[Value], attrs: dict[str, Any] | None = None, *,
                 output_types: Sequence[TensorType] | None = None, names: Sequence[str] | None = None,
                 before: Node | None = None, after: Node | None = None, device: str | None = None,
                 source: str | None = None) -> Node:
        """Create a node and insert it (at the end, or `before`/`after` a given node).

        Attributes are checked against the op's schema and completed with defaults; output types
        are inferred unless given.
        """
        from .ops import get_op

        opdef = get_op(op)
        attrs = opdef.check_attrs(dict(attrs or {}), context=op)
        if output_types is None:
            output_types = opdef.infer([v.type for v in inputs], attrs)
        node = Node(op, attrs, device=device, source=source)
        for i, value in enumerate(inputs):
            node.inputs.append(value)
            value.uses.append((node, i))
        for i, type in enumerate(output_types):
            hint = names[i] if names is not None else None
            node.outputs.append(Value(self.fresh_name(hint), type, producer=node, index=i))
        self._insert(node, before=before, after=after)
        return node

    def call(self, op: str, *inputs: Value, before: Node | None = None, **attrs: Any) -> Value:
        """Shorthand for a single-output `add_node`: `g.call("add", a, b)`."""
        return self.add_node(op, inputs, attrs, before=before).output

    def _insert(self, node: Node, *, before: Node | None, after: Node | None) -> None:
        node.graph = self
        if before is not None:
            self.nodes.insert(self.nodes.index(before), node)
        elif after is not None:
            self.nodes.insert(self.nodes.index(after) + 1, node)
        else:
            self.nodes.append(node)

    def set_outputs(self, outputs: Iterable[Value]) -> None:
        self.outputs = list(outputs)

    # -- editing -----------------------------------------------------------------------------
    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Point every reader of `old` (nodes and graph outputs) at `new`."""
        for node, index in list(old.uses):
            node.set_input(index, new)
        self.outputs = [new if v is old else v for v in self.outputs]

    def remove_node(self, node: Node) -> None:
        """Remove a node whose outputs are unused."""
        for value in node.outputs:
            if value.uses or any(v is value for v in self.outputs):
                raise ValueError(f"cannot remove {node!r}: output %{value.name} is still used")
        for i, value in enumerate(node.inputs):
            value.uses.remove((node, i))
        self.nodes.remove(node)
        for value in node.outputs:
            self._names.discard(value.name)
        node.graph = None

    def remove_dead(self, nodes: Iterable[Node]) -> None:
        """Remove whichever of `nodes` are dead (no output used or returned), then whatever only they
        kept alive: producers and constants left without readers."""
        stack = sorted(set(nodes), key=self.nodes.index)
        while stack:
            node = stack.pop()
            if node.graph is not self or any(v.uses or self.is_output(v) for v in node.outputs):
                continue
            operands = list(node.inputs)
            self.remove_node(node)
            for value in operands:
                if value.producer is not None:
                    stack.append(value.producer)
                elif self.constants.get(value.name) is value and not value.uses and not self.is_output(value):
                    self.remove_constant(value)

    def remove_constant(self, value: Value) -> None:
        """Remove a constant nothing reads."""
        if value.uses or self.is_output(value):
            raise ValueError(f"cannot remove constant %{value.name}: it is still used")
        del self.constants[value.name]
        self._names.discard(value.name)

    def remove_unused_constants(self) -> int:
        unused = [v for v in self.constants.values() if not v.uses and not self.is_output(v)]
        for value in unused:
            self.remove_constant(value)
        return len(unused)

    def is_output(self, value: Value) -> bool:
        return any(v is value for v in self.outputs)

    # -- queries -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Node]:
        return iter(list(self.nodes))

    def __len__(self) -> int:
        return len(self.nodes)

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.op] = counts.get(node.op, 0) + 1
        return dict(sorted(counts.items()))

    def values(self) -> Iterator[Value]:
        yield from self.inputs
        yield from self.constants.values()
        for node in self.nodes:
            yield from node.outputs

    def clone(self) -> Graph:
        """A structural copy (nested graphs of region ops too); constant tensors are shared, not copied."""
        new = Graph(self.name)
        new._counter = self._counter
        mapping: dict[int, Value] = {}
        for v in self.inputs:
            mapping[id(v)] = new.add_input(v.name, v.type)
        for v in self.constants.values():
            c = Value(new.fresh_name(v.name), v.type, const=v.const)
            new.constants[c.name] = c
            mapping[id(v)] = c
        for node in self.nodes:
            attrs = {k: v.clone() if isinstance(v, Graph) else v for k, v in node.attrs.items()}
            copy = Node(node.op, attrs, device=node.device, source=node.source)
            for i, v in enumerate(node.inputs):
                src = mapping[id(v)]
                copy.inputs.append(src)
                src.uses.append((copy, i))
            for v in node.outputs:
                out = Value(new.fresh_name(v.name), v.type, producer=copy, index=v.index)
                copy.outputs.append(out)
                mapping[id(v)] = out
            copy.graph = new
            new.nodes.append(copy)
        new.outputs = [mapping[id(v)] for v in self.outputs]
        return new

    def __str__(self) -> str:
        from .printer import format_graph

        return format_graph(self)
