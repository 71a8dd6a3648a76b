"""Inline region bodies: replace every `fused` (or other region) node by the nodes of its body."""

from __future__ import annotations

from .graph import Graph, Value
from .ops import get_op


def inline_regions(graph: Graph) -> Graph:
    """A copy of `graph` in which region nodes are replaced by their bodies' nodes (recursively);
    body constants become constants of the graph."""
    graph = graph.clone()
    while True:
        region = next((n for n in graph.nodes if get_op(n.op).graph_attrs), None)
        if region is None:
            return graph
        (attr,) = get_op(region.op).graph_attrs
        body: Graph = region.attrs[attr]
        mapping: dict[int, Value] = {id(b): outer for b, outer in zip(body.inputs, region.inputs, strict=True)}
        for constant in body.constants.values():
            assert constant.const is not None
            mapping[id(constant)] = graph.add_constant(constant.name, constant.const)
        for node in body.nodes:
            copy = graph.add_node(node.op, [mapping[id(v)] for v in node.inputs], node.attrs,
                                  output_types=[v.type for v in node.outputs], before=region,
                                  device=region.device, source=node.source)
            mapping.update((id(old), new) for old, new in zip(node.outputs, copy.outputs, strict=True))
        for output, result in zip(region.outputs, body.outputs, strict=True):
            graph.replace_all_uses(output, mapping[id(result)])
        graph.remove_node(region)
