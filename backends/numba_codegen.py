"""Source generation for Numba kernels: one @njit loop nest per elementwise or reduction region.

A region's iteration space is split into outer dimensions and one inner dimension. Every array
(operand, constant, output) is flat and contiguous and is addressed through its strides over the
iteration space (0 where it broadcasts); adjacent outer dimensions that every array walks
contiguously are merged, so a plain elementwise region over contiguous tensors becomes one flat
loop. Values that do not vary along the inner dimension ("row" values: broadcast loads,
reduction results) are computed once per row outside the inner loop. A reduction region makes
one pass over the row per reduction depth (softmax: max, then sum, then the outputs). The reduced
dim is the inner one; when it is not the last, numba_columns.py emits the loops instead:

    @njit(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)
    def k_softmax(a0, o0):
        for i0 in range(64):
            b0 = i0 * 128
            acc0 = np.float32(-np.inf)
            for j in range(128):
                x0 = a0[b0 + j]
                acc0 = acc0 if (acc0 >= x0) | (acc0 != acc0) else x0
            ...
"""

from __future__ import annotations

import keyword
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..ir import DType, Graph, Node, Value

# Elementwise loops vectorize without any fastmath flag, and each flag changes results against PyTorch:
# nnan/ninf break isnan and the NaN and infinity checks in numba_math; arcp computes x / 0.1 as x * 10
# (26.0 for 2.6, whose quotient rounds to 25.999998, so truncating gives 26) and a / sqrt(b) from the
# rsqrt estimate (NaN at 0); nsz turns 0.0 - x into -x (a zero of the wrong sign, which a division makes
# the wrong infinity); contract fuses a * b - c into one FMA (E[x^2] - m^2 of a constant row goes
# negative, and its sqrt NaN). numba_math's polynomials spell their FMAs out (`_fma`) instead.
FASTMATH_ELEMENTWISE: set[str] = set()
# Reductions need reassoc to vectorize their accumulators (it also lets LLVM reassociate their elementwise
# prologue: (x * 1e30) * 1e-30 may become x).
FASTMATH_REDUCTION = {"reassoc"}

NP_TYPE = {DType.f64: "np.float64", DType.f32: "np.float32", DType.i64: "np.int64", DType.i32: "np.int32",
           DType.i16: "np.int16", DType.i8: "np.int8", DType.u8: "np.uint8", DType.bool: "np.bool_"}
FLOATS = (DType.f32, DType.f64)
INTS = (DType.i64, DType.i32, DType.i16, DType.i8, DType.u8)
REDUCE_OPS = ("sum", "mean", "amax", "amin", "var", "std", "prod", "any", "all")
# Accumulators updated in place: the operator and the initial value (max and min select instead).
ACCUMULATE = {"sum": ("+", 0), "prod": ("*", 1)}
ROW_OPS = ("softmax", "log_softmax", "layer_norm", "rms_norm")


class Unsupported(Exception):
    """The region has an op, dtype or shape this code generator does not handle; says which."""


def literal(value: float | int | bool, dtype: DType) -> str:
    """A Numba scalar literal of `dtype`: `np.float32(0.5)`, `np.int64(3)`, `True`."""
    if dtype is DType.bool:
        return repr(bool(value))
    if dtype in FLOATS:
        v = float(value)
        text = repr(v) if math.isfinite(v) else ("np.nan" if v != v else ("np.inf" if v > 0 else "-np.inf"))
        return f"np.float32({text})" if dtype is DType.f32 else text
    return f"{NP_TYPE[dtype]}({int(value)})"


def cast(expr: str, src: DType, dst: DType) -> str:
    if src is dst:
        return expr
    if dst is DType.bool:
        return f"({expr} != 0)"
    return f"{NP_TYPE[dst]}({expr})"


def _float_fn(name: str, dt: DType) -> str:
    """numba_math's float32 version of `name`, or math's for float64."""
    if dt is DType.f32:
        return f"nm.{name}_f32"
    return {"sigmoid": "nm.sigmoid_f64", "gelu": "nm.gelu_f64", "gelu_tanh": "nm.gelu_tanh_f64",
            "silu": "nm.silu_f64"}.get(name, f"math.{name}")


def compute_dtype(node: Node) -> DType:
    """The dtype the op computes in: the inputs' promoted type for comparisons, else the output's."""
    if node.op in ("eq", "ne", "lt", "le", "gt", "ge"):
        a, b = (v.type.meta() for v in node.inputs)
        return DType.from_torch(torch.result_type(a, b))
    return node.outputs[0].type.dtype


