"""How each IR op lowers to standard ONNX ops, with PyTorch semantics kept exactly.

A rule takes the `Emitter` of the graph being built, the IR node and the ONNX names of its
operands, emits ONNX nodes and returns the ONNX names holding the node's results. The exporter
renames those results to their final names, so rules never care what their outputs are called.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .graph import Node
from .onnx_exporter import ONNX_DTYPES, Emitter, fail, tensor_proto
from .ops import get_op
from .ops.quant import weight_scale_axis
from .types import DType, TensorType

Rule = Callable[[Emitter, Node, list[str]], str | list[str]]
RULES: dict[str, Rule] = {}


def rule(*ops: str) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        for op in ops:
            RULES[op] = fn
        return fn

    return deco


def _in(node: Node, i: int = 0) -> TensorType:
    return node.inputs[i].type


def _out(node: Node, i: int = 0) -> TensorType:
    return node.outputs[i].type


def _promoted(node: Node) -> DType:
    """The dtype PyTorch compares two operands in (0-dim operands weigh less in promotion)."""
    a, b = (v.type.meta() for v in node.inputs)
    return DType.from_torch(torch.result_type(a, b))


def _casted(em: Emitter, node: Node, x: list[str], dtype: DType) -> list[str]:
    return [em.cast(name, v.type.dtype, dtype) for name, v in zip(x, node.inputs, strict=True)]


def _axis(dim: int, rank: int) -> int:
    return dim % rank if rank else 0


def _spatial(values: Sequence[int], k: int) -> list[int]:
    """Per-spatial-dim values from a torch attribute that may give one value for all dims."""
    return list(values) * k if len(values) == 1 else list(values)


# -- elementwise --------------------------------------------------------------------------------
_UNARY = {
    "neg": "Neg", "abs": "Abs", "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "reciprocal": "Reciprocal",
    "sin": "Sin", "cos": "Cos", "tanh": "Tanh", "sigmoid": "Sigmoid", "erf": "Erf", "floor": "Floor",
    "ceil": "Ceil", "round": "Round", "sign": "Sign", "relu": "Relu", "hardswish": "HardSwish", "mish": "Mish",
    "bitwise_not": "BitwiseNot", "tan": "Tan", "asin": "Asin", "acos": "Acos", "atan": "Atan", "sinh": "Sinh",
    "cosh": "Cosh", "asinh": "Asinh", "acosh": "Acosh", "atanh": "Atanh",
}


@rule(*_UNARY)
def _unary(em: Emitter, node: Node, x: list[str]) -> str:
    dtype = _out(node).dtype
    if node.op in ("floor", "ceil", "round") and not dtype.is_floating:
        return x[0]  # torch rounds integers to themselves
    if node.op == "bitwise_not" and dtype is DType.bool:
        return em.op("Not", x[0])
    if node.op == "sign" and dtype.is_floating:  # ONNX's Sign(NaN) is NaN, PyTorch's 0
        (v,) = _casted(em, node, x, dtype)
        return em.op("Where", em.op("IsNaN", v), em.scalar(0, dtype), em.op("Sign", v))
    return em.op(_UNARY[node.op], *_casted(em, node, x, dtype))


@rule("log1p", "expm1", "rsqrt", "silu", "hardsigmoid", "logical_not", "isnan")
def _composite_unary(em: Emitter, node: Node, x: list[str]) -> str:
    dtype = _out(node).dtype
    if node.op == "logical_not":
        return em.op("Not", em.cast(x[0], _in(node).dtype, DType.bool))
    if node.op == "isnan":
        src = _in(node).dtype
        return em.op("IsNaN", x[0] if src.is_floating else em.cast(x[0], src, DType.f32))
    (v,) = _casted(em, node, x, dtype)
    one = em.scalar(1, dtype)
    if node.op == "log1p":
        return em.op("Log", em.op("Add", v, one))
    if node.op == "expm1":
        return em.op("Sub", em.op("Exp", v), one)
    if node.op == "rsqrt":
        return em.op("Reciprocal", em.op("Sqrt", v))
    if node.op == "silu":
        return em.op("Mul", v, em.op("Sigmoid", v))
    return em.op("HardSigmoid", v, alpha=1 / 6, beta=0.5)


_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "maximum": "Max", "minimum": "Min", "pow": "Pow",
           "bitwise_and": "BitwiseAnd", "bitwise_or": "BitwiseOr", "bitwise_xor": "BitwiseXor"}
# torch computes these on bools as logic; ONNX's arithmetic ops take no bools.
_BOOL_BINARY = {"add": "Or", "mul": "And", "maximum": "Or", "minimum": "And", "bitwise_and": "And",
                "bitwise_or": "Or", "bitwise_xor": "Xor"}
_COMPARE = {"eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual"}
_LOGICAL = {"logical_and": "And", "logical_or": "Or", "logical_xor": "Xor"}


@rule(*_BINARY)
def _binary(em: Emitter, node: Node, x: list[str]) -> str:
    dtype = _out(node).dtype
    op = _BOOL_BINARY[node.op] if dtype is DType.bool else _BINARY[node.op]
    return em.op(op, *_casted(em, node, x, dtype))


@rule(*_COMPARE, "ne")
def _compare(em: Emitter, node: Node, x: list[str]) -> str:
    a, b = _casted(em, node, x, _promoted(node))
    if node.op == "ne":
        return em.op("Not", em.op("Equal", a, b))
    return em.op(_COMPARE[node.op], a, b)


@rule(*_LOGICAL)
def _logical(em: Emitter, node: Node, x: list[str]) -> str:
    return em.op(_LOGICAL[node.op], *_casted(em, node, x, DType.bool))


def _trunc(em: Emitter, v: str, dtype: DType) -> str:
    """Round toward zero (ONNX has no Trunc)."""
    negative = em.op("Less", v, em.scalar(0, dtype))
    return em.op("Where", negative, em.op("Ceil", v), em.op("Floor", v))


@rule("div")
def _div(em: Emitter, node: Node, x: list[str]) -> str:
    dtype = _out(node).dtype
    a, b = _casted(em, node, x, dtype)
    mode = node.attrs["rounding_mode"]
    if dtype.is_floating:
        q = em.op("Div", a, b)
        if mode == "floor":
            return _floor_divide(em, a, b, q, dtype)
        return q if mode is None else _trunc(em, q, dtype)
    if mode == "floor":  # a - mod(a, b) is an exact multiple of b, so truncating division is exact
        a = em.op("Sub", a, em.op("Mod", a, b, fmod=0))
    return em.op("Div", a, b)  # ONNX integer division truncates


def _signs_differ(em: Emitter, mod: str, b: str, dtype: DType) -> str:
    """mod != 0 and its sign differs from b's: where PyTorch moves fmod's result to the divisor's sign."""
    zero = em.scalar(0, dtype)
    differ = em.op("Xor", em.op("Less", b, zero), em.op("Less", mod, zero))
    return em.op("And", em.op("Not", em.op("Equal", mod, zero)), differ)


