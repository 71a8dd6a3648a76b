"""fuse-linear-bias: matmul + transposed or constant weight + 1-D bias -> linear, and what must stay."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from heteropass.ir import DType, Graph, TensorType, parse_graph
from heteropass.passes.fuse_linear_bias import FuseLinearBiasPass
from heteropass.testing.assertions import assert_pass_preserves_semantics
from heteropass.testing.strategies import graph_and_inputs, random_input

from .test_rewrite import check_pass, unchanged


def test_transposed_weight_and_bias() -> None:
    result = check_pass(FuseLinearBiasPass(), """
    graph g(%x: f32[2,5,4], %w: f32[3,4], %b: f32[3]) -> (f32[2,5,3]) {
      %0: f32[4,3] = transpose(%w) {dim0=0, dim1=1}
      %1: f32[2,5,3] = matmul(%x, %0)
      %2: f32[2,5,3] = add(%b, %1)
      return %2
    }""", """
    graph g(%x: f32[2,5,4], %w: f32[3,4], %b: f32[3]) -> (f32[2,5,3]) {
      %0: f32[2,5,3] = linear(%x, %w, %b)
      return %0
    }""")
    assert result.stats == {"linear-from-transposed-weight": 1, "linear-bias": 1}


def test_constant_weight_is_transposed_once() -> None:
    graph = parse_graph("""
    graph g(%x: f32[5,4]) -> (f32[5,3]) {
      const %w: f32[4,3]
      const %b: f32[3] = [1.0, 2.0, 3.0]
      %0: f32[5,3] = matmul(%x, %w)
      %1: f32[5,3] = add(%0, %b)
      return %1
    }""")
    w = graph.constants["w"].const
    check_pass(FuseLinearBiasPass(), str(graph), """
    graph g(%x: f32[5,4]) -> (f32[5,3]) {
      const %wt: f32[3,4]
      const %b: f32[3] = [1.0, 2.0, 3.0]
      %0: f32[5,3] = linear(%x, %wt, %b)
      return %0
    }""")
    FuseLinearBiasPass()(graph)
    assert torch.equal(graph.nodes[0].inputs[1].const, w.t())  # type: ignore[arg-type]
    assert list(graph.constants) == ["b", "w.t"]


def test_shared_weight_broadcast_bias_and_wrong_width_stay() -> None:
    pass_ = unchanged(FuseLinearBiasPass(), """
    graph g(%x: f32[5,4], %w: f32[3,4]) -> (f32[5,3], f32[5,3], f32[5,3], f32[5,3]) {
      const %c: f32[4,3]
      const %b: f32[3] = [1.0, 2.0, 3.0]
      const %row: f32[5,1] = [[1.0], [2.0], [3.0], [4.0], [5.0]]
      %0: f32[5,3] = matmul(%x, %c)
      %1: f32[5,3] = add(%0, %b)
      %2: f32[5,3] = matmul(%x, %c)
      %3: f32[5,3] = linear(%x, %w)
      %4: f32[5,3] = add(%3, %row)
      return %1, %2, %4, %3
    }""")
    assert pass_.report.why_not("linear-from-constant-weight", "1") == ("linear-from-constant-weight at %1: "
                                                                        "the weight %c has other readers")
    assert "is also a graph output" in (pass_.report.why_not("linear-bias", "4") or "")
    pass_ = unchanged(FuseLinearBiasPass(), """
    graph g(%x: f32[5,4], %w: f32[3,4]) -> (f32[5,3]) {
      const %row: f32[5,1] = [[1.0], [2.0], [3.0], [4.0], [5.0]]
      %3: f32[5,3] = linear(%x, %w)
      %4: f32[5,3] = add(%3, %row)
      return %4
    }""")
    assert pass_.report.why_not("linear-bias", "4") == ("linear-bias at %4: the bias %row has shape [5, 1], "
                                                        "expected [3]")


@settings(max_examples=25)
@given(st.lists(st.integers(1, 4), min_size=0, max_size=2), st.integers(1, 5), st.integers(1, 5),
       st.sampled_from(["transpose", "permute", "constant"]))
def test_forms_fuse_and_keep_results(batch: list[int], features: int, out: int, form: str) -> None:
    graph = Graph("lin")
    x = graph.add_input("x", TensorType((*batch, features), DType.f32))
    gen = torch.Generator().manual_seed(features * 10 + out)
    if form == "constant":
        weight = graph.add_constant("w", torch.randn(features, out, generator=gen))
    else:
        w = graph.add_input("w", TensorType((out, features), DType.f32))
        weight = (graph.call("transpose", w, dim0=1, dim1=0) if form == "transpose"
                  else graph.call("permute", w, dims=(-1, 0)))
    bias = graph.add_constant("b", torch.randn(out, generator=gen))
    graph.set_outputs([graph.call("add", graph.call("matmul", x, weight), bias)])
    inputs = [random_input(v.type, i) for i, v in enumerate(graph.inputs)]
    after = assert_pass_preserves_semantics(FuseLinearBiasPass(), graph, inputs, atol=1e-5)
    assert after.op_counts() == {"linear": 1}


@settings(max_examples=40)
@given(graph_and_inputs())
def test_random_graphs_keep_their_results(case: tuple) -> None:  # type: ignore[type-arg]
    graph, inputs = case
    assert_pass_preserves_semantics(FuseLinearBiasPass(), graph, inputs)
