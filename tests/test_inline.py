"""Inlining region bodies."""

from __future__ import annotations

import torch

from heteropass.ir import parse_graph, run_graph, verify
from heteropass.ir.compare import assert_graphs_equal
from heteropass.ir.inline import inline_regions

from .test_ir_text import FUSED


def test_region_is_replaced_by_its_body() -> None:
    graph = parse_graph(FUSED)
    inlined = inline_regions(graph)
    verify(inlined)
    assert_graphs_equal(inlined, """
graph m(%x: f32[8,16]) -> (f32[8,32]) {
  const %w: f32[32,16]
  const %b: f32[32]
  const %c: f32[] = 0.5
  %0: f32[8,32] = linear(%x, %w)
  %1: f32[8,32] = add(%0, %b)                      @cpu
  %2: f32[8,32] = mul(%1, %c)                      @cpu
  %3: f32[8,32] = relu(%2)                         @cpu
  return %3
}""")
    x = torch.randn(8, 16)
    torch.testing.assert_close(run_graph(inlined, x), run_graph(graph, x), rtol=0, atol=0)
    assert [n.op for n in graph.nodes] == ["linear", "fused"]


def test_nested_regions_and_pass_through_outputs() -> None:
    graph = parse_graph("""
graph g(%x: f32[4]) -> (f32[4], f32[4]) {
  %1: f32[4], %2: f32[4] = fused[neg, fused](%x)
    graph outer(%a: f32[4]) -> (f32[4], f32[4]) {
      %0: f32[4] = neg(%a)
      %1: f32[4] = fused[relu](%0)
        graph inner(%b: f32[4]) -> (f32[4]) {
          %0: f32[4] = relu(%b)
          return %0
        }
      return %1, %a
    }
  return %1, %2
}""")
    inlined = inline_regions(graph)
    verify(inlined)
    assert [n.op for n in inlined.nodes] == ["neg", "relu"]
    assert inlined.outputs[1] is inlined.inputs[0]
    x = torch.randn(4)
    torch.testing.assert_close(run_graph(inlined, x), run_graph(graph, x), rtol=0, atol=0)
