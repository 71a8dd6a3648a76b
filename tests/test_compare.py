"""Structural graph comparison modulo value names."""

from __future__ import annotations

import pytest
import torch

from heteropass.ir import DType, Graph, TensorType, parse_graph
from heteropass.ir.compare import assert_graphs_equal, graphs_equal

BASE = """\
graph g(%x: f32[4,8], %y: f32[4,8]) -> (f32[4,8], f32[4]) {
  const %half: f32[] = 0.5
  const %w: f32[8,8]
  %0: f32[4,8] = matmul(%x, %w)
  %1: f32[4,8] = mul(%0, %half)
  %2: f32[4] = sum(%1) {dims=[1]}
  return %1, %2
}
"""


def test_equal_modulo_names_graph_name_and_constant_order() -> None:
    renamed = """\
    graph other(%a: f32[4,8], %b: f32[4,8]) -> (f32[4,8], f32[4]) {
      const %weight: f32[8,8]
      const %c: f32[] = 0.5
      %m: f32[4,8] = matmul(%a, %weight)
      %s: f32[4,8] = mul(%m, %c)
      %r: f32[4] = sum(%s) {dims=[1]}
      return %s, %r
    }
    """
    assert_graphs_equal(parse_graph(BASE), renamed)


@pytest.mark.parametrize(("old", "new"), [
    ("%x: f32[4,8], %y: f32[4,8]", "%x: f32[4,8], %y: f16[4,8]"),  # input type
    ("= 0.5", "= 0.25"),  # small constant data
    ("mul(%0, %half)", "add(%0, %half)"),  # op
    ("mul(%0, %half)", "mul(%half, %0)"),  # operand order
    ("{dims=[1]}", "{dims=[1], keepdim=false, dtype=f64}"),  # attribute
    ("sum(%1) {dims=[1]}", "sum(%1) {dims=[1]}  @cpu"),  # device
    ("return %1, %2", "return %0, %2"),  # outputs
    ("matmul(%x, %w)", "matmul(%y, %w)"),  # wiring to inputs
])
def test_detects_difference(old: str, new: str) -> None:
    assert old in BASE
    changed = BASE.replace(old, new)
    if "f64" in new:
        changed = changed.replace("-> (f32[4,8], f32[4])", "-> (f32[4,8], f64[4])").replace("%2: f32[4]", "%2: f64[4]")
    assert not graphs_equal(parse_graph(BASE), parse_graph(changed))
    with pytest.raises(AssertionError, match="differs"):
        assert_graphs_equal(parse_graph(BASE), changed)


def test_message_shows_first_difference_and_both_graphs() -> None:
    extra = BASE.replace("  return", "  %3: f32[4,8] = neg(%1)\n  return")
    with pytest.raises(AssertionError) as info:
        assert_graphs_equal(parse_graph(BASE), extra)
    message = str(info.value)
    assert "line 7 differs:\n  actual:   return %1, %2\n  expected: %3: f32[4,8] = neg(%1)" in message
    assert "--- actual" in message and "--- expected" in message and "graph g(" in message


def test_large_constant_data_compared_between_graphs_only() -> None:
    a, b = parse_graph(BASE), parse_graph(BASE)
    assert graphs_equal(a, b)
    b.constants["w"].const = torch.zeros(8, 8)
    assert not graphs_equal(a, b)
    assert_graphs_equal(b, BASE)  # text has no data for %w: any data matches


def test_negative_zero_constant_differs() -> None:
    def graph(value: float) -> Graph:
        g = Graph()
        x = g.add_input("x", TensorType((2,), DType.f32))
        g.set_outputs([g.call("add", x, g.add_constant("c", torch.full((2,), value)))])
        return g

    assert graphs_equal(graph(0.0), graph(0.0))
    assert not graphs_equal(graph(0.0), graph(-0.0))

