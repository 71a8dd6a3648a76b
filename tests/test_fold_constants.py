"""fold-constants: Before/Expected graphs."""

from __future__ import annotations

import torch

from heteropass.ir import parse_graph, run_graph, verify
from heteropass.ir.compare import assert_graphs_equal
from heteropass.ir.sample import random_inputs
from heteropass.passes.base import PassContext, PassResult
from heteropass.passes.fold_constants import FoldConstantsPass


def check(before: str, expected: str, max_numel: int | None = None) -> PassResult:
    """Run the pass on `before`; check the result against `expected`, the reference interpreter
    and a second run that must change nothing."""
    ctx = PassContext(options={} if max_numel is None else {"fold-constants": {"max_numel": max_numel}})
    graph = parse_graph(before)
    original = graph.clone()
    result = FoldConstantsPass()(graph, ctx)
    verify(graph)
    assert_graphs_equal(graph, expected)
    inputs = random_inputs(original)
    for want, got in zip(run_graph(original, *inputs), run_graph(graph, *inputs), strict=True):
        torch.testing.assert_close(got, want)
    assert not FoldConstantsPass()(graph, ctx).modified
    return result


def test_folds_chains_and_creation_ops() -> None:
    result = check("""
    graph g(%x: f32[4]) -> (f32[4], i64[3]) {
      const %a: f32[4] = [1.0, 2.0, 3.0, 4.0]
      const %b: f32[] = 0.5
      %0: f32[4] = mul(%a, %b)
      %1: f32[4] = full() {shape=[4], value=1.0}
      %2: f32[4] = add(%0, %1)
      %3: f32[4] = add(%x, %2)
      %4: i64[3] = arange() {end=3.0}
      return %3, %4
    }""", """
    graph g(%x: f32[4]) -> (f32[4], i64[3]) {
      const %c: f32[4] = [1.5, 2.0, 2.5, 3.0]
      const %r: i64[3] = [0, 1, 2]
      %3: f32[4] = add(%x, %c)
      return %3, %r
    }""")
    assert result.stats == {"nodes_folded": 4, "constants_removed": 4}  # %a, %b and two intermediates


def test_folds_multi_output_and_keeps_shared_operands() -> None:
    check("""
    graph g(%x: f32[2]) -> (f32[2], f32[2], f32[4]) {
      const %a: f32[4] = [1.0, 2.0, 3.0, 4.0]
      %0: f32[2], %1: f32[2] = split(%a) {sizes=[2, 2]}
      %2: f32[2] = sub(%1, %x)
      return %0, %2, %a
    }""", """
    graph g(%x: f32[2]) -> (f32[2], f32[2], f32[4]) {
      const %a: f32[4] = [1.0, 2.0, 3.0, 4.0]
      const %lo: f32[2] = [1.0, 2.0]
      const %hi: f32[2] = [3.0, 4.0]
      %2: f32[2] = sub(%hi, %x)
      return %lo, %2, %a
    }""")


def test_never_folds_opaque_dead_input_dependent_or_large_nodes() -> None:
    text = """
    graph g(%x: f32[4]) -> (f32[4], f32[4], f32[300,300]) {
      const %a: f32[4] = [1.0, -2.0, 3.0, -4.0]
      %0: f32[4] = opaque(%a) {target="aten.relu.default", spec="{\\"args\\": [{\\"$in\\": 0}], \\"kwargs\\": {}}"}
      %1: f32[4] = mul(%a, %x)
      %2: f32[4] = neg(%a)
      %3: f32[300,300] = full() {shape=[300, 300], value=1.0}
      return %0, %1, %3
    }"""
    assert not check(text, text).modified


def test_large_output_folds_only_when_its_operands_die() -> None:
    # max_numel=16 makes the 64-element results "large".
    shared = """
    graph g(%x: f32[8,8]) -> (f32[8,8], f32[8,8]) {
      const %w: f32[8,8]
      %0: f32[8,8] = transpose(%w) {dim0=0, dim1=1}
      %1: f32[8,8] = matmul(%x, %0)
      %2: f32[8,8] = add(%x, %w)
      return %1, %2
    }"""
    assert not check(shared, shared, max_numel=16).modified
    widening = """
    graph g(%x: f64[8,8]) -> (f64[8,8]) {
      const %w: f32[8,8]
      %0: f64[8,8] = cast(%w) {dtype=f64}
      %1: f64[8,8] = matmul(%x, %0)
      return %1
    }"""
    assert not check(widening, widening, max_numel=16).modified
    result = check("""
    graph g(%x: f32[8,8]) -> (f32[8,8]) {
      const %w: f32[8,8]
      %0: f32[8,8] = transpose(%w) {dim0=0, dim1=1}
      %1: f32[8,8] = matmul(%x, %0)
      return %1
    }""", """
    graph g(%x: f32[8,8]) -> (f32[8,8]) {
      const %wt: f32[8,8]
      %1: f32[8,8] = matmul(%x, %wt)
      return %1
    }""", max_numel=16)
    assert result.stats == {"nodes_folded": 1, "constants_removed": 1}


def test_folded_constant_is_named_after_the_node_and_owns_its_data() -> None:
    graph = parse_graph("""
    graph g() -> (f32[2,4]) {
      const %w: f32[4,4]
      %t: f32[2,4] = slice(%w) {end=2}
      return %t
    }""")
    FoldConstantsPass()(graph)
    (folded,) = graph.constants.values()
    assert folded.name == "folded_t"
    assert folded.const is not None and folded.const.is_contiguous()
    assert folded.const.untyped_storage().nbytes() == 2 * 4 * 4


def test_never_folds_dequantize_of_an_int8_weight() -> None:
    text = """
    graph g(%x: f32[2,4]) -> (f32[2,3]) {
      const %w: i8[3,4] = [1, -2, 3, -4, 5, -6, 7, -8, 9, -10, 11, -12]
      const %s: f32[3] = [0.5, 0.25, 0.125]
      %0: f32[3,4] = dequantize(%w, %s) {axis=0}
      %1: f32[2,3] = linear(%x, %0)
      return %1
    }"""
    assert not check(text, text).modified
