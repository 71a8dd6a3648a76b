"""Fusion machinery: collapsing node sets into regions, convexity, and the region contracts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

from heteropass.ir import DType, parse_graph, run_graph, verify
from heteropass.ir.compare import assert_graphs_equal
from heteropass.ir.sample import random_inputs
from heteropass.ir.torch_importer import import_module
from heteropass.passes.base import PassContext
from heteropass.passes.fuse_elementwise import FuseElementwisePass
from heteropass.passes.fuse_gemm_epilogue import FuseGemmEpiloguePass
from heteropass.passes.fuse_reductions import FuseReductionsPass
from heteropass.passes.fusion_util import (
    RegionContractError,
    broadcast_shapes,
    check_region_contract,
    fuse_nodes,
    is_convex,
    positions,
)
from heteropass.passes.manager import PassManager
from heteropass.passes.pipelines import default_pipeline
from heteropass.testing import assert_pass_preserves_semantics, graph_and_inputs, models

DIAMOND = """
graph g(%x: f32[4,4]) -> (f32[4,4], f32[4]) {
  %0: f32[4,4] = exp(%x)
  %1: f32[4,4] = transpose(%0) {dim0=0, dim1=1}
  %2: f32[4] = sum(%0) {dims=[0]}
  %3: f32[4,4] = add(%0, %1)
  return %3, %2
}"""


def test_convexity_sees_paths_that_leave_and_come_back() -> None:
    graph = parse_graph(DIAMOND)
    exp, transpose, total, add = graph.nodes
    position = positions(graph)
    assert not is_convex([exp, add], position)
    assert is_convex([exp, transpose, add], position)
    assert is_convex([exp, total], position)
    with pytest.raises(ValueError, match="a path leaves the set and comes back"):
        fuse_nodes(graph, [exp, add], "elementwise")


def test_fuse_nodes_builds_the_body_and_moves_readers_after_the_region() -> None:
    graph = parse_graph(DIAMOND)
    original = graph.clone()
    exp, transpose, _, add = graph.nodes
    node = fuse_nodes(graph, [add, exp, transpose], "generic")
    verify(graph)
    assert_graphs_equal(graph, """
    graph g(%x: f32[4,4]) -> (f32[4,4], f32[4]) {
      %0: f32[4,4], %3: f32[4,4] = fused[exp, transpose, add](%x) {kind="generic"}
        graph r(%x: f32[4,4]) -> (f32[4,4], f32[4,4]) {
          %0: f32[4,4] = exp(%x)
          %1: f32[4,4] = transpose(%0) {dim0=0, dim1=1}
          %3: f32[4,4] = add(%0, %1)
          return %0, %3
        }
      %2: f32[4] = sum(%0) {dims=[0]}
      return %3, %2
    }""")
    assert [v.name for v in node.outputs] == ["0", "3"]  # the replaced values keep their names in dumps
    inputs = random_inputs(original)
    for want, got in zip(run_graph(original, *inputs), run_graph(graph, *inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_broadcast_shapes() -> None:
    assert broadcast_shapes([(4, 1), (8,), ()]) == (4, 8)
    assert broadcast_shapes([("n", 1), (1, 8)]) == ("n", 8)
    assert broadcast_shapes([(4,), (5,)]) is None
    assert broadcast_shapes([("n",), ("m",)]) is None


def region(kind: str, params: str, results: str, body: str) -> str:
    return f"""
    graph g({params}) -> ({results}) {{
      %r: {results} = fused({", ".join(p.split(":")[0] for p in params.split(", "))}) {{kind="{kind}"}}
        graph b({params}) -> ({results}) {{
          {body}
        }}
      return %r
    }}"""


@pytest.mark.parametrize(("kind", "params", "results", "body", "problem"), [
    ("elementwise", "%x: f32[4,8], %y: f32[8]", "f32[8]", "%0: f32[8] = neg(%y)\n return %0",
     r"does not have the iteration shape \[4, 8\]"),
    ("elementwise", "%x: f32[4,8]", "f32[4]", "%0: f32[4] = sum(%x) {dims=[1]}\n return %0", "is not elementwise"),
    ("reduction", "%x: f32[4,8]", "f32[]", "%0: f32[] = sum(%x)\n return %0",
     "nor a reduction over one dimension"),
    ("reduction", "%x: f32[4,4]", "f32[4]",
     "%0: f32[4] = sum(%x) {dims=[0]}\n %1: f32[4] = sum(%x) {dims=[1]}\n %2: f32[4] = add(%0, %1)\n return %2",
     r"reduces dim 1 of \[4, 4\], not dim 0 of \[4, 4\]"),
    ("reduction", "%x: f32[4,4], %y: f32[4,4]", "f32[4,4]",
     "%0: f32[4] = sum(%x) {dims=[1]}\n %1: f32[4,4] = add(%0, %y)\n return %1", "mixes row shapes"),
    ("reduction", "%x: f32[4,8]", "f32[4,8]", "%0: f32[4,8] = exp(%x)\n return %0", "has no reduction"),
    ("gemm", "%x: f32[8,8]", "f32[8,8]", "%0: f32[8,8] = exp(%x)\n %1: f32[8,8] = matmul(%0, %0)\n return %1",
     "is not linear, matmul, conv"),
    ("gemm", "%x: f32[4,8], %w: f32[8,8]", "f32[4]",
     "%0: f32[4,8] = matmul(%x, %w)\n %1: f32[4] = sum(%0) {dims=[1]}\n return %1", "is not elementwise"),
    ("gemm", "%x: f32[4,8]", "f32[4,8]",
     "const %w: f32[8,8]\n %0: f32[4,8] = matmul(%x, %w)\n %1: f32[4,8] = relu(%0)\n return %1",
     "are not all body inputs"),
    ("tiled", "%x: f32[4,8]", "f32[4,8]", "%0: f32[4,8] = exp(%x)\n return %0", "unknown region kind"),
])
def test_contract_violations_are_named(kind: str, params: str, results: str, body: str, problem: str) -> None:
    node = parse_graph(region(kind, params, results, body)).nodes[0]
    with pytest.raises(RegionContractError, match=problem):
        check_region_contract(node)


def test_contracts_accept_what_their_kinds_allow() -> None:
    for kind, params, results, body in [
        ("elementwise", "%x: f32[4,1], %y: f32[8]", "f32[4,8]", "%0: f32[4,8] = add(%x, %y)\n return %0"),
        ("reduction", "%x: f32[4,8]", "f32[4]", "%0: f32[4] = amax(%x) {dims=[-1]}\n %1: f32[4] = neg(%0)\n return %1"),
        ("gemm", "%x: f32[4,8], %w: f32[8,8], %b: f32[8]", "f32[4,8]",
         "%0: f32[4,8] = matmul(%x, %w)\n %1: f32[4,8] = add(%0, %b)\n return %1"),
        ("generic", "%x: f32[4,8]", "f32[8]", "%0: f32[8] = sum(%x) {dims=[0]}\n return %0"),
    ]:
        check_region_contract(parse_graph(region(kind, params, results, body)).nodes[0])
    with pytest.raises(RegionContractError, match="is not a fused region"):
        check_region_contract(parse_graph(DIAMOND).nodes[0])


@pytest.mark.slow
def test_recommended_order_on_a_gpt2_style_block() -> None:
    """The O2 pipeline fuses in the recommended order (fuse-gemm-epilogue, fuse-reductions,
    fuse-elementwise): every region keeps its contract, the results stay the same and another
    round changes nothing."""
    program = import_module(models.gpt2_style(), models.gpt2_style_inputs())
    original = program.graph.clone()
    result = PassManager(default_pipeline(2), PassContext()).run(program.graph)
    graph = result.graph
    stats = {r.name: r.stats for r in result.records if r.name.startswith("fuse-")}
    verify(graph)
    # After attention is recognized, each linear absorbs its activation or residual add.
    assert stats["fuse-gemm-epilogue"] == {"regions": 6, "nodes_fused": 12}
    for node in graph.nodes:
        if node.op == "fused":
            check_region_contract(node)
    inputs = program.flatten_inputs(models.gpt2_style_inputs())
    torch.testing.assert_close(run_graph(graph, *inputs), run_graph(original, *inputs))
    passes = [FuseGemmEpiloguePass(), FuseReductionsPass(), FuseElementwisePass()]
    assert not any(p(graph).modified for p in passes)


@given(case=graph_and_inputs(input_dtypes=(DType.f32, DType.f32, DType.f64, DType.i64),
                             families=("binary", "unary", "compare", "where", "cast", "matmul", "softmax", "reduce",
                                       "layer_norm", "transpose", "reshape", "expand", "duplicate")))
def test_the_three_passes_in_order_keep_semantics_and_contracts(case: tuple) -> None:
    graph, inputs = case
    passes = [FuseGemmEpiloguePass(), FuseReductionsPass(), FuseElementwisePass()]
    after = assert_pass_preserves_semantics(passes, graph, inputs)
    for node in after.nodes:
        if node.op == "fused":
            check_region_contract(node)
    assert not any(p(after).modified for p in passes)
