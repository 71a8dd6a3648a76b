"""Fuse the elementwise epilogue of a matrix product or convolution into a "gemm" region."""

from __future__ import annotations

from ..ir import Graph, Node
from .base import Pass, PassContext, PassResult
from .fusion_util import (
    GEMM_OPS,
    Shape,
    check_region_contract,
    fuse_nodes,
    grow_region,
    is_elementwise,
    is_live,
    positions,
)


class FuseGemmEpiloguePass(Pass):
    """Replace a linear, matmul or conv node and the elementwise ops after it over the product's
    shape (bias add, activation, residual add, scale, ...) by one `fused` node of kind "gemm" whose
    body starts with the product.

    Rules: the epilogue grows from the product over readers only, each join keeping the set convex;
    the product itself must be read by epilogue nodes only and not returned, so it is never stored
    (otherwise the node is left alone). Epilogue values read outside become region outputs. A product
    without an epilogue is not wrapped. Existing regions are never grown, so a second run changes nothing.
    """

    name = "fuse-gemm-epilogue"
    opt_level = 2

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        regions = fused = 0
        position = positions(graph)
        for seed in list(graph.nodes):
            if seed.op not in GEMM_OPS or not is_live(graph, seed):
                continue
            shape = seed.output.type.shape

            def accept(node: Node, region: dict[Node, None], shape: Shape = shape) -> bool:
                return (is_elementwise(node) and len(node.outputs) == 1 and is_live(graph, node)
                        and node.output.type.shape == shape)

            members = grow_region(seed, accept, position, producers=False)
            product = seed.output
            if len(members) == 1 or graph.is_output(product) or any(u not in members for u in product.users):
                continue
            check_region_contract(fuse_nodes(graph, members, "gemm"))
            position = positions(graph)
            regions += 1
            fused += len(members)
        return PassResult(graph, bool(regions), {"regions": regions, "nodes_fused": fused})
