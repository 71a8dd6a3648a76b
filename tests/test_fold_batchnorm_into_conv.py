"""fold-batchnorm-into-conv: constant batch norms fold into the conv before them; others stay."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from heteropass.ir import DType, Graph, TensorType, parse_graph
from heteropass.passes.fold_batchnorm_into_conv import FoldBatchNormIntoConvPass
from heteropass.testing.assertions import assert_pass_preserves_semantics
from heteropass.testing.strategies import graph_and_inputs, random_input

from .test_rewrite import check_pass, unchanged

_CONV_BN = """
graph g(%x: f32[1,3,6,6]) -> (f32[1,4,6,6]) {
  const %w: f32[4,3,3,3]
  const %b: f32[4] = [0.1, 0.2, 0.3, 0.4]
  const %mean: f32[4] = [0.5, -0.5, 0.25, 0.0]
  const %var: f32[4] = [1.0, 2.0, 0.5, 4.0]
  const %gamma: f32[4] = [1.5, 0.5, 1.0, 2.0]
  const %beta: f32[4] = [0.0, 1.0, -1.0, 0.5]
  %0: f32[1,4,6,6] = conv(%x, %w, %b) {padding=[1, 1]}
  %1: f32[1,4,6,6] = batch_norm(%0, %mean, %var, %gamma, %beta)
  return %1
}"""


def test_conv_with_bias_and_affine_batch_norm() -> None:
    result = check_pass(FoldBatchNormIntoConvPass(), _CONV_BN, """
    graph g(%x: f32[1,3,6,6]) -> (f32[1,4,6,6]) {
      const %w: f32[4,3,3,3]
      const %b: f32[4] = [-0.599997, 1.2474867, -0.92929, 0.8999995]
      %0: f32[1,4,6,6] = conv(%x, %w, %b) {padding=[1, 1]}
      return %0
    }""", atol=1e-5)
    assert result.stats == {"fold-batchnorm-into-conv": 1}


def test_folded_values_are_exact_in_f64() -> None:
    graph = parse_graph(_CONV_BN)
    w, b = graph.constants["w"].const, graph.constants["b"].const
    FoldBatchNormIntoConvPass()(graph)
    conv = graph.nodes[0]
    scale = torch.tensor([1.5, 0.5, 1.0, 2.0]) / torch.sqrt(torch.tensor([1.0, 2.0, 0.5, 4.0]) + 1e-5)
    torch.testing.assert_close(conv.inputs[1].const, w * scale.reshape(-1, 1, 1, 1))
    torch.testing.assert_close(conv.inputs[2].const, (b - torch.tensor([0.5, -0.5, 0.25, 0.0])) * scale +
                               torch.tensor([0.0, 1.0, -1.0, 0.5]))


def test_input_statistics_and_shared_conv_stay() -> None:
    pass_ = unchanged(FoldBatchNormIntoConvPass(), """
    graph g(%x: f32[1,3,6,6], %mean: f32[4]) -> (f32[1,4,4,4], f32[1,4,4,4], f32[1,4,4,4]) {
      const %w: f32[4,3,3,3]
      const %var: f32[4] = [1.0, 2.0, 0.5, 4.0]
      %0: f32[1,4,4,4] = conv(%x, %w)
      %1: f32[1,4,4,4] = batch_norm(%0, %mean, %var)
      %2: f32[1,4,4,4] = conv(%x, %w)
      %3: f32[1,4,4,4] = batch_norm(%2, %var, %var)
      return %1, %3, %2
    }""")
    assert pass_.report.why_not("fold-batchnorm-into-conv", "1") == ("fold-batchnorm-into-conv at %1: mean %mean "
                                                                     "is not a constant")
    assert "is also a graph output" in (pass_.report.why_not("fold-batchnorm-into-conv", "3") or "")


def test_batch_norm_after_an_unbatched_conv_stays() -> None:
    """Unbatched, the conv's output is [C, L] and batch norm normalizes dim 1, the positions (6 here, as C)."""
    pass_ = unchanged(FoldBatchNormIntoConvPass(), """
    graph g(%x: f32[3,8]) -> (f32[6,6]) {
      const %w: f32[6,3,3]
      const %mean: f32[6] = [0.5, -0.5, 0.25, 0.0, 1.0, 2.0]
      const %var: f32[6] = [1.0, 2.0, 0.5, 4.0, 1.0, 3.0]
      %0: f32[6,6] = conv(%x, %w)
      %1: f32[6,6] = batch_norm(%0, %mean, %var)
      return %1
    }""")
    assert "unbatched" in (pass_.report.why_not("fold-batchnorm-into-conv", "1") or "")


@settings(max_examples=20)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.booleans(), st.booleans(), st.integers(1, 2))
def test_shapes_fold_and_keep_results(cin: int, cout: int, kernel: int, bias: bool, affine: bool,
                                      groups: int) -> None:
    gen = torch.Generator().manual_seed(cin * 100 + cout * 10 + kernel)
    graph = Graph("cbn")
    x = graph.add_input("x", TensorType((2, cin * groups, 5, 5), DType.f32))
    cout *= groups
    w = graph.add_constant("w", torch.randn(cout, cin, kernel, kernel, generator=gen))
    operands = [x, w] + ([graph.add_constant("b", torch.randn(cout, generator=gen))] if bias else [])
    y = graph.call("conv", *operands, groups=groups)
    stats = [graph.add_constant("mean", torch.randn(cout, generator=gen)),
             graph.add_constant("var", torch.rand(cout, generator=gen) + 0.1)]
    if affine:
        stats += [graph.add_constant("gamma", torch.randn(cout, generator=gen)),
                  graph.add_constant("beta", torch.randn(cout, generator=gen))]
    graph.set_outputs([graph.call("batch_norm", y, *stats, eps=1e-3)])
    after = assert_pass_preserves_semantics(FoldBatchNormIntoConvPass(), graph, [random_input(x.type, 0)],
                                            atol=1e-4, rtol=1e-4)
    assert after.op_counts() == {"conv": 1}


@settings(max_examples=40)
@given(graph_and_inputs())
def test_random_graphs_keep_their_results(case: tuple) -> None:  # type: ignore[type-arg]
    graph, inputs = case
    assert_pass_preserves_semantics(FoldBatchNormIntoConvPass(), graph, inputs)
