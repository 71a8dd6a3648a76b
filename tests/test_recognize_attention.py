"""recognize-attention: the eager attention block in its scaled, masked and transposed-k spellings."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from heteropass.ir import DType, Graph, TensorType
from heteropass.passes.recognize_attention import RecognizeAttentionPass
from heteropass.passes.recognize_softmax import RecognizeSoftmaxPass
from heteropass.testing.assertions import assert_pass_preserves_semantics
from heteropass.testing.strategies import graph_and_inputs, random_input

from .test_rewrite import check_pass, unchanged


def test_scores_floor_divided_by_a_constant_stay() -> None:
    unchanged(RecognizeAttentionPass(), """
    graph g(%q: f32[2,4,6,8], %k: f32[2,4,6,8], %v: f32[2,4,6,8]) -> (f32[2,4,6,8]) {
      const %d: f32[] = 2.8284271247461903
      %0: f32[2,4,8,6] = transpose(%k) {dim0=-1, dim1=-2}
      %1: f32[2,4,6,6] = matmul(%q, %0)
      %2: f32[2,4,6,6] = div(%1, %d) {rounding_mode="floor"}
      %3: f32[2,4,6,6] = softmax(%2) {dim=-1}
      %4: f32[2,4,6,8] = matmul(%3, %v)
      return %4
    }""")


def test_scaled_attention_with_transposed_k() -> None:
    result = check_pass(RecognizeAttentionPass(), """
    graph g(%q: f32[2,4,6,8], %k: f32[2,4,6,8], %v: f32[2,4,6,8]) -> (f32[2,4,6,8]) {
      const %d: f32[] = 2.8284271247461903
      %0: f32[2,4,8,6] = transpose(%k) {dim0=-1, dim1=-2}
      %1: f32[2,4,6,6] = matmul(%q, %0)
      %2: f32[2,4,6,6] = div(%1, %d)
      %3: f32[2,4,6,6] = softmax(%2) {dim=-1}
      %4: f32[2,4,6,8] = matmul(%3, %v)
      return %4
    }""", """
    graph g(%q: f32[2,4,6,8], %k: f32[2,4,6,8], %v: f32[2,4,6,8]) -> (f32[2,4,6,8]) {
      %0: f32[2,4,6,8] = scaled_dot_product_attention(%q, %k, %v) {scale=0.35355338}
      return %0
    }""", atol=1e-5)
    assert result.stats == {"attention": 1}


def test_causal_where_and_pre_transposed_k() -> None:
    causal = str(torch.ones(5, 5, dtype=torch.bool).tril().tolist()).lower()
    check_pass(RecognizeAttentionPass(), f"""
    graph g(%q: f32[3,5,4], %kt: f32[3,4,5], %v: f32[3,5,2]) -> (f32[3,5,2]) {{
      const %scale: f32[] = 0.5
      const %causal: bool[5,5] = {causal}
      const %ninf: f32[] = -inf
      %1: f32[3,5,5] = matmul(%q, %kt)
      %2: f32[3,5,5] = mul(%scale, %1)
      %3: f32[3,5,5] = where(%causal, %2, %ninf)
      %4: f32[3,5,5] = softmax(%3) {{dim=2}}
      %5: f32[3,5,2] = matmul(%4, %v)
      return %5
    }}""", """
    graph g(%q: f32[3,5,4], %kt: f32[3,4,5], %v: f32[3,5,2]) -> (f32[3,5,2]) {
      %0: f32[3,5,4] = transpose(%kt) {dim0=-2, dim1=-1}
      %1: f32[3,5,2] = scaled_dot_product_attention(%q, %0, %v) {is_causal=true, scale=0.5}
      return %1
    }""", atol=1e-5)


def test_additive_mask_and_decomposed_softmax_after_recognize_softmax() -> None:
    graph = Graph("attn")
    q, k, v = (graph.add_input(n, TensorType((2, 3, 4), DType.f32)) for n in "qkv")
    mask = graph.add_input("mask", TensorType((3, 3), DType.f32))
    scores = graph.call("add", mask, graph.call("matmul", q, graph.call("permute", k, dims=(0, 2, 1))))
    e = graph.call("exp", graph.call("sub", scores, graph.call("amax", scores, dims=(-1,), keepdim=True)))
    probs = graph.call("div", e, graph.call("sum", e, dims=(-1,), keepdim=True))
    graph.set_outputs([graph.call("matmul", probs, v)])
    after = assert_pass_preserves_semantics([RecognizeSoftmaxPass(), RecognizeAttentionPass()], graph, atol=1e-5)
    assert after.op_counts() == {"scaled_dot_product_attention": 1}


def test_finite_fill_with_input_condition_and_softmax_over_rows_stay() -> None:
    pass_ = unchanged(RecognizeAttentionPass(), """
    graph g(%q: f32[2,4,3], %kt: f32[2,3,4], %v: f32[2,4,3], %m: bool[4,4]) -> (f32[2,4,3], f32[2,4,3]) {
      const %low: f32[] = -3.4028234663852886e+38
      %0: f32[2,4,4] = matmul(%q, %kt)
      %1: f32[2,4,4] = where(%m, %0, %low)
      %2: f32[2,4,4] = softmax(%1) {dim=-1}
      %3: f32[2,4,3] = matmul(%2, %v)
      %4: f32[2,4,4] = matmul(%q, %kt)
      %5: f32[2,4,4] = softmax(%4) {dim=1}
      %6: f32[2,4,3] = matmul(%5, %v)
      return %3, %6
    }""")
    assert "the condition is not a constant" in (pass_.report.why_not("attention", "3") or "")
    assert pass_.report.why_not("attention", "6") == "attention at %6: the softmax is over dim 1, not the last"


def test_a_mask_that_grows_the_batch_stays() -> None:
    """Eager broadcasts q @ k^T + mask up to a [4,...] mask; sdpa's kernel would not."""
    pass_ = unchanged(RecognizeAttentionPass(), """
    graph g(%q: f32[1,2,4,3], %kt: f32[1,2,3,4], %v: f32[1,2,4,3], %m: f32[4,2,4,4]) -> (f32[4,2,4,3]) {
      %0: f32[1,2,4,4] = matmul(%q, %kt)
      %1: f32[4,2,4,4] = add(%0, %m)
      %2: f32[4,2,4,4] = softmax(%1) {dim=-1}
      %3: f32[4,2,4,3] = matmul(%2, %v)
      return %3
    }""")
    assert pass_.report.why_not("attention", "3") == (
        "attention at %3: the mask grows the scores from [1, 2, 4, 4] to [4, 2, 4, 4]; attention does not broadcast "
        "q, k, v up to the mask")


