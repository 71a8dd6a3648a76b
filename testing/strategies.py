"""Hypothesis strategies: random well-typed graphs with safe inputs, for property tests.

`graph_and_inputs()` builds a graph step by step with the real `Graph` API, so every node's type
is inferred by the op table. Each step draws an op family from a list and its operands by index
into the values defined so far; shrinking therefore removes steps and moves operands toward the
first inputs, and a failing example shrinks to a graph of a few nodes.

Values stay finite: each value carries an upper bound on its magnitude, ops that would exceed
`MAX_BOUND` are not built, and ops with a restricted domain (log, sqrt, rsqrt, reciprocal, div)
read `abs(x) + c` with c >= 0.5. Inputs are clamped standard-normal floats and nonzero integers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from hypothesis import strategies as st

from ..ir import DType, Graph, Node, TensorType, Value

Draw = Callable[[st.SearchStrategy[Any]], Any]
Case = tuple[Graph, list[torch.Tensor]]  # a graph and inputs for it

MAX_BOUND = 1e4  # largest magnitude a value may reach; keeps float32 rounding well inside test tolerances
MAX_NUMEL = 512
MAX_RANK = 5
INPUT_BOUND = 3.0

FAMILIES = (
    "binary", "unary", "compare", "where", "matmul", "reduce", "reshape", "transpose", "permute", "unsqueeze",
    "squeeze", "flatten", "expand", "softmax", "layer_norm", "concat", "slice", "split", "cast", "constant",
    "duplicate",
)
_NUMERIC = (DType.f64, DType.f32, DType.i64, DType.i32)
_CAST_TARGETS = (DType.f32, DType.f64, DType.i64, DType.i32, DType.bool)

# Strategies are immutable; sharing them saves re-validating thousands of new ones per example.
_ints = functools.lru_cache(maxsize=None)(st.integers)
_choice = functools.lru_cache(maxsize=None)(st.sampled_from)
_BOOLS = st.booleans()


def tensor_types(dtypes: Sequence[DType] = (DType.f32,), min_rank: int = 0, max_rank: int = 4,
                 max_dim: int = 5, min_dim: int = 1) -> st.SearchStrategy[TensorType]:
    """Static tensor types with dims in min_dim..max_dim (size-1 dims included; shrinks toward scalars)."""
    shapes = st.lists(_ints(min_dim, max_dim), min_size=min_rank, max_size=max_rank).map(tuple)
    return st.builds(TensorType, shapes, _choice(tuple(dtypes)))


# Families whose builders handle size-0 dimensions (slicing, reshaping, normalizing and reducing pick
# their sizes and bounds from nonzero dims).
EMPTY_SAFE_FAMILIES = (
    "binary", "unary", "compare", "where", "matmul", "transpose", "permute", "unsqueeze", "squeeze", "flatten",
    "expand", "concat", "cast", "constant", "duplicate",
)


def strided_layout(tensor: torch.Tensor, layout: int) -> torch.Tensor:
    """`tensor`'s values in another memory layout: 0 as is, 1 every other element of a wider buffer along
    the last dim, 2 column-major (the last two dims swapped in memory), 3 at an offset into a larger
    buffer."""
    if tensor.dim() == 0 or layout == 0:
        return tensor
    if layout == 1:
        wide = torch.empty((*tensor.shape[:-1], 2 * tensor.shape[-1]), dtype=tensor.dtype)[..., ::2]
        return wide.copy_(tensor)
    if layout == 2 and tensor.dim() >= 2:
        return tensor.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == 3:
        return torch.empty(tensor.numel() + 3, dtype=tensor.dtype)[3:].view(tensor.shape).copy_(tensor)
    return tensor


def random_input(type: TensorType, seed: int) -> torch.Tensor:
    """A tensor inside the strategy's bounds: floats in [-3, 3], nonzero integers in [-3, 3]."""
    gen = torch.Generator().manual_seed(seed)
    shape = type.static_shape()
    if type.dtype.is_floating:
        return torch.randn(shape, generator=gen).clamp(-INPUT_BOUND, INPUT_BOUND).to(type.dtype.torch)
    if type.dtype is DType.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    magnitude = torch.randint(1, int(INPUT_BOUND) + 1, shape, generator=gen)
    sign = torch.randint(0, 2, shape, generator=gen) * 2 - 1
    return (magnitude * sign).to(type.dtype.torch)


