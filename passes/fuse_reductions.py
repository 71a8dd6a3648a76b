"""Group a reduction over one dimension with its elementwise prologue and epilogue into a
"reduction" region."""

from __future__ import annotations

from ..ir import Graph, Node
from .base import Pass, PassContext, PassResult
from .fusion_util import (
    Shape,
    check_region_contract,
    fuse_nodes,
    grow_region,
    is_elementwise,
    is_live,
    positions,
    reduced_axis,
    row_shapes,
)


class FuseReductionsPass(Pass):
    """Replace each reduction of shape S over one dim (sum/mean/amax/amin/var/std/prod/any/all over one dim,
    softmax/log_softmax, layer_norm/rms_norm over the last dim), together with the elementwise work around
    it, by one `fused` node of kind "reduction". Below, a "row" is the set of elements reduced together.

    Rules, seeds taken in topological order and every join keeping the set convex:
    - prologue: an elementwise producer of shape S joins when all its readers are in the region and
      it is not returned (so nothing is recomputed and nothing extra is stored);
    - epilogue: an elementwise reader of region values joins when its shape is S or a reduced shape
      (S with the reduced dim 1 or dropped) and it keeps rows aligned (a value reduced without keepdim
      only meets values of its own shape); a further reduction of S-shaped region values over the same
      dim joins too (as in mean, subtract, square, mean). Epilogue values read outside become region outputs.
    Regions smaller than `min_nodes` (option of "fuse-reductions", default 2) are not made: a lone
    softmax or layer_norm gains nothing from a wrapper, and backends claim such ops by themselves.
    Existing regions are never grown, so a second run changes nothing.
    """

    name = "fuse-reductions"
    opt_level = 2

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        min_nodes = ctx.option(self.name, "min_nodes", 2)
        regions = fused = 0
        position = positions(graph)
        for seed in list(graph.nodes):
            axis = reduced_axis(seed) if seed.graph is graph else None
            if axis is None or not is_live(graph, seed):
                continue
            shape = seed.inputs[0].type.shape

            def accept(node: Node, region: dict[Node, None], shape: Shape = shape, axis: int = axis) -> bool:
                return _joins(graph, node, region, shape, axis)

            members = grow_region(seed, accept, position)
            if len(members) < min_nodes:
                continue
            check_region_contract(fuse_nodes(graph, members, "reduction"))
            position = positions(graph)
            regions += 1
            fused += len(members)
        return PassResult(graph, bool(regions), {"regions": regions, "nodes_fused": fused})


def _joins(graph: Graph, node: Node, region: dict[Node, None], shape: Shape, axis: int) -> bool:
    if len(node.outputs) != 1 or not is_live(graph, node):
        return False
    inner = [v.type.shape for v in node.inputs if v.producer in region]
    if reduced_axis(node) is not None:
        return (node.inputs[0].producer in region and node.inputs[0].type.shape == shape
                and reduced_axis(node) == axis)
    if not is_elementwise(node):
        return False
    out = node.output.type.shape
    if not inner:  # a prologue producer
        value = node.output
        return out == shape and not graph.is_output(value) and all(user in region for user in value.users)
    full, kept, dropped = row_shapes(shape, axis)
    if len(shape) == 1:  # one row: every shape is aligned
        return out in (full, kept, dropped)
    if out == dropped:
        return all(s == dropped for s in inner)
    return out in (full, kept) and all(s in (full, kept) for s in inner)
