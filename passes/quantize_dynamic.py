"""quantize-dynamic: dynamic int8 for linear layers. Weights become int8 at compile time; activations are
quantized when the node runs, from their own range, so no calibration is needed."""

from __future__ import annotations

from collections.abc import Collection

from ..ir import DType, Graph, Node
from .base import PassContext, PassResult
from .precision_config import PrecisionConfig, PrecisionPass
from .quant_report import find_candidates, quantize_nodes, replace_node
from .quantize_weights import CONV_OUT_AXIS, Int8Weights, constant_weight_why_not

DYNAMIC_OPS = ("linear", "matmul")


def _why_not(node: Node) -> str | None:
    reason = constant_weight_why_not(node)
    if reason is not None:
        return reason
    wrong = [v for v in node.inputs if v.type.dtype is not DType.f32]
    if wrong:
        return f"%{wrong[0].name} is {wrong[0].type.dtype}; dynamic int8 takes float32 operands"
    return None


class QuantizeDynamicPass(PrecisionPass):
    """linear(x, W, b?) / matmul(x, W) with a constant 2-D float32 W -> linear_dynamic_int8(x, int8 W [out, in],
    per-output-channel scales, b?) {granularity=config.granularity} (matmul's W transposed once here).
    Convolutions stay in float, as in PyTorch's quantize_dynamic; `config.deny`, `config.keep_nodes` and
    non-constant weights are skipped with notes. Reports and keeps nodes in float by `config.tolerance` as
    quantize-weights does."""

    name = "quantize-dynamic"
    opt_level = 0

    def __init__(self, config: PrecisionConfig | None = None) -> None:
        self.config = config or PrecisionConfig(precision="int8-dynamic")

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        candidates, notes = find_candidates(graph, self.config, DYNAMIC_OPS, _why_not)
        convs = [f"%{n.name}" for n in graph.nodes if n.op in CONV_OUT_AXIS]
        if convs:
            what = "1 convolution stays" if len(convs) == 1 else f"{len(convs)} convolutions stay"
            notes.append(f"{what} in float ({', '.join(convs)}): dynamic int8 covers linear layers, as "
                         "PyTorch's quantize_dynamic does")
        report = quantize_nodes(graph, candidates, self.apply, self.config)
        return PassResult(graph, bool(report.quantized), report.stats(), notes + report.notes())

    def apply(self, graph: Graph, names: Collection[str]) -> None:
        """Replace the named linear / matmul nodes of `graph` by linear_dynamic_int8."""
        weights = Int8Weights(graph)
        for node in graph:
            if node.name not in names:
                continue
            q, scale = weights.get(node.inputs[1], transpose=node.op == "matmul", axis=0)
            new = graph.add_node("linear_dynamic_int8", [node.inputs[0], q, scale, *node.inputs[2:]],
                                 {"granularity": self.config.granularity}, before=node)
            replace_node(graph, node, new)
