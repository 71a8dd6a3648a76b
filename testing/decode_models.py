"""Batch-1 decode-step models with the KV cache as explicit inputs: transformers' GPT-2 and Llama causal
LMs with random weights, wrapped so one call is one generation step over plain tensors.

`DecodeStep.forward(input_ids [1, 1], position_ids [1, 1], *past_keys, *past_values)` returns
`(logits [1, 1, vocab], *new_keys, *new_values)`: the past is `n_layer` keys then `n_layer` values,
each [1, kv_heads, past, head_dim]; the new entries are this position's keys and values, [1, kv_heads, 1,
head_dim], which the caller appends. Inside, the tensors go into a transformers `DynamicCache`, which
torch.export traces as concatenations, so the whole step imports into heteropass as one static graph
(the past length is part of the compiled shapes).
"""

from __future__ import annotations

import torch
from torch import nn


class DecodeStep(nn.Module):
    """One decode step of a transformers causal LM with its cache as tensors (see the module docstring)."""

    def __init__(self, lm: nn.Module, n_layer: int, kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.lm = lm
        self.n_layer = n_layer
        self.kv_heads = kv_heads
        self.head_dim = head_dim

    @property
    def vocab_size(self) -> int:
        return int(self.lm.config.vocab_size)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers.cache_utils import DynamicCache

        if len(past) != 2 * self.n_layer:
            raise ValueError(f"expected {2 * self.n_layer} past tensors (keys then values), got {len(past)}")
        cache = DynamicCache(ddp_cache_data=list(zip(past[:self.n_layer], past[self.n_layer:], strict=True)))
        out = self.lm(input_ids=input_ids, position_ids=position_ids, cache=cache, use_cache=True)
        layers = out.cache.layers
        keys = [layer.keys[:, :, -1:] for layer in layers]
        values = [layer.values[:, :, -1:] for layer in layers]
        return (out.logits, *keys, *values)


def gpt2_decode(n_layer: int = 4, n_embd: int = 768, n_head: int = 12, vocab_size: int = 50257,
                n_positions: int = 1024, seed: int = 0) -> DecodeStep:
    """A GPT2LMHeadModel (GPT-2 small's widths and vocabulary by default, tied LM head) as a DecodeStep."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab_size,
                        n_positions=n_positions, attn_implementation="sdpa",
                        bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1)
    torch.manual_seed(seed)
    return DecodeStep(GPT2LMHeadModel(config).eval(), n_layer, n_head, n_embd // n_head)


def llama_decode(n_layer: int = 4, hidden: int = 1024, intermediate: int = 2816, n_head: int = 16,
                 n_kv_head: int = 4, vocab_size: int = 32000, max_positions: int = 2048,
                 seed: int = 0) -> DecodeStep:
    """A LlamaForCausalLM (RMSNorm, RoPE, SwiGLU, grouped-query attention, untied LM head) as a DecodeStep."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=n_layer,
                         num_attention_heads=n_head, num_key_value_heads=n_kv_head, vocab_size=vocab_size,
                         max_position_embeddings=max_positions, attn_implementation="sdpa",
                         bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    return DecodeStep(LlamaForCausalLM(config).eval(), n_layer, n_kv_head, hidden // n_head)


def decode_inputs(model: DecodeStep, past: int = 128, seed: int = 1) -> tuple[torch.Tensor, ...]:
    """A random next token at position `past`, and a random past of `past` positions for every layer."""
    generator = torch.Generator().manual_seed(seed)
    token = torch.randint(0, model.vocab_size, (1, 1), generator=generator)
    position = torch.tensor([[past]])
    shape = (1, model.kv_heads, past, model.head_dim)
    cache = [torch.randn(shape, generator=generator) for _ in range(2 * model.n_layer)]
    return (token, position, *cache)
