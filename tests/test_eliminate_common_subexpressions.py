"""eliminate-common-subexpressions: Before/Expected graphs."""

from __future__ import annotations

import torch

from heteropass.ir import parse_graph, run_graph, verify
from heteropass.ir.compare import assert_graphs_equal
from heteropass.ir.sample import random_inputs
from heteropass.passes.base import PassResult
from heteropass.passes.eliminate_common_subexpressions import EliminateCommonSubexpressionsPass

RELU_SPEC = '"{\\"args\\": [{\\"$in\\": 0}], \\"kwargs\\": {}}"'


def check(before: str, expected: str, constants: dict[str, torch.Tensor] | None = None) -> PassResult:
    """Run the pass on `before`; check the result against `expected`, the reference interpreter
    and a second run that must change nothing."""
    graph = parse_graph(before, constants)
    original = graph.clone()
    result = EliminateCommonSubexpressionsPass()(graph)
    verify(graph)
    assert_graphs_equal(graph, expected)
    inputs = random_inputs(original)
    for want, got in zip(run_graph(original, *inputs), run_graph(graph, *inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not EliminateCommonSubexpressionsPass()(graph).modified
    return result


def test_merges_chains_and_commuted_operands() -> None:
    result = check("""
    graph g(%x: f32[4,8], %y: f32[4,8]) -> (f32[4,8], f32[4,8]) {
      %0: f32[4,8] = add(%x, %y)
      %1: f32[4,8] = add(%y, %x)
      %2: f32[4,8] = exp(%0)
      %3: f32[4,8] = exp(%1)
      %4: f32[4,8] = mul(%2, %3)
      return %4, %3
    }""", """
    graph g(%x: f32[4,8], %y: f32[4,8]) -> (f32[4,8], f32[4,8]) {
      %0: f32[4,8] = add(%x, %y)
      %2: f32[4,8] = exp(%0)
      %4: f32[4,8] = mul(%2, %2)
      return %4, %2
    }""")
    assert result.stats == {"nodes_merged": 2, "constants_merged": 0}


def test_merges_multi_output_and_creation_nodes() -> None:
    check("""
    graph g(%x: f32[4,8]) -> (f32[4,4], f32[4,4], f32[4,8]) {
      %0: f32[4,4], %1: f32[4,4] = split(%x) {sizes=[4, 4], dim=1}
      %2: f32[4,4], %3: f32[4,4] = split(%x) {sizes=[4, 4], dim=1}
      %4: f32[8] = full() {shape=[8], value=2.0}
      %5: f32[8] = full() {shape=[8], value=2.0}
      %6: f32[4,8] = mul(%x, %4)
      %7: f32[4,8] = add(%6, %5)
      return %0, %3, %7
    }""", """
    graph g(%x: f32[4,8]) -> (f32[4,4], f32[4,4], f32[4,8]) {
      %0: f32[4,4], %1: f32[4,4] = split(%x) {sizes=[4, 4], dim=1}
      %4: f32[8] = full() {shape=[8], value=2.0}
      %6: f32[4,8] = mul(%x, %4)
      %7: f32[4,8] = add(%6, %4)
      return %0, %1, %7
    }""")


def test_keeps_nodes_that_differ() -> None:
    text = f"""
    graph g(%x: f32[4,8], %y: f32[4,8]) -> (f32[4,8], f32[4,8], f32[4], f32[4], f32[4,8], f32[4,8], f32[8], f32[8]) {{
      %0: f32[4,8] = sub(%x, %y)
      %1: f32[4,8] = sub(%y, %x)
      %2: f32[4] = sum(%x) {{dims=[1]}}
      %3: f32[4] = sum(%x) {{dims=[1]}}                  @cuda
      %4: f32[4,8] = opaque(%x) {{target="aten.relu.default", spec={RELU_SPEC}}}
      %5: f32[4,8] = opaque(%x) {{target="aten.relu.default", spec={RELU_SPEC}}}
      %6: f32[8] = full() {{shape=[8], value=0.0}}
      %7: f32[8] = full() {{shape=[8], value=-0.0}}
      return %0, %1, %2, %3, %4, %5, %6, %7
    }}"""
    result = check(text, text)
    assert not result.modified


def test_merges_equal_constants_only() -> None:
    big = torch.randn(64, 64)
    result = check("""
    graph g(%x: f32[64,64]) -> (f32[64,64], f64[2]) {
      const %w1: f32[64,64]
      const %w2: f32[64,64]
      const %w3: f32[64,64]
      const %a: f32[2] = [1.0, 2.0]
      const %b: f32[2] = [1.0, 2.0]
      const %c: f64[2] = [1.0, 2.0]
      const %z: f32[2] = [0.0, 1.0]
      const %nz: f32[2] = [-0.0, 1.0]
      %0: f32[64,64] = matmul(%x, %w1)
      %1: f32[64,64] = matmul(%x, %w2)
      %2: f32[64,64] = matmul(%x, %w3)
      %3: f32[64,64] = add(%0, %1)
      %4: f32[64,64] = add(%3, %2)
      %5: f32[2] = add(%a, %b)
      %6: f64[2] = add(%5, %c)
      %7: f64[2] = div(%6, %z)
      %8: f64[2] = div(%7, %nz)
      return %4, %8
    }""", """
    graph g(%x: f32[64,64]) -> (f32[64,64], f64[2]) {
      const %w1: f32[64,64]
      const %w3: f32[64,64]
      const %a: f32[2] = [1.0, 2.0]
      const %c: f64[2] = [1.0, 2.0]
      const %z: f32[2] = [0.0, 1.0]
      const %nz: f32[2] = [-0.0, 1.0]
      %0: f32[64,64] = matmul(%x, %w1)
      %2: f32[64,64] = matmul(%x, %w3)
      %3: f32[64,64] = add(%0, %0)
      %4: f32[64,64] = add(%3, %2)
      %5: f32[2] = add(%a, %a)
      %6: f64[2] = add(%5, %c)
      %7: f64[2] = div(%6, %z)
      %8: f64[2] = div(%7, %nz)
      return %4, %8
    }""", constants={"w1": big, "w2": big.clone(), "w3": big + 1e-3})
    assert result.stats == {"nodes_merged": 1, "constants_merged": 2}


def test_large_constants_differing_outside_the_hash_sample_are_kept() -> None:
    w = torch.zeros(512, 512)
    other = w.clone()
    other[0, 1] = 1.0  # off the strided sample, so only the full comparison tells them apart
    text = """
    graph g(%x: f32[512]) -> (f32[512,512]) {
      const %w1: f32[512,512]
      const %w2: f32[512,512]
      %0: f32[512,512] = add(%w1, %x)
      %1: f32[512,512] = add(%0, %w2)
      return %1
    }"""
    assert not check(text, text, constants={"w1": w, "w2": other}).modified


def test_empty_constants_with_zero_strides_merge_by_type() -> None:
    # Expanded empty tensors (as the ONNX importer makes for ConstantOfShape of a 0 dim) have stride 0.
    result = check("""
    graph g(%x: f32[3,0]) -> (f32[3,0]) {
      const %e1: f32[3,0]
      const %e2: f32[3,0]
      const %e3: f32[0]
      %0: f32[3,0] = add(%x, %e1)
      %1: f32[3,0] = add(%0, %e2)
      %2: f32[3,0] = add(%1, %e3)
      return %2
    }""", """
    graph g(%x: f32[3,0]) -> (f32[3,0]) {
      const %e1: f32[3,0]
      const %e3: f32[0]
      %0: f32[3,0] = add(%x, %e1)
      %1: f32[3,0] = add(%0, %e1)
      %2: f32[3,0] = add(%1, %e3)
      return %2
    }""", constants={"e1": torch.empty(0).expand(3, 0), "e2": torch.zeros(()).expand(3, 0),
                     "e3": torch.zeros(()).expand(0)})
    assert result.stats == {"nodes_merged": 0, "constants_merged": 1}


def test_one_element_constants_with_an_odd_stride_merge() -> None:
    # A one-element slice of every other element counts as contiguous but keeps stride 2; MobileViT's
    # import makes such an i64 constant.
    result = check("""
    graph g(%x: i64[1]) -> (i64[1]) {
      const %a: i64[1]
      const %b: i64[1]
      %0: i64[1] = add(%x, %a)
      %1: i64[1] = add(%0, %b)
      return %1
    }""", """
    graph g(%x: i64[1]) -> (i64[1]) {
      const %a: i64[1] = [2]
      %0: i64[1] = add(%x, %a)
      %1: i64[1] = add(%0, %a)
      return %1
    }""", constants={"a": torch.arange(4)[::2][1:], "b": torch.tensor([2])})
    assert result.stats == {"nodes_merged": 0, "constants_merged": 1}
