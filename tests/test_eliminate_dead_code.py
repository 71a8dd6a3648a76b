"""eliminate-dead-code: Before/Expected graphs."""

from __future__ import annotations

import torch

from heteropass.ir import parse_graph, run_graph, verify
from heteropass.ir.compare import assert_graphs_equal
from heteropass.ir.sample import random_inputs
from heteropass.passes.base import PassResult
from heteropass.passes.eliminate_dead_code import EliminateDeadCodePass


def check(before: str, expected: str) -> PassResult:
    """Run the pass on `before`; check the result against `expected`, the reference interpreter
    and a second run that must change nothing."""
    graph = parse_graph(before)
    original = graph.clone()
    result = EliminateDeadCodePass()(graph)
    verify(graph)
    assert_graphs_equal(graph, expected)
    inputs = random_inputs(original)
    for want, got in zip(run_graph(original, *inputs), run_graph(graph, *inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not EliminateDeadCodePass()(graph).modified
    return result


def test_removes_dead_chain_and_its_constants() -> None:
    result = check("""
    graph g(%x: f32[4,8]) -> (f32[4,8]) {
      const %w: f32[8,8]
      const %c: f32[] = 2.0
      const %unused: f32[3] = [1.0, 2.0, 3.0]
      %0: f32[4,8] = relu(%x)
      %1: f32[4,8] = matmul(%x, %w)
      %2: f32[4,8] = mul(%1, %c)
      %3: f32[4,8] = exp(%2)
      return %0
    }""", """
    graph g(%x: f32[4,8]) -> (f32[4,8]) {
      %0: f32[4,8] = relu(%x)
      return %0
    }""")
    assert result.modified
    assert result.stats == {"nodes_removed": 3, "constants_removed": 3}


def test_keeps_partly_used_multi_output_node_and_returned_values() -> None:
    result = check("""
    graph g(%x: f32[4,8]) -> (f32[4,4], f32[4,8], f32[]) {
      const %c: f32[] = 2.0
      %0: f32[4,4], %1: f32[4,4] = split(%x) {sizes=[4, 4], dim=1}
      %2: f32[4,8] = neg(%x)
      %3: f32[4,8] = abs(%2)
      return %1, %2, %c
    }""", """
    graph g(%x: f32[4,8]) -> (f32[4,4], f32[4,8], f32[]) {
      const %c: f32[] = 2.0
      %0: f32[4,4], %1: f32[4,4] = split(%x) {sizes=[4, 4], dim=1}
      %2: f32[4,8] = neg(%x)
      return %1, %2, %c
    }""")
    assert result.stats == {"nodes_removed": 1, "constants_removed": 0}


def test_live_graph_is_unchanged() -> None:
    text = """
    graph g(%x: f32[4,8]) -> (f32[4,8]) {
      const %b: f32[8]
      %0: f32[4,8] = add(%x, %b)
      %1: f32[4,8] = opaque(%0) {target="aten.relu.default", spec="{\\"args\\": [{\\"$in\\": 0}], \\"kwargs\\": {}}"}
      return %1
    }"""
    result = check(text, text)
    assert not result.modified
    assert result.stats == {"nodes_removed": 0, "constants_removed": 0}
