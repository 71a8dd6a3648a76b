"""fold-repeat-kv: grouped-query attention's repeated K/V (transformers' repeat_kv) becomes enable_gqa."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from heteropass.ir import DType, Graph, TensorType
from heteropass.passes.fold_repeat_kv import FoldRepeatKvPass
from heteropass.testing.assertions import assert_pass_preserves_semantics

from .test_rewrite import check_pass, unchanged

REPEATED = """
    graph g(%q: f32[2,6,3,8], %k: f32[2,2,5,8], %v: f32[2,2,5,8], %m: f32[3,5]) -> (f32[2,6,3,8]) {{
      %0: f32[2,2,1,5,8] = unsqueeze(%k) {{dim={k_dim}}}
      %1: f32[2,2,3,5,8] = expand(%0) {{shape=[2, 2, 3, 5, 8]}}
      %2: f32[2,6,5,8] = reshape(%1) {{shape=[2, 6, 5, 8]}}
      %3: f32[2,2,1,5,8] = unsqueeze(%v) {{dim=2}}
      %4: f32[2,2,3,5,8] = expand(%3) {{shape=[2, 2, 3, 5, 8]}}
      %5: f32[2,6,5,8] = reshape(%4) {{shape=[2, 6, 5, 8]}}
      %6: f32[2,6,3,8] = scaled_dot_product_attention(%q, %2, %5, %m) {{scale=0.25}}
      return %6
    }}"""


def test_repeated_keys_and_values_become_grouped_query_attention() -> None:
    result = check_pass(FoldRepeatKvPass(), REPEATED.format(k_dim=2), """
    graph g(%q: f32[2,6,3,8], %k: f32[2,2,5,8], %v: f32[2,2,5,8], %m: f32[3,5]) -> (f32[2,6,3,8]) {
      %0: f32[2,6,3,8] = scaled_dot_product_attention(%q, %k, %v, %m) {scale=0.25, enable_gqa=true}
      return %0
    }""")
    assert result.stats["grouped-query-attention"] == 1


def test_negative_unsqueeze_dim_and_no_mask() -> None:
    check_pass(FoldRepeatKvPass(), """
    graph g(%q: f32[1,4,2,8], %k: f32[1,1,5,8], %v: f32[1,1,5,8]) -> (f32[1,4,2,8]) {
      %0: f32[1,1,1,5,8] = unsqueeze(%k) {dim=-3}
      %1: f32[1,1,4,5,8] = expand(%0) {shape=[1, 1, 4, 5, 8]}
      %2: f32[1,4,5,8] = reshape(%1) {shape=[1, 4, 5, 8]}
      %3: f32[1,1,1,5,8] = unsqueeze(%v) {dim=2}
      %4: f32[1,1,4,5,8] = expand(%3) {shape=[1, 1, 4, 5, 8]}
      %5: f32[1,4,5,8] = reshape(%4) {shape=[1, 4, 5, 8]}
      %6: f32[1,4,2,8] = scaled_dot_product_attention(%q, %2, %5) {is_causal=true}
      return %6
    }""", """
    graph g(%q: f32[1,4,2,8], %k: f32[1,1,5,8], %v: f32[1,1,5,8]) -> (f32[1,4,2,8]) {
      %0: f32[1,4,2,8] = scaled_dot_product_attention(%q, %k, %v) {is_causal=true, enable_gqa=true}
      return %0
    }""")


def test_what_is_not_a_head_repeat_stays() -> None:
    # Repeating after the sequence axis interleaves positions, not heads.
    text = REPEATED.format(k_dim=3).replace("%0: f32[2,2,1,5,8]", "%0: f32[2,2,5,1,8]")
    text = text.replace("%1: f32[2,2,3,5,8] = expand(%0) {shape=[2, 2, 3, 5, 8]}",
                        "%1: f32[2,2,5,3,8] = expand(%0) {shape=[2, 2, 5, 3, 8]}")
    pass_ = unchanged(FoldRepeatKvPass(), text)
    assert "does not insert the repeat axis after the heads" in pass_.report.near_misses()[0]
    # The repeated K is also a graph output: the copy is needed anyway.
    pass_ = unchanged(FoldRepeatKvPass(), REPEATED.format(k_dim=2).replace(
        "-> (f32[2,6,3,8]) {", "-> (f32[2,6,3,8], f32[2,6,5,8]) {").replace("return %6", "return %6, %2"))
    assert "also a graph output" in pass_.report.near_misses()[0]


def _grouped_graph(batch: int, kv_heads: int, repeats: int, queries: int, keys: int, dim: int,
                   masked: bool) -> Graph:
    graph = Graph("g")
    heads = kv_heads * repeats
    q = graph.add_input("q", TensorType((batch, heads, queries, dim), DType.f32))
    kv = [graph.add_input(n, TensorType((batch, kv_heads, keys, dim), DType.f32)) for n in ("k", "v")]
    repeated = []
    for value in kv:
        inserted = graph.call("unsqueeze", value, dim=2)
        expanded = graph.call("expand", inserted, shape=[batch, kv_heads, repeats, keys, dim])
        repeated.append(graph.call("reshape", expanded, shape=[batch, heads, keys, dim]))
    mask = [graph.add_input("m", TensorType((queries, keys), DType.f32))] if masked else []
    graph.set_outputs([graph.call("scaled_dot_product_attention", q, *repeated, *mask)])
    return graph


@given(batch=st.integers(1, 2), kv_heads=st.integers(1, 3), repeats=st.integers(1, 4), queries=st.integers(1, 4),
       keys=st.integers(1, 6), dim=st.integers(1, 8), masked=st.booleans(), seed=st.integers(0, 2**16))
@settings(max_examples=40, deadline=None)
def test_grouped_attention_computes_the_repeated_one(batch: int, kv_heads: int, repeats: int, queries: int,
                                                     keys: int, dim: int, masked: bool, seed: int) -> None:
    graph = _grouped_graph(batch, kv_heads, repeats, queries, keys, dim, masked)
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(v.type.static_shape(), generator=g) for v in graph.inputs]
    after = assert_pass_preserves_semantics(FoldRepeatKvPass(), graph, inputs)
    assert [n.op for n in after.nodes] == ["scaled_dot_product_attention"]
    assert after.nodes[0].attrs["enable_gqa"]
