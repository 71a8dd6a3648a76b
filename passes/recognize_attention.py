"""recognize-attention: softmax(q @ k^T * scale [+ mask]) @ v becomes `scaled_dot_product_attention`, and
an attention whose constant mask is the causal triangle becomes `is_causal` (its kernels skip or need no mask).

Run after recognize-softmax: the pattern reads a `softmax` node.
"""

from __future__ import annotations

import math

import torch

from ..ir import Node, Value
from ..ir.numbers import shortest_float
from .rewrite import TRUE_DIV, Match, Pat, PatternPass, Rule, RuleSet


def _swaps_last_two(node: Node) -> bool:
    """True when a transpose/permute swaps exactly the last two dims."""
    rank = node.inputs[0].type.rank
    if rank < 2:
        return False
    want = (*range(rank - 2), rank - 1, rank - 2)
    if node.op == "permute":
        return tuple(d % rank for d in node.attrs["dims"]) == want
    return {node.attrs["dim0"] % rank, node.attrs["dim1"] % rank} == {rank - 2, rank - 1}


def _scale(m: Match) -> float:
    if m.get("c") is None:
        return 1.0
    const = m["c"].const
    assert const is not None
    # 1/c in c's dtype: the division the graph did, rounded as it rounded.
    return m.scalar("c") if m.node("scaled").op == "mul" else shortest_float(torch.reciprocal(const))


def _is_causal(cond: torch.Tensor, rows: int, cols: int) -> bool:
    """True when a constant condition broadcasts to the top-left lower triangle sdpa's is_causal uses."""
    if cond.dim() < 2 or any(d != 1 for d in cond.shape[:-2]) or tuple(cond.shape[-2:]) != (rows, cols):
        return False
    return bool(torch.equal(cond.reshape(rows, cols), torch.ones(rows, cols, dtype=torch.bool).tril()))


def _check(m: Match) -> str | None:
    q, kt, v = m["q"], m["kt"], m["v"]
    if not q.type.dtype.is_floating or not (q.type.dtype == kt.type.dtype == v.type.dtype):
        return f"q, k, v are {q.type.dtype}, {kt.type.dtype}, {v.type.dtype}; expected one floating dtype"
    ranks = {q.type.rank, kt.type.rank, v.type.rank}
    if len(ranks) != 1 or q.type.rank < 3:
        return f"q, k, v have ranks {sorted(ranks)}; expected one rank of at least 3"
    if not (q.type.shape[:-2] == kt.type.shape[:-2] == v.type.shape[:-2]):
        return "q, k, v have different batch dims"
    if m.get("c") is not None and m["c"].const.numel() != 1:  # type: ignore[union-attr]
        return f"the scale %{m['c'].name} is not a scalar"
    softmax = m.node("probs")
    if softmax.attrs["dim"] % softmax.inputs[0].type.rank != softmax.inputs[0].type.rank - 1:
        return f"the softmax is over dim {softmax.attrs['dim']}, not the last"
    scores = (*q.type.shape[:-1], kt.type.shape[-1])
    if tuple(softmax.inputs[0].type.shape) != scores:
        return (f"the mask grows the scores from {list(scores)} to {list(softmax.inputs[0].type.shape)}; "
                "attention does not broadcast q, k, v up to the mask")
    if m.get("cond") is not None or m.get("ncond") is not None:
        return _check_where(m)
    mask = m.get("mask")
    if mask is not None and mask.type.dtype != q.type.dtype:
        return f"the additive mask %{mask.name} is {mask.type.dtype}, q is {q.type.dtype}"
    return None


def _kept(m: Match) -> torch.Tensor | None:
    """The constant keep-mask: `cond` of where(cond, s, fill), or ~`ncond` of where(ncond, fill, s)."""
    cond = m.get("cond") or m["ncond"]
    if cond.const is None:
        return None
    return cond.const if m.get("cond") is not None else ~cond.const


def _check_where(m: Match) -> str | None:
    cond, fill = m.get("cond") or m["ncond"], m["fill"]
    if cond.type.dtype.name != "bool":
        return f"the where condition %{cond.name} is {cond.type.dtype}, not bool"
    assert fill.const is not None
    if fill.const.numel() != 1:
        return f"the fill value %{fill.name} is not a scalar"
    value = float(fill.const.reshape(()).item())
    if value != -math.inf and value != torch.finfo(m["q"].type.dtype.torch).min:
        return f"the fill value {value} is not -inf or the dtype's lowest value"
    # A fully masked row is NaN (-inf) or uniform (finfo.min) in the graph but 0 in sdpa.
    kept = _kept(m)
    if kept is None:
        return "the condition is not a constant, so a row might be fully masked"
    if not bool(kept.any(dim=-1).all()):
        return "the condition masks a whole row"
    return None


