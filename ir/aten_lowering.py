"""Lowering rules from ATen ops to IR ops: one rule per op overload (or per op packet), as data.

A rule receives the `Lowerer` and the call's arguments bound to the ATen schema's names (tensors
already replaced by IR values) and returns the IR value, or a tuple for multi-output ops. A rule
raises `Unsupported` when it cannot express a particular call; the importer then emits an
`opaque` node that runs the ATen op itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .graph import Graph, Value
from .types import DType, TensorType

aten = torch.ops.aten

Result = Value | tuple[Value | None, ...]
Rule = Callable[["Lowerer", dict[str, Any]], Result]


class Unsupported(Exception):
    """This call of an otherwise mapped op has no IR equivalent (the message says why)."""


class Lowerer:
    """Emits IR for one FX node at a time; rules build on its helpers."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.source: str | None = None
        self.out_types: list[TensorType] | None = None
        self.used_outputs: set[int] = set()
        self._scalars: dict[tuple[str, DType], Value] = {}

    def emit(self, op: str, *inputs: Value, **attrs: Any) -> Value:
        return self.graph.add_node(op, inputs, attrs, source=self.source).output

    def emit_multi(self, op: str, inputs: Sequence[Value], **attrs: Any) -> tuple[Value, ...]:
        return tuple(self.graph.add_node(op, inputs, attrs, source=self.source).outputs)

    def scalar(self, value: float | bool, dtype: DType) -> Value:
        """A 0-d constant, shared between all uses of the same value and type."""
        key = (repr(value), dtype)
        if key not in self._scalars:
            tensor = torch.tensor(value, dtype=dtype.torch)
            self._scalars[key] = self.graph.add_constant(f"c{len(self._scalars)}", tensor)
        return self._scalars[key]

    def operand(self, x: Any, other: Any, wrap: bool = True) -> Value:
        """`x` as a value; a Python number becomes a 0-d constant of the type PyTorch computes in, an integer
        out of that type's range wrapped into it as arithmetic does (`int8_tensor * 1000` multiplies by -24;
        `wrap=False`: an error, as torch.where gives)."""
        if isinstance(x, Value):
            return x
        if not isinstance(x, bool | int | float):
            raise Unsupported(f"operand {x!r} is neither a tensor nor a number")
        if isinstance(other, Value):
            dtype = DType.from_torch(torch.result_type(other.type.meta(), x))
        else:
            dtype = DType.from_torch(torch.tensor(x).dtype)
        if wrap and type(x) is int and not dtype.is_floating and dtype is not DType.bool:
            x = int(torch.tensor(x, dtype=torch.int64).to(dtype.torch))
        return self.scalar(x, dtype)

    def out_dtype(self, fallback: DType) -> DType:
        """The element type PyTorch recorded for the (first) output, if it did."""
        return self.out_types[0].dtype if self.out_types else fallback

    def only_first_output(self, value: Value, count: int) -> tuple[Value | None, ...]:
        """For multi-output ATen ops of which the IR op computes only the first result."""
        if self.used_outputs - {0}:
            raise Unsupported(f"outputs {sorted(self.used_outputs - {0})} have no IR equivalent")
        return (value,) + (None,) * (count - 1)


def _ints(x: int | Sequence[int]) -> tuple[int, ...]:
    return (x,) if isinstance(x, int) else tuple(x)


def _dims_of(x: Value, dims: Sequence[int]) -> tuple[int, ...]:
    """`dims` of `x` counted from the front (a 0-d tensor's dim 0 or -1 is 0)."""
    return tuple(d % max(x.type.rank, 1) for d in _ints(dims))


def _dims(dim: int | Sequence[int] | None) -> tuple[int, ...] | None:
    """An ATen `dim` argument as IR `dims`: None and [] both mean every dimension."""
    if dim is None:
        return None
    dims = _ints(dim)
    return dims or None


def _dtype(dtype: torch.dtype | None) -> DType | None:
    return None if dtype is None else DType.from_torch(dtype)


def _shape(x: Value) -> tuple[int, ...]:
    return x.type.static_shape()


def _args(a: dict[str, Any]) -> list[Any]:
    return list(a.values())


# -- elementwise -------------------------------------------------------------------------------

def _unary(op: str) -> Rule:
    return lambda lx, a: lx.emit(op, _args(a)[0])


def _binary(op: str) -> Rule:
    def rule(lx: Lowerer, a: dict[str, Any]) -> Value:
        x, y = _args(a)[:2]
        return lx.emit(op, lx.operand(x, y), lx.operand(y, x))

    return rule


def _add_sub(op: str, reverse: bool = False) -> Rule:
    """add/sub: self op alpha*other; rsub (`reverse`): other - alpha*self."""

    def rule(lx: Lowerer, a: dict[str, Any]) -> Value:
        x, y, alpha = _args(a)[:3]
        x, y = lx.operand(x, y), lx.operand(y, x)
        scaled = x if reverse else y
        if alpha != 1:
            scaled = lx.emit("mul", scaled, lx.operand(alpha, scaled))
        return lx.emit(op, y, scaled) if reverse else lx.emit(op, x, scaled)

    return rule


def _pow(lx: Lowerer, a: dict[str, Any]) -> Value:
    """pow. A float tensor to the power 0.5, -0.5, -1, 2, 3 or -2 becomes the op PyTorch's CPU kernel runs for
    it (sqrt, rsqrt, ...): they differ from std::pow at -0.0 and -inf (pow(-inf, 0.5) is inf, sqrt(-inf) NaN)."""
    x, y = _args(a)[:2]
    # PyTorch's CPU kernel has these shortcuts for float, double and bfloat16; float16 runs std::pow.
    if not (isinstance(x, Value) and isinstance(y, int | float) and not isinstance(y, bool)
            and x.type.dtype in (DType.f32, DType.f64, DType.bf16) and lx.out_dtype(x.type.dtype) == x.type.dtype):
        return lx.emit("pow", lx.operand(x, y), lx.operand(y, x))
    if y in (0.5, -0.5):
        return lx.emit("sqrt" if y > 0 else "rsqrt", x)
    if y in (2, 3, -1, -2):
        power = x if abs(y) == 1 else lx.emit("mul", x, x)
        power = lx.emit("mul", power, x) if y == 3 else power
        return lx.emit("reciprocal", power) if y < 0 else power
    return lx.emit("pow", x, lx.operand(y, x))