def scalar_expr(node: Node, args: list[str]) -> str:
    """The scalar expression of elementwise `node` over `args` (already of `compute_dtype(node)`,
    except cast's and where's condition); the result has the node's output dtype."""
    op, attrs = node.op, node.attrs
    dt = compute_dtype(node)
    out = node.outputs[0].type.dtype
    fl = dt in FLOATS
    a = args[0]
    b = args[1] if len(args) > 1 else ""

    def lit(v: float) -> str:
        return literal(v, dt)

    if dt not in NP_TYPE or out not in NP_TYPE:
        raise Unsupported(f"{op} in {dt}")
    simple_binary = {"add": "+", "sub": "-", "mul": "*"}
    if op in simple_binary and dt is not DType.bool:
        return _wrap(f"{a} {simple_binary[op]} {b}", dt)
    if op in ("add", "mul") and dt is DType.bool:
        return f"({a} {'|' if op == 'add' else '&'} {b})"
    if op == "div":
        mode = attrs.get("rounding_mode")
        if mode is None and fl:
            return f"{a} / {b}"
        if mode == "floor":
            return f"nm.div_floor_{NP_TYPE[dt][3:]}({a}, {b})" if fl else _wrap(f"{a} // {b}", dt)
        if mode == "trunc":
            return f"np.trunc({a} / {b})" if fl else _wrap(f"nm.div_trunc_int({a}, {b})", dt)
    if op == "pow" and fl:
        return f"{a} ** {b}"
    if op in ("maximum", "minimum"):
        if fl:
            return f"nm.{'fmax' if op == 'maximum' else 'fmin'}_nan({a}, {b})"
        return _wrap(f"{'max' if op == 'maximum' else 'min'}({a}, {b})", dt)
    if op == "fmod" and dt is not DType.bool:
        return f"np.fmod({a}, {b})" if fl else _wrap(f"nm.fmod_int({a}, {b})", dt)
    if op == "remainder" and dt is not DType.bool:
        return _wrap(f"{a} % {b}", dt)
    compare = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
    if op in compare:
        return f"({a} {compare[op]} {b})"
    if op in ("logical_and", "logical_or", "logical_xor"):
        sym = {"logical_and": "&", "logical_or": "|", "logical_xor": "!="}[op]
        return f"(({a} != 0) {sym} ({b} != 0))"
    if op in ("bitwise_and", "bitwise_or") and not fl:
        return _wrap(f"{a} {'&' if op == 'bitwise_and' else '|'} {b}", dt)
    if op == "where":
        return f"({b} if {a} else {args[2]})"
    if op == "neg" and dt is not DType.bool:
        return _wrap(f"-{a}", dt)
    if op == "abs" and dt is not DType.bool:
        return _wrap(f"abs({a})", dt)
    if op in ("exp", "log", "tanh", "sigmoid", "erf", "log1p", "expm1", "silu") and fl:
        return f"{_float_fn(op, dt)}({a})"
    if op in ("sin", "cos") and fl:
        return f"{NP_TYPE[dt]}(math.{op}({a}))"
    if op == "sqrt" and fl:
        return f"np.sqrt({a})"
    if op == "rsqrt" and fl:
        return f"nm.rsqrt_f32({a})" if dt is DType.f32 else f"{lit(1)} / np.sqrt({a})"
    if op == "reciprocal" and fl:
        return f"{lit(1)} / {a}"
    if op in ("floor", "ceil", "round") and dt is not DType.bool:
        return f"np.{'rint' if op == 'round' else op}({a})" if fl else a
    if op == "sign" and dt is not DType.bool:
        return f"{NP_TYPE[dt]}(({a} > {lit(0)}) - ({a} < {lit(0)}))" if fl else _wrap(f"({a} > 0) - ({a} < 0)", dt)
    if op == "relu" and dt is not DType.bool:
        return f"({lit(0)} if {a} < {lit(0)} else {a})"
    if op == "gelu" and fl:
        return f"{_float_fn('gelu_tanh' if attrs['approximate'] == 'tanh' else 'gelu', dt)}({a})"
    if op == "hardsigmoid" and fl:
        return f"nm.clamp_nan({a} + {lit(3)}, {lit(0)}, {lit(6)}) / {lit(6)}"
    if op == "hardswish" and fl:
        return f"{a} * nm.clamp_nan({a} + {lit(3)}, {lit(0)}, {lit(6)}) / {lit(6)}"
    if op == "mish" and fl:
        softplus = f"{_float_fn('log1p', dt)}({_float_fn('exp', dt)}({a}))"
        return f"{a} * {_float_fn('tanh', dt)}({softplus})"
    if op == "leaky_relu" and fl:
        return f"({a} if {a} > {lit(0)} else {a} * {lit(attrs['negative_slope'])})"
    if op == "elu" and fl:
        return f"({a} if {a} > {lit(0)} else {lit(attrs['alpha'])} * {_float_fn('expm1', dt)}({a}))"
    if op == "softplus" and fl:
        beta, threshold = lit(attrs["beta"]), lit(attrs["threshold"])
        soft = f"{_float_fn('log1p', dt)}({_float_fn('exp', dt)}({a} * {beta})) / {beta}"
        return f"({a} if {a} * {beta} > {threshold} else {soft})"
    if op == "clamp" and dt is not DType.bool:
        lo, hi = attrs["min"], attrs["max"]
        expr = a
        if lo is not None:
            expr = f"({lit(lo if fl else int(lo))} if {expr} < {lit(lo if fl else int(lo))} else {expr})"
        if hi is not None:
            expr = f"nm.clamp_nan({a}, {lit(lo if fl else int(lo))}, {lit(hi if fl else int(hi))})" \
                if lo is not None else f"({lit(hi if fl else int(hi))} if {a} > {lit(hi if fl else int(hi))} else {a})"
        return expr
    if op == "logical_not":
        return f"({a} == 0)"
    if op == "isnan":
        return f"({a} != {a})" if node.inputs[0].type.dtype in FLOATS else "False"
    if op == "bitwise_not" and not fl:
        return f"(not {a})" if dt is DType.bool else _wrap(f"~{a}", dt)
    if op == "cast":
        return cast(a, node.inputs[0].type.dtype, out)
    raise Unsupported(f"{op} on {dt}")


