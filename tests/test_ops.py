"""Every op: inference by abstract evaluation agrees with running it on real random tensors."""

from __future__ import annotations

import pytest
import torch

from heteropass.ir import OPS, DType, OpError, TensorType, get_op
from heteropass.ir.sample import random_tensor

from .op_samples import FUSION_SAMPLES, ONNX_SAMPLES, QUANT_SAMPLES

F32, I64, BOOL = DType.f32, DType.i64, DType.bool


def t(*shape: int, dtype: DType = F32) -> TensorType:
    return TensorType(shape, dtype)


# op -> (operand types, attrs); one representative call per op.
SAMPLES: dict[str, tuple[list[TensorType], dict]] = {
    **{name: ([t(2, 3)], {}) for name in (
        "neg", "abs", "exp", "log", "log1p", "expm1", "sqrt", "rsqrt", "reciprocal", "sin", "cos", "tanh",
        "sigmoid", "erf", "floor", "ceil", "round", "sign", "relu", "silu", "hardswish", "hardsigmoid", "mish",
        "isnan", "gelu", "leaky_relu", "elu", "softplus", "tril", "triu")},
    "clamp": ([t(2, 3)], {"min": -0.5}),
    "softmax": ([t(2, 3)], {"dim": -1}),
    "log_softmax": ([t(2, 3)], {"dim": 0}),
    "logical_not": ([t(2, 3, dtype=BOOL)], {}),
    "bitwise_not": ([t(2, 3, dtype=I64)], {}),
    **{name: ([t(2, 3), t(3)], {}) for name in (
        "add", "sub", "mul", "div", "pow", "maximum", "minimum", "fmod", "remainder", "eq", "ne", "lt", "le",
        "gt", "ge")},
    **{name: ([t(2, 1, dtype=BOOL), t(3, dtype=BOOL)], {}) for name in ("logical_and", "logical_or", "logical_xor")},
    **{name: ([t(2, 3, dtype=I64), t(3, dtype=I64)], {}) for name in ("bitwise_and", "bitwise_or")},
    "where": ([t(2, 3, dtype=BOOL), t(2, 3), t(1)], {}),
    "cast": ([t(2, 3)], {"dtype": DType.f16}),
    "matmul": ([t(4, 2, 3), t(3, 5)], {}),
    "bmm": ([t(4, 2, 3), t(4, 3, 5)], {}),
    "linear": ([t(2, 3), t(5, 3), t(5)], {}),
    "conv": ([t(1, 4, 8, 8), t(6, 2, 3, 3), t(6)], {"stride": [2, 2], "padding": [1, 1], "groups": 2}),
    "conv_transpose": ([t(1, 4, 5, 5), t(4, 3, 3, 3)], {"stride": [2, 2]}),
    "scaled_dot_product_attention": ([t(1, 2, 4, 8), t(1, 2, 4, 8), t(1, 2, 4, 8)], {"is_causal": True}),
    "batch_norm": ([t(2, 3, 4, 4), t(3), t(3), t(3), t(3)], {}),
    "layer_norm": ([t(2, 3, 4), t(4), t(4)], {"normalized_shape": [4]}),
    "rms_norm": ([t(2, 3, 4), t(4)], {"normalized_shape": [4], "eps": 1e-6}),
    "group_norm": ([t(2, 4, 3), t(4), t(4)], {"groups": 2}),
    "max_pool": ([t(1, 2, 6, 6)], {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1]}),
    "avg_pool": ([t(1, 2, 6, 6)], {"kernel": [2, 2]}),
    "adaptive_avg_pool": ([t(1, 2, 6, 6)], {"output_size": [1, 1]}),
    "adaptive_max_pool": ([t(1, 2, 6, 6)], {"output_size": [2, 3]}),
    "interpolate": ([t(1, 2, 6, 6)], {"mode": "linear", "size": [9, 4]}),
    **{name: ([t(2, 3, 4)], {"dims": [1], "keepdim": True}) for name in (
        "sum", "mean", "amax", "amin", "prod", "var", "std")},
    **{name: ([t(2, 3, 4, dtype=BOOL)], {"dims": [0, 2]}) for name in ("any", "all")},
    "argmax": ([t(2, 3)], {"dim": 1}),
    "argmin": ([t(2, 3)], {}),
    "cumsum": ([t(2, 3)], {"dim": 1}),
    "reshape": ([t(2, 3, 4)], {"shape": [6, -1]}),
    "permute": ([t(2, 3, 4)], {"dims": [2, 0, 1]}),
    "transpose": ([t(2, 3, 4)], {"dim0": 0, "dim1": -1}),
    "expand": ([t(1, 3)], {"shape": [4, -1]}),
    "squeeze": ([t(1, 3, 1)], {"dims": [0]}),
    "unsqueeze": ([t(3)], {"dim": -1}),
    "flatten": ([t(2, 3, 4)], {"start_dim": 1}),
    "slice": ([t(5, 6)], {"dim": 1, "start": 1, "end": 5, "step": 2}),
    "index_select": ([t(5, 6), t(3, dtype=I64)], {"dim": 0}),
    "gather": ([t(5, 6), t(5, 2, dtype=I64)], {"dim": 1}),
    "embedding": ([t(10, 4), t(2, 3, dtype=I64)], {}),
    "index": ([t(5, 6, 7), t(3, dtype=I64), t(3, dtype=I64)], {"dims": [0, 2]}),
    "concat": ([t(2, 3), t(4, 3)], {"dim": 0}),
    "stack": ([t(2, 3), t(2, 3)], {"dim": 1}),
    "split": ([t(5, 6)], {"sizes": [2, 4], "dim": 1}),
    "pad": ([t(1, 2, 3)], {"pads": [1, 2]}),
    "full": ([], {"shape": [2, 3], "value": 1.5}),
    "arange": ([], {"end": 7.0}),
    "opaque": ([t(2, 3)], {"target": "aten.cummax.default", "spec": '{"args": [{"$in": 0}, 1], "kwargs": {}}'}),
}


