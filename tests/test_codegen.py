"""The emitted module: readable, valid, deterministic Python that frees values after their last use."""

from __future__ import annotations

import ast

import pytest
import torch

from heteropass.backends.base import Backend, Kernel
from heteropass.backends.codegen import (
    Namer,
    describe_ops,
    emit_module,
    module_buffers,
    plan_module_memory,
    py_literal,
    python_name,
)
from heteropass.backends.executable import build_executable
from heteropass.backends.partition import partition
from heteropass.backends.reference import ReferenceBackend
from heteropass.ir import DType, Graph, Node, TensorType, Value, parse_graph

TEXT = """\
graph net(%x: f32[4,4], %fc1.weight: f32[4,4]) -> (f32[4,4], f32[4,4]) {
  const %c0: f32[] = 2.0
  %0: f32[4,4] = relu(%x)
  %1: f32[4,4] = matmul(%0, %fc1.weight)
  %2: f32[4,4] = exp(%0)
  %3: f32[4,4] = add(%1, %2)
  %4: f32[4,4] = matmul(%3, %3)
  %5: f32[4,4] = mul(%4, %c0)
  return %5, %x
}
"""


class Elementwise(Backend):
    name = "elementwise"

    def supports(self, node: Node) -> bool:
        return node.op in ("relu", "exp", "add", "mul")

    def compile(self, partition: Graph) -> Kernel:
        return ReferenceBackend().compile(partition)


def emit(text: str = TEXT) -> str:
    graph = parse_graph(text)
    parts = partition(graph, [Elementwise(), ReferenceBackend()])
    return emit_module(graph, parts, [f"kernel_{p.index}" for p in parts])


def test_emitted_module() -> None:
    assert emit() == '''\
def forward(x, fc1_weight):
    """Graph net, compiled by heteropass.

    (x: f32[4,4], fc1_weight: f32[4,4]) -> (f32[4,4], f32[4,4])
    """
    # kernel_0: elementwise @cpu, 2 nodes: relu, exp
    v0, v2 = kernel_0(x)
    # kernel_1: reference @cpu, 1 node: matmul
    [v1] = kernel_1(v0, fc1_weight)
    del v0
    # kernel_2: elementwise @cpu, 1 node: add
    [v3] = kernel_2(v1, v2)
    del v1, v2
    # kernel_3: reference @cpu, 1 node: matmul
    [v4] = kernel_3(v3)
    del v3
    # kernel_4: elementwise @cpu, 1 node: mul
    [v5] = kernel_4(v4)
    del v4
    return [v5, x.clone()]
'''


def test_valid_and_deterministic() -> None:
    source = emit()
    ast.parse(source)
    assert emit() == source


def test_long_op_lists_are_summarised_and_wrapped() -> None:
    ops = ["neg", "sin", "cos", "tanh", "sigmoid", "abs", "erf", "floor", "ceil", "sign", "silu", "mish"] * 3
    body = "\n".join(f"  %{i + 1}: f32[4] = {op}(%{i})" for i, op in enumerate(ops))
    text = f"graph long(%0: f32[4]) -> (f32[4]) {{\n{body}\n  return %{len(ops)}\n}}\n"
    lines = emit(text).splitlines()
    assert lines[5:7] == [
        "    # kernel_0: reference @cpu, 36 nodes: neg x3, sin x3, cos x3, tanh x3, sigmoid x3, abs x3, erf x3, "
        "floor x3,",
        "    #   ceil x3, sign x3, silu x3, mish x3",
    ]
    assert all(len(line) <= 120 for line in lines)


def test_graph_without_nodes_returns_copies_of_inputs_and_constants() -> None:
    graph = parse_graph("""\
graph g(%x: f32[2]) -> (f32[2], f32[2], f32[]) {
  const %c.0: f32[] = 1.0
  return %x, %x, %c.0
}
""")
    # Eager returns new tensors for clone(), x * 1 or a weight expression, which the passes reduce to these.
    assert emit_module(graph, [], []).splitlines()[-1] == "    return [x.clone(), x.clone(), c_0.clone()]"