def graph_and_inputs(max_nodes: int = 8, max_inputs: int = 3, families: Sequence[str] = FAMILIES,
                     input_dtypes: Sequence[DType] = (DType.f32,), min_dim: int = 1) -> st.SearchStrategy[Case]:
    """A random verified graph of up to `max_nodes` steps and matching inputs.

    `families` restricts the op families drawn (see `FAMILIES`); a step whose family finds no
    suitable operand adds nothing, and helper nodes (the `abs(x) + c` guards) come on top. The
    first input has rank 1 or more, later ones may be scalars. `min_dim=0` draws size-0 dims too,
    for the `EMPTY_SAFE_FAMILIES` only.
    """
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown op families {sorted(unknown)}; known: {FAMILIES}")
    if min_dim < 1 and set(families) - set(EMPTY_SAFE_FAMILIES):
        raise ValueError(f"size-0 dims only with {EMPTY_SAFE_FAMILIES}")
    return _graph_and_inputs(max_nodes, max_inputs, tuple(families), tuple(input_dtypes), min_dim)


@st.composite
def _graph_and_inputs(draw: Draw, max_nodes: int, max_inputs: int, families: tuple[str, ...],
                      input_dtypes: tuple[DType, ...], min_dim: int = 1) -> Case:
    builder = _Builder(draw, Graph("random"))
    input_types = [draw(tensor_types(input_dtypes, min_rank=1, min_dim=min_dim))]
    input_types += draw(st.lists(tensor_types(input_dtypes, min_dim=min_dim), max_size=max_inputs - 1))
    for i, type in enumerate(input_types):
        builder.add(builder.graph.add_input(f"x{i}", type), INPUT_BOUND)
    steps = draw(_ints(1, max_nodes))
    for _ in range(steps):
        _BUILD[draw(_choice(families))](builder)
    graph = builder.graph
    outputs = [graph.nodes[-1].outputs[0]] if graph.nodes else []
    extra = draw(st.lists(_ints(0, len(builder.values) - 1), min_size=0 if outputs else 1, max_size=2))
    graph.set_outputs(outputs + [builder.values[i] for i in extra])
    seed = draw(_ints(0, 2**16))
    inputs = [random_input(v.type, seed + i) for i, v in enumerate(graph.inputs)]
    return graph, inputs


def graphs(max_nodes: int = 8, max_inputs: int = 3, families: Sequence[str] = FAMILIES,
           input_dtypes: Sequence[DType] = (DType.f32,)) -> st.SearchStrategy[Graph]:
    """Random verified graphs (the graph half of `graph_and_inputs`)."""
    return graph_and_inputs(max_nodes, max_inputs, families, input_dtypes).map(lambda pair: pair[0])


