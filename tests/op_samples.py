"""Sample calls for ops registered outside the core table, merged into test_ops.SAMPLES.

Each area keeps its own dict here so that engineers adding ops do not edit the same lines.
"""

from __future__ import annotations

from heteropass.ir import DType, TensorType, parse_graph

Sample = tuple[list[TensorType], dict]

ONNX_SAMPLES: dict[str, Sample] = {}
_REGION = parse_graph("""graph region(%a: f32[2,3], %b: f32[3]) -> (f32[2,3], f32[2]) {
  %0: f32[2,3] = add(%a, %b)
  %1: f32[2,3] = gelu(%0)
  %2: f32[2] = sum(%1) {dims=[1]}
  return %1, %2
}""")

FUSION_SAMPLES: dict[str, Sample] = {
    "fused": ([TensorType((2, 3), DType.f32), TensorType((3,), DType.f32)], {"body": _REGION}),
}