def _floor_divide(em: Emitter, a: str, b: str, q: str, dtype: DType) -> str:
    """Float a // b as PyTorch computes it, from the exact fmod: (a - fmod(a, b)) / b, one less where the
    signs differ, rounded to the nearest integer (flooring the rounded a / b is one off: 0.7 // 0.1 is 6)."""
    mod = em.op("Mod", a, b, fmod=1)
    div = em.op("Div", em.op("Sub", a, mod), b)
    div = em.op("Where", _signs_differ(em, mod, b, dtype), em.op("Sub", div, em.scalar(1, dtype)), div)
    floor = em.op("Floor", div)
    nearest = em.op("Where", em.op("Greater", em.op("Sub", div, floor), em.scalar(0.5, dtype)),
                    em.op("Add", floor, em.scalar(1, dtype)), floor)
    signed_zero = em.op("Mul", em.op("Abs", nearest), em.op("Sign", q))  # 0 takes the quotient's sign
    nearest = em.op("Where", em.op("Equal", nearest, em.scalar(0, dtype)), signed_zero, nearest)
    return em.op("Where", em.op("Equal", b, em.scalar(0, dtype)), q, nearest)


@rule("fmod", "remainder")
def _mod(em: Emitter, node: Node, x: list[str]) -> str:
    dtype = _out(node).dtype
    a, b = _casted(em, node, x, dtype)
    if node.op == "fmod":
        return em.op("Mod", a, b, fmod=1)
    if not dtype.is_floating:
        return em.op("Mod", a, b, fmod=0)  # the sign of the divisor, like Python's %
    # PyTorch: fmod, moved to the divisor's sign (a - floor(a / b) * b loses 1e10 % 3 and 3 % inf).
    mod = em.op("Mod", a, b, fmod=1)
    return em.op("Where", _signs_differ(em, mod, b, dtype), em.op("Add", mod, b), mod)


@rule("where")
def _where(em: Emitter, node: Node, x: list[str]) -> str:
    dtype = _out(node).dtype
    cond = em.cast(x[0], _in(node).dtype, DType.bool)
    a, b = (em.cast(name, v.type.dtype, dtype) for name, v in zip(x[1:], node.inputs[1:], strict=True))
    return em.op("Where", cond, a, b)


@rule("gelu")
def _gelu(em: Emitter, node: Node, x: list[str]) -> str:
    approximate = node.attrs["approximate"]
    if em.opset >= 20:
        return em.op("Gelu", x[0], approximate=approximate)
    dtype = _out(node).dtype
    if approximate == "tanh":
        cube = em.op("Mul", x[0], em.op("Mul", x[0], x[0]))
        inner = em.op("Add", x[0], em.op("Mul", cube, em.scalar(0.044715, dtype)))
        t = em.op("Tanh", em.op("Mul", inner, em.scalar(math.sqrt(2 / math.pi), dtype)))
    else:
        t = em.op("Erf", em.op("Mul", x[0], em.scalar(1 / math.sqrt(2), dtype)))
    half_x = em.op("Mul", x[0], em.scalar(0.5, dtype))
    return em.op("Mul", half_x, em.op("Add", t, em.scalar(1, dtype)))


@rule("leaky_relu", "elu")
def _alpha_unary(em: Emitter, node: Node, x: list[str]) -> str:
    if node.op == "elu":
        return em.op("Elu", x[0], alpha=node.attrs["alpha"])
    return em.op("LeakyRelu", x[0], alpha=node.attrs["negative_slope"])


@rule("softplus")
def _softplus(em: Emitter, node: Node, x: list[str]) -> str:
    """torch: x where beta*x > threshold, else log(1 + exp(beta*x)) / beta."""
    dtype = _out(node).dtype
    scaled = em.op("Mul", x[0], em.scalar(node.attrs["beta"], dtype))
    soft = em.op("Div", em.op("Softplus", scaled), em.scalar(node.attrs["beta"], dtype))
    linear = em.op("Greater", scaled, em.scalar(node.attrs["threshold"], dtype))
    return em.op("Where", linear, x[0], soft)


@rule("clamp")
def _clamp(em: Emitter, node: Node, x: list[str]) -> str:
    dtype = _out(node).dtype
    lo, hi = node.attrs["min"], node.attrs["max"]
    if not dtype.is_floating:  # the reference truncates float bounds for integer tensors
        lo, hi = (None if b is None else int(b) for b in (lo, hi))
    bounds = [None if b is None else em.scalar(b, dtype) for b in (lo, hi)]
    return em.op("Clip", *_casted(em, node, x, dtype), *bounds)  # torch clamps bools as i64


@rule("cast")
def _cast(em: Emitter, node: Node, x: list[str]) -> str:
    return em.op("Cast", x[0], to=ONNX_DTYPES[node.attrs["dtype"]])


@rule("tril", "triu")
def _trilu(em: Emitter, node: Node, x: list[str]) -> str:
    k = em.const(torch.tensor(node.attrs["diagonal"], dtype=torch.int64), "diagonal")
    return em.op("Trilu", x[0], k, upper=int(node.op == "triu"))


# -- products, convolutions, attention ------------------------------------------------------------
@rule("matmul", "bmm")
def _matmul(em: Emitter, node: Node, x: list[str]) -> str:
    return em.op("MatMul", *x)


@rule("linear")
def _linear(em: Emitter, node: Node, x: list[str]) -> str:
    """x @ weight.T + bias: Gemm for 2-D x, else MatMul with the transposed weight."""
    if _in(node).rank == 2 and _in(node, 1).rank == 2:
        return em.op("Gemm", *x, transB=1)
    w = em.op("Transpose", x[1], perm=[1, 0]) if _in(node, 1).rank == 2 else x[1]
    y = em.op("MatMul", x[0], w)
    return em.op("Add", y, x[2]) if len(x) == 3 else y


def _with_batch(em: Emitter, node: Node, x: str, k: int, body: Callable[[str], str]) -> str:
    """Apply an ONNX op that needs [N, C, *spatial] to torch's unbatched [C, *spatial] too."""
    if _in(node).rank == k + 2:
        return body(x)
    zero = em.ints([0])
    return em.op("Squeeze", body(em.op("Unsqueeze", x, zero)), zero)


@rule("conv", "conv_transpose")
def _conv(em: Emitter, node: Node, x: list[str]) -> str:
    a = node.attrs
    k = _in(node, 1).rank - 2
    padding = _spatial(a["padding"], k)
    attrs: dict[str, Any] = {"strides": _spatial(a["stride"], k), "pads": padding + padding,
                             "dilations": _spatial(a["dilation"], k), "group": a["groups"]}
    if node.op == "conv_transpose":
        attrs["output_padding"] = _spatial(a["output_padding"], k)
    op = "Conv" if node.op == "conv" else "ConvTranspose"
    return _with_batch(em, node, x[0], k, lambda v: em.op(op, v, *x[1:], **attrs))