def is_variable(name: str) -> bool:
    """Whether a Def's name is a variable to assign, not a literal (`1.5`, `np.float32(2.0)`, `True`)."""
    return name.isidentifier() and not keyword.iskeyword(name)


def _wrap(expr: str, dt: DType) -> str:
    """Integer results are cast back: Numba widens int32 arithmetic to int64, torch wraps."""
    return f"{NP_TYPE[dt]}({expr})" if dt in INTS else expr


def arg_dtypes(node: Node) -> list[DType | None]:
    """The dtype each operand is cast to before `scalar_expr` (None: as it is)."""
    op = node.op
    if op in ("cast", "logical_and", "logical_or", "logical_xor", "logical_not", "isnan"):
        return [None] * len(node.inputs)
    if op == "where":
        out = node.outputs[0].type.dtype
        return [DType.bool, out, out]
    dt = compute_dtype(node)
    return [dt] * len(node.inputs)


def check_elementwise(node: Node) -> None:
    """Raise Unsupported unless `scalar_expr` handles `node`."""
    from ..ir import get_op

    if get_op(node.op).kind != "elementwise":
        raise Unsupported(f"{node.op} is not elementwise")
    types = [v.type for v in node.inputs] + [v.type for v in node.outputs]
    bad = [t for t in types if t.dtype not in NP_TYPE or not t.is_static]
    if bad:
        raise Unsupported(f"{node.op} on {bad[0]}")
    if node.op in ("div", "remainder", "fmod") and not compute_dtype(node).is_floating:
        divisor = node.inputs[1].const
        if divisor is None or bool(((divisor == 0) | (divisor == -1)).any()):
            # PyTorch raises on a zero divisor and wraps MIN // -1; the kernel would give 0 for both.
            raise Unsupported(f"integer {node.op} by a divisor that is not a constant free of 0 and -1")
    if node.op == "clamp":
        bounds = [b for b in (node.attrs["min"], node.attrs["max"]) if b is not None]
        dt = node.inputs[0].type.dtype
        if any(b != b for b in bounds):
            raise Unsupported("clamp to a NaN bound (PyTorch makes every element NaN)")
        if dt in INTS and any(not torch.iinfo(dt.torch).min <= b <= torch.iinfo(dt.torch).max for b in bounds):
            raise Unsupported(f"clamp of {dt} to a bound outside its range (PyTorch raises)")
    scalar_expr(node, [f"a{i}" for i in range(len(node.inputs))])


# ---------------------------------------------------------------------------------------------
# Layout: iteration dims, array strides and dimension merging.


def aligned_strides(shape: tuple[int, ...], space: tuple[int, ...]) -> list[int]:
    """Element strides over `space` of a contiguous array of `shape` broadcast into it (right-aligned)."""
    if len(shape) > len(space):
        raise Unsupported(f"shape {list(shape)} does not broadcast to {list(space)}")
    own = [0] * len(shape)
    step = 1
    for d in reversed(range(len(shape))):
        own[d] = step
        step *= shape[d]
    strides = [0] * (len(space) - len(shape)) + own
    for d, size in enumerate(shape):
        full = space[len(space) - len(shape) + d]
        if size == 1:
            strides[len(space) - len(shape) + d] = 0
        elif size != full:
            raise Unsupported(f"shape {list(shape)} does not broadcast to {list(space)}")
    return strides


