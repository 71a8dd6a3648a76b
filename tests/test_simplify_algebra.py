"""simplify-algebra: Before/Expected graphs, each rule and what it must leave alone."""

from __future__ import annotations

import pytest
import torch

from heteropass.ir import parse_graph, run_graph, verify
from heteropass.ir.compare import assert_graphs_equal
from heteropass.ir.interpreter import InterpreterError
from heteropass.ir.sample import random_inputs
from heteropass.passes.base import PassResult
from heteropass.passes.simplify_algebra import SimplifyAlgebraPass


def check(before: str, expected: str) -> PassResult:
    """Run the pass on `before`; check the result against `expected`, the reference interpreter
    (bit for bit: every rule is exact on inputs without zeros) and a second run that must change nothing."""
    graph = parse_graph(before)
    original = graph.clone()
    result = SimplifyAlgebraPass()(graph)
    verify(graph)
    assert_graphs_equal(graph, expected)
    inputs = random_inputs(original)
    for want, got in zip(run_graph(original, *inputs), run_graph(graph, *inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not SimplifyAlgebraPass()(graph).modified
    return result


def unchanged(text: str) -> None:
    assert not check(text, text).modified


def test_arithmetic_identities() -> None:
    result = check("""
    graph g(%x: f32[4,8], %n: i64[4]) -> (f32[4,8], i64[4]) {
      const %one: f32[] = 1.0
      const %ones: f32[8] = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
      const %zero: f32[1] = [0.0]
      const %ione: i64[] = 1
      %0: f32[4,8] = mul(%x, %one)
      %1: f32[4,8] = mul(%ones, %0)
      %2: f32[4,8] = add(%1, %zero)
      %3: f32[4,8] = add(%zero, %2)
      %4: f32[4,8] = sub(%3, %zero)
      %5: f32[4,8] = div(%4, %one)
      %6: f32[4,8] = pow(%5, %one)
      %7: f32[4,8] = neg(%6)
      %8: f32[4,8] = neg(%7)
      %9: i64[4] = div(%n, %ione) {rounding_mode="floor"}
      return %8, %9
    }""", """
    graph g(%x: f32[4,8], %n: i64[4]) -> (f32[4,8], i64[4]) {
      return %x, %n
    }""")
    assert result.stats == {"mul-by-one": 2, "add-zero": 2, "sub-zero": 1, "div-by-one": 2, "pow-one": 1,
                            "neg-neg": 1}


def test_arithmetic_that_would_change_the_type_or_value_stays() -> None:
    unchanged("""
    graph g(%x: f32[8], %h: f16[8], %n: i64[8]) -> (f32[4,8], f32[8], f32[8], f32[8], f32[8], f32[8], f32[8],
                                                   f32[8]) {
      const %ones: f32[4,8]
      const %one: f32[] = 1.0
      const %fones: f32[8] = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
      const %zero: f32[] = 0.0
      const %two: f32[] = 2.0
      %0: f32[4,8] = mul(%x, %ones)
      %1: f32[8] = mul(%n, %one)
      %2: f32[8] = add(%h, %fones)
      %3: f32[8] = sub(%zero, %x)
      %4: f32[8] = div(%x, %one) {rounding_mode="floor"}
      %5: f32[8] = mul(%x, %two)
      %6: f32[8] = pow(%one, %x)
      %7: f32[8] = neg(%x)
      return %0, %1, %2, %3, %4, %5, %6, %7
    }""")


def test_permutation_chains() -> None:
    result = check("""
    graph g(%x: f32[2,3,4]) -> (f32[2,3,4], f32[4,2,3], f32[2,3,4], f32[3,2,4]) {
      %0: f32[2,4,3] = transpose(%x) {dim0=1, dim1=2}
      %1: f32[2,3,4] = transpose(%0) {dim0=-1, dim1=1}
      %2: f32[4,2,3] = permute(%0) {dims=[1, 0, 2]}
      %3: f32[2,3,4] = permute(%x) {dims=[0, 1, 2]}
      %4: f32[2,3,4] = transpose(%3) {dim0=1, dim1=1}
      %5: f32[3,2,4] = transpose(%4) {dim0=0, dim1=1}
      return %1, %2, %4, %5
    }""", """
    graph g(%x: f32[2,3,4]) -> (f32[2,3,4], f32[4,2,3], f32[2,3,4], f32[3,2,4]) {
      %2: f32[4,2,3] = permute(%x) {dims=[2, 0, 1]}
      %5: f32[3,2,4] = transpose(%x) {dim0=0, dim1=1}
      return %x, %2, %x, %5
    }""")
    assert result.stats == {"compose-permutes": 2, "identity-permute": 2}


def test_two_dim_swaps_become_transposes_with_ordered_dims() -> None:
    result = check("""
    graph g(%x: f32[2,3,4]) -> (f32[2,4,3], f32[4,3,2], f32[3,2,4], f32[3,4,2]) {
      %0: f32[2,4,3] = permute(%x) {dims=[0, 2, 1]}
      %1: f32[4,3,2] = transpose(%x) {dim0=-1, dim1=0}
      %2: f32[3,2,4] = transpose(%x) {dim0=1, dim1=0}
      %3: f32[3,4,2] = permute(%x) {dims=[1, 2, 0]}
      return %0, %1, %2, %3
    }""", """
    graph g(%x: f32[2,3,4]) -> (f32[2,4,3], f32[4,3,2], f32[3,2,4], f32[3,4,2]) {
      %0: f32[2,4,3] = transpose(%x) {dim0=1, dim1=2}
      %1: f32[4,3,2] = transpose(%x) {dim0=0, dim1=2}
      %2: f32[3,2,4] = transpose(%x) {dim0=0, dim1=1}
      %3: f32[3,4,2] = permute(%x) {dims=[1, 2, 0]}
      return %0, %1, %2, %3
    }""")
    assert result.stats == {"swap-as-transpose": 3}


def test_global_average_pool_becomes_mean() -> None:
    before = """
    graph g(%x: f32[2,3,5,7], %y: f32[3,4,6,5], %z: f32[2,3,6]) -> (f32[2,3,1,1], f32[3,1,1,1], f32[2,3,2]) {
      %0: f32[2,3,1,1] = adaptive_avg_pool(%x) {output_size=[1, 1]}
      %1: f32[3,1,1,1] = adaptive_avg_pool(%y) {output_size=[1, 1, 1]}
      %2: f32[2,3,2] = adaptive_avg_pool(%z) {output_size=[2]}
      return %0, %1, %2
    }"""
    graph = parse_graph(before)
    result = SimplifyAlgebraPass()(graph)
    assert_graphs_equal(graph, """
    graph g(%x: f32[2,3,5,7], %y: f32[3,4,6,5], %z: f32[2,3,6]) -> (f32[2,3,1,1], f32[3,1,1,1], f32[2,3,2]) {
      %0: f32[2,3,1,1] = mean(%x) {dims=[2, 3], keepdim=true}
      %1: f32[3,1,1,1] = mean(%y) {dims=[1, 2, 3], keepdim=true}
      %2: f32[2,3,2] = adaptive_avg_pool(%z) {output_size=[2]}
      return %0, %1, %2
    }""")
    assert result.stats == {"global-average-pool": 2}
    # The sums run in a different order, so the results agree to rounding, not bit for bit.
    inputs = random_inputs(graph)
    for want, got in zip(run_graph(parse_graph(before), *inputs), run_graph(graph, *inputs), strict=True):
        torch.testing.assert_close(got, want)


def test_embedding_becomes_take() -> None:
    result = check("""
    graph g(%i: i64[2,5]) -> (f32[2,5,4]) {
      const %w: f32[10,4]
      %0: f32[2,5,4] = embedding(%w, %i)
      return %0
    }""", """
    graph g(%i: i64[2,5]) -> (f32[2,5,4]) {
      const %w: f32[10,4]
      %0: f32[2,5,4] = take(%w, %i) {wrap=false}
      return %0
    }""")
    assert result.stats == {"embedding-as-take": 1}
    with pytest.raises(InterpreterError, match=r"take.* index -1 is out of range"):  # as torch.embedding raises
        run_graph(result.graph, torch.tensor([[0, 1, -1, 2, 3]] * 2))


def test_shape_chains() -> None:
    result = check("""
    graph g(%x: f32[4,6], %v: f32[6]) -> (f32[24], f32[4,6], f32[4,6], f32[6], f32[4,6], f32[4,6], f32[2,12]) {
      %0: f32[2,12] = reshape(%x) {shape=[2, 12]}
      %1: f32[24] = reshape(%0) {shape=[-1]}
      %2: f32[4,6] = reshape(%x) {shape=[4, -1]}
      %3: f32[4,6] = expand(%x) {shape=[4, 6]}
      %4: f32[6] = flatten(%v)
      %5: f32[4,1,6] = unsqueeze(%x) {dim=1}
      %6: f32[4,6] = squeeze(%5) {dims=[-2]}
      %7: f32[4,6] = squeeze(%x)
      return %1, %2, %3, %4, %6, %7, %0
    }""", """
    graph g(%x: f32[4,6], %v: f32[6]) -> (f32[24], f32[4,6], f32[4,6], f32[6], f32[4,6], f32[4,6], f32[2,12]) {
      %0: f32[2,12] = reshape(%x) {shape=[2, 12]}
      %1: f32[24] = reshape(%x) {shape=[-1]}
      return %1, %x, %x, %v, %x, %x, %0
    }""")
    assert result.stats == {"reshape-of-view": 1, "same-shape": 4, "squeeze-unsqueeze": 1}


def test_shape_changes_stay() -> None:
    unchanged("""
    graph g(%x: f32[4,1], %v: f32[1,6]) -> (f32[1,4], f32[4,6], f32[4], f32[1,4,1]) {
      %0: f32[1,4,1] = unsqueeze(%x) {dim=0}
      %1: f32[1,4] = squeeze(%0) {dims=[2]}
      %2: f32[4,6] = expand(%x) {shape=[4, 6]}
      %3: f32[4] = flatten(%x)
      return %1, %2, %3, %0
    }""")


def test_casts() -> None:
    result = check("""
    graph g(%x: f32[8], %h: f16[8], %i: i32[8]) -> (f32[8], f16[8], i32[8], f32[8]) {
      %0: f64[8] = cast(%x) {dtype=f64}
      %1: f32[8] = cast(%0) {dtype=f32}
      %2: f32[8] = cast(%h) {dtype=f32}
      %3: f16[8] = cast(%2) {dtype=f16}
      %4: i64[8] = cast(%i) {dtype=i64}
      %5: i32[8] = cast(%4) {dtype=i32}
      %6: f32[8] = cast(%1) {dtype=f32}
      return %6, %3, %5, %2
    }""", """
    graph g(%x: f32[8], %h: f16[8], %i: i32[8]) -> (f32[8], f16[8], i32[8], f32[8]) {
      %2: f32[8] = cast(%h) {dtype=f32}
      return %x, %h, %i, %2
    }""")
    assert result.stats == {"cast-round-trip": 3, "cast-noop": 1}


def test_lossy_cast_chains_stay() -> None:
    unchanged("""
    graph g(%x: f32[8], %n: i64[8], %b: bf16[8]) -> (f32[8], i64[8], bf16[8], f32[8]) {
      %0: f16[8] = cast(%x) {dtype=f16}
      %1: f32[8] = cast(%0) {dtype=f32}
      %2: f64[8] = cast(%n) {dtype=f64}
      %3: i64[8] = cast(%2) {dtype=i64}
      %4: f16[8] = cast(%b) {dtype=f16}
      %5: bf16[8] = cast(%4) {dtype=bf16}
      %6: f64[8] = cast(%x) {dtype=f64}
      %7: f16[8] = cast(%6) {dtype=f16}
      %8: f32[8] = cast(%7) {dtype=f32}
      return %1, %3, %5, %8
    }""")


def test_full_slice_and_single_concat() -> None:
    result = check("""
    graph g(%x: f32[4,6]) -> (f32[4,6], f32[4,6], f32[4,3], f32[4,3], f32[8,6]) {
      %0: f32[4,6] = slice(%x) {dim=1, start=0, end=9223372036854775807}
      %1: f32[4,6] = slice(%0) {dim=-2, start=-4}
      %2: f32[4,6] = concat(%1) {dim=1}
      %3: f32[4,3] = slice(%x) {dim=1, start=1, end=4}
      %4: f32[4,3] = slice(%x) {dim=1, step=2}
      %5: f32[8,6] = concat(%x, %2)
      return %2, %1, %3, %4, %5
    }""", """
    graph g(%x: f32[4,6]) -> (f32[4,6], f32[4,6], f32[4,3], f32[4,3], f32[8,6]) {
      %3: f32[4,3] = slice(%x) {dim=1, start=1, end=4}
      %4: f32[4,3] = slice(%x) {dim=1, step=2}
      %5: f32[8,6] = concat(%x, %x)
      return %x, %x, %3, %4, %5
    }""")
    assert result.stats == {"full-slice": 2, "single-concat": 1}


def test_shared_intermediate_is_kept() -> None:
    check("""
    graph g(%x: f32[8]) -> (f32[8], f32[8]) {
      const %one: f32[] = 1.0
      %0: f32[8] = neg(%x)
      %1: f32[8] = neg(%0)
      %2: f32[8] = mul(%0, %one)
      %3: f32[8] = mul(%1, %one)
      return %3, %2
    }""", """
    graph g(%x: f32[8]) -> (f32[8], f32[8]) {
      %0: f32[8] = neg(%x)
      return %x, %0
    }""")


def test_attention_drops_a_mask_that_masks_nothing() -> None:
    text = """
    graph g(%q: f32[1,2,1,4], %k: f32[1,2,3,4], %v: f32[1,2,3,4]) -> (f32[1,2,1,4], f32[1,2,1,4], f32[1,2,1,4]) {
      const %zeros: f32[1,3] = [0.0, 0.0, 0.0]
      const %all: bool[1,3] = [true, true, true]
      const %some: f32[1,3] = [0.0, -1.0, 0.0]
      %0: f32[1,2,1,4] = scaled_dot_product_attention(%q, %k, %v, %zeros) {scale=0.5}
      %1: f32[1,2,1,4] = scaled_dot_product_attention(%q, %k, %v, %all)
      %2: f32[1,2,1,4] = scaled_dot_product_attention(%q, %k, %v, %some)
      return %0, %1, %2
    }"""
    graph = parse_graph(text)
    original = graph.clone()
    result = SimplifyAlgebraPass()(graph)
    verify(graph)
    assert result.stats == {"attention-without-mask": 2}
    assert_graphs_equal(graph, """
    graph g(%q: f32[1,2,1,4], %k: f32[1,2,3,4], %v: f32[1,2,3,4]) -> (f32[1,2,1,4], f32[1,2,1,4], f32[1,2,1,4]) {
      const %some: f32[1,3] = [0.0, -1.0, 0.0]
      %0: f32[1,2,1,4] = scaled_dot_product_attention(%q, %k, %v) {scale=0.5}
      %1: f32[1,2,1,4] = scaled_dot_product_attention(%q, %k, %v)
      %2: f32[1,2,1,4] = scaled_dot_product_attention(%q, %k, %v, %some)
      return %0, %1, %2
    }""")
    inputs = random_inputs(original)
    for want, got in zip(run_graph(original, *inputs), run_graph(graph, *inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_slices_within_one_concatenated_part() -> None:
    result = check("""
    graph g(%c: f32[1,2,5,4], %n: f32[1,2,1,4]) -> (f32[1,2,6,4], f32[1,2,1,4], f32[1,2,2,4], f32[1,2,2,4]) {
      %0: f32[1,2,6,4] = concat(%c, %n) {dim=2}
      %1: f32[1,2,1,4] = slice(%0) {dim=2, start=5, end=6}
      %2: f32[1,2,2,4] = slice(%0) {dim=-2, start=-6, end=2}
      %3: f32[1,2,2,4] = slice(%0) {dim=2, start=4, end=6}
      return %0, %1, %2, %3
    }""", """
    graph g(%c: f32[1,2,5,4], %n: f32[1,2,1,4]) -> (f32[1,2,6,4], f32[1,2,1,4], f32[1,2,2,4], f32[1,2,2,4]) {
      %0: f32[1,2,6,4] = concat(%c, %n) {dim=2}
      %4: f32[1,2,2,4] = slice(%c) {dim=2, start=0, end=2}
      %3: f32[1,2,2,4] = slice(%0) {dim=2, start=4, end=6}
      return %0, %n, %4, %3
    }""")
    # the newest entry is the new part; a slice within the cache reads the cache; one across both stays
    assert result.stats == {"slice-of-concat": 2}
