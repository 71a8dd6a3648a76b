"""fuse-linear-bias: matmuls by a transposed or constant 2-D weight become `linear`, and a 1-D bias added
to a bias-less linear joins it, the form ONNX and decomposed graphs spell `x @ w.T + b` in."""

from __future__ import annotations

from ..ir import Value
from .rewrite import Match, Pat, PatternPass, Rule, RuleSet


def _swaps_2d(m: Match) -> bool:
    node = m.node("wt")
    if node.op == "permute":
        return tuple(d % 2 for d in node.attrs["dims"]) == (1, 0)
    return {node.attrs["dim0"] % 2, node.attrs["dim1"] % 2} == {0, 1}


def _check_transposed(m: Match) -> str | None:
    if m["w"].type.rank != 2:
        return f"the weight %{m['w'].name} has rank {m['w'].type.rank}, expected 2"
    if not _swaps_2d(m):
        return f"%{m['wt'].name} does not swap the weight's two dims"
    return None


def _from_transposed(m: Match) -> Value:
    return m.call("linear", m["x"], m["w"])


def _check_constant(m: Match) -> str | None:
    w = m["w"]
    if w.type.rank != 2:
        return f"the weight %{w.name} has rank {w.type.rank}, expected 2"
    if len(w.uses) != 1:
        # Transposing a shared constant would keep both copies alive.
        return f"the weight %{w.name} has other readers"
    return _check_bias(m, w.type.shape[1])


def _from_constant(m: Match) -> Value:
    w = m["w"]
    assert w.const is not None
    weight = m.constant(f"{w.name}.t", w.const.t().contiguous())
    return m.call("linear", m["x"], weight, m["b"])


def _check_bias(m: Match, features: int | str) -> str | None:
    b = m["b"]
    if b.type.shape != (features,):
        return f"the bias %{b.name} has shape {list(b.type.shape)}, expected [{features}]"
    if b.type.dtype != m["x"].type.dtype:
        return f"the bias %{b.name} is {b.type.dtype}, the input is {m['x'].type.dtype}"
    return None


def _check_linear_bias(m: Match) -> str | None:
    return _check_bias(m, m.node("lin").inputs[1].type.shape[0])


def _with_bias(m: Match) -> Value:
    lin = m.node("lin")
    return m.call("linear", lin.inputs[0], lin.inputs[1], m["b"])


RULES = RuleSet([
    Rule("linear-from-transposed-weight",
         Pat("matmul", Pat.var("x"), Pat(("transpose", "permute"), Pat.var("w"), name="wt")),
         _from_transposed, _check_transposed),
    Rule("linear-from-constant-weight",
         Pat("add", Pat("matmul", Pat.var("x"), Pat.const("w")), Pat.var("b")), _from_constant, _check_constant),
    Rule("linear-bias", Pat("add", Pat("linear", Pat.var("x"), Pat.var(), name="lin"), Pat.var("b")),
         _with_bias, _check_linear_bias),
])


class FuseLinearBiasPass(PatternPass):
    """matmul(x, transpose(w)) -> linear(x, w); matmul(x, c) + b -> linear(x, c^T, b) for a 2-D constant c
    read only there and a 1-D b; linear(x, w) + b -> linear(x, w, b) for a 1-D b of w's output features."""

    name = "fuse-linear-bias"
    opt_level = 2
    rules = RULES
