"""The benchmark workloads of the fusion issue (real architectures with random weights), and a suite of
blocks that reduce over a dim that is not the last."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Workload:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[], tuple[torch.Tensor, ...]]


class WideMLP(nn.Module):
    """1024-4096-4096-1024 with GELU."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 4096), nn.GELU(),
                                 nn.Linear(4096, 1024))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                     if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.down(x))


class ResNet18Style(nn.Module):
    """ResNet-18's stem and widths with one basic block per stage."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        self.stages = nn.Sequential(Block(64, 64, 1), Block(64, 128, 2), Block(128, 256, 2), Block(256, 512, 2))
        self.head = nn.Linear(512, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _eval(model: nn.Module) -> nn.Module:
    model.eval()
    for module in model.modules():  # non-trivial batch-norm statistics, as a trained model has
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(n_layer=2, use_cache=False, attn_implementation="sdpa")
    return GPT2Model(config).eval()


def _bert_tiny() -> nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512,
                        attn_implementation="sdpa")
    return BertModel(config).eval()


def _tokens(batch: int, seq: int, vocab: int) -> Callable[[], tuple[torch.Tensor, ...]]:
    return lambda: (torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0)),)


def workloads() -> list[Workload]:
    torch.manual_seed(0)
    return [
        Workload("mlp-b1", lambda: _eval(WideMLP()), lambda: (torch.randn(1, 1024),)),
        Workload("mlp-b64", lambda: _eval(WideMLP()), lambda: (torch.randn(64, 1024),)),
        Workload("resnet18-style", lambda: _eval(ResNet18Style()), lambda: (torch.randn(1, 3, 224, 224),)),
        Workload("gpt2-2l-s128", _gpt2, _tokens(1, 128, 50257)),
        Workload("bert-tiny-b1", _bert_tiny, _tokens(1, 128, 30522)),
        Workload("bert-tiny-b8", _bert_tiny, _tokens(8, 128, 30522)),
    ]


class MaskedMeanPool(nn.Module):
    """A sentence encoder's pooling: the mean of the unmasked token states, (h * m).sum(1) / m.sum(1)."""

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.unsqueeze(-1)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class ChannelLayerNorm(nn.Module):
    """ConvNeXt's channels-first LayerNorm as written there: statistics over dim 1 of NCHW."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.randn(channels)), nn.Parameter(torch.randn(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + 1e-6)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ChannelSoftmax(nn.Module):
    """Attention over the channels of a feature map: x * softmax(x) over dim 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.softmax(x, dim=1)


def reduction_workloads() -> list[Workload]:
    torch.manual_seed(0)
    mask = torch.ones(8, 128)
    mask[:, 100:] = 0
    return [
        Workload("mean-pool-b8-s128-h768", lambda: MaskedMeanPool().eval(), lambda: (torch.randn(8, 128, 768), mask)),
        Workload("convnext-ln-96x56x56", lambda: ChannelLayerNorm(96).eval(), lambda: (torch.randn(1, 96, 56, 56),)),
        Workload("channel-softmax-64x56x56", lambda: ChannelSoftmax().eval(), lambda: (torch.randn(1, 64, 56, 56),)),
        Workload("groupnorm-silu-128x32x32", lambda: nn.Sequential(nn.GroupNorm(32, 128), nn.SiLU()).eval(),
                 lambda: (torch.randn(2, 128, 32, 32),)),
    ]
