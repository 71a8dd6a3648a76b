"""Evaluate nodes whose operands are all constants at compile time."""

from __future__ import annotations

import torch

from ..ir import Graph, Node, TensorType, get_op
from .base import Pass, PassContext, PassResult

DEFAULT_MAX_NUMEL = 1 << 16


def _nbytes(types: list[TensorType]) -> int:
    return sum(t.numel * t.dtype.torch.itemsize for t in types)


def _freed_bytes(graph: Graph, node: Node) -> int:
    """Bytes of the constant operands that only `node` reads, which folding lets us drop."""
    operands = {id(v): v for v in node.inputs}.values()
    return _nbytes([v.type for v in operands if all(user is node for user, _ in v.uses) and not graph.is_output(v)])


class FoldConstantsPass(Pass):
    """Replace a non-opaque node whose operands are all constants (or that has none, as `full`)
    by constants holding its reference results.

    Size rule: fold when every output has at most `max_numel` elements (option of "fold-constants",
    default 65536), or when the outputs take no more bytes than the constant operands that only this
    node reads, since those are dropped with it: so `transpose(weight)` folds whatever the weight's
    size if nothing else reads the weight, and memory never grows by more than the small outputs.
    """

    name = "fold-constants"
    opt_level = 1

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        max_numel = ctx.option(self.name, "max_numel", DEFAULT_MAX_NUMEL)
        folded = constants_removed = 0
        for node in graph:
            if not self._worth_folding(graph, node, max_numel):
                continue
            results = self._evaluate(node)
            if results is None:
                continue
            operands = list(node.inputs)
            for value, result in zip(node.outputs, results, strict=True):
                graph.replace_all_uses(value, graph.add_constant(f"folded_{value.name}", result))
            graph.remove_node(node)
            folded += 1
            for value in {id(v): v for v in operands}.values():
                if not value.uses and not graph.is_output(value):
                    # Its only reader is gone; keeping it would duplicate the data we just folded.
                    graph.remove_constant(value)
                    constants_removed += 1
        return PassResult(graph, bool(folded), {"nodes_folded": folded, "constants_removed": constants_removed})

    @staticmethod
    def _worth_folding(graph: Graph, node: Node, max_numel: int) -> bool:
        if node.op == "dequantize" or get_op(node.op).kind == "opaque" or not all(v.is_constant for v in node.inputs):
            return False
        if all(not v.uses and not graph.is_output(v) for v in node.outputs):
            return False  # dead: eliminate-dead-code removes it without computing it
        types = [v.type for v in node.outputs]
        if not all(t.is_static for t in types):
            return False
        return max(t.numel for t in types) <= max_numel or _nbytes(types) <= _freed_bytes(graph, node)

    @staticmethod
    def _evaluate(node: Node) -> list[torch.Tensor] | None:
        """The node's results as fresh contiguous tensors, or None when it fails or disagrees with
        its declared types (then it is left for run time, which reports the problem)."""
        args = [v.const for v in node.inputs]
        try:
            results = get_op(node.op).run(args, node.attrs)  # type: ignore[arg-type]
        except Exception:  # an op that fails here fails at run time too, with the node's context
            return None
        if [TensorType.of(r) for r in results] != [v.type for v in node.outputs]:
            return None
        # A copy, so a folded slice or view does not keep a large operand's storage alive.
        return [r.clone(memory_format=torch.contiguous_format) for r in results]