def _mul_div(op: str) -> Rule:
    """mul/div. With a 16-bit float result and a Python number that type cannot hold exactly, PyTorch's
    CPU kernels multiply or divide in float32 by the number in float32 and round once (`x_f16 * 70000.0`
    is finite); add and sub convert the number to the tensor's type instead."""

    def rule(lx: Lowerer, a: dict[str, Any]) -> Value:
        x, y = _args(a)[:2]
        attrs = {"rounding_mode": a.get("rounding_mode")} if op == "div" else {}
        if op == "div" and attrs["rounding_mode"] is None:
            # True division computes in floating point: `int8_x / 128` divides by 128.0, not by 128 wrapped.
            x, y = (float(v) if type(v) is int else v for v in (x, y))
        narrow = lx.out_dtype(DType.f32)
        numbers = [n for n in (x, y) if not isinstance(n, Value | bool)]
        if narrow not in (DType.f16, DType.bf16) or all(
                torch.tensor(n, dtype=narrow.torch).item() == n for n in numbers):
            return lx.emit(op, lx.operand(x, y), lx.operand(y, x), **attrs)
        x, y = (lx.emit("cast", v, dtype=DType.f32) if isinstance(v, Value) else v for v in (x, y))
        return lx.emit("cast", lx.emit(op, lx.operand(x, y), lx.operand(y, x), **attrs), dtype=narrow)

    return rule


def _where(lx: Lowerer, a: dict[str, Any]) -> Value:
    x, y = a["self"], a["other"]
    return lx.emit("where", a["condition"], lx.operand(x, y, wrap=False), lx.operand(y, x, wrap=False))


def _masked_fill(lx: Lowerer, a: dict[str, Any]) -> Value:
    x, value = a["self"], a["value"]
    # masked_fill keeps the dtype of self, whatever the fill value's type.
    fill = value if isinstance(value, Value) else lx.scalar(value, x.type.dtype)
    if fill.type.dtype != x.type.dtype:
        fill = lx.emit("cast", fill, dtype=x.type.dtype)
    return lx.emit("where", a["mask"], fill, x)


def _clamp(lx: Lowerer, a: dict[str, Any]) -> Value:
    x, lo, hi = _args(a)[:3]
    if isinstance(lo, Value) or isinstance(hi, Value):
        if lo is not None:
            x = lx.emit("maximum", x, lx.operand(lo, x))
        if hi is not None:
            x = lx.emit("minimum", x, lx.operand(hi, x))
        return x
    if not x.type.dtype.is_floating and any(isinstance(b, float) for b in (lo, hi)):
        # PyTorch promotes an integer tensor clamped by float bounds to the default float type.
        x = lx.emit("cast", x, dtype=DType.from_torch(torch.get_default_dtype()))
    return lx.emit("clamp", x, min=lo, max=hi)


def _clamp_bound(which: str) -> Rule:
    return lambda lx, a: _clamp(lx, {"self": a["self"], "min": a[which] if which == "min" else None,
                                      "max": a[which] if which == "max" else None})


def _elu(lx: Lowerer, a: dict[str, Any]) -> Value:
    if a["scale"] != 1 or a["input_scale"] != 1:
        raise Unsupported("elu with scale or input_scale other than 1")
    return lx.emit("elu", a["self"], alpha=a["alpha"])


def _to_copy(lx: Lowerer, a: dict[str, Any]) -> Value:
    x, dtype = a["self"], a.get("dtype")
    if dtype is None or DType.from_torch(dtype) == x.type.dtype:
        return x
    return lx.emit("cast", x, dtype=dtype)


def _identity(lx: Lowerer, a: dict[str, Any]) -> Value:
    return _args(a)[0]


def _dropout(lx: Lowerer, a: dict[str, Any]) -> Value:
    if a["train"] and a["p"] > 0:
        raise Unsupported("dropout in training mode")
    return a["input"]


# -- creation ----------------------------------------------------------------------------------

def _fill_dtype(value: Any) -> DType:
    if isinstance(value, bool):
        return DType.bool
    if isinstance(value, int):
        return DType.i64
    return DType.from_torch(torch.get_default_dtype())


def _full(value_key: str | float, shape_from: str = "size") -> Rule:
    def rule(lx: Lowerer, a: dict[str, Any]) -> Value:
        value = a[value_key] if isinstance(value_key, str) else value_key
        source = a[shape_from]
        shape = _shape(source) if isinstance(source, Value) else _ints(source)
        fallback = source.type.dtype if isinstance(source, Value) else _fill_dtype(value)
        dtype = _dtype(a.get("dtype")) or lx.out_dtype(fallback)
        number = float(value) if dtype.is_floating or dtype is DType.bool else int(value)
        return lx.emit("full", shape=shape, value=number, dtype=dtype)

    return rule


def _new_full(value_key: str | float) -> Rule:
    """new_full/new_zeros/new_ones/new_empty: a filled tensor of `size`, of self's dtype unless given."""
    fill = _full(value_key)
    return lambda lx, a: fill(lx, {**a, "dtype": a["dtype"] or a["self"].type.dtype.torch})


def _scalar_tensor(lx: Lowerer, a: dict[str, Any]) -> Value:
    value = a["s"]
    return lx.scalar(value, _dtype(a.get("dtype")) or lx.out_dtype(_fill_dtype(value)))


def _arange(lx: Lowerer, a: dict[str, Any]) -> Value:
    start, end, step = a.get("start", 0), a["end"], a.get("step", 1)
    fallback = DType.i64 if all(isinstance(v, int) for v in (start, end, step)) else _fill_dtype(0.0)
    dtype = _dtype(a.get("dtype")) or lx.out_dtype(fallback)
    return lx.emit("arange", start=start, end=end, step=step, dtype=dtype)


# -- layout ------------------------------------------------------------------------------------

