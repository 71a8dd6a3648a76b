"""decompose-group-norm: group_norm becomes a layer norm over each group and a per-channel affine, which the
Numba backend compiles (group_norm itself runs through PyTorch)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import heteropass as hp
from heteropass.ir import DType, Graph, TensorType, parse_graph
from heteropass.passes.decompose_group_norm import DecomposeGroupNormPass
from heteropass.testing.assertions import assert_pass_preserves_semantics

from .test_rewrite import check_pass, unchanged


def test_group_norm_with_constant_affine_becomes_a_layer_norm_over_groups() -> None:
    graph = parse_graph("""
    graph g(%x: f32[2,6,4,5]) -> (f32[2,6,4,5]) {
      const %w: f32[6]
      const %b: f32[6]
      %0: f32[2,6,4,5] = group_norm(%x, %w, %b) {groups=3, eps=1e-6}
      return %0
    }""", constants={"w": torch.randn(6), "b": torch.randn(6)})
    original = graph.clone()
    result = DecomposeGroupNormPass()(graph)
    assert result.stats["group-norm"] == 1
    assert [n.op for n in graph.nodes] == ["reshape", "layer_norm", "reshape", "mul", "add"]
    norm = graph.nodes[1]
    assert norm.attrs == {"normalized_shape": (40,), "eps": 1e-6} and norm.outputs[0].type.static_shape() == (2, 3, 40)
    assert torch.equal(graph.constants["w.channels"].const, original.constants["w"].const.reshape(6, 1, 1))
    x = torch.randn(2, 6, 4, 5) * 3 + 1
    torch.testing.assert_close(hp.ir.run_graph(graph, x)[0], hp.ir.run_graph(original, x)[0], rtol=1e-5, atol=1e-5)


def test_unbatched_channels_need_no_reshape_of_a_run_time_weight_and_no_affine_takes_none() -> None:
    check_pass(DecomposeGroupNormPass(), """
    graph g(%x: f32[3,8], %w: f32[8]) -> (f32[3,8], f32[3,8]) {
      %0: f32[3,8] = group_norm(%x, %w) {groups=2}
      %1: f32[3,8] = group_norm(%x) {groups=4, eps=0.001}
      return %0, %1
    }""", """
    graph g(%x: f32[3,8], %w: f32[8]) -> (f32[3,8], f32[3,8]) {
      %0: f32[3,2,4] = reshape(%x) {shape=[3, 2, 4]}
      %1: f32[3,2,4] = layer_norm(%0) {normalized_shape=[4]}
      %2: f32[3,8] = reshape(%1) {shape=[3, 8]}
      %3: f32[3,8] = mul(%2, %w)
      %4: f32[3,4,2] = reshape(%x) {shape=[3, 4, 2]}
      %5: f32[3,4,2] = layer_norm(%4) {normalized_shape=[2], eps=0.001}
      %6: f32[3,8] = reshape(%5) {shape=[3, 8]}
      return %3, %6
    }""", atol=1e-5)


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_half_precision_and_one_value_groups_stay(dtype: str) -> None:
    pass_ = unchanged(DecomposeGroupNormPass(), f"""
    graph g(%x: {dtype}[2,8,3]) -> ({dtype}[2,8,3]) {{
      %0: {dtype}[2,8,3] = group_norm(%x) {{groups=2}}
      return %0
    }}""")
    assert f"is {dtype}: the decomposed form would round" in pass_.report.near_misses()[0]
    pass_ = unchanged(DecomposeGroupNormPass(), """
    graph g(%x: f32[2,8]) -> (f32[2,8]) {
      %0: f32[2,8] = group_norm(%x) {groups=8}
      return %0
    }""")
    assert "each group holds one value" in pass_.report.near_misses()[0]


def test_check_each_passes_on_group_norm_models_of_every_precision() -> None:
    """In half precision the decomposed affine would round twice more than group_norm (hundreds of elements
    one ulp off, a drift check_each fails the pass for); groups of one value drift in float32."""
    for dtype, groups, shape in ((torch.float32, 4, (2, 16, 5, 5)), (torch.float16, 4, (2, 16, 8, 8)),
                                 (torch.bfloat16, 4, (2, 16, 8, 8)), (torch.float32, 16, (2, 16))):
        model = torch.nn.GroupNorm(groups, 16).eval()
        with torch.no_grad():
            model.weight.normal_(generator=torch.Generator().manual_seed(0))
            model.bias.normal_(generator=torch.Generator().manual_seed(1))
        model = model.to(dtype)
        x = (torch.randn(shape, generator=torch.Generator().manual_seed(2)) * 3 + 1).to(dtype)
        compiled = hp.compile(model, (x,), check_each=True)
        if dtype is torch.float32:
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
        else:
            assert torch.equal(compiled(x), model(x))


def _group_norm_graph(shape: tuple[int, ...], groups: int, affine: int) -> Graph:
    graph = Graph("g")
    x = graph.add_input("x", TensorType(shape, DType.f32))
    extra = [graph.add_input(n, TensorType((shape[1],), DType.f32)) for n in ("w", "b")[:affine]]
    graph.set_outputs([graph.call("group_norm", x, *extra, groups=groups, eps=1e-5)])
    return graph


@given(batch=st.integers(1, 3), groups=st.integers(1, 4), per_group=st.integers(1, 3),
       rest=st.lists(st.integers(1, 5), max_size=2), affine=st.integers(0, 2), seed=st.integers(0, 2**16))
@settings(max_examples=40, deadline=None)
def test_decomposed_group_norm_computes_group_norm(batch: int, groups: int, per_group: int, rest: list[int],
                                                   affine: int, seed: int) -> None:
    # A group of one value is 0 normalized; PyTorch's one-pass variance leaves a rounding residue there.
    assume(per_group * math.prod(rest) > 1)
    graph = _group_norm_graph((batch, groups * per_group, *rest), groups, affine)
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(v.type.static_shape(), generator=g) * 2 + 0.5 for v in graph.inputs]
    after = assert_pass_preserves_semantics(DecomposeGroupNormPass(), graph, inputs, rtol=1e-4, atol=1e-5)
    assert "group_norm" not in after.op_counts()


def test_a_unet_block_runs_its_norm_and_activation_in_numba() -> None:
    block = torch.nn.Sequential(torch.nn.GroupNorm(4, 16), torch.nn.SiLU(), torch.nn.Conv2d(16, 8, 3, padding=1))
    x = torch.randn(2, 16, 12, 12)
    compiled = hp.compile(block.eval(), (x,), backends=("numba", "reference"))
    assert "group_norm" not in compiled.code and "nm.silu_f32" in compiled.code
    assert [p.backend.name for p in compiled.executable.partitions] == ["numba"]
    torch.testing.assert_close(compiled(x), block(x), rtol=1e-4, atol=1e-4)


def test_a_run_time_weight_over_spatial_dims_is_reshaped() -> None:
    check_pass(DecomposeGroupNormPass(), """
    graph g(%x: f32[1,4,3], %w: f32[4]) -> (f32[1,4,3]) {
      %0: f32[1,4,3] = group_norm(%x, %w) {groups=2}
      return %0
    }""", """
    graph g(%x: f32[1,4,3], %w: f32[4]) -> (f32[1,4,3]) {
      %0: f32[1,2,6] = reshape(%x) {shape=[1, 2, 6]}
      %1: f32[1,2,6] = layer_norm(%0) {normalized_shape=[6]}
      %2: f32[1,4,3] = reshape(%1) {shape=[1, 4, 3]}
      %3: f32[4,1] = reshape(%w) {shape=[4, 1]}
      %4: f32[1,4,3] = mul(%2, %3)
      return %4
    }""", atol=1e-5)