def _as_mask(m: Match, mask: Value) -> Value:
    """`mask` with at least two dims: sdpa indexes the mask's last two dims, even where it broadcasts."""
    for _ in range(2 - mask.type.rank):
        mask = m.call("unsqueeze", mask, dim=0)
    return mask


def _rewrite(m: Match) -> Value:
    q, kt, v = m["q"], m["kt"], m["v"]
    producer = kt.producer
    if producer is not None and producer.op in ("transpose", "permute") and _swaps_last_two(producer):
        k = producer.inputs[0]
    else:
        k = m.call("transpose", kt, dim0=-2, dim1=-1)
    scale = _scale(m)
    if m.get("cond") is not None or m.get("ncond") is not None:
        rows, cols, kept = q.type.shape[-2], kt.type.shape[-1], _kept(m)
        if kept is not None and isinstance(rows, int) and isinstance(cols, int) and _is_causal(kept, rows, cols):
            return m.call("scaled_dot_product_attention", q, k, v, is_causal=True, scale=scale)
        assert kept is not None
        keep = m["cond"] if m.get("cond") is not None else m.constant("keep", kept)
        return m.call("scaled_dot_product_attention", q, k, v, _as_mask(m, keep), scale=scale)
    mask = m.get("mask")
    operands = [q, k, v] if mask is None else [q, k, v, _as_mask(m, mask)]
    return m.call("scaled_dot_product_attention", *operands, scale=scale)


def _causal_mask(m: Match) -> str | None:
    """Why the constant mask of an attention is not the causal triangle (None when it is): a bool mask
    keeping exactly j <= i, or a float one that adds 0 there and -inf or the dtype's lowest value
    elsewhere (the same probabilities: exp underflows to 0 either way)."""
    q, k, mask = m["q"], m["k"], m["mask"]
    rows, cols = q.type.shape[-2] if q.type.rank >= 2 else None, k.type.shape[-2] if k.type.rank >= 2 else None
    if not isinstance(rows, int) or not isinstance(cols, int):
        return "the query or key length is not static"
    const = mask.const
    assert const is not None
    if const.dtype != torch.bool:
        if not const.is_floating_point() or const.dtype != q.type.dtype.torch:
            return f"the mask is {mask.type.dtype}, not bool or q's dtype"
        lowest = torch.finfo(const.dtype).min
        if not bool(((const == 0) | (const == -math.inf) | (const == lowest)).all()):
            return "the float mask adds values other than 0 and -inf"
        const = const == 0
    if not _is_causal(const, rows, cols):
        return "the mask is not the causal triangle"
    return None


def _causal(m: Match) -> Value:
    attrs = m.root.attrs
    return m.call("scaled_dot_product_attention", m["q"], m["k"], m["v"], is_causal=True, scale=attrs["scale"],
                  enable_gqa=attrs["enable_gqa"])


_scores = Pat("matmul", Pat.var("q"), Pat.var("kt"))
_scaled = Pat.any(Pat(("mul", "div"), _scores, Pat.const("c"), name="scaled", attrs=TRUE_DIV), _scores)
_masked = Pat.any(Pat("add", _scaled, Pat.var("mask")),
                  Pat("where", Pat.var("cond"), _scaled, Pat.const("fill")),
                  Pat("where", Pat.var("ncond"), Pat.const("fill"), _scaled),
                  _scaled)
_attention = Pat("matmul", Pat("softmax", _masked, name="probs"), Pat.var("v"))

_masked_attention = Pat("scaled_dot_product_attention", Pat.var("q"), Pat.var("k"), Pat.var("v"), Pat.const("mask"),
                        attrs={"is_causal": False})

RULES = RuleSet([Rule("attention", _attention, _rewrite, _check),
                 Rule("causal-mask", _masked_attention, _causal, _causal_mask)])


class RecognizeAttentionPass(PatternPass):
    """matmul(softmax(matmul(q, kt) * c [+ mask | where(cond, ., -inf) | where(~cond, -inf, .)], -1), v) ->
    scaled_dot_product_attention(q, k, v, mask) with k = kt^T (the transpose's operand when kt is one).
    `/ c` gives scale 1/c. A where-condition must be a constant that masks no whole row (sdpa gives such
    rows 0, the graph NaN); a causal one becomes is_causal, and a finfo.min fill counts as -inf. With an
    additive mask that holds a row of -inf, that row also becomes 0 instead of NaN. A mask of rank below 2
    (a scalar bias) gets leading unit dims. scaled_dot_product_attention(q, k, v, mask) whose constant mask
    is the causal triangle (bool, or 0 / -inf) -> scaled_dot_product_attention(q, k, v) {is_causal=true}."""

    name = "recognize-attention"
    opt_level = 2
    rules = RULES
