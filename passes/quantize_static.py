"""quantize-static: post-training static int8 in QDQ form. Activation ranges come from running the float graph
on the calibration inputs; the graph keeps float ops that read dequantized values, which the reference
backend runs as written and ONNX runtimes fuse into integer kernels."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from ..ir import DType, Graph, Node, Value
from .base import PassContext, PassResult
from .calibration import QuantParams, calibrate
from .precision_config import PrecisionConfig, PrecisionPass
from .quant_report import find_candidates, quantize_nodes
from .quantize_weights import CONV_OUT_AXIS, Int8Weights, drop_if_unused, scale_as

STATIC_OPS = ("linear", "matmul", "conv", "conv_transpose")


def _is_dequantized(value: Value) -> bool:
    return value.producer is not None and value.producer.op == "dequantize"


def quantized_operands(node: Node) -> list[tuple[int, Value]]:
    """The operands read in int8: input and weight (a bias stays float), unless already dequantized."""
    return [(i, v) for i, v in enumerate(node.inputs[:2]) if not _is_dequantized(v)]


def weight_axis(node: Node, index: int) -> int | None:
    """The output-channel axis of a constant operand's per-channel scales, or None for one scale."""
    rank = node.inputs[index].type.rank
    if index != 1:
        return None
    if node.op in CONV_OUT_AXIS:
        return CONV_OUT_AXIS[node.op]
    if node.op == "linear":
        return 0
    return rank - 1 if rank >= 2 else None


def _why_not(node: Node) -> str | None:
    operands = quantized_operands(node)
    if not operands:
        return "its operands are already dequantized int8"
    for _, value in operands:
        if not value.type.dtype.is_floating:
            return f"%{value.name} is {value.type.dtype}, not floating point"
        if value.type.numel == 0:
            return f"%{value.name} is empty"
    return None


class QuantizeStaticPass(PrecisionPass):
    """For linear / matmul / conv / conv_transpose: each activation operand x -> dequantize(quantize(x)) with a
    u8 asymmetric per-tensor scale and zero point from calibration (`config.calibration_method`), shared by
    the readers of x; each constant weight W -> dequantize(int8 W, per-output-channel scales) (one scale for a
    constant input or a 1-D weight); a bias stays float. Does nothing without `config.calibration`. Skips,
    reports and keeps nodes in float by `config.tolerance` as quantize-weights does."""

    name = "quantize-static"
    opt_level = 0

    def __init__(self, config: PrecisionConfig | None = None) -> None:
        self.config = config or PrecisionConfig()

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        if not self.config.calibration:
            return PassResult(graph, False, notes=["static int8 needs calibration inputs for activation ranges; "
                                                   "none were given, nothing was quantized"])
        candidates, notes = find_candidates(graph, self.config, STATIC_OPS, _why_not)
        chosen = set(candidates)
        activations = {v.name for node in graph.nodes if node.name in chosen
                       for _, v in quantized_operands(node) if v.const is None}
        params = calibrate(graph, activations, self.config) if activations else {}
        report = quantize_nodes(graph, candidates, lambda g, names: self.apply(g, names, params), self.config)
        return PassResult(graph, bool(report.quantized), report.stats(), notes + report.notes())

    @staticmethod
    def apply(graph: Graph, names: Collection[str], params: Mapping[str, QuantParams]) -> None:
        """Put quantize/dequantize pairs (activation ranges from `params`, by value name) and dequantized
        int8 weights in front of the named nodes of `graph`."""
        weights = Int8Weights(graph)
        activations: dict[str, Value] = {}
        for node in graph:
            if node.name not in names:
                continue
            for index, value in quantized_operands(node):
                if value.const is not None:
                    node.set_input(index, weights.dequantized(value, weight_axis(node, index), node))
                    drop_if_unused(graph, value)
                    continue
                if value.name not in activations:
                    activations[value.name] = _quantize_dequantize(graph, value, params[value.name], node)
                node.set_input(index, activations[value.name])


def _quantize_dequantize(graph: Graph, value: Value, params: QuantParams, before: Node) -> Value:
    scale, zero_point = params
    assert zero_point is not None
    s = graph.add_constant(f"{value.name}.scale", scale_as(scale, value.type.dtype.torch))
    z = graph.add_constant(f"{value.name}.zero_point", zero_point)
    q = graph.add_node("quantize", [value, s, z], {"dtype": DType.u8}, before=before, names=[f"{value.name}.q"])
    return graph.add_node("dequantize", [q.output, s, z], before=before, names=[f"{value.name}.dq"]).output
