"""plan-memory: liveness, buffer sharing, aliasing through views, in-place writes and the reported bytes."""

from __future__ import annotations

import pytest

from heteropass.ir import DType, Graph, TensorType, format_graph, parse_graph
from heteropass.passes.plan_memory import ALIGN, PlanMemoryPass, plan_memory

# f32[16,16] is 1024 bytes.
CHAIN = """\
graph chain(%x: f32[16,16]) -> (f32[16,16]) {
  %0: f32[16,16] = exp(%x)
  %1: f32[16,16] = matmul(%0, %0)
  %2: f32[16,16] = tanh(%1)
  %3: f32[16,16] = matmul(%2, %x)
  %4: f32[16,16] = relu(%3)
  return %4
}
"""

DIAMOND = """\
graph diamond(%x: f32[16,16]) -> (f32[16,16]) {
  %0: f32[16,16] = relu(%x)
  %1: f32[16,16] = exp(%0)
  %2: f32[16,16] = tanh(%0)
  %3: f32[16,16] = add(%1, %2)
  %4: f32[16,16] = matmul(%3, %3)
  return %4
}
"""


def test_chain_liveness_sharing_and_bytes() -> None:
    plan = plan_memory(parse_graph(CHAIN))
    assert plan.live == {"0": (0, 1), "1": (1, 2), "2": (2, 3), "3": (3, 4)}
    # tanh overwrites the matmul result it is the last reader of; %3 reuses %0's buffer once %0 is dead.
    assert plan.sharing() == [["0", "3"], ["1", "2"]]
    assert plan.inplace == {"2": "1"}
    assert plan.stats() == {"peak_bytes": 3072, "unplanned_bytes": 5120, "live_peak_bytes": 2048,
                            "planned_bytes": 2048, "buffers": 2, "planned_values": 4, "inplace": 1,
                            "unsized_values": 0}


def test_diamond_with_and_without_inplace() -> None:
    graph = parse_graph(DIAMOND)
    plan = plan_memory(graph)
    assert plan.live == {"0": (0, 2), "1": (1, 3), "2": (2, 3), "3": (3, 4)}
    assert plan.sharing() == [["0", "2"], ["1", "3"]]
    assert plan.inplace == {"2": "0", "3": "1"}
    assert (plan.pool_bytes, plan.peak_bytes, plan.live_peak_bytes, plan.unplanned_bytes) == (2048, 3072, 3072, 5120)

    plain = plan_memory(graph, inplace_steps=())
    # %0 dies after step 2, so %3 (born at step 3) can take its buffer; %1 and %2 are still being read.
    assert plain.sharing() == [["0", "3"], ["1"], ["2"]]
    assert plain.inplace == {}
    assert (plain.pool_bytes, plain.peak_bytes) == (3072, 4096)


def test_views_keep_their_producer_alive() -> None:
    plan = plan_memory(parse_graph("""\
graph views(%x: f32[16,16]) -> (f32[256]) {
  %0: f32[16,16] = exp(%x)
  %1: f32[256] = reshape(%0) {shape=[256]}
  %2: f32[16,16] = neg(%x)
  %3: f32[256] = reshape(%2) {shape=[256]}
  %4: f32[256] = add(%1, %3)
  return %4
}
"""))
    # Without the views, %0 would be dead after step 1 and %2 would take its buffer.
    assert plan.live == {"0": (0, 4), "2": (2, 4)}
    assert plan.sharing() == [["0"], ["2"]]
    assert plan.inplace == {}  # add reads views, whose storage may be laid out differently from its output


def test_storage_a_graph_output_views_is_not_pooled() -> None:
    plan = plan_memory(parse_graph("""\
graph escape(%x: f32[16,16]) -> (f32[256], f32[16,16]) {
  %0: f32[16,16] = exp(%x)
  %1: f32[256] = reshape(%0) {shape=[256]}
  %2: f32[16,16] = neg(%x)
  %3: f32[16,16] = sin(%2)
  return %1, %3
}
"""))
    assert plan.sharing() == [["2"]]
    assert plan.live_peak_bytes == plan.unplanned_bytes == 3072
    assert plan.peak_bytes == 1024 + 2048  # the pool, plus %0 and %3 held for the caller


def test_bitcast_is_a_view_of_its_operand() -> None:
    """bitcast reinterprets its operand's bytes in place (x.view(dtype)): the operand stays alive while the
    bitcast is read, and a returned bitcast keeps its operand out of the pool."""
    plan = plan_memory(parse_graph("""\
graph bits(%x: f32[16,16]) -> (f32[16,16]) {
  %0: f32[16,16] = exp(%x)
  %1: i32[16,16] = bitcast(%0) {dtype=i32}
  %2: f32[16,16] = neg(%x)
  %3: f32[16,16] = sin(%2)
  %4: i32[16,16] = bitcast(%3) {dtype=i32}
  %5: i32[16,16] = add(%1, %4)
  %6: f32[16,16] = bitcast(%5) {dtype=f32}
  return %6
}
"""))
    assert plan.live["0"] == (0, 5) and plan.live["3"] == (3, 5)
    assert "0" not in plan.inplace.values() and "5" not in plan.buffer_of


