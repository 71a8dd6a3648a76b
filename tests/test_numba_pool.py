"""numba_pool.py: max pooling as a Numba kernel matches PyTorch's, NaN included, and declines what it cannot run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from heteropass.backends.executable import build_executable
from heteropass.backends.numba_backend import NumbaBackend
from heteropass.backends.numba_pool import max_pool_source, supports_max_pool
from heteropass.backends.reference import ReferenceBackend
from heteropass.ir import DType, Graph, TensorType, parse_graph

NUMBA = NumbaBackend()


def _pool_graph(shape: tuple[int, ...], kernel: list[int], stride: list[int], padding: list[int],
                dilation: list[int], ceil_mode: bool, dtype: str = "f32") -> str:
    x = torch.empty(shape, device="meta")
    fn = F.max_pool1d if len(kernel) == 1 else F.max_pool2d
    out = list(fn(x, kernel, stride or kernel, padding, dilation, ceil_mode).shape)
    attrs = (f"kernel={kernel}, stride={stride}, padding={padding}, dilation={dilation}, "
             f"ceil_mode={'true' if ceil_mode else 'false'}")
    t_in, t_out = f"{dtype}[{','.join(map(str, shape))}]", f"{dtype}[{','.join(map(str, out))}]"
    return f"graph m(%x: {t_in}) -> ({t_out}) {{\n  %0: {t_out} = max_pool(%x) {{{attrs}}}\n  return %0\n}}"


def _run(text: str, x: torch.Tensor) -> tuple[torch.Tensor, str]:
    graph = parse_graph(text)
    executable = build_executable(graph, [NUMBA, ReferenceBackend()])
    assert [p.backend for p in executable.partitions] == [NUMBA]
    return executable(x)[0], executable.code


def _eager(x: torch.Tensor, kernel: list[int], stride: list[int], padding: list[int], dilation: list[int],
           ceil_mode: bool) -> torch.Tensor:
    fn = F.max_pool1d if len(kernel) == 1 else F.max_pool2d
    return fn(x, kernel, stride or kernel, padding, dilation, ceil_mode)


@pytest.mark.parametrize("shape, kernel, stride, padding, dilation, ceil_mode", [
    ((1, 8, 112, 112), [3, 3], [2, 2], [1, 1], [1, 1], False),  # a ResNet stem's pool
    ((2, 3, 9, 10), [2, 2], [], [0], [1], False),                # stride defaults to the kernel
    ((2, 3, 9, 10), [3, 2], [2, 1], [1, 0], [1, 1], True),
    ((1, 2, 11, 13), [3, 3], [2, 3], [1, 1], [2, 2], True),      # dilated windows
    ((5, 7, 12), [3, 3], [1, 1], [1, 1], [1, 1], False),         # no batch dim
    ((2, 4, 17), [4], [3], [2], [1], True),                      # 1-D
])
def test_max_pool_matches_eager(shape: tuple[int, ...], kernel: list[int], stride: list[int], padding: list[int],
                                dilation: list[int], ceil_mode: bool) -> None:
    x = torch.randn(shape) * 3 - 1  # mostly negative windows check the -inf padding
    got, code = _run(_pool_graph(shape, kernel, stride, padding, dilation, ceil_mode), x)
    assert "k_region_0(a0.data_ptr(), o0.data_ptr())" in code
    torch.testing.assert_close(got, _eager(x, kernel, stride, padding, dilation, ceil_mode), rtol=0, atol=0)


def test_nan_propagates_and_float64_runs() -> None:
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    x[0, 1, 2, 3] = float("nan")
    x[1, 2, 7, 7] = float("nan")
    got, _ = _run(_pool_graph(tuple(x.shape), [3, 3], [2, 2], [1, 1], [1, 1], False, "f64"), x)
    expected = F.max_pool2d(x, 3, 2, 1)
    assert torch.isnan(got).any()
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)


@settings(max_examples=30)  # each drawn shape compiles a kernel (~0.5 s; cached on disk across runs)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2), st.integers(1, 2),
       st.booleans(), st.integers(5, 12), st.integers(0, 2**31))
def test_random_pools_match_eager(kernel: int, stride: int, channels: int, padding: int, dilation: int,
                                  ceil_mode: bool, size: int, seed: int) -> None:
    padding = min(padding, kernel // 2)  # PyTorch's limit
    if (size + 2 * padding - dilation * (kernel - 1) - 1) < 0:
        return
    x = torch.randn((1, channels, size, size + 1), generator=torch.Generator().manual_seed(seed))
    attrs = ([kernel, kernel], [stride, stride], [padding, padding], [dilation, dilation], ceil_mode)
    got, _ = _run(_pool_graph(tuple(x.shape), *attrs), x)
    torch.testing.assert_close(got, _eager(x, *attrs), rtol=0, atol=0)


def test_declines_3d_integer_and_symbolic_pools() -> None:
    three_d = parse_graph("graph m(%x: f32[1,2,4,4,4]) -> (f32[1,2,2,2,2]) {\n"
                          "  %0: f32[1,2,2,2,2] = max_pool(%x) {kernel=[2, 2, 2]}\n  return %0\n}")
    integer = parse_graph("graph m(%x: i64[1,2,4,4]) -> (i64[1,2,2,2]) {\n"
                          "  %0: i64[1,2,2,2] = max_pool(%x) {kernel=[2, 2]}\n  return %0\n}")
    symbolic = Graph("m")
    x = symbolic.add_input("x", TensorType(("n", 2, 4, 4), DType.f32))
    symbolic.add_node("max_pool", [x], {"kernel": (2, 2)}, output_types=[TensorType(("n", 2, 2, 2), DType.f32)])
    for node in (three_d.nodes[0], integer.nodes[0], symbolic.nodes[0]):
        assert not supports_max_pool(node)
        with pytest.raises(ValueError, match="max pool %"):
            max_pool_source(node, "k")
    assert NUMBA.supports(three_d.nodes[0])  # through PyTorch, as a library op


def test_source_bakes_in_the_shapes() -> None:
    graph = parse_graph(_pool_graph((1, 64, 112, 112), [3, 3], [2, 2], [1, 1], [1, 1], False))
    kernel, entry = max_pool_source(graph.nodes[0], "k_pool")
    assert "def k_pool(x, o):" in kernel and f"range({64})" in kernel and "np.float32" in kernel
    assert f"({math.prod((1, 64, 112, 112))},)" in entry and "def k_pool_ptr(px, po):" in entry
