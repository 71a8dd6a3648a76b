"""build_executable: the compiled callable agrees with the interpreter and rejects bad inputs precisely."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

import pytest
import torch

from heteropass.backends.base import Backend, Kernel
from heteropass.backends.executable import InputError, build_executable
from heteropass.backends.reference import ReferenceBackend
from heteropass.ir import DType, Graph, Node, TensorType, Value, get_op, parse_graph, run_graph
from heteropass.ir.sample import random_inputs
from heteropass.ir.torch_importer import import_module
from heteropass.testing import models

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
    assert outputs[2] is not graph.constants["scale"].const  # a copy: the caller may change it


def test_code_and_kernel_sources() -> None:
    executable = build_executable(parse_graph(TEXT))
    assert executable.code.startswith("def forward(x, mask):")
    assert "v1, v4 = reference_0(mask, x)" in executable.code
    assert executable.module_source.splitlines()[-1] == "    return [v4, v1, scale.clone()]"
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
    (lambda x, m: (x.to("meta"), m), "input 0 'x' expects a CPU tensor, got one on meta: every partition runs on "
                                     "the CPU"),
    (lambda x, m: (x.to_sparse(), m), "input 0 'x' expects a dense tensor, got a sparse_coo one: pass `.to_dense()`"),
    (lambda x, m: (x, m.to_sparse_csr()), "input 1 'mask' expects a dense tensor, got a sparse_csr one: pass "
                                          "`.to_dense()`"),
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
        torch.testing.assert_close(same, z)
        assert same is not z
    message = "input 1 'y' expects f32[batch,16], got f32[3,16]: dimension 0 is batch, bound to 2 by input 0 'x'"
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        executable(torch.randn(2, 16), torch.randn(3, 16), torch.randn(1))
    with pytest.raises(InputError, match=re.escape("input 0 'x' expects f32[batch,16], got f32[2,15]")):
        executable(torch.randn(2, 15), torch.randn(2, 15), torch.randn(1))


class OutBackend(Backend):
    """Claims elementwise ops, norms and softmax. Its kernels accept preallocated outputs: they compute
    with the reference functions, check each `out` tensor's type and copy the result into it. `after`
    runs once a kernel has written its outputs (to interleave calls in the tests below)."""

    name = "out"

    def __init__(self, after: Callable[[], None] | None = None) -> None:
        self.after = after

    def supports(self, node: Node) -> bool:
        return get_op(node.op).kind in ("elementwise", "norm", "softmax")

    def compile(self, partition: Graph) -> Kernel:
        inner = ReferenceBackend().compile(partition)
        types = [(v.type.dtype.torch, torch.Size(v.type.static_shape())) for v in partition.outputs]
        after = self.after

        def kernel(*args: torch.Tensor, out: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
            results = inner(*args)
            if out is not None:
                assert [(o.dtype, o.shape) for o in out] == types
                for target, result in zip(out, results, strict=True):
                    target.copy_(result)
                results = out
            if after is not None:
                after()
            return results

        kernel.accepts_out = True
        kernel.inplace_safe = True  # every result is computed before any output is written
        return kernel


# Kernels alternate between the backends: out, reference, out, ...
CHAIN = """\
graph chain(%x: f32[8,16], %w: f32[16,16]) -> (f32[8,16]) {
  %0: f32[8,16] = exp(%x)
  %1: f32[8,16] = matmul(%0, %w)
  %2: f32[8,16] = tanh(%1)
  %3: f32[8,16] = matmul(%2, %w)
  %4: f32[8,16] = softmax(%3) {dim=-1}
  %5: f32[8,16] = matmul(%4, %w)
  %6: f32[8,16] = add(%5, %x)
  return %6
}
"""


def test_intermediates_live_in_the_pool_and_outputs_are_fresh_every_call() -> None:
    graph = parse_graph(CHAIN)
    executable = build_executable(graph, [OutBackend(), ReferenceBackend()])
    assert executable.memory is not None and executable.memory.sharing() == [["0", "2", "4"]]
    assert "[v2] = out_2(v1, out=[buf_0])" in executable.code
    assert "out=[torch.empty((8, 16), dtype=torch.float32)]" in executable.code
    first_inputs, second_inputs = random_inputs(graph, seed=0), random_inputs(graph, seed=1)
    [first] = executable(*first_inputs)
    [second] = executable(*second_inputs)
    assert first.data_ptr() != second.data_ptr()
    assert not executable._forward.pool.owns(first) and not executable._forward.pool.owns(second)
    torch.testing.assert_close(first, run_graph(graph, *first_inputs)[0], rtol=0, atol=0)
    torch.testing.assert_close(second, run_graph(graph, *second_inputs)[0], rtol=0, atol=0)
    assert executable.instances == 1


def test_without_planning_kernels_allocate_their_outputs() -> None:
    graph = parse_graph(CHAIN)
    executable = build_executable(graph, [OutBackend(), ReferenceBackend()], plan_memory=False)
    assert executable.memory is None and "out=" not in executable.code
    inputs = random_inputs(graph)
    torch.testing.assert_close(executable(*inputs)[0], run_graph(graph, *inputs)[0], rtol=0, atol=0)


def test_reentrant_call_gets_its_own_pool() -> None:
    graph = parse_graph(CHAIN)
    inner_inputs, outer_inputs = random_inputs(graph, seed=2), random_inputs(graph, seed=3)
    inner_results: list[torch.Tensor] = []

    def call_again() -> None:
        # After the outer call's first kernel wrote its pooled output, before the next kernel reads it.
        if not inner_results:
            inner_results.append(torch.zeros(0))
            inner_results[:] = executable(*inner_inputs)

    executable = build_executable(graph, [OutBackend(after=call_again), ReferenceBackend()])
    [outer] = executable(*outer_inputs)
    torch.testing.assert_close(outer, run_graph(graph, *outer_inputs)[0], rtol=0, atol=0)
    torch.testing.assert_close(inner_results[0], run_graph(graph, *inner_inputs)[0], rtol=0, atol=0)
    assert executable.instances == 2


def test_concurrent_calls_do_not_share_buffers() -> None:
    graph = parse_graph(CHAIN)
    barrier = threading.Barrier(2, timeout=30)
    executable = build_executable(graph, [OutBackend(after=barrier.wait), ReferenceBackend()])
    inputs = [random_inputs(graph, seed=4), random_inputs(graph, seed=5)]
    results: list[list[torch.Tensor]] = [[], []]

    def run(i: int) -> None:
        results[i] = executable(*inputs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Both calls write each pooled value before either reads it: a shared pool would mix their values.
    for i in range(2):
        torch.testing.assert_close(results[i][0], run_graph(graph, *inputs[i])[0], rtol=0, atol=0)
    assert executable.instances == 2


@pytest.mark.slow
def test_gpt2_style_matches_the_interpreter_with_pooled_buffers() -> None:
    program = import_module(models.gpt2_style(), models.gpt2_style_inputs())
    executable = build_executable(program.graph, [OutBackend(), ReferenceBackend()])
    assert executable.memory is not None and executable.memory.buffer_of
    inputs = list(models.gpt2_style_inputs())
    expected = run_graph(program.graph, *inputs)
    for _ in range(2):
        for actual, want in zip(executable(*inputs), expected, strict=True):
            torch.testing.assert_close(actual, want, rtol=0, atol=0)


def test_a_view_made_by_another_kernel_keeps_its_pooled_buffer_alive() -> None:
    graph = parse_graph("""\
