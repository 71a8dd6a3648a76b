"""recognize-rms-norm: x * rsqrt(mean(x^2) + eps) over the trailing dims, then an optional elementwise
weight, becomes `rms_norm`."""

from __future__ import annotations

from ..ir import Value
from .norm_patterns import check_affine, check_normalized, normalize, trailing_dims
from .rewrite import TRUE_DIV, Match, Pat, PatternPass, Rule, RuleSet


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
    return check_normalized(m, k)


def _rms_norm(m: Match) -> Value:
    return normalize(m, "rms_norm")


def _with_weight(m: Match) -> Value:
    norm = m.node("norm")
    return m.call("rms_norm", norm.inputs[0], m["p"], **norm.attrs)


_x = Pat.var("x")
_square = Pat.any(Pat("pow", _x, Pat.const(value=2.0, rtol=0)), Pat("mul", _x, _x))
_shifted = Pat("add", Pat("mean", _square, name="mean"), Pat.const("eps", scalar=True))

RULES = RuleSet([
    Rule("rms-norm", Pat.any(Pat("mul", _x, Pat("rsqrt", _shifted)),
                             Pat("div", _x, Pat("sqrt", _shifted), attrs=TRUE_DIV)),
         _rms_norm, _check_core),
    Rule("rms-norm-weight", Pat("mul", Pat("rms_norm", Pat.var(), name="norm"), Pat.var("p")), _with_weight,
         check_affine),
])


class RecognizeRmsNormPass(PatternPass):
    """x * rsqrt(mean(x^2) + eps) (or x / sqrt(...), x*x for x^2) over the trailing dims -> rms_norm(x), then
    `rms_norm(x) * w -> rms_norm(x, w)` when w has the normalized shape. Run after recognize-layer-norm:
    a layer norm's centred part is also an RMS norm."""

    name = "recognize-rms-norm"
    opt_level = 2
    rules = RULES
