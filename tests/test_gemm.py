"""gemm.py: products go to the library (oneDNN with fused post-ops where it has them) and match eager PyTorch."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from heteropass.backends.gemm import (
    choose_plan,
    mkl_linear,
    onednn_available,
    plan_gemm,
    product_call,
    supports_product,
)
from heteropass.ir import parse_graph, run_graph


def _body(text: str):
    return parse_graph(text).nodes[0].attrs["body"]


def _region(body: str, inputs: str, output: str) -> str:
    operands = ", ".join(p.split(":")[0] for p in inputs.split(", "))
    return (f"graph m({inputs}) -> ({output}) {{\n  %r: {output} = fused[g]({operands})"
            f' {{kind="gemm"}}\n    graph region({inputs}) -> ({output}) {{\n{body}\n    }}\n  return %r\n}}\n')


LINEAR = "%x: f32[4,64], %w: f32[32,64], %b: f32[32]"


@pytest.mark.skipif(not onednn_available(), reason="PyTorch without oneDNN")
@pytest.mark.parametrize("act, post_op", [("gelu", "gelu"), ("sigmoid", "sigmoid"), ("tanh", "tanh"),
                                          ("silu", "swish"), ("hardswish", "hardswish")])
def test_linear_bias_activation_becomes_one_onednn_call(act: str, post_op: str) -> None:
    body = _body(_region(f"      %0: f32[4,32] = linear(%x, %w)\n      %1: f32[4,32] = add(%0, %b)\n"
                         f"      %2: f32[4,32] = {act}(%1)\n      return %2", LINEAR, "f32[4,32]"))
    plan = plan_gemm(body)
    assert plan.epilogue is None and plan.product.post_op == post_op
    x, w, b = torch.randn(4, 64), torch.randn(32, 64) / 8, torch.randn(32)
    expected = getattr(F, act)(F.linear(x, w, b)) if act != "tanh" else torch.tanh(F.linear(x, w, b))
    torch.testing.assert_close(plan.product.call(x, w, b), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("act", ["silu", "sigmoid", "hardswish"])
def test_a_3d_convolution_leaves_its_activation_to_the_epilogue_as_no_post_op_library_computes_it(act: str) -> None:
    inputs = "%x: f32[2,3,4,6,6], %w: f32[4,3,3,3,3], %b: f32[4]"
    body = _body(_region(f"      %0: f32[2,4,2,4,4] = conv(%x, %w, %b)\n      %1: f32[2,4,2,4,4] = {act}(%0)\n"
                         "      return %1", inputs, "f32[2,4,2,4,4]"))
    plan = plan_gemm(body)
    assert plan.epilogue is not None and [n.op for n in plan.epilogue.nodes] == [act]
    x, w, b = torch.randn(2, 3, 4, 6, 6), torch.randn(4, 3, 3, 3, 3) / 8, torch.randn(4)
    product = plan.product.call(x, w, b)
    torch.testing.assert_close(run_graph(plan.epilogue, product)[0], getattr(F, act)(F.conv3d(x, w, b)),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="no oneDNN primitive to apply post-op swish"):
        product_call(body.nodes[0], ("swish", ""))


def test_tanh_gelu_and_residuals_stay_in_the_epilogue() -> None:
    body = _body(_region("      %0: f32[4,32] = linear(%x, %w, %b)\n"
                         '      %1: f32[4,32] = gelu(%0) {approximate="tanh"}\n      return %1', LINEAR, "f32[4,32]"))
    plan = plan_gemm(body)
    assert plan.epilogue is not None and [n.op for n in plan.epilogue.nodes] == ["gelu"]
    assert plan.product.post_op == "none"


CONV = "%x: f32[1,3,6,6], %w: f32[4,3,3,3], %b: f32[4]"


@pytest.mark.parametrize("product, inputs, output", [
    ("linear(%x, %w, %b)", LINEAR, "f32[4,32]"),
    ("conv(%x, %w, %b) {padding=[1]}", CONV, "f32[1,4,6,6]")])
def test_relu_keeps_nan_in_every_option(product: str, inputs: str, output: str) -> None:
    """oneDNN's relu post-op maps NaN to 0; torch.relu keeps it, so relu stays in the Numba epilogue."""
    body = _body(_region(f"      %0: {output} = {product}\n      %1: {output} = relu(%0)\n      return %1",
                         inputs, output))
    plan = plan_gemm(body)
    shapes = {v.name: tuple(v.type.static_shape()) for v in body.inputs}
    tensors = {name: torch.randn(shape) for name, shape in shapes.items()}
    tensors["x"].view(-1)[5] = float("nan")
    expected = torch.relu(F.linear(tensors["x"], tensors["w"], tensors["b"]) if "linear" in product
                          else F.conv2d(tensors["x"], tensors["w"], tensors["b"], padding=1))
    assert expected.isnan().any()
    for option in plan.options:
        assert option.product.post_op != "relu"
        args = [None if v is None else tensors[v.name] for v in option.operands]
        result = option.product.call(*args, torch.empty(expected.shape))
        if option.epilogue is not None:
            result = run_graph(option.epilogue, result, *[tensors[v.name] for v in option.epilogue.inputs[1:]])[0]
        torch.testing.assert_close(result, expected, rtol=1e-4, atol=1e-5, equal_nan=True, msg=option.product.text)


