"""Compile a ResNet-style CNN (conv, batchnorm, relu, pooling, residual add) with heteropass."""

from common import run_example

from heteropass.testing import models

if __name__ == "__main__":
    run_example("resnet", models.resnet_cnn(), models.resnet_inputs(batch=2, size=32))
