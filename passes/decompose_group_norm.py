"""decompose-group-norm: group_norm as a layer norm over each group, which backends compile as a row
reduction, and a per-channel affine, which fuses with what follows (GroupNorm -> SiLU in a UNet block)."""

from __future__ import annotations

import math

from ..ir import DType, Value
from .rewrite import Match, Pat, PatternPass, Rule, RuleSet


def _check(m: Match) -> str | None:
    x = m["x"]
    if not x.type.is_static:
        return f"%{x.name}: {x.type} is not static"
    if x.type.dtype in (DType.f16, DType.bf16):
        return (f"%{x.name} is {x.type.dtype}: the decomposed form would round after the norm and after the "
                "affine, group_norm rounds once")
    shape = x.type.static_shape()
    if shape[1] // m.node("norm").attrs["groups"] * math.prod(shape[2:]) == 1:
        return "each group holds one value: the norm is the bias alone, which PyTorch computes inexactly"
    return None


def _channel_vector(m: Match, operand: Value, rank: int) -> Value:
    """`operand` [C] as [C, 1, ...], to broadcast over the dims after the channels of a rank-`rank` tensor."""
    if rank == 2:
        return operand
    shape = (operand.type.static_shape()[0], *[1] * (rank - 2))
    if operand.const is not None:
        return m.constant(f"{operand.name}.channels", operand.const.reshape(shape))
    return m.call("reshape", operand, shape=shape)


def _decompose(m: Match) -> Value:
    x, node = m["x"], m.node("norm")
    shape = tuple(x.type.static_shape())
    groups = node.attrs["groups"]
    size = shape[1] // groups * math.prod(shape[2:])
    grouped = m.call("reshape", x, shape=(shape[0], groups, size))
    normalized = m.call("layer_norm", grouped, normalized_shape=(size,), eps=node.attrs["eps"])
    y = m.call("reshape", normalized, shape=shape)
    if m.get("w") is not None:
        y = m.call("mul", y, _channel_vector(m, m["w"], len(shape)))
    if m.get("b") is not None:
        y = m.call("add", y, _channel_vector(m, m["b"], len(shape)))
    return y


RULES = RuleSet([
    Rule("group-norm", Pat("group_norm", Pat.var("x"), Pat.opt("w"), Pat.opt("b"), name="norm"), _decompose, _check),
])


class DecomposeGroupNormPass(PatternPass):
    """group_norm(x [N, C, *S], w, b) {groups=G} ->
    reshape(layer_norm(reshape(x, [N, G, C/G * prod(S)])), [N, C, *S]) * w[C, 1, ...] + b[C, 1, ...]
    (mean and biased variance over each group, as group_norm computes them; the product and sum only for
    the operands present)."""

    name = "decompose-group-norm"
    opt_level = 2
    rules = RULES
