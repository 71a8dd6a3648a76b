"""Large Numba kernels split their outer (or flat) loop across PyTorch's threads and still compute what
the reference interpreter computes: elementwise, row- and column-reduction regions, broadcast and strided
operands, outputs written over an input, random graphs."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from heteropass.backends import numba_backend
from heteropass.backends.executable import build_executable
from heteropass.backends.numba_backend import NumbaBackend
from heteropass.backends.parallel_kernel import SplitKernel, split_bounds
from heteropass.backends.reference import ReferenceBackend
from heteropass.ir import DType, parse_graph, run_graph
from heteropass.testing import assert_backend_matches_reference, assert_outputs_close, graph_and_inputs

from .test_numba_backend import COLUMN_REGION, ELEMENTWISE, REDUCTION, region


@contextmanager
def split_everything() -> Iterator[None]:
    """Every kernel with a loop to split compiles ranged, and calls split it over two threads."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(numba_backend, "SPLIT_MIN_NUMEL", 2)
        patch.setattr(numba_backend, "SPLIT_MIN_MATH_NUMEL", 2)
        torch.set_num_threads(2)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


@given(extent=st.integers(1, 5000), parts=st.integers(1, 9), align=st.sampled_from([1, 16]))
def test_split_bounds_cover_the_range_in_aligned_parts(extent: int, parts: int, align: int) -> None:
    bounds = split_bounds(extent, parts, align)
    assert bounds[0][0] == 0 and bounds[-1][1] == extent and len(bounds) <= parts
    assert all(lo < hi for lo, hi in bounds)
    assert all(a[1] == b[0] and b[0] % align == 0 for a, b in pairwise(bounds))


def _compiled(text: str):  # type: ignore[no-untyped-def]
    graph = parse_graph(text)
    backend = NumbaBackend()
    executable = build_executable(graph.clone(), [backend, ReferenceBackend()])
    assert all(p.backend is backend for p in executable.partitions), executable.code
    return graph, executable


@pytest.mark.parametrize("text", [ELEMENTWISE, REDUCTION, COLUMN_REGION], ids=["elementwise", "reduction", "columns"])
def test_split_regions_match_the_reference(text: str) -> None:
    with split_everything():
        graph, executable = _compiled(text)
        assert "across torch.get_num_threads() threads" in executable.code and "start, stop" in executable.code
        inputs = [torch.randn(t.type.static_shape()) * 2 + 0.5 for t in graph.inputs]
        assert_outputs_close(executable(*inputs), run_graph(graph, *inputs), 1e-4, 1e-5, executable.code)


def test_a_column_reduction_without_an_outer_loop_splits_its_inner_positions() -> None:
    """A channel softmax of batch 1: the threads take parts of the positions after the channels."""
    text = region("reduction", "%x: f32[1,6,4,50]", "f32[1,6,4,50], f32[1,1,4,50]", """
        %0: f32[1,6,4,50] = softmax(%x) {dim=1}
        %1: f32[1,1,4,50] = amax(%x) {dims=[1], keepdim=true}
        return %0, %1
    """)
    with split_everything():
        graph, executable = _compiled(text)
        assert "splits its 200 elements across" in executable.code and "range(count)" in executable.code
        x = torch.randn(1, 6, 4, 50) * 3
        assert_outputs_close(executable(x), run_graph(graph, x), 1e-5, 1e-6, executable.code)


def test_large_flat_kernel_splits_at_the_default_size_and_writes_over_its_input() -> None:
    n = (1 << 18) + 37  # a remainder after the last aligned cut
    graph = parse_graph(region("elementwise", f"%x: f32[{n}], %y: f32[{n}]", f"f32[{n}]", f"""
        %0: f32[{n}] = mul(%x, %y)
        %1: f32[{n}] = gelu(%0)
        return %1"""))
    kernel = NumbaBackend().compile(graph)
    assert f"splits its {n} elements" in kernel.source
    x, y = torch.randn(n), torch.randn(n)
    # The float32 product, then GELU in float64: PyTorch's float32 GELU is itself up to 1.1e-6 off near
    # x = -3.5 with AVX-512 (1/2 + erf/2 cancels), as far as our kernel may be on the other side.
    expected = [torch.nn.functional.gelu((x * y).double()).float()]
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            assert_outputs_close(kernel(x, y), expected, 1e-5, 1e-6)
            alias = x.clone()
            kernel(alias, y, out=[alias])
            assert_outputs_close([alias], expected, 1e-5, 1e-6)
    finally:
        torch.set_num_threads(threads)


def test_memory_bound_kernels_split_from_a_larger_size_than_math_kernels() -> None:
    def source(op: str, n: int) -> str:
        graph = parse_graph(region("elementwise", f"%x: f32[{n}]", f"f32[{n}]", f"""
            %0: f32[{n}] = {op}(%x)
            return %0"""))
        return NumbaBackend().compile(graph).source

    assert "splits its" in source("exp", 1 << 18) and "splits its" not in source("neg", 1 << 18)
    assert "splits its" in source("neg", 1 << 20)


def test_split_kernel_runs_each_part_once() -> None:
    seen: list[tuple[int, int]] = []
    kernel = SplitKernel(lambda address, start, stop: seen.append((start, stop)), 100, flat=True, numel=1 << 22)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        kernel(0)
        assert sorted(seen) == split_bounds(100, 8, 16)  # 4 parts a thread, as 16-element lines allow
        assert len(seen) == 7
        seen.clear()
        SplitKernel(lambda address, start, stop: seen.append((start, stop)), 100, flat=True, numel=100)(0)
        assert sorted(seen) == [(0, 48), (48, 100)]  # a small kernel: one part per thread
        seen.clear()
        torch.set_num_threads(1)
        kernel(0)
        assert seen == [(0, 100)]
    finally:
        torch.set_num_threads(threads)


CASES = graph_and_inputs(input_dtypes=(DType.f32, DType.f32, DType.f64, DType.i64))


@settings(max_examples=25, deadline=None)
@given(case=CASES)
def test_random_graphs_with_every_kernel_split(case: tuple) -> None:
    graph, inputs = case
    with split_everything():
        assert_backend_matches_reference(graph, [NumbaBackend(), ReferenceBackend()], inputs)


def test_a_forked_child_splits_kernels_on_its_own_threads() -> None:
    n = 1 << 18
    graph = parse_graph(region("elementwise", f"%x: f32[{n}]", f"f32[{n}]", f"""
        %0: f32[{n}] = exp(%x)
        return %0"""))
    kernel = NumbaBackend().compile(graph)
    x = torch.randn(n)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        kernel(x)  # the parent's pool exists before the fork
        expected = torch.exp(x).numpy()
        child = multiprocessing.get_context("fork").Process(target=_run_in_child, args=(kernel, x, expected))
        child.start()
        child.join(timeout=60)
        assert child.exitcode == 0, "the forked child hung or computed something else"
    finally:
        torch.set_num_threads(threads)


def _run_in_child(kernel, x: torch.Tensor, expected: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    # No other torch op here: OpenMP does not survive a fork, and torch's thread setting is inherited (2).
    if not np.allclose(kernel(x)[0].numpy(), expected, rtol=1e-5, atol=1e-6):
        raise SystemExit(1)