graph view(%x: f32[16,16]) -> (f32[16,16]) {
  %0: f32[16,16] = exp(%x)
  %1: f32[16,16] = transpose(%0) {dim0=0, dim1=1}
  %2: f32[] = sum(%1)
  %3: f32[16,16] = mul(%x, %2)
  %4: f32[16,16] = matmul(%1, %3)
  return %4
}
""")
    executable = build_executable(graph, [OutBackend(), ReferenceBackend()])
    assert [p.name for p in executable.partitions] == ["out_0", "reference_1", "out_2", "reference_3"]
    # reference_1 returns %1, a view of %0's buffer that reference_3 reads: %3 must not take that buffer.
    assert executable.memory is not None and executable.memory.sharing() == [["0"], ["3"]]
    inputs = random_inputs(graph)
    torch.testing.assert_close(executable(*inputs)[0], run_graph(graph, *inputs)[0], rtol=0, atol=0)


class OutArgumentBackend(Backend):
    """Claims tanh and runs it as `torch.tanh(x, out=...)`, which autograd rejects for inputs that require
    grad (as the Numba backend's MKL GEMMs do with `addmm(..., out=)`)."""

    name = "out-argument"

    def supports(self, node: Node) -> bool:
        return node.op == "tanh"

    def compile(self, partition: Graph) -> Kernel:
        def kernel(x: torch.Tensor) -> list[torch.Tensor]:
            return [torch.tanh(x, out=torch.empty_like(x))]

        return kernel


def test_runs_without_autograd_for_inputs_that_require_grad() -> None:
    graph = parse_graph(TEXT)
    executable = build_executable(graph, [OutArgumentBackend(), ReferenceBackend()])
    x, mask = random_inputs(graph, seed=3)
    x.requires_grad_()
    outputs = executable(x, mask)
    assert not any(out.requires_grad for out in outputs)
    for got, want in zip(outputs, run_graph(graph, x.detach(), mask), strict=True):
        torch.testing.assert_close(got, want)
