"""Algebraic identities that remove work without changing any value's type."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..ir import DType, Graph, Node, Value
from .base import Pass, PassContext, PassResult


@dataclass(frozen=True)
class Rule:
    """A named rewrite of one node: `apply` returns the value to use instead of the node's single
    output (possibly built from new nodes inserted before it), or None when it does not match.
    The walk only accepts a replacement of exactly the node's output type."""

    name: str
    ops: tuple[str, ...]
    apply: Callable[[Node], Value | None]


def _producer(value: Value, *ops: str) -> Node | None:
    node = value.producer
    return node if node is not None and node.op in ops else None


def _filled_with(value: Value, scalar: float) -> bool:
    """True when `value` is a constant whose every element equals `scalar` (of any shape)."""
    return value.const is not None and bool((value.const == scalar).all())


def _drop_identity_operand(scalar: float, sides: Sequence[int]) -> Callable[[Node], Value | None]:
    """x op c -> x when c is all `scalar`, for c at any of `sides` (operand positions)."""

    def apply(node: Node) -> Value | None:
        for side in sides:
            other = node.inputs[1 - side]
            if _filled_with(node.inputs[side], scalar) and other.type == node.output.type:
                return other
        return None

    return apply


def _div_by_one(node: Node) -> Value | None:
    # floor(x / 1) is not x for fractional x; for integers every rounding mode gives x back.
    if node.attrs["rounding_mode"] is not None and node.inputs[0].type.dtype.is_floating:
        return None
    return _drop_identity_operand(1, [1])(node)


def _neg_neg(node: Node) -> Value | None:
    inner = _producer(node.inputs[0], "neg")
    return inner.inputs[0] if inner is not None else None


def _permutation(node: Node) -> tuple[int, ...]:
    rank = node.inputs[0].type.rank
    if rank == 0:
        return ()
    if node.op == "permute":
        return tuple(d % rank for d in node.attrs["dims"])
    perm = list(range(rank))
    a, b = node.attrs["dim0"] % rank, node.attrs["dim1"] % rank
    perm[a], perm[b] = perm[b], perm[a]
    return tuple(perm)


def _identity_permute(node: Node) -> Value | None:
    perm = _permutation(node)
    return node.inputs[0] if perm == tuple(range(len(perm))) else None


def _compose_permutes(node: Node) -> Value | None:
    """permute(permute(x, p), q) -> permute(x, p∘q), or x when that is the identity."""
    inner = _producer(node.inputs[0], "transpose", "permute")
    if inner is None:
        return None
    inner_perm = _permutation(inner)
    perm = tuple(inner_perm[d] for d in _permutation(node))
    x = inner.inputs[0]
    if perm == tuple(range(len(perm))):
        return x
    assert node.graph is not None
    return node.graph.add_node("permute", [x], {"dims": perm}, before=node, device=node.device,
                               source=node.source).output


def _swap_as_transpose(node: Node) -> Value | None:
    """A permute or transpose that swaps exactly two dims a < b -> transpose{dim0=a, dim1=b}, the one
    spelling importers agree on (ONNX Transpose gives permute, aten gives transpose with any dim order)."""
    perm = _permutation(node)
    swapped = [d for d, p in enumerate(perm) if d != p]
    if len(swapped) != 2:
        return None
    a, b = swapped
    if node.op == "transpose" and (node.attrs["dim0"], node.attrs["dim1"]) == (a, b):
        return None
    assert node.graph is not None
    return node.graph.add_node("transpose", [node.inputs[0]], {"dim0": a, "dim1": b}, before=node,
                               device=node.device, source=node.source).output


def _global_average_pool(node: Node) -> Value | None:
    """adaptive_avg_pool to an all-ones output size -> mean over the pooled (trailing) dims, keepdim,
    which is how ONNX GlobalAveragePool and ReduceMean arrive."""
    size = node.attrs["output_size"]
    if any(s != 1 for s in size):
        return None
    rank = node.inputs[0].type.rank
    assert node.graph is not None
    return node.graph.add_node("mean", [node.inputs[0]], {"dims": tuple(range(rank - len(size), rank)),
                                                           "keepdim": True},
                               before=node, device=node.device, source=node.source).output


