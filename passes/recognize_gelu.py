"""recognize-gelu: the erf and tanh formulas of GELU, however their products are grouped, become `gelu`."""

from __future__ import annotations

import math

from ..ir import Value
from .rewrite import TRUE_DIV, Match, Pat, PatternPass, Rule, RuleSet

_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_CUBIC = 0.044715


def _product(a: Pat, b: Pat, c: Pat) -> list[Pat]:
    """a*b*c in each grouping; `mul` is commutative, so the operand order inside each is free."""
    return [Pat("mul", Pat("mul", a, b), c), Pat("mul", Pat("mul", a, c), b), Pat("mul", Pat("mul", b, c), a)]


def _gelu_of(inner: Pat) -> Pat:
    """0.5 * x * (1 + inner), also with x / 2 or (x * (1 + inner)) / 2 for the half."""
    x = Pat.var("x")
    half = Pat.const(value=0.5, rtol=0)
    two = Pat.const(value=2.0, rtol=0)
    one_plus = Pat("add", Pat.const(value=1.0, rtol=0), inner)
    return Pat.any(*_product(half, x, one_plus), Pat("mul", Pat("div", x, two, attrs=TRUE_DIV), one_plus),
                   Pat("div", Pat("mul", x, one_plus), two, attrs=TRUE_DIV))


def _cube(x: Pat) -> Pat:
    square = Pat.any(Pat("mul", x, x), Pat("pow", x, Pat.const(value=2.0, rtol=0)))
    return Pat.any(Pat("pow", x, Pat.const(value=3.0, rtol=0)), Pat("mul", square, x))


def _tanh_argument(x: Pat) -> Pat:
    """sqrt(2/pi) * (x + 0.044715 * x^3), or expanded: sqrt(2/pi) * x + (sqrt(2/pi) * 0.044715) * x^3."""
    cube = _cube(x)
    factored = Pat("mul", Pat.const(value=_SQRT_2_OVER_PI),
                   Pat("add", x, Pat("mul", Pat.const(value=_CUBIC), cube)))
    expanded = Pat("add", Pat("mul", Pat.const(value=_SQRT_2_OVER_PI), x),
                   Pat("mul", Pat.const(value=_SQRT_2_OVER_PI * _CUBIC), cube))
    return Pat.any(factored, expanded)


def _check(m: Match) -> str | None:
    return None if m["x"].type.dtype.is_floating else f"%{m['x'].name} is not floating point"


def _rewrite(approximate: str):  # type: ignore[no-untyped-def]
    def rewrite(m: Match) -> Value:
        return m.call("gelu", m["x"], approximate=approximate)

    return rewrite


_x = Pat.var("x")
_erf = Pat("erf", Pat.any(Pat("mul", _x, Pat.const(value=1 / math.sqrt(2))),
                          Pat("div", _x, Pat.const(value=math.sqrt(2)), attrs=TRUE_DIV)))

RULES = RuleSet([
    Rule("gelu-erf", _gelu_of(_erf), _rewrite("none"), _check),
    Rule("gelu-tanh", _gelu_of(Pat("tanh", _tanh_argument(_x))), _rewrite("tanh"), _check),
])


class RecognizeGeluPass(PatternPass):
    """0.5 * x * (1 + erf(x / sqrt(2))) -> gelu(x) and 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
    -> gelu(x, approximate="tanh"), in any grouping of the products, with x^3 as pow or products, and
    constants matched to a relative 1e-4 (models write them with few digits)."""

    name = "recognize-gelu"
    opt_level = 2
    rules = RULES
