"""Tensor types of the IR: element types and shapes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from math import prod

import torch


class DType(Enum):
    """Element types, named as they print in dumps."""

    f64 = "f64"
    f32 = "f32"
    f16 = "f16"
    bf16 = "bf16"
    i64 = "i64"
    i32 = "i32"
    i16 = "i16"
    i8 = "i8"
    u8 = "u8"
    bool = "bool"

    @property
    def torch(self) -> torch.dtype:
        return _TO_TORCH[self]

    @property
    def is_floating(self) -> bool:
        return self in (DType.f64, DType.f32, DType.f16, DType.bf16)

    @staticmethod
    def from_torch(dtype: torch.dtype) -> DType:
        try:
            return _FROM_TORCH[dtype]
        except KeyError:
            raise TypeError(f"heteropass has no element type for {dtype}") from None

    @staticmethod
    def parse(text: str) -> DType:
        try:
            return DType(text)
        except ValueError:
            raise ValueError(f"unknown dtype {text!r}; expected one of {[d.value for d in DType]}") from None

    def __str__(self) -> str:
        return self.value


_TO_TORCH = {
    DType.f64: torch.float64,
    DType.f32: torch.float32,
    DType.f16: torch.float16,
    DType.bf16: torch.bfloat16,
    DType.i64: torch.int64,
    DType.i32: torch.int32,
    DType.i16: torch.int16,
    DType.i8: torch.int8,
    DType.u8: torch.uint8,
    DType.bool: torch.bool,
}
_FROM_TORCH = {v: k for k, v in _TO_TORCH.items()}

# A dimension is a static size or, later, a symbolic name such as "batch".
Dim = int | str


@dataclass(frozen=True)
class TensorType:
    """The static type of a value: element type and shape (`f32[8,16]`)."""

    shape: tuple[Dim, ...]
    dtype: DType

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def numel(self) -> int:
        if not self.is_static:
            raise ValueError(f"{self} has symbolic dimensions; numel is unknown")
        return prod(self.shape)  # type: ignore[arg-type]

    def static_shape(self) -> tuple[int, ...]:
        if not self.is_static:
            raise ValueError(f"{self} has symbolic dimensions")
        return self.shape  # type: ignore[return-value]

    def meta(self) -> torch.Tensor:
        """An empty tensor on the meta device with this type, for abstract evaluation."""
        return torch.empty(self.static_shape(), dtype=self.dtype.torch, device="meta")

    @staticmethod
    def of(tensor: torch.Tensor) -> TensorType:
        return TensorType(tuple(tensor.shape), DType.from_torch(tensor.dtype))

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"
