"""Compile an MLP with heteropass, compare with eager PyTorch, show timing and the dump folder."""

from common import run_example

from heteropass.testing import models

if __name__ == "__main__":
    run_example("mlp", models.mlp(), models.mlp_inputs(batch=8))
