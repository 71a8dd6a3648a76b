"""quantize-dynamic: linear / matmul -> linear_dynamic_int8, convolutions stay in float (with a note);
exact int8 weights, the error bound of rounding both operands, skips, random graphs."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import heteropass as hp
from heteropass.ir import DType, Graph, TensorType, run_graph
from heteropass.passes.precision_config import PrecisionConfig
from heteropass.passes.quantize_dynamic import QuantizeDynamicPass
from heteropass.testing.strategies import graph_and_inputs

from .test_quant_report import check_quantization, check_valid_and_runs


def test_linear_and_matmul_become_dynamic_int8() -> None:
    # x is rounded to 1/254 of each row's range, the weights to half of scales 1 and 0.25 against
    # weights up to 127: about 1% of the output range.
    result = check_quantization(QuantizeDynamicPass(), """
    graph g(%x: f32[3,4]) -> (f32[3,2], f32[3,2]) {
      const %w: f32[2,4] = [[127.0, -63.5, 1.0, 0.5], [-31.75, 8.0, 0.25, 0.0]]
      const %v: f32[4,2] = [[127.0, -31.75], [-63.5, 8.0], [1.0, 0.25], [0.5, 0.0]]
      const %b: f32[2] = [1.0, -1.0]
      %0: f32[3,2] = linear(%x, %w, %b)
      %1: f32[3,2] = matmul(%x, %v)
      return %0, %1
    }""", """
    graph g(%x: f32[3,4]) -> (f32[3,2], f32[3,2]) {
      const %w: i8[2,4] = [[127, -64, 1, 0], [-127, 32, 1, 0]]
      const %ws: f32[2] = [1.0, 0.25]
      const %v: i8[2,4] = [[127, -64, 1, 0], [-127, 32, 1, 0]]
      const %vs: f32[2] = [1.0, 0.25]
      const %b: f32[2] = [1.0, -1.0]
      %0: f32[3,2] = linear_dynamic_int8(%x, %w, %ws, %b)
      %1: f32[3,2] = linear_dynamic_int8(%x, %v, %vs)
      return %0, %1
    }""", max_rel=3e-2)
    assert result.stats["nodes_quantized"] == 2


def test_tensor_granularity() -> None:
    check_quantization(QuantizeDynamicPass(PrecisionConfig(precision="int8-dynamic", granularity="tensor")), """
    graph g(%x: f32[2,5,8]) -> (f32[2,5,16]) {
      const %w: f32[16,8]
      %0: f32[2,5,16] = linear(%x, %w)
      return %0
    }""", """
    graph g(%x: f32[2,5,8]) -> (f32[2,5,16]) {
      const %q: i8[16,8]
      const %s: f32[16]
      %0: f32[2,5,16] = linear_dynamic_int8(%x, %q, %s) {granularity="tensor"}
      return %0
    }""", max_rel=3e-2)


def test_empty_batch_with_tensor_granularity_gives_an_empty_result() -> None:
    """An input of 0 rows has no amax: the per-tensor scale of nothing must not fail the pass or the run."""
    model = torch.nn.Linear(16, 3).eval()
    x = torch.randn(0, 16)
    for backend in ("reference", "numba"):
        compiled = hp.compile(model, (x,), precision="int8-dynamic", precision_options={"granularity": "tensor"},
                              backends=[backend])
        got = compiled(x)
        assert got.shape == model(x).shape == (0, 3)


def test_convolutions_and_other_types_stay_in_float() -> None:
    text = """
    graph g(%z: f32[1,1,4,4], %t: f32[1,1,3,3], %d: f64[3,4]) -> (f32[1,2,3,3], f32[1,2,4,4], f64[3,2]) {
      const %k: f32[2,1,2,2]
      const %kt: f32[1,2,2,2]
      const %w: f64[2,4]
      %0: f32[1,2,3,3] = conv(%z, %k)
      %1: f32[1,2,4,4] = conv_transpose(%t, %kt)
      %2: f64[3,2] = linear(%d, %w)
      return %0, %1, %2
    }"""
    result = check_quantization(QuantizeDynamicPass(), text, text, max_rel=0.0)
    assert result.notes == [
        "%2 (linear) stays in float: %d is f64; dynamic int8 takes float32 operands",
        "2 convolutions stay in float (%0, %1): dynamic int8 covers linear layers, as PyTorch's quantize_dynamic does",
    ]


@settings(max_examples=60)
@given(st.integers(1, 5), st.integers(1, 40), st.integers(1, 9), st.sampled_from(["row", "tensor"]),
       st.booleans(), st.integers(0, 2**16))
def test_output_error_is_bounded_by_rounding_both_operands(rows: int, features: int, outputs: int, granularity: str,
                                                           as_matmul: bool, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    graph = Graph("lin")
    x = graph.add_input("x", TensorType((rows, features), DType.f32))
    w = torch.randn(outputs, features, generator=gen) * 3
    weight = graph.add_constant("w", w.t().contiguous() if as_matmul else w)
    graph.set_outputs([graph.call("matmul" if as_matmul else "linear", x, weight)])
    inputs = torch.randn(rows, features, generator=gen) * torch.rand(rows, 1, generator=gen) * 5
    expected = run_graph(graph, inputs)[0]
    QuantizeDynamicPass(PrecisionConfig(precision="int8-dynamic", granularity=granularity))(graph)
    assert [n.op for n in graph.nodes] == ["linear_dynamic_int8"]
    w_step = w.abs().amax(1) / 127  # [out]
    amax = inputs.abs().amax(1, keepdim=True) if granularity == "row" else inputs.abs().amax()
    x_step = (amax / 127).expand(rows, 1)
    # x' w' - x w = x' (w' - w) + (x' - x) w with |x' - x| <= x_step / 2 and |w' - w| <= w_step / 2,
    # so |error| <= sum_k (|x_k| + x_step / 2) w_step / 2 + x_step / 2 |w_k|, plus float32 rounding.
    bound = ((inputs.abs().sum(1, keepdim=True) + features * x_step / 2) * w_step / 2
             + x_step / 2 * w.abs().sum(1) + 1e-5 * (inputs.abs() @ w.abs().t()) + 1e-6)
    assert torch.all((run_graph(graph, inputs)[0] - expected).abs() <= bound)


@settings(max_examples=40)
@given(graph_and_inputs(families=("matmul", "matmul", "binary", "unary", "reshape", "transpose", "reduce")),
       st.sampled_from(["row", "tensor"]))
def test_random_graphs_stay_valid_and_run(case: tuple, granularity: str) -> None:  # type: ignore[type-arg]
    graph, inputs = case
    check_valid_and_runs(QuantizeDynamicPass(PrecisionConfig(precision="int8-dynamic", granularity=granularity)),
                         graph, inputs)
