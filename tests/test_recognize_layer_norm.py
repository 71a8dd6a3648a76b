"""recognize-layer-norm: decomposed layer norms with and without affine parts, and near misses."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from heteropass.ir import DType, Graph, TensorType
from heteropass.passes.recognize_layer_norm import RecognizeLayerNormPass
from heteropass.testing.assertions import assert_pass_preserves_semantics
from heteropass.testing.strategies import graph_and_inputs, random_input

from .test_rewrite import check_pass, unchanged

_DECOMPOSED = """
graph g(%x: f32[2,3,8], %w: f32[8], %b: f32[8]) -> (f32[2,3,8]) {
  const %eps: f32[] = 1e-5
  const %two: f32[] = 2.0
  %0: f32[2,3,1] = mean(%x) {dims=[-1], keepdim=true}
  %1: f32[2,3,8] = sub(%x, %0)
  %2: f32[2,3,8] = pow(%1, %two)
  %3: f32[2,3,1] = mean(%2) {dims=[2], keepdim=true}
  %4: f32[2,3,1] = add(%3, %eps)
  %5: f32[2,3,1] = sqrt(%4)
  %6: f32[2,3,8] = div(%1, %5)
  %7: f32[2,3,8] = mul(%w, %6)
  %8: f32[2,3,8] = add(%7, %b)
  return %8
}"""


def test_trunc_division_by_the_deviation_stays() -> None:
    text = _DECOMPOSED.replace("div(%1, %5)", 'div(%1, %5) {rounding_mode="trunc"}')
    assert "trunc" in text
    unchanged(RecognizeLayerNormPass(), text)


def test_layer_norm_with_weight_and_bias() -> None:
    result = check_pass(RecognizeLayerNormPass(), _DECOMPOSED, """
    graph g(%x: f32[2,3,8], %w: f32[8], %b: f32[8]) -> (f32[2,3,8]) {
      %0: f32[2,3,8] = layer_norm(%x, %w, %b) {normalized_shape=[8]}
      return %0
    }""", atol=1e-5)
    assert result.stats == {"layer-norm": 1, "layer-norm-weight": 1, "layer-norm-bias": 1}


def test_rsqrt_square_and_two_trailing_dims() -> None:
    check_pass(RecognizeLayerNormPass(), """
    graph g(%x: f32[2,3,4]) -> (f32[2,3,4]) {
      const %eps: f32[] = 0.001
      %0: f32[2,1,1] = mean(%x) {dims=[1, 2], keepdim=true}
      %1: f32[2,3,4] = sub(%x, %0)
      %2: f32[2,3,4] = mul(%1, %1)
      %3: f32[2,1,1] = mean(%2) {dims=[-1, -2], keepdim=true}
      %4: f32[2,1,1] = add(%eps, %3)
      %5: f32[2,1,1] = rsqrt(%4)
      %6: f32[2,3,4] = mul(%5, %1)
      return %6
    }""", """
    graph g(%x: f32[2,3,4]) -> (f32[2,3,4]) {
      %0: f32[2,3,4] = layer_norm(%x) {normalized_shape=[3, 4], eps=0.001}
      return %0
    }""", atol=1e-5)


def test_wrong_dim_non_scalar_eps_and_shared_centre_stay() -> None:
    pass_ = unchanged(RecognizeLayerNormPass(), """
    graph g(%x: f32[2,3,8]) -> (f32[2,3,8], f32[2,3,8]) {
      const %eps: f32[3,1] = [[1e-5], [2e-5], [1e-5]]
      const %two: f32[] = 2.0
      %0: f32[2,1,8] = mean(%x) {dims=[1], keepdim=true}
      %1: f32[2,3,8] = sub(%x, %0)
      %2: f32[2,3,8] = pow(%1, %two)
      %3: f32[2,1,8] = mean(%2) {dims=[1], keepdim=true}
      %4: f32[2,1,8] = add(%3, %two)
      %5: f32[2,1,8] = sqrt(%4)
      %6: f32[2,3,8] = div(%1, %5)
      %7: f32[2,3,1] = mean(%x) {dims=[2], keepdim=true}
      %8: f32[2,3,8] = sub(%x, %7)
      %9: f32[2,3,8] = mul(%8, %8)
      %10: f32[2,3,1] = mean(%9) {dims=[2], keepdim=true}
      %11: f32[2,3,1] = add(%10, %eps)
      %12: f32[2,3,1] = sqrt(%11)
      %13: f32[2,3,8] = div(%8, %12)
      return %6, %13
    }""")
    assert pass_.report.why_not("layer-norm", "6") == ("layer-norm at %6: %0 (mean over dims [1], keepdim=true), "
                                                       "expected a keepdim mean over the last dims")
    reason = pass_.report.why_not("layer-norm", "13") or ""
    assert reason.startswith("layer-norm at %13: operand 1 of add %11 is %eps (constant f32[3,1] = ")
    assert reason.endswith("expected a scalar constant")
    assert pass_.report.stats() == {"near-miss.layer-norm": 2}


def test_centred_value_read_elsewhere_stays() -> None:
    text = _DECOMPOSED.replace("-> (f32[2,3,8])", "-> (f32[2,3,8], f32[2,3,8])").replace("return %8", "return %8, %1")
    pass_ = RecognizeLayerNormPass()
    check_pass(pass_, text, text)
    assert pass_.report.why_not("layer-norm", "6") == ("layer-norm at %6: %1 = sub(%x, %0) is also a graph output")


def test_affine_operand_of_the_wrong_shape_stays() -> None:
    pass_ = RecognizeLayerNormPass()
    check_pass(pass_, """
    graph g(%x: f32[2,8], %w: f32[2,8]) -> (f32[2,8]) {
      %0: f32[2,8] = layer_norm(%x) {normalized_shape=[8]}
      %1: f32[2,8] = mul(%0, %w)
      return %1
    }""", """
    graph g(%x: f32[2,8], %w: f32[2,8]) -> (f32[2,8]) {
      %0: f32[2,8] = layer_norm(%x) {normalized_shape=[8]}
      %1: f32[2,8] = mul(%0, %w)
      return %1
    }""")
    assert pass_.report.why_not("layer-norm-weight", "1") == ("layer-norm-weight at %1: %w has shape [2, 8], "
                                                              "expected the normalized shape [8]")


def _decomposed(shape: tuple[int, ...], k: int, square: str, affine: bool) -> Graph:
    g = Graph("ln")
    x = g.add_input("x", TensorType(shape, DType.f32))
    dims = tuple(range(len(shape) - k, len(shape)))
    centred = g.call("sub", x, g.call("mean", x, dims=dims, keepdim=True))
    if square == "var":
        variance = g.call("var", x, dims=dims, keepdim=True, correction=0)
    else:
        sq = (g.call("mul", centred, centred) if square == "mul"
              else g.call("pow", centred, g.add_constant("two", _scalar(2.0))))
        variance = g.call("mean", sq, dims=dims, keepdim=True)
    out = g.call("div", centred, g.call("sqrt", g.call("add", variance, g.add_constant("eps", _scalar(1e-5)))))
    if affine:
        w = g.add_input("w", TensorType(shape[len(shape) - k:], DType.f32))
        b = g.add_input("b", TensorType(shape[len(shape) - k:], DType.f32))
        out = g.call("add", g.call("mul", out, w), b)
    g.set_outputs([out])
    return g


def _scalar(value: float):  # type: ignore[no-untyped-def]
    import torch

    return torch.tensor(value)


@settings(max_examples=25)
@given(st.lists(st.integers(2, 5), min_size=1, max_size=4), st.data(), st.sampled_from(["mul", "pow", "var"]),
       st.booleans())
def test_decomposed_forms_fuse_and_keep_results(shape: list[int], data: st.DataObject, square: str,
                                                affine: bool) -> None:
    k = data.draw(st.integers(1, len(shape)))
    graph = _decomposed(tuple(shape), k, square, affine)
    inputs = [random_input(v.type, i) for i, v in enumerate(graph.inputs)]
    after = assert_pass_preserves_semantics(RecognizeLayerNormPass(), graph, inputs, atol=1e-5, rtol=1e-4)
    assert after.op_counts() == {"layer_norm": 1}


@settings(max_examples=40)
@given(graph_and_inputs())
def test_random_graphs_keep_their_results(case: tuple) -> None:  # type: ignore[type-arg]
    graph, inputs = case
    assert_pass_preserves_semantics(RecognizeLayerNormPass(), graph, inputs)
