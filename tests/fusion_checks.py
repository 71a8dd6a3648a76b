"""Shared Before/Expected checks of the fusion passes' tests."""

from __future__ import annotations

import torch

from heteropass.ir import Graph, parse_graph, run_graph, verify
from heteropass.ir.compare import assert_graphs_equal
from heteropass.ir.sample import random_inputs
from heteropass.passes.base import Pass, PassContext, PassResult
from heteropass.passes.fusion_util import check_region_contract


def check_regions(graph: Graph) -> None:
    for node in graph.nodes:
        if node.op == "fused":
            check_region_contract(node)


def check_fusion(make_pass: type[Pass], before: str, expected: str, ctx: PassContext | None = None) -> PassResult:
    """Run the pass on `before`; check the result against `expected`, the region contract, the reference
    interpreter (bit for bit) and a second run that must change nothing."""
    graph = parse_graph(before)
    original = graph.clone()
    result = make_pass()(graph, ctx)
    verify(graph)
    assert_graphs_equal(graph, expected)
    check_regions(graph)
    inputs = random_inputs(original)
    for want, got in zip(run_graph(original, *inputs), run_graph(graph, *inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not make_pass()(graph, ctx).modified
    return result
