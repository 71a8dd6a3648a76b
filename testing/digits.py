"""A real classification task for precision and quantization checks: scikit-learn's bundled 8x8 digits
(1,797 images, no download), a fixed train/test split, and two small models trained on it in seconds,
an MLP and a CNN. Training is deterministic (seeded initialization, seeded shuffling, one thread's math),
so the fp32 test accuracy is the same number on every run on one machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

TEST_FRACTION = 0.25


@dataclass(frozen=True)
class DigitsSplit:
    """Pixels scaled to [0, 1] as float32 [n, 64], labels int64 [n]."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass(frozen=True)
class TrainedDigits:
    """A trained model in eval mode with the split it was trained on, its inputs already in the
    model's layout ([n, 64] for the MLP, [n, 1, 8, 8] for the CNN)."""

    name: str
    model: nn.Module
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def calibration(self, batches: int = 4, batch_size: int | None = None) -> list[tuple[torch.Tensor]]:
        """`batches` training-set batches of `batch_size` rows (the test-set size by default), each a
        one-tensor tuple, for static quantization ranges and error measurement."""
        size = batch_size or len(self.x_test)
        return [(self.x_train[i * size:(i + 1) * size],) for i in range(batches)
                if (i + 1) * size <= len(self.x_train)]

    def accuracy(self, predict: Callable[[torch.Tensor], object]) -> float:
        """Top-1 test accuracy in percent of `predict(x_test)` (logits [n, 10], tensor or array)."""
        return top1(predict(self.x_test), self.y_test)


def top1(logits: object, labels: torch.Tensor) -> float:
    """Percentage of rows whose largest logit is at the label."""
    predicted = torch.as_tensor(logits).argmax(dim=-1)
    return 100.0 * float((predicted == labels).double().mean())


def load_split(seed: int = 0) -> DigitsSplit:
    """The digits data set shuffled with `seed` and split 75/25 into train and test."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = round(len(x) * TEST_FRACTION)
    test, train = order[:n_test], order[n_test:]
    return DigitsSplit(x[train], y[train], x[test], y[test])


class DigitsMLP(nn.Module):
    """64 -> 256 -> 128 -> 10 with GELU."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 256)
        self.fc2 = nn.Linear(256, 128)
        self.fc3 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


class DigitsCNN(nn.Module):
    """conv3x3(1->16)-bn-relu, conv3x3(16->32)-bn-relu, 2x2 max pool, linear(512->64)-relu, linear(64->10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    """Adam with a cosine learning-rate schedule over seeded mini-batches of 64."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps_per_epoch = (len(x) + 63) // 64
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def _fit(name: str, make: Callable[[], nn.Module], layout: Callable[[torch.Tensor], torch.Tensor], epochs: int,
         seed: int) -> TrainedDigits:
    split = load_split(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread's reductions: the same weights on every run
    try:
        torch.manual_seed(seed)
        model = _train(make(), layout(split.x_train), split.y_train, epochs, seed)
    finally:
        torch.set_num_threads(threads)
    return TrainedDigits(name, model, layout(split.x_train), split.y_train, layout(split.x_test), split.y_test)


def train_mlp(seed: int = 0, epochs: int = 20) -> TrainedDigits:
    """DigitsMLP trained on the digits training split (about 98% test accuracy, a few seconds)."""
    return _fit("mlp", DigitsMLP, lambda x: x, epochs, seed)


def train_cnn(seed: int = 0, epochs: int = 10) -> TrainedDigits:
    """DigitsCNN trained on the digits training split (about 98-99% test accuracy, a few seconds)."""
    return _fit("cnn", DigitsCNN, lambda x: x.reshape(-1, 1, 8, 8), epochs, seed)
