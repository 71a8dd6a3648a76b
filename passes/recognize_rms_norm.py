"""recognize-rms-norm: x * rsqrt(mean(x^2) + eps) over the trailing dims, then an optional elementwise
weight, becomes `rms_norm`."""

from __future__ import annotations

from ..ir import Value
from .recognize_layer_norm import trailing_dims
from .rewrite import Match, Pat, PatternPass, Rule, RuleSet


def _check_core(m: Match) -> str | None:
    x, mean = m["x"], m.node("mean")
    if not x.type.dtype.is_floating:
        return f"%{x.name} is not floating point"
    if mean.attrs["dtype"] is not None:
        return f"%{mean.outputs[0].name} = mean accumulates in {mean.attrs['dtype']}"
    k = trailing_dims(mean)
    if k is None:
        return (f"%{mean.outputs[0].name} is a mean over dims {list(mean.attrs['dims'] or [])} with "
                f"keepdim={str(mean.attrs['keepdim']).lower()}, expected a keepdim mean over the last dims")
    shape = x.type.shape[x.type.rank - k:]
    if not all(isinstance(d, int) for d in shape):
        return f"the normalized shape {list(shape)} is not static"
    if m["eps"].type.rank > 0 and m["eps"].type.dtype != x.type.dtype:
        return f"eps {m['eps'].type} would promote {x.type}"
    if m.scalar("eps") < 0:
        return "eps is negative"
    return None


def _rms_norm(m: Match) -> Value:
    x = m["x"]
    k = trailing_dims(m.node("mean"))
    assert k is not None
    return m.call("rms_norm", x, normalized_shape=x.type.shape[x.type.rank - k:], eps=m.scalar("eps"))


def _check_weight(m: Match) -> str | None:
    norm, weight = m.node("norm"), m["w"]
    shape = tuple(norm.attrs["normalized_shape"])
    if weight.type.shape != shape:
        return f"%{weight.name} has shape {list(weight.type.shape)}, expected the normalized shape {list(shape)}"
    if weight.type.dtype != norm.outputs[0].type.dtype:
        return f"%{weight.name} is {weight.type.dtype}, the norm is {norm.outputs[0].type.dtype}"
    return None


def _with_weight(m: Match) -> Value:
    norm = m.node("norm")
    return m.call("rms_norm", norm.inputs[0], m["w"], **norm.attrs)


_x = Pat.var("x")
_square = Pat.any(Pat("pow", _x, Pat.const(value=2.0)), Pat("mul", _x, _x))
_shifted = Pat("add", Pat("mean", _square, name="mean"), Pat.const("eps", scalar=True))

RULES = RuleSet([
    Rule("rms-norm", Pat.any(Pat("mul", _x, Pat("rsqrt", _shifted)), Pat("div", _x, Pat("sqrt", _shifted))),
         _rms_norm, _check_core),
    Rule("rms-norm-weight", Pat("mul", Pat("rms_norm", Pat.var(), name="norm"), Pat.var("w")), _with_weight,
         _check_weight),
])


class RecognizeRmsNormPass(PatternPass):
    """x * rsqrt(mean(x^2) + eps) (or x / sqrt(...), x*x for x^2) over the trailing dims -> rms_norm(x), then
    `rms_norm(x) * w -> rms_norm(x, w)` when w has the normalized shape. Run after recognize-layer-norm:
    a layer norm's centred part is also an RMS norm."""

    name = "recognize-rms-norm"
    opt_level = 2
    rules = RULES
