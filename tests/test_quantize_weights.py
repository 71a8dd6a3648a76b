"""quantize-weights: linear / matmul -> linear_weight_int8, convolutions read dequantized int8 weights;
exact int8 values and scales, the error bound of weight rounding, skips with notes, random graphs."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from heteropass.ir import DType, Graph, TensorType, parse_graph, run_graph
from heteropass.ir.ops.quant import broadcast_param, dequantize
from heteropass.passes.precision_config import PrecisionConfig
from heteropass.passes.quantize_weights import QuantizeWeightsPass, symmetric_int8
from heteropass.testing.strategies import graph_and_inputs

from .test_quant_report import check_quantization, check_valid_and_runs

# Rows with largest magnitudes 127, 63.5 and 31.75 have scales 1, 0.5 and 0.25: every value below is exact.
BEFORE = """
graph g(%x: f32[3,4], %z: f32[1,1,4,4], %t: f32[1,1,3,3]) -> (f32[3,2], f32[3,2], f32[1,2,3,3], f32[1,2,4,4]) {
  const %w: f32[2,4] = [[127.0, -63.5, 1.0, 0.5], [-31.75, 8.0, 0.25, 0.0]]
  const %v: f32[4,2] = [[127.0, -31.75], [-63.5, 8.0], [1.0, 0.25], [0.5, 0.0]]
  const %b: f32[2] = [1.0, -1.0]
  const %k: f32[2,1,2,2] = [[[[127.0, 0.5], [-1.0, 2.0]]], [[[-63.5, 1.0], [31.75, 0.0]]]]
  const %kt: f32[1,2,2,2] = [[[[127.0, 0.5], [-1.0, 2.0]], [[-63.5, 1.0], [31.75, 0.0]]]]
  %0: f32[3,2] = linear(%x, %w, %b)
  %1: f32[3,2] = matmul(%x, %v)
  %2: f32[1,2,3,3] = conv(%z, %k)
  %3: f32[1,2,4,4] = conv_transpose(%t, %kt)
  return %0, %1, %2, %3
}"""

# -63.5 and 31.75 / 0.5 = 63.5 round half to even (-64, 64); 0.5 at scale 1 rounds to 0.
EXPECTED = """
graph g(%x: f32[3,4], %z: f32[1,1,4,4], %t: f32[1,1,3,3]) -> (f32[3,2], f32[3,2], f32[1,2,3,3], f32[1,2,4,4]) {
  const %w: i8[2,4] = [[127, -64, 1, 0], [-127, 32, 1, 0]]
  const %ws: f32[2] = [1.0, 0.25]
  const %v: i8[2,4] = [[127, -64, 1, 0], [-127, 32, 1, 0]]
  const %vs: f32[2] = [1.0, 0.25]
  const %b: f32[2] = [1.0, -1.0]
  const %k: i8[2,1,2,2] = [[[[127, 0], [-1, 2]]], [[[-127, 2], [64, 0]]]]
  const %ks: f32[2] = [1.0, 0.5]
  const %kt: i8[1,2,2,2] = [[[[127, 0], [-1, 2]], [[-127, 2], [64, 0]]]]
  const %kts: f32[2] = [1.0, 0.5]
  %0: f32[3,2] = linear_weight_int8(%x, %w, %ws, %b) {activation_bits=16}
  %1: f32[3,2] = linear_weight_int8(%x, %v, %vs) {activation_bits=16}
  %kq: f32[2,1,2,2] = dequantize(%k, %ks) {axis=0}
  %2: f32[1,2,3,3] = conv(%z, %kq)
  %ktq: f32[1,2,2,2] = dequantize(%kt, %kts) {axis=1}
  %3: f32[1,2,4,4] = conv_transpose(%t, %ktq)
  return %0, %1, %2, %3
}"""


def test_linear_matmul_and_convolutions() -> None:
    # Weight errors of up to half of scale 1 against weights up to 127: about 1% of the output range.
    result = check_quantization(QuantizeWeightsPass(), BEFORE, EXPECTED, max_rel=2e-2)
    # 4 weights of 8 float32 values -> 8 int8 values and 2 float32 scales each.
    assert result.stats == {"nodes_quantized": 4, "nodes_excluded": 0, "weight_bytes_before": 128,
                            "weight_bytes_after": 64}
    assert result.notes == []


def test_group_wise_scales() -> None:
    before = """
    graph g(%y: f32[3,6]) -> (f32[3,2]) {
      const %u: f32[2,6] = [[127.0, 1.0, -2.0, 3.0, 15.875, -1.0], [-63.5, 0.5, 0.0, 10.0, 7.9375, 2.0]]
      %0: f32[3,2] = linear(%y, %u)
      return %0
    }"""
    config = PrecisionConfig(precision="int8-weight", block_size=4, activation_bits=32)
    check_quantization(QuantizeWeightsPass(config), before, """
    graph g(%y: f32[3,6]) -> (f32[3,2]) {
      const %u: i8[2,6]
      const %s: f32[2,2] = [[1.0, 0.125], [0.5, 0.0625]]
      %0: f32[3,2] = linear_weight_int8(%y, %u, %s) {block_size=4}
      return %0
    }""", max_rel=1e-2)
    graph = parse_graph(before)
    QuantizeWeightsPass(config)(graph)
    assert graph.nodes[0].inputs[1].const.tolist() == [[127, 1, -2, 3, 127, -8], [-127, 1, 0, 20, 127, 32]]  # type: ignore[union-attr]


def test_skipped_nodes_have_notes() -> None:
    text = """
    graph g(%x: f32[3,4], %w: f32[2,4], %z: f32[1,1,4,4]) -> (f32[3,2], f32[3,2], f32[2,3,2], f32[1,2,3,3]) {
      const %c: f32[2,4]
      const %batched: f32[2,4,2]
      const %k: f32[2,1,2,2]
      %0: f32[3,2] = linear(%x, %w)
      %1: f32[3,2] = linear(%x, %c)
      %2: f32[2,3,2] = matmul(%x, %batched)
      %3: f32[1,2,3,3] = conv(%z, %k)
      return %0, %1, %2, %3
    }"""
    config = PrecisionConfig(precision="int8-weight", deny={"conv"}, keep_nodes={"1"})
    result = check_quantization(QuantizeWeightsPass(config), text, text, max_rel=0.0)
    assert result.notes == [
        "%0 (linear) stays in float: its weight %w is not a constant",
        "%1 (linear) stays in float: it is in the precision config's keep_nodes",
        "%2 (matmul) stays in float: its weight %batched has rank 3, expected 2",
        "%3 (conv) stays in float: conv is in the precision config's deny list",
    ]
    assert not result.modified and result.stats["nodes_quantized"] == 0


def test_a_shared_weight_is_quantized_once() -> None:
    result = check_quantization(QuantizeWeightsPass(), """
    graph g(%x: f32[3,4], %y: f32[5,4]) -> (f32[3,16], f32[5,16]) {
      const %w: f32[16,4]
      %0: f32[3,16] = linear(%x, %w)
      %1: f32[5,16] = linear(%y, %w)
      return %0, %1
    }""", """
    graph g(%x: f32[3,4], %y: f32[5,4]) -> (f32[3,16], f32[5,16]) {
      const %q: i8[16,4]
      const %s: f32[16]
      %0: f32[3,16] = linear_weight_int8(%x, %q, %s) {activation_bits=16}
      %1: f32[5,16] = linear_weight_int8(%y, %q, %s) {activation_bits=16}
      return %0, %1
    }""", max_rel=1e-2)
    assert result.stats["weight_bytes_before"] == 16 * 4 * 4 and result.stats["weight_bytes_after"] == 16 * 4 + 16 * 4


@settings(max_examples=60)
@given(st.integers(1, 5), st.integers(1, 40), st.integers(1, 9), st.integers(0, 12), st.booleans(),
       st.integers(0, 2**16))
def test_output_error_is_bounded_by_half_a_step_per_weight(rows: int, features: int, outputs: int, block_size: int,
                                                           as_matmul: bool, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    graph = Graph("lin")
    x = graph.add_input("x", TensorType((rows, features), DType.f32))
    w = torch.randn(outputs, features, generator=gen) * torch.rand(outputs, 1, generator=gen) * 10
    weight = graph.add_constant("w", w.t().contiguous() if as_matmul else w)
    graph.set_outputs([graph.call("matmul" if as_matmul else "linear", x, weight)])
    inputs = torch.randn(rows, features, generator=gen)
    expected = run_graph(graph, inputs)[0]
    QuantizeWeightsPass(PrecisionConfig(precision="int8-weight", block_size=block_size))(graph)
    node = graph.nodes[0]
    assert node.op == "linear_weight_int8"
    scale = node.inputs[2].const
    assert scale is not None
    step = broadcast_param(scale, w, 1 if block_size else 0, block_size).expand_as(w)
    # Each weight moves by at most half its step, so output (r, o) by at most sum_k |x_rk| * step_ok / 2;
    # the rest is float32 rounding of the two products.
    bound = inputs.abs() @ step.t() / 2 + 1e-5 * (inputs.abs() @ w.abs().t()) + 1e-6
    assert torch.all((run_graph(graph, inputs)[0] - expected).abs() <= bound)


@settings(max_examples=80)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=3), st.sampled_from(["tensor", "axis", "block"]),
       st.data(), st.integers(0, 2**16), st.sampled_from([DType.f32, DType.f64]))
def test_symmetric_int8_round_trip(shape: list[int], form: str, data: st.DataObject, seed: int, dtype: DType) -> None:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype.torch)
    axis = None if form == "tensor" else data.draw(st.integers(0, len(shape) - 1))
    block_size = data.draw(st.integers(1, 4)) if form == "block" else 0
    q, scale = symmetric_int8(w, axis, block_size)
    assert q.dtype == torch.int8 and scale.dtype == w.dtype and int(q.abs().max()) <= 127
    attrs = {"axis": 0 if axis is None else axis, "block_size": block_size}
    step = broadcast_param(scale, w, **attrs)
    assert torch.all((dequantize(q, scale, **attrs) - w).abs() <= step / 2 * (1 + 1e-6))
    assert int(q.abs().max()) == 127  # the largest magnitude of some group lands on the end of the range


@settings(max_examples=40)
@given(graph_and_inputs(families=("matmul", "matmul", "binary", "unary", "reshape", "transpose", "reduce")),
       st.integers(0, 8))
def test_random_graphs_stay_valid_and_run(case: tuple, block_size: int) -> None:  # type: ignore[type-arg]
    graph, inputs = case
    check_valid_and_runs(QuantizeWeightsPass(PrecisionConfig(precision="int8-weight", block_size=block_size)),
                         graph, inputs)
