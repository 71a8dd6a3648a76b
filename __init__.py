"""heteropass: a graph compiler for PyTorch and ONNX models on CPUs and GPUs."""
