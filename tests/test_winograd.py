"""winograd.py: 3x3 stride-1 convolutions by F(4x4, 3x3) match eager PyTorch's and write into `out=`;
the method applies only where it computes the same function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from heteropass.backends.gemm import library_products
from heteropass.backends.winograd import WINOGRAD, winograd_applies, winograd_conv_call
from heteropass.ir import Graph, Node, TensorType


def _conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, constant: bool = True, **attrs: object) -> Node:
    graph = Graph("m")
    operands = [graph.add_input("x", TensorType.of(x))]
    for name, tensor in (("w", w), ("b", b)):
        if tensor is not None:
            operands.append(graph.add_constant(name, tensor) if constant else
                            graph.add_input(name, TensorType.of(tensor)))
    node = graph.add_node("conv", operands, {"stride": (1,), "padding": (1,), "dilation": (1,), "groups": 1, **attrs})
    graph.set_outputs(node.outputs)
    return node


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("n, c_in, c_out, h, w, padding", [
    (1, 64, 64, 56, 56, (1,)),  # a ResNet stage's convolution
    (2, 3, 5, 9, 11, (1,)),     # output sizes that are no multiple of the tile
    (1, 4, 6, 8, 8, (0,)),      # valid convolution
    (1, 4, 6, 7, 10, (2, 0)),   # padding wider than the window's half, per dim
    (3, 8, 2, 1, 3, (1,)),      # one input row
])
def test_matches_eager(n: int, c_in: int, c_out: int, h: int, w: int, padding: tuple[int, ...]) -> None:
    x, weight, bias = torch.randn(n, c_in, h, w), torch.randn(c_out, c_in, 3, 3), torch.randn(c_out)
    found = winograd_conv_call(_conv(x, weight, bias, padding=padding))
    assert found is not None and found[1].startswith(WINOGRAD)
    call, _ = found
    expected = F.conv2d(x, weight, bias, padding=padding if len(padding) == 2 else padding[0])
    assert _relative_error(call(x, weight, bias), expected) < 1e-5
    out = torch.empty_like(expected)
    assert call(x, weight, bias, out) is out
    assert _relative_error(out, expected) < 1e-5


@settings(max_examples=40)
@given(st.integers(1, 2), st.integers(1, 6), st.integers(1, 6), st.integers(1, 13), st.integers(1, 13),
       st.integers(0, 2), st.booleans(), st.integers(0, 2**31))
def test_random_shapes_match_eager(n: int, c_in: int, c_out: int, h: int, w: int, padding: int, bias: bool,
                                   seed: int) -> None:
    if min(h, w) + 2 * padding < 3:
        return
    generator = torch.Generator().manual_seed(seed)
    x, weight = torch.randn(n, c_in, h, w, generator=generator), torch.randn(c_out, c_in, 3, 3, generator=generator)
    b = torch.randn(c_out, generator=generator) if bias else None
    call, _ = winograd_conv_call(_conv(x, weight, b, padding=(padding,)))
    assert _relative_error(call(x, weight, b), F.conv2d(x, weight, b, padding=padding)) < 1e-5


def test_non_contiguous_input_and_a_nan_reach_the_output() -> None:
    x, weight, bias = torch.randn(1, 4, 12, 12), torch.randn(4, 4, 3, 3), torch.randn(4)
    call, _ = winograd_conv_call(_conv(x, weight, bias))
    strided = torch.randn(1, 12, 12, 4).permute(0, 3, 1, 2)
    assert _relative_error(call(strided, weight, bias), F.conv2d(strided, weight, bias, padding=1)) < 1e-5
    x[0, 1, 5, 6] = float("nan")
    got = call(x, weight, bias)
    assert torch.isnan(got[0, :, 5, 6]).all()  # a NaN spreads over its 4x4 tile, as documented
    finite = ~torch.isnan(F.conv2d(x, weight, bias, padding=1))
    far = torch.zeros_like(finite)
    far[..., :4, :] = True  # the tile row above the NaN's window
    torch.testing.assert_close(got[far & finite], F.conv2d(x, weight, bias, padding=1)[far & finite],
                               rtol=1e-4, atol=1e-4)


def test_applies_only_to_float32_3x3_stride_1_convs_with_constant_weights() -> None:
    x, w3, b = torch.randn(1, 4, 8, 8), torch.randn(4, 4, 3, 3), torch.randn(4)
    assert winograd_applies(_conv(x, w3, b)) and winograd_applies(_conv(x, w3, None))
    declined = [_conv(x, w3, b, stride=(2,)), _conv(x, w3, b, dilation=(2,)),
                _conv(x, torch.randn(4, 2, 3, 3), b, groups=2), _conv(x, torch.randn(4, 4, 5, 5), b),
                _conv(x, w3, b, constant=False), _conv(x.double(), w3.double(), b.double()),
                _conv(torch.randn(1, 4, 8), torch.randn(4, 4, 3), b)]
    for node in declined:
        assert not winograd_applies(node) and winograd_conv_call(node) is None


def test_is_one_of_the_timed_library_options() -> None:
    node = _conv(torch.randn(1, 4, 8, 8), torch.randn(4, 4, 3, 3), torch.randn(4))
    assert any(p.text.startswith(WINOGRAD) and p.writes_out for p in library_products(node))
