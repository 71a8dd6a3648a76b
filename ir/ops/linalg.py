"""Matrix products, convolutions and attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import Attr, register


@register("matmul", ["a", "b"], kind="matmul")
def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.matmul: 1-D/2-D products and batched products with broadcast batch dims."""
    return torch.matmul(a, b)


@register("bmm", ["a", "b"], kind="matmul")
def bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched product of [B,M,K] and [B,K,N]."""
    return torch.bmm(a, b)


@register("linear", ["x", "weight", "bias?"], kind="matmul")
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias, weight stored [out, in] as in nn.Linear."""
    return F.linear(x, weight, bias)


_CONV_ATTRS = {
    "stride": Attr("ints", (1,)), "padding": Attr("ints", (0,)), "dilation": Attr("ints", (1,)),
    "groups": Attr("int", 1),
}


def _conv_fn(rank: int, transposed: bool):  # type: ignore[no-untyped-def]
    table = {False: {1: F.conv1d, 2: F.conv2d, 3: F.conv3d},
             True: {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}}
    try:
        return table[transposed][rank]
    except KeyError:
        raise ValueError(f"convolution over {rank} spatial dims is not supported") from None


@register("conv", ["x", "weight", "bias?"], _CONV_ATTRS, kind="conv")
def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
         stride: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...],
         groups: int) -> torch.Tensor:
    """N-d convolution (1-D/2-D/3-D by the weight's rank), weight [out, in/groups, *kernel]."""
    fn = _conv_fn(weight.dim() - 2, transposed=False)
    return fn(x, weight, bias, stride, padding, dilation, groups)


@register("conv_transpose", ["x", "weight", "bias?"],
          {**_CONV_ATTRS, "output_padding": Attr("ints", (0,))}, kind="conv")
def conv_transpose(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                   stride: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...],
                   groups: int, output_padding: tuple[int, ...]) -> torch.Tensor:
    """N-d transposed convolution, weight [in, out/groups, *kernel]."""
    fn = _conv_fn(weight.dim() - 2, transposed=True)
    return fn(x, weight, bias, stride, padding, output_padding, groups, dilation)


@register("scaled_dot_product_attention", ["q", "k", "v", "mask?"],
          {"is_causal": Attr("bool", False), "scale": Attr("float", None, optional=True),
           "enable_gqa": Attr("bool", False)}, kind="attention")
def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None, *, is_causal: bool,
                                 scale: float | None, enable_gqa: bool) -> torch.Tensor:
    """softmax(q @ k^T * scale + mask) @ v; a bool mask keeps True positions."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale,
                                          enable_gqa=enable_gqa)


@register("attention_with_cache", ["q", "k_past", "k_new", "v_past", "v_new", "mask?"],
          {"is_causal": Attr("bool", False), "scale": Attr("float", None, optional=True),
           "enable_gqa": Attr("bool", False)}, kind="attention")
def attention_with_cache(q: torch.Tensor, k_past: torch.Tensor, k_new: torch.Tensor, v_past: torch.Tensor,
                         v_new: torch.Tensor, mask: torch.Tensor | None = None, *, is_causal: bool,
                         scale: float | None, enable_gqa: bool) -> torch.Tensor:
    """scaled_dot_product_attention over a key/value cache followed by the new keys and values:
    k = concat(k_past, k_new) and v = concat(v_past, v_new) along the sequence (dim -2), which kernels
    read in place instead of concatenating (a decode step's attention)."""
    return scaled_dot_product_attention(q, torch.cat([k_past, k_new], -2), torch.cat([v_past, v_new], -2), mask,
                                        is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
