"""Tensor creation ops and the opaque op that runs any PyTorch callable."""

from __future__ import annotations

import importlib
import json
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ..types import DType, TensorType
from .registry import Attr, OpError, as_outputs, infer_by_meta, register


@register("full", [], {"shape": Attr("ints"), "value": Attr("number"), "dtype": Attr("dtype", DType.f32)},
          kind="creation")
def full(shape: tuple[int, ...], value: float | int, dtype: DType) -> torch.Tensor:
    """A tensor of `shape` filled with `value`."""
    fill: float | int | bool = value
    if dtype is DType.bool:
        fill = bool(value)
    elif not dtype.is_floating:
        fill = int(value)
    return torch.full(shape, fill, dtype=dtype.torch)


@register("arange", [], {"start": Attr("float", 0.0), "end": Attr("float"), "step": Attr("float", 1.0),
                         "dtype": Attr("dtype", DType.i64)}, kind="creation")
def arange(start: float, end: float, step: float, dtype: DType) -> torch.Tensor:
    """start, start+step, ... below `end`."""
    if not dtype.is_floating:
        return torch.arange(int(start), int(end), int(step), dtype=dtype.torch)
    return torch.arange(start, end, step, dtype=dtype.torch)


def resolve_target(target: str) -> Any:
    """The callable behind a target name: a registered op `<namespace>.<op>.<overload>` (aten,
    prims or a user library's custom op) or a dotted Python path."""
    namespace, _, rest = target.partition(".")
    if rest.count(".") == 1 and namespace in _op_namespaces():
        obj: Any = getattr(torch.ops, namespace)
        for part in rest.split("."):
            obj = getattr(obj, part)
        return obj
    module_name, _, attr = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"cannot resolve opaque target {target!r}") from None


def _op_namespaces() -> set[str]:
    """Namespaces of registered operators (aten, prims, and custom libraries loaded so far)."""
    return {name.split("::")[0] for name in torch._C._dispatch_get_all_op_names()}


def encode_call(args: tuple, kwargs: dict[str, Any]) -> tuple[list[Any], str]:
    """Split a call's arguments into tensor operands and a JSON spec of everything else.

    Tensors (given here as anything the caller wants wired as an operand) are recorded as
    `{"$in": i}`; dtypes, devices and layouts by name.
    """
    operands: list[Any] = []

    def enc(a: Any) -> Any:
        if isinstance(a, list | tuple):
            return {"$list": [enc(x) for x in a]}
        if isinstance(a, torch.dtype):
            return {"$dtype": str(DType.from_torch(a))}
        if isinstance(a, torch.device):
            return {"$device": str(a)}
        if isinstance(a, torch.memory_format | torch.layout):
            return {"$attr": str(a).replace("torch.", "")}
        if a is None or isinstance(a, bool | int | float | str):
            return a
        operands.append(a)
        return {"$in": len(operands) - 1}

    spec = {"args": [enc(a) for a in args], "kwargs": {k: enc(v) for k, v in kwargs.items()}}
    return operands, json.dumps(spec, sort_keys=True)


def decode_call(spec: str, operands: tuple[torch.Tensor, ...]) -> tuple[list[Any], dict[str, Any]]:
    def dec(a: Any) -> Any:
        if isinstance(a, dict):
            if "$in" in a:
                return operands[a["$in"]]
            if "$list" in a:
                return [dec(x) for x in a["$list"]]
            if "$dtype" in a:
                return DType.parse(a["$dtype"]).torch
            if "$device" in a:
                return torch.device(a["$device"])
            if "$attr" in a:
                return getattr(torch, a["$attr"])
        return a

    data = json.loads(spec)
    return [dec(a) for a in data["args"]], {k: dec(v) for k, v in data["kwargs"].items()}


def _infer_opaque(input_types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Output types of an opaque call: by meta tensors, or, for an op with no Meta kernel (such as
    aten.fake_quantize_per_tensor_affine_cachemask), under FakeTensorMode as torch.export traced it (the
    op's fake impl, or its CPU kernel run on zeros)."""
    try:
        return infer_by_meta(opaque, input_types, attrs, "opaque")
    except OpError as meta_error:
        try:
            with FakeTensorMode() as mode:
                args = [mode.from_tensor(torch.empty(t.static_shape(), dtype=t.dtype.torch)) for t in input_types]
                return [TensorType.of(t) for t in as_outputs(opaque(*args, **attrs))]
        except Exception:
            raise meta_error from None


@register("opaque", ["*operands"], {"target": Attr("str"), "spec": Attr("str", '{"args": [], "kwargs": {}}')},
          kind="opaque", infer=_infer_opaque)
def opaque(*operands: torch.Tensor, target: str, spec: str) -> Any:
    """An op heteropass does not know: call `target` with the arguments `spec` describes."""
    args, kwargs = decode_call(spec, operands)
    if any(t.device.type == "meta" for t in operands):
        kwargs = {**kwargs, **({"device": "meta"} if "device" in kwargs else {})}
    result = resolve_target(target)(*args, **kwargs)
    if isinstance(result, list | tuple):
        return tuple(r for r in result if isinstance(r, torch.Tensor))
    return result
