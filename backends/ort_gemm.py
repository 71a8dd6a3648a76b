"""Products through ONNX Runtime's MLAS kernels: one single-node ONNX session per product.

On AVX2 machines MLAS's SGEMM and convolution beat both MKL (`F.linear`) and oneDNN, and a session
prepacks its constant weights once. A product whose weight (and bias) are constants becomes a
`Gemm` (2-D view of the input, so `[B, S, K]` activations need no copy) or a `Conv` session; the
call binds the input and the output tensor's memory directly (`IOBinding`, kept between calls: see
`BoundRuns`), so nothing is copied and the result lands in a preallocated `out=` buffer.
`gemm.choose_plan` keeps it only where it is measured fastest; the session is made at the first
call, so options that are only listed cost nothing. The session runs with PyTorch's thread count
and without spinning threads, so its pool and PyTorch's OpenMP pool do not stall each other (each
session owns `threads - 1` parked worker threads; ONNX Runtime's global pool would share them, but
its size is fixed per process).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from ..ir import DType, Node, Value

try:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
except ImportError:  # onnxruntime is optional for this backend
    ort = None


def ort_available() -> bool:
    return ort is not None


def ort_product_call(node: Node) -> tuple[Callable[..., torch.Tensor], str] | None:
    """`call(x, w, b, out=None)` computing `node` (a float32 linear, 2-D matmul or conv with constant
    weight and bias) in an ONNX Runtime session, and its description; None when it does not apply."""
    if ort is None or not ort_applies(node):
        return None
    weight = node.inputs[1].const
    bias = node.inputs[2].const if len(node.inputs) > 2 else None
    assert weight is not None
    x_shape = tuple(node.inputs[0].type.static_shape())
    y_shape = tuple(node.outputs[0].type.static_shape())
    if node.op == "conv":
        onnx_node, x_onnx, text = _conv(node, bias is not None), x_shape, "onnxruntime Conv"
    else:
        k = x_shape[-1]
        x_onnx = (math.prod(x_shape[:-1]), k)
        w = weight if node.op == "linear" else weight.t()
        weight = w.contiguous()
        onnx_node = helper.make_node("Gemm", ["x", "w", "b"] if bias is not None else ["x", "w"], ["y"], transB=1)
        text = "onnxruntime Gemm(x, w, b, transB=1)"
    y_onnx = (x_onnx[0], y_shape[-1]) if node.op != "conv" else y_shape
    runs = BoundRuns(partial(_session, onnx_node, x_onnx, y_onnx, weight, bias), [("x", x_onnx)], [("y", y_onnx)])

    def call(x: torch.Tensor, w: object, b: object, out: torch.Tensor | None = None) -> torch.Tensor:
        x = x.contiguous()
        y = torch.empty(y_shape, dtype=torch.float32) if out is None else out
        runs.run((x,), (y,))
        return y

    return call, text


def session_options(threads: int) -> Any:
    """Options of the sessions the backend makes: `threads` intra-op threads that sleep when idle (a
    spinning pool stalls PyTorch's and Numba's threads on a shared core) and errors only in the log."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class BoundRuns:
    """Runs of a session on float32 tensors bound by address (IOBinding), nothing copied. A binding
    is kept between runs and rebound only where an address changed: making and binding one costs more
    than a small product's run (~40 µs against ~120 µs for [128, 128] x [128, 128]). Each concurrent
    caller takes a binding of its own. `make_session(threads)` makes the session at the first run on
    `torch.get_num_threads()` threads (planning lists options it never runs), and again when that
    number changes, so `torch.set_num_threads` governs ONNX Runtime's threads as it governs PyTorch's.
    Tensors are float32 unless `dtypes` gives the numpy type of each input and output."""

    def __init__(self, make_session: Callable[[int], Any], inputs: Sequence[tuple[str, tuple[int, ...]]],
                 outputs: Sequence[tuple[str, tuple[int, ...]]], dtypes: Sequence[type] | None = None) -> None:
        self._make_session = make_session
        self._sessions: dict[int, Any] = {}
        self._names = [name for name, _ in [*inputs, *outputs]]
        self._shapes = [list(shape) for _, shape in [*inputs, *outputs]]
        self._dtypes = list(dtypes) if dtypes is not None else [np.float32] * len(self._names)
        self._inputs = len(inputs)
        self._idle: dict[int, list[tuple[list[Callable[..., None]], list[int]]]] = {}

    def run(self, inputs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor]) -> None:
        """Run with `inputs` read and `outputs` written in place (all contiguous, of the bound shapes and types)."""
        threads = torch.get_num_threads()
        idle = self._idle.setdefault(threads, [])
        try:
            binders, addresses = idle.pop()
        except IndexError:
            binders, addresses = self._binders(threads), [0] * len(self._names)
        try:
            for i, tensor in enumerate((*inputs, *outputs)):
                address = tensor.data_ptr()
                if address != addresses[i]:
                    binders[i](self._names[i], self._dtypes[i], self._shapes[i], address)
                    addresses[i] = address
            binders[-1]()
        finally:
            idle.append((binders, addresses))

    def _binders(self, threads: int) -> list[Callable[..., None]]:
        """One binding's `bind(name, dtype, shape, address)` per input and output, then its `run()`. They
        bind through the binding's C object where it has one: the Python wrapper builds a device
        description on every call, which costs several times the binding itself."""
        if threads not in self._sessions:
            self._sessions[threads] = self._make_session(threads)
        session = self._sessions[threads]
        binding = session.io_binding()
        c_binding, c_session = getattr(binding, "_iobinding", None), getattr(session, "_sess", None)
        if c_binding is not None and c_session is not None and hasattr(ort, "OrtDevice"):
            device = ort.OrtDevice.make("cpu", 0)._get_c_device()
            bind_input, bind_output = partial(c_binding.bind_input), partial(c_binding.bind_output)
            binders = [(lambda n, t, s, a, b=bind: b(n, device, t, s, a))
                       for bind in [bind_input] * self._inputs + [bind_output] * (len(self._names) - self._inputs)]
            return [*binders, partial(c_session.run_with_iobinding, c_binding, None)]
        binders = [(lambda n, t, s, a, b=bind: b(n, "cpu", 0, t, s, a))
                   for bind in ([binding.bind_input] * self._inputs
                                + [binding.bind_output] * (len(self._names) - self._inputs))]
        return [*binders, partial(session.run_with_iobinding, binding)]


