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
    # %0 has a run-time weight, %1 a bias where %3 has none, weight %a has two readers, %4 reads another input.
    unchanged(MergeParallelLinearsPass(), text)


def test_a_shared_bias_is_copied_into_the_merged_one() -> None:
    """Deduplicated constants (one all-zero bias for Q, K, V and another layer) still merge; the shared
    bias stays for its other reader."""
    check_pass(MergeParallelLinearsPass(), """
    graph g(%x: f32[5,4]) -> (f32[5,2], f32[5,2], f32[5,2]) {
      const %a: f32[2,4] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
      const %c: f32[2,4] = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
      const %d: f32[2,2] = [1.0, 0.5, -1.0, 2.0]
      const %zero: f32[2] = [0.0, 0.0]
      %0: f32[5,2] = linear(%x, %a, %zero)
      %1: f32[5,2] = linear(%x, %c, %zero)
      %2: f32[5,2] = linear(%0, %d, %zero)
      return %0, %1, %2
    }""", """
    graph g(%x: f32[5,4]) -> (f32[5,2], f32[5,2], f32[5,2]) {
      const %0_1.weight: f32[4,4]
      const %0_1.bias: f32[4] = [0.0, 0.0, 0.0, 0.0]
      const %d: f32[2,2] = [1.0, 0.5, -1.0, 2.0]
      const %zero: f32[2] = [0.0, 0.0]
      %0_1: f32[5,4] = linear(%x, %0_1.weight, %0_1.bias)
      %0: f32[5,2], %1: f32[5,2] = split(%0_1) {sizes=[2, 2], dim=-1}
      %2: f32[5,2] = linear(%0, %d, %zero)
      return %0, %1, %2
    }""")


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


def test_int8_linears_merge_with_their_scales_when_their_attributes_agree() -> None:
    graph = parse_graph("""
    graph g(%x: f32[3,8]) -> (f32[3,4], f32[3,2], f32[3,2]) {
      const %gate: i8[4,8]
      const %gate_s: f32[4,2]
      const %up: i8[2,8]
      const %up_s: f32[2,2]
      const %other: i8[2,8]
      const %other_s: f32[2,2]
      %g: f32[3,4] = linear_weight_int8(%x, %gate, %gate_s) {block_size=4, activation_bits=16}
      %u: f32[3,2] = linear_weight_int8(%x, %up, %up_s) {block_size=4, activation_bits=16}
      %o: f32[3,2] = linear_weight_int8(%x, %other, %other_s) {block_size=4}
      return %g, %u, %o
    }""", constants={"gate": torch.randint(-127, 128, (4, 8), dtype=torch.int8), "gate_s": torch.rand(4, 2) + 0.1,
                     "up": torch.randint(-127, 128, (2, 8), dtype=torch.int8), "up_s": torch.rand(2, 2) + 0.1,
                     "other": torch.randint(-127, 128, (2, 8), dtype=torch.int8), "other_s": torch.rand(2, 2) + 0.1})
    original = graph.clone()
    result = MergeParallelLinearsPass()(graph)
    verify(graph)
    assert result.stats == {"groups_merged": 1, "linears_merged": 2}
    assert [n.op for n in graph.nodes] == ["linear_weight_int8", "split", "linear_weight_int8"]
    merged = graph.nodes[0]
    assert merged.attrs == {"block_size": 4, "activation_bits": 16} and merged.name == "g_u"
    assert [tuple(v.type.static_shape()) for v in merged.inputs[1:]] == [(6, 8), (6, 2)]
    x = torch.randn(3, 8)
    for got, want in zip(run_graph(graph, x), run_graph(original, x), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _linear_params(draw: st.DrawFn, graph: Graph, i: int, op: str, width: int, features: int) -> list:
    if op == "linear":
        return [graph.add_constant(f"w{i}", torch.randn(width, features))]
    weight = graph.add_constant(f"w{i}", torch.randint(-127, 128, (width, features), dtype=torch.int8))
    block = draw(st.sampled_from([0, 2])) if op == "linear_weight_int8" else 0
    scale_shape = (width, -(-features // block)) if block else (width,)
    return [weight, graph.add_constant(f"s{i}", torch.rand(scale_shape) / 64 + 1e-3)]


_ATTRS = {"linear": [{}], "linear_weight_int8": [{"activation_bits": 32}, {"activation_bits": 16}],
          "linear_dynamic_int8": [{"granularity": "row"}, {"granularity": "tensor"}]}


@st.composite
def _parallel_linears(draw: st.DrawFn) -> tuple[Graph, list[torch.Tensor]]:
    """An input read by 1-5 linears (float or int8 with random attributes) of random widths, each with or
    without a bias, some float ones with a run-time weight, and a relu on some of their outputs."""
    rows, features = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    graph = Graph("parallel")
    x = graph.add_input("x", TensorType((rows, features), DType.f32))
    inputs = [torch.randn(rows, features)]
    outputs = []
    for i in range(draw(st.integers(1, 5))):
        width = draw(st.integers(1, 5))
        op = draw(st.sampled_from(sorted(_ATTRS)))
        if op == "linear" and draw(st.booleans()) and i:
            params = [graph.add_input(f"w{i}", TensorType((width, features), DType.f32))]
            inputs.append(torch.randn(width, features))
        else:
            params = _linear_params(draw, graph, i, op, width, features)
        attrs = dict(draw(st.sampled_from(_ATTRS[op])))
        if op == "linear_weight_int8":
            attrs["block_size"] = 2 if params[1].type.rank == 2 else 0
        if draw(st.booleans()):
            params.append(graph.add_constant(f"b{i}", torch.randn(width)))
        y = graph.add_node(op, [x, *params], attrs).output
        outputs.append(graph.call("relu", y) if draw(st.booleans()) else y)
    graph.set_outputs(outputs)
    return graph, inputs


@settings(deadline=None, max_examples=150)
@given(_parallel_linears())
def test_random_groups_keep_their_meaning(case: tuple[Graph, list[torch.Tensor]]) -> None:
    graph, inputs = case
    assert_pass_preserves_semantics(MergeParallelLinearsPass(), graph, inputs)
