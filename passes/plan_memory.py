"""Memory planning: liveness of intermediate values, buffer reuse between values whose lifetimes do not
overlap, and in-place opportunities.

The plan works on *steps*: one step per node (the pass's view), or one per partition kernel (the
emitted module's view, see `backends/codegen.py`). A value is live from the step that produces it to
the last step that reads it; graph outputs live to the end. Graph inputs and constants are never planned.

Buffers are raw bytes: values of any dtype share one when their lifetimes are disjoint (the runtime
reinterprets the bytes, see `backends/memory.py`), so there is one pool, not one per dtype. Assignment is
greedy best-fit in step order: a value takes the smallest free buffer that holds it, else grows the
largest free buffer, else opens a new one. Sizes are rounded up to `ALIGN` bytes so that every typed
view starts aligned for any element type.

Aliasing is handled conservatively. View ops (reshape, permute, transpose, expand, squeeze, unsqueeze,
flatten, slice, split, cast to the same dtype) own no storage: their outputs share their input's.
Ops that may or may not return a view (opaque calls, einsum, indexing, other layout ops, reductions of
0-d tensors, regions whose body passes an input through) own storage *and* may share their inputs'.
A buffer stays live as long as any value that may share it, and storage that a graph output may
share is never pooled: the caller keeps outputs across calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..ir import Graph, Node, Value, get_op
from .base import Pass, PassContext, PassResult

ALIGN = 64

_VIEW_OPS = frozenset({"reshape", "permute", "transpose", "expand", "squeeze", "unsqueeze", "flatten", "slice",
                       "split", "bitcast"})
# Kinds whose reference implementations always return new storage (exceptions are handled in `_alias_rule`).
_FRESH_KINDS = frozenset({"elementwise", "reduction", "matmul", "conv", "norm", "softmax", "pool", "concat",
                          "creation", "attention", "scan"})


@dataclass(frozen=True)
class Step:
    """One unit of execution: `reads` are the values it takes from earlier steps (or graph inputs),
    `writes` the values later steps or the caller see, `nodes` what it computes."""

    nodes: tuple[Node, ...]
    reads: tuple[Value, ...]
    writes: tuple[Value, ...]


def node_steps(graph: Graph) -> list[Step]:
    """One step per node, in graph order."""
    return [Step((node,), tuple(dict.fromkeys(v for v in node.inputs if v.const is None)), tuple(node.outputs))
            for node in graph.nodes]


@dataclass
class MemoryPlan:
    """Which buffer each planned value lives in, and what that costs.

    `buffer_of` maps planned value names to buffer ids, `buffer_bytes` gives each buffer's size,
    `inplace` maps a value to the input whose buffer it overwrites, `live` gives the (first, last)
    step of every planned value. Byte counts: `unplanned_bytes` is every intermediate allocated
    separately (no reuse, nothing freed); `live_peak_bytes` the most bytes live at once when each
    value is freed after its last use; `peak_bytes` the most bytes held at once under this plan
    (the whole pool, plus unpooled values while live).
    """

    steps: int
    buffer_of: dict[str, int] = field(default_factory=dict)
    buffer_bytes: list[int] = field(default_factory=list)
    inplace: dict[str, str] = field(default_factory=dict)
    live: dict[str, tuple[int, int]] = field(default_factory=dict)
    unplanned_bytes: int = 0
    live_peak_bytes: int = 0
    peak_bytes: int = 0
    unsized: int = 0

    @property
    def pool_bytes(self) -> int:
        return sum(self.buffer_bytes)

    def sharing(self) -> list[list[str]]:
        """The values of each buffer, by buffer id, in the order they occupy it."""
        groups: list[list[str]] = [[] for _ in self.buffer_bytes]
        for name, buffer in self.buffer_of.items():
            groups[buffer].append(name)
        return groups

    def stats(self) -> dict[str, int]:
        """The statistics the pass reports (summary.json); `planned_bytes` is the pool's size."""
        return {"peak_bytes": self.peak_bytes, "unplanned_bytes": self.unplanned_bytes,
                "live_peak_bytes": self.live_peak_bytes, "planned_bytes": self.pool_bytes,
                "buffers": len(self.buffer_bytes), "planned_values": len(self.buffer_of),
                "inplace": len(self.inplace), "unsized_values": self.unsized}

    def describe(self) -> str:
        """`3 buffers, 1536 bytes for 5 values (1 in place); peak 2048 bytes, 4096 without planning`."""
        return (f"{len(self.buffer_bytes)} buffer{'s' if len(self.buffer_bytes) != 1 else ''}, {self.pool_bytes} "
                f"bytes for {len(self.buffer_of)} values ({len(self.inplace)} in place); peak {self.peak_bytes} "
                f"bytes, {self.unplanned_bytes} without planning")