class _Builder:
    """The graph under construction, its values in definition order and their magnitude bounds."""

    def __init__(self, draw: Draw, graph: Graph) -> None:
        self.draw = draw
        self.graph = graph
        self.values: list[Value] = []
        self.bound: dict[Value, float] = {}

    def add(self, value: Value, bound: float) -> Value:
        self.values.append(value)
        self.bound[value] = bound
        return value

    def pick(self, ok: Callable[[Value], bool]) -> Value | None:
        """An existing value accepted by `ok`, chosen by index (shrinks toward the first input)."""
        candidates = [v for v in self.values if ok(v)]
        if not candidates:
            return None
        return candidates[self.draw(_ints(0, len(candidates) - 1))]

    def node(self, op: str, inputs: Sequence[Value], bound: float, **attrs: Any) -> Node | None:
        """Add a node unless its outputs would be too large or too big in magnitude."""
        if bound > MAX_BOUND:
            return None
        node = self.graph.add_node(op, inputs, attrs)
        if any(v.type.numel > MAX_NUMEL or v.type.rank > MAX_RANK for v in node.outputs):
            self.graph.remove_node(node)
            return None
        for value in node.outputs:
            self.add(value, bound)
        return node

    def call(self, op: str, inputs: Sequence[Value], bound: float, **attrs: Any) -> Value | None:
        node = self.node(op, inputs, bound, **attrs)
        return None if node is None else node.outputs[0]

    def constant(self, shape: tuple[int, ...], dtype: DType = DType.f32, positive: bool = False) -> Value:
        """A new constant: random, all ones, all zeros, or the same data as an existing constant
        (the same value, or a copy under a new name) so that folding, simplification and CSE fire."""
        fill = self.draw(_choice(("random", "ones", "zeros", "copy", "random")))  # random twice: most often
        if fill == "copy":
            same = [v for v in self.graph.constants.values()
                    if v.type == TensorType(shape, dtype) and (not positive or self.bound_below(v) >= 0.5)]
            if same:
                original = same[self.draw(_ints(0, len(same) - 1))]
                if self.draw(_BOOLS):
                    return original
                return self.add(self.graph.add_constant(f"c{len(self.graph.constants)}", original.const.clone()),
                                self.bound[original])
            fill = "random"
        if fill == "zeros" and positive:
            fill = "ones"
        if fill == "ones":
            tensor = torch.ones(shape)
        elif fill == "zeros":
            tensor = torch.zeros(shape)
        else:
            # A stream apart from the inputs' seeds, so that a constant never equals an input by chance.
            gen = torch.Generator().manual_seed(2**20 + self.draw(_ints(0, 2**16)))
            tensor = torch.randn(shape, generator=gen).clamp(-2.0, 2.0)
            if not dtype.is_floating:
                tensor = tensor * 2
            if positive:
                tensor = tensor.abs() + 0.5
        if not dtype.is_floating and dtype is not DType.bool:
            tensor = tensor.round()
            if positive:
                tensor = tensor.clamp(min=1)
        tensor = tensor.to(dtype.torch)
        bound = float(tensor.double().abs().max()) if tensor.numel() else 0.0
        return self.add(self.graph.add_constant(f"c{len(self.graph.constants)}", tensor), max(bound, 1.0))

    def bound_below(self, value: Value) -> float:
        """The least element of a constant (0 for anything else)."""
        if value.const is None or value.const.numel() == 0:
            return 0.0
        return float(value.const.min())

    def partner(self, shape: tuple[int | str, ...], ok: Callable[[Value], bool], dtype: DType,
                positive: bool = False) -> Value:
        """A second operand that broadcasts with `shape`: an existing value or a new constant."""
        if not positive and self.draw(_BOOLS):
            value = self.pick(lambda v: ok(v) and _broadcastable(v.type.shape, shape))
            if value is not None:
                return value
        return self.constant(self.draw(_partner_shapes(shape)), dtype, positive)

    def safe(self, value: Value) -> Value | None:
        """`abs(value) + c` with a constant c >= 0.5, for ops with a restricted domain."""
        magnitude = self.call("abs", [value], self.bound[value])
        if magnitude is None:
            return None
        half = self.constant((), value.type.dtype if _is_numeric(value) else DType.f32, positive=True)
        return self.call("add", [magnitude, half], self.bound[value] + self.bound[half])


def _broadcastable(a: tuple[int | str, ...], b: tuple[int | str, ...]) -> bool:
    try:
        torch.broadcast_shapes(a, b)  # type: ignore[arg-type]
    except RuntimeError:
        return False
    return True