def merge_dims(sizes: list[int], strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 dims and merge neighbours that every array walks as one: stride[i] = stride[i+1] * size[i+1]."""
    keep = [d for d, s in enumerate(sizes) if s != 1]
    out_sizes: list[int] = []
    out_strides: list[list[int]] = [[] for _ in strides]
    for d in keep:
        if out_sizes and all(st[-1] == s[d] * sizes[d] for st, s in zip(out_strides, strides, strict=True)):
            out_sizes[-1] *= sizes[d]
            for st, s in zip(out_strides, strides, strict=True):
                st[-1] = s[d]
        else:
            out_sizes.append(sizes[d])
            for st, s in zip(out_strides, strides, strict=True):
                st.append(s[d])
    return out_sizes, out_strides


# ---------------------------------------------------------------------------------------------
# Scalar dataflow: what each body value is per element (full) or per row.


@dataclass(eq=False)
class Def:
    """A scalar of the kernel: a load, an expression, or a reduction's accumulator.

    `full` values vary along the inner dimension and live inside inner loops; the others are
    computed once per row. `level` counts the reductions below it: a full value of level L is
    recomputed in the pass for the reductions of level L + 1 and in the final pass.
    """

    name: str
    dtype: DType
    full: bool
    level: int
    deps: list[Def] = field(default_factory=list)
    expr: str = ""  # Python expression over the deps' names (an elementwise value or a load)
    reduce: str = ""  # "sum", "prod", "max" or "min": an accumulator over deps[0] along the inner dim
    flat: bool = False  # a reduction without keepdim: shaped like the outer dims only


@dataclass
class Array:
    """A kernel argument: its parameter name, dtype and strides over the iteration space."""

    name: str
    dtype: DType
    strides: list[int]


@dataclass
class KernelSpec:
    """Everything `emit_kernel` needs; `inputs` / `consts` / `outputs` are in argument order."""

    name: str
    outer: list[int]
    inner: int
    arrays: list[Array]  # inputs, then non-scalar constants, then outputs
    defs: list[Def]
    stores: list[tuple[Array, Def]]  # output array <- value
    reduction: bool
    # A reduction over a dim that is not the last: the size of the dims after it, merged (array strides
    # are then [outer..., cols, inner]; see numba_columns.py).
    cols: int | None = None

    def loop_sizes(self) -> list[int]:
        """The loop trip counts in the order of every array's strides."""
        return [*self.outer, *([] if self.cols is None else [self.cols]), self.inner]


def fastmath_flags(spec: KernelSpec) -> str:
    """The name of the fastmath flag set `spec`'s kernel compiles with."""
    return "FASTMATH_REDUCTION" if spec.reduction else "FASTMATH_ELEMENTWISE"


class _Builder:
    """Turns a region body into `Def`s over a given iteration space."""

    def __init__(self, space: tuple[int, ...], inner_dim: int) -> None:
        self.space = space
        self.inner_dim = inner_dim  # the inner dim's index in `space`, -1 for an empty space
        self.defs: list[Def] = []
        self.arrays: list[Array] = []
        self.of: dict[int, Def] = {}
        self.count = 0

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint}{self.count}"

    def add(self, d: Def) -> Def:
        self.defs.append(d)
        return d

    def load(self, value: Value, param: str, flat: bool = False) -> Def:
        """A load of operand `value`; a `flat` one broadcasts against the reduced shape (the space without
        the reduced dim), as the operands of values reduced without keepdim do."""
        t = value.type
        shape = tuple(t.static_shape())
        if flat:
            strides = aligned_strides(shape, self.space[:self.inner_dim] + self.space[self.inner_dim + 1:])
            strides.insert(self.inner_dim, 0)
        else:
            strides = aligned_strides(shape, self.space)
        array = Array(param, t.dtype, strides)
        self.arrays.append(array)
        full = self.inner_dim >= 0 and strides[self.inner_dim] != 0
        d = self.add(Def(self.fresh("x"), t.dtype, full, 0, expr=f"@{param}", flat=flat))
        self.of[id(value)] = d
        return d

    def const(self, value: Value, param: str, flat: bool = False) -> Def:
        tensor = value.const
        if tensor.numel() == 1:
            d = Def(literal(tensor.reshape(()).item(), value.type.dtype), value.type.dtype, False, 0)
            self.of[id(value)] = d
            return d
        return self.load(value, param, flat)

    def elementwise(self, node: Node, args: list[Def]) -> Def:
        casts = arg_dtypes(node)
        exprs = [a.name if c is None else cast(a.name, a.dtype, c) for a, c in zip(args, casts, strict=True)]
        d = Def(self.fresh("t"), node.outputs[0].type.dtype, any(a.full for a in args),
                max((a.level for a in args), default=0), deps=list(args), expr=scalar_expr(node, exprs),
                flat=any(a.flat for a in args))
        if d.flat and any(not a.flat and (a.full or a.deps or a.expr.startswith("@")) for a in args):
            raise Unsupported(f"{node.op} mixes a reduced value without keepdim with unreduced values")
        return self.add(d)

    def expr(self, expr: str, dtype: DType, args: list[Def]) -> Def:
        return self.add(Def(self.fresh("t"), dtype, any(a.full for a in args),
                            max((a.level for a in args), default=0), deps=list(args), expr=expr,
                            flat=any(a.flat for a in args)))

    def reduce(self, kind: str, x: Def, dtype: DType, flat: bool) -> Def:
        if not x.full:
            if self.space[self.inner_dim] != 1:
                raise Unsupported("a reduction over a value constant along the reduced dimension")
            # Over a size-1 dim (a global pool of a 1x1 feature map) a sum, max or min is the value itself.
            return self.add(Def(self.fresh("t"), dtype, False, x.level, deps=[x], expr=x.name, flat=flat))
        return self.add(Def(self.fresh("acc"), dtype, False, x.level + 1, deps=[x], reduce=kind, flat=flat))