@settings(max_examples=20)
@given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5), st.integers(1, 4), st.booleans(), st.booleans())
def test_shapes_and_scales_fuse_and_keep_results(batch: int, rows: int, cols: int, depth: int, divide: bool,
                                                 transposed_k: bool) -> None:
    graph = Graph("attn")
    q = graph.add_input("q", TensorType((batch, 2, rows, depth), DType.f32))
    k_shape = (batch, 2, cols, depth) if transposed_k else (batch, 2, depth, cols)
    k = graph.add_input("k", TensorType(k_shape, DType.f32))
    v = graph.add_input("v", TensorType((batch, 2, cols, 3), DType.f32))
    kt = graph.call("transpose", k, dim0=2, dim1=3) if transposed_k else k
    scores = graph.call("div" if divide else "mul", graph.call("matmul", q, kt),
                        graph.add_constant("c", torch.tensor(depth ** 0.5)))
    graph.set_outputs([graph.call("matmul", graph.call("softmax", scores, dim=3), v)])
    inputs = [random_input(x.type, i) for i, x in enumerate(graph.inputs)]
    after = assert_pass_preserves_semantics(RecognizeAttentionPass(), graph, inputs, atol=1e-5, rtol=1e-4)
    assert after.op_counts()["scaled_dot_product_attention"] == 1


