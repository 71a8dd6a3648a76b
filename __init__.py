"""heteropass: a graph compiler for PyTorch and ONNX models on CPUs and GPUs.

    cm = heteropass.compile(model, (x,), opt_level=2, dump_dir="dumps/")
    y = cm(x)

and `torch.compile(model, backend="heteropass")`.
"""

from .api import CompiledModule, CompileOptions, compile

__all__ = ["CompileOptions", "CompiledModule", "compile"]