def _row_op(b: _Builder, node: Node, args: list[Def]) -> Def:
    """Expand a reduction, softmax or normalization over the region's reduced dim into reductions and
    expressions."""
    op, attrs = node.op, node.attrs
    x = args[0]
    out = node.outputs[0].type.dtype
    k = b.space[b.inner_dim]
    lit = lambda v: literal(v, out)  # noqa: E731
    if op in ("var", "std"):  # two passes, as layer_norm: the variance of the centered values does not cancel
        if out not in FLOATS:
            raise Unsupported(f"{op} on {out}")
        total = b.reduce("sum", x, out, flat=False)
        mean = b.expr(f"{total.name} / {lit(k)}", out, [total])
        centered = b.expr(f"{x.name} - {mean.name}", out, [x, mean])
        squares = b.reduce("sum", b.expr(f"{centered.name} * {centered.name}", out, [centered]), out,
                           flat=not attrs["keepdim"])
        var = b.expr(f"{squares.name} / {lit(max(0.0, k - attrs['correction']))}", out, [squares])
        return b.expr(f"np.sqrt({var.name})", out, [var]) if op == "std" else var
    if op in REDUCE_OPS:
        kind = {"sum": "sum", "mean": "sum", "prod": "prod", "amax": "max", "amin": "min", "any": "max",
                "all": "min"}[op]
        if x.dtype is not out:
            x = b.expr(cast(x.name, x.dtype, out), out, [x])
        acc = b.reduce(kind, x, out, flat=not attrs["keepdim"])
        return b.expr(f"{acc.name} / {lit(k)}", out, [acc]) if op == "mean" else acc
    if out not in FLOATS:
        raise Unsupported(f"{op} on {out}")
    exp, log = _float_fn("exp", out), _float_fn("log", out)
    if op in ("softmax", "log_softmax"):
        m = b.reduce("max", x, out, flat=False)
        shifted = b.expr(f"{x.name} - {m.name}", out, [x, m])
        e = b.expr(f"{exp}({shifted.name})", out, [shifted])
        s = b.reduce("sum", e, out, flat=False)
        if op == "softmax":
            inv = b.expr(f"{lit(1)} / {s.name}", out, [s])
            return b.expr(f"{e.name} * {inv.name}", out, [e, inv])
        ls = b.expr(f"{log}({s.name})", out, [s])
        return b.expr(f"{shifted.name} - {ls.name}", out, [shifted, ls])
    eps = attrs["eps"] if attrs["eps"] is not None else torch.finfo(out.torch).eps

    def row_mean(v: Def) -> Def:
        total = b.reduce("sum", v, out, flat=False)
        return b.expr(f"{total.name} / {lit(k)}", out, [total])

    y = x
    if op == "layer_norm":  # two passes: the variance of the centered values does not cancel
        mean = row_mean(x)
        y = b.expr(f"{x.name} - {mean.name}", out, [x, mean])
    var = row_mean(b.expr(f"{y.name} * {y.name}", out, [y]))
    rsqrt = f"nm.rsqrt_f32({var.name} + {lit(eps)})" if out is DType.f32 else \
        f"{lit(1)} / np.sqrt({var.name} + {lit(eps)})"
    rstd = b.expr(rsqrt, out, [var])
    y = b.expr(f"{y.name} * {rstd.name}", out, [y, rstd])
    for i, extra in enumerate(args[1:]):
        y = b.expr(f"{y.name} {'*' if i == 0 else '+'} {extra.name}", out, [y, extra])
    return y


def row_axis(node: Node) -> int:
    """The dimension of its first operand that reduction or row op `node` reduces over."""
    rank = node.inputs[0].type.rank
    op, attrs = node.op, node.attrs
    if rank == 0:
        raise Unsupported(f"{op} of a scalar")
    if op in REDUCE_OPS:
        dims = attrs["dims"]
        if dims is None or len(dims) != 1:
            raise Unsupported(f"{op} over dims {dims}: one dimension at a time")
        return dims[0] % rank
    if op in ("softmax", "log_softmax"):
        return attrs["dim"] % rank
    if len(attrs["normalized_shape"]) != 1:
        raise Unsupported(f"{op} over {list(attrs['normalized_shape'])}: only the last dimension")
    return rank - 1


def _check_row_op(node: Node, space: tuple[int, ...], axis: int) -> None:
    shape = node.inputs[0].type.static_shape()
    if tuple(shape) != space:
        raise Unsupported(f"{node.op} over {list(shape)}, the region iterates over {list(space)}")
    if row_axis(node) != axis:
        raise Unsupported(f"{node.op} over dim {row_axis(node)}, the region reduces over dim {axis}")
    if node.op in ("sum", "mean") and node.attrs["dtype"] is not None:
        raise Unsupported(f"{node.op} with dtype")
    for extra in node.inputs[1:]:
        if extra.type.static_shape() != tuple(space[-1:]):
            raise Unsupported(f"{node.op} weight/bias of shape {list(extra.type.static_shape())}")


def region_space(body: Graph, kind: str) -> tuple[tuple[int, ...], int]:
    """The iteration space and the dim its reductions reduce over: the outputs' shape and its last dim for
    elementwise, the first reduction's input shape and reduced dim else."""
    for value in [*body.inputs, *body.outputs, *(v for n in body.nodes for v in n.outputs)]:
        if not value.type.is_static or value.type.dtype not in NP_TYPE:
            raise Unsupported(f"value %{value.name}: {value.type}")
    if kind == "elementwise":
        if not body.outputs:
            raise Unsupported("a region without outputs")
        space = tuple(body.outputs[0].type.static_shape())
        return space, len(space) - 1
    rows = [n for n in body.nodes if n.op in REDUCE_OPS or n.op in ROW_OPS]
    if not rows:
        raise Unsupported("a reduction region without a reduction")
    return tuple(rows[0].inputs[0].type.static_shape()), row_axis(rows[0])


