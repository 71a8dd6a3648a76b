"""The op table. Importing this package registers every op."""

from . import elementwise, extra, fused, linalg, misc, nn, onnx_ops, quant, reduce, shape  # noqa: F401  (registration)
from .misc import decode_call, encode_call, resolve_target
from .registry import OPS, Attr, OpDef, OpError, get_op, register

__all__ = ["OPS", "Attr", "OpDef", "OpError", "decode_call", "encode_call", "get_op", "register",
           "resolve_target"]
