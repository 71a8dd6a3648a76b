"""fold-batchnorm-into-conv: an inference batch norm with constant statistics after a convolution with
constant weights is folded into the convolution's weight and bias."""

from __future__ import annotations

import torch

from ..ir import Value
from .rewrite import Match, Pat, PatternPass, Rule, RuleSet

_BN_OPERANDS = ("mean", "var", "gamma", "beta")


def _check(m: Match) -> str | None:
    conv, weight = m.node("conv"), m["w"]
    channels = weight.type.shape[0]
    for name in ("w", "b", *_BN_OPERANDS):
        value = m.get(name)
        if value is None:
            continue
        if value.const is None:
            return f"{name} %{value.name} is not a constant"
        if not value.type.dtype.is_floating:
            return f"{name} %{value.name} is {value.type.dtype}, not floating point"
        if name != "w" and value.type.shape != (channels,):
            return f"{name} %{value.name} has shape {list(value.type.shape)}, expected [{channels}] (conv channels)"
    if conv.inputs[0].type.rank != weight.type.rank:
        return "the convolution is unbatched: batch norm's dim 1 is not its channel dim"
    return None


def _fold(m: Match) -> Value:
    """w' = w * s, b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps), computed in f64."""
    weight = m["w"].const
    assert weight is not None

    def const(name: str, default: float) -> torch.Tensor:
        value = m.get(name)
        if value is None:
            return torch.full((weight.shape[0],), default, dtype=torch.float64)
        assert value.const is not None
        return value.const.double()

    scale = const("gamma", 1.0) / torch.sqrt(const("var", 0.0) + m.root.attrs["eps"])
    new_weight = weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    new_bias = (const("b", 0.0) - const("mean", 0.0)) * scale + const("beta", 0.0)
    conv = m.node("conv")
    w = m.constant(f"{m['w'].name}.folded", new_weight.to(weight.dtype))
    b = m.constant(f"{m['w'].name}.folded_bias", new_bias.to(weight.dtype))
    return m.call("conv", m["x"], w, b, **conv.attrs)


RULES = RuleSet([
    Rule("fold-batchnorm-into-conv",
         Pat("batch_norm", Pat("conv", Pat.var("x"), Pat.var("w"), Pat.opt("b"), name="conv"),
             Pat.var("mean"), Pat.var("var"), Pat.opt("gamma"), Pat.opt("beta")),
         _fold, _check),
])


class FoldBatchNormIntoConvPass(PatternPass):
    """batch_norm(conv(x, w, b), mean, var, gamma, beta) -> conv(x, w * s, (b - mean) * s + beta) with
    s = gamma / sqrt(var + eps), when every operand but x is a constant and the conv has no other reader."""

    name = "fold-batchnorm-into-conv"
    opt_level = 2
    rules = RULES
