"""The output check every timing waits for: a system whose outputs differ from eager's is a failure, not a speedup."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

FP32_TOLERANCE = 1e-4  # relative to the largest reference magnitude; float32 systems stay near 1e-6


class WrongOutputs(Exception):
    """The outputs differ from the reference: in count, shape, dtype kind, or values beyond the tolerance."""


def output_tensors(result: Any) -> list[torch.Tensor]:
    """The outputs of a model, an ONNX Runtime run or a compiled module, as tensors in order."""
    from torch.utils._pytree import tree_leaves

    leaves = tree_leaves(result)
    return [leaf if isinstance(leaf, torch.Tensor) else torch.as_tensor(np.asarray(leaf)) for leaf in leaves]


def leaf_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| over the largest finite |expected|; NaN (or inf) where `actual` has a NaN or
    an infinity that `expected` does not have at the same place. Non-float outputs must be equal (0 or inf)."""
    if tuple(actual.shape) != tuple(expected.shape):
        raise WrongOutputs(f"shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    if actual.dtype.is_floating_point != expected.dtype.is_floating_point:
        raise WrongOutputs(f"dtype {actual.dtype}, expected {expected.dtype}")
    if not expected.is_floating_point():
        return 0.0 if torch.equal(actual, expected) else math.inf
    if expected.numel() == 0:
        return 0.0
    actual, expected = actual.double(), expected.double()
    same = (actual == expected) | (actual.isnan() & expected.isnan())  # equal infinities and shared NaNs
    difference = torch.where(same, 0.0, (actual - expected).abs())  # NaN or inf stays, and max keeps NaN
    finite = expected[expected.isfinite()].abs()
    scale = float(finite.max()) if finite.numel() else 1.0
    return float(difference.max()) / max(scale, 1e-12)


def max_relative_error(actual: Any, expected: Any) -> float:
    """The worst `leaf_error` over all outputs (NaN when any is NaN); WrongOutputs when the output counts,
    shapes or dtype kinds differ."""
    got, want = output_tensors(actual), output_tensors(expected)
    if len(got) != len(want):
        raise WrongOutputs(f"{len(got)} outputs, expected {len(want)}")
    errors = []
    for i, (a, e) in enumerate(zip(got, want, strict=True)):
        try:
            errors.append(leaf_error(a, e))
        except WrongOutputs as exc:
            raise WrongOutputs(f"output {i}: {exc}") from None
    return max(errors, key=lambda error: (math.isnan(error), error), default=0.0)


def check_outputs(actual: Any, expected: Any, tolerance: float = FP32_TOLERANCE) -> float:
    """`max_relative_error` of `actual` against `expected`, or WrongOutputs when it is above `tolerance` or NaN."""
    error = max_relative_error(actual, expected)
    if not error <= tolerance:
        raise WrongOutputs(f"err {error:.0e}")
    return error
