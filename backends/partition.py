"""Capability-based partitioning: backends claim nodes, claimed nodes merge into cycle-free partitions.

Each node goes to the first backend (in priority order) whose `supports(node)` is true. Walking the
nodes in topological order, a node joins a partition of its backend, preferring one that feeds it,
unless that would make the partitions cyclic: joining P is refused when the node reads a value from
another partition that itself depends on P (the diamond `P -> Q -> n` with `P -> n`), since P would
then have to run both before and after Q.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..ir import Graph, Node, Value, format_node
from .base import Backend


class PartitionError(Exception):
    """No backend claims a node; the message names it."""


@dataclass(eq=False)
class Partition:
    """Nodes (in topological order) that one backend compiles into one kernel.

    `inputs` are the values it reads from outside (graph inputs and other partitions' outputs;
    constants stay inside), `outputs` the values it produces that are read outside or returned.
    """

    index: int
    backend: Backend
    nodes: list[Node]
    inputs: list[Value]
    outputs: list[Value]

    @property
    def name(self) -> str:
        return f"{self.backend.name}_{self.index}"

    def subgraph(self) -> Graph:
        """A standalone graph of this partition; constant tensors are shared, not copied."""
        graph = Graph(self.name)
        mapping = {id(v): graph.add_input(v.name, v.type) for v in self.inputs}
        for node in self.nodes:
            for value in node.inputs:
                if value.const is not None and id(value) not in mapping:
                    mapping[id(value)] = graph.add_constant(value.name, value.const)
            copy = graph.add_node(node.op, [mapping[id(v)] for v in node.inputs], node.attrs,
                                  output_types=[v.type for v in node.outputs],
                                  names=[v.name for v in node.outputs], device=node.device, source=node.source)
            mapping.update((id(old), new) for old, new in zip(node.outputs, copy.outputs, strict=True))
        graph.set_outputs(mapping[id(v)] for v in self.outputs)
        return graph

    def __repr__(self) -> str:
        return f"Partition({self.name}, {len(self.nodes)} nodes, {len(self.inputs)} in, {len(self.outputs)} out)"


@dataclass(eq=False)
class _Group:
    """A partition under construction; `deps` holds every group it depends on, transitively."""

    order: int
    backend: Backend
    nodes: list[Node] = field(default_factory=list)
    deps: set[int] = field(default_factory=set)


def partition(graph: Graph, backends: Sequence[Backend]) -> list[Partition]:
    """Split `graph` into partitions in an executable order; sets each node's `device`."""
    if not backends:
        raise PartitionError("partition needs at least one backend")
    groups: list[_Group] = []
    group_of: dict[int, _Group] = {}
    for position, node in enumerate(graph.nodes):
        backend = _claim(node, position, backends)
        feeding = list(dict.fromkeys(group_of[id(v.producer)] for v in node.inputs if v.producer is not None))
        # Prefer the groups that feed the node, then any other group of its backend, newest first.
        candidates = [g for g in reversed(feeding) if g.backend is backend]
        candidates += [g for g in reversed(groups) if g.backend is backend and g not in candidates]
        target = next((g for g in candidates if all(g is f or g.order not in f.deps for f in feeding)), None)
        if target is None:
            target = _Group(len(groups), backend)
            groups.append(target)
        added = set().union(*({f.order} | f.deps for f in feeding if f is not target)) - target.deps
        if added:
            target.deps |= added
            for group in groups:
                if target.order in group.deps:
                    group.deps |= added
        target.nodes.append(node)
        group_of[id(node)] = target
        node.device = backend.device
    return [_finish(graph, i, group, group_of) for i, group in enumerate(_schedule(groups))]


def _claim(node: Node, position: int, backends: Sequence[Backend]) -> Backend:
    for backend in backends:
        if backend.supports(node):
            return backend
    tried = ", ".join(b.name for b in backends)
    raise PartitionError(f"no backend supports node {position} `{format_node(node)}` (tried: {tried}); "
                         f"end the backend list with one that runs anything, such as ReferenceBackend")


def _schedule(groups: list[_Group]) -> list[_Group]:
    """Groups in dependency order; among ready groups, the one created first runs first."""
    done: set[int] = set()
    order: list[_Group] = []
    pending = list(groups)
    while pending:
        ready = next(g for g in pending if g.deps <= done)
        pending.remove(ready)
        done.add(ready.order)
        order.append(ready)
    return order


def _finish(graph: Graph, index: int, group: _Group, group_of: dict[int, _Group]) -> Partition:
    inputs: dict[int, Value] = {}
    outputs: list[Value] = []
    returned = {id(v) for v in graph.outputs}
    for node in group.nodes:
        for value in node.inputs:
            if value.const is None and (value.producer is None or group_of[id(value.producer)] is not group):
                inputs.setdefault(id(value), value)
        for value in node.outputs:
            if id(value) in returned or any(group_of[id(user)] is not group for user, _ in value.uses):
                outputs.append(value)
    return Partition(index, group.backend, group.nodes, list(inputs.values()), outputs)
