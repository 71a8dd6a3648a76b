"""The op table: for every op its schema, shape/dtype inference and reference semantics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..graph import Graph
from ..types import DType, TensorType

ATTR_KINDS = ("int", "float", "number", "bool", "str", "ints", "floats", "dtype", "graph")
_REQUIRED = object()


class OpError(Exception):
    """A node that does not fit its op's schema: unknown op, wrong arity, bad attribute."""


@dataclass(frozen=True)
class Attr:
    """One attribute of a schema: its kind, default, and whether `None` is allowed."""

    kind: str
    default: Any = _REQUIRED
    optional: bool = False

    def __post_init__(self) -> None:
        assert self.kind in ATTR_KINDS, self.kind

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def coerce(self, value: Any, where: str) -> Any:
        if value is None:
            if self.optional:
                return None
            raise OpError(f"{where}: attribute may not be none")
        try:
            return _COERCE[self.kind](value)
        except (TypeError, ValueError) as exc:
            raise OpError(f"{where}: expected {self.kind}, got {value!r} ({exc})") from None


def _to_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int | float) or int(v) != v:
        raise TypeError("not an integer")
    return int(v)


def _to_float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError("not a number")
    return float(v)


def _to_number(v: Any) -> int | float:
    """An int or a float, kept as given: an int64 fill above 2**53 does not survive a float."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError("not a number")
    return v


def _to_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError("not a bool")
    return v


def _to_str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError("not a string")
    return v


def _to_dtype(v: Any) -> DType:
    if isinstance(v, DType):
        return v
    if isinstance(v, torch.dtype):
        return DType.from_torch(v)
    return DType.parse(_to_str(v))


def _seq(item: Callable[[Any], Any]) -> Callable[[Any], tuple]:
    def coerce(v: Any) -> tuple:
        if not isinstance(v, list | tuple):
            raise TypeError("not a list")
        return tuple(item(x) for x in v)

    return coerce


def _to_graph(v: Any) -> Graph:
    if not isinstance(v, Graph):
        raise TypeError("not a graph")
    return v


_COERCE: dict[str, Callable[[Any], Any]] = {
    "int": _to_int, "float": _to_float, "number": _to_number, "bool": _to_bool, "str": _to_str,
    "ints": _seq(_to_int), "floats": _seq(_to_float), "dtype": _to_dtype, "graph": _to_graph,
}

InferFn = Callable[[list[TensorType], dict[str, Any]], list[TensorType]]


@dataclass
class OpDef:
    """An op's schema and rules.

    `inputs` names the operands: a trailing `?` marks an optional one (optional operands come
    last), a leading `*` a variadic one. `reference` takes tensors and attributes as keywords
    and returns a tensor or a tuple of tensors. Unless `infer_fn` is given, output types are
    inferred by running `reference` on meta tensors (abstract evaluation, as FakeTensor does).
    """

    name: str
    inputs: tuple[str, ...]
    attrs: dict[str, Attr]
    reference: Callable[..., Any]
    kind: str
    infer_fn: InferFn | None = None
    doc: str = ""
    commutative: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    _inferred: dict[tuple, list[TensorType]] = field(default_factory=dict, repr=False)

    @property
    def graph_attrs(self) -> list[str]:
        """Attributes holding nested graphs (regions), in schema order."""
        return [name for name, spec in self.attrs.items() if spec.kind == "graph"]

    @property
    def variadic(self) -> bool:
        return any(n.startswith("*") for n in self.inputs)

    @property
    def arity(self) -> tuple[int, int | None]:
        """The (least, most) number of operands; most is None for variadic ops."""
        if self.variadic:
            return (0, None)
        required = sum(1 for n in self.inputs if not n.endswith("?"))
        return (required, len(self.inputs))

    def check_attrs(self, attrs: dict[str, Any], context: str = "") -> dict[str, Any]:
        """Validate attributes against the schema, coerce them and fill in defaults."""
        where = context or self.name
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise OpError(f"{where}: unknown attribute(s) {sorted(unknown)} for op '{self.name}' "
                          f"(known: {sorted(self.attrs)})")
        checked = {}
        for name, spec in self.attrs.items():
            if name in attrs:
                checked[name] = spec.coerce(attrs[name], f"{where}: attribute '{name}'")
            elif spec.required:
                raise OpError(f"{where}: missing required attribute '{name}' of op '{self.name}'")
            else:
                checked[name] = spec.default
        return checked

    def check_arity(self, count: int, context: str = "") -> None:
        least, most = self.arity
        if count < least or (most is not None and count > most):
            expected = f"{least}" if least == most else f"{least} to {most if most is not None else 'any'}"
            raise OpError(f"{context or self.name}: op '{self.name}' takes {expected} operands "
                          f"({', '.join(self.inputs)}), got {count}")

    def infer(self, input_types: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        """Output types for these operand types and attributes (memoized: passes re-infer often)."""
        self.check_arity(len(input_types))
        key = (tuple(input_types), tuple(attrs.items()))
        cached = self._inferred.get(key)
        if cached is None:
            if self.infer_fn is not None:
                cached = self.infer_fn(list(input_types), attrs)
            else:
                cached = infer_by_meta(self.reference, input_types, attrs, self.name)
            self._inferred[key] = cached
        return list(cached)

    def run(self, inputs: Sequence[torch.Tensor], attrs: dict[str, Any]) -> list[torch.Tensor]:
        """Reference semantics: evaluate with PyTorch and return the outputs as a list."""
        return as_outputs(self.reference(*inputs, **attrs))


def as_outputs(result: Any) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    return list(result)


def infer_by_meta(fn: Callable[..., Any], input_types: Sequence[TensorType], attrs: dict[str, Any],
                  name: str) -> list[TensorType]:
    args = [t.meta() for t in input_types]
    try:
        result = fn(*args, **attrs)
    except Exception as exc:  # the message of torch's own check is the useful part
        shapes = ", ".join(str(t) for t in input_types)
        raise OpError(f"op '{name}' rejects operands ({shapes}) with {attrs}: {exc}") from exc
    return [TensorType.of(t) for t in as_outputs(result)]


OPS: dict[str, OpDef] = {}


def register(name: str, inputs: Sequence[str], attrs: dict[str, Attr] | None = None, *, kind: str,
             infer: InferFn | None = None, commutative: bool = False,
             **extra: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register `fn` as the reference semantics of op `name`."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in OPS:
            raise OpError(f"op '{name}' is registered twice")
        OPS[name] = OpDef(name, tuple(inputs), dict(attrs or {}), fn, kind, infer,
                          (fn.__doc__ or "").strip(), commutative, extra)
        return fn

    return deco


def get_op(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise OpError(f"unknown op '{name}'") from None
