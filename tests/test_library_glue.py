"""library_glue.py: views and `take` inside a Numba partition, as single PyTorch calls, compute what the
reference computes, down to which indices wrap and which raise."""

from __future__ import annotations

import pytest
import torch

from heteropass.backends.executable import build_executable
from heteropass.backends.numba_backend import NumbaBackend
from heteropass.backends.reference import ReferenceBackend
from heteropass.ir import parse_graph, run_graph
from heteropass.testing import assert_outputs_close

BACKENDS = [NumbaBackend(), ReferenceBackend()]


@pytest.mark.parametrize("dim, table, indices, out", [(0, "f32[10,3]", "i64[2,4]", "f32[2,4,3]"),
                                                      (1, "f32[3,10,2]", "i32[5]", "f32[3,5,2]")])
def test_take_wraps_negative_indices_and_raises_on_indices_out_of_range(dim: int, table: str, indices: str,
                                                                       out: str) -> None:
    graph = parse_graph(f"graph m(%t: {table}, %i: {indices}) -> ({out}) {{\n"
                        f"  %0: {out} = take(%t, %i) {{dim={dim}}}\n  return %0\n}}")
    executable = build_executable(graph.clone(), BACKENDS)
    assert "index_select" in executable.code
    t = torch.randn(graph.inputs[0].type.static_shape())
    shape, dtype = graph.inputs[1].type.static_shape(), graph.inputs[1].type.dtype.torch
    for low in (0, -10):  # non-negative indices, then some negative ones (counted from the end)
        i = torch.randint(low, 10, shape, dtype=dtype)
        expected = torch.index_select(t, dim, i.reshape(-1).long() % 10).reshape(graph.outputs[0].type.static_shape())
        assert_outputs_close(executable(t, i), [expected], 0, 0)
    with pytest.raises((IndexError, RuntimeError)):  # as the reference raises
        executable(t, torch.full(shape, 10, dtype=dtype))


VIEWS = """
graph m(%x: f32[4,6,5]) -> (f32[3,4,1,5], f32[4,2,5], f32[4,4,5], f32[20,6], f32[5,6,4]) {
  %0: f32[6,4,5] = transpose(%x) {dim0=0, dim1=1}
  %1: f32[3,4,5] = slice(%0) {dim=0, start=-3}
  %2: f32[3,4,1,5] = unsqueeze(%1) {dim=2}
  %3: f32[4,2,5], %4: f32[4,4,5] = split(%x) {sizes=[2, 4], dim=1}
  %5: f32[20,6] = reshape(%0) {shape=[20, 6]}
  %6: f32[5,6,4] = permute(%x) {dims=[2, 1, 0]}
  return %2, %3, %4, %5, %6
}"""


def test_view_ops_on_run_time_operands_match_the_reference() -> None:
    graph = parse_graph(VIEWS)
    executable = build_executable(graph.clone(), BACKENDS)
    assert "narrow(0, 3, 3)" in executable.code and "split_with_sizes" in executable.code
    x = torch.randn(4, 6, 5)
    for got, want in zip(executable(x), run_graph(graph, x), strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=0)
