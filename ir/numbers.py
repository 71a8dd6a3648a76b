"""Printing-friendly floats: the shortest decimal that rounds back to a given low-precision value."""

from __future__ import annotations

import torch


def shortest_float(tensor: torch.Tensor) -> float:
    """The one element of `tensor` as the shortest float that rounds back to it in the tensor's dtype, so
    an f32 1e-5 becomes the attribute 1e-05, not 9.999999747378752e-06."""
    exact = float(tensor.reshape(()).item())
    if tensor.dtype in (torch.float32, torch.float16, torch.bfloat16):
        for digits in range(1, 18):
            short = float(f"{exact:.{digits}g}")
            if torch.tensor(short, dtype=tensor.dtype).item() == exact:
                return short
    return exact


def shortest_f32(value: float) -> float:
    """`value`, a float32 widened to a Python float, as the shortest decimal that rounds back to it."""
    return shortest_float(torch.tensor(value, dtype=torch.float32))
