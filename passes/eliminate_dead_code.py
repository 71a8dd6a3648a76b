"""Remove nodes and constants whose values nothing reads."""

from __future__ import annotations

from ..ir import Graph
from .base import Pass, PassContext, PassResult


class EliminateDeadCodePass(Pass):
    """Delete every node none of whose outputs is read by a node or returned, then unused constants.

    The IR is pure (opaque calls included: importers hand us functional graphs), so a node whose
    results are unused can go. A reverse walk sees a node after all its readers, which removes
    whole dead chains in one pass.
    """

    name = "eliminate-dead-code"
    opt_level = 1

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        returned = {id(v) for v in graph.outputs}
        removed = 0
        for node in reversed(list(graph.nodes)):
            if all(not v.uses and id(v) not in returned for v in node.outputs):
                graph.remove_node(node)
                removed += 1
        constants_removed = graph.remove_unused_constants()
        return PassResult(graph, bool(removed or constants_removed),
                          {"nodes_removed": removed, "constants_removed": constants_removed})
