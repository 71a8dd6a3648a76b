"""Small real architectures shared by the end-to-end tests: an MLP, a ResNet-style CNN, a GPT-2-style
transformer (attention written out, or through `F.scaled_dot_product_attention`), and factories for
HuggingFace GPT-2 and BERT with random weights.

Every model is in eval mode with seeded weights; every `*_inputs()` helper is deterministic.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class MLP(nn.Module):
    """64 -> 128 -> 128 -> 10 with GELU and ReLU."""

    def __init__(self, d_in: int = 64, hidden: int = 128, d_out: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.gelu(self.fc1(x)))))


def mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP().eval()


def mlp_inputs(batch: int = 8, seed: int = 1) -> tuple[torch.Tensor]:
    return (torch.randn(batch, 64, generator=_generator(seed)),)


class BasicBlock(nn.Module):
    """Two 3x3 conv-bn layers with a residual connection (projected when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ResNetCNN(nn.Module):
    """A small ResNet: stem conv-bn-relu-maxpool, two residual stages, global average pool, linear head."""

    def __init__(self, channels: int = 3, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(), nn.MaxPool2d(2))
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet_cnn(seed: int = 0) -> ResNetCNN:
    """A ResNetCNN whose batch-norm statistics are not the identity, so they matter numerically."""
    torch.manual_seed(seed)
    model = ResNetCNN()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    return model.eval()


def resnet_inputs(batch: int = 2, size: int = 16, seed: int = 1) -> tuple[torch.Tensor]:
    return (torch.randn(batch, 3, size, size, generator=_generator(seed)),)


class CausalSelfAttention(nn.Module):
    """GPT-2 attention: fused qkv projection, heads, causal mask, output projection.

    `use_sdpa` selects `F.scaled_dot_product_attention(is_causal=True)` over the written-out
    matmul / masked_fill / softmax form.
    """

    def __init__(self, d_model: int, n_head: int, max_len: int, use_sdpa: bool) -> None:
        super().__init__()
        self.n_head = n_head
        self.use_sdpa = use_sdpa
        self.c_attn = nn.Linear(d_model, 3 * d_model)
        self.c_proj = nn.Linear(d_model, d_model)
        mask = torch.tril(torch.ones(max_len, max_len, dtype=torch.bool))
        self.register_buffer("causal_mask", mask.view(1, 1, max_len, max_len), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        if self.use_sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            scores = scores.masked_fill(~self.causal_mask[:, :, :t, :t], float("-inf"))
            y = F.softmax(scores, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class GPT2Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)) with GELU(tanh)."""

    def __init__(self, d_model: int, n_head: int, max_len: int, use_sdpa: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head, max_len, use_sdpa)
        self.ln_2 = nn.LayerNorm(d_model)
        self.c_fc = nn.Linear(d_model, 4 * d_model)
        self.c_proj = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT2Style(nn.Module):
    """Token + position embedding, `n_layer` GPT2Blocks, final layer norm and a tied LM head."""

    def __init__(self, vocab: int = 256, d_model: int = 64, n_head: int = 4, n_layer: int = 2,
                 max_len: int = 64, use_sdpa: bool = False) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d_model)
        self.wpe = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(GPT2Block(d_model, n_head, max_len, use_sdpa) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.t()


def gpt2_style(use_sdpa: bool = False, seed: int = 0, **kwargs: Any) -> GPT2Style:
    torch.manual_seed(seed)
    return GPT2Style(use_sdpa=use_sdpa, **kwargs).eval()


def gpt2_style_inputs(batch: int = 2, seq: int = 16, vocab: int = 256, seed: int = 1) -> tuple[torch.Tensor]:
    return (torch.randint(0, vocab, (batch, seq), generator=_generator(seed)),)


def hf_gpt2(n_layer: int = 2, n_embd: int = 64, n_head: int = 4, vocab_size: int = 1000, n_positions: int = 128,
            attn_implementation: str = "sdpa", seed: int = 0) -> nn.Module:
    """A transformers GPT2Model with random weights, without KV cache (static graph)."""
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab_size,
                        n_positions=n_positions, use_cache=False, attn_implementation=attn_implementation,
                        bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1)
    torch.manual_seed(seed)
    return GPT2Model(config).eval()


def hf_gpt2_inputs(batch: int = 2, seq: int = 16, vocab_size: int = 1000, seed: int = 1) -> tuple[torch.Tensor]:
    return (torch.randint(0, vocab_size, (batch, seq), generator=_generator(seed)),)


def hf_bert(n_layer: int = 2, hidden: int = 64, n_head: int = 4, vocab_size: int = 1000,
            attn_implementation: str = "sdpa", seed: int = 0) -> nn.Module:
    """A small transformers BertModel (with pooler) with random weights."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=n_layer,
                        num_attention_heads=n_head, intermediate_size=4 * hidden, max_position_embeddings=128,
                        attn_implementation=attn_implementation)
    torch.manual_seed(seed)
    return BertModel(config).eval()


def hf_bert_inputs(batch: int = 2, seq: int = 16, vocab_size: int = 1000,
                   seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and an attention mask whose second sequence is padded at the end."""
    input_ids = torch.randint(0, vocab_size, (batch, seq), generator=_generator(seed))
    attention_mask = torch.ones(batch, seq, dtype=torch.int64)
    attention_mask[-1, seq // 2:] = 0
    return input_ids, attention_mask