SAMPLES.update(ONNX_SAMPLES)
SAMPLES.update(FUSION_SAMPLES)
SAMPLES.update(QUANT_SAMPLES)


def test_every_op_has_a_sample() -> None:
    assert sorted(set(OPS) - set(SAMPLES)) == []


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_inference_matches_execution(name: str) -> None:
    types, attrs = SAMPLES[name]
    op = get_op(name)
    attrs = op.check_attrs(attrs)
    inferred = op.infer(types, attrs)
    gen = torch.Generator().manual_seed(0)
    outputs = op.run([random_tensor(ty, gen) for ty in types], attrs)
    assert [TensorType.of(o) for o in outputs] == inferred


def test_schema_errors_name_op_and_attribute() -> None:
    op = get_op("transpose")
    with pytest.raises(OpError, match="missing required attribute 'dim1' of op 'transpose'"):
        op.check_attrs({"dim0": 0})
    with pytest.raises(OpError, match="unknown attribute"):
        op.check_attrs({"dim0": 0, "dim1": 1, "axis": 2})
    with pytest.raises(OpError, match="attribute 'dim0': expected int"):
        op.check_attrs({"dim0": 0.5, "dim1": 1})
    with pytest.raises(OpError, match="takes 2 operands"):
        get_op("add").infer([t(2)], {})
    with pytest.raises(OpError, match="rejects operands"):
        get_op("matmul").infer([t(2, 3), t(4, 5)], {})
    with pytest.raises(OpError, match=r"dims=\[\] is ambiguous"):
        get_op("any").infer([t(2, 3)], {"dims": (), "keepdim": False})
    with pytest.raises(OpError, match="unknown op 'frobnicate'"):
        get_op("frobnicate")
