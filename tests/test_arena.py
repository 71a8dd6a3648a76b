"""arena.py: values that stay inside a partition share buffers made once, never while both are live;
views of them are made once; nothing that leaves the partition, or may become part of an output, lives there."""

from __future__ import annotations

import torch

from heteropass.backends.arena import VIEW_OPS, StepIO, plan_arena, typed
from heteropass.ir import Graph, get_op, parse_graph

LIBRARY = ("transpose", "reshape", "take")


def _plan(text: str):
    graph = parse_graph(text)
    steps = [StepIO([v for v in node.inputs if v.const is None], list(node.outputs), node.op not in LIBRARY,
                    node.op in LIBRARY, node.op in VIEW_OPS) for node in graph.nodes]

    def run_view(i: int, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        node = graph.nodes[i]
        return [get_op(node.op).reference(*tensors, **node.attrs)]

    return graph, plan_arena(steps, graph.outputs, run_view)


def _ids(graph: Graph) -> dict[str, int]:
    return {v.name: id(v) for node in graph.nodes for v in node.outputs}


def test_buffers_are_shared_only_between_values_that_are_not_live_together() -> None:
    graph, plan = _plan("""
    graph m(%x: f32[4,6]) -> (f32[4,6]) {
      %0: f32[4,6] = relu(%x)
      %1: f32[6,4] = transpose(%0) {dim0=0, dim1=1}
      %2: f32[6,4] = exp(%1)
      %3: f32[6,4] = neg(%2)
      %4: f32[4,6] = transpose(%3) {dim0=0, dim1=1}
      %5: f32[4,6] = add(%4, %x)
      return %5
    }""")
    ids = _ids(graph)
    buffer = {name: plan.buffer_of.get(ids[name]) for name in ("0", "2", "3", "5")}
    assert buffer["5"] is None  # an output of the partition
    assert buffer["0"] != buffer["2"]  # %1, a view of %0, is read while %2 is written
    assert buffer["3"] == buffer["0"]  # %0 and its view are dead once %2 is made
    assert plan.views == {1, 4}
    assert {ids["1"], ids["4"]} <= plan.static and ids["1"] not in plan.contiguous
    assert len(plan.buffer_bytes) == 2 and all(n == 4 * 6 * 4 for n in plan.buffer_bytes)


def test_views_of_an_output_and_copying_reshapes_stay_out() -> None:
    graph, plan = _plan("""
    graph m(%x: f32[4,6]) -> (f32[24], f32[3,8]) {
      %0: f32[4,6] = relu(%x)
      %1: f32[6,4] = transpose(%0) {dim0=0, dim1=1}
      %2: f32[24] = reshape(%1) {shape=[24]}
      %3: f32[24] = exp(%2)
      %4: f32[4,6] = sigmoid(%x)
      %5: f32[3,8] = reshape(%4) {shape=[3, 8]}
      return %3, %5
    }""")
    ids = _ids(graph)
    assert ids["0"] in plan.buffer_of and plan.views == {1}  # the reshape of a transpose copies
    assert ids["2"] not in plan.static
    assert ids["4"] not in plan.static  # its view is returned
    # The copy's operand, a view of %0's buffer, keeps that buffer until the copy is read.
    assert ids["3"] not in plan.buffer_of


def test_a_lookup_that_may_alias_its_operand_extends_its_buffer() -> None:
    graph, plan = _plan("""
    graph m(%x: f32[4,6], %i: i64[3]) -> (f32[3,6]) {
      %0: f32[4,6] = relu(%x)
      %1: f32[3,6] = take(%0, %i) {dim=0}
      %2: f32[4,6] = exp(%x)
      %3: f32[3,6] = take(%2, %i) {dim=0}
      %4: f32[3,6] = add(%1, %3)
      return %4
    }""")
    ids = _ids(graph)
    # %1 comes from a PyTorch call on %0: %0's buffer must outlive %1, read by the last node.
    assert plan.buffer_of[ids["0"]] != plan.buffer_of[ids["2"]]


def test_typed_views_the_start_of_a_byte_buffer() -> None:
    buffer = torch.empty(100, dtype=torch.uint8)
    t = typed(buffer, torch.float32, (3, 4))
    assert t.shape == (3, 4) and t.is_contiguous() and t.data_ptr() == buffer.data_ptr()
    assert typed(buffer, torch.int64, (0,)).numel() == 0