def build_spec(body: Graph, kind: str, name: str) -> tuple[KernelSpec, list[Value]]:
    """The kernel for region `body` of `kind` ("elementwise" or "reduction") and the body
    constants it takes as arrays (after the body inputs, before the outputs)."""
    space, axis = region_space(body, kind)
    reduction = kind == "reduction"
    if not reduction:
        for node in body.nodes:
            check_elementwise(node)
            if tuple(node.outputs[0].type.static_shape()) != space and any(v in body.outputs for v in node.outputs):
                raise Unsupported("outputs of different shapes")
    # Elementwise: merge every dim, the last merged one is inner. Reduction: the reduced dim is inner.
    b = _Builder(space, axis)
    flat = _flat_operands(body) if reduction else set()
    for i, value in enumerate(body.inputs):
        b.load(value, f"a{i}", id(value) in flat)
    consts: list[Value] = []
    for value in body.constants.values():
        if value.const.numel() != 1:
            consts.append(value)
        b.const(value, f"c{len(consts) - 1}", id(value) in flat)
    for node in body.nodes:
        args = [b.of[id(v)] for v in node.inputs]
        if node.op in REDUCE_OPS or node.op in ROW_OPS:
            if not reduction:
                raise Unsupported(f"{node.op} in an elementwise region")
            _check_row_op(node, space, axis)
            result = _row_op(b, node, args)
        else:
            check_elementwise(node)
            result = b.elementwise(node, args)
        _check_shape(node.outputs[0], result, space, axis)
        b.of[id(node.outputs[0])] = result
    stores = []
    for i, value in enumerate(body.outputs):
        d = b.of[id(value)]
        _check_shape(value, d, space, axis)
        shape = tuple(value.type.static_shape())
        strides = aligned_strides(shape, space[:axis] + space[axis + 1:]) if d.flat else aligned_strides(shape, space)
        if d.flat:
            strides.insert(axis, 0)
        array = Array(f"o{i}", value.type.dtype, strides)
        b.arrays.append(array)
        stores.append((array, d))
    sizes = list(space) or [1]
    for array in b.arrays:
        array.strides = array.strides or [0]
    cols = None
    if reduction:
        outer, strides = merge_dims(sizes[:axis], [a.strides[:axis] for a in b.arrays])
        after, after_strides = merge_dims(sizes[axis + 1:], [a.strides[axis + 1:] for a in b.arrays])
        if len(after) > 1:
            raise Unsupported(f"dims {list(space[axis + 1:])} after the reduced one that the operands do not "
                              "walk as one")
        cols = after[0] if after else None
        for array, st, st_after in zip(b.arrays, strides, after_strides, strict=True):
            array.strides = [*st, *st_after, array.strides[axis]]
        inner = sizes[axis]
    else:
        merged, strides = merge_dims(sizes, [a.strides for a in b.arrays])
        merged, strides = (merged, strides) if merged else ([1], [[0] for _ in b.arrays])
        outer, inner = merged[:-1], merged[-1]
        for array, st in zip(b.arrays, strides, strict=True):
            array.strides = st
        # Merging may turn a value that broadcasts along the old last dim into one that varies along the inner.
        for d in b.defs:
            if d.expr.startswith("@"):
                array = next(a for a in b.arrays if a.name == d.expr[1:])
                d.full = array.strides[-1] != 0
        for d in b.defs:
            if d.deps:
                d.full = any(x.full for x in d.deps)
    spec = KernelSpec(name, outer, inner, b.arrays, b.defs, stores, reduction, cols)
    return spec, consts


def _flat_operands(body: Graph) -> set[int]:
    """The ids of the operands (body inputs and constants) that meet values reduced without keepdim, and
    so broadcast against the reduced shape: `div(sum(x) {dims=[1]}, n)` of [B, S, H] with n [B, 1]."""
    reduced: set[int] = set()
    flat: set[int] = set()
    other: set[int] = set()
    for node in body.nodes:
        row = node.op in REDUCE_OPS or node.op in ROW_OPS
        if row or not any(id(v) in reduced for v in node.inputs):
            other.update(id(v) for v in node.inputs)
            if row and node.op in REDUCE_OPS and not node.attrs["keepdim"]:
                reduced.add(id(node.outputs[0]))
            continue
        reduced.add(id(node.outputs[0]))
        flat.update(id(v) for v in node.inputs if v.producer is None)
    if flat & other:
        raise Unsupported("an operand meets both values reduced without keepdim and unreduced values")
    return flat


def _check_shape(value: Value, d: Def, space: tuple[int, ...], axis: int) -> None:
    shape = tuple(value.type.static_shape())
    if d.flat:
        if shape != space[:axis] + space[axis + 1:]:
            raise Unsupported(f"%{value.name}: {value.type} is neither the reduced nor the iteration shape")
        return
    aligned_strides(shape, space)
    at = axis - (len(space) - len(shape))
    if d.full and (at < 0 or shape[at] != space[axis]):
        raise Unsupported(f"%{value.name}: {value.type} varies along a dimension it does not have")


# ---------------------------------------------------------------------------------------------
# Emission.


def split_extent(spec: KernelSpec) -> int | None:
    """The trip count of the loop a ranged kernel (`emit_kernel(spec, ranged=True)`) runs part of:
    the outermost loop, a column reduction's loop over the dims after the reduced one when it has no outer
    loop (a channel softmax of batch 1), or a flat elementwise loop (each the first dimension of the
    arrays' strides); None when there is no such loop (a row reduction to one value, an elementwise kernel
    with a scalar store)."""
    if spec.outer:
        return spec.outer[0]
    if spec.cols is not None:
        return spec.cols
    if spec.reduction or any(not d.full for _, d in spec.stores):
        return None
    return spec.inner


def calls_math(spec: KernelSpec) -> bool:
    """Whether `spec` evaluates numba_math's float32 functions: a compute-bound loop (GELU is ~17
    vector operations per 8 elements, an add one)."""
    return any(_MATH_CALL.search(d.expr) for d in spec.defs)