def test_opaque_and_fused_results_may_view_their_operands() -> None:
    plan = plan_memory(parse_graph("""\
graph maybe(%x: f32[4,8]) -> (f32[4,8]) {
  %0: f32[4,8] = exp(%x)
  %1: f32[8,4] = fused[transpose](%0) {kind="generic"}
    graph region(%a: f32[4,8]) -> (f32[8,4]) {
      %0: f32[8,4] = transpose(%a) {dim0=0, dim1=1}
      return %0
    }
  %2: f32[4,8] = neg(%x)
  %3: f32[4,8] = transpose(%1) {dim0=0, dim1=1}
  %4: f32[4,8] = add(%3, %2)
  return %4
}
"""))
    # The region returns a view of %0, so %0 lives until %3 is read; the region's output owns no storage.
    assert plan.live == {"0": (0, 4), "2": (2, 4)}
    assert plan.sharing() == [["0"], ["2"]]


@pytest.mark.parametrize(("body", "inplace"), [
    ("%0: f32[16] = exp(%x)\n  %1: f32[16] = neg(%0)\n  %2: f32[16] = cumsum(%1) {dim=-1}", {"1": "0"}),
    ("%0: f32[16] = exp(%x)\n  %1: f32[16] = add(%0, %0)\n  %2: f32[16] = cumsum(%1) {dim=-1}", {"1": "0"}),
    # the input is a graph input / a constant
    ("%0: f32[16] = neg(%x)\n  %1: f32[16] = exp(%0)\n  %2: f32[16] = cumsum(%1) {dim=-1}", {"1": "0"}),
    ("%0: f32[16] = mul(%x, %c)\n  %1: f32[16] = mul(%c, %0)\n  %2: f32[16] = cumsum(%1) {dim=-1}", {"1": "0"}),
    # the input is read again later
    ("%0: f32[16] = exp(%x)\n  %1: f32[16] = neg(%0)\n  %2: f32[16] = add(%1, %0)", {"2": "1"}),
    # another dtype, another shape (broadcast), not elementwise
    ("%0: f32[16] = exp(%x)\n  %1: f16[16] = cast(%0) {dtype=f16}\n  %2: f32[16] = cast(%1) {dtype=f32}", {}),
    ("%0: f32[16] = exp(%x)\n  %1: f32[2,16] = add(%0, %y)\n  %2: f32[2,16] = cumsum(%1) {dim=-1}", {}),
    ("%0: f32[16] = exp(%x)\n  %1: f32[16] = cumsum(%0) {dim=0}\n  %2: f32[16] = cumsum(%1) {dim=-1}", {}),
    # a view of the input is read by the same node
    ("%0: f32[16] = exp(%x)\n  %v: f32[16] = flip(%0) {dims=[0]}\n  %1: f32[16] = add(%0, %v)\n"
     "  %2: f32[16] = cumsum(%1) {dim=-1}", {"1": "v"}),
    ("%0: f32[16] = exp(%x)\n  %v: f32[1,16] = unsqueeze(%0) {dim=0}\n  %w: f32[16] = squeeze(%v)\n"
     "  %1: f32[16] = add(%0, %w)\n  %2: f32[16] = cumsum(%1) {dim=-1}", {}),
])
def test_inplace_is_marked_only_when_legal(body: str, inplace: dict[str, str]) -> None:
    text = (f"graph g(%x: f32[16], %y: f32[2,16]) -> (f32[]) {{\n  const %c: f32[16]\n  {body}\n"
            f"  %out: f32[] = sum(%2)\n  return %out\n}}\n")
    assert plan_memory(parse_graph(text)).inplace == inplace


def test_symbolic_values_are_counted_but_not_planned() -> None:
    graph = Graph("sym")
    rows = TensorType(("n", 16), DType.f32)
    x = graph.add_input("x", rows)
    exp = graph.add_node("exp", [x], output_types=[rows]).output
    graph.set_outputs([graph.add_node("neg", [exp], output_types=[rows]).output])
    plan = plan_memory(graph)
    assert (plan.buffer_of, plan.unsized, plan.unplanned_bytes) == ({}, 2, 0)


def test_buffers_are_aligned_and_raw_bytes_serve_any_dtype() -> None:
    plan = plan_memory(parse_graph("""\
graph mixed(%x: f32[3]) -> (i64[]) {
  %0: f32[3] = exp(%x)
  %1: i64[3] = cast(%0) {dtype=i64}
  %2: bool[3] = gt(%1, %1)
  %3: i64[] = sum(%2) {dims=[0]}
  return %3
}
"""))
    assert plan.sharing() == [["0", "2"], ["1"]]
    assert plan.buffer_bytes == [ALIGN, ALIGN]


def test_pass_reports_stats_and_leaves_the_graph_alone() -> None:
    graph = parse_graph(CHAIN)
    before = format_graph(graph)
    result = PlanMemoryPass()(graph)
    assert not result.modified
    assert format_graph(result.graph) == before
    assert result.stats == plan_memory(graph).stats()
    assert (PlanMemoryPass.name, PlanMemoryPass.opt_level) == ("plan-memory", 2)
