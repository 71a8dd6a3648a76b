"""partition_glue.py: a Numba partition with values in an arena computes what the reference computes, call
after call and from several threads at once; what it returns never shares the arena's memory."""

from __future__ import annotations

import gc

import torch

from heteropass.backends.executable import build_executable
from heteropass.backends.numba_backend import NumbaBackend
from heteropass.ir import parse_graph, run_graph
from heteropass.testing.assertions import assert_concurrent

# relu writes into the arena from the input; exp and neg then read and write arena values only (their
# kernels get the addresses as constants); the transpose is a view made once per instance.
CHAIN = """
graph m(%x: f32[5,7]) -> (f32[7,5], f32[5,7]) {
  %0: f32[5,7] = relu(%x)
  %1: f32[5,7] = exp(%0)
  %2: f32[5,7] = neg(%1)
  %3: f32[7,5] = transpose(%2) {dim0=0, dim1=1}
  %4: f32[7,5] = sin(%3)
  %5: f32[5,7] = mul(%2, %x)
  return %4, %5
}"""


def _compiled():
    graph = parse_graph(CHAIN)
    kernel = NumbaBackend().compile(graph.clone())
    return graph, kernel


def test_arena_values_run_through_direct_kernel_calls_and_instances() -> None:
    graph, kernel = _compiled()
    assert "def m_instance():" in kernel.source and "m_plan.make_buffers()" in kernel.source
    assert "k_region_1(p_v0, p_v1)" in kernel.source
    x = torch.randn(5, 7)
    for got, want in zip(kernel(x), run_graph(graph, x), strict=True):
        torch.testing.assert_close(got, want)


def test_results_do_not_share_memory_with_the_arena_or_each_other() -> None:
    _, kernel = _compiled()
    x1, x2 = torch.randn(5, 7), torch.randn(5, 7)
    first = [t.clone() for t in kernel(x1)]
    kept = kernel(x1)
    kernel(x2)
    for got, want in zip(kept, first, strict=True):
        torch.testing.assert_close(got, want)


def test_the_arena_lives_as_long_as_the_instance() -> None:
    graph, kernel = _compiled()
    x = torch.randn(5, 7)
    kernel(x)
    gc.collect()
    # Memory freed behind the kernels' constant addresses would be handed to these, and written by the call.
    fillers = [torch.full((5, 7), float("nan")) for _ in range(64)]
    for got, want in zip(kernel(x), run_graph(graph, x), strict=True):
        torch.testing.assert_close(got, want)
    assert all(bool(t.isnan().all()) for t in fillers)


def test_concurrent_calls_take_instances_of_their_own() -> None:
    graph = parse_graph(CHAIN)
    executable = build_executable(graph.clone(), [NumbaBackend()])
    def work(seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        for _ in range(40):
            x = torch.randn(5, 7, generator=generator)
            for got, want in zip(executable(x), run_graph(graph, x), strict=True):
                torch.testing.assert_close(got, want)

    assert_concurrent(work)
