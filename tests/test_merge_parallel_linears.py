"""merge-parallel-linears: Before/Expected, what must stay apart, and random groups of linears."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from heteropass.ir import DType, Graph, TensorType, parse_graph, run_graph, verify
from heteropass.passes.merge_parallel_linears import MergeParallelLinearsPass
from heteropass.testing.assertions import assert_pass_preserves_semantics

from .test_rewrite import check_pass, unchanged


def _constants(**shapes: tuple[int, ...]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def test_query_key_value_projections_become_one_product_and_a_split() -> None:
    graph = parse_graph("""
    graph g(%x: f32[2,5,4]) -> (f32[2,5,3], f32[2,5,2], f32[2,5,3]) {
      const %wq: f32[3,4]
      const %bq: f32[3]
      const %wk: f32[2,4]
      const %bk: f32[2]
      const %wv: f32[3,4]
      const %bv: f32[3]
      %q: f32[2,5,3] = linear(%x, %wq, %bq)
      %k: f32[2,5,2] = linear(%x, %wk, %bk)
      %v: f32[2,5,3] = linear(%x, %wv, %bv)
      %r: f32[2,5,3] = relu(%v)
      return %q, %k, %r
    }""", constants=_constants(wq=(3, 4), bq=(3,), wk=(2, 4), bk=(2,), wv=(3, 4), bv=(3,)))
    original = graph.clone()
    result = MergeParallelLinearsPass()(graph)
    verify(graph)
    assert result.stats == {"groups_merged": 1, "linears_merged": 3}
    assert [n.op for n in graph.nodes] == ["linear", "split", "relu"]
    merged = graph.nodes[0]
    assert merged.inputs[1].type == TensorType((8, 4), DType.f32) and merged.inputs[2].type.shape == (8,)
    assert graph.nodes[1].attrs == {"sizes": (3, 2, 3), "dim": -1}
    assert sorted(graph.constants) == ["q_k_v.bias", "q_k_v.weight"]
    assert [v.name for v in graph.nodes[1].outputs] == ["q", "k", "v"] and graph.nodes[0].name == "q_k_v"
    x = torch.randn(2, 5, 4)
    for got, want in zip(run_graph(graph, x), run_graph(original, x), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not MergeParallelLinearsPass()(graph).modified


def test_linears_that_cannot_share_a_product_stay_apart() -> None:
    text = """
    graph g(%x: f32[5,4], %y: f32[5,4], %w: f32[3,4]) -> (f32[5,3], f32[5,3], f32[5,3], f32[5,2], f32[5,2]) {
      const %a: f32[3,4]
      const %b: f32[3]
      const %c: f32[2,4]
      const %d: f32[2,4]
      %0: f32[5,3] = linear(%x, %w)
      %1: f32[5,3] = linear(%x, %a, %b)
      %2: f32[5,3] = linear(%y, %a)
      %3: f32[5,2] = linear(%x, %c)
      %4: f32[5,2] = linear(%y, %d)
      return %0, %1, %2, %3, %4
    }"""
    # %0 has a run-time weight, %1 a bias where %3 has none, %a has two readers, %4 reads another input.
    unchanged(MergeParallelLinearsPass(), text)


def test_two_bias_free_linears_merge() -> None:
    check_pass(MergeParallelLinearsPass(), """
    graph g(%x: f32[5,4]) -> (f32[5,2], f32[5,3]) {
      const %a: f32[2,4] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
      const %c: f32[3,4] = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
      %0: f32[5,2] = linear(%x, %a)
      %1: f32[5,3] = linear(%x, %c)
      return %0, %1
    }""", """
    graph g(%x: f32[5,4]) -> (f32[5,2], f32[5,3]) {
      const %0_1.weight: f32[5,4]
      %0_1: f32[5,5] = linear(%x, %0_1.weight)
      %0: f32[5,2], %1: f32[5,3] = split(%0_1) {sizes=[2, 3], dim=-1}
      return %0, %1
    }""")


@st.composite
def _parallel_linears(draw: st.DrawFn) -> tuple[Graph, list[torch.Tensor]]:
    """An input read by 1-5 linears of random widths, each with or without a bias, some with a run-time
    weight, and a relu on some of their outputs."""
    rows, features = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    graph = Graph("parallel")
    x = graph.add_input("x", TensorType((rows, features), DType.f32))
    inputs = [torch.randn(rows, features)]
    outputs = []
    for i in range(draw(st.integers(1, 5))):
        width = draw(st.integers(1, 5))
        if draw(st.booleans()) and i:
            weight = graph.add_input(f"w{i}", TensorType((width, features), DType.f32))
            inputs.append(torch.randn(width, features))
        else:
            weight = graph.add_constant(f"w{i}", torch.randn(width, features))
        params = [weight] + ([graph.add_constant(f"b{i}", torch.randn(width))] if draw(st.booleans()) else [])
        y = graph.add_node("linear", [x, *params]).output
        outputs.append(graph.call("relu", y) if draw(st.booleans()) else y)
    graph.set_outputs(outputs)
    return graph, inputs


@settings(deadline=None)
@given(_parallel_linears())
def test_random_groups_keep_their_meaning(case: tuple[Graph, list[torch.Tensor]]) -> None:
    graph, inputs = case
    assert_pass_preserves_semantics(MergeParallelLinearsPass(), graph, inputs)
