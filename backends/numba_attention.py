"""`attention_with_cache` on the CPU: attention over a key/value cache and the new entries, read in place.

A decode step's attention has one (or a few) query rows per head over the cached keys plus the new
ones. PyTorch runs it as two concatenations (copying the whole cache every step) and an ATen attention
call whose fixed cost dominates at this size (~70-120 µs for 16 heads over 129 positions here). The
Numba kernel reads the cache and the new part where they are: per query row, the scores against both,
a softmax (max-shifted, `exp_f32` from numba_math, so the loop vectorizes), and the weighted sum of
the values; grouped-query heads read their shared key/value head, masks (float added, bool kept where
true) and `is_causal` (PyTorch's top-left alignment: query i sees keys j <= i) as PyTorch defines them.
For long query blocks (prefill), concatenating and calling PyTorch is faster; `choose_attention_plan`
times both on the node's shapes and keeps the faster.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numba import carray, cfunc, njit, uint64

from ..ir import DType, Node
from .numba_math import exp_f32
from .timing import fastest_runs

_JIT = {"fastmath": {"nsz", "contract", "reassoc"}, "error_model": "numpy", "nogil": True, "cache": True}
_NEG_INF = np.float32(-np.inf)


def supports_cached_attention(node: Node) -> bool:
    """Whether the plans here compute `node`: attention_with_cache over static float32 [B, H, L, D] tensors
    (a float32 or bool mask) whose keys and values share the batch, their heads (which divide the query
    heads) and their split point; the kernel broadcasts none of them."""
    if node.op != "attention_with_cache":
        return False
    values = [*node.inputs, *node.outputs]
    if any(not v.type.is_static for v in values) or any(v.type.rank != 4 for v in values[:5]):
        return False
    (b, h, _, d), (kb, hk, sp, kd), (nb, nh, sn, nd), (vb, vh, vp, dv), (wb, wh, vn, wd) = (
        v.type.static_shape() for v in node.inputs[:5])
    if {kb, nb, vb, wb} != {b} or {nh, vh, wh} != {hk} or hk == 0 or h % hk:
        return False
    if (kd, nd, vp, vn, wd) != (d, d, sp, sn, dv):
        return False
    floats = [*node.inputs[:5], *node.outputs]
    if any(v.type.dtype is not DType.f32 for v in floats):
        return False
    return len(node.inputs) == 5 or node.inputs[5].type.dtype in (DType.f32, DType.bool)


# Offsets are unsigned: with signed ones Numba adds negative-index wraparound, which keeps loops scalar.


@njit(**_JIT)
def _scores(q, k, scores, q_row, k_base, first, count, d, scale):
    """scores[first + j] = (q[q_row : q_row + d] . k[k_base + j d : ...]) * scale for j < count."""
    width, qr = uint64(d), uint64(q_row)
    for j in range(uint64(count)):
        row = uint64(k_base) + j * width
        acc = np.float32(0.0)
        for t in range(width):
            acc += q[qr + t] * k[row + t]
        scores[uint64(first) + j] = acc * scale


@njit(**_JIT)
def _weighted_sum(p, v, out, out_row, v_base, first, count, dv):
    """out[out_row : out_row + dv] += sum over j < count of p[first + j] * v[v_base + j dv : ...]."""
    width, orow = uint64(dv), uint64(out_row)
    for j in range(uint64(count)):
        w = p[uint64(first) + j]
        row = uint64(v_base) + j * width
        for t in range(width):
            out[orow + t] += w * v[row + t]


@njit(**_JIT)
def _attention(q, kp, kn, vp, vn, mask, out, shape, scale, mask_step, causal):
    """The attention of `attention_with_cache` with shape = (B, H, H_kv, L, S_past, S_new, D, D_v); the mask
    is float32 [B, H, L, S] with the batch and head strides in mask_step (0 where it broadcasts), or empty."""
    b, h, hk, lq, sp, sn, d, dv = shape[0], shape[1], shape[2], shape[3], shape[4], shape[5], shape[6], shape[7]
    s = sp + sn
    group = h // hk
    scores = np.empty(s, np.float32)
    for bi in range(b):
        for hi in range(h):
            g = bi * hk + hi // group
            for i in range(lq):
                q_row = ((bi * h + hi) * lq + i) * d
                _scores(q, kp, scores, q_row, g * sp * d, 0, sp, d, scale)
                _scores(q, kn, scores, q_row, g * sn * d, sp, sn, d, scale)
                if mask.size:
                    m_row = bi * mask_step[0] + hi * mask_step[1] + i * s
                    for j in range(s):
                        scores[j] += mask[m_row + j]
                if causal:
                    for j in range(i + 1, s):
                        scores[j] = _NEG_INF
                top = _NEG_INF
                for j in range(s):
                    top = max(top, scores[j])
                out_row = ((bi * h + hi) * lq + i) * dv
                for t in range(dv):
                    out[out_row + t] = np.float32(0.0)
                if top == _NEG_INF:  # every key masked: PyTorch's attention gives a row of zeros
                    continue
                total = np.float32(0.0)
                for j in range(s):
                    e = exp_f32(scores[j] - top)
                    scores[j] = e
                    total += e
                inv = np.float32(1.0) / total
                for j in range(s):
                    scores[j] *= inv
                _weighted_sum(scores, vp, out, out_row, g * sp * dv, 0, sp, dv)
                _weighted_sum(scores, vn, out, out_row, g * sn * dv, sp, sn, dv)


def _attention_entry(pq, pkp, pkn, pvp, pvn, pmask, pout, pshape, pstep, mask_size, scale, causal):
    shape = carray(pshape, (8,), np.int64)
    b, h, hk, lq, sp, sn, d, dv = shape[0], shape[1], shape[2], shape[3], shape[4], shape[5], shape[6], shape[7]
    _attention(carray(pq, (b * h * lq * d,), np.float32), carray(pkp, (b * hk * sp * d,), np.float32),
               carray(pkn, (b * hk * sn * d,), np.float32), carray(pvp, (b * hk * sp * dv,), np.float32),
               carray(pvn, (b * hk * sn * dv,), np.float32), carray(pmask, (mask_size,), np.float32),
               carray(pout, (b * h * lq * dv,), np.float32), shape, scale, carray(pstep, (2,), np.int64), causal)


_ENTRY: list[Callable[..., None]] = []


def _entry() -> Callable[..., None]:
    """The kernel as a ctypes function, compiled on first use (or loaded from Numba's disk cache)."""
    if not _ENTRY:
        signature = "void(voidptr, voidptr, voidptr, voidptr, voidptr, voidptr, voidptr, voidptr, voidptr, " \
                    "int64, float32, boolean)"
        _ENTRY.append(cfunc(signature, cache=True, nogil=True)(_attention_entry).ctypes)
    return _ENTRY[0]


@dataclass
class AttentionPlan:
    """One way to compute an attention_with_cache node; `call(q, k_past, k_new, v_past, v_new, mask, out=None)`
    writes into `out` (contiguous) when given one."""

    name: str
    call: Callable[..., torch.Tensor]
    text: str


def _float_mask(mask: torch.Tensor, rows: int, keys: int) -> torch.Tensor:
    """The mask as contiguous float32 additive values [B or 1, H or 1, rows, keys]."""
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape).masked_fill_(~mask, -math.inf)
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    return mask.expand(mask.shape[0], mask.shape[1], rows, keys).contiguous()


