"""fuse-reductions: Before/Expected graphs, what it must leave alone, and random graphs."""

from __future__ import annotations

from hypothesis import given

from heteropass.ir import DType
from heteropass.passes.base import PassContext, PassResult
from heteropass.passes.fuse_reductions import FuseReductionsPass
from heteropass.testing import assert_pass_preserves_semantics, graph_and_inputs

from .fusion_checks import check_fusion, check_regions


def check(before: str, expected: str, ctx: PassContext | None = None) -> PassResult:
    return check_fusion(FuseReductionsPass, before, expected, ctx)


def unchanged(text: str) -> None:
    assert not check(text, text).modified


def test_a_decomposed_layer_norm_becomes_one_region() -> None:
    result = check("""
    graph g(%x: f32[4,8], %w: f32[8], %b: f32[8]) -> (f32[4,8]) {
      const %eps: f32[] = 1e-05
      %0: f32[4,1] = mean(%x) {dims=[-1], keepdim=true}
      %1: f32[4,8] = sub(%x, %0)
      %2: f32[4,8] = mul(%1, %1)
      %3: f32[4,1] = mean(%2) {dims=[-1], keepdim=true}
      %4: f32[4,1] = add(%3, %eps)
      %5: f32[4,1] = rsqrt(%4)
      %6: f32[4,8] = mul(%1, %5)
      %7: f32[4,8] = mul(%6, %w)
      %8: f32[4,8] = add(%7, %b)
      return %8
    }""", """
    graph g(%x: f32[4,8], %w: f32[8], %b: f32[8]) -> (f32[4,8]) {
      %8: f32[4,8] = fused[mean, sub, mul, mean, add, rsqrt, mul, mul, add](%x, %w, %b) {kind="reduction"}
        graph r(%x: f32[4,8], %w: f32[8], %b: f32[8]) -> (f32[4,8]) {
          const %eps: f32[] = 1e-05
          %0: f32[4,1] = mean(%x) {dims=[-1], keepdim=true}
          %1: f32[4,8] = sub(%x, %0)
          %2: f32[4,8] = mul(%1, %1)
          %3: f32[4,1] = mean(%2) {dims=[-1], keepdim=true}
          %4: f32[4,1] = add(%3, %eps)
          %5: f32[4,1] = rsqrt(%4)
          %6: f32[4,8] = mul(%1, %5)
          %7: f32[4,8] = mul(%6, %w)
          %8: f32[4,8] = add(%7, %b)
          return %8
        }
      return %8
    }""")
    assert result.stats == {"regions": 1, "nodes_fused": 9}


def test_softmax_with_prologue_and_epilogue_and_a_reduction_without_keepdim() -> None:
    check("""
    graph g(%x: f32[2,4,8], %m: bool[4,8]) -> (f32[2,4,8], f32[2,4]) {
      const %scale: f32[] = 0.125
      const %ninf: f32[] = -inf
      %0: f32[2,4,8] = mul(%x, %scale)
      %1: f32[2,4,8] = where(%m, %ninf, %0)
      %2: f32[2,4,8] = softmax(%1) {dim=-1}
      %3: f32[2,4,8] = log(%2)
      %4: f32[2,4] = amax(%x) {dims=[2]}
      %5: f32[2,4] = neg(%4)
      return %3, %5
    }""", """
    graph g(%x: f32[2,4,8], %m: bool[4,8]) -> (f32[2,4,8], f32[2,4]) {
      %3: f32[2,4,8] = fused[mul, where, softmax, log](%x, %m) {kind="reduction"}
        graph r(%x: f32[2,4,8], %m: bool[4,8]) -> (f32[2,4,8]) {
          const %scale: f32[] = 0.125
          const %ninf: f32[] = -inf
          %0: f32[2,4,8] = mul(%x, %scale)
          %1: f32[2,4,8] = where(%m, %ninf, %0)
          %2: f32[2,4,8] = softmax(%1) {dim=-1}
          %3: f32[2,4,8] = log(%2)
          return %3
        }
      %5: f32[2,4] = fused[amax, neg](%x) {kind="reduction"}
        graph r(%x: f32[2,4,8]) -> (f32[2,4]) {
          %4: f32[2,4] = amax(%x) {dims=[2]}
          %5: f32[2,4] = neg(%4)
          return %5
        }
      return %3, %5
    }""")


def test_a_producer_read_outside_stays_out_and_rows_stay_aligned() -> None:
    # exp is also returned, so it is not prologue; add(%1, %y) would broadcast a reduced [4] along rows.
    unchanged("""
    graph g(%x: f32[4,4], %y: f32[4,4]) -> (f32[4,4], f32[4,4]) {
      %0: f32[4,4] = exp(%x)
      %1: f32[4] = sum(%0) {dims=[1]}
      %2: f32[4,4] = add(%1, %y)
      return %0, %2
    }""")