def test_returned_split_results_are_contiguous_as_separate_linears_were() -> None:
    graph = parse_graph("""\
graph g(%x: f32[3,4]) -> (f32[3,2], f32[3,2]) {
  const %w: f32[4,4]
  %0: f32[3,4] = linear(%x, %w)
  %1: f32[3,2], %2: f32[3,2] = split(%0) {sizes=[2, 2], dim=-1}
  return %1, %2
}
""")
    outputs = build_executable(graph, [ReferenceBackend()])(torch.randn(3, 4))
    assert all(out.is_contiguous() for out in outputs)
    outputs[0].view(-1)


def test_python_names() -> None:
    assert python_name("fc1.weight") == "fc1_weight"
    assert python_name("3") == "v3"
    assert python_name("layers.0.attn") == "layers_0_attn"


def test_namer_avoids_keywords_builtins_reserved_and_duplicates() -> None:
    namer = Namer(["kernel_0"])
    names = [namer(Value(n, None)) for n in ["class", "len", "kernel_0", "a.b", "a_b", "a.b"]]  # type: ignore[arg-type]
    assert names == ["class_1", "len_1", "kernel_0_1", "a_b", "a_b_1", "a_b_2"]


@pytest.mark.parametrize(("value", "source"), [
    (None, "None"), (True, "True"), (3, "3"), (0.5, "0.5"), ("tanh", "'tanh'"), ((1,), "(1,)"),
    ((1, -1), "(1, -1)"), (float("inf"), 'float("inf")'), (float("nan"), 'float("nan")'),
    (DType.bf16, "DType.bf16"), ((0.5, float("-inf")), '(0.5, float("-inf"))'),
])
def test_literals(value: object, source: str) -> None:
    assert py_literal(value) == source


def test_describe_ops() -> None:
    assert describe_ops(["linear", "relu", "linear"]) == "linear x2, relu"


def test_kernels_that_accept_out_get_pool_views_and_fresh_graph_outputs() -> None:
    graph = parse_graph(TEXT)
    parts = partition(graph, [Elementwise(), ReferenceBackend()])
    accepts_out = [p.backend.name == "elementwise" for p in parts]
    plan = plan_module_memory(graph, parts, accepts_out, inplace_safe=accepts_out)
    names = [f"kernel_{p.index}" for p in parts]
    assert module_buffers(graph, parts, names, plan) == {"buf_0": (0, TensorType((4, 4), DType.f32)),
                                                         "buf_1": (1, TensorType((4, 4), DType.f32))}
    # add overwrites exp's result, which it reads last; mul's result is returned, so it is allocated per call.
    assert emit_module(graph, parts, names, plan, accepts_out) == '''\
def forward(x, fc1_weight):
    """Graph net, compiled by heteropass.

    (x: f32[4,4], fc1_weight: f32[4,4]) -> (f32[4,4], f32[4,4])
    """
    # memory: 2 buffers, 128 bytes for 3 values (1 in place); peak 256 bytes, 384 without planning
    # kernel_0: elementwise @cpu, 2 nodes: relu, exp
    v0, v2 = kernel_0(x, out=[buf_0, buf_1])
    # kernel_1: reference @cpu, 1 node: matmul
    [v1] = kernel_1(v0, fc1_weight)
    del v0
    # kernel_2: elementwise @cpu, 1 node: add
    [v3] = kernel_2(v1, v2, out=[buf_1])
    del v1, v2
    # kernel_3: reference @cpu, 1 node: matmul
    [v4] = kernel_3(v3)
    del v3
    # kernel_4: elementwise @cpu, 1 node: mul
    [v5] = kernel_4(v4, out=[torch.empty((4, 4), dtype=torch.float32)])
    del v4
    return [v5, x.clone()]
'''
    assert emit_module(graph, parts, names, None, accepts_out) == emit()


def test_a_returned_view_of_a_split_result_is_contiguous_too() -> None:
    graph = parse_graph("""\
graph g(%x: f32[3,4]) -> (f32[1,3,2], f32[3,2]) {
  const %w: f32[4,4]
  %0: f32[3,4] = linear(%x, %w)
  %1: f32[3,2], %2: f32[3,2] = split(%0) {sizes=[2, 2], dim=-1}
  %3: f32[1,3,2] = unsqueeze(%1) {dim=0}
  return %3, %2
}
""")
    outputs = build_executable(graph, [ReferenceBackend()])(torch.randn(3, 4))
    assert all(out.is_contiguous() for out in outputs)
