"""The reference backend: generated kernels agree with the reference interpreter and read well."""

from __future__ import annotations

import torch

from heteropass.backends.reference import ReferenceBackend
from heteropass.ir import DType, Graph, TensorType, parse_graph, run_graph
from heteropass.ir.ops.misc import encode_call
from heteropass.ir.sample import random_inputs

TEXT = """\
graph mlp(%x: f32[8,16], %unused: i64[3]) -> (f32[256], f32[8,16], f32[8,16], f32[], f32[8,16]) {
  const %fc.weight: f32[32,16]
  const %c0: f32[] = 0.5
  %0: f32[8,32] = linear(%x, %fc.weight)
  %1: f32[8,32] = mul(%0, %c0)
  %2: f32[8,16], %3: f32[8,16] = split(%1) {sizes=[16, 16], dim=1}
  %4: f32[8,32] = concat(%2, %3) {dim=1}
  %5: f32[256] = reshape(%4) {shape=[-1]}
  return %5, %2, %x, %c0, %2
}
"""


def assert_same(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_matches_interpreter_with_split_constants_and_direct_outputs() -> None:
    graph = parse_graph(TEXT)
    kernel = ReferenceBackend().compile(graph)
    inputs = random_inputs(graph)
    outputs = kernel(*inputs)
    assert_same(outputs, run_graph(graph, *inputs))
    assert outputs[2] is inputs[0]  # an input returned as an output is passed through
    assert outputs[1] is outputs[4]


def test_source_calls_reference_functions_with_keyword_attributes() -> None:
    source = ReferenceBackend().compile(parse_graph(TEXT)).source
    compile(source, "<kernel>", "exec")
    lines = [line.strip() for line in source.splitlines()]
    assert lines[0] == "def mlp(x, unused):"
    assert "v0 = linear(x, fc_weight)" in lines  # constants are globals, not parameters
    assert "[v2, v3] = split(v1, sizes=(16, 16), dim=1)" in lines
    assert "v5 = reshape(v4, shape=(-1,))" in lines
    assert "del v3" in lines and "del v4" in lines
    assert lines[-1] == "return [v5, v2, x, c0, v2]"


def test_unused_outputs_are_deleted_at_once() -> None:
    graph = Graph("g")
    x = graph.add_input("x", TensorType((6,), DType.f32))
    first, _, third = graph.add_node("split", [x], {"sizes": [2, 2, 2]}).outputs
    graph.set_outputs([graph.call("add", first, third)])
    source = ReferenceBackend().compile(graph).source
    assert "    del v1\n" in source.split("[v0, v1, v2] = split(")[1]


def test_names_avoid_ops_keywords_and_each_other() -> None:
    graph = Graph("my-graph")
    x = graph.add_input("add", TensorType((4,), DType.f32))
    y = graph.add_input("lambda", TensorType((4,), DType.f32))
    z = graph.add_input("a.b", TensorType((4,), DType.f32))
    w = graph.add_input("a_b", TensorType((4,), DType.f32))
    total = graph.call("add", graph.call("add", x, y), graph.call("mul", z, w))
    graph.set_outputs([total])
    kernel = ReferenceBackend().compile(graph)
    assert kernel.source.startswith("def my_graph(add_1, lambda_1, a_b, a_b_1):")
    inputs = random_inputs(graph)
    assert_same(kernel(*inputs), run_graph(graph, *inputs))


def test_dtype_and_non_finite_attributes() -> None:
    graph = Graph("g")
    x = graph.add_input("x", TensorType((2, 3), DType.f32))
    half = graph.call("cast", x, dtype=DType.f16)
    fill = graph.call("full", shape=[2, 3], value=float("-inf"))
    graph.set_outputs([half, graph.call("maximum", x, fill)])
    kernel = ReferenceBackend().compile(graph)
    assert "dtype=DType.f16" in kernel.source and 'value=float("-inf")' in kernel.source
    inputs = random_inputs(graph)
    assert_same(kernel(*inputs), run_graph(graph, *inputs))


def test_opaque_nodes_with_one_and_two_outputs() -> None:
    graph = Graph("g")
    x = graph.add_input("x", TensorType((4, 5), DType.f32))
    operands, spec = encode_call((x,), {"dim": 1})
    cumprod = graph.add_node("opaque", operands, {"target": "torch.cumprod", "spec": spec}).output
    operands, spec = encode_call((cumprod, 2), {"dim": 1})
    values, indices = graph.add_node("opaque", operands, {"target": "aten.topk.default", "spec": spec}).outputs
    graph.set_outputs([values, indices])
    kernel = ReferenceBackend().compile(graph)
    assert "as_outputs(opaque(x, target='torch.cumprod'" in kernel.source
    inputs = random_inputs(graph)
    assert_same(kernel(*inputs), run_graph(graph, *inputs))


def test_region_op_is_inlined() -> None:
    from heteropass.backends.executable import build_executable

    from .test_ir_text import FUSED

    graph = parse_graph(FUSED)
    executable = build_executable(graph)
    assert " = add(v0, b)\n" in executable.code and "region" not in executable.code
    x = torch.randn(8, 16)
    torch.testing.assert_close(executable(x)[0], run_graph(graph, x)[0], rtol=0, atol=0)
