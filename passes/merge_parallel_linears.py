"""merge-parallel-linears: linears that read the same input with constant weights become one linear over
the concatenated weights, followed by a `split` of its output: one larger product instead of several small
ones (the Q, K and V projections of attention, an MLP's gate and up projections; TVM's CombineParallelDense).
Int8 linears merge the same way with their rows of scales when their attributes are equal: every output
channel keeps its own scale, and the per-row rounding of x depends on x alone."""

from __future__ import annotations

import torch

from ..ir import Graph, Node, Value
from .base import Pass, PassContext, PassResult

# op -> the names of its parameters after x, each concatenated along its first (output) dim
_PARAMS = {"linear": ("weight", "bias"), "linear_weight_int8": ("weight", "scale", "bias"),
           "linear_dynamic_int8": ("weight", "scale", "bias")}


def _key(node: Node) -> tuple | None:
    """What linears must share to merge: the op and its attributes, the input, the parameters' types apart
    from their rows, bias or not. None for a linear that cannot merge: a run-time parameter, or a weight
    read elsewhere too (merging would copy it). Shared biases and scales merge (as copies): they are small,
    and constant deduplication shares equal ones (the all-zero biases of a freshly initialized model)."""
    if node.op not in _PARAMS:
        return None
    x, weight, *rest = node.inputs
    params = [weight, *rest]
    if any(v.const is None for v in params) or len(weight.uses) != 1 or weight.type.rank != 2:
        return None
    return (node.op, tuple(sorted(node.attrs.items())), id(x),
            tuple((v.type.shape[1:], v.type.dtype) for v in params))


def _merge(graph: Graph, group: list[Node]) -> None:
    first = group[0]
    x = first.inputs[0]
    name = "_".join(node.name for node in group)
    params = [graph.add_constant(f"{name}.{kind}", torch.cat([n.inputs[i].const for n in group]))
              for i, kind in enumerate(_PARAMS[first.op][: len(first.inputs) - 1], start=1)]
    merged = graph.add_node(first.op, [x, *params], dict(first.attrs), before=first, names=[name],
                            source=first.source)
    sizes = [n.outputs[0].type.shape[-1] for n in group]
    split = graph.add_node("split", merged.outputs, {"sizes": sizes, "dim": -1}, before=first)
    for node, part in zip(group, split.outputs, strict=True):
        graph.replace_all_uses(node.outputs[0], part)
    old: list[Value] = list(dict.fromkeys(v for node in group for v in node.inputs[1:]))
    names = [node.name for node in group]
    for node in group:
        graph.remove_node(node)
    for value in old:
        if not value.uses and not graph.is_output(value):
            graph.remove_constant(value)
    for part, original in zip(split.outputs, names, strict=True):
        part.name = graph.fresh_name(original)  # the members' names live on: dumps and users keep them


class MergeParallelLinearsPass(Pass):
    """Merge every group of two or more linears (float, or int8 with equal attributes) with the same input,
    constant parameters of the same width and dtype (weights read by nothing else), and all or none with
    a bias; the merged node takes the place of the group's first member."""

    name = "merge-parallel-linears"
    opt_level = 2

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        groups: dict[tuple, list[Node]] = {}
        for node in graph.nodes:
            key = _key(node)
            if key is not None:
                groups.setdefault(key, []).append(node)
        merged = [group for group in groups.values() if len(group) > 1]
        for group in merged:
            _merge(graph, group)
        return PassResult(graph, bool(merged), {"groups_merged": len(merged),
                                                "linears_merged": sum(len(g) for g in merged)})
