"""Quantization ops: ONNX-style quantize/dequantize and the int8 linear layers the quantization passes make.

Scales and zero points follow ONNX `QuantizeLinear`/`DequantizeLinear` (opset 21): a 0-d scale
quantizes per tensor; a 1-D scale with `axis` per slice along that axis; with `block_size > 0` the
scale has the operand's rank and holds one value per block of `block_size` elements along `axis`
(group-wise). Rounding is half-to-even and results saturate to the integer type's range.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..types import DType
from .registry import Attr, register

_QUANT_ATTRS = {"axis": Attr("int", 1), "block_size": Attr("int", 0)}
_INT8_TYPES = (DType.i8, DType.u8)


def broadcast_param(param: torch.Tensor, x: torch.Tensor, axis: int, block_size: int) -> torch.Tensor:
    """A scale or zero point shaped to broadcast against `x` (see the module docstring for the forms)."""
    if param.dim() == 0:
        return param
    if x.dim() == 0:
        raise ValueError(f"a scale of shape {tuple(param.shape)} needs an operand of rank >= 1")
    axis %= x.dim()
    if block_size > 0:
        blocks = -(-x.shape[axis] // block_size)
        expected = (*x.shape[:axis], blocks, *x.shape[axis + 1:])
        if tuple(param.shape) != expected:
            raise ValueError(f"blocked scale must have shape {expected} for block_size {block_size} along axis "
                             f"{axis} of {tuple(x.shape)}, got {tuple(param.shape)}")
        return param.repeat_interleave(block_size, dim=axis).narrow(axis, 0, x.shape[axis])
    if param.dim() != 1 or param.shape[0] != x.shape[axis]:
        raise ValueError(f"per-axis scale must have shape ({x.shape[axis]},) for axis {axis} of "
                         f"{tuple(x.shape)}, got {tuple(param.shape)}")
    shape = [1] * x.dim()
    shape[axis] = -1
    return param.reshape(shape)


def int_range(dtype: DType) -> tuple[int, int]:
    info = torch.iinfo(dtype.torch)
    return info.min, info.max


@register("quantize", ["x", "scale", "zero_point?"], {**_QUANT_ATTRS, "dtype": Attr("dtype", DType.i8)},
          kind="elementwise")
def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None, *, axis: int,
             block_size: int, dtype: DType) -> torch.Tensor:
    """saturate(round(x / scale) + zero_point) as `dtype` (i8 or u8); the zero point's type wins when given."""
    if zero_point is not None:
        dtype = DType.from_torch(zero_point.dtype)
    if dtype not in _INT8_TYPES:
        raise ValueError(f"quantize produces i8 or u8, not {dtype}")
    y = torch.round(x.float() / broadcast_param(scale, x, axis, block_size).float())
    if zero_point is not None:
        y = y + broadcast_param(zero_point, x, axis, block_size).float()
    low, high = int_range(dtype)
    return y.clamp(low, high).to(dtype.torch)


@register("dequantize", ["x", "scale", "zero_point?"], _QUANT_ATTRS, kind="elementwise")
def dequantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None, *, axis: int,
               block_size: int) -> torch.Tensor:
    """(x - zero_point) * scale in the scale's float type."""
    if x.dtype.is_floating_point:
        raise ValueError(f"dequantize takes an integer tensor, got {x.dtype}")
    y = x.float()
    if zero_point is not None:
        y = y - broadcast_param(zero_point, x, axis, block_size).float()
    return (y * broadcast_param(scale, x, axis, block_size).float()).to(scale.dtype)


def _weight(qweight: torch.Tensor, scale: torch.Tensor, block_size: int) -> torch.Tensor:
    if qweight.dtype != torch.int8 or qweight.dim() != 2:
        raise ValueError(f"qweight must be a 2-D int8 tensor [out, in], got {qweight.dtype}{list(qweight.shape)}")
    return dequantize(qweight, scale, axis=weight_scale_axis(block_size), block_size=block_size)


def weight_scale_axis(block_size: int) -> int:
    """The axis of an [out, in] weight its scale runs along: output channels, or blocks of inputs."""
    return 1 if block_size else 0


ACTIVATION_BITS = (32, 16)


@register("linear_weight_int8", ["x", "qweight", "scale", "bias?"],
          {"block_size": Attr("int", 0), "activation_bits": Attr("int", 32)}, kind="matmul")
def linear_weight_int8(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                       bias: torch.Tensor | None = None, *, block_size: int, activation_bits: int = 32) -> torch.Tensor:
    """Weight-only int8 linear: x @ (qweight * scale).T + bias, qweight i8 [out, in] symmetric, scale per
    output channel [out] or, with `block_size`, per group of `block_size` inputs [out, ceil(in / block_size)].
    `activation_bits=16` first rounds x per row to a symmetric 16-bit grid (step max|row| / 32767, the
    form int8 x int16 kernels multiply); 32 uses x as it is."""
    if activation_bits not in ACTIVATION_BITS:
        raise ValueError(f"activation_bits must be one of {ACTIVATION_BITS}, got {activation_bits}")
    if activation_bits == 16:
        xq, x_scale = quantize_rows_symmetric(x, "row", bits=16)
        x = (xq.float() * x_scale).to(x.dtype)
    return F.linear(x, _weight(qweight, scale, block_size), bias)


def quantize_rows_symmetric(x: torch.Tensor, granularity: str, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer values (int8, or int16 for `bits=16`) and float scales of `x` quantized symmetrically to
    [-(2**(bits-1) - 1), 2**(bits-1) - 1] per row (last dim) or per tensor.

    A row (or tensor) holding a NaN or an infinity has no finite scale: its scale is NaN and its integers 0,
    so every result computed from it is NaN (the kernels do the same; eager float gives NaN or +-inf there).
    An empty row or tensor gets the smallest scale."""
    if granularity == "row":
        amax = x.abs().amax(dim=-1, keepdim=True) if x.shape[-1] else x.new_zeros((*x.shape[:-1], 1))
    elif granularity == "tensor":
        amax = x.abs().amax() if x.numel() else x.new_zeros(())
    else:
        raise ValueError(f"granularity must be 'row' or 'tensor', got {granularity!r}")
    top = 2 ** (bits - 1) - 1
    finite = amax.isfinite()
    scale = torch.where(finite, amax.float().clamp(min=1e-12) / top, torch.nan)
    dtype = torch.int8 if bits == 8 else torch.int16
    q = torch.where(finite, torch.round(x.float() / scale).clamp(-top, top), 0.0)
    return q.to(dtype), scale


@register("linear_dynamic_int8", ["x", "qweight", "scale", "bias?"], {"granularity": Attr("str", "row")},
          kind="matmul")
def linear_dynamic_int8(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                        bias: torch.Tensor | None = None, *, granularity: str) -> torch.Tensor:
    """Dynamically quantized linear: x is quantized to int8 at run time, symmetric, one scale per row
    (`granularity="row"`) or per tensor; qweight i8 [out, in] with one scale per output channel. The
    result is (xq @ qweight.T) * x_scale * scale + bias, the int8 product accumulated exactly (int32) by
    kernels and in float32 here."""
    if scale.dim() != 1:
        raise ValueError(f"linear_dynamic_int8 takes one weight scale per output channel, got {list(scale.shape)}")
    xq, x_scale = quantize_rows_symmetric(x, granularity)
    return F.linear(xq.float() * x_scale, _weight(qweight, scale, 0), bias).to(x.dtype)