@rule("scaled_dot_product_attention")
def _attention(em: Emitter, node: Node, x: list[str]) -> str:
    """softmax(q @ k^T * scale + mask) @ v, written out (the Attention op is too recent to rely on)."""
    return _attention_of(em, node, x[0], x[1], x[2], x[3] if len(x) == 4 else None, _in(node, 1), _in(node, 2))


@rule("attention_with_cache")
def _attention_with_cache(em: Emitter, node: Node, x: list[str]) -> str:
    """The attention over Concat(k_past, k_new) and Concat(v_past, v_new) along the sequence."""
    k, v = em.op("Concat", x[1], x[2], axis=-2), em.op("Concat", x[3], x[4], axis=-2)
    k_type, v_type = (TensorType((*_in(node, i).shape[:-2], _in(node, i).shape[-2] + _in(node, i + 1).shape[-2],
                                  _in(node, i).shape[-1]), _in(node, i).dtype) for i in (1, 3))
    return _attention_of(em, node, x[0], k, v, x[5] if len(x) == 6 else None, k_type, v_type)


def _attention_of(em: Emitter, node: Node, q: str, k: str, v: str, mask: str | None, k_type: TensorType,
                  v_type: TensorType) -> str:
    q_type = _in(node, 0)
    dtype = q_type.dtype
    if node.attrs["enable_gqa"] and q_type.shape[-3] != k_type.shape[-3]:
        k, v = (_repeat_heads(em, name, t, q_type.shape[-3]) for name, t in ((k, k_type), (v, v_type)))
    scale = node.attrs["scale"]
    if scale is None:
        scale = 1 / math.sqrt(q_type.shape[-1])  # type: ignore[arg-type]
    perm = [*range(k_type.rank - 2), k_type.rank - 1, k_type.rank - 2]
    scores = em.op("Mul", em.op("MatMul", q, em.op("Transpose", k, perm=perm)), em.scalar(scale, dtype))
    L, S = q_type.shape[-2], k_type.shape[-2]
    masks = []
    if node.attrs["is_causal"]:
        masks.append((em.const(torch.ones(L, S, dtype=torch.bool).tril(), "causal_mask"), DType.bool))  # type: ignore[arg-type]
    if mask is not None:
        masks.append((mask, node.inputs[-1].type.dtype))
    for keep, keep_dtype in masks:
        if keep_dtype is DType.bool:
            scores = em.op("Where", keep, scores, em.scalar(-math.inf, dtype))
        else:
            scores = em.op("Add", scores, em.cast(keep, keep_dtype, dtype))
    probs = em.op("Softmax", scores, axis=-1)
    if mask is not None:  # a row the mask hides entirely gives zeros, as PyTorch's kernels do (Softmax: NaN)
        row_max = em.op("ReduceMax", scores, em.ints([-1]), keepdims=1)
        hidden = em.op("Equal", row_max, em.scalar(-math.inf, dtype))
        probs = em.op("Where", hidden, em.scalar(0, dtype), probs)
    return em.op("MatMul", probs, v)


def _repeat_heads(em: Emitter, name: str, type: TensorType, heads: Any) -> str:
    """repeat_interleave over the head dim (-3), as grouped-query attention shares k/v heads."""
    shape = list(type.shape)
    groups = heads // shape[-3]
    expanded = [*shape[:-2], groups, *shape[-2:]]
    x = em.op("Expand", em.op("Unsqueeze", name, em.ints([type.rank - 2])), em.ints(expanded))
    return em.op("Reshape", x, em.ints([*shape[:-3], heads, *shape[-2:]]))


# -- normalization, softmax, pooling -------------------------------------------------------------
@rule("batch_norm")
def _batch_norm(em: Emitter, node: Node, x: list[str]) -> str:
    channels = _in(node, 1).shape[0]
    dtype = _in(node, 1).dtype
    weight = x[3] if len(x) > 3 else em.const(torch.ones(channels, dtype=dtype.torch), "ones")  # type: ignore[arg-type]
    bias = x[4] if len(x) > 4 else em.const(torch.zeros(channels, dtype=dtype.torch), "zeros")  # type: ignore[arg-type]
    return em.op("BatchNormalization", x[0], weight, bias, x[1], x[2], epsilon=node.attrs["eps"])


@rule("layer_norm")
def _layer_norm(em: Emitter, node: Node, x: list[str]) -> str:
    shape = node.attrs["normalized_shape"]
    weight = x[1] if len(x) > 1 else em.const(torch.ones(shape, dtype=_in(node).dtype.torch), "ones")
    return em.op("LayerNormalization", x[0], weight, *x[2:], axis=-len(shape), epsilon=node.attrs["eps"])


@rule("rms_norm")
def _rms_norm(em: Emitter, node: Node, x: list[str]) -> str:
    """x / sqrt(mean(x^2) + eps) * weight, over the trailing normalized dims."""
    type = _in(node)
    eps = node.attrs["eps"]
    if eps is None:
        eps = torch.finfo(type.dtype.torch).eps
    axes = em.ints(range(type.rank - len(node.attrs["normalized_shape"]), type.rank))
    mean_square = em.op("ReduceMean", em.op("Mul", x[0], x[0]), axes, keepdims=1)
    rms = em.op("Sqrt", em.op("Add", mean_square, em.scalar(eps, type.dtype)))
    y = em.op("Div", x[0], rms)
    return em.op("Mul", y, x[1]) if len(x) > 1 else y


@rule("group_norm")
def _group_norm(em: Emitter, node: Node, x: list[str]) -> str:
    """Normalize [N, groups, rest] over rest with biased variance, then scale/shift per channel."""
    type = _in(node)
    shape = list(type.shape)
    grouped = em.op("Reshape", x[0], em.ints([shape[0], node.attrs["groups"], -1]))
    axes = em.ints([2])
    centered = em.op("Sub", grouped, em.op("ReduceMean", grouped, axes, keepdims=1))
    var = em.op("ReduceMean", em.op("Mul", centered, centered), axes, keepdims=1)
    std = em.op("Sqrt", em.op("Add", var, em.scalar(node.attrs["eps"], type.dtype)))
    y = em.op("Reshape", em.op("Div", centered, std), em.ints(shape))
    per_channel = em.ints([shape[1]] + [1] * (type.rank - 2))
    if len(x) > 1:
        y = em.op("Mul", y, em.op("Reshape", x[1], per_channel))
    if len(x) > 2:
        y = em.op("Add", y, em.op("Reshape", x[2], per_channel))
    return y


