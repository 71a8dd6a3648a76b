"""Group connected elementwise ops over one iteration shape into "elementwise" regions."""

from __future__ import annotations

from ..ir import Graph, Node
from .base import Pass, PassContext, PassResult
from .fusion_util import fuse_nodes, grow_region, is_elementwise, is_live, positions


class FuseElementwisePass(Pass):
    """Replace each maximal connected set of elementwise nodes whose outputs all have the same shape S
    by one `fused` node of kind "elementwise" (operands may broadcast to S).

    Rules: seeds are taken in topological order and grown over producers and consumers; a node joins
    only if the set stays convex (no path leaves it and comes back), so no cycle is created. Nothing
    is recomputed: a member read outside the region becomes a region output. Regions smaller than
    `min_nodes` (option of "fuse-elementwise", default 2) are not made, since wrapping one op saves
    no memory traffic. Existing regions are never grown (a `fused` node is not elementwise), so a
    second run changes nothing.
    """

    name = "fuse-elementwise"
    opt_level = 2

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        min_nodes = ctx.option(self.name, "min_nodes", 2)
        regions = fused = 0
        position = positions(graph)
        for seed in list(graph.nodes):
            if seed.graph is not graph or not self._fusable(graph, seed):
                continue
            shape = seed.output.type.shape

            def accept(node: Node, region: dict[Node, None], shape: tuple = shape) -> bool:
                return self._fusable(graph, node) and node.output.type.shape == shape

            members = grow_region(seed, accept, position)
            if len(members) < min_nodes:
                continue
            fuse_nodes(graph, members, "elementwise")
            position = positions(graph)
            regions += 1
            fused += len(members)
        return PassResult(graph, bool(regions), {"regions": regions, "nodes_fused": fused})

    @staticmethod
    def _fusable(graph: Graph, node: Node) -> bool:
        return is_elementwise(node) and len(node.outputs) == 1 and is_live(graph, node)
