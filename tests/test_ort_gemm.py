"""ort_gemm.py: products with constant weights through ONNX Runtime match eager PyTorch, write into `out=`,
and keep their bindings right when the addresses change and when threads call at once."""

from __future__ import annotations

import onnx
import pytest
import torch
import torch.nn.functional as F

import heteropass as hp
from heteropass.backends import ort_gemm
from heteropass.backends.gemm import library_products
from heteropass.backends.ort_gemm import ort_available, ort_product_call
from heteropass.ir import Graph, TensorType
from heteropass.testing.assertions import assert_concurrent

pytestmark = pytest.mark.skipif(not ort_available(), reason="onnxruntime is not installed")


def _node(op: str, x: torch.Tensor, operands: list[torch.Tensor | None], attrs: dict | None = None,
          constant: bool = True):
    graph = Graph("m")
    inputs = [graph.add_input("x", TensorType.of(x))]
    for i, tensor in enumerate(operands):
        if tensor is not None:
            inputs.append(graph.add_constant(f"c{i}", tensor) if constant else
                          graph.add_input(f"c{i}", TensorType.of(tensor)))
    node = graph.add_node(op, inputs, attrs or {})
    graph.set_outputs(node.outputs)
    return node


@pytest.mark.parametrize("shape", [(4, 64), (2, 3, 64), (1, 64)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_eager_and_writes_into_out(shape: tuple[int, ...], bias: bool) -> None:
    x, w, b = torch.randn(shape), torch.randn(40, 64) / 8, torch.randn(40) if bias else None
    call, text = ort_product_call(_node("linear", x, [w, b]))
    assert "Gemm" in text
    out = torch.empty(*shape[:-1], 40)
    assert call(x, w, b, out) is out
    torch.testing.assert_close(out, F.linear(x, w, b), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(call(x.clone(), w, b), F.linear(x, w, b), rtol=1e-4, atol=1e-5)


def test_matmul_with_constant_right_operand() -> None:
    x, w = torch.randn(2, 5, 24), torch.randn(24, 16)
    call, _ = ort_product_call(_node("matmul", x, [w]))
    torch.testing.assert_close(call(x, w, None), x @ w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spatial, groups", [(1, 1), (2, 1), (2, 2), (3, 1)])
def test_conv_matches_eager(spatial: int, groups: int) -> None:
    x, w, b = torch.randn(2, 4, *[7] * spatial), torch.randn(6, 4 // groups, *[3] * spatial), torch.randn(6)
    attrs = {"stride": [2], "padding": [1], "dilation": [1], "groups": groups}
    call, text = ort_product_call(_node("conv", x, [w, b], attrs))
    assert "Conv" in text
    conv = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    torch.testing.assert_close(call(x, w, b), conv(x, w, b, 2, 1, 1, groups), rtol=1e-4, atol=1e-5)


def test_declines_run_time_weights_and_other_dtypes() -> None:
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    assert ort_product_call(_node("linear", x, [w], constant=False)) is None
    assert ort_product_call(_node("linear", x.double(), [w.double()])) is None
    assert ort_product_call(_node("matmul", x, [w.t().contiguous()])) is not None


@pytest.mark.parametrize("op, x_shape, w_shape, attrs", [
    ("conv", (0, 4, 8, 8), (6, 4, 3, 3), {"stride": [1], "padding": [1], "dilation": [1], "groups": 1}),
    ("linear", (0, 16), (8, 16), {}), ("linear", (3, 0), (8, 0), {}), ("linear", (3, 16), (0, 16), {})])
def test_declines_empty_products_which_the_other_libraries_compute(op: str, x_shape: tuple[int, ...],
                                                                   w_shape: tuple[int, ...], attrs: dict) -> None:
    """ONNX Runtime refuses to run a session with an empty output (and oneDNN a linear of 0 inputs)."""
    x, w, b = torch.randn(x_shape), torch.randn(w_shape), torch.randn(w_shape[0])
    node = _node(op, x, [w, b], attrs)
    assert ort_product_call(node) is None
    expected = F.conv2d(x, w, b, padding=1) if op == "conv" else F.linear(x, w, b)
    for product in library_products(node):
        torch.testing.assert_close(product.call(x, w, b, torch.empty(expected.shape)), expected, msg=product.text)


def test_a_convolution_over_an_empty_batch_compiles_for_numba() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(6, 6, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.randn(0, 4, 8, 8)
    assert hp.compile(model, (x,), backends=["numba"])(x).shape == model(x).shape == (0, 6, 8, 8)


def test_is_one_of_the_timed_library_options() -> None:
    x, w, b = torch.randn(4, 64), torch.randn(40, 64), torch.randn(40)
    texts = [p.text for p in library_products(_node("linear", x, [w, b]))]
    assert any("onnxruntime" in t for t in texts)


def test_bindings_follow_new_addresses_and_concurrent_callers() -> None:
    x, w, b = torch.randn(6, 32), torch.randn(24, 32) / 8, torch.randn(24)
    call, _ = ort_product_call(_node("linear", x, [w, b]))
    inputs = [torch.randn(6, 32) for _ in range(3)]
    outs = [torch.empty(6, 24) for _ in range(2)]
    for step in range(6):  # the input and the output change address in different patterns
        x, out = inputs[step % 3], outs[step % 2]
        assert call(x, w, b, out) is out
        torch.testing.assert_close(out, F.linear(x, w, b), rtol=1e-4, atol=1e-5)

    def work(seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        for _ in range(50):
            x = torch.randn(6, 32, generator=generator)
            torch.testing.assert_close(call(x, w, b), F.linear(x, w, b), rtol=1e-4, atol=1e-5)

    assert_concurrent(work)


def test_sessions_follow_torch_set_num_threads_after_compilation() -> None:
    made: list[int] = []

    def make_session(threads: int) -> object:
        made.append(threads)
        return ort_gemm._session(node, (6, 32), (6, 24), w, None, threads)

    x, w = torch.randn(6, 32), torch.randn(24, 32)
    node = onnx.helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)
    runs = ort_gemm.BoundRuns(make_session, [("x", (6, 32))], [("y", (6, 24))])
    before = torch.get_num_threads()
    try:
        for threads in (2, 1, 2):
            torch.set_num_threads(threads)
            y = torch.empty(6, 24)
            runs.run((x,), (y,))
            torch.testing.assert_close(y, x @ w.t(), rtol=1e-4, atol=1e-5)
    finally:
        torch.set_num_threads(before)
    assert made == [2, 1]  # one session per thread count, made when that count first runs
