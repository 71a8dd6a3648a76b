"""Attention over a packed Q/K/V product as one ONNX Runtime session (com.microsoft.MultiHeadAttention).

A transformer layer computes Q, K and V in one product [B, S, 3*E] (merge-parallel-linears), cuts it
(split), views each part per head (reshape to [B, S, H, D], transpose to [B, H, S, D]), attends
(scaled_dot_product_attention) and puts the heads back (transpose, reshape to [B, S, E]). ONNX Runtime's
MultiHeadAttention takes Q, K and V as [B, S, E] and returns [B, S, E]: the whole chain is one session
that reads the product and writes the layer's attention output where the next product reads it. On short
sequences it is faster than ATen's flash attention (2 heads of 64 over 128 positions, Zen 1, one thread:
~330 against ~400 µs, and the five view calls around it go too); with many heads and a causal mask ATen
wins, so `choose_packed_attention` times both on the chain's shapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from ..ir import DType, Node, Value
from .ort_gemm import BoundRuns, ort_available, session_options
from .timing import fastest_runs

try:
    from onnx import TensorProto, helper, numpy_helper
except ImportError:  # onnx is optional for this backend
    helper = None


@dataclass
class PackedAttention:
    """A chain split -> (reshape -> transpose) x 3 -> attention -> transpose -> reshape over `qkv` [B, S, 3*E],
    ending in `output` [B, S, E]; `nodes` in graph order. `mask` is a constant additive mask (a bool one
    turned into 0 / -inf) or None."""

    nodes: list[Node]
    qkv: Value
    output: Value
    heads: int
    scale: float
    causal: bool
    mask: torch.Tensor | None

    def describe(self) -> str:
        _, seq, packed = self.qkv.type.static_shape()
        return (f"{self.heads} heads of {packed // 3 // self.heads} over {seq} positions"
                f"{', causal' if self.causal else ''}{', masked' if self.mask is not None else ''}")


def find_packed_attention(nodes: Sequence[Node], returned: Callable[[Value], bool]) -> list[PackedAttention]:
    """The chains among `nodes` that `packed_attention_call` computes (see the module docstring): float32,
    static shapes, each intermediate value read once, by the next node of the chain, and not `returned`."""
    if not ort_available() or helper is None:
        return []
    found = []
    for node in nodes:
        if node.op == "scaled_dot_product_attention" and (chain := _match(node, returned)) is not None:
            found.append(chain)
    return found


def _only_reader(value: Value, returned: Callable[[Value], bool], op: str) -> Node | None:
    if returned(value) or len(value.uses) != 1 or value.uses[0][0].op != op:
        return None
    return value.uses[0][0]


def _head_view(value: Value, returned: Callable[[Value], bool]) -> tuple[Node, Node, Node] | None:
    """(split, reshape, transpose) making attention operand `value` from a packed product, or None."""
    transpose = value.producer
    if transpose is None or transpose.op != "transpose" or returned(value) or len(value.uses) != 1:
        return None
    if {transpose.attrs["dim0"] % 4, transpose.attrs["dim1"] % 4} != {1, 2}:
        return None
    reshape = transpose.inputs[0].producer
    if reshape is None or reshape.op != "reshape" or _only_reader(reshape.outputs[0], returned, "transpose") is None:
        return None
    split = reshape.inputs[0].producer
    if split is None or split.op != "split" or _only_reader(reshape.inputs[0], returned, "reshape") is None:
        return None
    return split, reshape, transpose


def _match(attention: Node, returned: Callable[[Value], bool]) -> PackedAttention | None:
    q, k, v = attention.inputs[:3]
    views = [_head_view(x, returned) for x in (q, k, v)]
    if any(view is None for view in views) or attention.attrs["enable_gqa"]:
        return None
    split = views[0][0]  # type: ignore[index]
    if any(view[0] is not split or view[1].inputs[0] is not split.outputs[i]  # type: ignore[index]
           for i, view in enumerate(views)):
        return None
    qkv = split.inputs[0]
    values = [qkv, *(x for view in views for n in view for x in n.outputs), *attention.outputs]  # type: ignore[union-attr]
    if any(not x.type.is_static or x.type.dtype is not DType.f32 for x in values):
        return None
    sizes = split.attrs["sizes"]
    if qkv.type.rank != 3 or q.type.rank != 4 or split.attrs["dim"] % 3 != 2 or len(sizes) != 3 or len(set(sizes)) != 1:
        return None
    batch, seq, packed = qkv.type.static_shape()
    if batch * seq * packed == 0:
        return None  # ONNX Runtime refuses to run a session with an empty output
    heads, dim = q.type.static_shape()[1], q.type.static_shape()[3]
    if (heads * dim * 3 != packed or any(tuple(x.type.static_shape()) != (batch, heads, seq, dim) for x in (q, k, v))
            or any(tuple(view[1].outputs[0].type.static_shape()) != (batch, seq, heads, dim)  # type: ignore[index]
                   for view in views)):
        return None
    back = _only_reader(attention.outputs[0], returned, "transpose")
    if back is None or {back.attrs["dim0"] % 4, back.attrs["dim1"] % 4} != {1, 2}:
        return None
    merge = _only_reader(back.outputs[0], returned, "reshape")
    if merge is None or tuple(merge.outputs[0].type.static_shape()) != (batch, seq, heads * dim):
        return None
    mask = None
    if len(attention.inputs) > 3 and attention.inputs[3] is not None:
        mask = _additive_mask(attention.inputs[3], batch, heads, seq)
        if mask is None:
            return None
    if attention.attrs["is_causal"] and mask is not None:
        return None
    scale = attention.attrs["scale"]
    if scale == 0:
        return None  # ONNX Runtime reads scale 0 as "not given" and uses 1/sqrt(dim)
    nodes = [split, *(n for view in views for n in view[1:]), attention, back, merge]  # type: ignore[index]
    return PackedAttention(nodes, qkv, merge.outputs[0], heads, 1 / math.sqrt(dim) if scale is None else scale,
                           attention.attrs["is_causal"], mask)


def _additive_mask(value: Value, batch: int, heads: int, seq: int) -> torch.Tensor | None:
    """Constant mask `value` as a float tensor [1 or B, 1 or H, S, S] added to the scores, or None when
    it is not a constant of a shape MultiHeadAttention takes, or it hides a whole row (all False, or all
    -inf): PyTorch's CPU kernel then gives zeros for that query (as heteropass does), the session NaN."""
    mask = value.const
    if mask is None or mask.dim() > 4 or mask.dim() < 2 or mask.dtype not in (torch.bool, torch.float32):
        return None
    mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    if mask.shape[0] not in (1, batch) or mask.shape[1] not in (1, heads) or tuple(mask.shape[2:]) != (seq, seq):
        return None
    if mask.dtype is torch.bool:
        mask = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    if (mask == float("-inf")).all(dim=-1).any():
        return None
    return mask.contiguous()


