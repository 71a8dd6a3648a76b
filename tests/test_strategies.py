"""The graph strategies: drawn graphs verify, run, stay finite and survive a print/parse round trip."""

from __future__ import annotations

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

from heteropass.ir import DType, TensorType, parse_graph, run_graph, verify
from heteropass.testing import assert_outputs_close, graph_and_inputs, graphs, tensor_types

MIXED = graph_and_inputs(input_dtypes=(DType.f32, DType.f64, DType.i64))


@given(MIXED)
def test_drawn_graphs_verify_and_run_to_finite_values(case: tuple) -> None:
    graph, inputs = case
    verify(graph)
    assert [TensorType.of(t) for t in inputs] == [v.type for v in graph.inputs]
    assert all(t.count_nonzero() > 0 for t in inputs)
    for op in graph.op_counts():
        event(f"op {op}")  # shown by --hypothesis-show-statistics: which ops the draws reach
    for value, result in zip(graph.outputs, run_graph(graph, *inputs), strict=True):
        assert TensorType.of(result) == value.type
        if result.is_floating_point():
            assert result.isfinite().all(), f"%{value.name} is not finite\n{graph}"


@given(MIXED)
def test_print_parse_round_trip(case: tuple) -> None:
    graph, inputs = case
    text = str(graph)
    parsed = parse_graph(text, constants={name: v.const for name, v in graph.constants.items()})
    verify(parsed)
    assert str(parsed) == text
    assert_outputs_close(run_graph(parsed, *inputs), run_graph(graph, *inputs), rtol=0.0, atol=0.0, context=text)


@given(graphs(families=("matmul",), max_nodes=3))
def test_families_restrict_the_ops_drawn(graph) -> None:
    assert set(graph.op_counts()) <= {"matmul"}


def test_unknown_family_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown op families"):
        graphs(families=("binary", "fft"))


@given(st.data())
def test_tensor_types_are_static_and_bounded(data: st.DataObject) -> None:
    type = data.draw(tensor_types((DType.f32, DType.i64), min_rank=1, max_rank=3, max_dim=4))
    assert type.is_static and 1 <= type.rank <= 3
    assert all(1 <= d <= 4 for d in type.shape)
    assert type.meta().dtype in (torch.float32, torch.int64)