def test_reductions_over_a_dim_that_is_not_the_last_join_their_prologue_and_epilogue() -> None:
    check("""
    graph g(%x: f32[2,4,8], %s: f32[4,1]) -> (f32[2,8], f32[2,4,8]) {
      %0: f32[2,4,8] = mul(%x, %s)
      %1: f32[2,8] = sum(%0) {dims=[1]}
      %2: f32[2,8] = neg(%1)
      %3: f32[2,4,8] = softmax(%x) {dim=1}
      %4: f32[2,4,8] = exp(%3)
      %5: f32[2,4,8] = sub(%4, %x)
      return %2, %5
    }""", """
    graph g(%x: f32[2,4,8], %s: f32[4,1]) -> (f32[2,8], f32[2,4,8]) {
      %2: f32[2,8] = fused[mul, sum, neg](%x, %s) {kind="reduction"}
        graph r(%x: f32[2,4,8], %s: f32[4,1]) -> (f32[2,8]) {
          %0: f32[2,4,8] = mul(%x, %s)
          %1: f32[2,8] = sum(%0) {dims=[1]}
          %2: f32[2,8] = neg(%1)
          return %2
        }
      %5: f32[2,4,8] = fused[softmax, exp, sub](%x) {kind="reduction"}
        graph r(%x: f32[2,4,8]) -> (f32[2,4,8]) {
          %3: f32[2,4,8] = softmax(%x) {dim=1}
          %4: f32[2,4,8] = exp(%3)
          %5: f32[2,4,8] = sub(%4, %x)
          return %5
        }
      return %2, %5
    }""")


def test_leaves_alone_reductions_over_several_dims() -> None:
    unchanged("""
    graph g(%x: f32[4,8]) -> (f32[], f32[], f32[2]) {
      %0: f32[] = amax(%x)
      %1: f32[] = neg(%0)
      %2: f32[2,2,8] = reshape(%x) {shape=[2, 2, 8]}
      %3: f32[2] = sum(%2) {dims=[1, 2]}
      return %0, %1, %3
    }""")


def test_a_reduction_over_another_dim_stays_out_of_a_region() -> None:
    check("""
    graph g(%x: f32[4,8]) -> (f32[8]) {
      %0: f32[4,1] = sum(%x) {dims=[1], keepdim=true}
      %1: f32[4,8] = sub(%x, %0)
      %2: f32[8] = sum(%1) {dims=[0]}
      return %2
    }""", """
    graph g(%x: f32[4,8]) -> (f32[8]) {
      %1: f32[4,8] = fused[sum, sub](%x) {kind="reduction"}
        graph r(%x: f32[4,8]) -> (f32[4,8]) {
          %0: f32[4,1] = sum(%x) {dims=[1], keepdim=true}
          %1: f32[4,8] = sub(%x, %0)
          return %1
        }
      %2: f32[8] = sum(%1) {dims=[0]}
      return %2
    }""")


def test_min_nodes_option_wraps_a_lone_reduction() -> None:
    check("""
    graph g(%x: f32[4,8]) -> (f32[4,8]) {
      %0: f32[4,8] = layer_norm(%x) {normalized_shape=[8]}
      return %0
    }""", """
    graph g(%x: f32[4,8]) -> (f32[4,8]) {
      %0: f32[4,8] = fused[layer_norm](%x) {kind="reduction"}
        graph r(%x: f32[4,8]) -> (f32[4,8]) {
          %0: f32[4,8] = layer_norm(%x) {normalized_shape=[8]}
          return %0
        }
      return %0
    }""", PassContext(options={"fuse-reductions": {"min_nodes": 1}}))


@given(case=graph_and_inputs(input_dtypes=(DType.f32, DType.f32, DType.f64, DType.i64),
                             families=("binary", "unary", "where", "matmul", "softmax", "reduce", "layer_norm",
                                       "transpose", "duplicate")))
def test_random_graphs_keep_semantics_and_contracts(case: tuple) -> None:
    # min_nodes=1 wraps lone reductions too: growth does not depend on it, and more regions get checked.
    ctx = PassContext(options={"fuse-reductions": {"min_nodes": 1}})
    graph, inputs = case
    after = assert_pass_preserves_semantics(FuseReductionsPass(), graph, inputs, ctx=ctx)
    check_regions(after)
    assert not FuseReductionsPass()(after, ctx).modified
