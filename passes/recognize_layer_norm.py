"""recognize-layer-norm: the decomposed layer norm (mean, subtract, variance, eps, sqrt, divide, then an
optional elementwise weight and bias) becomes `layer_norm`."""

from __future__ import annotations

from ..ir import Node, Value
from .norm_patterns import check_affine, check_normalized, normalize, trailing_dims
from .rewrite import TRUE_DIV, Match, Pat, PatternPass, Rule, RuleSet


def _describe_reduction(node: Node) -> str:
    return f"%{node.outputs[0].name} ({node.op} over dims {list(node.attrs['dims'] or [])}, " \
           f"keepdim={str(node.attrs['keepdim']).lower()})"


def _check_core(m: Match) -> str | None:
    x = m["x"]
    if not x.type.dtype.is_floating:
        return f"%{x.name} is not floating point"
    k = None
    for name in ("mean", "var"):
        node = m.node(name)
        if node.attrs.get("dtype") is not None:
            return f"{_describe_reduction(node)} accumulates in {node.attrs['dtype']}"
        count = trailing_dims(node)
        if count is None:
            return f"{_describe_reduction(node)}, expected a keepdim mean over the last dims"
        if k is not None and count != k:
            return "the mean and the variance reduce different dims"
        k = count
    if m.node("var").op == "var" and m.node("var").attrs["correction"] != 0:
        return "the variance uses a correction (layer norm's is biased)"
    assert k is not None
    return check_normalized(m, k)


def _layer_norm(m: Match) -> Value:
    return normalize(m, "layer_norm")


def _with_weight(m: Match) -> Value:
    norm = m.node("norm")
    return m.call("layer_norm", norm.inputs[0], m["p"], **norm.attrs)


def _with_bias(m: Match) -> Value:
    norm = m.node("norm")
    return m.call("layer_norm", norm.inputs[0], norm.inputs[1], m["p"], **norm.attrs)


_x = Pat.var("x")
_centered = Pat("sub", _x, Pat("mean", _x, name="mean"), name="d")
_squared = Pat.any(Pat("pow", _centered, Pat.const(value=2.0, rtol=0)), Pat("mul", _centered, _centered))
_variance = Pat.any(Pat("mean", _squared, name="var"),
                    Pat("var", _x, name="var"))
_shifted = Pat("add", _variance, Pat.const("eps", scalar=True))

RULES = RuleSet([
    Rule("layer-norm", Pat.any(Pat("div", _centered, Pat("sqrt", _shifted), attrs=TRUE_DIV),
                               Pat("mul", _centered, Pat("rsqrt", _shifted))), _layer_norm, _check_core),
    Rule("layer-norm-weight", Pat("mul", Pat("layer_norm", Pat.var(), name="norm"), Pat.var("p")), _with_weight,
         check_affine),
    Rule("layer-norm-bias", Pat("add", Pat("layer_norm", Pat.var(), Pat.var(), name="norm"), Pat.var("p")),
         _with_bias, check_affine),
])


class RecognizeLayerNormPass(PatternPass):
    """(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) over the trailing dims -> layer_norm(x) (also with
    `x*x`, a biased `var`, or `* rsqrt`); then `layer_norm(x) * w -> layer_norm(x, w)` and
    `layer_norm(x, w) + b -> layer_norm(x, w, b)` when w and b have the normalized shape."""

    name = "recognize-layer-norm"
    opt_level = 2
    rules = RULES
