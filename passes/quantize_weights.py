"""quantize-weights: weight-only int8. Constant float weights are stored as symmetric int8 (-127..127) with
float scales. A linear's input is either used as it is (`activation_bits=32`) or rounded per row to a 16-bit
grid (`activation_bits=16`, the default), which adds an error about 256 times below the weights' own."""

from __future__ import annotations

from collections.abc import Collection

import torch
import torch.nn.functional as F

from ..ir import DType, Graph, Node, Value
from ..ir.ops.quant import quantize, weight_scale_axis
from .base import PassContext, PassResult
from .calibration import quant_params
from .precision_config import PrecisionConfig, PrecisionPass
from .quant_report import find_candidates, quantize_nodes, replace_node

WEIGHT_OPS = ("linear", "matmul", "conv", "conv_transpose")
# Output-channel axis: conv weights are [out, in/groups, ...], transposed ones [in, out/groups, ...].
CONV_OUT_AXIS = {"conv": 0, "conv_transpose": 1}


def scale_as(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`scale` in `dtype` (the type `dequantize` then produces), kept off zero where a narrow type underflows."""
    info = torch.finfo(dtype)
    return scale.to(dtype).clamp(min=info.tiny * info.eps)


def symmetric_int8(w: torch.Tensor, axis: int | None, block_size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`w` as int8 in -127..127 and its scales in `w`'s dtype, symmetric: one scale for the tensor (`axis`
    None), per slice along `axis`, or per block of `block_size` elements along `axis` (the scale then has
    `w`'s shape with ceil(n / block_size) along `axis`, the blocked form of `dequantize`)."""
    magnitude = w.detach().abs()
    if axis is None:
        amax = magnitude.amax()
    elif block_size == 0:
        amax = magnitude.movedim(axis, 0).reshape(w.shape[axis], -1).amax(1)
    else:
        moved = magnitude.movedim(axis, -1)
        padded = F.pad(moved, (0, -moved.shape[-1] % block_size))
        amax = padded.unflatten(-1, (-1, block_size)).amax(-1).movedim(-1, axis)
    scale = scale_as(quant_params(-amax, amax, DType.i8)[0], w.dtype)
    q = quantize(w, scale, axis=0 if axis is None else axis, block_size=block_size, dtype=DType.i8)
    # A scale rounded to a narrow float type can let a magnitude round to 128; keep the range symmetric.
    return q.clamp(-127, 127), scale


class Int8Weights:
    """Int8 constants (and scale constants) made for one graph, made once per weight and layout."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.made: dict[tuple[int, bool, int | None, int], tuple[Value, Value]] = {}

    def get(self, weight: Value, *, transpose: bool, axis: int | None, block_size: int = 0) -> tuple[Value, Value]:
        """The int8 form of constant `weight` (transposed first if asked) and its scales."""
        key = (id(weight), transpose, axis, block_size)
        if key not in self.made:
            assert weight.const is not None
            tensor = weight.const.t() if transpose else weight.const
            q, scale = symmetric_int8(tensor, axis, block_size)
            name = f"{weight.name}.t" if transpose else weight.name
            self.made[key] = (self.graph.add_constant(f"{name}.int8", q.contiguous()),
                              self.graph.add_constant(f"{name}.scale", scale))
        return self.made[key]

    def dequantized(self, weight: Value, axis: int | None, before: Node) -> Value:
        """`dequantize(int8 weight, scales)` inserted before `before`, reading the int8 form of `weight`."""
        q, scale = self.get(weight, transpose=False, axis=axis)
        return self.graph.add_node("dequantize", [q, scale], {"axis": 0 if axis is None else axis}, before=before,
                                   names=[f"{weight.name}.dq"]).output


def drop_if_unused(graph: Graph, value: Value) -> None:
    """Remove a constant nothing reads any more."""
    if value.const is not None and not value.uses and not graph.is_output(value) and value.name in graph.constants:
        graph.remove_constant(value)


def constant_weight_why_not(node: Node) -> str | None:
    """Why `node`'s weight (operand 1) cannot be made int8: not a float constant of the input's type, or,
    for linear and matmul, not 2-D."""
    x, w = node.inputs[0], node.inputs[1]
    if w.const is None:
        return f"its weight %{w.name} is not a constant"
    if not w.type.dtype.is_floating or w.type.dtype != x.type.dtype:
        return f"its weight %{w.name} is {w.type.dtype}, the input %{x.name} is {x.type.dtype}"
    if node.op in ("linear", "matmul") and w.type.rank != 2:
        return f"its weight %{w.name} has rank {w.type.rank}, expected 2"
    if w.type.numel == 0:
        return f"its weight %{w.name} is empty"
    return None


class QuantizeWeightsPass(PrecisionPass):
    """linear(x, W) / matmul(x, W) with a constant 2-D float W -> linear_weight_int8(x, int8 W [out, in],
    scales) with one scale per output channel, or per `config.block_size` inputs (matmul's W transposed
    once here); conv / conv_transpose(x, W) -> the op reading dequantize(int8 W, per-output-channel scales).
    Skips `config.deny` ops, `config.keep_nodes` and non-constant weights, with a note for each; with
    calibration inputs reports each node's error, and with `config.tolerance` keeps the worst nodes in float."""

    name = "quantize-weights"
    opt_level = 0

    def __init__(self, config: PrecisionConfig | None = None) -> None:
        self.config = config or PrecisionConfig(precision="int8-weight")

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        candidates, notes = find_candidates(graph, self.config, WEIGHT_OPS, constant_weight_why_not)
        report = quantize_nodes(graph, candidates, self.apply, self.config)
        return PassResult(graph, bool(report.quantized), report.stats(), notes + report.notes())

    def apply(self, graph: Graph, names: Collection[str]) -> None:
        """Quantize the weights of the named nodes of `graph`."""
        weights = Int8Weights(graph)
        block_size = self.config.block_size
        for node in graph:
            if node.name not in names:
                continue
            w = node.inputs[1]
            if node.op in CONV_OUT_AXIS:
                node.set_input(1, weights.dequantized(w, CONV_OUT_AXIS[node.op], node))
                drop_if_unused(graph, w)
                continue
            q, scale = weights.get(w, transpose=node.op == "matmul", axis=weight_scale_axis(block_size),
                                   block_size=block_size)
            new = graph.add_node("linear_weight_int8", [node.inputs[0], q, scale, *node.inputs[2:]],
                                 {"block_size": block_size, "activation_bits": self.config.activation_bits},
                                 before=node)
            replace_node(graph, node, new)
