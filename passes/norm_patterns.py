"""Checks and builders shared by the normalization patterns (recognize-layer-norm, recognize-rms-norm)."""

from __future__ import annotations

from ..ir import DType, Node, Value
from .rewrite import Match


def trailing_dims(node: Node) -> int | None:
    """How many trailing dims a keepdim reduction covers (dims exactly the last k), else None."""
    dims, rank = node.attrs["dims"], node.inputs[0].type.rank
    if dims is None or not node.attrs["keepdim"] or rank == 0:
        return None
    normalized = sorted(d % rank for d in dims)
    k = len(normalized)
    return k if normalized == list(range(rank - k, rank)) else None


def check_normalized(m: Match, k: int) -> str | None:
    """The last `k` dims of the captured "x" are static and the captured scalar "eps" fits: why not, or None."""
    x = m["x"]
    if x.type.dtype in (DType.f16, DType.bf16):
        # The decomposed form squares and sums in half precision (x^2 overflows f16 from |x| = 256); one
        # fused norm accumulates in float32, which is more accurate but not the same result.
        return f"%{x.name} is {x.type.dtype}: fusing would change where the result is rounded"
    shape = x.type.shape[x.type.rank - k:]
    if not all(isinstance(d, int) for d in shape):
        return f"the normalized shape {list(shape)} is not static"
    if m["eps"].type.rank > 0 and m["eps"].type.dtype != x.type.dtype:
        return f"eps {m['eps'].type} would promote {x.type}"
    if m.scalar("eps") < 0:
        return "eps is negative"
    return None


def normalize(m: Match, op: str) -> Value:
    """`op(x)` over the trailing dims the captured "mean" reduces, with the captured eps."""
    x = m["x"]
    k = trailing_dims(m.node("mean"))
    assert k is not None
    return m.call(op, x, normalized_shape=x.type.shape[x.type.rank - k:], eps=m.scalar("eps"))


def check_affine(m: Match) -> str | None:
    """The captured "p" (a weight or bias) has the normalized shape and the dtype of the captured "norm"."""
    norm, operand = m.node("norm"), m["p"]
    shape = tuple(norm.attrs["normalized_shape"])
    if operand.type.shape != shape:
        return f"%{operand.name} has shape {list(operand.type.shape)}, expected the normalized shape {list(shape)}"
    if operand.type.dtype != norm.outputs[0].type.dtype:
        return f"%{operand.name} is {operand.type.dtype}, the norm is {norm.outputs[0].type.dtype}"
    return None
