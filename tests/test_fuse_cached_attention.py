"""fuse-cached-attention: attention over concat(cache, new) keys/values becomes attention_with_cache."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from heteropass.ir import DType, Graph, TensorType
from heteropass.passes.fuse_cached_attention import FuseCachedAttentionPass
from heteropass.testing.assertions import assert_pass_preserves_semantics

from .test_rewrite import check_pass, unchanged

DECODE = """
    graph g(%q: f32[1,4,1,8], %kp: f32[1,2,5,8], %kn: f32[1,2,1,8], %vp: f32[1,2,5,8], %vn: f32[1,2,1,8],
            %m: f32[1,6]) -> (f32[1,4,1,8]) {{
      %k: f32[1,2,6,8] = concat(%kp, %kn) {{dim={dim}}}
      %v: f32[1,2,6,8] = concat(%vp, %vn) {{dim=2}}
      %a: f32[1,4,1,8] = scaled_dot_product_attention(%q, %k, %v, %m) {{scale=0.5, enable_gqa=true}}
      return %a
    }}"""


def test_decode_attention_reads_the_cache_in_place() -> None:
    result = check_pass(FuseCachedAttentionPass(), DECODE.format(dim=-2), """
    graph g(%q: f32[1,4,1,8], %kp: f32[1,2,5,8], %kn: f32[1,2,1,8], %vp: f32[1,2,5,8], %vn: f32[1,2,1,8],
            %m: f32[1,6]) -> (f32[1,4,1,8]) {
      %a: f32[1,4,1,8] = attention_with_cache(%q, %kp, %kn, %vp, %vn, %m) {scale=0.5, enable_gqa=true}
      return %a
    }""")
    assert result.stats["attention-with-cache"] == 1


def test_other_concatenations_stay() -> None:
    # Along the feature dim, the keys are not a longer sequence.
    pass_ = unchanged(FuseCachedAttentionPass(), """
    graph g(%q: f32[1,4,1,8], %ka: f32[1,2,6,4], %kb: f32[1,2,6,4], %vp: f32[1,2,5,8], %vn: f32[1,2,1,8]
            ) -> (f32[1,4,1,8]) {
      %k: f32[1,2,6,8] = concat(%ka, %kb) {dim=3}
      %v: f32[1,2,6,8] = concat(%vp, %vn) {dim=2}
      %a: f32[1,4,1,8] = scaled_dot_product_attention(%q, %k, %v) {enable_gqa=true}
      return %a
    }""")
    assert "not the sequence" in pass_.report.near_misses()[0]
    # The concatenated cache is also an output (the model returns it): the copy is needed anyway.
    text = DECODE.format(dim=2).replace("-> (f32[1,4,1,8]) {", "-> (f32[1,4,1,8], f32[1,2,6,8]) {")
    pass_ = unchanged(FuseCachedAttentionPass(), text.replace("return %a", "return %a, %k"))
    assert "also a graph output" in pass_.report.near_misses()[0]


@given(batch=st.integers(1, 2), kv_heads=st.integers(1, 2), groups=st.integers(1, 3), queries=st.integers(1, 3),
       past=st.integers(0, 6), new=st.integers(1, 3), dim=st.integers(1, 8),
       mask=st.sampled_from(["none", "f32", "bool"]), causal=st.booleans(), seed=st.integers(0, 2**16))
@settings(max_examples=40, deadline=None)
def test_fused_attention_computes_the_concatenated_one(batch: int, kv_heads: int, groups: int, queries: int,
                                                       past: int, new: int, dim: int, mask: str, causal: bool,
                                                       seed: int) -> None:
    graph = Graph("g")
    heads, keys = kv_heads * groups, past + new
    q = graph.add_input("q", TensorType((batch, heads, queries, dim), DType.f32))
    parts = [graph.add_input(n, TensorType((batch, kv_heads, s, dim), DType.f32))
             for n, s in (("kp", past), ("kn", new), ("vp", past), ("vn", new))]
    k, v = graph.call("concat", parts[0], parts[1], dim=2), graph.call("concat", parts[2], parts[3], dim=2)
    masks = []
    if mask != "none" and not causal:  # torch rejects a mask together with is_causal
        masks = [graph.add_input("m", TensorType((queries, keys), DType.bool if mask == "bool" else DType.f32))]
    graph.set_outputs([graph.call("scaled_dot_product_attention", q, k, v, *masks, is_causal=causal,
                                  enable_gqa=groups > 1)])
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(v.type.static_shape(), generator=g) for v in graph.inputs[:5]]
    if masks:
        keep = torch.rand(queries, keys, generator=g) > 0.3
        keep[:, 0] = True  # every query sees a key: no all-masked rows
        inputs.append(keep if mask == "bool" else torch.where(keep, 0.0, -1e4) + torch.rand(queries, keys, generator=g))
    after = assert_pass_preserves_semantics(FuseCachedAttentionPass(), graph, inputs)
    assert [n.op for n in after.nodes] == ["attention_with_cache"]