def _through_1d(em: Emitter, x: str, body: Callable[[str], str]) -> str:
    """Apply an ONNX op along axis 0 of a 0-d tensor's one-element 1-D view (ONNX Runtime refuses rank 0)."""
    zero = em.ints([0])
    return em.op("Squeeze", body(em.op("Unsqueeze", x, zero)), zero)


@rule("softmax", "log_softmax")
def _softmax(em: Emitter, node: Node, x: list[str]) -> str:
    op = "Softmax" if node.op == "softmax" else "LogSoftmax"
    if not _in(node).rank:
        return _through_1d(em, x[0], lambda v: em.op(op, v, axis=0))
    return em.op(op, x[0], axis=node.attrs["dim"])


def _pool_attrs(node: Node, pads_ignored: bool) -> dict[str, Any]:
    """Pool attributes. ceil_mode's extra windows: PyTorch drops a last window that would start in the right
    padding, ONNX Runtime does not, and ONNX has one ceil_mode for all dims. Where the pool ignores its pads
    (`pads_ignored`: max, or an average that does not count them), ceil_mode is 0 and each dim gets the end
    padding that makes PyTorch's windows; otherwise ceil_mode stays 1 only where it adds a window."""
    a = node.attrs
    k = len(a["kernel"])
    padding, strides = _spatial(a["padding"], k), _spatial(a["stride"] or a["kernel"], k)
    dilation = _spatial(a.get("dilation", (1,)), k)
    sizes, out = _in(node).shape[-k:], list(_out(node).shape[-k:])
    attrs = {"kernel_shape": list(a["kernel"]), "strides": strides, "pads": padding + padding, "ceil_mode": 0}
    if not a["ceil_mode"] or not all(isinstance(n, int) for n in (*sizes, *out)):
        return {**attrs, "ceil_mode": int(a["ceil_mode"])}
    floor = [(n + 2 * p - d * (kk - 1) - 1) // s + 1 for n, p, d, kk, s in zip(
        sizes, padding, dilation, a["kernel"], strides, strict=True)]
    if pads_ignored:  # the end padding that fits the last window
        end = [max(p, (o - 1) * st + d * (kk - 1) + 1 - n - p) for n, o, p, st, kk, d in zip(
            sizes, out, padding, strides, a["kernel"], dilation, strict=True)]
        return {**attrs, "pads": padding + end}
    if len(set(o != f for o, f in zip(out, floor, strict=True))) > 1:
        raise fail(node, "an average counting its padding whose dims need different ceil modes")
    return {**attrs, "ceil_mode": int(out != floor)}


@rule("max_pool")
def _max_pool(em: Emitter, node: Node, x: list[str]) -> str:
    attrs = {**_pool_attrs(node, pads_ignored=True), "dilations": _spatial(node.attrs["dilation"],
                                                                          len(node.attrs["kernel"]))}
    return _with_batch(em, node, x[0], len(node.attrs["kernel"]), lambda v: em.op("MaxPool", v, **attrs))


@rule("avg_pool")
def _avg_pool(em: Emitter, node: Node, x: list[str]) -> str:
    divisor = node.attrs["divisor_override"]
    attrs = _pool_attrs(node, pads_ignored=divisor is not None or not node.attrs["count_include_pad"])
    k = len(attrs["kernel_shape"])
    if divisor is None:
        attrs["count_include_pad"] = int(node.attrs["count_include_pad"])
        return _with_batch(em, node, x[0], k, lambda v: em.op("AveragePool", v, **attrs))
    # A depthwise convolution with weights 1/divisor sums each window and divides by the override; the
    # extra windows of ceil_mode read zeros from the end padding, as they sum only the input.
    type = _in(node)
    channels = type.shape[-k - 1]
    weight = em.const(torch.full([channels, 1, *attrs["kernel_shape"]], 1 / divisor,  # type: ignore[list-item]
                                 dtype=type.dtype.torch), "avg_weight")
    conv = {"kernel_shape": attrs["kernel_shape"], "strides": attrs["strides"], "pads": attrs["pads"],
            "group": channels}
    return _with_batch(em, node, x[0], k, lambda v: em.op("Conv", v, weight, **conv))