def nbytes(value: Value) -> int | None:
    """The value's size in bytes, or None when its shape is symbolic."""
    if not value.type.is_static:
        return None
    return value.type.numel * value.type.dtype.torch.itemsize


def _aligned(size: int) -> int:
    return max(ALIGN, -(-size // ALIGN) * ALIGN)


def _alias_rule(node: Node) -> list[tuple[bool, tuple[int, ...]]]:
    """Per output: whether it may own storage, and which inputs' storage it may share."""
    everything = tuple(range(len(node.inputs)))
    opdef = get_op(node.op)
    if node.op in _VIEW_OPS or (node.op == "cast" and node.inputs[0].type.dtype == node.outputs[0].type.dtype):
        return [(False, (0,))] * len(node.outputs)
    if opdef.graph_attrs:
        return _region_alias_rule(node.attrs[opdef.graph_attrs[0]])
    may_alias = (opdef.kind not in _FRESH_KINDS or node.op == "einsum"
                 or (opdef.kind == "reduction" and any(v.type.rank == 0 for v in node.inputs)))
    return [(True, everything if may_alias else ())] * len(node.outputs)


def _region_alias_rule(body: Graph) -> list[tuple[bool, tuple[int, ...]]]:
    roots = storage_roots(body)
    position = {id(v): i for i, v in enumerate(body.inputs)}
    rules = []
    for value in body.outputs:
        shared = roots[id(value)]
        rules.append((any(r not in position for r in shared) or not shared,
                      tuple(sorted(position[r] for r in shared if r in position))))
    return rules


def storage_roots(graph: Graph, owners: Iterable[Value] = ()) -> dict[int, frozenset[int]]:
    """For every value (by id), the ids of the values whose storage it may share, itself included
    when it may own storage. `owners` are known to own fresh storage and share nothing (kernels
    that write into preallocated outputs)."""
    owned = {id(v) for v in owners}
    roots: dict[int, frozenset[int]] = {id(v): frozenset({id(v)}) for v in graph.inputs}
    roots.update((id(v), frozenset({id(v)})) for v in graph.constants.values())
    for node in graph.nodes:
        for value, (owns, shared) in zip(node.outputs, _alias_rule(node), strict=True):
            if id(value) in owned:
                roots[id(value)] = frozenset({id(value)})
                continue
            found = frozenset({id(value)}) if owns else frozenset()
            roots[id(value)] = found.union(*(roots[id(node.inputs[i])] for i in shared))
    return roots


def _elementwise(node: Node) -> bool:
    kind = get_op(node.op).kind
    return kind == "elementwise" or (kind == "fused" and node.attrs.get("kind") == "elementwise")


def plan_memory(graph: Graph, steps: Sequence[Step] | None = None, *, pooled: Iterable[Value] | None = None,
                inplace_steps: Iterable[int] | None = None) -> MemoryPlan:
    """Plan buffers for the values `steps` write (default: one step per node).

    `pooled` restricts which values may get a buffer (default: every written value that owns storage);
    they own fresh storage by definition. A value that is a graph output, or whose storage a graph
    output may share, or whose shape is symbolic, is never pooled. `inplace_steps` are the steps whose
    kernels may write an output into a dying input's buffer (default: all); only steps made of
    elementwise nodes and regions do.
    """
    steps = list(steps) if steps is not None else node_steps(graph)
    end = len(steps)
    pooled_ids = None if pooled is None else {id(v) for v in pooled}
    roots = storage_roots(graph, [] if pooled is None else pooled)
    values: dict[int, Value] = {}
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for index, step in enumerate(steps):
        for value in step.writes:
            values[id(value)] = value
            first[id(value)] = last[id(value)] = index
    # A storage owner lives until the last read of any value that may share its storage.
    for index, step in enumerate(steps):
        for value in step.reads:
            for root in roots[id(value)]:
                if root in last:
                    last[root] = max(last[root], index)
    escaping: set[int] = set()
    for value in graph.outputs:
        escaping |= roots[id(value)]
        for root in roots[id(value)]:
            if root in last:
                last[root] = end

    candidates = [values[r] for r in first if r in roots[r]]  # writes that own storage
    sizes = {id(v): nbytes(v) for v in candidates}
    plan = MemoryPlan(steps=end, unsized=sum(size is None for size in sizes.values()))
    plan.unplanned_bytes = sum(size for size in sizes.values() if size is not None)
    chosen = [v for v in candidates if sizes[id(v)] is not None and id(v) not in escaping
              and (pooled_ids is None or id(v) in pooled_ids)]
    chosen_ids = {id(v) for v in chosen}
    allowed = set(range(end) if inplace_steps is None else inplace_steps)
    elementwise = {i for i in allowed if all(_elementwise(n) for n in steps[i].nodes)}
    _assign(plan, steps, chosen, first, last, roots, elementwise)

    live_total = [0] * (end + 1)
    unpooled = [0] * (end + 1)
    for value in candidates:
        size = sizes[id(value)]
        if size is None:
            continue
        for index in range(first[id(value)], last[id(value)] + 1):
            live_total[index] += size
            if id(value) not in chosen_ids:
                unpooled[index] += size
    plan.live_peak_bytes = max(live_total)
    plan.peak_bytes = plan.pool_bytes + max(unpooled)
    plan.live = {v.name: (first[id(v)], last[id(v)]) for v in chosen}
    return plan


def _assign(plan: MemoryPlan, steps: list[Step], chosen: list[Value], first: dict[int, int], last: dict[int, int],
            roots: dict[int, frozenset[int]], inplace_steps: set[int]) -> None:
    """Greedy best-fit in step order; in-place writes take over their input's buffer."""
    by_step: dict[int, list[Value]] = {}
    dying: dict[int, list[Value]] = {}
    for value in chosen:
        by_step.setdefault(first[id(value)], []).append(value)
        dying.setdefault(last[id(value)], []).append(value)
    buffer_of: dict[int, int] = {}
    free: list[int] = []
    for index, step in enumerate(steps):
        taken: set[int] = set()
        for value in by_step.get(index, []):
            source = _inplace_source(value, step, index, buffer_of, last, roots) if index in inplace_steps else None
            if source is not None and id(source) not in taken:
                taken.add(id(source))
                buffer_of[id(value)] = buffer_of[id(source)]
                plan.inplace[value.name] = source.name
                continue
            buffer_of[id(value)] = _best_fit(plan.buffer_bytes, free, _aligned(nbytes(value) or 0))
        free += [buffer_of[id(v)] for v in dying.get(index, []) if id(v) not in taken]
        plan.buffer_of.update((v.name, buffer_of[id(v)]) for v in by_step.get(index, []))


def _inplace_source(value: Value, step: Step, index: int, buffer_of: dict[int, int], last: dict[int, int],
                    roots: dict[int, frozenset[int]]) -> Value | None:
    """A pooled input of the step that dies here, has `value`'s type, and that no other value read
    here may view (an elementwise kernel reads each element before it writes the same element)."""
    for source in step.reads:
        if (id(source) in buffer_of and last[id(source)] == index and source.type == value.type
                and not any(id(source) in roots[id(other)] for other in step.reads if other is not source)):
            return source
    return None


def _best_fit(sizes: list[int], free: list[int], size: int) -> int:
    fitting = [b for b in free if sizes[b] >= size]
    if fitting:
        buffer = min(fitting, key=lambda b: (sizes[b], b))
    elif free:
        buffer = max(free, key=lambda b: (sizes[b], -b))
        sizes[buffer] = size
    else:
        sizes.append(size)
        return len(sizes) - 1
    free.remove(buffer)
    return buffer


class PlanMemoryPass(Pass):
    """Report the memory plan of the graph: peak bytes with and without buffer reuse, buffers, in-place
    writes. The graph is unchanged; the emitted module makes its own plan over its kernels at build time."""

    name = "plan-memory"
    opt_level = 2

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult(graph, False, plan_memory(graph).stats())
