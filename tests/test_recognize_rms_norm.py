"""recognize-rms-norm: x * rsqrt(mean(x^2) + eps) [* w] and its near misses."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from heteropass.ir import DType, Graph, TensorType
from heteropass.passes.recognize_layer_norm import RecognizeLayerNormPass
from heteropass.passes.recognize_rms_norm import RecognizeRmsNormPass
from heteropass.testing.assertions import assert_pass_preserves_semantics
from heteropass.testing.strategies import graph_and_inputs, random_input

from .test_rewrite import check_pass, unchanged


def _weighted_rms_norm(exponent: str = "2.0") -> str:
    """x * rsqrt(mean(x ** exponent) + eps) * w, written out."""
    return f"""
    graph g(%x: f32[2,3,8], %w: f32[8]) -> (f32[2,3,8]) {{
      const %eps: f32[] = 1e-6
      const %two: f32[] = {exponent}
      %0: f32[2,3,8] = pow(%x, %two)
      %1: f32[2,3,1] = mean(%0) {{dims=[-1], keepdim=true}}
      %2: f32[2,3,1] = add(%1, %eps)
      %3: f32[2,3,1] = rsqrt(%2)
      %4: f32[2,3,8] = mul(%x, %3)
      %5: f32[2,3,8] = mul(%w, %4)
      return %5
    }}"""


def test_rms_norm_with_weight() -> None:
    result = check_pass(RecognizeRmsNormPass(), _weighted_rms_norm(), """
    graph g(%x: f32[2,3,8], %w: f32[8]) -> (f32[2,3,8]) {
      %0: f32[2,3,8] = rms_norm(%x, %w) {normalized_shape=[8], eps=1e-06}
      return %0
    }""", atol=1e-5)
    assert result.stats == {"rms-norm": 1, "rms-norm-weight": 1}


_DIVISION_FORM = """
    graph g(%x: f32[4,6]) -> (f32[4,6]) {
      const %eps: f32[] = 1e-5
      %0: f32[4,6] = mul(%x, %x)
      %1: f32[4,1] = mean(%0) {dims=[1], keepdim=true}
      %2: f32[4,1] = add(%eps, %1)
      %3: f32[4,1] = sqrt(%2)
      %4: f32[4,6] = div(%x, %3)
      return %4
    }"""


def test_a_half_precision_norm_stays_decomposed() -> None:
    """Written out in f16, x * x overflows from |x| = 256 and the norm is 0 there; fused it would not be."""
    pass_ = unchanged(RecognizeRmsNormPass(), _DIVISION_FORM.replace("f32", "f16"))
    assert "is f16: fusing would change where the result is rounded" in (pass_.report.why_not("rms-norm", "4") or "")


def test_floor_division_by_the_root_mean_square_stays() -> None:
    text = _DIVISION_FORM.replace("div(%x, %3)", 'div(%x, %3) {rounding_mode="floor"}')
    assert "floor" in text
    unchanged(RecognizeRmsNormPass(), text)


def test_division_form_with_a_product() -> None:
    check_pass(RecognizeRmsNormPass(), _DIVISION_FORM, """
    graph g(%x: f32[4,6]) -> (f32[4,6]) {
      %0: f32[4,6] = rms_norm(%x) {normalized_shape=[6], eps=1e-05}
      return %0
    }""", atol=1e-5)


def test_mean_without_keepdim_or_over_a_leading_dim_stays() -> None:
    pass_ = unchanged(RecognizeRmsNormPass(), """
    graph g(%x: f32[4,6], %y: f32[6]) -> (f32[4,6], f32[6]) {
      const %eps: f32[] = 1e-5
      %0: f32[4,6] = mul(%x, %x)
      %1: f32[1,6] = mean(%0) {dims=[0], keepdim=true}
      %2: f32[1,6] = add(%1, %eps)
      %3: f32[1,6] = rsqrt(%2)
      %4: f32[4,6] = mul(%x, %3)
      %5: f32[6] = mul(%y, %y)
      %6: f32[] = mean(%5) {dims=[0]}
      %7: f32[] = add(%6, %eps)
      %8: f32[] = rsqrt(%7)
      %9: f32[6] = mul(%y, %8)
      return %4, %9
    }""")
    assert "expected a keepdim mean over the last dims" in (pass_.report.why_not("rms-norm", "4") or "")
    assert "keepdim=false" in (pass_.report.why_not("rms-norm", "9") or "")


def test_after_layer_norm_recognition_the_centred_form_is_a_layer_norm() -> None:
    graph = Graph("ln")
    x = graph.add_input("x", TensorType((3, 8), DType.f32))
    centred = graph.call("sub", x, graph.call("mean", x, dims=(1,), keepdim=True))
    variance = graph.call("mean", graph.call("mul", centred, centred), dims=(1,), keepdim=True)
    out = graph.call("mul", centred, graph.call("rsqrt", graph.call("add", variance,
                                                                     graph.add_constant("eps", torch.tensor(1e-5)))))
    graph.set_outputs([out])
    after = assert_pass_preserves_semantics([RecognizeLayerNormPass(), RecognizeRmsNormPass()], graph, atol=1e-5)
    assert after.op_counts() == {"layer_norm": 1}


def _decomposed(shape: tuple[int, ...], k: int, weighted: bool) -> Graph:
    g = Graph("rms")
    x = g.add_input("x", TensorType(shape, DType.f32))
    dims = tuple(range(len(shape) - k, len(shape)))
    ms = g.call("mean", g.call("pow", x, g.add_constant("two", torch.tensor(2.0))), dims=dims, keepdim=True)
    out = g.call("mul", x, g.call("rsqrt", g.call("add", ms, g.add_constant("eps", torch.tensor(1e-6)))))
    if weighted:
        out = g.call("mul", out, g.add_input("w", TensorType(shape[len(shape) - k:], DType.f32)))
    g.set_outputs([out])
    return g


@settings(max_examples=25)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=4), st.data(), st.booleans())
def test_decomposed_forms_fuse_and_keep_results(shape: list[int], data: st.DataObject, weighted: bool) -> None:
    graph = _decomposed(tuple(shape), data.draw(st.integers(1, len(shape))), weighted)
    inputs = [random_input(v.type, i) for i, v in enumerate(graph.inputs)]
    after = assert_pass_preserves_semantics(RecognizeRmsNormPass(), graph, inputs, atol=1e-5, rtol=1e-4)
    assert after.op_counts() == {"rms_norm": 1}


@settings(max_examples=40)
@given(graph_and_inputs())
def test_random_graphs_keep_their_results(case: tuple) -> None:  # type: ignore[type-arg]
    graph, inputs = case
    assert_pass_preserves_semantics(RecognizeRmsNormPass(), graph, inputs)


def test_an_exponent_near_two_is_not_a_square() -> None:
    """pow(x, 2.0001) is NaN for negative x; an exponent must be exactly 2, however loose other constants are."""
    unchanged(RecognizeRmsNormPass(), _weighted_rms_norm("2.0001"))
