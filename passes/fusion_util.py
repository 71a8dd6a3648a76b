"""Shared machinery of the fusion passes: growing cycle-free node sets, collapsing a set into one
`fused` region node, and checking a region against the contract of its kind (ir/ops/fused.py).

A set of nodes can become one node only if it is convex: no path leaves the set and comes back,
since the region would then have to run both before and after the nodes on that path.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence

from ..ir import Graph, Node, Value, format_node, get_op
from ..ir.printer import INLINE_CONST_LIMIT
from ..ir.types import Dim

GEMM_OPS = ("linear", "matmul", "conv")
KINDS = ("elementwise", "reduction", "gemm", "generic")
_ROW_REDUCTIONS = ("sum", "mean", "amax", "amin", "var", "std", "prod", "any", "all")
_ROW_NORMS = ("layer_norm", "rms_norm")
_ROW_SOFTMAXES = ("softmax", "log_softmax")

Shape = tuple[Dim, ...]


class RegionContractError(ValueError):
    """A `fused` node whose body breaks the contract of its kind; the message names the node."""


# -- node classification ------------------------------------------------------------------------
# Elementwise in shape, but an element's result depends on its position: kernels see values, not positions.
_POSITIONAL = ("tril", "triu")


def is_elementwise(node: Node) -> bool:
    return get_op(node.op).kind == "elementwise" and node.op not in _POSITIONAL


def reduced_axis(node: Node) -> int | None:
    """The dimension of its first operand that `node` reduces over, if it is a reduction a "reduction"
    region may hold: sum/mean/amax/amin/var/std/prod/any/all over one dim, softmax/log_softmax, layer_norm/rms_norm over
    the last dim. None for other nodes."""
    rank = node.inputs[0].type.rank if node.inputs else 0
    if rank == 0:
        return None
    if node.op in _ROW_REDUCTIONS:
        dims = node.attrs["dims"]
        return dims[0] % rank if dims is not None and len(dims) == 1 else None
    if node.op in _ROW_SOFTMAXES:
        return node.attrs["dim"] % rank
    if node.op in _ROW_NORMS and len(node.attrs["normalized_shape"]) == 1:
        return rank - 1
    return None


def row_shapes(shape: Shape, axis: int) -> tuple[Shape, Shape, Shape]:
    """The shapes a region reducing `shape` S over dim `axis` works with: S itself, S reduced with
    keepdim (dim `axis` 1) and S reduced without it."""
    return shape, (*shape[:axis], 1, *shape[axis + 1:]), (*shape[:axis], *shape[axis + 1:])


def broadcast_shapes(shapes: Iterable[Shape]) -> Shape | None:
    """The broadcast of `shapes` (symbolic dims must match exactly), or None if they do not broadcast."""
    result: list[Dim] = []
    for shape in shapes:
        if len(shape) > len(result):
            result = [1] * (len(shape) - len(result)) + result
        for i, dim in enumerate(shape, start=len(result) - len(shape)):
            if result[i] == 1:
                result[i] = dim
            elif dim != 1 and dim != result[i]:
                return None
    return tuple(result)


def is_live(graph: Graph, node: Node) -> bool:
    """True when some output of `node` is read or returned (dead nodes are left to eliminate-dead-code)."""
    return any(v.uses or graph.is_output(v) for v in node.outputs)


# -- convexity ------------------------------------------------------------------------------------
def positions(graph: Graph) -> dict[Node, int]:
    return {node: i for i, node in enumerate(graph.nodes)}


def is_convex(nodes: Iterable[Node], position: dict[Node, int]) -> bool:
    """True when no path leaves `nodes` and comes back into them (`position`: topological index).

    The walk stops at nodes after the last member: nothing there can reach back into the set.
    """
    members = set(nodes)
    last = max(position[n] for n in members)
    stack = [user for node in members for v in node.outputs for user in v.users if user not in members]
    seen: set[Node] = set()
    while stack:
        node = stack.pop()
        if node in seen or position[node] > last:
            continue
        seen.add(node)
        for value in node.outputs:
            for user in value.users:
                if user in members:
                    return False
                stack.append(user)
    return True


def grow_region(seed: Node, accept: Callable[[Node, dict[Node, None]], bool], position: dict[Node, int],
                producers: bool = True, consumers: bool = True) -> list[Node]:
    """Grow a convex node set from `seed` over data edges, in a deterministic breadth-first order.

    A neighbor (a producer and/or consumer of a member) joins when `accept(neighbor, region)` holds
    and the region stays convex. A neighbor refused once is tried again whenever another of its
    neighbors joins, since a larger region can make it acceptable (all its users now inside) or
    convex (the diamond's other branch now inside). Returns the members in topological order.
    """
    region: dict[Node, None] = {seed: None}  # an ordered set: iteration order must not depend on ids
    frontier = deque([seed])
    while frontier:
        node = frontier.popleft()
        neighbors: list[Node] = []
        if producers:
            neighbors += [v.producer for v in node.inputs if v.producer is not None]
        if consumers:
            neighbors += [user for v in node.outputs for user in v.users]
        for neighbor in dict.fromkeys(neighbors):
            if neighbor in region or not accept(neighbor, region):
                continue
            if is_convex([*region, neighbor], position):
                region[neighbor] = None
                frontier.append(neighbor)
    return sorted(region, key=position.__getitem__)


# -- building a region ----------------------------------------------------------------------------
def _inlined(value: Value, reader: Node) -> bool:
    """Small constants are copied into the body (a backend can bake them into the kernel), except
    the operands of a gemm, which the "gemm" contract wants as body inputs."""
    return value.const is not None and value.const.numel() <= INLINE_CONST_LIMIT and reader.op not in GEMM_OPS


def fuse_nodes(graph: Graph, nodes: Sequence[Node], kind: str) -> Node:
    """Replace `nodes` (a convex set) by one `fused` node with a body graph of those nodes.

    Body inputs are the values the nodes read from outside (graph inputs, other nodes' outputs and
    constants too large to copy; small constants are copied in, and dropped outside when no longer
    read there); body outputs are the values read outside or returned, which the
    fused node's outputs replace under the same names. The fused node takes the last member's place;
    nodes in between that depend on the region move after it.
    """
    position = positions(graph)
    members = sorted(dict.fromkeys(nodes), key=position.__getitem__)
    member_set = set(members)
    if not is_convex(members, position):
        raise ValueError(f"cannot fuse {[format_node(n) for n in members]}: a path leaves the set and comes back")
    body = Graph(f"{kind}_{members[-1].outputs[0].name}")
    mapping: dict[int, Value] = {}
    operands: list[Value] = []
    outputs: list[Value] = []
    for node in members:
        for value in node.inputs:
            if id(value) in mapping:
                continue
            if _inlined(value, node):
                assert value.const is not None
                mapping[id(value)] = body.add_constant(value.name, value.const)
            else:
                mapping[id(value)] = body.add_input(value.name, value.type)
                operands.append(value)
        copy = body.add_node(node.op, [mapping[id(v)] for v in node.inputs], node.attrs,
                             output_types=[v.type for v in node.outputs], names=[v.name for v in node.outputs],
                             source=node.source)
        mapping.update((id(old), new) for old, new in zip(node.outputs, copy.outputs, strict=True))
        outputs += [v for v in node.outputs if graph.is_output(v) or any(u not in member_set for u in v.users)]
    body.set_outputs(mapping[id(v)] for v in outputs)
    devices = {node.device for node in members}
    fused = graph.add_node("fused", operands, {"body": body, "kind": kind}, output_types=[v.type for v in outputs],
                           device=devices.pop() if len(devices) == 1 else None)
    _place(graph, fused, members, position)
    for old, new in zip(outputs, fused.outputs, strict=True):
        graph.replace_all_uses(old, new)
    for node in reversed(members):
        graph.remove_node(node)
    for old, new in zip(outputs, fused.outputs, strict=True):
        new.name = graph.fresh_name(old.name)  # remove_node released the name
    for value in body.constants.values():
        outer = graph.constants.get(value.name)
        if outer is not None and not outer.uses and not graph.is_output(outer):
            graph.remove_constant(outer)  # copied into the body; nothing outside reads it any more
    return fused


def _place(graph: Graph, fused: Node, members: list[Node], position: dict[Node, int]) -> None:
    """Order `graph.nodes` so `fused` follows the last member and precedes every node between the
    members that depends on them (convexity guarantees those feed no member)."""
    first, last = position[members[0]], position[members[-1]]
    member_set = set(members)
    dependent: set[Node] = set()
    for node in graph.nodes[first:last + 1]:
        if node not in member_set and any(v.producer in member_set or v.producer in dependent for v in node.inputs):
            dependent.add(node)
    window = graph.nodes[first:last + 1]
    graph.nodes[:] = (graph.nodes[:first] + [n for n in window if n not in dependent] + [fused]
                      + [n for n in window if n in dependent] + graph.nodes[last + 1:-1])


# -- the kind contracts ---------------------------------------------------------------------------
def region_contract_violation(body: Graph, kind: str) -> str | None:
    """Why `body` breaks the contract of region `kind` (ir/ops/fused.py), or None when it keeps it."""
    if kind not in KINDS:
        return f"unknown region kind {kind!r} (known: {', '.join(KINDS)})"
    if not body.nodes:
        return "the body has no nodes"
    if any(v.producer is None for v in body.outputs):
        return "a body output is not computed by a body node"
    if kind == "elementwise":
        return _elementwise_violation(body)
    if kind == "reduction":
        return _reduction_violation(body)
    if kind == "gemm":
        return _gemm_violation(body)
    return None


def check_region_contract(node: Node) -> None:
    """Raise RegionContractError, naming `node`, unless its body keeps the contract of its kind."""
    if node.op != "fused":
        raise RegionContractError(f"`{format_node(node)}` is not a fused region")
    problem = region_contract_violation(node.attrs["body"], node.attrs["kind"])
    if problem is not None:
        raise RegionContractError(f"region `{format_node(node)}` of kind {node.attrs['kind']!r}: {problem}")


def _not_elementwise(nodes: Iterable[Node]) -> str | None:
    for node in nodes:
        if not is_elementwise(node):
            return f"`{format_node(node)}` is not elementwise"
    return None


def _elementwise_violation(body: Graph) -> str | None:
    problem = _not_elementwise(body.nodes)
    if problem is not None:
        return problem
    shape = broadcast_shapes(v.type.shape for v in [*body.inputs, *body.constants.values()])
    for value in body.outputs:
        if value.type.shape != shape:
            return f"output %{value.name}: {value.type} does not have the iteration shape {list(shape or ())}"
    return None


def _reduction_violation(body: Graph) -> str | None:
    reductions = [n for n in body.nodes if not is_elementwise(n)]
    if not reductions:
        return "the body has no reduction"
    for node in reductions:
        if reduced_axis(node) is None:
            return f"`{format_node(node)}` is neither elementwise nor a reduction over one dimension"
    shape, axis = reductions[0].inputs[0].type.shape, reduced_axis(reductions[0])
    full, kept, dropped = row_shapes(shape, axis)
    for node in reductions:
        if node.inputs[0].type.shape != shape or reduced_axis(node) != axis:
            return (f"`{format_node(node)}` reduces dim {reduced_axis(node)} of {list(node.inputs[0].type.shape)}, "
                    f"not dim {axis} of {list(shape)}")
    for node in body.nodes:
        if node in reductions:
            continue
        out = node.output.type.shape
        if out not in (full, kept, dropped):
            return f"`{format_node(node)}` is over {list(out)}, not over rows of {list(shape)}"
        # A reduced value without keepdim aligns with the leading dims only when broadcast against itself.
        inner = [v.type.shape for v in node.inputs if v.producer is not None]
        allowed = (dropped,) if out == dropped and len(shape) > 1 else (full, kept)
        if len(shape) > 1 and any(s not in allowed for s in inner):
            return f"`{format_node(node)}` mixes row shapes {[list(s) for s in inner]} of the region"
    return None


def _gemm_violation(body: Graph) -> str | None:
    gemm, *epilogue = body.nodes
    if gemm.op not in GEMM_OPS:
        return f"the first node `{format_node(gemm)}` is not {', '.join(GEMM_OPS)}"
    if any(v.producer is not None or v.is_constant for v in gemm.inputs):
        return f"the operands of `{format_node(gemm)}` are not all body inputs"
    problem = _not_elementwise(epilogue)
    if problem is not None:
        return problem
    shape = gemm.output.type.shape
    for node in epilogue:
        if node.output.type.shape != shape:
            return f"`{format_node(node)}` is not over the product's shape {list(shape)}"
    return None
