"""In-place ATen ops of an undecomposed torch.export graph that lower as their out-of-place form.

torch.export's graph keeps `out += x` and `nn.ReLU(inplace=True)` as `add_` and `relu_`. Where the
tensor written was made in the graph by an op that returns a new tensor, and nothing views it (a view
would show the write), the write is the out-of-place op whose result replaces the tensor for every
later reader. Anything else is left to torch.export's decompositions, which functionalize it.
"""

from __future__ import annotations

import torch
import torch.fx as fx

aten = torch.ops.aten


class InPlaceError(Exception):
    """An in-place op that only functionalization can lower (the message says which and why)."""


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


def in_place_writes(graph: fx.Graph) -> dict[fx.Node, tuple[fx.Node, torch._ops.OpOverload]]:
    """Each in-place node: the node that made the tensor it writes, and its out-of-place op.

    Raises `InPlaceError` for a write out-of-place lowering would get wrong: of an op without an
    out-of-place form, into an input or a view, or into a tensor that some node views."""
    writes: dict[fx.Node, tuple[fx.Node, torch._ops.OpOverload]] = {}
    viewed: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        if node.target is aten.detach_.default:
            continue  # changes autograd metadata, not data: its rule returns the tensor itself
        if node.target._schema.is_mutable:
            functional = out_of_place(node.target)
            if functional is None:
                raise InPlaceError(f"{node.target} writes its operands")
            written = node.args[0]
            root = writes[written][0] if written in writes else written
            if not (isinstance(root, fx.Node) and root.op == "call_function"
                    and isinstance(root.target, torch._ops.OpOverload) and not _aliases(root.target)):
                raise InPlaceError(f"{node.target} writes {written}, an input or a view")
            writes[node] = (root, functional)
        elif _aliases(node.target):
            for arg in node.all_input_nodes:
                viewed.add(writes[arg][0] if arg in writes else arg)
    for node, (root, _) in writes.items():
        if root in viewed:
            raise InPlaceError(f"{node.target} writes {root.name}, which a view reads")
    return writes
