"""Exact int8 products through ONNX Runtime's MLAS: one `MatMulInteger` session per quantized linear.

`quant_gemm`'s "ort-int" plan rounds x to int8 values q (symmetric, |q| <= 127) and stores q + 128 as
uint8; the session multiplies that by the constant int8 weight (prepacked once) with an activation zero
point of 128, so it computes q @ w.T in int32. u8 x s8 is MLAS's fast integer path (with AVX-512 VNNI,
`vpdpbusd` sums in int32: exact); an s8 activation takes a reference loop ~20x slower. On AVX2 MLAS
sums pairs of u8 x s8 products in saturating int16 (vpmaddubsw: 255 * 127 * 2 > 32767), so the plan is
offered only where a probe at the node's sizes finds the product exact (`ort_int8_is_exact`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, partial

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper

from .ort_gemm import BoundRuns, ort, ort_available, session_options

ZERO_POINT = 128  # the uint8 activations are q + 128


def _session(weight: np.ndarray, rows: int, threads: int) -> object:
    """A session computing y = (x - 128) @ weight.T for uint8 x [rows, in] and int8 weight [out, in]."""
    out, inner = weight.shape
    node = helper.make_node("MatMulInteger", ["x", "w", "x_zero"], ["y"])
    initializers = [numpy_helper.from_array(np.ascontiguousarray(weight.T), "w"),
                    numpy_helper.from_array(np.array(ZERO_POINT, np.uint8), "x_zero")]
    graph = helper.make_graph([node], "int8_product",
                              [helper.make_tensor_value_info("x", TensorProto.UINT8, [rows, inner])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [rows, out])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"])


@cache
def ort_int8_is_exact(rows: int, inner: int, out: int) -> bool:
    """Whether ONNX Runtime's product of full-range operands of these sizes is exact on this CPU: a session
    on a random int8 weight with rows of 127 and -128, run once on random q with rows of +-127."""
    if not ort_available() or 0 in (rows, inner, out):
        return False  # ONNX Runtime refuses a session with an empty output
    g = np.random.default_rng(rows * 131 + inner * 7 + out)
    weight = g.integers(-128, 128, (out, inner), dtype=np.int8)
    q = g.integers(-127, 128, (rows, inner), dtype=np.int16)
    weight[0], weight[-1] = 127, -128
    q[-1] = -127
    q[0] = 127
    try:
        (got,) = _session(weight, rows, 1).run(None, {"x": (q + ZERO_POINT).astype(np.uint8)})
    except Exception:  # a session ONNX Runtime cannot make or run here: no plan
        return False
    return bool(np.array_equal(got.astype(np.float64), q.astype(np.float64) @ weight.T.astype(np.float64)))


def ort_int8_product(weight: torch.Tensor, rows: int) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """`run(xu, acc)`: acc (int32 [rows, out]) = (xu - 128) @ weight.T for xu uint8 [rows, in]; the session is
    made at the first run (see BoundRuns)."""
    w = weight.detach().contiguous().numpy()
    out, inner = w.shape
    runs = BoundRuns(partial(_session, w, rows), [("x", (rows, inner))], [("y", (rows, out))], [np.uint8, np.int32])

    def run(xu: torch.Tensor, acc: torch.Tensor) -> None:
        runs.run((xu,), (acc,))

    return run