@settings(max_examples=40)
@given(graph_and_inputs())
def test_random_graphs_keep_their_results(case: tuple) -> None:  # type: ignore[type-arg]
    graph, inputs = case
    assert_pass_preserves_semantics(RecognizeAttentionPass(), graph, inputs)


def test_masked_fill_form_with_an_inverted_causal_condition() -> None:
    # masked_fill(~tril, -inf) as torch modules write it: the condition marks the positions to drop.
    masked = str((~torch.ones(4, 4, dtype=torch.bool).tril()).tolist()).lower()
    check_pass(RecognizeAttentionPass(), f"""
    graph g(%q: f32[2,4,3], %k: f32[2,4,3], %v: f32[2,4,3]) -> (f32[2,4,3]) {{
      const %drop: bool[4,4] = {masked}
      const %ninf: f32[] = -inf
      %0: f32[2,3,4] = transpose(%k) {{dim0=1, dim1=2}}
      %1: f32[2,4,4] = matmul(%q, %0)
      %2: f32[2,4,4] = where(%drop, %ninf, %1)
      %3: f32[2,4,4] = softmax(%2) {{dim=-1}}
      %4: f32[2,4,3] = matmul(%3, %v)
      return %4
    }}""", """
    graph g(%q: f32[2,4,3], %k: f32[2,4,3], %v: f32[2,4,3]) -> (f32[2,4,3]) {
      %0: f32[2,4,3] = scaled_dot_product_attention(%q, %k, %v) {is_causal=true, scale=1.0}
      return %0
    }""", atol=1e-5)


def test_input_condition_or_a_fully_masked_row_stays() -> None:
    # A fully masked row is NaN in the graph but 0 in sdpa, and an input condition may mask one.
    pass_ = unchanged(RecognizeAttentionPass(), """
    graph g(%q: f32[2,4,3], %kt: f32[2,3,4], %v: f32[2,4,3], %drop: bool[4,4]) -> (f32[2,4,3], f32[2,4,3]) {
      const %ninf: f32[] = -inf
      const %keep: bool[4] = [false, false, false, false]
      %1: f32[2,4,4] = matmul(%q, %kt)
      %2: f32[2,4,4] = where(%drop, %ninf, %1)
      %3: f32[2,4,4] = softmax(%2) {dim=-1}
      %4: f32[2,4,3] = matmul(%3, %v)
      %5: f32[2,4,4] = matmul(%q, %kt)
      %6: f32[2,4,4] = where(%keep, %5, %ninf)
      %7: f32[2,4,4] = softmax(%6) {dim=-1}
      %8: f32[2,4,3] = matmul(%7, %v)
      return %4, %8
    }""")
    assert pass_.report.why_not("attention", "4") == ("attention at %4: the condition is not a constant, so a row "
                                                      "might be fully masked")
    assert pass_.report.why_not("attention", "8") == "attention at %8: the condition masks a whole row"


def test_scalar_and_vector_masks_get_two_dims() -> None:
    # FlexAttention's score_mod adds a scalar bias; sdpa reads the mask's last two dims even to broadcast.
    check_pass(RecognizeAttentionPass(), """
    graph g(%q: f32[1,2,3,4], %kt: f32[1,2,4,3], %v: f32[1,2,3,4], %row: f32[3]) -> (f32[1,2,3,4], f32[1,2,3,4]) {
      const %bias: f32[] = 0.5
      %0: f32[1,2,3,3] = matmul(%q, %kt)
      %1: f32[1,2,3,3] = add(%0, %bias)
      %2: f32[1,2,3,3] = softmax(%1) {dim=3}
      %3: f32[1,2,3,4] = matmul(%2, %v)
      %4: f32[1,2,3,3] = matmul(%q, %kt)
      %5: f32[1,2,3,3] = add(%4, %row)
      %6: f32[1,2,3,3] = softmax(%5) {dim=3}
      %7: f32[1,2,3,4] = matmul(%6, %v)
      return %3, %7
    }""", """
    graph g(%q: f32[1,2,3,4], %kt: f32[1,2,4,3], %v: f32[1,2,3,4], %row: f32[3]) -> (f32[1,2,3,4], f32[1,2,3,4]) {
      const %bias: f32[] = 0.5
      %0: f32[1,2,3,4] = transpose(%kt) {dim0=-2, dim1=-1}
      %1: f32[1] = unsqueeze(%bias) {dim=0}
      %2: f32[1,1] = unsqueeze(%1) {dim=0}
      %3: f32[1,2,3,4] = scaled_dot_product_attention(%q, %0, %v, %2) {scale=1.0}
      %4: f32[1,2,3,4] = transpose(%kt) {dim0=-2, dim1=-1}
      %5: f32[1,3] = unsqueeze(%row) {dim=0}
      %6: f32[1,2,3,4] = scaled_dot_product_attention(%q, %4, %v, %5) {scale=1.0}
      return %3, %6
    }""", atol=1e-5)