def ort_applies(node: Node, constant: Callable[[Value], bool] = lambda v: v.const is not None) -> bool:
    """Whether `ort_product_call` computes `node`: a float32 linear, matmul or conv over static shapes whose
    weight (and bias) are `constant` (a region's body sees the constants its node passes as inputs), none of
    them empty (ONNX Runtime refuses to run a session with an empty output)."""
    if node.op not in ("linear", "matmul", "conv"):
        return False
    types = [v.type for v in [*node.inputs, *node.outputs]]
    if any(not t.is_static or t.dtype is not DType.f32 for t in types):
        return False
    if any(math.prod(t.static_shape()) == 0 for t in types):
        return False
    if not all(map(constant, node.inputs[1:])) or node.inputs[1].type.rank != (2 if node.op != "conv" else
                                                                               node.inputs[0].type.rank):
        return False
    if node.op != "conv":
        return node.inputs[0].type.rank >= 2
    return node.inputs[0].type.rank in (3, 4, 5)


def _conv(node: Node, has_bias: bool) -> object:
    spatial = node.inputs[1].type.rank - 2

    def per_dim(values: tuple[int, ...]) -> list[int]:
        return list(values) * spatial if len(values) == 1 else list(values)

    padding = per_dim(node.attrs["padding"])
    return helper.make_node("Conv", ["x", "w", "b"] if has_bias else ["x", "w"], ["y"],
                            strides=per_dim(node.attrs["stride"]), pads=padding + padding,
                            dilations=per_dim(node.attrs["dilation"]), group=node.attrs["groups"])


def _session(onnx_node: object, x_shape: tuple[int, ...], y_shape: tuple[int, ...], weight: torch.Tensor,
             bias: torch.Tensor | None, threads: int) -> object:
    initializers = [numpy_helper.from_array(weight.detach().contiguous().numpy(), "w")]
    if bias is not None:
        initializers.append(numpy_helper.from_array(bias.detach().contiguous().numpy(), "b"))
    graph = helper.make_graph([onnx_node], "product",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"])
