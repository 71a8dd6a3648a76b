"""quantize-static: quantize/dequantize pairs on activations with calibrated u8 ranges, dequantized int8
weights; exact parameters, the error bound, ONNX QDQ export run in onnxruntime, skips, random graphs."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from heteropass.ir import DType, Graph, TensorType, parse_graph, run_graph, verify
from heteropass.ir.onnx_exporter import export_onnx
from heteropass.passes.precision_config import PrecisionConfig
from heteropass.passes.quantize_static import QuantizeStaticPass
from heteropass.testing.assertions import assert_outputs_close
from heteropass.testing.strategies import graph_and_inputs

from .test_quant_report import CALIBRATION, check_quantization, check_valid_and_runs, mlp_graph


def _static(*batches: tuple[torch.Tensor, ...], **config: object) -> QuantizeStaticPass:
    return QuantizeStaticPass(PrecisionConfig(precision="int8-static", calibration=batches, **config))  # type: ignore[arg-type]


# Calibration ranges: x [-1, 3] -> scale 4/255, zero point round(63.75) = 64; y [0, 255] -> 1, 0;
# a [-2, 0.55] -> 0.01, 200; c [0, 5.1] -> 0.02, 0. Weight scales per output channel: 1 and 0.25 for %w,
# per column 1, 0.5, 0.25 for %v; %a @ %c quantizes both activations.
BATCH = (torch.tensor([[-1.0, 3.0, 0.0, 0.5], [2.0, 1.0, -0.5, 0.0]]), torch.tensor([[0.0, 255.0], [10.0, 3.0]]),
         torch.linspace(-2, 0.55, 24).reshape(2, 3, 4), torch.linspace(0, 5.1, 40).reshape(2, 4, 5))

BEFORE = """
graph g(%x: f32[2,4], %y: f32[2,2], %a: f32[2,3,4], %c: f32[2,4,5]) -> (f32[2,2], f32[2,3], f32[2,3,5]) {
  const %w: f32[2,4] = [[127.0, -63.5, 1.0, 0.5], [-31.75, 8.0, 0.25, 0.0]]
  const %b: f32[2] = [1.0, -1.0]
  const %v: f32[2,3] = [[127.0, 0.25, 1.0], [1.0, -63.5, 31.75]]
  %0: f32[2,2] = linear(%x, %w, %b)
  %1: f32[2,3] = matmul(%y, %v)
  %2: f32[2,3,5] = matmul(%a, %c)
  return %0, %1, %2
}"""

EXPECTED = """
graph g(%x: f32[2,4], %y: f32[2,2], %a: f32[2,3,4], %c: f32[2,4,5]) -> (f32[2,2], f32[2,3], f32[2,3,5]) {
  const %xs: f32[] = 0.015686275
  const %xz: u8[] = 64
  const %w: i8[2,4] = [[127, -64, 1, 0], [-127, 32, 1, 0]]
  const %ws: f32[2] = [1.0, 0.25]
  const %b: f32[2] = [1.0, -1.0]
  const %ys: f32[] = 1.0
  const %yz: u8[] = 0
  const %v: i8[2,3] = [[127, 0, 4], [1, -127, 127]]
  const %vs: f32[3] = [1.0, 0.5, 0.25]
  const %as: f32[] = 0.01
  const %az: u8[] = 200
  const %cs: f32[] = 0.02
  const %cz: u8[] = 0
  %xq: u8[2,4] = quantize(%x, %xs, %xz) {dtype=u8}
  %xd: f32[2,4] = dequantize(%xq, %xs, %xz)
  %wd: f32[2,4] = dequantize(%w, %ws) {axis=0}
  %0: f32[2,2] = linear(%xd, %wd, %b)
  %yq: u8[2,2] = quantize(%y, %ys, %yz) {dtype=u8}
  %yd: f32[2,2] = dequantize(%yq, %ys, %yz)
  %vd: f32[2,3] = dequantize(%v, %vs)
  %1: f32[2,3] = matmul(%yd, %vd)
  %aq: u8[2,3,4] = quantize(%a, %as, %az) {dtype=u8}
  %ad: f32[2,3,4] = dequantize(%aq, %as, %az)
  %cq: u8[2,4,5] = quantize(%c, %cs, %cz) {dtype=u8}
  %cd: f32[2,4,5] = dequantize(%cq, %cs, %cz)
  %2: f32[2,3,5] = matmul(%ad, %cd)
  return %0, %1, %2
}"""


def test_activations_and_weights_get_quantize_dequantize() -> None:
    # Half a step of x (4/255) against |w| up to 127 and weight steps up to 1: within 1% of the outputs.
    result = check_quantization(_static(BATCH), BEFORE, EXPECTED, max_rel=1e-2, inputs=list(BATCH))
    # Weights: 8 + 6 float32 values -> int8 values and 2 + 3 float32 scales; activation parameters not counted.
    assert result.stats["weight_bytes_before"] == 56 and result.stats["weight_bytes_after"] == 14 + 20
    assert result.stats["nodes_quantized"] == 3
    assert result.notes[:3] == [n for n in result.notes if n.startswith("quantized %")]


def _conv_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(1, 2, 6, 6, generator=gen).clamp(-1, 3)
    z.view(-1)[:2] = torch.tensor([-1.0, 3.0])  # the calibrated range is exactly [-1, 3]
    t = torch.rand(1, 2, 3, 3, generator=gen) * 2.55  # [0, 2.55]: scale 0.01, zero point 0
    t.view(-1)[0] = 2.55
    return z, t


def test_convolutions_share_the_activation_pair() -> None:
    before = """
    graph g(%z: f32[1,2,6,6], %t: f32[1,2,3,3]) -> (f32[1,16,4,4], f32[1,16,6,6], f32[1,16,5,5]) {
      const %k: f32[16,2,3,3]
      const %k2: f32[16,2,3,3]
      const %kt: f32[2,16,3,3]
      %0: f32[1,16,4,4] = conv(%z, %k)
      %1: f32[1,16,6,6] = conv(%z, %k2) {padding=[1, 1]}
      %2: f32[1,16,5,5] = conv_transpose(%t, %kt)
      return %0, %1, %2
    }"""
    batch = _conv_batch(0)
    check_quantization(_static(batch), before, """
    graph g(%z: f32[1,2,6,6], %t: f32[1,2,3,3]) -> (f32[1,16,4,4], f32[1,16,6,6], f32[1,16,5,5]) {
      const %zs: f32[] = 0.015686275
      const %zz: u8[] = 64
      const %k: i8[16,2,3,3]
      const %ks: f32[16]
      const %k2: i8[16,2,3,3]
      const %k2s: f32[16]
      const %ts: f32[] = 0.01
      const %tz: u8[] = 0
      const %kt: i8[2,16,3,3]
      const %kts: f32[16]
      %zq: u8[1,2,6,6] = quantize(%z, %zs, %zz) {dtype=u8}
      %zd: f32[1,2,6,6] = dequantize(%zq, %zs, %zz)
      %kd: f32[16,2,3,3] = dequantize(%k, %ks) {axis=0}
      %0: f32[1,16,4,4] = conv(%zd, %kd)
      %k2d: f32[16,2,3,3] = dequantize(%k2, %k2s) {axis=0}
      %1: f32[1,16,6,6] = conv(%zd, %k2d) {padding=[1, 1]}
      %tq: u8[1,2,3,3] = quantize(%t, %ts, %tz) {dtype=u8}
      %td: f32[1,2,3,3] = dequantize(%tq, %ts, %tz)
      %ktd: f32[2,16,3,3] = dequantize(%kt, %kts)
      %2: f32[1,16,5,5] = conv_transpose(%td, %ktd)
      return %0, %1, %2
    }""", max_rel=3e-2, inputs=list(batch))


def test_without_calibration_nothing_happens() -> None:
    graph = mlp_graph()
    result = QuantizeStaticPass()(graph)
    assert not result.modified and result.notes == [
        "static int8 needs calibration inputs for activation ranges; none were given, nothing was quantized"]


def test_denied_and_kept_nodes_stay() -> None:
    graph = mlp_graph()
    result = _static(*CALIBRATION, deny={"matmul"}, keep_nodes={"0", "4", "q_proj"})(graph)
    assert "%0 (linear) stays in float: it is in the precision config's keep_nodes" in result.notes
    assert "keep_nodes names no node of this graph: %q_proj" in result.notes
    assert [n.op for n in graph.nodes] == ["linear", "gelu", "quantize", "dequantize", "dequantize", "linear",
                                           "relu", "linear"]


@settings(max_examples=60)
@given(st.integers(1, 5), st.integers(1, 40), st.integers(1, 9), st.integers(0, 2**16))
def test_output_error_is_bounded_inside_the_calibrated_range(rows: int, features: int, outputs: int,
                                                             seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    graph = Graph("lin")
    x = graph.add_input("x", TensorType((rows, features), DType.f32))
    w = torch.randn(outputs, features, generator=gen) * 3
    graph.set_outputs([graph.call("linear", x, graph.add_constant("w", w))])
    inputs = torch.randn(rows, features, generator=gen) * 4
    expected = run_graph(graph, inputs)[0]
    _static((inputs,))(graph)
    low, high = min(float(inputs.min()), 0.0), max(float(inputs.max()), 0.0)
    x_step = (high - low) / 255 if high > low else 1.0
    w_step = w.abs().amax(1) / 127
    # The calibration batch is the input, so nothing clips: |x' - x| <= x_step / 2, |w' - w| <= w_step / 2.
    bound = ((inputs.abs().sum(1, keepdim=True) + features * x_step / 2) * w_step / 2
             + x_step / 2 * w.abs().sum(1) + 1e-5 * (inputs.abs() @ w.abs().t()) + 1e-6)
    assert torch.all((run_graph(graph, inputs)[0] - expected).abs() <= bound)


def _onnxruntime(graph: Graph, inputs: list[torch.Tensor], optimize: bool) -> list[torch.Tensor]:
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    session = ort.InferenceSession(export_onnx(graph).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)}
    return [torch.from_numpy(r) for r in session.run(None, feeds)]


@pytest.mark.parametrize("case", ["mlp", "ops"])
def test_exports_to_onnx_qdq_and_runs_in_onnxruntime(case: str) -> None:
    if case == "mlp":
        graph, calibration, inputs = mlp_graph(), CALIBRATION, list(CALIBRATION[0])
    else:
        graph = parse_graph(BEFORE)
        calibration, inputs = (BATCH,), list(BATCH)
    _static(*calibration)(graph)
    verify(graph)
    model = export_onnx(graph)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
    expected = run_graph(graph, *inputs)
    # Without graph optimizations onnxruntime runs the QDQ nodes as written: the same numbers.
    assert_outputs_close(_onnxruntime(graph, inputs, optimize=False), expected, rtol=1e-5, atol=1e-5)
    # Optimized, it fuses them into integer kernels that may round an activation the other way: one step.
    for got, want in zip(_onnxruntime(graph, inputs, optimize=True), expected, strict=True):
        assert float((got - want).abs().max()) <= 1e-2 * float(want.abs().max())


@settings(max_examples=40)
@given(graph_and_inputs(families=("matmul", "matmul", "binary", "unary", "reshape", "transpose", "reduce")),
       st.sampled_from(["minmax", "percentile", "entropy"]))
def test_random_graphs_stay_valid_and_run(case: tuple, method: str) -> None:  # type: ignore[type-arg]
    graph, inputs = case
    check_valid_and_runs(_static(tuple(inputs), calibration_method=method), graph, inputs)