def _embedding_as_take(node: Node) -> Value | None:
    """embedding(w, i) -> take(w, i, dim=0, wrap=false), the spelling ONNX Gather arrives as, keeping
    embedding's error for a negative index (take would count it from the end)."""
    assert node.graph is not None
    return node.graph.add_node("take", list(node.inputs), {"dim": 0, "wrap": False}, before=node,
                               device=node.device, source=node.source).output


def _attention_without_mask(node: Node) -> Value | None:
    """scaled_dot_product_attention with a constant mask that masks nothing (all-zero float, all-true
    bool; what a decode step's causal mask folds to when the query may see every key) -> the same
    attention without the mask, which runs a faster kernel."""
    if len(node.inputs) != 4 or node.inputs[3].const is None:
        return None
    mask = node.inputs[3].const
    if not (bool(mask.all()) if mask.dtype == torch.bool else _filled_with(node.inputs[3], 0)):
        return None
    assert node.graph is not None
    return node.graph.add_node("scaled_dot_product_attention", list(node.inputs[:3]), dict(node.attrs), before=node,
                               device=node.device, source=node.source).output


# Ops that only reinterpret the row-major element order under a new shape.
_VIEWS = ("reshape", "flatten", "squeeze", "unsqueeze")


def _reshape_of_view(node: Node) -> Value | None:
    """reshape(reshape(x)) -> reshape(x), and likewise through flatten/squeeze/unsqueeze."""
    inner = _producer(node.inputs[0], *_VIEWS)
    if inner is None:
        return None
    assert node.graph is not None
    return node.graph.add_node("reshape", [inner.inputs[0]], {"shape": node.attrs["shape"]}, before=node,
                               device=node.device, source=node.source).output


def _same_shape(node: Node) -> Value | None:
    """A reshape/expand/flatten/squeeze whose result has its operand's shape is its operand."""
    return node.inputs[0]


def _squeeze_unsqueeze(node: Node) -> Value | None:
    # Both are views of the same element order, so equal shapes (checked by the walk) mean equal tensors.
    inner = _producer(node.inputs[0], "unsqueeze")
    return inner.inputs[0] if inner is not None else None


def _cast_noop(node: Node) -> Value | None:
    return node.inputs[0] if node.attrs["dtype"] is node.inputs[0].type.dtype else None


_FLOATS = (DType.f16, DType.bf16, DType.f32, DType.f64)
# source -> types that hold every value of the source exactly, so a round trip through them is lossless.
_EXACT_WIDENING: dict[DType, frozenset[DType]] = {
    DType.f16: frozenset({DType.f32, DType.f64}),
    DType.bf16: frozenset({DType.f32, DType.f64}),
    DType.f32: frozenset({DType.f64}),
    DType.i8: frozenset({DType.i16, DType.i32, DType.i64, *_FLOATS}),
    DType.u8: frozenset({DType.i16, DType.i32, DType.i64, *_FLOATS}),
    DType.i16: frozenset({DType.i32, DType.i64, DType.f32, DType.f64}),
    DType.i32: frozenset({DType.i64, DType.f64}),
    DType.bool: frozenset(DType) - {DType.bool},
}


def _cast_round_trip(node: Node) -> Value | None:
    """cast(cast(x, wide), x.dtype) -> x when `wide` holds every value of x's type exactly."""
    inner = _producer(node.inputs[0], "cast")
    if inner is None:
        return None
    x = inner.inputs[0]
    exact = inner.attrs["dtype"] in _EXACT_WIDENING.get(x.type.dtype, frozenset())
    return x if exact and node.attrs["dtype"] is x.type.dtype else None


def _full_slice(node: Node) -> Value | None:
    # With step 1, an output as long as the input along `dim` can only be the whole dimension.
    return node.inputs[0] if node.attrs["step"] == 1 else None