@pytest.mark.parametrize("rows, cols", [(4, 4), (3, 5)])
def test_a_constant_causal_mask_becomes_is_causal(rows: int, cols: int) -> None:
    keep = str(torch.ones(rows, cols, dtype=torch.bool).tril().tolist()).lower()
    check_pass(RecognizeAttentionPass(), f"""
    graph g(%q: f32[2,3,{rows},8], %k: f32[2,3,{cols},8], %v: f32[2,3,{cols},5]) -> (f32[2,3,{rows},5]) {{
      const %keep: bool[1,1,{rows},{cols}] = [[{keep}]]
      %0: f32[2,3,{rows},5] = scaled_dot_product_attention(%q, %k, %v, %keep) {{scale=0.25}}
      return %0
    }}""", f"""
    graph g(%q: f32[2,3,{rows},8], %k: f32[2,3,{cols},8], %v: f32[2,3,{cols},5]) -> (f32[2,3,{rows},5]) {{
      %0: f32[2,3,{rows},5] = scaled_dot_product_attention(%q, %k, %v) {{is_causal=true, scale=0.25}}
      return %0
    }}""", atol=1e-5)


@pytest.mark.parametrize("fill", ["-inf", str(torch.finfo(torch.float32).min)])
def test_a_float_causal_mask_becomes_is_causal(fill: str) -> None:
    mask = str([[0.0 if j <= i else "FILL" for j in range(4)] for i in range(4)]).replace("'FILL'", fill)
    check_pass(RecognizeAttentionPass(), f"""
    graph g(%q: f32[1,2,4,8], %k: f32[1,2,4,8], %v: f32[1,2,4,8]) -> (f32[1,2,4,8]) {{
      const %bias: f32[4,4] = {mask}
      %0: f32[1,2,4,8] = scaled_dot_product_attention(%q, %k, %v, %bias)
      return %0
    }}""", """
    graph g(%q: f32[1,2,4,8], %k: f32[1,2,4,8], %v: f32[1,2,4,8]) -> (f32[1,2,4,8]) {
      %0: f32[1,2,4,8] = scaled_dot_product_attention(%q, %k, %v) {is_causal=true}
      return %0
    }""", atol=1e-5)


def test_other_masks_stay() -> None:
    upper = str(torch.ones(4, 4, dtype=torch.bool).triu().tolist()).lower()
    pass_ = unchanged(RecognizeAttentionPass(), f"""
    graph g(%q: f32[1,2,4,8], %k: f32[1,2,4,8], %v: f32[1,2,4,8]) -> (f32[1,2,4,8], f32[1,2,4,8]) {{
      const %upper: bool[4,4] = {upper}
      const %bias: f32[4,4] = {(torch.rand(4, 4) - 0.5).tolist()!s}
      %0: f32[1,2,4,8] = scaled_dot_product_attention(%q, %k, %v, %upper)
      %1: f32[1,2,4,8] = scaled_dot_product_attention(%q, %k, %v, %bias)
      return %0, %1
    }}""")
    assert pass_.report.why_not("causal-mask", "0") == "causal-mask at %0: the mask is not the causal triangle"
    assert "other than 0 and -inf" in (pass_.report.why_not("causal-mask", "1") or "")
