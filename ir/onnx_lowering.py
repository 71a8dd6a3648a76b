"""The ONNX lowering rule table and the context a rule works with.

A rule takes a `NodeContext` for one ONNX node and returns the IR values of its outputs (None for
an output it does not produce). Rules build IR nodes with `ctx.call`, which folds a node whose
operands are all constants right away, so shape arithmetic (Shape -> Gather -> Concat -> Reshape)
becomes constants that later rules read with `ctx.const`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import torch

from .graph import Graph, Value
from .ops import get_op
from .types import DType, TensorType

Rule = Callable[["NodeContext"], Sequence[Value | None]]
RULES: dict[str, Rule] = {}

# Fold a constant-operand node at import time only up to this many output elements, so that an
# Expand of a constant to a huge shape stays a node.
FOLD_MAX_NUMEL = 1 << 20

ONNX_TO_DTYPE = {
    onnx.TensorProto.FLOAT: DType.f32, onnx.TensorProto.DOUBLE: DType.f64, onnx.TensorProto.FLOAT16: DType.f16,
    onnx.TensorProto.BFLOAT16: DType.bf16, onnx.TensorProto.INT64: DType.i64, onnx.TensorProto.INT32: DType.i32,
    onnx.TensorProto.INT16: DType.i16, onnx.TensorProto.INT8: DType.i8, onnx.TensorProto.UINT8: DType.u8,
    onnx.TensorProto.BOOL: DType.bool,
}
DTYPE_TO_ONNX = {v: k for k, v in ONNX_TO_DTYPE.items()}


class OnnxImportError(Exception):
    """The ONNX model cannot be imported; the message names the node, op and opset or the file problem.

    `needs_values` lists graph inputs whose values the import would need as constants (a Reshape
    whose shape is a graph input): binding them (`import_onnx(..., bind=...)`) makes it importable.
    """

    def __init__(self, message: str, needs_values: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.needs_values = tuple(needs_values)


class Unsupported(Exception):
    """A rule meets a case of its op that heteropass does not lower (the message says which)."""


class NotConstant(Exception):
    """A rule needs an operand's value at import time and it is computed at run time."""

    def __init__(self, value: Value) -> None:
        super().__init__(value.name)
        self.value = value


def dtype_of(elem_type: int, where: str) -> DType:
    try:
        return ONNX_TO_DTYPE[elem_type]
    except KeyError:
        known = elem_type in onnx.TensorProto.DataType.values()
        name = onnx.TensorProto.DataType.Name(elem_type) if known else elem_type
        raise OnnxImportError(f"{where}: element type {name} is not supported by heteropass") from None


def rule(*op_types: str) -> Callable[[Rule], Rule]:
    """Decorator: register `fn` as the lowering of the given ONNX op types (default domain)."""

    def deco(fn: Rule) -> Rule:
        for op_type in op_types:
            assert op_type not in RULES, op_type
            RULES[op_type] = fn
        return fn

    return deco


def to_torch(array: np.ndarray) -> torch.Tensor:
    """A torch tensor holding a copy of `array` (bfloat16 arrays of ml_dtypes included)."""
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16).copy()).view(torch.bfloat16)
    tensor = torch.from_numpy(np.array(array, copy=True))
    # numpy gives empty arrays zero strides, which byte views of the data reject.
    return tensor if tensor.numel() else torch.empty(tensor.shape, dtype=tensor.dtype)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's data as a numpy array (bfloat16 as ml_dtypes.bfloat16)."""
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.detach().numpy()