def kernel_header(spec: KernelSpec, ranged: bool) -> list[str]:
    """The decorator and `def` line of `spec`'s kernel (a ranged one takes `count` after its arrays)."""
    # An elementwise kernel is inlined into its entry, which calls it once per way it may alias (see
    # `pointer_entry`); the entry then carries the same flags.
    inline = "" if spec.reduction else ', inline="always"'
    params = [a.name for a in spec.arrays] + (["count"] if ranged else [])
    return ["@njit(cache=True, fastmath=" + fastmath_flags(spec) + ', error_model="numpy", nogil=True' + inline + ")",
            f"def {spec.name}({', '.join(params)}):"]


def outer_loops(spec: KernelSpec, ranged: bool, lines: list[str]) -> tuple[str, dict[str, str]]:
    """Append the loops over `spec.outer` to `lines` (the first runs `count` iterations in a ranged kernel);
    return the indent inside them and each array's base offset there (a variable name, or "0")."""
    indent = "    "
    bases = {a.name: "0" for a in spec.arrays}
    for level, size in enumerate(spec.outer):
        lines.append(f"{indent}for i{level} in range({'count' if ranged and level == 0 else size}):")
        indent += "    "
        for a in spec.arrays:
            step = a.strides[level]
            if step:
                term = f"i{level}" if step == 1 else f"i{level} * {step}"
                new = term if bases[a.name] == "0" else f"{bases[a.name]} + {term}"
                # One name per loop level: an inner level must not accumulate into its parent's base.
                name = f"b{a.name}" if level == 0 else f"b{a.name}_{level}"
                lines.append(f"{indent}{name} = {new}")
                bases[a.name] = name
    return indent, bases


def emit_kernel(spec: KernelSpec, ranged: bool = False) -> str:
    """The @njit source of `spec` (a module-level function named `spec.name`). A ranged kernel takes
    `count` after its arrays and runs that many iterations of the loop `split_extent` names, so that
    threads can split the work: its entry passes arrays that start at the first iteration."""
    arrays = {a.name: a for a in spec.arrays}
    if ranged and split_extent(spec) is None:
        raise ValueError(f"kernel {spec.name} has no loop to split")

    def extent(size: int, split_here: bool) -> str:
        return "count" if split_here and ranged else str(size)
    lines = kernel_header(spec, ranged)
    indent, bases = outer_loops(spec, ranged, lines)

    def address(name: str, inner: bool) -> str:
        step = arrays[name].strides[-1]
        base = bases[name]
        if not inner or step == 0:
            return base
        j = "j" if step == 1 else f"j * {step}"
        return j if base == "0" else f"{base} + {j}"

    row_done: set[int] = set()
    row_lines: list[str] = lines

    def emit_row(d: Def) -> None:
        if id(d) in row_done or not is_variable(d.name):
            return
        if d.reduce:
            raise AssertionError(f"reduction {d.name} used before its pass")
        for dep in d.deps:
            emit_row(dep)
        row_done.add(id(d))
        row_lines.append(f"{indent}{d.name} = {_rhs(d, address, inner=False)}")

    def emit_full(d: Def, done: set[int], body: list[str], inner_indent: str) -> None:
        if id(d) in done or not is_variable(d.name):
            return
        if not d.full:
            emit_row(d)
            return
        for dep in d.deps:
            emit_full(dep, done, body, inner_indent)
        done.add(id(d))
        body.append(f"{inner_indent}{d.name} = {_rhs(d, address, inner=True)}")

    inner_indent = indent + "    "
    levels = sorted({d.level for d in spec.defs if d.reduce})
    for level in levels:
        reds = [d for d in spec.defs if d.reduce and d.level == level]
        body: list[str] = []
        done: set[int] = set()
        for red in reds:
            emit_full(red.deps[0], done, body, inner_indent)
            x = red.deps[0].name
            if red.reduce in ACCUMULATE:
                body.append(f"{inner_indent}{red.name} {ACCUMULATE[red.reduce][0]}= {x}")
            else:
                keep = ">=" if red.reduce == "max" else "<="
                body.append(f"{inner_indent}{red.name} = {red.name} if ({red.name} {keep} {x}) | "
                            f"({red.name} != {red.name}) else {x}")
        for red in reds:
            lines.append(f"{indent}{red.name} = {initial_value(red)}")
        lines.append(f"{indent}for j in range({spec.inner}):")
        lines.extend(body)
        row_done.update(id(r) for r in reds)
    body = []
    done = set()
    full_stores = [(a, d) for a, d in spec.stores if d.full]
    for _, d in full_stores:
        emit_full(d, done, body, inner_indent)
    # Every row value before the first store: an output may share its buffer with an input read later.
    row_stores = [(a, d) for a, d in spec.stores if not d.full]
    for _, d in row_stores:
        emit_row(d)
    for array, d in row_stores:
        lines.append(f"{indent}{array.name}[{bases[array.name]}] = {d.name}")
    if full_stores:
        lines.append(f"{indent}for j in range({extent(spec.inner, not spec.outer)}):")
        lines.extend(body)
        for array, d in full_stores:
            lines.append(f"{inner_indent}{array.name}[{address(array.name, True)}] = {d.name}")
    return "\n".join(lines) + "\n"


