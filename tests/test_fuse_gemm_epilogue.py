"""fuse-gemm-epilogue: Before/Expected graphs, what it must leave alone, and random graphs."""

from __future__ import annotations

from hypothesis import given

from heteropass.ir import DType
from heteropass.passes.base import PassResult
from heteropass.passes.fuse_gemm_epilogue import FuseGemmEpiloguePass
from heteropass.testing import assert_pass_preserves_semantics, graph_and_inputs

from .fusion_checks import check_fusion, check_regions


def check(before: str, expected: str) -> PassResult:
    return check_fusion(FuseGemmEpiloguePass, before, expected)


def unchanged(text: str) -> None:
    assert not check(text, text).modified


def test_linear_with_bias_activation_and_residual() -> None:
    result = check("""
    graph g(%x: f32[4,8], %w: f32[8,8], %b: f32[8]) -> (f32[4,8]) {
      %0: f32[4,8] = linear(%x, %w)
      %1: f32[4,8] = add(%0, %b)
      %2: f32[4,8] = gelu(%1) {approximate="tanh"}
      %3: f32[4,8] = add(%x, %2)
      return %3
    }""", """
    graph g(%x: f32[4,8], %w: f32[8,8], %b: f32[8]) -> (f32[4,8]) {
      %3: f32[4,8] = fused[linear, add, gelu, add](%x, %w, %b) {kind="gemm"}
        graph r(%x: f32[4,8], %w: f32[8,8], %b: f32[8]) -> (f32[4,8]) {
          %0: f32[4,8] = linear(%x, %w)
          %1: f32[4,8] = add(%0, %b)
          %2: f32[4,8] = gelu(%1) {approximate="tanh"}
          %3: f32[4,8] = add(%x, %2)
          return %3
        }
      return %3
    }""")
    assert result.stats == {"regions": 1, "nodes_fused": 4}


def test_conv_epilogue_with_an_intermediate_read_outside_and_small_weights_kept_as_operands() -> None:
    check("""
    graph g(%x: f32[1,2,5,5], %b: f32[3,1,1]) -> (f32[1,3,3,3], f32[1,3]) {
      const %w: f32[3,2,1,1] = [[[[0.5]], [[1.0]]], [[[2.0]], [[-1.0]]], [[[0.25]], [[1.5]]]]
      const %s: f32[] = 2.0
      %0: f32[1,3,5,5] = conv(%x, %w)
      %1: f32[1,3,5,5] = add(%0, %b)
      %2: f32[1,3,5,5] = relu(%1)
      %3: f32[1,3,5,5] = mul(%2, %s)
      %4: f32[1,3,3,3] = max_pool(%2) {kernel=[3, 3], stride=[1, 1]}
      %5: f32[1,3] = sum(%3) {dims=[2, 3]}
      return %4, %5
    }""", """
    graph g(%x: f32[1,2,5,5], %b: f32[3,1,1]) -> (f32[1,3,3,3], f32[1,3]) {
      const %w: f32[3,2,1,1] = [[[[0.5]], [[1.0]]], [[[2.0]], [[-1.0]]], [[[0.25]], [[1.5]]]]
      %2: f32[1,3,5,5], %3: f32[1,3,5,5] = fused[conv, add, relu, mul](%x, %w, %b) {kind="gemm"}
        graph r(%x: f32[1,2,5,5], %w: f32[3,2,1,1], %b: f32[3,1,1]) -> (f32[1,3,5,5], f32[1,3,5,5]) {
          const %s: f32[] = 2.0
          %0: f32[1,3,5,5] = conv(%x, %w)
          %1: f32[1,3,5,5] = add(%0, %b)
          %2: f32[1,3,5,5] = relu(%1)
          %3: f32[1,3,5,5] = mul(%2, %s)
          return %2, %3
        }
      %4: f32[1,3,3,3] = max_pool(%2) {kernel=[3, 3], stride=[1, 1]}
      %5: f32[1,3] = sum(%3) {dims=[2, 3]}
      return %4, %5
    }""")


def test_leaves_alone_products_read_elsewhere_or_returned_or_without_epilogue() -> None:
    unchanged("""
    graph g(%x: f32[4,8], %w: f32[8,8], %v: f32[8,4]) -> (f32[4,8], f32[4], f32[4,4], f32[4,4], f32[4,8]) {
      %0: f32[4,8] = matmul(%x, %w)
      %1: f32[4,8] = relu(%0)
      %2: f32[4] = sum(%0) {dims=[1]}
      %3: f32[4,4] = matmul(%x, %v)
      %4: f32[4,4] = exp(%3)
      %5: f32[4,8] = matmul(%1, %w)
      return %1, %2, %3, %4, %5
    }""")


@given(case=graph_and_inputs(input_dtypes=(DType.f32, DType.f32, DType.f64, DType.i64),
                             families=("binary", "unary", "where", "matmul", "transpose", "duplicate")))
def test_random_graphs_keep_semantics_and_contracts(case: tuple) -> None:
    graph, inputs = case
    after = assert_pass_preserves_semantics(FuseGemmEpiloguePass(), graph, inputs)
    check_regions(after)
    assert not FuseGemmEpiloguePass()(after).modified