class NodeContext:
    """One ONNX node being lowered: its operands as IR values, attributes, opset and the output
    types ONNX shape inference gives (None where unknown)."""

    def __init__(self, graph: Graph, node: onnx.NodeProto, opset: int, inputs: list[Value | None],
                 out_types: list[TensorType | None], attrs: dict[str, Any]) -> None:
        self.graph = graph
        self.node = node
        self.opset = opset
        self.inputs = inputs
        self.out_types = out_types
        self.attrs = attrs
        label = node.name or (node.output[0] if node.output else node.op_type)
        self.where = f"node '{label}' ({node.op_type}, opset {opset})"

    # -- operands and attributes ----------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        return len(self.node.output)

    def wants_output(self, index: int) -> bool:
        return index < len(self.node.output) and self.node.output[index] != ""

    def input(self, index: int) -> Value:
        value = self.optional(index)
        if value is None:
            raise OnnxImportError(f"{self.where}: required input {index} is missing")
        return value

    def optional(self, index: int) -> Value | None:
        return self.inputs[index] if index < len(self.inputs) else None

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def const(self, index: int) -> torch.Tensor | None:
        """The value of operand `index` if it is known at import time (None when the input is absent);
        raises NotConstant when it is computed at run time."""
        value = self.optional(index)
        if value is None:
            return None
        if value.const is None:
            raise NotConstant(value)
        return value.const

    def const_ints(self, index: int) -> list[int] | None:
        tensor = self.const(index)
        return None if tensor is None else [int(v) for v in tensor.reshape(-1).tolist()]

    def unsupported(self, reason: str) -> Unsupported:
        return Unsupported(reason)

    def fail(self, message: str) -> OnnxImportError:
        return OnnxImportError(f"{self.where}: {message}")

    # -- building -------------------------------------------------------------------------------
    def constant(self, data: Any, dtype: DType | torch.dtype | None = None, hint: str = "c") -> Value:
        """A new graph constant from a tensor, array or Python scalar/list."""
        if isinstance(dtype, DType):
            dtype = dtype.torch
        tensor = data if isinstance(data, torch.Tensor) else (
            to_torch(data) if isinstance(data, np.ndarray) else torch.tensor(data))
        if dtype is not None:
            tensor = tensor.to(dtype)
        return self.graph.add_constant(hint, tensor.contiguous())

    def scalar(self, value: float | int | bool, like: Value | DType) -> Value:
        """A 0-d constant with `like`'s element type."""
        dtype = like if isinstance(like, DType) else like.type.dtype
        return self.constant(torch.tensor(value, dtype=dtype.torch))

    def call(self, op: str, *inputs: Value, **attrs: Any) -> Value:
        return self.call_multi(op, inputs, attrs)[0]

    def call_multi(self, op: str, inputs: Sequence[Value], attrs: dict[str, Any]) -> list[Value]:
        """Add an IR node, or its results as constants when every operand is a constant."""
        opdef = get_op(op)
        checked = opdef.check_attrs(dict(attrs), context=f"{self.where}: {op}")
        types = opdef.infer([v.type for v in inputs], checked)
        # An int8 weight's dequantize is not folded: that would store the weight as float again.
        if (opdef.kind != "opaque" and op != "dequantize" and all(v.const is not None for v in inputs)
                and all(t.is_static and t.numel <= FOLD_MAX_NUMEL for t in types)):
            results = opdef.run([v.const for v in inputs], checked)  # type: ignore[misc]
            return [self.constant(r.clone(memory_format=torch.contiguous_format), hint="folded") for r in results]
        node = self.graph.add_node(op, inputs, checked, output_types=types, source=self.where)
        return list(node.outputs)

    def cast(self, value: Value, dtype: DType) -> Value:
        return value if value.type.dtype is dtype else self.call("cast", value, dtype=dtype)

    def reshape(self, value: Value, shape: Sequence[int]) -> Value:
        if tuple(value.type.shape) == tuple(shape):
            return value
        return self.call("reshape", value, shape=tuple(shape))


def normalize_axis(axis: int, rank: int, ctx: NodeContext) -> int:
    if not -max(rank, 1) <= axis < max(rank, 1):
        raise ctx.fail(f"axis {axis} is out of range for rank {rank}")
    return axis % max(rank, 1)


def static_shape(value: Value, ctx: NodeContext) -> tuple[int, ...]:
    if not value.type.is_static:
        raise ctx.fail(f"needs a static shape for %{value.name}, got {value.type}")
    return value.type.static_shape()
