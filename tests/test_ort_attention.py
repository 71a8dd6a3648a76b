"""ort_attention.py: the view chain around an attention over a packed Q/K/V product is found, runs as one
ONNX Runtime session that matches the reference (masks, causal, odd sizes), and is declined otherwise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from heteropass.backends import ort_attention
from heteropass.backends.executable import build_executable
from heteropass.backends.numba_backend import NumbaBackend
from heteropass.backends.ort_attention import find_packed_attention, packed_attention_call
from heteropass.backends.ort_gemm import ort_available
from heteropass.backends.reference import ReferenceBackend
from heteropass.ir import parse_graph, run_graph

pytestmark = pytest.mark.skipif(not ort_available(), reason="onnxruntime is not installed")


def _graph(batch: int, seq: int, heads: int, dim: int, attrs: str = "", mask: str = "", returns: str = "%8"):
    e = heads * dim
    head, both = f"f32[{batch},{seq},{heads},{dim}]", f"f32[{batch},{heads},{seq},{dim}]"
    part = f"f32[{batch},{seq},{e}]"
    mask_operand = ", %mask" if mask else ""
    return f"""
    graph m(%qkv: f32[{batch},{seq},{3 * e}]) -> (f32[{batch},{seq},{e}]{', ' + head if returns != '%8' else ''}) {{
      {f'const %mask: {mask}' if mask else ''}
      %0: {part}, %1: {part}, %2: {part} = split(%qkv) {{sizes=[{e}, {e}, {e}], dim=-1}}
      %q4: {head} = reshape(%0) {{shape=[{batch}, {seq}, {heads}, {dim}]}}
      %k4: {head} = reshape(%1) {{shape=[{batch}, {seq}, {heads}, {dim}]}}
      %v4: {head} = reshape(%2) {{shape=[{batch}, {seq}, {heads}, {dim}]}}
      %q: {both} = transpose(%q4) {{dim0=1, dim1=2}}
      %k: {both} = transpose(%k4) {{dim0=1, dim1=2}}
      %v: {both} = transpose(%v4) {{dim0=1, dim1=2}}
      %6: {both} = scaled_dot_product_attention(%q, %k, %v{mask_operand}) {attrs}
      %7: {head} = transpose(%6) {{dim0=1, dim1=2}}
      %8: f32[{batch},{seq},{e}] = reshape(%7) {{shape=[{batch}, {seq}, {e}]}}
      return {returns}
    }}"""


def _check(text: str, constants: dict | None = None) -> None:
    graph = parse_graph(text, constants=constants or {})
    [chain] = find_packed_attention(graph.nodes, graph.is_output)
    assert len(chain.nodes) == 10 and chain.output is graph.outputs[0]
    qkv = torch.randn(graph.inputs[0].type.static_shape())
    out = [torch.empty(chain.output.type.static_shape())]
    call = packed_attention_call(chain)
    assert call(qkv, out=out) is out
    torch.testing.assert_close(out[0], run_graph(graph, qkv)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(call(qkv.clone())[0], out[0])


@pytest.mark.parametrize("shape", [(1, 16, 2, 8), (2, 5, 3, 4), (1, 1, 1, 3)])
def test_plain_attention_matches_the_reference(shape: tuple[int, int, int, int]) -> None:
    _check(_graph(*shape))


def test_scale_and_causal() -> None:
    _check(_graph(2, 7, 3, 4, "{is_causal=true, scale=0.3}"))


def test_a_scale_of_zero_is_declined() -> None:
    """ONNX Runtime reads scale 0 as "not given" (1/sqrt(dim)); PyTorch's scale 0 makes uniform weights."""
    graph = parse_graph(_graph(1, 16, 2, 8, "{scale=0.0}"))
    assert find_packed_attention(graph.nodes, graph.is_output) == []


def test_constant_bool_and_float_masks() -> None:
    keep = torch.rand(1, 1, 6, 6) > 0.4
    keep |= torch.eye(6, dtype=torch.bool)  # no row masked whole
    _check(_graph(2, 6, 2, 4, mask="bool[1,1,6,6]"), {"mask": keep})
    _check(_graph(2, 6, 2, 4, mask="f32[6,6]"), {"mask": torch.randn(6, 6)})


def test_declines_returned_intermediates_wholly_masked_rows_and_run_time_masks() -> None:
    returned = parse_graph(_graph(1, 4, 2, 4, returns="%8, %7"))
    assert find_packed_attention(returned.nodes, returned.is_output) == []
    keep = torch.ones(4, 4, dtype=torch.bool)
    keep[2] = False
    masked = parse_graph(_graph(1, 4, 2, 4, mask="bool[4,4]"), constants={"mask": keep})
    assert find_packed_attention(masked.nodes, masked.is_output) == []
    text = _graph(1, 4, 2, 4, mask="f32[4,4]").replace("const %mask: f32[4,4]", "")
    text = text.replace("graph m(%qkv: f32[1,4,24])", "graph m(%qkv: f32[1,4,24], %mask: f32[4,4])")
    run_time = parse_graph(text)
    assert find_packed_attention(run_time.nodes, run_time.is_output) == []


def test_a_float_mask_hiding_a_whole_row_is_declined_and_that_row_is_zero_as_in_eager(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """PyTorch's CPU kernel gives 0 for a query whose mask row is all -inf; the session would give NaN."""
    mask = torch.randn(4, 4)
    mask[2] = float("-inf")
    graph = parse_graph(_graph(1, 4, 2, 4, mask="f32[4,4]"), constants={"mask": mask})
    assert find_packed_attention(graph.nodes, graph.is_output) == []
    monkeypatch.setattr(ort_attention, "fastest_runs", lambda runs, *a, **k: {"session": 0.0, "nodes": 1.0})
    executable = build_executable(graph.clone(), [NumbaBackend(), ReferenceBackend()])
    qkv = torch.randn(1, 4, 24)
    q, k, v = (t.reshape(1, 4, 2, 4).transpose(1, 2) for t in qkv.split(8, dim=-1))
    eager = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(1, 4, 8)
    assert (eager[0, 2] == 0).all() and eager.isfinite().all()
    torch.testing.assert_close(executable(qkv)[0], eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(0, 4, 2, 4), (2, 0, 2, 4)])
def test_declines_empty_shapes(shape: tuple[int, int, int, int]) -> None:
    """ONNX Runtime refuses to run a session whose output is empty."""
    graph = parse_graph(_graph(*shape))
    assert find_packed_attention(graph.nodes, graph.is_output) == []
    executable = build_executable(graph.clone(), [NumbaBackend(), ReferenceBackend()])
    assert executable(torch.randn(graph.inputs[0].type.static_shape()))[0].shape == (shape[0], shape[1], 8)


def test_the_backend_runs_the_chain_and_matches_eager() -> None:
    graph = parse_graph(_graph(1, 32, 2, 16))
    executable = build_executable(graph.clone(), [NumbaBackend(), ReferenceBackend()])
    qkv = torch.randn(1, 32, 96)
    torch.testing.assert_close(executable(qkv)[0], run_graph(graph, qkv)[0], rtol=1e-5, atol=1e-5)