def _slice_of_concat(node: Node) -> Value | None:
    """slice(concat(x_0, ..., x_n), dim) with step 1 along the concatenated dim, within one x_i -> that part of
    x_i (x_i itself when whole): a decode step returning its newest cache entry, concat(cache, new)[..., -1:, :],
    returns `new`, and the concatenation may then serve the attention alone."""
    concat = _producer(node.inputs[0], "concat")
    rank = node.inputs[0].type.rank
    if concat is None or node.attrs["step"] != 1 or rank == 0:
        return None
    dim = node.attrs["dim"] % rank
    sizes = [v.type.shape[dim] for v in concat.inputs]
    length = node.output.type.shape[dim]
    if concat.attrs["dim"] % rank != dim or not all(isinstance(n, int) for n in [*sizes, length]):
        return None
    total = sum(sizes)  # type: ignore[arg-type]
    start = node.attrs["start"] + (total if node.attrs["start"] < 0 else 0)
    start = min(max(start, 0), total)
    offset = 0
    for value, size in zip(concat.inputs, sizes, strict=True):
        if offset <= start and start + length <= offset + size:  # type: ignore[operator]
            if length == size:
                return value
            assert node.graph is not None
            return node.graph.add_node("slice", [value], {"dim": dim, "start": start - offset,
                                                          "end": start - offset + length, "step": 1},
                                       before=node, device=node.device, source=node.source).output
        offset += size  # type: ignore[operator]
    return None


def _single_concat(node: Node) -> Value | None:
    return node.inputs[0] if len(node.inputs) == 1 else None


RULES: tuple[Rule, ...] = (
    Rule("mul-by-one", ("mul",), _drop_identity_operand(1, [0, 1])),
    Rule("add-zero", ("add",), _drop_identity_operand(0, [0, 1])),
    Rule("sub-zero", ("sub",), _drop_identity_operand(0, [1])),
    Rule("div-by-one", ("div",), _div_by_one),
    Rule("pow-one", ("pow",), _drop_identity_operand(1, [1])),
    Rule("neg-neg", ("neg",), _neg_neg),
    Rule("identity-permute", ("transpose", "permute"), _identity_permute),
    Rule("compose-permutes", ("transpose", "permute"), _compose_permutes),
    Rule("swap-as-transpose", ("transpose", "permute"), _swap_as_transpose),
    Rule("global-average-pool", ("adaptive_avg_pool",), _global_average_pool),
    Rule("embedding-as-take", ("embedding",), _embedding_as_take),
    Rule("attention-without-mask", ("scaled_dot_product_attention",), _attention_without_mask),
    Rule("same-shape", ("reshape", "expand", "flatten", "squeeze"), _same_shape),
    Rule("reshape-of-view", ("reshape",), _reshape_of_view),
    Rule("squeeze-unsqueeze", ("squeeze",), _squeeze_unsqueeze),
    Rule("cast-noop", ("cast",), _cast_noop),
    Rule("cast-round-trip", ("cast",), _cast_round_trip),
    Rule("full-slice", ("slice",), _full_slice),
    Rule("slice-of-concat", ("slice",), _slice_of_concat),
    Rule("single-concat", ("concat",), _single_concat),
)


class SimplifyAlgebraPass(Pass):
    """Apply the identity rules in `RULES` (x*1, x+0, neg(neg(x)), permute/reshape chains, no-op and
    round-trip casts, full slices, slices within one concatenated part, ...) and the canonical spellings
    (a two-dim swap is a transpose, a global average pool is a mean, an embedding is a take, attention
    drops a mask that masks nothing) until none matches, replacing a node only by a value of exactly
    its type, so broadcasting and type promotion are never lost.

    `x + 0 -> x` treats -0.0 and 0.0 alike (as `torch.equal` does): it turns -0.0 + 0.0 = 0.0
    into -0.0. Statistics count applications per rule name.
    """

    name = "simplify-algebra"
    opt_level = 1

    def __init__(self, rules: Sequence[Rule] = RULES) -> None:
        self.rules: dict[str, list[Rule]] = {}
        for rule in rules:
            for op in rule.ops:
                self.rules.setdefault(op, []).append(rule)

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        stats: dict[str, int | float] = {}
        changed = True
        # Rules read producers and rewrite readers, so a forward walk mostly finishes in one round;
        # new nodes inserted behind the walk are picked up by the next.
        while changed:
            changed = False
            for node in graph:
                if node.graph is not graph or len(node.outputs) != 1:
                    continue
                for rule in self.rules.get(node.op, ()):
                    replacement = rule.apply(node)
                    if replacement is None or replacement.type != node.output.type:
                        continue
                    graph.replace_all_uses(node.output, replacement)
                    graph.remove_dead([node])
                    stats[rule.name] = stats.get(rule.name, 0) + 1
                    changed = True
                    break
        return PassResult(graph, bool(stats), stats)