def test_an_intermediate_output_blocks_post_op_fusion() -> None:
    text = _region("      %0: f32[4,32] = linear(%x, %w, %b)\n      %1: f32[4,32] = relu(%0)\n      return %1, %0",
                   LINEAR, "f32[4,32], f32[4,32]").replace("%r: f32[4,32], f32[4,32]", "%r: f32[4,32], %s: f32[4,32]")
    text = text.replace("return %r\n", "return %r, %s\n")
    plan = plan_gemm(_body(text))
    assert plan.epilogue is not None


@pytest.mark.parametrize("spatial", [1, 2, 3])
@pytest.mark.parametrize("groups", [1, 2])
def test_conv_products_match_eager(spatial: int, groups: int) -> None:
    x, w, b = torch.randn(2, 4, *[5] * spatial), torch.randn(6, 4 // groups, *[3] * spatial), torch.randn(6)
    conv = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    expected = conv(x, w, b, 2, 1, 2, groups)

    def t(tensor: torch.Tensor) -> str:
        return "f32[" + ",".join(map(str, tensor.shape)) + "]"

    text = (f"graph m(%x: {t(x)}, %w: {t(w)}, %b: f32[6]) -> ({t(expected)}) {{\n"
            f"  %0: {t(expected)} = conv(%x, %w, %b) {{stride=[2], padding=[1], dilation=[2], groups={groups}}}\n"
            "  return %0\n}")
    node = parse_graph(text).nodes[0]
    assert supports_product(node)
    torch.testing.assert_close(product_call(node).call(x, w, b), expected, rtol=1e-4, atol=1e-5)


def test_supports_product_declines_half_precision_and_mixed_types() -> None:
    half = parse_graph("graph m(%a: f16[4,5], %b: f16[5,3]) -> (f16[4,3]) {\n  %0: f16[4,3] = matmul(%a, %b)\n"
                       "  return %0\n}").nodes[0]
    ints = parse_graph("graph m(%a: i64[4,5], %b: i64[5,3]) -> (i64[4,3]) {\n  %0: i64[4,3] = matmul(%a, %b)\n"
                       "  return %0\n}").nodes[0]
    assert not supports_product(half) and not supports_product(ints)


def test_a_linear_with_a_1d_weight_is_left_to_pytorch() -> None:
    """F.linear(h, v) with a vector v gives one score per row; no library primitive takes a 1-D weight."""
    import heteropass as hp

    class Score(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.v, self.b = torch.nn.Parameter(torch.randn(8)), torch.nn.Parameter(torch.randn(()))

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return F.linear(torch.tanh(h), self.v, self.b)

    vector = parse_graph("graph m(%x: f32[4,5], %w: f32[5]) -> (f32[4]) {\n  %0: f32[4] = linear(%x, %w)\n"
                         "  return %0\n}").nodes[0]
    assert not supports_product(vector)
    model, h = Score().eval(), torch.randn(2, 3, 8)
    with torch.no_grad():
        torch.testing.assert_close(hp.compile(model, (h,), backends=("numba", "reference"))(h), model(h))


def _bias_gelu_body():
    return _body(_region("      %0: f32[4,32] = linear(%x, %w)\n      %1: f32[4,32] = add(%0, %b)\n"
                         "      %2: f32[4,32] = gelu(%1)\n      return %2", LINEAR, "f32[4,32]"))


@pytest.mark.skipif(not onednn_available(), reason="PyTorch without oneDNN")
def test_every_option_computes_the_region() -> None:
    plan = plan_gemm(_bias_gelu_body())
    assert [o.epilogue is None for o in plan.options] == [True, False, False]
    assert "torch.mm" in plan.options[-1].product.text
    tensors = {"x": torch.randn(4, 64), "w": torch.randn(32, 64) / 8, "b": torch.randn(32)}
    expected = F.gelu(F.linear(tensors["x"], tensors["w"], tensors["b"]))
    for option in plan.options:
        out = torch.empty(4, 32)
        product = option.product.call(*[None if v is None else tensors[v.name] for v in option.operands], out)
        assert (product is out) is option.product.writes_out
        if option.epilogue is not None:
            product = run_graph(option.epilogue, product, *[tensors[v.name] for v in option.epilogue.inputs[1:]])[0]
        torch.testing.assert_close(product, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not onednn_available(), reason="PyTorch without oneDNN")
def test_choose_plan_counts_the_epilogue_of_an_unfused_option() -> None:
    plan = plan_gemm(_bias_gelu_body())
    seen = []

    def slow_epilogue(option):
        seen.append(option)
        return lambda product: time.sleep(0.005)

    chosen = choose_plan(plan, slow_epilogue, choices={})
    assert chosen is plan.options[0] and chosen.epilogue is None
    assert seen and all(option.epilogue is not None for option in seen)


def test_every_option_of_a_residual_conv_region_with_constant_weights_computes_it() -> None:
    w, b = torch.randn(8, 6, 3, 3) / 4, torch.randn(8)
    text = """
    graph region(%x: f32[2,6,10,10], %r: f32[2,8,10,10]) -> (f32[2,8,10,10]) {
      const %w: f32[8,6,3,3]
      const %b: f32[8]
      %0: f32[2,8,10,10] = conv(%x, %w, %b) {padding=[1]}
      %1: f32[2,8,10,10] = add(%0, %r)
      %2: f32[2,8,10,10] = relu(%1)
      return %2
    }"""
    plan = plan_gemm(parse_graph(text, constants={"w": w, "b": b}))
    texts = [o.product.text for o in plan.options]
    assert any(t.startswith("winograd") for t in texts)
    tensors = {"x": torch.randn(2, 6, 10, 10), "r": torch.randn(2, 8, 10, 10), "w": w, "b": b}
    expected = F.relu(F.conv2d(tensors["x"], w, b, padding=1) + tensors["r"])
    for option in plan.options:
        args = [None if v is None else tensors[v.name] for v in option.operands]
        product = option.product.call(*args, torch.empty(2, 8, 10, 10))
        if option.epilogue is not None:
            product = run_graph(option.epilogue, product, *[tensors[v.name] for v in option.epilogue.inputs[1:]])[0]
        torch.testing.assert_close(product, expected, rtol=1e-4, atol=1e-4, msg=option.product.text)


def test_a_linear_with_bias_and_epilogue_may_leave_its_bias_to_the_epilogue() -> None:
    w, b = torch.randn(24, 40) / 6, torch.randn(24)
    text = """
    graph region(%x: f32[2,5,40], %r: f32[2,5,24]) -> (f32[2,5,24]) {
      const %w: f32[24,40]
      const %b: f32[24]
      %0: f32[2,5,24] = linear(%x, %w, %b)
      %1: f32[2,5,24] = add(%0, %r)
      %2: f32[2,5,24] = tanh(%1)
      return %2
    }"""
    plan = plan_gemm(parse_graph(text, constants={"w": w, "b": b}))
    moved = [o for o in plan.options if o.product.text.endswith("bias in the epilogue")]
    assert moved and all(o.operands[2] is None and o.epilogue.nodes[0].op == "add" for o in moved)
    tensors = {"x": torch.randn(2, 5, 40), "r": torch.randn(2, 5, 24), "w": w, "b": b}
    expected = torch.tanh(F.linear(tensors["x"], w, b) + tensors["r"])
    for option in plan.options:
        out = torch.empty(2, 5, 24)
        product = option.product.call(*[None if v is None else tensors[v.name] for v in option.operands], out)
        assert (product is out) is option.product.writes_out
        if option.epilogue is not None:
            product = run_graph(option.epilogue, product, *[tensors[v.name] for v in option.epilogue.inputs[1:]])[0]
        torch.testing.assert_close(product, expected, rtol=1e-4, atol=1e-5, msg=option.product.text)


@pytest.mark.parametrize("shape", [(7, 33), (2, 3, 33), (33,)])
def test_mkl_linear_views_any_input_as_rows_and_writes_into_out(shape: tuple[int, ...]) -> None:
    x, w, b = torch.randn(shape), torch.randn(9, 33), torch.randn(9)
    out_shape = (*shape[:-1], 9)
    node = parse_graph(f"graph m(%x: f32[{','.join(map(str, shape))}], %w: f32[9,33], %b: f32[9]) -> "
                       f"(f32[{','.join(map(str, out_shape))}]) {{\n"
                       f"  %0: f32[{','.join(map(str, out_shape))}] = linear(%x, %w, %b)\n  return %0\n}}").nodes[0]
    product = mkl_linear(node)
    out = torch.empty(out_shape)
    assert product.call(x, w, b, out) is out
    torch.testing.assert_close(out, F.linear(x, w, b), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(product.call(x, w, None), F.linear(x, w), rtol=1e-4, atol=1e-5)


def test_a_matmul_with_a_vector_operand_does_not_write_into_out() -> None:
    node = parse_graph("graph m(%a: f32[4,5], %b: f32[5]) -> (f32[4]) {\n"
                       "  %0: f32[4] = matmul(%a, %b)\n  return %0\n}").nodes[0]
    product = product_call(node)
    a, b = torch.randn(4, 5), torch.randn(5)
    assert not product.writes_out
    torch.testing.assert_close(product.call(a, b, None, torch.empty(4)), a @ b)


@pytest.mark.parametrize("option", range(4))
def test_a_channels_last_convolution_product_gets_its_epilogue(option: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """oneDNN and F.conv2d return a channels-last product for channels-last operands; the epilogue, which
    writes contiguous memory, then makes a new tensor instead of running over the product in place."""
    import heteropass as hp
    from heteropass.backends import gemm

    def pick(runs: dict, *args: object, **kwargs: object) -> dict:
        keys = list(runs)
        return {k: float(k != keys[min(option, len(keys) - 1)]) for k in keys}

    monkeypatch.setattr(gemm, "fastest_runs", pick)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten()).eval()
    x = torch.randn(2, 4, 8, 8)
    compiled = hp.compile(model, (x,), backends=("numba", "reference"))
    model_last = model.to(memory_format=torch.channels_last)
    compiled_last = hp.compile(model_last, (x,), backends=("numba", "reference"))
    for fn in (compiled, compiled_last):
        for call in (x, x.contiguous(memory_format=torch.channels_last)):
            torch.testing.assert_close(fn(call), model(call), rtol=1e-4, atol=1e-5)
