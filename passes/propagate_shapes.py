"""Re-infer every value's type and put shape attributes in canonical form."""

from __future__ import annotations

from typing import Any

from ..ir import Graph, Node, OpError, TensorType, format_node, get_op
from .base import Pass, PassContext, PassResult

# Attributes naming one dimension of the first operand.
_DIM_ATTRS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("softmax", "log_softmax", "concat", "split", "slice", "index_select", "gather", "cumsum",
                     "argmax", "argmin"), ("dim",)),
    "transpose": ("dim0", "dim1"),
    "flatten": ("start_dim", "end_dim"),
}
# Attributes naming a dimension of the result, which has one more than the operand.
_NEW_DIM_ATTRS: dict[str, tuple[str, ...]] = {"unsqueeze": ("dim",), "stack": ("dim",)}
# Ops whose `dims` attribute lists dimensions of the operand.
_DIMS_OPS = frozenset({"permute", "squeeze", "sum", "mean", "amax", "amin", "prod", "any", "all", "var", "std"})


def _canonical_attrs(node: Node, results: list[TensorType]) -> dict[str, Any]:
    """The node's attributes with dims non-negative, -1 sizes resolved and slice bounds clamped."""
    attrs = dict(node.attrs)
    rank = node.inputs[0].type.rank if node.inputs else 0
    # torch wraps dims of a 0-d tensor as if it had one dimension.
    for name in _DIM_ATTRS.get(node.op, ()):
        if attrs[name] is not None:
            attrs[name] %= max(rank, 1)
    for name in _NEW_DIM_ATTRS.get(node.op, ()):
        attrs[name] %= rank + 1
    if node.op in _DIMS_OPS and attrs["dims"] is not None:
        attrs["dims"] = tuple(d % max(rank, 1) for d in attrs["dims"])
    if node.op in ("reshape", "expand"):
        attrs["shape"] = results[0].shape
    if node.op == "slice" and attrs["step"] > 0 and rank > 0:
        size = node.inputs[0].type.shape[attrs["dim"]]
        attrs["start"], attrs["end"], _ = slice(attrs["start"], attrs["end"], attrs["step"]).indices(size)
    return get_op(node.op).check_attrs(attrs)


class PropagateShapesPass(Pass):
    """Recompute each node's output types from its operands, in order, so types edited upstream
    reach every reader; and rewrite shape attributes canonically: negative dims made non-negative,
    -1 in reshape/expand shapes replaced by the size, slice bounds clamped to the dimension."""

    name = "propagate-shapes"
    opt_level = 0
    ensures = frozenset({"static-shapes"})

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        for value in graph.inputs:
            if not value.type.is_static:
                raise ValueError(f"{self.name} needs static input shapes; graph input %{value.name} is {value.type}")
        types_updated = attrs_canonicalized = 0
        for node in graph.nodes:
            opdef = get_op(node.op)
            try:
                results = opdef.infer([v.type for v in node.inputs], node.attrs)
                attrs = _canonical_attrs(node, results)
            except OpError as exc:
                raise OpError(f"{self.name}: `{format_node(node)}`: {exc}") from exc
            if attrs != node.attrs:
                # Canonical attributes mean the same thing; inference must agree.
                assert opdef.infer([v.type for v in node.inputs], attrs) == results, format_node(node)
                node.attrs = attrs
                attrs_canonicalized += 1
            for value, type in zip(node.outputs, results, strict=True):
                if value.type != type:
                    value.type = type
                    types_updated += 1
        return PassResult(graph, bool(types_updated or attrs_canonicalized),
                          {"types_updated": types_updated, "attrs_canonicalized": attrs_canonicalized})