def _reshape(lx: Lowerer, a: dict[str, Any]) -> Value:
    x, shape = _args(a)[:2]
    shape = _ints(shape)
    size = _shape(x)
    if shape.count(-1) == 1 and len(shape) == len(size):
        known = math.prod(d for d in shape if d != -1)
        resolved = tuple(math.prod(size) // known if d == -1 and known else d for d in shape)
        if resolved == size:
            return x
    if shape == size:
        return x
    return lx.emit("reshape", x, shape=shape)


def _flatten(lx: Lowerer, a: dict[str, Any]) -> Value:
    """flatten as the reshape torch.export's decomposition makes of it (a 0-d tensor becomes 1-d)."""
    x = a["self"]
    size = _shape(x)
    if not size:
        return lx.emit("reshape", x, shape=(1,))
    start, end = a["start_dim"] % len(size), a["end_dim"] % len(size)
    shape = (*size[:start], math.prod(size[start:end + 1]), *size[end + 1:])
    return _reshape(lx, {"self": x, "shape": shape})


def _permute(lx: Lowerer, a: dict[str, Any]) -> Value:
    x, dims = a["self"], _ints(a["dims"])
    rank = x.type.rank
    if tuple(d % rank for d in dims) == tuple(range(rank)):
        return x
    return lx.emit("permute", x, dims=dims)


def _transpose(lx: Lowerer, a: dict[str, Any]) -> Value:
    x, d0, d1 = a["self"], a["dim0"], a["dim1"]
    rank = max(x.type.rank, 1)
    if d0 % rank == d1 % rank:
        return x
    return lx.emit("transpose", x, dim0=d0, dim1=d1)


def _t(lx: Lowerer, a: dict[str, Any]) -> Value:
    x = a["self"]
    return x if x.type.rank < 2 else lx.emit("transpose", x, dim0=0, dim1=1)


def _expand(lx: Lowerer, a: dict[str, Any]) -> Value:
    x, shape = a["self"], _ints(a["size"])
    if shape == _shape(x):
        return x
    return lx.emit("expand", x, shape=shape)


def _squeeze(lx: Lowerer, a: dict[str, Any]) -> Value:
    x, dim = a["self"], a.get("dim")
    dims = None if dim is None else _ints(dim)
    size = _shape(x)
    if not any(size[d] == 1 for d in (dims if dims is not None else range(len(size)))):
        return x
    return lx.emit("squeeze", x, dims=dims)


def _slice(lx: Lowerer, a: dict[str, Any]) -> Value:
    x, dim, start, end, step = a["self"], a["dim"], a["start"], a["end"], a["step"]
    size = _shape(x)[dim]
    start = 0 if start is None else start
    # ATen spells "to the end" as a huge end (sys.maxsize); keep the IR free of such numbers.
    if end is not None and end >= size:
        end = None
    if start in (0, -size) or (start < 0 and -start > size):
        start = 0
    if start == 0 and end is None and step == 1:
        return x
    return lx.emit("slice", x, dim=dim, start=start, end=end, step=step)


def _select(lx: Lowerer, a: dict[str, Any]) -> Value:
    x, dim, index = a["self"], a["dim"], a["index"]
    end = None if index == -1 else index + 1
    piece = lx.emit("slice", x, dim=dim, start=index, end=end)
    return lx.emit("squeeze", piece, dims=(dim,))


def _split_sizes(lx: Lowerer, a: dict[str, Any]) -> tuple[Value, ...]:
    x, dim = a["self"], a["dim"]
    sizes = a.get("split_sizes")
    if sizes is None:
        total, step = _shape(x)[dim], a["split_size"]
        sizes = [min(step, total - start) for start in range(0, total, step)]
    return lx.emit_multi("split", [x], sizes=_ints(sizes), dim=dim)


def _repeat_interleave(lx: Lowerer, a: dict[str, Any]) -> Value:
    """Each element `repeats` times along `dim` (of the flattened tensor for none): an expand of a new
    dim after it, merged back."""
    x, dim, repeats = a["self"], a["dim"], a["repeats"]
    if dim is None:
        x, dim = _reshape(lx, {"self": x, "shape": (math.prod(_shape(x)),)}), 0
    dim %= x.type.rank
    size = _shape(x)
    wide = lx.emit("expand", lx.emit("unsqueeze", x, dim=dim + 1), shape=(*size[:dim + 1], repeats, *size[dim + 1:]))
    return _reshape(lx, {"self": wide, "shape": (*size[:dim], size[dim] * repeats, *size[dim + 1:])})


def _chunk(lx: Lowerer, a: dict[str, Any]) -> tuple[Value, ...]:
    """chunk: pieces of ceil(size / chunks) along `dim`, the last one shorter (fewer pieces if they run out;
    a dim of size 0 gives `chunks` empty pieces)."""
    x, dim = a["self"], a["dim"]
    size = _shape(x)[dim]
    if size == 0:
        return lx.emit_multi("split", [x], sizes=(0,) * a["chunks"], dim=dim)
    return _split_sizes(lx, {"self": x, "dim": dim, "split_size": -(-size // a["chunks"])})


def _unbind(lx: Lowerer, a: dict[str, Any]) -> tuple[Value, ...]:
    x, dim = a["self"], a["dim"]
    pieces = lx.emit_multi("split", [x], sizes=(1,) * _shape(x)[dim], dim=dim)
    return tuple(lx.emit("squeeze", p, dims=(dim,)) for p in pieces)


def _slice_scatter(lx: Lowerer, a: dict[str, Any]) -> Value:
    """self with src in place of self[start:end:step] along dim: the pieces before and after, concatenated."""
    x, src, dim = a["self"], a["src"], a["dim"] % max(a["self"].type.rank, 1)
    size = _shape(x)[dim]
    start, end, step = slice(a["start"], a["end"], a["step"]).indices(size)
    count = len(range(start, end, step))
    if step != 1 and count > 1:
        return _strided_slice_scatter(lx, x, src, dim, start, count, step)
    end = start + count
    pieces = [lx.emit("slice", x, dim=dim, start=0, end=start)] if start > 0 else []
    pieces += [src] if end > start else []
    pieces += [lx.emit("slice", x, dim=dim, start=end)] if end < size else []
    return pieces[0] if len(pieces) == 1 else lx.emit("concat", *pieces, dim=dim)


def _strided_slice_scatter(lx: Lowerer, x: Value, src: Value, dim: int, start: int, count: int, step: int) -> Value:
    """x with the `count` elements of src at start, start + step, ... along dim: the part they span, viewed
    as groups of `step` whose first elements src replaces (the last element alone where its group would
    run past the end)."""
    size, shape = _shape(x)[dim], _shape(x)
    groups = count if start + count * step <= size else count - 1
    pieces = [lx.emit("slice", x, dim=dim, start=0, end=start)] if start > 0 else []
    part = lx.emit("slice", x, dim=dim, start=start, end=start + groups * step)
    grouped = lx.emit("reshape", part, shape=(*shape[:dim], groups, step, *shape[dim + 1:]))
    heads = lx.emit("unsqueeze", lx.emit("slice", src, dim=dim, start=0, end=groups), dim=dim + 1)
    merged = lx.emit("concat", heads, lx.emit("slice", grouped, dim=dim + 1, start=1), dim=dim + 1)
    pieces.append(lx.emit("reshape", merged, shape=(*shape[:dim], groups * step, *shape[dim + 1:])))
    covered = start + groups * step
    if groups < count:
        pieces.append(lx.emit("slice", src, dim=dim, start=count - 1))
        covered += 1
    if covered < size:
        pieces.append(lx.emit("slice", x, dim=dim, start=covered))
    return pieces[0] if len(pieces) == 1 else lx.emit("concat", *pieces, dim=dim)


def _select_scatter(lx: Lowerer, a: dict[str, Any]) -> Value:
    x, dim = a["self"], a["dim"] % a["self"].type.rank
    index = a["index"] % _shape(x)[dim]
    src = lx.emit("unsqueeze", a["src"], dim=dim)
    return _slice_scatter(lx, {"self": x, "src": src, "dim": dim, "start": index, "end": index + 1, "step": 1})


def _copy(lx: Lowerer, a: dict[str, Any]) -> Value:
    """copy (what `self.copy_(src)` writes): src broadcast to self's shape, in self's dtype."""
    x, src = a["self"], a["src"]
    if src.type.dtype != x.type.dtype:
        src = lx.emit("cast", src, dtype=x.type.dtype)
    return src if _shape(src) == _shape(x) else lx.emit("expand", src, shape=_shape(x))


def _cat(lx: Lowerer, a: dict[str, Any]) -> Value:
    xs = [x for x in a["tensors"] if _shape(x) != (0,)]  # torch.cat skips legacy empty 1-D tensors
    return xs[0] if len(xs) == 1 else lx.emit("concat", *xs, dim=a["dim"])


def _diff(lx: Lowerer, a: dict[str, Any]) -> Value:
    """n-th forward difference along `dim` (bools: exclusive or), after concatenating prepend and append."""
    dim = a["dim"]
    pieces = [p for p in (a["prepend"], a["self"], a["append"]) if p is not None]
    x = lx.emit("concat", *pieces, dim=dim) if len(pieces) > 1 else pieces[0]
    op = "logical_xor" if x.type.dtype is DType.bool else "sub"
    for _ in range(a["n"]):
        size = _shape(x)[dim]
        later = _slice(lx, {"self": x, "dim": dim, "start": 1, "end": None, "step": 1})
        earlier = _slice(lx, {"self": x, "dim": dim, "start": 0, "end": max(size - 1, 0), "step": 1})
        x = lx.emit(op, later, earlier)
    return x


def _index(lx: Lowerer, a: dict[str, Any]) -> Value:
    given = [(d, i) for d, i in enumerate(a["indices"]) if i is not None]
    return lx.emit("index", a["self"], *(i for _, i in given), dims=tuple(d for d, _ in given))


def _pad(lx: Lowerer, a: dict[str, Any]) -> Value:
    mode = a.get("mode", "constant")
    value = a.get("value")
    return lx.emit("pad", a["self"], pads=_ints(a["pad"]), mode=mode, value=0.0 if value is None else value)


# -- linear algebra ----------------------------------------------------------------------------

def _transposed_weight(w: Value) -> Value | None:
    """The [out, in] weight behind `w` if `w` is its 2-D transpose (how nn.Linear traces)."""
    node = w.producer
    if node is not None and node.op == "transpose" and w.type.rank == 2:
        return node.inputs[0]
    return None


def _baddbmm(lx: Lowerer, a: dict[str, Any]) -> Value:
    """beta * self + alpha * (batch1 @ batch2); self is not read when beta is 0 (its NaNs do not count)."""
    product = lx.emit("bmm", a["batch1"], a["batch2"])
    if a["alpha"] != 1:
        product = lx.emit("mul", product, lx.operand(a["alpha"], product))
    if a["beta"] == 0:
        return product
    x = a["self"] if a["beta"] == 1 else lx.emit("mul", a["self"], lx.operand(a["beta"], a["self"]))
    return lx.emit("add", x, product)


def _mm(lx: Lowerer, a: dict[str, Any]) -> Value:
    x, w = a["self"], a["mat2"]
    weight = _transposed_weight(w)
    return lx.emit("linear", x, weight) if weight is not None else lx.emit("matmul", x, w)


def _addmm(lx: Lowerer, a: dict[str, Any]) -> Value:
    bias, x, w, beta, alpha = a["self"], a["mat1"], a["mat2"], a["beta"], a["alpha"]
    weight = _transposed_weight(w)
    if weight is not None and beta == 1 and alpha == 1 and bias.type.rank == 1:
        return lx.emit("linear", x, weight, bias)
    product = lx.emit("matmul", x, w)
    if alpha != 1:
        product = lx.emit("mul", product, lx.operand(alpha, product))
    if beta != 1:
        bias = lx.emit("mul", bias, lx.operand(beta, bias))
    return lx.emit("add", product, bias)


def _linear(lx: Lowerer, a: dict[str, Any]) -> Value:
    inputs = [a["input"], a["weight"]] + ([a["bias"]] if a["bias"] is not None else [])
    return lx.emit("linear", *inputs)


def _conv(lx: Lowerer, a: dict[str, Any], transposed: bool) -> Value:
    if isinstance(a["padding"], str):
        raise Unsupported(f"padding={a['padding']!r}")
    inputs = [a["input"], a["weight"]] + ([a["bias"]] if a["bias"] is not None else [])
    attrs = {"stride": _ints(a["stride"]), "padding": _ints(a["padding"]), "dilation": _ints(a["dilation"]),
             "groups": a["groups"]}
    if transposed:
        return lx.emit("conv_transpose", *inputs, **attrs, output_padding=_ints(a["output_padding"]))
    return lx.emit("conv", *inputs, **attrs)


def _convolution(lx: Lowerer, a: dict[str, Any]) -> Value:
    return _conv(lx, a, a["transposed"])


def _sdpa(lx: Lowerer, a: dict[str, Any], outputs: int) -> Result:
    if a.get("dropout_p", 0.0) > 0:
        raise Unsupported("attention dropout")
    mask = a.get("attn_mask", a.get("attn_bias"))
    inputs = [a["query"], a["key"], a["value"]] + ([mask] if mask is not None else [])
    out = lx.emit("scaled_dot_product_attention", *inputs, is_causal=a.get("is_causal", False), scale=a.get("scale"),
                  enable_gqa=a.get("enable_gqa", False))
    return out if outputs == 1 else lx.only_first_output(out, outputs)


# -- normalization, softmax, pooling -----------------------------------------------------------

def _affine(weight: Value | None, bias: Value | None) -> list[Value]:
    if weight is None and bias is not None:
        raise Unsupported("a bias without a weight")
    return [v for v in (weight, bias) if v is not None]


def _batch_norm(lx: Lowerer, a: dict[str, Any], outputs: int) -> Result:
    if a.get("training", False):
        raise Unsupported("batch norm in training mode")
    out = lx.emit("batch_norm", a["input"], a["running_mean"], a["running_var"], *_affine(a["weight"], a["bias"]),
                  eps=a["eps"])
    return out if outputs == 1 else lx.only_first_output(out, outputs)


def _batch_norm_own_statistics(lx: Lowerer, a: dict[str, Any]) -> Result:
    """Batch norm over the input's own statistics, as InstanceNorm decomposes: per channel (dim 1), the
    mean and biased variance over every other dim."""
    x = a["input"]
    if x.type.dtype not in (DType.f32, DType.f64) or x.type.rank < 2:
        raise Unsupported(f"batch statistics of {x.type}")
    shape = _shape(x)
    # InstanceNorm's input is [1, N * C, *spatial]: leaving out size-1 dims keeps the reduction trailing
    dims = tuple(d for d in range(x.type.rank) if d != 1 and shape[d] != 1) or (0,)
    mean = lx.emit("mean", x, dims=dims, keepdim=True)
    centered = lx.emit("sub", x, mean)
    var = lx.emit("mean", lx.emit("mul", centered, centered), dims=dims, keepdim=True)
    rstd = lx.emit("rsqrt", lx.emit("add", var, lx.scalar(a["eps"], x.type.dtype)))
    y = lx.emit("mul", centered, rstd)
    per_channel = (shape[1],) + (1,) * (x.type.rank - 2)
    if a["weight"] is not None:
        y = lx.emit("mul", y, lx.emit("reshape", a["weight"], shape=per_channel))
    if a["bias"] is not None:
        y = lx.emit("add", y, lx.emit("reshape", a["bias"], shape=per_channel))
    # the saved statistics, per channel, for AOTAutograd's graphs
    saved = [lx.emit("reshape", v, shape=(shape[1],)) if i in lx.used_outputs else None
             for i, v in ((1, mean), (2, rstd))]
    return (y, *saved)


def _layer_norm(lx: Lowerer, a: dict[str, Any], outputs: int) -> Result:
    out = lx.emit("layer_norm", a["input"], *_affine(a["weight"], a["bias"]),
                  normalized_shape=_ints(a["normalized_shape"]), eps=a["eps"])
    return out if outputs == 1 else lx.only_first_output(out, outputs)


def _group_norm(lx: Lowerer, a: dict[str, Any], outputs: int) -> Result:
    groups = a["num_groups"] if "num_groups" in a else a["group"]
    out = lx.emit("group_norm", a["input"], *_affine(a["weight"], a["bias"]), groups=groups, eps=a["eps"])
    return out if outputs == 1 else lx.only_first_output(out, outputs)


def _rms_norm(lx: Lowerer, a: dict[str, Any]) -> Value:
    inputs = [a["input"]] + ([a["weight"]] if a["weight"] is not None else [])
    return lx.emit("rms_norm", *inputs, normalized_shape=_ints(a["normalized_shape"]), eps=a["eps"])


def _softmax(op: str) -> Rule:
    def rule(lx: Lowerer, a: dict[str, Any]) -> Value:
        x = a["self"]
        dtype = a.get("dtype")
        if a.get("half_to_float"):
            dtype = torch.float32
        if dtype is not None and DType.from_torch(dtype) != x.type.dtype:
            x = lx.emit("cast", x, dtype=dtype)
        return lx.emit(op, x, dim=a["dim"])

    return rule


def _max_pool(outputs: int) -> Rule:
    def rule(lx: Lowerer, a: dict[str, Any]) -> Result:
        out = lx.emit("max_pool", a["self"], kernel=_ints(a["kernel_size"]), stride=_ints(a["stride"]),
                      padding=_ints(a["padding"]), dilation=_ints(a["dilation"]), ceil_mode=a["ceil_mode"])
        return out if outputs == 1 else lx.only_first_output(out, outputs)

    return rule


def _avg_pool(lx: Lowerer, a: dict[str, Any]) -> Value:
    return lx.emit("avg_pool", a["self"], kernel=_ints(a["kernel_size"]), stride=_ints(a["stride"]),
                   padding=_ints(a["padding"]), ceil_mode=a["ceil_mode"],
                   count_include_pad=a["count_include_pad"], divisor_override=a.get("divisor_override"))


def _adaptive_pool(op: str, outputs: int) -> Rule:
    def rule(lx: Lowerer, a: dict[str, Any]) -> Result:
        out = lx.emit(op, a["self"], output_size=_ints(a["output_size"]))
        return out if outputs == 1 else lx.only_first_output(out, outputs)

    return rule


# -- reductions --------------------------------------------------------------------------------

def _reduce(op: str, with_dtype: bool = False) -> Rule:
    def rule(lx: Lowerer, a: dict[str, Any]) -> Value:
        if op in ("any", "all") and a.get("dim") is not None and not _ints(a["dim"]):
            return lx.emit("cast", a["self"], dtype=DType.bool)  # aten.any.dims(x, []) reduces nothing
        attrs: dict[str, Any] = {"dims": _dims(a.get("dim")), "keepdim": a.get("keepdim", False)}
        if with_dtype:
            attrs["dtype"] = _dtype(a.get("dtype"))
        elif a.get("dtype") is not None:
            raise Unsupported(f"{op} with an accumulation dtype")
        return lx.emit(op, a["self"], **attrs)

    return rule


def _vector_norm(lx: Lowerer, a: dict[str, Any]) -> Value:
    """linalg_vector_norm: (sum |x|^p)^(1/p) over `dim`; max/min |x| for p = +-inf, the nonzero count for 0."""
    x, p = a["self"], a["ord"]
    if a["dtype"] is not None:
        x = lx.emit("cast", x, dtype=_dtype(a["dtype"]))
    if not x.type.dtype.is_floating:
        raise Unsupported(f"vector norm of {x.type.dtype}")
    if x.type.dtype in (DType.f16, DType.bf16):
        # PyTorch computes a 16-bit norm in float32 (300^2 does not overflow) and rounds once.
        norm = _vector_norm(lx, {**a, "self": lx.emit("cast", x, dtype=DType.f32), "dtype": None})
        return lx.emit("cast", norm, dtype=x.type.dtype)
    reduce = {"dims": _dims(a["dim"]), "keepdim": a["keepdim"]}
    magnitude = lx.emit("abs", x)
    if p in (math.inf, -math.inf):
        return lx.emit("amax" if p > 0 else "amin", magnitude, **reduce)
    if p == 0:
        nonzero = lx.emit("cast", lx.emit("ne", x, lx.scalar(0.0, x.type.dtype)), dtype=x.type.dtype)
        return lx.emit("sum", nonzero, **reduce)
    if p == 1:
        return lx.emit("sum", magnitude, **reduce)
    if p == 2:
        return lx.emit("sqrt", lx.emit("sum", lx.emit("mul", x, x), **reduce))
    powered = lx.emit("pow", magnitude, lx.scalar(float(p), x.type.dtype))
    return lx.emit("pow", lx.emit("sum", powered, **reduce), lx.scalar(1.0 / p, x.type.dtype))


def _weight_norm(lx: Lowerer, a: dict[str, Any]) -> Value:
    """v * (g / |v|), the norm over every dim but `dim` (over all of them for dim -1), as weight norm computes."""
    v, dim = a["v"], a["dim"]
    others = None if dim == -1 else tuple(d for d in range(v.type.rank) if d != dim % v.type.rank)
    if others == ():  # a 1-D v normed along its only dim: each element's magnitude
        norm = lx.emit("abs", v)
    else:
        norm = _vector_norm(lx, {"self": v, "ord": 2, "dim": others, "keepdim": dim != -1, "dtype": None})
    return lx.emit("mul", v, lx.emit("div", a["g"], norm))


def _var_std(op: str) -> Rule:
    def rule(lx: Lowerer, a: dict[str, Any]) -> Value:
        if "unbiased" in a:
            correction = 1.0 if a["unbiased"] else 0.0
        else:
            correction = 1.0 if a["correction"] is None else a["correction"]
        return lx.emit(op, a["self"], dims=_dims(a["dim"]), keepdim=a["keepdim"], correction=correction)

    return rule


def _var_std_mean(op: str) -> Rule:
    """var_mean/std_mean: the var or std and the mean, over the same dims."""
    moment = _var_std(op)

    def rule(lx: Lowerer, a: dict[str, Any]) -> tuple[Value, Value]:
        return moment(lx, a), lx.emit("mean", a["self"], dims=_dims(a["dim"]), keepdim=a["keepdim"], dtype=None)

    return rule


def _arg_reduce(op: str) -> Rule:
    return lambda lx, a: lx.emit(op, a["self"], dim=a["dim"], keepdim=a["keepdim"])


def _max_min_dim(values_op: str, index_op: str) -> Rule:
    def rule(lx: Lowerer, a: dict[str, Any]) -> tuple[Value | None, ...]:
        x, dim, keepdim = a["self"], a["dim"], a["keepdim"]
        values = lx.emit(values_op, x, dims=(dim,), keepdim=keepdim) if 0 in lx.used_outputs else None
        scores = lx.emit("cast", x, dtype=DType.u8) if x.type.dtype is DType.bool else x  # argmax takes no bools
        indices = lx.emit(index_op, scores, dim=dim, keepdim=keepdim) if 1 in lx.used_outputs else None
        return values, indices

    return rule


def _cumsum(lx: Lowerer, a: dict[str, Any]) -> Value:
    return lx.emit("cumsum", a["self"], dim=a["dim"], dtype=_dtype(a["dtype"]))


# -- interpolation -----------------------------------------------------------------------------

def _upsample(mode: str, antialias: bool) -> Rule:
    """F.interpolate's upsample ops (`.vec`: output size or scale factors; `.default`: output size and
    ATen's per-dim scales) as one `interpolate` of the recorded output size."""

    def rule(lx: Lowerer, a: dict[str, Any]) -> Value:
        x = a["input"] if "input" in a else a["self"]
        if lx.out_types is None:
            raise Unsupported("no recorded output size")
        k = x.type.rank - 2
        scales = a.get("scale_factors") or [v for name, v in a.items() if name.startswith("scales")]
        given = [s for s in scales if s is not None]
        if given and len(given) != k:
            raise Unsupported("scale factors for some dims only")
        return lx.emit("interpolate", x, mode=mode, size=lx.out_types[0].shape[-k:],
                       align_corners=a.get("align_corners") or False, scales=given or None, antialias=antialias)

    return rule


# -- the table ---------------------------------------------------------------------------------

RULES: dict[Any, Rule] = {}

for _name in ("neg", "abs", "exp", "log", "log1p", "expm1", "sqrt", "rsqrt", "reciprocal", "sin", "cos", "tanh",
              "sigmoid", "erf", "floor", "ceil", "sign", "relu", "silu", "hardswish", "hardsigmoid", "mish",
              "logical_not", "isnan", "bitwise_not"):
    RULES[getattr(aten, _name).default] = _unary(_name)
RULES[aten.round.default] = _unary("round")

for _name in ("maximum", "minimum", "fmod", "remainder", "eq", "ne", "lt", "le", "gt", "ge",
              "logical_and", "logical_or", "logical_xor", "bitwise_and", "bitwise_or"):
    RULES[getattr(aten, _name)] = _binary(_name)

RULES.update({
    aten.add: _add_sub("add"), aten.sub: _add_sub("sub"), aten.rsub: _add_sub("sub", reverse=True),
    aten.pow: _pow, aten.mul: _mul_div("mul"), aten.div: _mul_div("div"),
    aten.where.self: _where, aten.where.ScalarSelf: _where,
    aten.where.ScalarOther: _where, aten.where.Scalar: _where, aten.masked_fill: _masked_fill,
    aten.clamp: _clamp, aten.clamp_min: _clamp_bound("min"), aten.clamp_max: _clamp_bound("max"),
    aten.hardtanh.default: lambda lx, a: lx.emit("clamp", a["self"], min=a["min_val"], max=a["max_val"]),
    aten.gelu.default: lambda lx, a: lx.emit("gelu", a["self"], approximate=a["approximate"]),
    aten.leaky_relu.default: lambda lx, a: lx.emit("leaky_relu", a["self"], negative_slope=a["negative_slope"]),
    aten.elu.default: _elu,
    aten.softplus.default: lambda lx, a: lx.emit("softplus", a["self"], beta=a["beta"], threshold=a["threshold"]),
    aten._to_copy.default: _to_copy, aten.to.dtype: _to_copy, aten.to.dtype_layout: _to_copy,
    aten.to.device: _to_copy,
    aten.type_as.default: lambda lx, a: _to_copy(lx, {"self": a["self"], "dtype": a["other"].type.dtype.torch}),
    aten.__and__.Tensor: _binary("bitwise_and"), aten.__or__.Tensor: _binary("bitwise_or"),
    aten.clone.default: _identity, aten.alias.default: _identity, aten.detach.default: _identity,
    aten.lift_fresh_copy.default: _identity, aten.contiguous.default: _identity, aten.detach_.default: _identity,
    aten.dropout.default: _dropout, aten.feature_dropout.default: _dropout,
    aten.tril.default: lambda lx, a: lx.emit("tril", a["self"], diagonal=a["diagonal"]),
    aten.triu.default: lambda lx, a: lx.emit("triu", a["self"], diagonal=a["diagonal"]),
    # creation
    aten.full.default: _full("fill_value"), aten.full_like.default: _full("fill_value", "self"),
    aten.zeros.default: _full(0), aten.ones.default: _full(1), aten.empty.memory_format: _full(0),
    aten.zeros_like.default: _full(0, "self"), aten.ones_like.default: _full(1, "self"),
    aten.empty_like.default: _full(0, "self"),
    aten.new_full.default: _new_full("fill_value"), aten.new_zeros.default: _new_full(0),
    aten.new_ones.default: _new_full(1), aten.new_empty.default: _new_full(0),
    aten.scalar_tensor.default: _scalar_tensor, aten.arange: _arange,
    # layout
    aten.view.default: _reshape, aten._unsafe_view.default: _reshape, aten.reshape.default: _reshape,
    aten.view_copy.default: _reshape,
    aten.permute.default: _permute, aten.transpose.int: _transpose, aten.t.default: _t,
    aten.expand.default: _expand, aten.squeeze: _squeeze,
    aten.repeat.default: lambda lx, a: lx.emit("tile", a["self"], repeats=_ints(a["repeats"])),
    aten.unsqueeze.default: lambda lx, a: lx.emit("unsqueeze", a["self"], dim=a["dim"]),
    aten.flatten.using_ints: _flatten,
    aten.slice.Tensor: _slice, aten.select.int: _select,
    aten.split_with_sizes.default: _split_sizes, aten.split.Tensor: _split_sizes, aten.unbind.int: _unbind,
    aten.chunk.default: _chunk, aten.repeat_interleave.self_int: _repeat_interleave,
    aten.reshape_as.default: lambda lx, a: _reshape(lx, {"self": a["self"], "shape": _shape(a["other"])}),
    aten.view_as.default: lambda lx, a: _reshape(lx, {"self": a["self"], "shape": _shape(a["other"])}),
    aten.expand_as.default: lambda lx, a: _expand(lx, {"self": a["self"], "size": _shape(a["other"])}),
    aten.numpy_T.default: lambda lx, a: _permute(lx, {"self": a["self"],
                                                      "dims": tuple(range(a["self"].type.rank))[::-1]}),
    aten.mT.default: lambda lx, a: _transpose(lx, {"self": a["self"], "dim0": -2, "dim1": -1}),
    aten.slice_scatter.default: _slice_scatter, aten.select_scatter.default: _select_scatter,
    aten.copy.default: _copy, aten.fill.Scalar: _full("value", "self"),
    aten.fill.Tensor: lambda lx, a: _copy(lx, {"self": a["self"], "src": a["value"]}),
    aten.cat.default: _cat,
    aten.stack.default: lambda lx, a: lx.emit("stack", *a["tensors"], dim=a["dim"]),
    aten.index_select.default: lambda lx, a: lx.emit("index_select", a["self"], a["index"], dim=a["dim"]),
    aten.gather.default: lambda lx, a: lx.emit("gather", a["self"], a["index"], dim=a["dim"]),
    aten.embedding.default: lambda lx, a: lx.emit("embedding", a["weight"], a["indices"]),
    aten.index.Tensor: _index, aten.pad.default: _pad, aten.diff.default: _diff,
    aten.constant_pad_nd.default: lambda lx, a: lx.emit("pad", a["self"], pads=_ints(a["pad"]), value=a["value"]),
    # linear algebra
    aten.mm.default: _mm, aten.addmm.default: _addmm, aten.linear.default: _linear,
    aten.bmm.default: lambda lx, a: lx.emit("bmm", a["self"], a["mat2"]), aten.baddbmm.default: _baddbmm,
    aten.matmul.default: lambda lx, a: lx.emit("matmul", a["self"], a["other"]),
    aten.convolution.default: _convolution,
    aten.conv1d.default: lambda lx, a: _conv(lx, a, False), aten.conv2d.default: lambda lx, a: _conv(lx, a, False),
    aten.conv3d.default: lambda lx, a: _conv(lx, a, False),
    aten.conv_transpose1d.default: lambda lx, a: _conv(lx, a, True),
    aten.conv_transpose2d.input: lambda lx, a: _conv(lx, a, True),
    aten.conv_transpose3d.input: lambda lx, a: _conv(lx, a, True),
    aten.scaled_dot_product_attention.default: lambda lx, a: _sdpa(lx, a, 1),
    aten._scaled_dot_product_flash_attention_for_cpu.default: lambda lx, a: _sdpa(lx, a, 2),
    aten._scaled_dot_product_attention_math.default: lambda lx, a: _sdpa(lx, a, 2),
    aten._scaled_dot_product_efficient_attention.default: lambda lx, a: _sdpa(lx, a, 4),
    aten._scaled_dot_product_flash_attention.default: lambda lx, a: _sdpa(lx, a, 9),
    # normalization, softmax, pooling
    aten._native_batch_norm_legit_no_training.default: lambda lx, a: _batch_norm(lx, a, 3),
    aten._native_batch_norm_legit.no_stats: _batch_norm_own_statistics,
    aten.native_batch_norm.default: lambda lx, a: _batch_norm(lx, a, 3),
    aten.batch_norm.default: lambda lx, a: _batch_norm(lx, a, 1),
    aten.layer_norm.default: lambda lx, a: _layer_norm(lx, a, 1),
    aten.native_layer_norm.default: lambda lx, a: _layer_norm(lx, a, 3),
    aten.group_norm.default: lambda lx, a: _group_norm(lx, a, 1),
    aten.native_group_norm.default: lambda lx, a: _group_norm(lx, a, 3),
    aten.rms_norm.default: _rms_norm,
    aten.softmax.int: _softmax("softmax"), aten._softmax.default: _softmax("softmax"),
    aten.log_softmax.int: _softmax("log_softmax"), aten._log_softmax.default: _softmax("log_softmax"),
    aten.max_pool1d.default: _max_pool(1), aten.max_pool2d.default: _max_pool(1),
    aten.max_pool3d.default: _max_pool(1),
    aten.max_pool1d_with_indices.default: _max_pool(2), aten.max_pool2d_with_indices.default: _max_pool(2),
    aten.max_pool3d_with_indices.default: _max_pool(2),
    aten.avg_pool1d.default: _avg_pool, aten.avg_pool2d.default: _avg_pool, aten.avg_pool3d.default: _avg_pool,
    aten.adaptive_avg_pool1d.default: _adaptive_pool("adaptive_avg_pool", 1),
    aten.adaptive_avg_pool2d.default: _adaptive_pool("adaptive_avg_pool", 1),
    aten._adaptive_avg_pool2d.default: _adaptive_pool("adaptive_avg_pool", 1),
    aten.adaptive_avg_pool3d.default: _adaptive_pool("adaptive_avg_pool", 1),
    aten._adaptive_avg_pool3d.default: _adaptive_pool("adaptive_avg_pool", 1),
    aten.adaptive_max_pool1d.default: _adaptive_pool("adaptive_max_pool", 2),
    aten.adaptive_max_pool2d.default: _adaptive_pool("adaptive_max_pool", 2),
    aten.adaptive_max_pool3d.default: _adaptive_pool("adaptive_max_pool", 2),
    # reductions
    aten.sum: _reduce("sum", with_dtype=True), aten.mean: _reduce("mean", with_dtype=True),
    aten.amax.default: _reduce("amax"), aten.amin.default: _reduce("amin"),
    aten.max.default: _reduce("amax"), aten.min.default: _reduce("amin"),
    aten.max.other: _binary("maximum"), aten.min.other: _binary("minimum"),
    aten.prod: _reduce("prod"), aten.any: _reduce("any"), aten.all: _reduce("all"),
    aten.var.correction: _var_std("var"), aten.var.dim: _var_std("var"),
    aten.std.correction: _var_std("std"), aten.std.dim: _var_std("std"),
    aten.var_mean.correction: _var_std_mean("var"), aten.var_mean.dim: _var_std_mean("var"),
    aten.std_mean.correction: _var_std_mean("std"), aten.std_mean.dim: _var_std_mean("std"),
    aten.flip.default: lambda lx, a: lx.emit("flip", a["self"], dims=_dims_of(a["self"], a["dims"])),
    aten.argmax.default: _arg_reduce("argmax"), aten.argmin.default: _arg_reduce("argmin"),
    aten.max.dim: _max_min_dim("amax", "argmax"), aten.min.dim: _max_min_dim("amin", "argmin"),
    aten.cumsum.default: _cumsum, aten.linalg_vector_norm.default: _vector_norm,
    aten._weight_norm.default: _weight_norm,
})
for _name, _mode in (("upsample_nearest1d", "nearest"), ("upsample_nearest2d", "nearest"),
                     ("upsample_nearest3d", "nearest"), ("_upsample_nearest_exact1d", "nearest_exact"),
                     ("_upsample_nearest_exact2d", "nearest_exact"), ("_upsample_nearest_exact3d", "nearest_exact"),
                     ("upsample_linear1d", "linear"), ("upsample_bilinear2d", "linear"),
                     ("upsample_trilinear3d", "linear"), ("upsample_bicubic2d", "cubic"),
                     ("_upsample_bilinear2d_aa", "linear"), ("_upsample_bicubic2d_aa", "cubic")):
    for _overload in ("vec", "default"):
        RULES[getattr(getattr(aten, _name), _overload)] = _upsample(_mode, _name.endswith("_aa"))


def find_rule(target: Any) -> Rule | None:
    """The rule for an op overload: its own, else its packet's."""
    rule = RULES.get(target)
    if rule is None and isinstance(target, torch._ops.OpOverload):
        rule = RULES.get(target.overloadpacket)
    return rule
