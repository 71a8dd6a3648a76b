"""Sample calls for ops registered outside the core table, merged into test_ops.SAMPLES.

Each area keeps its own dict here so that engineers adding ops do not edit the same lines.
"""

from __future__ import annotations

from heteropass.ir import DType, TensorType, parse_graph

Sample = tuple[list[TensorType], dict]

def _t(*shape: int, dtype: DType = DType.f32) -> TensorType:
    return TensorType(shape, dtype)


_I64 = DType.i64
ONNX_SAMPLES: dict[str, Sample] = {
    **{name: ([_t(2, 3)], {}) for name in ("tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh")},
    **{name: ([_t(2, 3, dtype=_I64), _t(3, dtype=_I64)], {})
       for name in ("bitwise_xor", "bitwise_left_shift", "bitwise_right_shift")},
    "flip": ([_t(2, 3, 4)], {"dims": [0, 2]}),
    "tile": ([_t(2, 3)], {"repeats": [2, 1]}),
    "take": ([_t(5, 6), _t(2, 3, dtype=_I64)], {"dim": 1}),
    "gather_nd": ([_t(4, 5, 3), _t(2, 2, dtype=_I64)], {}),
    "scatter_elements": ([_t(4, 5), _t(2, 5, dtype=_I64), _t(2, 5)], {"dim": 0, "reduction": "add"}),
    "scatter_nd": ([_t(4, 5), _t(2, 1, dtype=_I64), _t(2, 5)], {"reduction": "max"}),
    "topk": ([_t(3, 6)], {"k": 2, "dim": 1}),
    "einsum": ([_t(2, 3), _t(3, 4)], {"equation": "ij,jk->ik"}),
    "cumprod": ([_t(2, 3)], {"dim": 1}),
    "det": ([_t(2, 3, 3)], {}),
    "local_response_norm": ([_t(1, 5, 3, 3)], {"size": 3}),
    "onnx_pool": ([_t(1, 2, 7, 7)], {"mode": "max", "kernel": [3, 3], "strides": [2, 2], "pads": [1, 0, 0, 1],
                                      "dilations": [1, 1], "ceil_mode": True, "indices": True}),
    "onnx_pad": ([_t(2, 3)], {"pads": [1, 2, 0, 1], "mode": "reflect"}),
    "grid_sample": ([_t(1, 2, 4, 4), _t(1, 3, 3, 2)], {"align_corners": True}),
    "bitcast": ([_t(2, 3)], {"dtype": DType.i32}),
}
_I8 = DType.i8
QUANT_SAMPLES: dict[str, Sample] = {
    "quantize": ([_t(4, 6), _t(6)], {"axis": 1, "dtype": _I8}),
    "dequantize": ([_t(4, 6, dtype=_I8), _t(4, 2), _t(4, 2, dtype=_I8)], {"axis": 1, "block_size": 3}),
    "linear_weight_int8": ([_t(2, 3, 8), _t(5, 8, dtype=_I8), _t(5, 2), _t(5)],
                           {"block_size": 4, "activation_bits": 16}),
    "linear_dynamic_int8": ([_t(3, 8), _t(5, 8, dtype=_I8), _t(5), _t(5)], {}),
}
_REGION = parse_graph("""graph region(%a: f32[2,3], %b: f32[3]) -> (f32[2,3], f32[2]) {
  %0: f32[2,3] = add(%a, %b)
  %1: f32[2,3] = gelu(%0)
  %2: f32[2] = sum(%1) {dims=[1]}
  return %1, %2
}""")

FUSION_SAMPLES: dict[str, Sample] = {
    "fused": ([TensorType((2, 3), DType.f32), TensorType((3,), DType.f32)], {"body": _REGION}),
    # grouped-query decode step: 4 query heads over 2 cached key/value heads of 5 positions plus 1 new
    "attention_with_cache": ([_t(1, 4, 1, 8), _t(1, 2, 5, 8), _t(1, 2, 1, 8), _t(1, 2, 5, 8), _t(1, 2, 1, 8),
                              _t(1, 6)], {"enable_gqa": True, "scale": 0.3}),
}
