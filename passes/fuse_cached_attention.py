"""fuse-cached-attention: attention over keys and values just concatenated from a cache and new entries
(a decode step: k = concat(k_past, k_new), v = concat(v_past, v_new) along the sequence) becomes
`attention_with_cache`, which kernels compute reading both parts in place: no concatenated copy per
step, and one call instead of three."""

from __future__ import annotations

from ..ir import Value
from .rewrite import Match, Pat, PatternPass, Rule, RuleSet


def _sequence_concat(m: Match) -> str | None:
    """Both concatenations join two tensors along the sequence dim (-2) of [..., seq, dim] keys/values."""
    for name in ("k", "v"):
        node = m.node(name)
        rank = m[name].type.rank
        if rank < 2 or node.attrs["dim"] % rank != rank - 2:
            return f"%{m[name].name} concatenates along dim {node.attrs['dim']}, not the sequence (-2)"
    return None


def _cached(m: Match) -> Value:
    mask = [m["mask"]] if m.get("mask") is not None else []
    return m.call("attention_with_cache", m["q"], m["k_past"], m["k_new"], m["v_past"], m["v_new"], *mask,
                  **m.node("attention").attrs)


RULES = RuleSet([
    Rule("attention-with-cache",
         Pat("scaled_dot_product_attention", Pat.var("q"),
             Pat("concat", Pat.var("k_past"), Pat.var("k_new"), name="k"),
             Pat("concat", Pat.var("v_past"), Pat.var("v_new"), name="v"), Pat.opt("mask"), name="attention"),
         _cached, _sequence_concat),
])


class FuseCachedAttentionPass(PatternPass):
    """scaled_dot_product_attention(q, concat(k_past, k_new, dim=-2), concat(v_past, v_new, dim=-2), mask?)
    -> attention_with_cache(q, k_past, k_new, v_past, v_new, mask?) with the same attributes, when the
    concatenations have no other reader."""

    name = "fuse-cached-attention"
    opt_level = 2
    rules = RULES
