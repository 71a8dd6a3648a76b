"""propagate-shapes: canonical shape attributes and re-inferred types."""

from __future__ import annotations

import pytest
import torch

from heteropass.ir import DType, Graph, TensorType, parse_graph, run_graph, verify
from heteropass.ir.compare import assert_graphs_equal
from heteropass.ir.sample import random_inputs
from heteropass.passes.base import PassResult
from heteropass.passes.propagate_shapes import PropagateShapesPass


def check(graph: Graph | str, expected: str) -> PassResult:
    """Run the pass; check the result against `expected`, the reference interpreter and a second
    run that must change nothing."""
    graph = parse_graph(graph) if isinstance(graph, str) else graph
    original = graph.clone()
    result = PropagateShapesPass()(graph)
    verify(graph)
    assert_graphs_equal(graph, expected)
    inputs = random_inputs(original)
    for want, got in zip(run_graph(original, *inputs), run_graph(graph, *inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not PropagateShapesPass()(graph).modified
    return result


def test_canonicalizes_dims_sizes_and_slice_bounds() -> None:
    result = check("""
    graph g(%x: f32[2,3,4]) -> (f32[2,3,4], f32[24], f32[4,3,2], f32[2,4], f32[2,3,4,1], f32[2,2,4], f32[2,3,1]) {
      %0: f32[2,3,4] = softmax(%x) {dim=-1}
      %1: f32[24] = reshape(%0) {shape=[-1]}
      %2: f32[2,4,3] = transpose(%x) {dim0=-1, dim1=-2}
      %3: f32[4,3,2] = permute(%2) {dims=[-2, -1, 0]}
      %4: f32[2,4] = sum(%x) {dims=[-2]}
      %5: f32[2,3,4,1] = unsqueeze(%x) {dim=-1}
      %6: f32[2,2,4] = slice(%x) {dim=-2, start=-2, end=9223372036854775807}
      %7: f32[2,3,1] = slice(%x) {dim=2, start=-10, end=1}
      return %0, %1, %3, %4, %5, %6, %7
    }""", """
    graph g(%x: f32[2,3,4]) -> (f32[2,3,4], f32[24], f32[4,3,2], f32[2,4], f32[2,3,4,1], f32[2,2,4], f32[2,3,1]) {
      %0: f32[2,3,4] = softmax(%x) {dim=2}
      %1: f32[24] = reshape(%0) {shape=[24]}
      %2: f32[2,4,3] = transpose(%x) {dim0=2, dim1=1}
      %3: f32[4,3,2] = permute(%2) {dims=[1, 2, 0]}
      %4: f32[2,4] = sum(%x) {dims=[1]}
      %5: f32[2,3,4,1] = unsqueeze(%x) {dim=3}
      %6: f32[2,2,4] = slice(%x) {dim=1, start=1, end=3}
      %7: f32[2,3,1] = slice(%x) {dim=2, start=0, end=1}
      return %0, %1, %3, %4, %5, %6, %7
    }""")
    assert result.stats == {"types_updated": 0, "attrs_canonicalized": 8}


def test_expand_and_concat() -> None:
    check("""
    graph g(%x: f32[3,1], %y: f32[3,2]) -> (f32[2,3,4], f32[3,3]) {
      %0: f32[2,3,4] = expand(%x) {shape=[2, -1, 4]}
      %1: f32[3,3] = concat(%x, %y) {dim=-1}
      return %0, %1
    }""", """
    graph g(%x: f32[3,1], %y: f32[3,2]) -> (f32[2,3,4], f32[3,3]) {
      %0: f32[2,3,4] = expand(%x) {shape=[2, 3, 4]}
      %1: f32[3,3] = concat(%x, %y) {dim=1}
      return %0, %1
    }""")


def test_reinfers_stale_types_after_an_input_changes() -> None:
    graph = parse_graph("""
    graph g(%x: f32[4,8]) -> (f32[4]) {
      const %b: f32[8]
      %0: f32[4,8] = add(%x, %b)
      %1: f32[4] = amax(%0) {dims=[1]}
      return %1
    }""")
    graph.inputs[0].type = TensorType((6, 8), DType.f16)
    result = check(graph, """
    graph g(%x: f16[6,8]) -> (f32[6]) {
      const %b: f32[8]
      %0: f32[6,8] = add(%x, %b)
      %1: f32[6] = amax(%0) {dims=[1]}
      return %1
    }""")
    assert result.stats == {"types_updated": 2, "attrs_canonicalized": 0}


def test_canonical_graph_is_unchanged() -> None:
    text = """
    graph g(%x: f32[2,3]) -> (f32[3,2], f32[2,3]) {
      %0: f32[3,2] = transpose(%x) {dim0=0, dim1=1}
      %1: f32[2,3] = softmax(%x) {dim=1}
      return %0, %1
    }"""
    assert not check(text, text).modified


def test_rejects_symbolic_inputs() -> None:
    graph = Graph()
    graph.set_outputs([graph.add_input("x", TensorType(("batch", 8), DType.f32))])
    with pytest.raises(ValueError, match="%x is f32\\[batch,8\\]"):
        PropagateShapesPass()(graph)