@st.composite
def _partner_shapes(draw: Draw, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape that broadcasts with `shape`: a suffix of it with some dims set to 1, size-1 dims
    possibly widened, and possibly one extra leading dim. Shrinks toward a scalar."""
    keep = draw(_ints(0, len(shape)))
    dims = []
    for d in shape[len(shape) - keep:]:
        if d == 1:
            dims.append(draw(_ints(1, 3)))
        else:
            dims.append(1 if draw(_BOOLS) else d)
    if keep == len(shape) and len(shape) < 4 and draw(_BOOLS):
        dims.insert(0, draw(_ints(1, 3)))
    return tuple(dims)


def _is_float(v: Value) -> bool:
    return v.type.dtype.is_floating


def _is_numeric(v: Value) -> bool:
    return v.type.dtype in _NUMERIC


def _dim(draw: Draw, rank: int) -> int:
    """A dimension index of a rank-`rank` tensor, sometimes written negatively."""
    d = draw(_ints(0, rank - 1))
    return d - rank if draw(_BOOLS) else d


def _numel(shape: Sequence[int | str]) -> int:
    return math.prod(int(d) for d in shape)


def _binary(b: _Builder) -> None:
    op = b.draw(_choice(("add", "mul", "sub", "div", "maximum", "minimum", "pow")))
    limit = math.sqrt(MAX_BOUND) if op in ("mul", "pow") else MAX_BOUND
    a = b.pick(lambda v: _is_numeric(v) and b.bound[v] <= (10.0 if op == "pow" else limit))
    if a is None:
        return
    const_dtype = a.type.dtype
    if op == "pow":
        exponent = float(b.draw(_choice((2, 1, 3, 0))))
        other = b.add(b.graph.add_constant(f"c{len(b.graph.constants)}",
                                           torch.tensor(exponent, dtype=const_dtype.torch)), max(exponent, 1.0))
        b.call("pow", [a, other], max(b.bound[a], 1.0) ** exponent)
        return
    other = b.partner(a.type.shape, lambda v: _is_numeric(v) and b.bound[v] <= limit, const_dtype,
                      positive=op == "div" and b.draw(_BOOLS))
    if op == "div":
        if b.bound_below(other) < 0.5:
            guarded = b.safe(other)
            if guarded is None:
                return
            other = guarded
        b.call("div", [a, other], b.bound[a] / 0.5)
        return
    if b.draw(_BOOLS):
        a, other = other, a
    bounds = {"add": b.bound[a] + b.bound[other], "sub": b.bound[a] + b.bound[other],
              "mul": b.bound[a] * b.bound[other]}
    b.call(op, [a, other], bounds.get(op, max(b.bound[a], b.bound[other])))


_UNARY_BOUND: dict[str, Callable[[float], float]] = {
    "relu": lambda x: x, "neg": lambda x: x, "abs": lambda x: x, "tanh": lambda x: 1.0,
    "sigmoid": lambda x: 1.0, "sin": lambda x: 1.0, "cos": lambda x: 1.0, "erf": lambda x: 1.0,
    "silu": lambda x: x, "gelu": lambda x: x, "exp": math.exp, "log": lambda x: max(math.log(x), 1.0),
    "sqrt": math.sqrt, "rsqrt": lambda x: 1.5, "reciprocal": lambda x: 2.0,
}
_DOMAIN_RESTRICTED = ("log", "sqrt", "rsqrt", "reciprocal")


def _unary(b: _Builder) -> None:
    op = b.draw(_choice(tuple(_UNARY_BOUND)))
    ok = _is_numeric if op in ("relu", "neg", "abs") else _is_float
    x = b.pick(lambda v: ok(v) and (op != "exp" or b.bound[v] <= 8.0))
    if x is None:
        return
    if op in _DOMAIN_RESTRICTED:
        x = b.safe(x)
        if x is None:
            return
    b.call(op, [x], _UNARY_BOUND[op](b.bound[x]))


def _comparison(b: _Builder) -> Value | None:
    op = b.draw(_choice(("lt", "gt", "le", "ge", "eq", "ne")))
    a = b.pick(_is_numeric)
    if a is None:
        return None
    other = b.partner(a.type.shape, _is_numeric, a.type.dtype)
    return b.call(op, [a, other], 1.0)


def _compare(b: _Builder) -> None:
    _comparison(b)


def _where(b: _Builder) -> None:
    cond = b.pick(lambda v: v.type.dtype is DType.bool) if b.draw(_BOOLS) else None
    if cond is None:
        cond = _comparison(b)
        if cond is None:
            return
    x = b.partner(cond.type.shape, _is_numeric, DType.f32)
    shape = tuple(torch.broadcast_shapes(cond.type.shape, x.type.shape))  # type: ignore[arg-type]
    y = b.partner(shape, _is_numeric, x.type.dtype)
    b.call("where", [cond, x, y], max(b.bound[x], b.bound[y]))


def _matmul_compatible(a: tuple[int, ...], w: tuple[int, ...]) -> bool:
    if not a or not w or a[-1] != w[-2 if len(w) > 1 else 0]:
        return False
    return _broadcastable(a[:-2], w[:-2])


def _matmul(b: _Builder) -> None:
    a = b.pick(lambda v: _is_float(v) and v.type.rank >= 1 and b.bound[v] <= 100.0)
    if a is None:
        return
    k = a.type.shape[-1]
    w = None
    if b.draw(_BOOLS):
        w = b.pick(lambda v: v.type.dtype is a.type.dtype and b.bound[v] <= 100.0
                   and _matmul_compatible(a.type.shape, v.type.shape))
    if w is None:
        form = b.draw(_choice(("matrix", "vector", "batched")))
        n = b.draw(_ints(1, 4))
        if form == "vector":
            shape: tuple[int, ...] = (k,)
        elif form == "batched" and a.type.rank >= 3:
            shape = (b.draw(_choice((1, a.type.shape[-3]))), k, n)
        else:
            shape = (k, n)
        w = b.constant(shape, a.type.dtype)
    b.call("matmul", [a, w], k * b.bound[a] * b.bound[w])


def _reduce(b: _Builder) -> None:
    op = b.draw(_choice(("sum", "mean", "amax")))
    x = b.pick(_is_float if op == "mean" else _is_numeric)
    if x is None:
        return
    rank = x.type.rank
    dims = None
    if rank and b.draw(_BOOLS):
        chosen = b.draw(st.lists(_ints(0, rank - 1), min_size=1, max_size=rank, unique=True))
        dims = tuple(d - rank if b.draw(_BOOLS) else d for d in chosen)
    keepdim = b.draw(_BOOLS)
    reduced = _numel(x.type.shape) if dims is None else _numel([x.type.shape[d] for d in dims])
    bound = b.bound[x] * (reduced if op == "sum" else 1)
    b.call(op, [x], bound, dims=dims, keepdim=keepdim)


def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while n > 1:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    return factors


def _reshape(b: _Builder) -> None:
    x = b.pick(lambda v: True)
    if x is None:
        return
    factors = b.draw(st.permutations(_prime_factors(_numel(x.type.shape))))
    dims: list[int] = []
    for i, f in enumerate(factors):
        if i and b.draw(_BOOLS):
            dims[-1] *= f
        else:
            dims.append(f)
    for position in b.draw(st.lists(_ints(0, len(dims)), max_size=2)):
        dims.insert(position, 1)
    if dims and b.draw(_BOOLS):
        dims[b.draw(_ints(0, len(dims) - 1))] = -1
    b.call("reshape", [x], b.bound[x], shape=tuple(dims))


def _transpose(b: _Builder) -> None:
    x = b.pick(lambda v: v.type.rank >= 1)
    if x is not None:
        b.call("transpose", [x], b.bound[x], dim0=_dim(b.draw, x.type.rank), dim1=_dim(b.draw, x.type.rank))


def _permute(b: _Builder) -> None:
    x = b.pick(lambda v: v.type.rank >= 1)
    if x is not None:
        b.call("permute", [x], b.bound[x], dims=tuple(b.draw(st.permutations(range(x.type.rank)))))


def _unsqueeze(b: _Builder) -> None:
    x = b.pick(lambda v: True)
    if x is not None:
        b.call("unsqueeze", [x], b.bound[x], dim=_dim(b.draw, x.type.rank + 1))


def _squeeze(b: _Builder) -> None:
    x = b.pick(lambda v: True)
    if x is None:
        return
    dims = None
    if x.type.rank and b.draw(_BOOLS):
        dims = tuple(b.draw(st.lists(_ints(0, x.type.rank - 1), min_size=1, max_size=2, unique=True)))
    b.call("squeeze", [x], b.bound[x], dims=dims)


def _flatten(b: _Builder) -> None:
    x = b.pick(lambda v: True)
    if x is None:
        return
    rank = max(x.type.rank, 1)
    start = b.draw(_ints(0, rank - 1))
    end = b.draw(_ints(start, rank - 1))
    if b.draw(_BOOLS):
        end -= rank
    b.call("flatten", [x], b.bound[x], start_dim=start, end_dim=end)


def _expand(b: _Builder) -> None:
    x = b.pick(lambda v: True)
    if x is None:
        return
    shape = [b.draw(_choice((-1, 1, 2, 3))) if d == 1 else b.draw(_choice((-1, d)))
             for d in x.type.shape]
    leading = b.draw(st.lists(_ints(1, 3), max_size=1))
    b.call("expand", [x], b.bound[x], shape=tuple(leading + shape))


def _softmax(b: _Builder) -> None:
    op = b.draw(_choice(("softmax", "log_softmax")))
    x = b.pick(lambda v: _is_float(v) and v.type.rank >= 1)
    if x is None:
        return
    dim = _dim(b.draw, x.type.rank)
    bound = 1.0 if op == "softmax" else 2 * b.bound[x] + math.log(int(x.type.shape[dim]))
    b.call(op, [x], bound, dim=dim)


def _layer_norm(b: _Builder) -> None:
    x = b.pick(lambda v: _is_float(v) and v.type.rank >= 1)
    if x is None:
        return
    shape = tuple(int(d) for d in x.type.shape[-b.draw(_ints(1, min(2, x.type.rank))):])
    operands = [x]
    affine = b.draw(_choice(("none", "weight", "weight+bias")))
    if affine != "none":
        operands.append(b.constant(shape, x.type.dtype))
    if affine == "weight+bias":
        operands.append(b.constant(shape, x.type.dtype))
    scale = b.bound[operands[1]] if len(operands) > 1 else 1.0
    shift = b.bound[operands[2]] if len(operands) > 2 else 0.0
    b.call("layer_norm", operands, math.sqrt(_numel(shape)) * scale + shift, normalized_shape=shape)


def _concat(b: _Builder) -> None:
    x = b.pick(lambda v: v.type.rank >= 1)
    if x is None:
        return
    dim = _dim(b.draw, x.type.rank)
    axis = dim % x.type.rank

    def fits(v: Value) -> bool:
        return (v.type.dtype is x.type.dtype and v.type.rank == x.type.rank
                and all(p == q for i, (p, q) in enumerate(zip(v.type.shape, x.type.shape, strict=True)) if i != axis))

    operands = [x]
    for _ in range(b.draw(_ints(1, 2))):
        other = b.pick(fits) if b.draw(_BOOLS) else None
        if other is None:
            shape = list(x.type.shape)
            shape[axis] = b.draw(_ints(1, 3))
            other = b.constant(tuple(shape), x.type.dtype)
        operands.insert(b.draw(_ints(0, len(operands))), other)
    b.call("concat", operands, max(b.bound[v] for v in operands), dim=dim)


def _slice(b: _Builder) -> None:
    x = b.pick(lambda v: v.type.rank >= 1)
    if x is None:
        return
    dim = _dim(b.draw, x.type.rank)
    size = int(x.type.shape[dim])
    start = b.draw(_ints(0, size - 1))
    end: int | None = b.draw(_ints(start + 1, size))
    step = b.draw(_ints(1, 3))
    form = b.draw(_choice(("plain", "negative", "open", "past")))
    if form == "negative":
        start, end = start - size, end - size if end < size else end
    elif form == "open" and end == size:
        end = None
    elif form == "past" and end == size:
        end = size + 2
    b.call("slice", [x], b.bound[x], dim=dim, start=start, end=end, step=step)


def _split(b: _Builder) -> None:
    x = b.pick(lambda v: v.type.rank >= 1)
    if x is None:
        return
    dim = _dim(b.draw, x.type.rank)
    sizes = [1]
    for _ in range(int(x.type.shape[dim]) - 1):
        if len(sizes) < 3 and b.draw(_BOOLS):
            sizes.append(1)
        else:
            sizes[-1] += 1
    b.node("split", [x], b.bound[x], sizes=tuple(sizes), dim=dim)


def _cast(b: _Builder) -> None:
    x = b.pick(lambda v: True)
    if x is not None:
        dtype = b.draw(_choice(_CAST_TARGETS))
        b.call("cast", [x], 1.0 if dtype is DType.bool else b.bound[x], dtype=dtype)


def _constant(b: _Builder) -> None:
    """A new constant shaped to broadcast with an existing value, sometimes combined with a second
    constant right away so that constant folding has work."""
    like = b.pick(lambda v: True)
    if like is None:
        return
    c = b.constant(b.draw(_partner_shapes(like.type.shape)), DType.f32)
    if b.draw(_BOOLS):
        op = b.draw(_choice(("add", "mul", "sub", "tanh")))
        if op == "tanh":
            b.call(op, [c], 1.0)
        else:
            other = b.constant(b.draw(_partner_shapes(c.type.shape)), DType.f32)
            bound = b.bound[c] * b.bound[other] if op == "mul" else b.bound[c] + b.bound[other]
            b.call(op, [c, other], bound)


def _duplicate(b: _Builder) -> None:
    if not b.graph.nodes:
        return
    node = b.graph.nodes[b.draw(_ints(0, len(b.graph.nodes) - 1))]
    b.node(node.op, node.inputs, max(b.bound[v] for v in node.outputs), **node.attrs)


_BUILD: dict[str, Callable[[_Builder], None]] = {
    "binary": _binary, "unary": _unary, "compare": _compare, "where": _where, "matmul": _matmul,
    "reduce": _reduce, "reshape": _reshape, "transpose": _transpose, "permute": _permute,
    "unsqueeze": _unsqueeze, "squeeze": _squeeze, "flatten": _flatten, "expand": _expand,
    "softmax": _softmax, "layer_norm": _layer_norm, "concat": _concat, "slice": _slice, "split": _split,
    "cast": _cast, "constant": _constant, "duplicate": _duplicate,
}
assert set(_BUILD) == set(FAMILIES)
