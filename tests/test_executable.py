"""build_executable: the compiled callable agrees with the interpreter and rejects bad inputs precisely."""

from __future__ import annotations

import re

import pytest
import torch

from heteropass.backends.base import Backend, Kernel
from heteropass.backends.executable import InputError, build_executable
from heteropass.backends.reference import ReferenceBackend
from heteropass.ir import DType, Graph, Node, TensorType, Value, parse_graph, run_graph
from heteropass.ir.sample import random_inputs

TEXT = """\
graph masked(%x: f32[8,16], %mask: i64[8,16]) -> (f32[8,16], f32[8,16], f32[]) {
  const %scale: f32[] = 0.25
  %0: f32[8,16] = cast(%mask) {dtype=f32}
  %1: f32[8,16] = mul(%x, %0)
  %2: f32[8,16] = softmax(%1) {dim=-1}
  %3: f32[8,16] = mul(%2, %scale)
  %4: f32[8,16] = tanh(%3)
  return %4, %1, %scale
}
"""


class Elementwise(Backend):
    name = "elementwise"

    def supports(self, node: Node) -> bool:
        return node.op in ("mul", "tanh")

    def compile(self, partition: Graph) -> Kernel:
        return ReferenceBackend().compile(partition)


def test_matches_interpreter_with_two_backends() -> None:
    graph = parse_graph(TEXT)
    executable = build_executable(graph, [Elementwise(), ReferenceBackend()])
    assert [p.name for p in executable.partitions] == ["reference_0", "elementwise_1", "reference_2",
                                                       "elementwise_3"]
    inputs = random_inputs(graph)
    outputs = executable(*inputs)
    for actual, expected in zip(outputs, run_graph(graph, *inputs), strict=True):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    assert outputs[2] is graph.constants["scale"].const


def test_code_and_kernel_sources() -> None:
    executable = build_executable(parse_graph(TEXT))
    assert executable.code.startswith("def forward(x, mask):")
    assert "v1, v4 = reference_0(mask, x)" in executable.code
    assert executable.module_source.splitlines()[-1] == "    return [v4, v1, scale]"
    assert executable.code.startswith(executable.module_source.rstrip())
    assert "def reference_0(" in executable.code
    assert list(executable.kernel_sources) == ["reference_0"]
    assert executable.kernel_sources["reference_0"].startswith("def reference_0(mask, x):")


def test_callables_hold_no_ir_objects() -> None:
    executable = build_executable(parse_graph(TEXT), [Elementwise(), ReferenceBackend()])
    forward = executable._forward
    kernels = [forward.__globals__[p.name] for p in executable.partitions]
    for function in [forward, *kernels]:
        for name in function.__code__.co_names:
            assert not isinstance(function.__globals__.get(name), Graph | Node | Value), name


@pytest.mark.parametrize(("args", "message"), [
    (lambda x, m: (x,), "expected 2 inputs (x: f32[8,16], mask: i64[8,16]), got 1"),
    (lambda x, m: (x, m, m), "expected 2 inputs (x: f32[8,16], mask: i64[8,16]), got 3"),
    (lambda x, m: (x, m.float()), "input 1 'mask' expects i64[8,16], got f32[8,16]"),
    (lambda x, m: (x[:4], m), "input 0 'x' expects f32[8,16], got f32[4,16]"),
    (lambda x, m: (x.reshape(128), m), "input 0 'x' expects f32[8,16], got f32[128]"),
    (lambda x, m: (x.to(torch.complex64), m), "input 0 'x' expects f32[8,16], got torch.complex64[8,16]"),
    (lambda x, m: (x.tolist(), m), "input 0 'x' expects a tensor f32[8,16], got list"),
    (lambda x, m: (x, 3), "input 1 'mask' expects a tensor i64[8,16], got int"),
])
def test_input_errors(args, message: str) -> None:
    graph = parse_graph(TEXT)
    executable = build_executable(graph)
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        executable(*args(*random_inputs(graph)))


def symbolic_graph() -> Graph:
    graph = Graph("sym")
    batch = TensorType(("batch", 16), DType.f32)
    x = graph.add_input("x", batch)
    y = graph.add_input("y", batch)
    z = graph.add_input("z", TensorType(("n",), DType.f32))
    total = graph.add_node("add", [x, y], output_types=[batch]).output
    graph.set_outputs([total, z])
    return graph


def test_symbolic_dimensions_bind_consistently() -> None:
    executable = build_executable(symbolic_graph())
    for batch in (2, 5):
        x, y, z = torch.randn(batch, 16), torch.randn(batch, 16), torch.randn(batch + 1)
        total, same = executable(x, y, z)
        torch.testing.assert_close(total, x + y)
        assert same is z
    message = "input 1 'y' expects f32[batch,16], got f32[3,16]: dimension 0 is batch, bound to 2 by input 0 'x'"
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        executable(torch.randn(2, 16), torch.randn(3, 16), torch.randn(1))
    with pytest.raises(InputError, match=re.escape("input 0 'x' expects f32[batch,16], got f32[2,15]")):
        executable(torch.randn(2, 15), torch.randn(2, 15), torch.randn(1))
