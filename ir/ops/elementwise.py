"""Elementwise ops with PyTorch broadcasting and type promotion."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import Attr, register

_UNARY = {
    "neg": torch.neg, "abs": torch.abs, "exp": torch.exp, "log": torch.log, "log1p": torch.log1p,
    "expm1": torch.expm1, "sqrt": torch.sqrt, "rsqrt": torch.rsqrt, "reciprocal": torch.reciprocal,
    "sin": torch.sin, "cos": torch.cos, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "erf": torch.erf,
    "floor": torch.floor, "ceil": torch.ceil, "round": torch.round, "sign": torch.sign,
    "relu": torch.relu, "silu": F.silu, "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid,
    "mish": F.mish, "logical_not": torch.logical_not, "isnan": torch.isnan, "bitwise_not": torch.bitwise_not,
}

_BINARY = {
    "add": (torch.add, True), "sub": (torch.sub, False), "mul": (torch.mul, True),
    "pow": (torch.pow, False), "maximum": (torch.maximum, True), "minimum": (torch.minimum, True),
    "fmod": (torch.fmod, False), "remainder": (torch.remainder, False),
    "eq": (torch.eq, True), "ne": (torch.ne, True), "lt": (torch.lt, False), "le": (torch.le, False),
    "gt": (torch.gt, False), "ge": (torch.ge, False),
    "logical_and": (torch.logical_and, True), "logical_or": (torch.logical_or, True),
    "logical_xor": (torch.logical_xor, True), "bitwise_and": (torch.bitwise_and, True),
    "bitwise_or": (torch.bitwise_or, True),
}


def register_unary(name: str, fn: object) -> None:
    """Register `name` as the elementwise op computing `fn(x)`."""
    def reference(x: torch.Tensor) -> torch.Tensor:
        return fn(x)  # type: ignore[operator]

    reference.__doc__ = f"torch semantics of {name}(x)."
    register(name, ["x"], kind="elementwise")(reference)


def register_binary(name: str, fn: object, commutative: bool) -> None:
    """Register `name` as the broadcasting elementwise op computing `fn(a, b)`."""
    def reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return fn(a, b)  # type: ignore[operator]

    reference.__doc__ = f"torch semantics of {name}(a, b), broadcasting."
    register(name, ["a", "b"], kind="elementwise", commutative=commutative)(reference)


for _name, _fn in _UNARY.items():
    register_unary(_name, _fn)
for _name, (_fn, _comm) in _BINARY.items():
    register_binary(_name, _fn, _comm)


@register("div", ["a", "b"], {"rounding_mode": Attr("str", None, optional=True)}, kind="elementwise")
def div(a: torch.Tensor, b: torch.Tensor, rounding_mode: str | None) -> torch.Tensor:
    """a / b; rounding_mode "trunc" or "floor" for integer-style division."""
    return torch.div(a, b, rounding_mode=rounding_mode)


@register("where", ["cond", "a", "b"], kind="elementwise")
def where(cond: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a where cond else b, broadcasting all three."""
    return torch.where(cond, a, b)


@register("gelu", ["x"], {"approximate": Attr("str", "none")}, kind="elementwise")
def gelu(x: torch.Tensor, approximate: str) -> torch.Tensor:
    """GELU, exact (erf) or with approximate="tanh"."""
    return F.gelu(x, approximate=approximate)


@register("leaky_relu", ["x"], {"negative_slope": Attr("float", 0.01)}, kind="elementwise")
def leaky_relu(x: torch.Tensor, negative_slope: float) -> torch.Tensor:
    return F.leaky_relu(x, negative_slope)


@register("elu", ["x"], {"alpha": Attr("float", 1.0)}, kind="elementwise")
def elu(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return F.elu(x, alpha)


@register("softplus", ["x"], {"beta": Attr("float", 1.0), "threshold": Attr("float", 20.0)},
          kind="elementwise")
def softplus(x: torch.Tensor, beta: float, threshold: float) -> torch.Tensor:
    return F.softplus(x, beta, threshold)


@register("clamp", ["x"], {"min": Attr("float", None, optional=True), "max": Attr("float", None, optional=True)},
          kind="elementwise")
def clamp(x: torch.Tensor, min: float | None, max: float | None) -> torch.Tensor:
    """Clamp to [min, max]; either bound may be none. Integer tensors keep their dtype."""
    if not x.is_floating_point():
        min = None if min is None else int(min)  # type: ignore[assignment]
        max = None if max is None else int(max)  # type: ignore[assignment]
    return torch.clamp(x, min, max)


@register("cast", ["x"], {"dtype": Attr("dtype")}, kind="elementwise")
def cast(x: torch.Tensor, dtype: object) -> torch.Tensor:
    """Convert the element type (torch `.to(dtype)` semantics)."""
    return x.to(dtype.torch)  # type: ignore[attr-defined]
