"""Compile an MLP with heteropass, compare with eager PyTorch, show timing and the dump folder."""

import torch
from common import run_example

from heteropass.testing.models import MLP

if __name__ == "__main__":
    torch.manual_seed(0)
    model = MLP().eval()
    run_example("mlp", model, (torch.randn(8, 64),))
