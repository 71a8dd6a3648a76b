"""numba_attention.py: attention_with_cache plans against PyTorch's attention over the concatenated cache."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from heteropass.backends import numba_attention
from heteropass.backends.executable import build_executable
from heteropass.backends.numba_backend import NumbaBackend
from heteropass.backends.reference import ReferenceBackend
from heteropass.ir import DType, Graph, TensorType, get_op

NUMBA = NumbaBackend()


def _node(q: tuple[int, ...], kv_heads: int, past: int, new: int, dv: int, mask: str, **attrs: object) -> tuple:
    b, h, lq, d = q
    graph = Graph("g")
    types = [TensorType(q, DType.f32)] + [TensorType((b, kv_heads, s, width), DType.f32)
                                           for s, width in ((past, d), (new, d), (past, dv), (new, dv))]
    if mask != "none":
        shapes = {"keys": (1, past + new), "rows": (lq, past + new), "full": (b, h, lq, past + new)}
        mask_shape = shapes[mask.split("-")[0]]
        types.append(TensorType(mask_shape, DType.bool if mask.endswith("bool") else DType.f32))
    values = [graph.add_input(f"a{i}", t) for i, t in enumerate(types)]
    graph.set_outputs([graph.call("attention_with_cache", *values, **attrs)])
    return graph.nodes[0], types


def _operands(types: list[TensorType], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    operands = [torch.randn(t.static_shape(), generator=g) for t in types[:5]]
    if len(types) == 6:
        keep = torch.rand(types[5].static_shape(), generator=g) > 0.3
        keep[..., 0] = True  # no row without a visible key
        operands.append(keep if types[5].dtype is DType.bool else torch.where(keep, 0.0, -30.0)
                        + torch.rand(types[5].static_shape(), generator=g))
    return operands


def _check(node: object, operands: list[torch.Tensor]) -> None:
    expected = get_op("attention_with_cache").reference(*operands, **node.attrs)  # type: ignore[attr-defined]
    assert numba_attention.supports_cached_attention(node)  # type: ignore[arg-type]
    for plan in (numba_attention.numba_plan(node), numba_attention.torch_plan(node)):  # type: ignore[arg-type]
        out = torch.full(expected.shape, float("nan"))  # the backend hands plans contiguous outputs
        assert plan.call(*operands, out=out) is out
        torch.testing.assert_close(out, expected, rtol=2e-5, atol=2e-6, msg=plan.name)
        torch.testing.assert_close(plan.call(*operands), expected, rtol=2e-5, atol=2e-6, msg=plan.name)


def test_grouped_query_decode_step() -> None:
    node, types = _node((1, 16, 1, 64), 4, 128, 1, 64, "none", enable_gqa=True, scale=0.125)
    _check(node, _operands(types, 0))


def test_masks_and_causal() -> None:
    for mask in ("keys-f32", "rows-bool", "full-f32"):
        node, types = _node((2, 4, 3, 8), 2, 5, 3, 6, mask, enable_gqa=True)
        _check(node, _operands(types, 1))
    node, types = _node((1, 2, 4, 8), 2, 0, 4, 8, "none", is_causal=True)
    _check(node, _operands(types, 2))


def test_a_query_row_with_every_key_masked_gives_zeros() -> None:
    """Padded batches have such rows; PyTorch's attention returns zeros for them, not NaN."""
    for mask in ("rows-bool", "full-f32"):
        node, types = _node((2, 2, 3, 8), 2, 4, 2, 8, mask)
        operands = _operands(types, 3)
        operands[5][..., 1, :] = False if mask.endswith("bool") else float("-inf")
        _check(node, operands)


@given(b=st.integers(1, 2), kv_heads=st.integers(1, 3), groups=st.integers(1, 3), lq=st.integers(1, 4),
       past=st.integers(0, 9), new=st.integers(1, 4), d=st.integers(1, 20), dv=st.integers(1, 20),
       mask=st.sampled_from(["none", "keys-f32", "rows-bool", "full-f32"]), causal=st.booleans(),
       seed=st.integers(0, 2**16))