def numba_plan(node: Node) -> AttentionPlan:
    q_shape = node.inputs[0].type.static_shape()
    b, h, lq, d = q_shape
    hk, sp = node.inputs[1].type.static_shape()[1:3]
    sn = node.inputs[2].type.static_shape()[2]
    dv = node.inputs[3].type.static_shape()[3]
    s = sp + sn
    scale = node.attrs["scale"] if node.attrs["scale"] is not None else 1 / math.sqrt(d)
    sizes = torch.tensor([b, h, hk, lq, sp, sn, d, dv], dtype=torch.int64)
    # the mask's batch and head strides once broadcast to [B or 1, H or 1, L, S]; 0 along a dim it broadcasts over
    mask_lead = [1, 1, *node.inputs[5].type.static_shape()][-4:-2] if len(node.inputs) == 6 else [1, 1]
    step = torch.tensor([mask_lead[1] * lq * s * (mask_lead[0] > 1), lq * s * (mask_lead[1] > 1)], dtype=torch.int64)
    no_mask = torch.empty(0)
    causal = bool(node.attrs["is_causal"])
    kernel = _entry()

    def call(q: torch.Tensor, k_past: torch.Tensor, k_new: torch.Tensor, v_past: torch.Tensor, v_new: torch.Tensor,
             mask: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        y = torch.empty(b, h, lq, dv) if out is None else out
        m = no_mask if mask is None else _float_mask(mask, lq, s)
        operands = [t.contiguous() for t in (q, k_past, k_new, v_past, v_new)]  # alive until the kernel returns
        kernel(*[t.data_ptr() for t in operands], m.data_ptr(), y.data_ptr(), sizes.data_ptr(), step.data_ptr(),
               m.numel(), scale, causal)
        return y

    return AttentionPlan("numba", call, "Numba attention over the cache and the new keys/values in place")


def torch_plan(node: Node) -> AttentionPlan:
    attrs = dict(node.attrs)

    def call(q: torch.Tensor, k_past: torch.Tensor, k_new: torch.Tensor, v_past: torch.Tensor, v_new: torch.Tensor,
             mask: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        y = F.scaled_dot_product_attention(q, torch.cat([k_past, k_new], -2), torch.cat([v_past, v_new], -2),
                                           attn_mask=mask, **attrs)
        return y if out is None else out.copy_(y)

    return AttentionPlan("torch", call, "torch.cat of the cache and the new keys/values, then ATen attention")


_CHOICES: dict[tuple, str] = {}


def choose_attention_plan(node: Node, choices: dict[tuple, str] = _CHOICES) -> AttentionPlan:
    """The faster of the Numba kernel and concat + ATen attention on the node's shapes (remembered)."""
    plans = [numba_plan(node), torch_plan(node)]
    key = (tuple(tuple(v.type.static_shape()) for v in node.inputs), tuple(sorted(node.attrs.items())),
           tuple(v.type.dtype for v in node.inputs), torch.get_num_threads())
    if key not in choices:
        args = example_operands(node)
        times = fastest_runs({plan.name: (lambda p=plan: p.call(*args)) for plan in plans})
        choices[key] = min(times, key=times.__getitem__)
    return next(plan for plan in plans if plan.name == choices[key])


def example_operands(node: Node) -> list[torch.Tensor]:
    """Random operands of the node's types (a bool mask keeps every position)."""
    operands = []
    for value in node.inputs:
        shape = value.type.static_shape()
        if value.const is not None:
            operands.append(value.const)
        elif value.type.dtype is DType.bool:
            operands.append(torch.ones(shape, dtype=torch.bool))
        else:
            operands.append(torch.randn(shape))
    return operands
