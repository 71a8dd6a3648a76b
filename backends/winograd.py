"""3x3 stride-1 convolutions by Winograd's minimal filtering F(4x4, 3x3): Numba transforms around a library GEMM.

A direct convolution makes 9 multiply-adds per output and input channel. F(4x4, 3x3) computes each 4x4
output tile from the 6x6 input tile around it with 36 products instead of 144: the input tiles are
transformed, V = B^T d B (Numba); the transformed weights U = G g G^T (made once, the weight being a
constant) multiply them, one [C_out, C_in] x [C_in, tiles] product for each of the 36 tile positions
(one batched GEMM, `torch.bmm`); the output transform A^T M A plus the bias gives the tiles (Numba). On
ResNet's 3x3 convolutions at one thread (Zen 1, AVX2) that takes 3.4 ms where ONNX Runtime's direct
NCHWc kernel takes 6.0 (64 channels, 56x56), 3.2 vs 5.9 (128, 28x28) and 4.3 vs 5.9 (256, 14x14); with
few tiles (512 channels, 7x7) the small GEMMs lose, which the timed choice in gemm.py sees. The GEMM is
about 60% of the time. Accuracy: relative errors ~5e-6 per convolution instead of ~1e-6 (Lavin & Gray,
2016); a NaN or infinity spreads over the 4x4 output tile it falls in.

The transforms run over one input channel at a time: the channel's zero-padded plane is copied once,
each tile row's 6-wide row transforms read it, and the column transforms and the output transform run
along all tiles of the plane (contiguous, vectorized).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..ir import DType, Node

# The F(4x4, 3x3) matrices (Lavin & Gray's choice of points 0, +-1, +-2).
_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
TILE = 4
WINOGRAD = "winograd"  # how the description of a Winograd product starts


def winograd_applies(node: Node) -> bool:
    """Whether `winograd_conv_call` computes `node`: a float32 2-D 3x3 conv, stride 1, no dilation, one
    group, over static shapes, with a constant weight (and bias)."""
    if node.op != "conv" or len(node.inputs) < 2 or node.inputs[1].type.rank != 4:
        return False
    values = [*node.inputs, *node.outputs]
    if any(not v.type.is_static or v.type.dtype is not DType.f32 for v in values):
        return False
    if any(v.const is None for v in node.inputs[1:]):
        return False
    attrs = node.attrs
    return (tuple(node.inputs[1].type.static_shape()[2:]) == (3, 3) and set(attrs["stride"]) == {1}
            and set(attrs["dilation"]) == {1} and attrs["groups"] == 1)


def winograd_conv_call(node: Node) -> tuple[Callable[..., torch.Tensor], str] | None:
    """`call(x, w, b, out=None)` computing conv `node` by F(4x4, 3x3), and its description; None when
    `winograd_applies` says no. The weight transform is made here; `w` is not read again."""
    if not winograd_applies(node):
        return None
    weight = node.inputs[1].const
    assert weight is not None
    padding = list(node.attrs["padding"]) * 2 if len(node.attrs["padding"]) == 1 else list(node.attrs["padding"])
    n, c_in, _, _ = node.inputs[0].type.static_shape()
    y_shape = tuple(node.outputs[0].type.static_shape())
    tiles_h, tiles_w = -(-y_shape[2] // TILE), -(-y_shape[3] // TILE)
    tiles = n * tiles_h * tiles_w
    zero_bias = torch.zeros(y_shape[1])
    local = threading.local()  # per-thread scratch: calls from two threads must not share it
    transformed: list[torch.Tensor] = []  # made at the first call: planning lists options it never runs

    def call(x: torch.Tensor, w: object, b: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
        kernels = _kernels()
        # Normal tensors even when the first call runs under inference mode: later calls write into them.
        with torch.inference_mode(False):
            if not transformed:
                transformed.append(weight_transform(weight))
            if not hasattr(local, "v"):
                local.v, local.m = torch.empty(36, c_in, tiles), torch.empty(36, y_shape[1], tiles)
        u = transformed[0]
        v, m = local.v, local.m
        y = torch.empty(y_shape) if out is None else out
        kernels.input_transform(x.detach().contiguous().numpy(), v.numpy(), padding[0], padding[1], tiles_h, tiles_w)
        torch.bmm(u, v, out=m)
        bias = zero_bias if b is None else b.detach().reshape(-1)
        kernels.output_transform(m.numpy(), y.detach().numpy(), bias.numpy(), tiles_h, tiles_w)
        return y

    return call, f"{WINOGRAD} F(4x4,3x3): numba transforms + torch.bmm([36, {y_shape[1]}, {c_in}] x tiles)"


def weight_transform(weight: torch.Tensor) -> torch.Tensor:
    """U[k] = (G g G^T)[k // 6, k % 6] for every [C_out, C_in] pair of 3x3 weights g: [36, C_out, C_in],
    computed in float64."""
    g = torch.from_numpy(_G)
    u = torch.einsum("ak,oikl,bl->aboi", g, weight.detach().double(), g)
    return u.reshape(36, weight.shape[0], weight.shape[1]).float().contiguous()


def _kernels() -> Any:
    """The Numba transforms (winograd_kernels.py), imported at the first call: Numba loads slowly."""
    from . import winograd_kernels

    return winograd_kernels