@rule("adaptive_avg_pool", "adaptive_max_pool")
def _adaptive_pool(em: Emitter, node: Node, x: list[str]) -> str:
    """Global pooling for output 1, fixed windows when every size divides; others are irregular."""
    out_size = list(node.attrs["output_size"])
    type = _in(node)
    k = len(out_size)
    in_size = list(type.shape[-k:])
    reduce, pool = ("ReduceMean", "AveragePool") if node.op == "adaptive_avg_pool" else ("ReduceMax", "MaxPool")
    if all(o == 1 for o in out_size):
        return em.op(reduce, x[0], em.ints(range(type.rank - k, type.rank)), keepdims=1)
    if any(i % o for i, o in zip(in_size, out_size, strict=True)):  # type: ignore[operator]
        raise fail(node, f"output size {out_size} does not divide input size {in_size}: the windows are irregular")
    window = [i // o for i, o in zip(in_size, out_size, strict=True)]  # type: ignore[operator]
    return _with_batch(em, node, x[0], k, lambda v: em.op(pool, v, kernel_shape=window, strides=window))


# PyTorch's source coordinate for each mode, in ONNX Resize's terms: nearest is floor(dst / scale),
# nearest_exact floor((dst + 0.5) / scale), linear and cubic (dst + 0.5) / scale - 0.5 or, with
# align_corners, dst * (in - 1) / (out - 1); cubic's coefficient is -0.75 and reads clamp to the edge.
_RESIZE_MODES = {
    "nearest": {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
    "nearest_exact": {"mode": "nearest", "coordinate_transformation_mode": "half_pixel",
                      "nearest_mode": "round_prefer_ceil"},
    "linear": {"mode": "linear"},
    "cubic": {"mode": "cubic", "cubic_coeff_a": -0.75},
}


@rule("interpolate")
def _interpolate(em: Emitter, node: Node, x: list[str]) -> str:
    """A Resize to the output size where ONNX Runtime maps coordinates as PyTorch does: no antialias, and
    scale factors (if the call gave them) that give whole sizes, so out / in is the scale. Otherwise
    (ONNX Runtime floors float32(scale) * in and maps by the float32 scale; its antialias filter differs)
    each resized axis becomes PyTorch's own weights: a sum of Gathers times constants."""
    attrs, type = node.attrs, _in(node)
    k, rank = len(attrs["size"]), type.rank
    spatial = [int(d) for d in type.shape[rank - k:]]  # type: ignore[misc]
    scales = attrs["scales"] or [o / i if i else 1.0 for o, i in zip(attrs["size"], spatial, strict=True)]
    if not attrs["antialias"] and all(s * i == o for s, i, o in zip(scales, spatial, attrs["size"], strict=True)):
        resize = dict(_RESIZE_MODES[attrs["mode"]], axes=list(range(rank - k, rank)))
        if not attrs["mode"].startswith("nearest"):
            resize["coordinate_transformation_mode"] = "align_corners" if attrs["align_corners"] else "half_pixel"
        return em.op("Resize", x[0], None, None, em.ints(attrs["size"]), **resize)
    y = x[0]
    for axis in range(rank - k, rank):
        weights = _interpolation_weights(node, axis)
        if not (weights.shape[0] == weights.shape[1] and torch.equal(weights, torch.eye(len(weights)))):
            y = _weighted_gathers(em, y, axis, rank, weights.to(type.dtype.torch))
    return y


def _interpolation_weights(node: Node, axis: int) -> torch.Tensor:
    """[out, in]: how PyTorch's kernel mixes the inputs along `axis`, run on one-hot float64 probes: channel
    c is 1 where the axis index is c; the other axes keep a size of 2 (n x n x 2 x 2, whatever the image
    size: at 1 the antialiased kernels take the probe for channels-last)."""
    attrs, shape = node.attrs, [int(d) for d in _in(node).shape]  # type: ignore[misc]
    n, k = shape[axis], len(attrs["size"])
    position = axis - (len(shape) - k)
    one_hot = torch.eye(n, dtype=torch.float64).reshape(1, n, *[n if j == position else 1 for j in range(k)])
    probe = one_hot.expand(1, n, *[n if j == position else 2 for j in range(k)]).contiguous()
    size = [attrs["size"][j] if j == position else 2 for j in range(k)]
    scales = None if attrs["scales"] is None else [attrs["scales"][j] if j == position else 1.0 for j in range(k)]
    out = get_op("interpolate").run([probe], {**attrs, "size": size, "scales": scales})[0]
    return out[(0, slice(None), *[slice(None) if j == position else 0 for j in range(k)])].t()


def _weighted_gathers(em: Emitter, x: str, axis: int, rank: int, weights: torch.Tensor) -> str:
    """sum over taps t of Gather(x, index_t, axis) * weight_t, each output reading its nonzero inputs only
    (a NaN stays where PyTorch puts it)."""
    taps = max(int((weights != 0).sum(1).max()), 1)
    order = weights.abs().argsort(dim=1, descending=True, stable=True)[:, :taps]
    picked = weights.gather(1, order)
    order = torch.where(picked == 0, order[:, :1], order)  # a row's spare taps read its first input, times 0
    broadcast = [1] * rank
    broadcast[axis] = weights.shape[0]
    total = None
    for t in range(taps):
        term = em.op("Gather", x, em.const(order[:, t].contiguous(), "interpolation_index"), axis=axis)
        if not torch.all(picked[:, t] == 1):
            term = em.op("Mul", term, em.const(picked[:, t].reshape(broadcast).contiguous(), "interpolation_weight"))
        total = term if total is None else em.op("Add", total, term)
    assert total is not None
    return total


# -- reductions ---------------------------------------------------------------------------------
_REDUCE = {"sum": "ReduceSum", "mean": "ReduceMean", "amax": "ReduceMax", "amin": "ReduceMin",
           "prod": "ReduceProd", "any": "ReduceMax", "all": "ReduceMin"}


def _reduce_axes(node: Node) -> list[int]:
    """The reduced dims, normalized; none means every dim (the IR refuses an empty list)."""
    rank = _in(node).rank
    dims = node.attrs["dims"]
    return list(range(rank)) if dims is None else sorted({_axis(d, rank) for d in dims})


def _empty_reduction(em: Emitter, node: Node) -> str | None:
    """The result of a mean, var, std, any or all over no elements (NaN, False, True), as a constant of
    the output's shape: ONNX Runtime's reductions give 0 (mean) or their identity's opposite there."""
    type = _in(node)
    if not type.rank or math.prod(type.shape[a] for a in _reduce_axes(node)) != 0:  # type: ignore[misc]
        return None
    fill = {"mean": math.nan, "var": math.nan, "std": math.nan, "any": False, "all": True}.get(node.op)
    if fill is None:
        return None
    out = _out(node)
    return em.const(torch.full(out.static_shape(), fill, dtype=out.dtype.torch), hint=node.op)


@rule(*_REDUCE)
def _reduce(em: Emitter, node: Node, x: list[str]) -> str:
    if (empty := _empty_reduction(em, node)) is not None:
        return empty
    src, dst = _in(node).dtype, _out(node).dtype
    if node.op in ("any", "all"):  # reduce 0/1 integers: ONNX reductions take no bools
        v = em.cast(em.cast(x[0], src, DType.bool), DType.bool, DType.i32)
        work = DType.i32
    else:
        work = dst
        v = em.cast(x[0], src, dst)
    if _in(node).rank:
        axes, keep = em.ints(_reduce_axes(node)), int(node.attrs["keepdim"])
        reduced = em.op(_REDUCE[node.op], v, axes, keepdims=keep)
        if node.op in ("amax", "amin") and work.is_floating:
            # ONNX Runtime's ReduceMax/Min skip a NaN unless it comes first; PyTorch's propagate it.
            nan = em.op("ReduceMax", em.cast(em.op("IsNaN", v), DType.bool, DType.i32), axes, keepdims=keep)
            reduced = em.op("Where", em.cast(nan, DType.i32, DType.bool), em.scalar(math.nan, work), reduced)
        v = reduced
    return em.cast(v, work, dst)


@rule("var", "std")
def _var(em: Emitter, node: Node, x: list[str]) -> str:
    """sum((x - mean)^2) / max(0, n - correction), and its square root for std; as in PyTorch a
    correction of n or more divides by 0 (inf, or NaN for 0 / 0)."""
    if (empty := _empty_reduction(em, node)) is not None:
        return empty
    type = _in(node)
    axes_list = _reduce_axes(node)
    axes = em.ints(axes_list)
    centered = em.op("Sub", x[0], em.op("ReduceMean", x[0], axes, keepdims=1))
    squares = em.op("ReduceSum", em.op("Mul", centered, centered), axes, keepdims=int(node.attrs["keepdim"]))
    n = math.prod(type.shape[a] for a in axes_list)  # type: ignore[misc]
    var = em.op("Div", squares, em.scalar(max(0, n - node.attrs["correction"]), type.dtype))
    return em.op("Sqrt", var) if node.op == "std" else var


@rule("argmax", "argmin")
def _arg(em: Emitter, node: Node, x: list[str]) -> str:
    dim = node.attrs["dim"]
    if dim is None:  # the index into the flattened tensor, shaped as torch shapes it
        flat = _arg_nan_first(em, node, em.op("Reshape", x[0], em.ints([-1])), 0, 0)
        return em.op("Reshape", flat, em.ints(_out(node).shape))  # type: ignore[arg-type]
    return _arg_nan_first(em, node, x[0], _axis(dim, _in(node).rank), int(node.attrs["keepdim"]))


def _arg_nan_first(em: Emitter, node: Node, v: str, axis: int, keepdims: int) -> str:
    """ArgMax/ArgMin, where a NaN wins (its first index), as in PyTorch; ONNX Runtime skips NaN."""
    found = em.op("ArgMax" if node.op == "argmax" else "ArgMin", v, axis=axis, keepdims=keepdims)
    if not _in(node).dtype.is_floating:
        return found
    nan = em.cast(em.op("IsNaN", v), DType.bool, DType.i32)
    any_nan = em.cast(em.op("ReduceMax", nan, em.ints([axis]), keepdims=keepdims), DType.i32, DType.bool)
    return em.op("Where", any_nan, em.op("ArgMax", nan, axis=axis, keepdims=keepdims), found)


@rule("cumsum")
def _cumsum(em: Emitter, node: Node, x: list[str]) -> str:
    dtype = _out(node).dtype
    v = em.cast(x[0], _in(node).dtype, dtype)
    if not _in(node).rank:  # the running sum of one element
        return v
    axis = em.const(torch.tensor(_axis(node.attrs["dim"], _in(node).rank)), "axis")
    return em.op("CumSum", v, axis)


# -- layout ----------------------------------------------------------------------------------------
def _reshape_to(em: Emitter, x: str, shape: list[int]) -> str:
    if 0 in shape:  # without allowzero, a 0 in the shape copies the input's dim
        return em.op("Reshape", x, em.ints(shape), allowzero=1)
    return em.op("Reshape", x, em.ints(shape))


@rule("reshape", "flatten")
def _reshape(em: Emitter, node: Node, x: list[str]) -> str:
    return _reshape_to(em, x[0], list(_out(node).shape))  # type: ignore[arg-type]


@rule("permute", "transpose")
def _transpose(em: Emitter, node: Node, x: list[str]) -> str:
    rank = _in(node).rank
    if node.op == "permute":
        perm = [_axis(d, rank) for d in node.attrs["dims"]]
    else:
        perm = list(range(rank))
        a, b = _axis(node.attrs["dim0"], rank), _axis(node.attrs["dim1"], rank)
        perm[a], perm[b] = perm[b], perm[a]
    return em.op("Transpose", x[0], perm=perm)


@rule("expand")
def _expand(em: Emitter, node: Node, x: list[str]) -> str:
    return em.op("Expand", x[0], em.ints(_out(node).shape))  # type: ignore[arg-type]


@rule("squeeze")
def _squeeze(em: Emitter, node: Node, x: list[str]) -> str:
    """Squeeze only the listed dims that have size 1, as torch ignores the others."""
    type = _in(node)
    dims = range(type.rank) if node.attrs["dims"] is None else node.attrs["dims"]
    axes = sorted({_axis(d, type.rank) for d in dims if type.rank and type.shape[d] == 1})
    return em.op("Squeeze", x[0], em.ints(axes)) if axes else em.op("Identity", x[0])


@rule("unsqueeze")
def _unsqueeze(em: Emitter, node: Node, x: list[str]) -> str:
    return em.op("Unsqueeze", x[0], em.ints([_axis(node.attrs["dim"], _in(node).rank + 1)]))


@rule("slice")
def _slice(em: Emitter, node: Node, x: list[str]) -> str:
    a = node.attrs
    type = _in(node)
    dim = _axis(a["dim"], type.rank)
    start, end, step = slice(a["start"], a["end"], a["step"]).indices(type.shape[dim])  # type: ignore[arg-type]
    end = max(end, start)  # an empty torch slice stays empty
    return em.op("Slice", x[0], em.ints([start]), em.ints([end]), em.ints([dim]), em.ints([step]))


@rule("index_select", "embedding")
def _gather(em: Emitter, node: Node, x: list[str]) -> str:
    if node.op == "embedding":
        return em.op("Gather", x[0], x[1], axis=0)
    index = x[1] if _in(node, 1).rank else em.op("Reshape", x[1], em.ints([1]))  # a 0-d index keeps its dim
    return em.op("Gather", x[0], index, axis=_axis(node.attrs["dim"], _in(node).rank))


@rule("gather")
def _gather_elements(em: Emitter, node: Node, x: list[str]) -> str:
    return em.op("GatherElements", *x, axis=_axis(node.attrs["dim"], _in(node).rank))


@rule("index")
def _index(em: Emitter, node: Node, x: list[str]) -> str:
    """Advanced indexing as GatherND: move the indexed dims to the front, stack the broadcast
    indices, gather, and put the result dims where torch puts them."""
    type, out = _in(node), _out(node)
    if any(v.type.dtype is DType.bool for v in node.inputs[1:]):
        raise fail(node, "boolean mask indexing has a data-dependent shape")
    pairs = sorted(zip((_axis(d, type.rank) for d in node.attrs["dims"]), x[1:], node.inputs[1:], strict=True),
                   key=lambda p: p[0])
    dims = [d for d, _, _ in pairs]
    rest = [d for d in range(type.rank) if d not in dims]
    data = x[0] if dims == list(range(len(dims))) else em.op("Transpose", x[0], perm=dims + rest)
    batch = list(torch.broadcast_shapes(*(v.type.static_shape() for _, _, v in pairs)))
    stacked = [em.op("Unsqueeze", em.op("Expand", em.cast(name, v.type.dtype, DType.i64), em.ints(batch)),
                     em.ints([len(batch)])) for _, name, v in pairs]
    index = stacked[0] if len(stacked) == 1 else em.op("Concat", *stacked, axis=-1)
    y = em.op("GatherND", data, index)
    first = dims[0]
    if dims != list(range(first, first + len(dims))) or first == 0:
        return y  # torch puts the indexed dims first unless they are adjacent
    nb = len(batch)
    perm = list(range(nb, nb + first)) + list(range(nb)) + list(range(nb + first, out.rank))
    return em.op("Transpose", y, perm=perm)


@rule("concat", "stack")
def _concat(em: Emitter, node: Node, x: list[str]) -> str:
    dtype, rank = _out(node).dtype, _out(node).rank
    dim = _axis(node.attrs["dim"], rank)
    parts = _casted(em, node, x, dtype)
    if node.op == "stack":
        parts = [em.op("Unsqueeze", p, em.ints([dim])) for p in parts]
    return em.op("Concat", *parts, axis=dim)


@rule("split")
def _split(em: Emitter, node: Node, x: list[str]) -> list[str]:
    outs = [em.fresh(f"{em.scope}_split") for _ in node.outputs]
    sizes = em.ints(node.attrs["sizes"])
    em.emit("Split", [x[0], sizes], outs, axis=_axis(node.attrs["dim"], _in(node).rank))
    return outs


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@rule("pad")
def _pad(em: Emitter, node: Node, x: list[str]) -> str:
    """torch pads (last_lo, last_hi, prev_lo, prev_hi, ...) as ONNX's [begins..., ends...]."""
    type = _in(node)
    pads, mode = node.attrs["pads"], node.attrs["mode"]
    if mode not in _PAD_MODES:
        raise fail(node, f"unknown pad mode {mode!r}")
    if mode == "circular" and em.opset < 19:
        raise fail(node, "circular padding needs opset 19 (Pad mode 'wrap')")
    begins, ends = [0] * type.rank, [0] * type.rank
    for j in range(len(pads) // 2):
        begins[type.rank - 1 - j], ends[type.rank - 1 - j] = pads[2 * j], pads[2 * j + 1]
    value = em.scalar(node.attrs["value"], type.dtype) if mode == "constant" else None
    return em.op("Pad", x[0], em.ints(begins + ends), value, mode=_PAD_MODES[mode])


# -- creation ------------------------------------------------------------------------------------
@rule("full")
def _full(em: Emitter, node: Node, x: list[str]) -> str:
    out = _out(node)
    fill = torch.full((1,), node.attrs["value"]).to(out.dtype.torch)
    return em.op("ConstantOfShape", em.ints(out.shape), value=tensor_proto("value", fill))  # type: ignore[arg-type]


@rule("arange")
def _arange(em: Emitter, node: Node, x: list[str]) -> str:
    """The values themselves: it has no inputs, and ONNX Runtime's float Range counts its length in float32
    and accumulates the step (arange(0, 0.3, 0.1) gets 4 elements, arange(0, 1e4, 0.1) ends 5.6 off)."""
    return em.const(get_op("arange").reference(**node.attrs), hint="arange")


@rule("opaque")
def _opaque(em: Emitter, node: Node, x: list[str]) -> str:
    raise fail(node, f"it calls the PyTorch function {node.attrs['target']!r}, which has no ONNX definition")



# -- ops the ONNX importer added -------------------------------------------------------------------
@rule("bitwise_left_shift", "bitwise_right_shift")
def _shift(em: Emitter, node: Node, x: list[str]) -> str:
    """BitShift, which ONNX defines for unsigned integers only; a signed shift has no ONNX equivalent that
    keeps its overflow and sign (x >> 31 of an int32, shifts by the width or more)."""
    dtype = _out(node).dtype
    if dtype is not DType.u8:
        raise fail(node, f"ONNX's BitShift takes unsigned integers, not {dtype}")
    a, b = _casted(em, node, x, dtype)
    return em.op("BitShift", a, b, direction="LEFT" if node.op == "bitwise_left_shift" else "RIGHT")


@rule("flip")
def _flip(em: Emitter, node: Node, x: list[str]) -> str:
    axes = sorted({_axis(d, _in(node).rank) for d in node.attrs["dims"]})
    if not axes:
        return x[0]
    n = len(axes)
    return em.op("Slice", x[0], em.ints([-1] * n), em.ints([-(2**63) + 1] * n), em.ints(axes), em.ints([-1] * n))


@rule("tile")
def _tile(em: Emitter, node: Node, x: list[str]) -> str:
    repeats, type = list(node.attrs["repeats"]), _in(node)
    if not repeats:
        return x[0]
    v = x[0]
    if len(repeats) > type.rank:  # torch's repeat adds leading dims
        v = em.op("Reshape", v, em.ints([1] * (len(repeats) - type.rank) + list(type.shape)))  # type: ignore[arg-type]
    return em.op("Tile", v, em.ints(repeats))


@rule("take")
def _take(em: Emitter, node: Node, x: list[str]) -> str:
    return em.op("Gather", x[0], x[1], axis=_axis(node.attrs["dim"], _in(node).rank))


@rule("gather_nd")
def _gather_nd(em: Emitter, node: Node, x: list[str]) -> str:
    index = em.cast(x[1], _in(node, 1).dtype, DType.i64)
    return em.op("GatherND", x[0], index, batch_dims=node.attrs["batch_dims"])


@rule("scatter_elements", "scatter_nd")
def _scatter(em: Emitter, node: Node, x: list[str]) -> str:
    dtype = _in(node).dtype
    index = em.cast(x[1], _in(node, 1).dtype, DType.i64)
    updates = em.cast(x[2], _in(node, 2).dtype, dtype)
    if node.op == "scatter_nd":
        return em.op("ScatterND", x[0], index, updates, reduction=node.attrs["reduction"])
    axis = _axis(node.attrs["dim"], _in(node).rank)
    return em.op("ScatterElements", x[0], index, updates, axis=axis, reduction=node.attrs["reduction"])


@rule("topk")
def _topk(em: Emitter, node: Node, x: list[str]) -> list[str]:
    outs = [em.fresh(f"{em.scope}_values"), em.fresh(f"{em.scope}_indices")]
    # The reference always sorts, so the export does too.
    em.emit("TopK", [x[0], em.ints([node.attrs["k"]])], outs, axis=_axis(node.attrs["dim"], _in(node).rank),
            largest=int(node.attrs["largest"]), sorted=1)
    return outs


@rule("einsum")
def _einsum(em: Emitter, node: Node, x: list[str]) -> str:
    return em.op("Einsum", *x, equation=node.attrs["equation"].replace(" ", ""))


@rule("cumprod")
def _cumprod(em: Emitter, node: Node, x: list[str]) -> str:
    """ONNX has no CumProd: out[..., i] = prod over j of (x[..., j] if j <= i else 1), along the last dim."""
    type = _in(node)
    if not type.rank:  # the running product of one element
        return x[0]
    dim = _axis(node.attrs["dim"], type.rank)
    n = type.shape[dim]
    perm = [d for d in range(type.rank) if d != dim] + [dim]
    last = x[0] if dim == type.rank - 1 else em.op("Transpose", x[0], perm=perm)
    rows = em.op("Unsqueeze", last, em.ints([type.rank - 1]))  # [..., 1, n]
    keep = em.const(torch.ones(n, n, dtype=torch.bool).tril(), "lower_triangle")  # type: ignore[arg-type]
    y = em.op("ReduceProd", em.op("Where", keep, rows, em.scalar(1, type.dtype)), em.ints([-1]), keepdims=0)
    inverse = [perm.index(d) for d in range(type.rank)]
    return y if dim == type.rank - 1 else em.op("Transpose", y, perm=inverse)


@rule("det")
def _det(em: Emitter, node: Node, x: list[str]) -> str:
    return em.op("Det", x[0])


@rule("local_response_norm")
def _lrn(em: Emitter, node: Node, x: list[str]) -> str:
    a = node.attrs
    if a["size"] % 2 == 0:
        raise fail(node, "ONNX LRN centres an even window one channel later than torch")
    type = _in(node)
    if type.rank == 4:
        return em.op("LRN", x[0], size=a["size"], alpha=a["alpha"], beta=a["beta"], bias=a["bias"])
    # ONNX Runtime's LRN takes [N, C, H, W] only; the window runs over channels, so the spatial
    # dims fold into one.
    shape = list(type.shape)
    folded = _reshape_to(em, x[0], [*shape[:2], math.prod(shape[2:]), 1])  # type: ignore[arg-type]
    y = em.op("LRN", folded, size=a["size"], alpha=a["alpha"], beta=a["beta"], bias=a["bias"])
    return _reshape_to(em, y, shape)  # type: ignore[arg-type]


@rule("onnx_pool")
def _onnx_pool(em: Emitter, node: Node, x: list[str]) -> str | list[str]:
    a = node.attrs
    common = {"kernel_shape": list(a["kernel"]), "strides": list(a["strides"]), "pads": list(a["pads"]),
              "dilations": list(a["dilations"]), "ceil_mode": int(a["ceil_mode"])}
    if a["mode"] == "max":
        outs = [em.fresh(f"{em.scope}_maxpool") for _ in node.outputs]
        em.emit("MaxPool", [x[0]], outs, **common)
        return outs
    if a["mode"] == "lp":
        return em.op("LpPool", x[0], p=a["p"], **common)
    if em.opset < 19 and any(d != 1 for d in a["dilations"]):
        raise fail(node, "dilated average pooling needs opset 19")
    return em.op("AveragePool", x[0], count_include_pad=int(a["count_include_pad"]), **common)


@rule("onnx_pad")
def _onnx_pad(em: Emitter, node: Node, x: list[str]) -> str:
    return em.op("Pad", x[0], em.ints(node.attrs["pads"]), mode=node.attrs["mode"])


@rule("grid_sample")
def _grid_sample(em: Emitter, node: Node, x: list[str]) -> str:
    mode = node.attrs["mode"]
    if em.opset >= 20:  # opset 20 renamed the interpolation modes
        mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    grid = em.cast(x[1], _in(node, 1).dtype, _in(node).dtype)
    return em.op("GridSample", x[0], grid, mode=mode, padding_mode=node.attrs["padding_mode"],
                 align_corners=int(node.attrs["align_corners"]))


@rule("bitcast")
def _bitcast(em: Emitter, node: Node, x: list[str]) -> str:
    raise fail(node, "ONNX cannot reinterpret the bits of a tensor as another type")


# -- quantization ---------------------------------------------------------------------------------
def _quant_attrs(em: Emitter, node: Node, block_size: int, axis: int) -> dict[str, Any]:
    if block_size and em.opset < 21:
        raise fail(node, "group-wise (blocked) scales need opset 21")
    return {"axis": axis, "block_size": block_size or None}


def _zero_point(em: Emitter, node: Node, x: list[str], scale: TensorType, dtype: DType) -> str:
    """The node's zero point, or zeros of the output type (ONNX reads the output type from it)."""
    if len(x) == 3:
        return x[2]
    return em.const(torch.zeros(scale.static_shape(), dtype=dtype.torch), "zero_point")


@rule("quantize")
def _quantize(em: Emitter, node: Node, x: list[str]) -> str:
    scale = _in(node, 1)
    zero = _zero_point(em, node, x, scale, _out(node).dtype)
    return em.op("QuantizeLinear", em.cast(x[0], _in(node).dtype, scale.dtype), x[1], zero,
                 **_quant_attrs(em, node, node.attrs["block_size"], node.attrs["axis"]))


@rule("dequantize")
def _dequantize(em: Emitter, node: Node, x: list[str]) -> str:
    return em.op("DequantizeLinear", *x, **_quant_attrs(em, node, node.attrs["block_size"], node.attrs["axis"]))


def _linear_of(em: Emitter, node: Node, x: str, w: str, bias: str | None) -> str:
    """x @ w.T (+ bias) for a float weight w [out, in]."""
    if _in(node).rank == 2:
        return em.op("Gemm", x, w, bias, transB=1)
    y = em.op("MatMul", x, em.op("Transpose", w, perm=[1, 0]))
    return em.op("Add", y, bias) if bias is not None else y


def _quantized_rows(em: Emitter, xf: str, top: float, per_row: bool) -> tuple[str, str]:
    """x rounded symmetrically to integers in [-top, top] (as float) and its scale, per row or tensor. A row
    holding a NaN or an inf gets scale NaN and integers 0, so its results are NaN, as in the kernels."""
    axes = em.ints([-1]) if per_row else None
    amax = em.op("ReduceMax", em.op("Abs", xf), axes, keepdims=int(per_row))
    x_scale = em.op("Div", em.op("Max", amax, em.scalar(1e-12, DType.f32)), em.scalar(top, DType.f32))
    bad = em.op("Or", em.op("IsNaN", xf), em.op("IsInf", xf))
    bad_row = em.cast(em.op("ReduceMax", em.cast(bad, DType.bool, DType.i32), axes, keepdims=int(per_row)),
                      DType.i32, DType.bool)
    x_scale = em.op("Where", bad_row, em.scalar(math.nan, DType.f32), x_scale)
    xq = em.op("Clip", em.op("Round", em.op("Div", xf, x_scale)), em.scalar(-top, DType.f32), em.scalar(top, DType.f32))
    return em.op("Where", bad_row, em.scalar(0.0, DType.f32), xq), x_scale


@rule("linear_weight_int8")
def _linear_weight_int8(em: Emitter, node: Node, x: list[str]) -> str:
    """DequantizeLinear of the int8 weight feeding a Gemm/MatMul: the QDQ form runtimes fuse; with
    `activation_bits=16`, x rounded per row to its 16-bit grid first."""
    zero = _zero_point(em, node, x[:2], _in(node, 2), DType.i8)
    block = node.attrs["block_size"]
    w = em.op("DequantizeLinear", x[1], x[2], zero, **_quant_attrs(em, node, block, weight_scale_axis(block)))
    xf = x[0]
    if node.attrs["activation_bits"] == 16:
        dtype = _in(node).dtype
        xq, x_scale = _quantized_rows(em, em.cast(xf, dtype, DType.f32), 32767.0, per_row=True)
        xf = em.cast(em.op("Mul", xq, x_scale), DType.f32, dtype)
    return _linear_of(em, node, xf, w, x[3] if len(x) == 4 else None)


@rule("linear_dynamic_int8")
def _linear_dynamic_int8(em: Emitter, node: Node, x: list[str]) -> str:
    """Symmetric int8 quantization of x per row (or tensor), MatMulInteger with the int8 weight, rescale."""
    xq, x_scale = _quantized_rows(em, em.cast(x[0], _in(node).dtype, DType.f32), 127.0,
                                  per_row=node.attrs["granularity"] == "row")
    product = em.op("MatMulInteger", em.cast(xq, DType.f32, DType.i8), em.op("Transpose", x[1], perm=[1, 0]))
    y = em.op("Mul", em.op("Mul", em.cast(product, DType.i32, DType.f32), x_scale), x[2])
    if len(x) == 4:
        y = em.op("Add", y, x[3])
    return em.cast(y, DType.f32, _out(node).dtype)