def _rhs(d: Def, address: Callable[[str, bool], str], inner: bool) -> str:
    if d.expr.startswith("@"):
        name = d.expr[1:]
        return f"{name}[{address(name, inner)}]"
    return d.expr


def initial_value(red: Def) -> str:
    """The literal accumulator `red` starts from: 0 for a sum, 1 for a product, the lowest value for a max."""
    if red.reduce in ACCUMULATE:
        return literal(ACCUMULATE[red.reduce][1], red.dtype)
    return literal(_extreme(red.dtype, red.reduce == "max"), red.dtype)


def _extreme(dtype: DType, lowest: bool) -> float | int:
    if dtype in FLOATS:
        return -math.inf if lowest else math.inf
    if dtype is DType.bool:
        return not lowest
    info = torch.iinfo(dtype.torch)
    return info.min if lowest else info.max


def pointer_entry(spec: KernelSpec, kernel: str, name: str, ranged: bool = False) -> str:
    """A C-callable `name(p0, p1, ...)` that runs `kernel` on the arrays at the given addresses; for a
    ranged kernel `name(p0, p1, ..., start, stop)` runs iterations [start, stop) of its split loop.

    Calling it through ctypes with `tensor.data_ptr()` costs a fraction of a dispatched call on
    NumPy views, which matters for the small tensors of a batch-1 model. A ranged entry slices each
    array at the first iteration and the kernel counts from 0: a loop over `range(start, stop)` would
    keep Numba's negative-index check and stay scalar (4x slower).
    """
    bounds = ["start", "stop"] if ranged else []
    space = spec.loop_sizes()
    lines = []
    for i, array in enumerate(spec.arrays):
        extent = 1 + sum(st * (n - 1) for st, n in zip(array.strides, space, strict=True))
        step = array.strides[0] if ranged else 0  # along the split loop, the space's first dimension
        offset = "" if not step else "[start:]" if step == 1 else f"[start * {step}:]"
        lines.append(f"    v{i} = carray(p{i}, ({extent},), {NP_TYPE[array.dtype]}){offset}")
    views = [f"v{i}" for i in range(len(spec.arrays))]
    count = ["stop - start"] if ranged else []
    call = f"{kernel}({', '.join(views + count)})"
    # Writing an output over an input of the same layout (in place, as buffer reuse does) defeats
    # LLVM's vectorizer: it guards the vector loop with an overlap check, which fails, and runs the
    # scalar loop, 3-4x slower. With the inlined kernel called on one array for both, the vector loop
    # needs no check.
    outputs = [spec.arrays.index(a) for a, _ in spec.stores]
    aliases = [] if spec.reduction or not outputs else [
        i for i, a in enumerate(spec.arrays) if a.name.startswith("a") and a.dtype == spec.arrays[outputs[0]].dtype
        and a.strides == spec.arrays[outputs[0]].strides][:2]
    for branch, i in zip(["if", "elif"], aliases, strict=False):
        shared = [views[i] if j == outputs[0] else v for j, v in enumerate(views)]
        lines += [f"    {branch} v{i}.ctypes.data == v{outputs[0]}.ctypes.data:",
                  f"        {kernel}({', '.join(shared + count)})"]
    lines += ["    else:", f"        {call}"] if aliases else [f"    {call}"]
    params = ", ".join([f"p{i}" for i in range(len(spec.arrays))] + bounds)
    signature = ", ".join(["voidptr"] * len(spec.arrays) + ["int64"] * len(bounds))
    flags = fastmath_flags(spec)
    return (f'@cfunc("void({signature})", cache=True, nogil=True, fastmath={flags}, error_model="numpy")\n'
            f"def {name}({params}):\n" + "\n".join(lines) + "\n")


# An elementwise loop over numba_math's rational and polynomial functions is bound by chains of
# dependent FMAs (5 cycles each on Zen 1): LLVM interleaving four vector iterations keeps more of them
# in flight (GELU 30 -> 23 cycles per 8 elements, measured with data in L1). Memory-bound loops and
# reductions keep LLVM's own choice.
_MATH_CALL = re.compile(r"\bnm\.\w+_f32\(")
_INTERLEAVED_MATH = "-force-vector-interleave=4"


@contextmanager
def compile_options(module_source: str) -> Iterator[None]:
    """LLVM options for compiling the kernels in `module_source` (process-global, so set under Numba's
    compiler lock and reset after; the options follow from the source, which names the cache file)."""
    if not _MATH_CALL.search(module_source) or "fastmath=FASTMATH_REDUCTION" in module_source:
        yield
        return
    import llvmlite.binding as llvm  # here: importing the backend does not load Numba
    from numba.core.compiler_lock import global_compiler_lock

    with global_compiler_lock:
        llvm.set_option("", _INTERLEAVED_MATH)
        try:
            yield
        finally:
            llvm.set_option("", "-force-vector-interleave=0")


def kernel_module(kernels: list[str]) -> str:
    """A module holding the kernels: Numba's cache needs them in a real file."""
    header = ["# Generated by heteropass (backends/numba_codegen.py).",
              "import math", "", "import numpy as np", "from numba import carray, cfunc, njit", "",
              "from heteropass.backends import numba_math as nm",
              "from heteropass.backends.numba_codegen import FASTMATH_ELEMENTWISE, FASTMATH_REDUCTION", ""]
    return "\n".join(header) + "\n" + "\n\n".join(kernels)

