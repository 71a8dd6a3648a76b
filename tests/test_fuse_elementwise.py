"""fuse-elementwise: Before/Expected graphs, what it must leave alone, and random graphs."""

from __future__ import annotations

from hypothesis import given

from heteropass.ir import DType
from heteropass.passes.base import PassContext, PassResult
from heteropass.passes.fuse_elementwise import FuseElementwisePass
from heteropass.testing import assert_pass_preserves_semantics, graph_and_inputs

from .fusion_checks import check_fusion, check_regions


def check(before: str, expected: str, ctx: PassContext | None = None) -> PassResult:
    return check_fusion(FuseElementwisePass, before, expected, ctx)


def unchanged(text: str) -> None:
    assert not check(text, text).modified


def test_fuses_a_chain_with_broadcast_operands_and_copies_small_constants() -> None:
    result = check("""
    graph g(%x: f32[4,8], %b: f32[8]) -> (f32[4,8]) {
      const %half: f32[] = 0.5
      %0: f32[4,8] = add(%x, %b)
      %1: f32[4,8] = mul(%0, %half)
      %2: f32[4,8] = relu(%1)
      return %2
    }""", """
    graph g(%x: f32[4,8], %b: f32[8]) -> (f32[4,8]) {
      %2: f32[4,8] = fused[add, mul, relu](%x, %b) {kind="elementwise"}
        graph r(%x: f32[4,8], %b: f32[8]) -> (f32[4,8]) {
          const %half: f32[] = 0.5
          %0: f32[4,8] = add(%x, %b)
          %1: f32[4,8] = mul(%0, %half)
          %2: f32[4,8] = relu(%1)
          return %2
        }
      return %2
    }""")
    assert result.stats == {"regions": 1, "nodes_fused": 3}


def test_tril_and_triu_stay_out_of_regions() -> None:
    """Their result depends on each element's position, which kernels do not see: a region holding one
    would run whole on the reference backend."""
    check("""
    graph g(%x: f32[4,8]) -> (f32[4,8]) {
      %0: f32[4,8] = mul(%x, %x)
      %1: f32[4,8] = relu(%0)
      %2: f32[4,8] = tril(%1)
      %3: f32[4,8] = triu(%2) {diagonal=-1}
      return %3
    }""", """
    graph g(%x: f32[4,8]) -> (f32[4,8]) {
      %1: f32[4,8] = fused[mul, relu](%x) {kind="elementwise"}
        graph r(%x: f32[4,8]) -> (f32[4,8]) {
          %0: f32[4,8] = mul(%x, %x)
          %1: f32[4,8] = relu(%0)
          return %1
        }
      %2: f32[4,8] = tril(%1)
      %3: f32[4,8] = triu(%2) {diagonal=-1}
      return %3
    }""")


def test_a_value_read_outside_becomes_a_region_output_not_a_recomputation() -> None:
    check("""
    graph g(%x: f32[4,8], %w: f32[8,8]) -> (f32[4,8]) {
      %0: f32[4,8] = exp(%x)
      %1: f32[4,8] = neg(%0)
      %2: f32[4,8] = matmul(%0, %w)
      %3: f32[4,8] = add(%1, %2)
      return %3
    }""", """
    graph g(%x: f32[4,8], %w: f32[8,8]) -> (f32[4,8]) {
      %0: f32[4,8], %1: f32[4,8] = fused[exp, neg](%x) {kind="elementwise"}
        graph r(%x: f32[4,8]) -> (f32[4,8], f32[4,8]) {
          %0: f32[4,8] = exp(%x)
          %1: f32[4,8] = neg(%0)
          return %0, %1
        }
      %2: f32[4,8] = matmul(%0, %w)
      %3: f32[4,8] = add(%1, %2)
      return %3
    }""")


def test_never_closes_a_cycle_through_a_node_it_cannot_fuse() -> None:
    # exp -> transpose -> add and exp -> add: {exp, add} would run both before and after the transpose.
    check("""
    graph g(%x: f32[4,4]) -> (f32[4,4]) {
      %0: f32[4,4] = exp(%x)
      %1: f32[4,4] = transpose(%0) {dim0=0, dim1=1}
      %2: f32[4,4] = add(%0, %1)
      %3: f32[4,4] = relu(%2)
      return %3
    }""", """
    graph g(%x: f32[4,4]) -> (f32[4,4]) {
      %0: f32[4,4] = exp(%x)
      %1: f32[4,4] = transpose(%0) {dim0=0, dim1=1}
      %3: f32[4,4] = fused[add, relu](%0, %1) {kind="elementwise"}
        graph r(%0: f32[4,4], %1: f32[4,4]) -> (f32[4,4]) {
          %2: f32[4,4] = add(%0, %1)
          %3: f32[4,4] = relu(%2)
          return %3
        }
      return %3
    }""")


def test_moves_readers_of_the_region_after_it() -> None:
    # The sum between exp and mul reads exp: it must follow the region that now computes exp.
    check("""
    graph g(%x: f32[4,8]) -> (f32[4], f32[4,8]) {
      %0: f32[4,8] = exp(%x)
      %1: f32[4] = sum(%0) {dims=[1]}
      %2: f32[4,8] = mul(%0, %x)
      return %1, %2
    }""", """
    graph g(%x: f32[4,8]) -> (f32[4], f32[4,8]) {
      %0: f32[4,8], %2: f32[4,8] = fused[exp, mul](%x) {kind="elementwise"}
        graph r(%x: f32[4,8]) -> (f32[4,8], f32[4,8]) {
          %0: f32[4,8] = exp(%x)
          %2: f32[4,8] = mul(%0, %x)
          return %0, %2
        }
      %1: f32[4] = sum(%0) {dims=[1]}
      return %1, %2
    }""")


def test_leaves_alone_single_ops_other_shapes_and_dead_nodes() -> None:
    unchanged("""
    graph g(%x: f32[4,8], %b: f32[8]) -> (f32[4,8]) {
      %0: f32[8] = neg(%b)
      %1: f32[4,8] = add(%x, %0)
      %2: f32[4,8] = exp(%x)
      return %1
    }""")


def test_min_nodes_option_wraps_single_ops() -> None:
    check("""
    graph g(%x: f32[4]) -> (f32[4]) {
      %0: f32[4] = exp(%x)
      return %0
    }""", """
    graph g(%x: f32[4]) -> (f32[4]) {
      %0: f32[4] = fused[exp](%x) {kind="elementwise"}
        graph r(%x: f32[4]) -> (f32[4]) {
          %0: f32[4] = exp(%x)
          return %0
        }
      return %0
    }""", PassContext(options={"fuse-elementwise": {"min_nodes": 1}}))


@given(case=graph_and_inputs(input_dtypes=(DType.f32, DType.f32, DType.f64, DType.i64)))
def test_random_graphs_keep_semantics_and_contracts(case: tuple) -> None:
    graph, inputs = case
    after = assert_pass_preserves_semantics(FuseElementwisePass(), graph, inputs)
    check_regions(after)
    assert not FuseElementwisePass()(after).modified