def packed_attention_call(chain: PackedAttention) -> Callable[..., list[torch.Tensor]]:
    """`call(qkv, out=None)` computing `chain` in one session; the result lands in `out[0]` when given."""
    batch, seq, packed = chain.qkv.type.static_shape()
    width = packed // 3
    inputs = ["q", "k", "v"] + (["", "", "mask"] if chain.mask is not None else [])
    nodes = [helper.make_node("Split", ["qkv"], ["q", "k", "v"], axis=2, num_outputs=3),
             helper.make_node("MultiHeadAttention", inputs, ["y"], domain="com.microsoft", num_heads=chain.heads,
                              scale=chain.scale, unidirectional=int(chain.causal))]
    initializers = [] if chain.mask is None else [numpy_helper.from_array(chain.mask.numpy(), "mask")]
    graph = helper.make_graph(nodes, "packed_attention",
                              [helper.make_tensor_value_info("qkv", TensorProto.FLOAT, [batch, seq, packed])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, seq, width])],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("com.microsoft", 1)])

    def session(threads: int) -> object:
        import onnxruntime as ort

        return ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                    providers=["CPUExecutionProvider"])

    runs = BoundRuns(session, [("qkv", (batch, seq, packed))], [("y", (batch, seq, width))])
    shape = (batch, seq, width)

    def call(qkv: torch.Tensor, out: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        y = torch.empty(shape) if out is None else out[0]
        runs.run((qkv.contiguous(),), (y,))
        return [y] if out is None else out

    return call


# Measured choices, per (chain, threads) in this process, as for products (gemm.choose_plan).
_CHOICES: dict[Hashable, bool] = {}
BUDGET_S = 0.05


def choose_packed_attention(chain: PackedAttention, one_by_one: Callable[[torch.Tensor], object],
                            choices: dict[Hashable, bool] = _CHOICES) -> Callable[..., list[torch.Tensor]] | None:
    """`packed_attention_call(chain)` where it is measured faster than `one_by_one(qkv)` (the chain's nodes
    run by themselves), on a random product with the caches flushed before each run; else None."""
    call = packed_attention_call(chain)
    key = (chain.describe(), tuple(chain.qkv.type.static_shape()), chain.scale,
           None if chain.mask is None else hash(chain.mask.numpy().tobytes()), torch.get_num_threads())
    if key not in choices:
        qkv = torch.randn(chain.qkv.type.static_shape())
        out = [torch.empty(chain.output.type.static_shape())]
        seconds = fastest_runs({"session": partial(call, qkv, out=out), "nodes": partial(one_by_one, qkv)},
                               BUDGET_S, evict=True)
        choices[key] = seconds["session"] < seconds["nodes"]
    return call if choices[key] else None
