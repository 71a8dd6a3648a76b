"""recognize-softmax: the decomposed softmax and log-softmax forms become `softmax` / `log_softmax`."""

from __future__ import annotations

from ..ir import DType, Node, Value
from .rewrite import TRUE_DIV, Match, Pat, PatternPass, Rule, RuleSet


def _one_dim_kept(node: Node) -> int | None:
    """The single reduced dim (normalized) when `node` keeps it, else None."""
    dims, rank = node.attrs["dims"], node.inputs[0].type.rank
    if dims is None or len(dims) != 1 or not node.attrs["keepdim"] or rank == 0:
        return None
    return dims[0] % rank


def _reduction_check(*names: str) -> object:
    """A constraint: the reductions captured as `names` all reduce the same single dim and keep it."""

    def check(m: Match) -> str | None:
        dims = []
        for name in names:
            value = m.get(name)
            if value is None:
                continue
            node = m.node(name)
            dim = _one_dim_kept(node)
            if dim is None:
                return (f"%{value.name} = {node.op} must reduce one dim with keepdim=true, got "
                        f"dims={node.attrs['dims']}, keepdim={node.attrs['keepdim']}")
            if node.attrs.get("dtype") is not None:
                return f"%{value.name} = {node.op} accumulates in {node.attrs['dtype']}"
            dims.append(dim)
        if len(set(dims)) != 1:
            return f"the reductions are over different dims {dims}"
        dtype = m["x"].type.dtype
        if not dtype.is_floating:
            return f"%{m['x'].name} is not floating point"
        if dtype in (DType.f16, DType.bf16):
            # The decomposed form rounds to half precision after exp and after the sum; one fused
            # softmax rounds once, which is more accurate but not the same result.
            return f"%{m['x'].name} is {dtype}: fusing would change where the result is rounded"
        return None

    return check


def _dim(m: Match) -> int:
    return m.node("total").attrs["dims"][0] % m["x"].type.rank


def _softmax(m: Match) -> Value:
    return m.call("softmax", m["x"], dim=_dim(m))


def _log_softmax(m: Match) -> Value:
    return m.call("log_softmax", m["x"], dim=_dim(m))


_x = Pat.var("x")
_shifted = Pat.any(Pat("sub", _x, Pat("amax", _x, name="max")), _x, name="shifted")
_exp = Pat("exp", _shifted, name="e")
_total = Pat("sum", _exp, name="total")

RULES = RuleSet([
    # exp(x - amax(x)) / sum(exp(x - amax(x))); the max shift may be missing (then softmax is the stabler form).
    Rule("softmax", Pat.any(Pat("div", _exp, _total, attrs=TRUE_DIV), Pat("mul", _exp, Pat("reciprocal", _total))),
         _softmax, _reduction_check("max", "total")),
    # (x - amax(x)) - log(sum(exp(x - amax(x))))
    Rule("log-softmax", Pat("sub", _shifted, Pat("log", _total)), _log_softmax, _reduction_check("max", "total")),
])


class RecognizeSoftmaxPass(PatternPass):
    """exp(x - amax(x, d)) / sum(exp(x - amax(x, d)), d) -> softmax(x, d) (also without the shift, or with
    `* reciprocal(sum)`), and (x - amax) - log(sum(exp(x - amax))) -> log_softmax(x, d), for f32/f64 x
    (in f16/bf16 the decomposed form's intermediate rounding is part of its meaning)."""

    name = "recognize-softmax"
    opt_level = 2
    rules = RULES