@settings(max_examples=60, deadline=None)
def test_random_shapes(b: int, kv_heads: int, groups: int, lq: int, past: int, new: int, d: int, dv: int,
                       mask: str, causal: bool, seed: int) -> None:
    if causal:
        mask = "none"  # PyTorch rejects a mask together with is_causal
    node, types = _node((b, kv_heads * groups, lq, d), kv_heads, past, new, dv, mask, is_causal=causal,
                        enable_gqa=groups > 1)
    _check(node, _operands(types, seed))


def test_declines_half_precision_and_symbolic_shapes() -> None:
    graph = Graph("g")
    values = [graph.add_input(f"a{i}", TensorType((1, 2, 3, 4), DType.bf16)) for i in range(5)]
    graph.set_outputs([graph.call("attention_with_cache", *values)])
    assert not numba_attention.supports_cached_attention(graph.nodes[0])


@pytest.mark.parametrize("shapes", [
    [(2, 4, 1, 8), (1, 4, 6, 8), (1, 4, 1, 8), (1, 4, 6, 8), (1, 4, 1, 8)],  # a cache the batch shares
    [(1, 4, 1, 8), (2, 4, 6, 8), (2, 4, 1, 8), (2, 4, 6, 8), (2, 4, 1, 8)],  # more key batches than queries
    [(2, 1, 1, 8), (2, 4, 6, 8), (2, 4, 1, 8), (2, 4, 6, 8), (2, 4, 1, 8)],  # more key heads than query heads
    [(1, 2, 1, 8), (1, 2, 5, 8), (1, 2, 1, 8), (1, 2, 2, 8), (1, 2, 4, 8)],  # keys and values split elsewhere
])
def test_declines_broadcast_operands_and_uneven_splits_which_the_reference_computes(shapes: list) -> None:
    graph = Graph("g")
    values = [graph.add_input(f"a{i}", TensorType(shape, DType.f32)) for i, shape in enumerate(shapes)]
    graph.set_outputs([graph.call("attention_with_cache", *values)])
    node = graph.nodes[0]
    assert not numba_attention.supports_cached_attention(node)
    operands = _operands([v.type for v in values], 0)
    module = build_executable(graph, [NUMBA, ReferenceBackend()])
    expected = get_op("attention_with_cache").reference(*operands, **node.attrs)
    torch.testing.assert_close(module(*operands)[0], expected, rtol=2e-5, atol=2e-6)


def test_the_measured_choice_is_remembered() -> None:
    node, _ = _node((1, 4, 1, 16), 2, 32, 1, 16, "none", enable_gqa=True)
    choices: dict[tuple, str] = {}
    plan = numba_attention.choose_attention_plan(node, choices)
    assert list(choices.values()) == [plan.name]


def test_non_contiguous_operands() -> None:
    """Projections reshaped to heads arrive as transposed views."""
    node, types = _node((1, 4, 2, 8), 2, 3, 2, 8, "none", enable_gqa=True)
    operands = [torch.randn(t.static_shape()[0], t.static_shape()[2], t.static_shape()[1],
                            t.static_shape()[3]).transpose(1, 2) for t in types]
    assert not any(t.is_contiguous() for t in operands[1:])
    _check(node, operands)


def test_numba_backend_claims_cached_attention() -> None:
    node, types = _node((1, 4, 1, 8), 2, 6, 1, 8, "rows-bool", enable_gqa=True)
    graph = node.graph
    assert NUMBA.supports(node)
    executable = build_executable(graph.clone(), [NUMBA, ReferenceBackend()])
    assert [p.backend for p in executable.partitions] == [NUMBA], executable.code
    assert "# attention_with_cache: " in executable.code
    operands = _operands(types, 3)
    expected = get_op("attention_with_cache").reference(*operands, **node.attrs)
    torch.testing.assert_close(executable(*operands)[0], expected, rtol=2e-5, atol=2e-6)
