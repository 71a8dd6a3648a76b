"""fold-repeat-kv: attention whose keys and values are repeated across groups of query heads
(grouped-query attention written as transformers' `repeat_kv`: unsqueeze(dim 2) -> expand -> reshape)
reads the un-repeated K and V with `enable_gqa=true` instead, so no repeated copy is made per call."""

from __future__ import annotations

from ..ir import Value
from .rewrite import Match, Pat, PatternPass, Rule, RuleSet


def _repeated(name: str) -> Pat:
    return Pat("reshape", Pat("expand", Pat("unsqueeze", Pat.var(name), name=f"{name}_unsqueezed"),
                              name=f"{name}_expanded"), name=f"{name}_repeated")


def _repeat_check(m: Match) -> str | None:
    """Both K and V are [B, H, S, D] repeated to [B, H * n, S, D] head by head (head h reads h // n)."""
    if m.node("attention").attrs["enable_gqa"]:
        return "the attention already has enable_gqa=true"
    repeats = set()
    for name in ("k", "v"):
        source, expanded = m[name].type, m[f"{name}_expanded"].type
        if source.rank != 4 or not source.is_static:
            return f"%{m[name].name} is not a static rank-4 [batch, heads, seq, dim] tensor"
        if m.node(f"{name}_unsqueezed").attrs["dim"] % 5 != 2:
            return f"%{m[f'{name}_unsqueezed'].name} does not insert the repeat axis after the heads"
        b, h, s, d = source.static_shape()
        n = expanded.static_shape()[2]
        if tuple(expanded.static_shape()) != (b, h, n, s, d):
            return f"%{m[f'{name}_expanded'].name} expands more than the inserted axis"
        if tuple(m[f"{name}_repeated"].type.static_shape()) != (b, h * n, s, d):
            return f"%{m[f'{name}_repeated'].name} does not merge the heads with their repeats"
        repeats.add((h, n))
    if len(repeats) != 1:
        return f"keys and values are repeated differently: {sorted(repeats)}"
    return None


def _grouped(m: Match) -> Value:
    attrs = {**m.node("attention").attrs, "enable_gqa": True}
    mask = [m["mask"]] if m.get("mask") is not None else []
    return m.call("scaled_dot_product_attention", m["q"], m["k"], m["v"], *mask, **attrs)


RULES = RuleSet([
    Rule("grouped-query-attention",
         Pat("scaled_dot_product_attention", Pat.var("q"), _repeated("k"), _repeated("v"), Pat.opt("mask"),
             name="attention"),
         _grouped, _repeat_check),
])


class FoldRepeatKvPass(PatternPass):
    """scaled_dot_product_attention(q, reshape(expand(unsqueeze(k, 2))), reshape(expand(unsqueeze(v, 2))))
    with K, V [B, H, S, D] repeated n times per head to [B, H * n, S, D] ->
    scaled_dot_product_attention(q, k, v) {enable_gqa=true} (query head h reads K/V head h // n)."""

    name = "fold-repeat-kv"
    opt_level = 2
    rules = RULES
