"""In-place ATen ops of an undecomposed torch.export graph that lower as their out-of-place form.

torch.export's graph keeps `out += x`, `nn.ReLU(inplace=True)` and `x[:, 1:] = y` as `add_`, `relu_` and
`copy_` of a slice. Where the tensor written was made in the graph by an op that returns a new tensor, the
write is the out-of-place op whose result replaces that tensor for every later reader; a write through
`slice`/`select` views of it scatters the view's new value back (`slice_scatter`, `select_scatter`). That is
exact unless a view made before a write is read after it (it would show the write): then, as for writes
into inputs, torch.export's decompositions functionalize the graph instead.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx

aten = torch.ops.aten


class InPlaceError(Exception):
    """An in-place op that only functionalization can lower (the message says which and why)."""


@dataclass(frozen=True)
class InPlaceWrite:
    """An in-place node's lowering: `functional` computes the new value of `views[-1]` (of `root` when there
    are no views), and `views` (slice/select nodes, outermost first) lead from `root` to what it writes."""

    root: fx.Node
    functional: torch._ops.OpOverload
    views: tuple[fx.Node, ...] = ()


def out_of_place(op: torch._ops.OpOverload) -> torch._ops.OpOverload | None:
    """`aten.add.Tensor` for `aten.add_.Tensor`: the op computing what `op` writes into its first
    argument, where `op` writes that argument only and returns it, else None."""
    schema = op._schema
    written = [a for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
    name = schema.name.split("::")[-1]
    if (written != schema.arguments[:1] or len(schema.returns) != 1 or not name.endswith("_")
            or name.startswith("_")):
        return None
    candidate = getattr(getattr(aten, name[:-1], None), op._overloadname, None)
    if candidate is None or _aliases(candidate) or candidate._schema.is_mutable:
        return None
    same = [a.name for a in candidate._schema.arguments] == [a.name for a in schema.arguments]
    return candidate if same else None


# Ops whose schema promises a new tensor but which return their input itself: type_as when the dtypes
# match, the dropouts in eval mode.
_RETURN_THEIR_INPUT = frozenset({aten.type_as.default, aten.dropout.default, aten.feature_dropout.default,
                                 aten.alpha_dropout.default, aten.feature_alpha_dropout.default})


def _aliases(op: torch._ops.OpOverload) -> bool:
    """Whether `op` returns a view of (or the same tensor as) an argument."""
    return op in _RETURN_THEIR_INPUT or any(r.alias_info is not None for r in op._schema.returns)


def _is_op(node: fx.Node) -> bool:
    return node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)


def _is_write(node: fx.Node) -> bool:
    return _is_op(node) and node.target._schema.is_mutable and node.target is not aten.detach_.default


def _is_view(node: fx.Node) -> bool:
    """A node whose result shares memory with an argument: an aliasing op, or an item of one's results."""
    if node.target is operator.getitem:
        return isinstance(node.args[0], fx.Node) and _is_view(node.args[0])
    return _is_op(node) and _aliases(node.target)


def _scatterable(node: fx.Node) -> bool:
    """A view whose new value the lowering scatters back (`slice_scatter`, `select_scatter`)."""
    return node.target in (aten.select.int, aten.slice.Tensor)


def _write_only_views(graph: fx.Graph) -> set[fx.Node]:
    """The `slice`/`select` nodes read only as the target of in-place writes, or by other such views: what
    the lowering recomputes from the written tensor at each write."""
    found: set[fx.Node] = set()
    for node in reversed(graph.nodes):
        if not (_is_op(node) and _scatterable(node) and node.users):
            continue
        if all(user in found or (_is_write(user) and user.args[0] is node
                                 and node not in (*user.args[1:], *user.kwargs.values()))
               for user in node.users):
            found.add(node)
    return found


def _last_reads(graph: fx.Graph, order: dict[fx.Node, int]) -> dict[fx.Node, int]:
    """For each view and write node, the position of the last node that reads its result or a view of it
    (a write through it reads it, and its own result is that view again)."""
    last: dict[fx.Node, int] = {}
    for node in reversed(graph.nodes):
        if _is_view(node) or _is_write(node):
            last[node] = max((last[u] if u in last and (not _is_write(u) or u.args[0] is node) else order[u]
                              for u in node.users), default=order[node])
    return last


def _region(views: tuple[fx.Node, ...]) -> tuple:
    """What a chain of views selects from its root, comparable between chains."""
    return tuple((view.target, view.args[1:], tuple(view.kwargs.items())) for view in views)


def in_place_writes(graph: fx.Graph) -> dict[fx.Node, InPlaceWrite]:
    """Each in-place node and how it lowers out of place.

    Raises `InPlaceError` for a write out-of-place lowering would get wrong: of an op without an
    out-of-place form, into an input or a view other than a `slice`/`select` chain, or into a tensor a view
    of which is read after the write although made before it, or read by the write itself (unless it
    views the very part written: `y[:, 1:3] += 1`)."""
    writes: dict[fx.Node, InPlaceWrite] = {}
    write_only = _write_only_views(graph)
    order = {node: i for i, node in enumerate(graph.nodes)}
    writes_into: dict[fx.Node, list[fx.Node]] = {}
    view_base: dict[fx.Node, fx.Node] = {}  # each read view: the tensor (or view) it views
    for node in graph.nodes:
        if _is_write(node):
            functional = out_of_place(node.target)
            if functional is None:
                raise InPlaceError(f"{node.target} writes its operands")
            views: list[fx.Node] = []
            written = node.args[0]
            while written in write_only:
                views.insert(0, written)
                written = written.args[0]
            if written in writes and writes[written].views:
                raise InPlaceError(f"{node.target} writes through {written}, the view an earlier write returned")
            root = writes[written].root if written in writes else written
            if not (isinstance(root, fx.Node) and _is_op(root) and not _aliases(root.target)):
                raise InPlaceError(f"{node.target} writes {written}, an input or a view")
            writes[node] = InPlaceWrite(root, functional, tuple(views))
            writes_into.setdefault(root, []).append(node)
            if views and node.users:  # its result is the view written, read later
                view_base[node] = root
        elif node not in write_only and _is_view(node) and isinstance(node.args[0], fx.Node):
            view_base[node] = node.args[0]
    last_read = _last_reads(graph, order)
    for view, base in view_base.items():
        while base in view_base and base not in writes:
            base = view_base[base]
        root = writes[base].root if base in writes else base
        for write in writes_into.get(root, ()):
            same_part = view in writes and _region(writes[view].views) == _region(writes[write].views)
            if order[view] < order[write] < last_read[view] or (
                    order[write] == last_read[view] and not same_part):
                raise InPlaceError(f"{write.target} writes {root.name}, which the view {view.name} made before "
                                   "it reads " + ("after it" if order[write] < last_read[view] else "as it writes"))
    return writes
