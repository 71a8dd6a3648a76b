"""The ONNX exporter: every op and real architectures export to models that pass the full ONNX check
and compute in onnxruntime what the reference interpreter computes; regions export as functions."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import onnx
import onnxruntime as ort
import pytest
import torch

import heteropass as hp
from heteropass.api import CompileOptions, optimize
from heteropass.ir import OPS, Attr, DType, Graph, TensorType, parse_graph, register, run_graph
from heteropass.ir.onnx_exporter import DOMAIN, OnnxExportError, export_onnx
from heteropass.ir.sample import random_inputs
from heteropass.ir.torch_importer import import_module
from heteropass.testing import models
from heteropass.testing.assertions import assert_outputs_close

from .test_ops import SAMPLES

F32, I64, I32, BOOL = DType.f32, DType.i64, DType.i32, DType.bool


def t(*shape: int, dtype: DType = F32) -> TensorType:
    return TensorType(shape, dtype)


# Variants beyond test_ops.SAMPLES, for attributes and dtypes whose lowering differs.
VARIANTS: dict[str, tuple[str, list[TensorType], dict]] = {
    "add_int_float": ("add", [t(2, 3, dtype=I64), t(3)], {}),
    "add_bool": ("add", [t(2, 3, dtype=BOOL), t(3, dtype=BOOL)], {}),
    "mul_scalar_tensor": ("mul", [t(2, 3), t(dtype=DType.f64)], {}),
    "lt_int_float": ("lt", [t(2, 3, dtype=I64), t(3)], {}),
    "div_trunc": ("div", [t(2, 3), t(3)], {"rounding_mode": "trunc"}),
    "div_floor": ("div", [t(2, 3), t(3)], {"rounding_mode": "floor"}),
    "div_int": ("div", [t(2, 3, dtype=I64), t(3, dtype=I64)], {}),
    "div_int_floor": ("div", [t(4, 3, dtype=I64), t(3, dtype=I64)], {"rounding_mode": "floor"}),
    "remainder_int": ("remainder", [t(4, 3, dtype=I64), t(3, dtype=I64)], {}),
    "fmod_int": ("fmod", [t(4, 3, dtype=I64), t(3, dtype=I64)], {}),
    "exp_int": ("exp", [t(2, 3, dtype=I64)], {}),
    "floor_int": ("floor", [t(2, 3, dtype=I64)], {}),
    "bitwise_and_bool": ("bitwise_and", [t(2, 3, dtype=BOOL), t(3, dtype=BOOL)], {}),
    "gelu_tanh": ("gelu", [t(2, 3)], {"approximate": "tanh"}),
    "softplus_beta": ("softplus", [t(2, 3)], {"beta": 2.0, "threshold": 1.0}),
    "clamp_both": ("clamp", [t(2, 3)], {"min": -0.5, "max": 0.5}),
    "clamp_int": ("clamp", [t(2, 3, dtype=I64)], {"min": 1.5, "max": 2.0}),
    "clamp_bool": ("clamp", [t(2, 3, dtype=BOOL)], {"min": 0.0}),
    "cast_to_int": ("cast", [t(2, 3)], {"dtype": I32}),
    "cast_to_bool": ("cast", [t(2, 3, dtype=I64)], {"dtype": BOOL}),
    "where_int": ("where", [t(2, 3, dtype=BOOL), t(2, 3, dtype=I64), t(3)], {}),
    "linear_3d": ("linear", [t(2, 4, 3), t(5, 3), t(5)], {}),
    "linear_no_bias": ("linear", [t(2, 3), t(5, 3)], {}),
    "matmul_vector": ("matmul", [t(3), t(2, 3, 4)], {}),
    "conv_1d_dilated": ("conv", [t(2, 4, 9), t(6, 4, 3)], {"padding": [2], "dilation": [2]}),
    "conv_unbatched": ("conv", [t(4, 7, 7), t(6, 4, 3, 3)], {"stride": [2]}),
    "conv_transpose_groups": ("conv_transpose", [t(1, 4, 5, 5), t(4, 3, 3, 3), t(6)],
                              {"stride": [2, 2], "padding": [1, 1], "output_padding": [1, 1], "groups": 2}),
    "sdpa_bool_mask": ("scaled_dot_product_attention",
                       [t(2, 2, 4, 8), t(2, 2, 6, 8), t(2, 2, 6, 8), t(2, 1, 4, 6, dtype=BOOL)], {"scale": 0.3}),
    "sdpa_float_mask": ("scaled_dot_product_attention", [t(2, 4, 8), t(2, 6, 8), t(2, 6, 5), t(4, 6)], {}),
    "sdpa_causal_rect": ("scaled_dot_product_attention", [t(1, 2, 3, 8), t(1, 2, 5, 8), t(1, 2, 5, 8)],
                         {"is_causal": True}),
    "sdpa_gqa": ("scaled_dot_product_attention", [t(1, 4, 3, 8), t(1, 2, 3, 8), t(1, 2, 3, 8)], {"enable_gqa": True}),
    "batch_norm_no_affine": ("batch_norm", [t(2, 3, 5), t(3), t(3)], {"eps": 1e-3}),
    "layer_norm_2d_no_affine": ("layer_norm", [t(2, 3, 4)], {"normalized_shape": [3, 4]}),
    "rms_norm_default_eps": ("rms_norm", [t(2, 3, 4)], {"normalized_shape": [3, 4]}),
    "group_norm_4d": ("group_norm", [t(2, 6, 3, 3), t(6), t(6)], {"groups": 3}),
    "max_pool_ceil": ("max_pool", [t(1, 2, 7, 7)], {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1],
                                                     "ceil_mode": True}),
    "max_pool_dilated_1d": ("max_pool", [t(2, 3, 10)], {"kernel": [2], "dilation": [2]}),
    "avg_pool_pad_exclude": ("avg_pool", [t(1, 2, 6, 6)], {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1],
                                                          "count_include_pad": False}),
    "avg_pool_ceil": ("avg_pool", [t(1, 2, 7, 7)], {"kernel": [2, 2], "ceil_mode": True}),
    "avg_pool_divisor": ("avg_pool", [t(1, 2, 6, 6)], {"kernel": [2, 2], "padding": [1, 1], "divisor_override": 3}),
    "avg_pool_divisor_ceil": ("avg_pool", [t(1, 2, 7, 8)], {"kernel": [2, 3], "stride": [2, 2], "padding": [1, 0],
                                                            "ceil_mode": True, "divisor_override": 2}),
    "avg_pool_divisor_ceil_unbatched": ("avg_pool", [t(2, 8, 8)], {"kernel": [3, 3], "stride": [2, 2],
                                                                   "ceil_mode": True, "divisor_override": 5}),
    "avg_pool_unbatched": ("avg_pool", [t(2, 6, 6)], {"kernel": [2, 2]}),
    "adaptive_avg_pool_divisible": ("adaptive_avg_pool", [t(1, 2, 6, 4)], {"output_size": [3, 2]}),
    "adaptive_max_pool_global": ("adaptive_max_pool", [t(1, 2, 5, 5)], {"output_size": [1, 1]}),
    "sum_all_int": ("sum", [t(2, 3, dtype=I32)], {}),
    "sum_bool": ("sum", [t(2, 3, dtype=BOOL)], {"dims": [1]}),
    "mean_dtype": ("mean", [t(2, 3)], {"dims": [-1], "dtype": DType.f64}),
    "amax_scalar": ("amax", [t()], {"dims": [0]}),
    "any_float": ("any", [t(2, 3)], {"dims": [1], "keepdim": True}),
    "var_unbiased_all": ("var", [t(3, 4)], {"correction": 0.0}),
    "std_keepdim": ("std", [t(3, 4)], {"dims": [0], "keepdim": True}),
    "argmax_none_keepdim": ("argmax", [t(2, 3)], {"keepdim": True}),
    "cumsum_int": ("cumsum", [t(2, 3, dtype=I32)], {"dim": 0}),
    "squeeze_all": ("squeeze", [t(1, 3, 1)], {}),
    "squeeze_noop": ("squeeze", [t(2, 3)], {"dims": [0]}),
    "slice_open_negative": ("slice", [t(5, 6)], {"dim": 0, "start": -3}),
    "slice_empty": ("slice", [t(5, 6)], {"dim": 1, "start": 4, "end": 2}),
    "index_select_scalar": ("index_select", [t(5, 6), t(dtype=I64)], {"dim": 1}),
    "index_adjacent": ("index", [t(5, 6, 7), t(2, 1, dtype=I64), t(3, dtype=I64)], {"dims": [1, 2]}),
    "index_middle": ("index", [t(5, 6, 7), t(2, dtype=I32)], {"dims": [1]}),
    "concat_mixed": ("concat", [t(2, 3, dtype=I64), t(1, 3)], {"dim": -2}),
    "stack_last": ("stack", [t(2, 3), t(2, 3)], {"dim": -1}),
    "pad_reflect": ("pad", [t(1, 2, 5)], {"pads": [2, 1], "mode": "reflect"}),
    "pad_replicate_2d": ("pad", [t(1, 2, 4, 5)], {"pads": [1, 0, 2, 1], "mode": "replicate"}),
    "pad_circular": ("pad", [t(1, 2, 5)], {"pads": [2, 1], "mode": "circular"}),
    "pad_value_crop": ("pad", [t(2, 5)], {"pads": [-1, 2], "value": 3.0}),
    "full_bool": ("full", [], {"shape": [2], "value": 1.0, "dtype": BOOL}),
    "full_int_scalar": ("full", [], {"shape": [], "value": 3.0, "dtype": I32}),
    "arange_float": ("arange", [], {"start": 0.5, "end": 3.0, "step": 0.25, "dtype": F32}),
    "arange_i32": ("arange", [], {"start": 2.0, "end": 11.0, "step": 3.0, "dtype": I32}),
    # ops the ONNX importer added
    **{f"{op}_f32": (op, [t(2, 3)], {}) for op in (
        "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh")},
    "bitwise_xor_int": ("bitwise_xor", [t(2, 3, dtype=I64), t(3, dtype=I64)], {}),
    "bitwise_xor_bool": ("bitwise_xor", [t(2, 3, dtype=BOOL), t(3, dtype=BOOL)], {}),
    "right_shift_u8": ("bitwise_right_shift", [t(2, 3, dtype=DType.u8), t(3, dtype=DType.u8)], {}),
    "flip_two_dims": ("flip", [t(2, 3, 4)], {"dims": [0, -1]}),
    "tile_more_dims": ("tile", [t(2, 3)], {"repeats": [2, 1, 3]}),
    "take_dim1": ("take", [t(5, 6), t(2, 2, dtype=I64)], {"dim": 1}),
    "gather_nd_batch": ("gather_nd", [t(2, 4, 4), t(2, 5, 1, dtype=I64)], {"batch_dims": 1}),
    "scatter_elements_add": ("scatter_elements", [t(4, 4), t(2, 4, dtype=I64), t(2, 4)], {"reduction": "add"}),
    "scatter_elements_max": ("scatter_elements", [t(4, 4), t(4, 2, dtype=I64), t(4, 2)],
                             {"dim": 1, "reduction": "max"}),
    "scatter_nd_add": ("scatter_nd", [t(4, 3), t(2, 1, dtype=I64), t(2, 3)], {"reduction": "add"}),
    "topk_smallest": ("topk", [t(3, 5)], {"k": 2, "dim": 0, "largest": False}),
    "einsum_bmm": ("einsum", [t(2, 3, 4), t(2, 4, 5)], {"equation": "bij, bjk -> bik"}),
    "cumprod_middle": ("cumprod", [t(2, 3, 4)], {"dim": 1}),
    "det_batched": ("det", [t(2, 3, 3)], {}),
    "local_response_norm_odd": ("local_response_norm", [t(1, 5, 3, 3)], {"size": 3}),
    "onnx_max_pool_indices": ("onnx_pool", [t(1, 2, 5, 5)], {
        "mode": "max", "kernel": [2, 2], "strides": [2, 2], "pads": [0, 0, 1, 1], "dilations": [1, 1],
        "ceil_mode": True, "indices": True}),
    "onnx_avg_pool_dilated": ("onnx_pool", [t(1, 2, 6, 6)], {
        "mode": "avg", "kernel": [2, 2], "strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [2, 2],
        "count_include_pad": True}),
    "onnx_lp_pool": ("onnx_pool", [t(1, 2, 5, 5)], {
        "mode": "lp", "kernel": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "dilations": [1, 1]}),
    **{f"onnx_pad_{mode}": ("onnx_pad", [t(2, 5)], {"pads": [1, 2, 0, 1], "mode": mode})
       for mode in ("edge", "reflect", "wrap")},
    **{f"onnx_pad_{mode}_cropping": ("onnx_pad", [t(3, 5)], {"pads": [1, -2, -1, 1], "mode": mode})
       for mode in ("edge", "reflect", "wrap")},
    "grid_sample_bilinear": ("grid_sample", [t(1, 2, 4, 4), t(1, 3, 3, 2)], {}),
    "grid_sample_nearest_border": ("grid_sample", [t(1, 2, 4, 4), t(1, 3, 3, 2)],
                                   {"mode": "nearest", "padding_mode": "border", "align_corners": True}),
}

# Integer division and remainder need nonzero divisors, and signs that tell floor from trunc.
_NUMERATORS = torch.tensor([[-7, 7, -8], [5, -5, 0], [9, -1, 3], [-4, 4, 6]])
_DIVISORS = torch.tensor([3, -2, -4])
INPUTS: dict[str, list[torch.Tensor]] = {
    name: [_NUMERATORS, _DIVISORS] for name in ("div_int_floor", "remainder_int", "fmod_int")}

NOT_EXPORTABLE: dict[str, tuple[str, list[TensorType], dict, str]] = {
    "opaque": ("opaque", [t(2, 3)], {"target": "aten.cummax.default",
                                     "spec": '{"args": [{"$in": 0}, 1], "kwargs": {}}'}, "calls the PyTorch function"),
    "adaptive_avg_pool_irregular": ("adaptive_avg_pool", [t(1, 2, 7, 5)], {"output_size": [3, 2]},
                                    "windows are irregular"),
    "adaptive_max_pool_irregular": ("adaptive_max_pool", [t(1, 2, 6, 6)], {"output_size": [4, 4]},
                                    "windows are irregular"),
    "local_response_norm_even": ("local_response_norm", [t(1, 5, 3, 3)], {"size": 4}, "even window"),
    "bitcast": ("bitcast", [t(2, 3)], {"dtype": I32}, "reinterpret the bits"),
    "bitwise_left_shift": ("bitwise_left_shift", [t(2, 3, dtype=I64), t(3, dtype=I64)], {},
                           "BitShift takes unsigned integers, not i64"),
    "bitwise_right_shift": ("bitwise_right_shift", [t(2, 3, dtype=I32), t(3, dtype=I32)], {},
                            "BitShift takes unsigned integers, not i32"),
}

CASES = {**{name: (name, *SAMPLES[name]) for name in sorted(SAMPLES) if name not in NOT_EXPORTABLE}, **VARIANTS}


def one_node_graph(op: str, types: Sequence[TensorType], attrs: dict[str, Any]) -> Graph:
    graph = Graph(op)
    inputs = [graph.add_input(f"x{i}", ty) for i, ty in enumerate(types)]
    graph.set_outputs(graph.add_node(op, inputs, attrs).outputs)
    return graph


def run_onnx(model: onnx.ModelProto, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)}
    return [torch.from_numpy(y) for y in session.run(None, feeds)]


def assert_exports_faithfully(graph: Graph, inputs: Sequence[torch.Tensor], atol: float = 1e-6,
                              **kwargs: Any) -> onnx.ModelProto:
    model = export_onnx(graph, **kwargs)
    onnx.checker.check_model(model, full_check=True)
    assert_outputs_close(run_onnx(model, inputs), run_graph(graph, *inputs), atol=atol, context=str(graph))
    return model


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_exports_with_reference_semantics(case: str) -> None:
    op, types, attrs = CASES[case]
    graph = one_node_graph(op, types, attrs)
    assert_exports_faithfully(graph, INPUTS.get(case) or random_inputs(graph))


@pytest.mark.parametrize("attrs", [
    {"mode": "nearest", "size": [12, 20]}, {"mode": "nearest", "size": [4, 3]},
    {"mode": "nearest_exact", "size": [9, 13]}, {"mode": "nearest", "size": [10, 13], "scales": [1.7, 1.7]},
    {"mode": "linear", "size": [9, 13]}, {"mode": "linear", "size": [4, 5]},
    {"mode": "linear", "size": [9, 13], "align_corners": True},
    {"mode": "linear", "size": [10, 13], "scales": [1.7, 1.7]},
    {"mode": "cubic", "size": [9, 13]}, {"mode": "cubic", "size": [4, 13], "align_corners": True},
    {"mode": "linear", "size": [16]}, {"mode": "linear", "size": [6, 3, 9]}, {"mode": "nearest", "size": [6, 3, 9]},
    {"mode": "nearest", "size": [7, 9], "scales": [1.2, 1.2]},
    {"mode": "linear", "size": [6, 9], "scales": [1.05, 1.2]},
    {"mode": "cubic", "size": [4, 5], "scales": [0.7, 0.7]},
    {"mode": "nearest_exact", "size": [6, 8], "scales": [1.1, 1.1]},
    {"mode": "linear", "size": [3, 4], "antialias": True}, {"mode": "cubic", "size": [2, 3], "antialias": True},
], ids=["nearest", "nearest_shrink", "nearest_exact", "nearest_scales", "linear", "linear_shrink", "linear_corners",
        "linear_scales", "cubic", "cubic_corners", "linear_1d", "trilinear", "nearest_3d", "nearest_fractional_scales",
        "linear_unchanged_height", "cubic_fractional_scales", "nearest_exact_unchanged", "linear_antialias",
        "cubic_antialias"])
def test_interpolate_exports_with_pytorchs_coordinates(attrs: dict[str, Any]) -> None:
    """As a Resize where ONNX Runtime maps as PyTorch does (it computes the coordinates in another order, so
    a weight may differ in its last bit), else as PyTorch's own weights: Gathers times constants."""
    shape = {1: (2, 3, 7), 2: (2, 3, 6, 8), 3: (1, 2, 3, 4, 5)}[len(attrs["size"])]
    graph = one_node_graph("interpolate", [t(*shape)], attrs)
    model = assert_exports_faithfully(graph, random_inputs(graph), atol=1e-5)
    resized = "Resize" in {n.op_type for n in model.graph.node}
    assert resized == (not attrs.get("antialias") and "scales" not in attrs)


def test_interpolate_exports_nans_where_pytorch_has_them() -> None:
    graph = one_node_graph("interpolate", [t(1, 1, 4, 6)], {"mode": "linear", "size": [5, 7], "scales": [1.3, 1.3]})
    x = torch.randn(1, 1, 4, 6)
    x[0, 0, 0, 0] = torch.nan
    assert_exports_faithfully(graph, [x], atol=1e-5)


@pytest.mark.parametrize("pool", [torch.nn.MaxPool2d(2, 2, padding=1, ceil_mode=True),
                                  torch.nn.AvgPool2d(2, 2, padding=1, ceil_mode=True),
                                  torch.nn.AvgPool2d(3, 2, padding=1, ceil_mode=True),
                                  torch.nn.MaxPool2d(3, 2, ceil_mode=True)])
def test_a_ceil_mode_pool_keeps_pytorchs_windows(pool: torch.nn.Module) -> None:
    """Over 11x11 with padding 1, PyTorch drops the last window (it would start in the padding), ONNX
    Runtime's ceil_mode keeps it: the export says ceil_mode only where it adds a window."""
    x = torch.randn(1, 2, 11, 11)
    assert_exports_faithfully(import_module(pool, (x,)).graph, [x])


@pytest.mark.parametrize("pool", [
    torch.nn.MaxPool2d((2, 3), 2, padding=1, ceil_mode=True),
    torch.nn.AvgPool2d((2, 3), 2, padding=1, ceil_mode=True, count_include_pad=False),
    torch.nn.AvgPool2d((2, 3), 2, padding=1, ceil_mode=True, divisor_override=3)])
def test_a_ceil_mode_pool_whose_dims_need_different_ceil_modes_exports_with_end_padding(
        pool: torch.nn.Module) -> None:
    """Over 11x12: the rows' extra window would start in the padding (PyTorch drops it), the columns' is kept."""
    x = torch.randn(1, 2, 11, 12)
    assert pool(x).shape == (1, 2, 6, 7)  # floor sizes 6 and 6
    model = assert_exports_faithfully(import_module(pool, (x,)).graph, [x])
    assert all(a.i == 0 for n in model.graph.node for a in n.attribute if a.name == "ceil_mode")


def test_an_average_counting_padding_whose_dims_need_different_ceil_modes_is_an_error() -> None:
    x = torch.randn(1, 2, 11, 12)
    graph = import_module(torch.nn.AvgPool2d((2, 3), 2, padding=1, ceil_mode=True), (x,)).graph
    with pytest.raises(OnnxExportError, match="dims need different ceil modes"):
        export_onnx(graph)


@pytest.mark.parametrize("case", sorted(NOT_EXPORTABLE))
def test_op_without_onnx_equivalent_is_an_error(case: str) -> None:
    op, types, attrs, reason = NOT_EXPORTABLE[case]
    with pytest.raises(OnnxExportError, match=rf"`%\w+: .* = {op}\(.*\(op '{op}'\).*{reason}"):
        export_onnx(one_node_graph(op, types, attrs))


def test_gelu_before_opset_20_is_decomposed() -> None:
    graph = one_node_graph("gelu", [t(4, 5)], {"approximate": "tanh"})
    model = assert_exports_faithfully(graph, random_inputs(graph), opset=18)
    assert "Gelu" not in {n.op_type for n in model.graph.node}


MODELS: dict[str, tuple[Callable[[], torch.nn.Module], Callable[..., tuple]]] = {
    "mlp": (models.mlp, models.mlp_inputs),
    "resnet_cnn": (models.resnet_cnn, models.resnet_inputs),
    "gpt2_style": (models.gpt2_style, models.gpt2_style_inputs),
    "gpt2_style_sdpa": (lambda: models.gpt2_style(use_sdpa=True), models.gpt2_style_inputs),
    "hf_gpt2": (models.hf_gpt2, models.hf_gpt2_inputs),
    "hf_bert": (models.hf_bert, models.hf_bert_inputs),
}
SLOW_MODELS = {"hf_gpt2", "hf_bert"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_MODELS else n
                                  for n in sorted(MODELS)])
def test_optimized_model_exports_with_reference_semantics(name: str) -> None:
    make, inputs = MODELS[name]
    graph = optimize(import_module(make(), inputs()).graph, CompileOptions(opt_level=2))[0].graph
    fresh = inputs(seed=5)
    # Relative to each output's scale: summation order differs between the two runtimes.
    scale = max(float(y.abs().max()) for y in run_graph(graph, *fresh))
    model = assert_exports_faithfully(graph, fresh, atol=1e-5 * scale)
    assert [i.name for i in model.graph.input] == [v.name for v in graph.inputs]
    weights = {c.name for c in graph.constants.values() if c.const.numel() > 1}  # type: ignore[union-attr]
    assert weights <= {i.name for i in model.graph.initializer}


def test_compiled_module_saves_onnx(tmp_path: Any) -> None:
    cm = hp.compile(models.mlp(), models.mlp_inputs())
    path = str(tmp_path / "mlp.onnx")
    cm.save_onnx(path)
    loaded = onnx.load(path)
    onnx.checker.check_model(loaded, full_check=True)
    assert [i.name for i in loaded.graph.input] == ["x"] and [o.name for o in loaded.graph.output] == ["output"]
    fresh = models.mlp_inputs(seed=3)
    assert_outputs_close(run_onnx(loaded, fresh), [cm(*fresh)])


class NamesLikeItsInputs(torch.nn.Module):
    def forward(self, output: torch.Tensor, hidden_states: torch.Tensor) -> dict[str, Any]:
        return {"hidden_states": hidden_states.relu(), "output": output * 2, "a_b": output + 1,
                "a": {"b": output - 1}}


def test_output_names_that_an_input_or_another_output_has_get_a_suffix(tmp_path: Any) -> None:
    example = (torch.randn(2, 3), torch.randn(2, 3))
    cm = hp.compile(NamesLikeItsInputs(), example)
    path = str(tmp_path / "names.onnx")
    cm.save_onnx(path)
    loaded = onnx.load(path)
    assert [o.name for o in loaded.graph.output] == ["hidden_states_1", "output_1", "a_b", "a_b_1"]
    assert_outputs_close(run_onnx(loaded, example), cm.executable(*example))


@pytest.mark.slow
def test_compiled_transformer_saves_onnx_with_output_field_names(tmp_path: Any) -> None:
    cm = hp.compile(models.hf_bert(n_layer=1), models.hf_bert_inputs())
    path = str(tmp_path / "bert.onnx")
    cm.save_onnx(path)
    loaded = onnx.load(path)
    assert [i.name for i in loaded.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in loaded.graph.output] == ["last_hidden_state", "pooler_output"]
    fresh = models.hf_bert_inputs(seed=3)
    expected = cm(*fresh)
    assert_outputs_close(run_onnx(loaded, fresh), [expected.last_hidden_state, expected.pooler_output])


def test_names_are_sanitized_unique_and_io_can_be_renamed() -> None:
    graph = Graph("g")
    x = graph.add_input("in put", t(2, 3))
    half = graph.add_constant("c/0", torch.tensor(0.5))
    y = graph.call("relu", graph.add_node("mul", [x, half], names=["a-b"]).output)
    graph.add_node("neg", [y], names=["a_b"])
    graph.set_outputs([y, y, x, half])
    model = assert_exports_faithfully(graph, random_inputs(graph), input_names=["x"],
                                      output_names=["y", "y2", "x_again", "half"])
    assert [o.name for o in model.graph.output] == ["y", "y2", "x_again", "half"]
    assert [i.name for i in model.graph.initializer] == ["c_0"]
    produced = [o for n in model.graph.node for o in n.output]
    assert len(produced) == len(set(produced)) and "a_b" in produced and "a-b" not in produced
    with pytest.raises(ValueError, match="used twice"):
        export_onnx(graph, output_names=["x", "y", "z", "x"])


def test_an_output_that_is_a_graph_input_may_keep_its_name() -> None:
    graph = Graph("g")
    x = graph.add_input("x", t(2, 3))
    graph.set_outputs([graph.call("relu", x), x])
    model = assert_exports_faithfully(graph, random_inputs(graph), input_names=["x"], output_names=["y", "x"])
    assert [o.name for o in model.graph.output] == ["y", "x"] and [n.op_type for n in model.graph.node] == ["Relu"]
    with pytest.raises(ValueError, match="output name 'x' is used twice"):
        export_onnx(graph, input_names=["x"], output_names=["x", "y"])


def test_opaque_node_error_names_node_and_op() -> None:
    graph = parse_graph("""graph g(%x: f32[2,3]) -> (f32[2,3]) {
      %0: f32[2,3] = relu(%x)
      %1: f32[2,3] = opaque(%0) {target="torch.special.i0", spec="{\\"args\\": [{\\"$in\\": 0}], \\"kwargs\\": {}}"}
      return %1
    }""")
    with pytest.raises(OnnxExportError, match=r"`%1: f32\[2,3\] = opaque\(%0\).*\(op 'opaque'\).*torch.special.i0"):
        export_onnx(graph)


def test_symbolic_shapes_and_old_opsets_are_rejected() -> None:
    graph = Graph("g")
    x = graph.add_input("x", TensorType(("batch", 3), F32))
    graph.set_outputs(graph.add_node("relu", [x], output_types=[x.type]).outputs)
    with pytest.raises(OnnxExportError, match=r"%x: f32\[batch,3\] has symbolic dimensions"):
        export_onnx(graph)
    with pytest.raises(ValueError, match="opset 17 is too old"):
        export_onnx(one_node_graph("relu", [t(2)], {}), opset=17)


# -- regions: nodes whose attributes hold a nested graph -------------------------------------------
@contextmanager
def registered_region_op(name: str, graph_attrs: Sequence[str]) -> Iterator[str]:
    """A test-only region op (running its `body` like a function), removed from the op table after."""

    def infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        return [v.type for v in attrs["body"].outputs]

    def reference(*xs: torch.Tensor, body: Graph, **others: Graph) -> tuple[torch.Tensor, ...]:
        return tuple(run_graph(body, *xs))

    register(name, ["*xs"], {a: Attr("graph") for a in graph_attrs}, kind="fused", infer=infer)(reference)
    try:
        yield name
    finally:
        del OPS[name]


@pytest.fixture
def region_op() -> Iterator[str]:
    with registered_region_op("test_region", ["body"]) as name:
        yield name


BODY = """graph gelu_scale(%a: f32[2,3], %b: f32[3]) -> (f32[2,3], f32[2], f32[2,3]) {
  const %scale: f32[3] = [0.5, 1.5, -2.0]
  %0: f32[2,3] = add(%a, %b)
  %1: f32[2,3] = gelu(%0)
  %2: f32[2,3] = mul(%1, %scale)
  %3: f32[2] = sum(%2) {dims=[1]}
  return %2, %3, %a
}"""


def region_graph(op: str) -> Graph:
    """Two calls of the same body (with other constant values) and one of a body that wraps it."""
    body = parse_graph(BODY)
    rescaled = body.clone()
    rescaled.constants["scale"].const = torch.tensor([2.0, -1.0, 0.25])
    graph = Graph("regions")
    x, b = graph.add_input("x", t(2, 3)), graph.add_input("b", t(3))
    first = graph.add_node(op, [x, b], {"body": body})
    second = graph.add_node(op, [first.outputs[0], b], {"body": rescaled})
    outer = Graph("outer")
    ox, ob = outer.add_input("x", t(2, 3)), outer.add_input("b", t(3))
    inner = outer.add_node(op, [ox, ob], {"body": body.clone()})
    outer.set_outputs([outer.call("relu", inner.outputs[0]), inner.outputs[1]])
    third = graph.add_node(op, [second.outputs[2], b], {"body": outer})
    graph.set_outputs([second.outputs[0], first.outputs[1], third.outputs[0], third.outputs[1]])
    return graph


def test_regions_export_as_one_function_per_body(region_op: str) -> None:
    graph = region_graph(region_op)
    model = assert_exports_faithfully(graph, random_inputs(graph))
    assert [(f.domain, f.name) for f in model.functions] == [(DOMAIN, "gelu_scale"), (DOMAIN, "outer")]
    assert [(n.domain, n.op_type) for n in model.graph.node] == [(DOMAIN, "gelu_scale")] * 2 + [(DOMAIN, "outer")]
    gelu_scale = model.functions[0]
    assert list(gelu_scale.input) == ["a", "b", "scale"]  # the body's constant is an argument ...
    assert [i.name for i in model.graph.initializer] == ["scale", "scale_1"]  # ... fed from initializers
    assert [n.input[2:] for n in model.graph.node] == [["scale"], ["scale_1"], ["scale"]]
    assert "Gelu" in {n.op_type for n in gelu_scale.node}


def test_regions_inline_without_functions(region_op: str) -> None:
    graph = region_graph(region_op)
    model = assert_exports_faithfully(graph, random_inputs(graph), as_functions=False)
    assert not model.functions and all(n.domain == "" for n in model.graph.node)
    assert [n.op_type for n in model.graph.node].count("Gelu") == 3


def test_node_with_two_graph_attributes_is_an_error() -> None:
    with registered_region_op("test_two_regions", ["body", "other_body"]) as op:
        graph = Graph("g")
        x, b = graph.add_input("x", t(2, 3)), graph.add_input("b", t(3))
        node = graph.add_node(op, [x, b], {"body": parse_graph(BODY), "other_body": parse_graph(BODY)})
        graph.set_outputs(node.outputs[:1])
        with pytest.raises(OnnxExportError, match=r"\(op 'test_two_regions'\).*several nested graphs"):
            export_onnx(graph)


def test_float_floor_division_remainder_nan_and_arange_follow_pytorch() -> None:
    """PyTorch floors the exact quotient (0.7 // 0.1 is 6) and takes % from fmod (1e10 % 3 is 1); its
    amax/argmax propagate NaN and sign(NaN) is 0, where ONNX Runtime's ReduceMax/ArgMax skip NaN and
    Sign gives NaN; a float arange counts its length in double."""
    graph = parse_graph("""
    graph g(%a: f32[2,6], %b: f32[2,6]) -> (f32[2,6], f32[2,6], f32[2,6], f32[2], f32[2], i64[2], i64[2], f32[3]) {
      %0: f32[2,6] = div(%a, %b) {rounding_mode="floor"}
      %1: f32[2,6] = remainder(%a, %b)
      %2: f32[2,6] = sign(%a)
      %3: f32[2] = amax(%a) {dims=[1]}
      %4: f32[2] = amin(%a) {dims=[1]}
      %5: i64[2] = argmax(%a) {dim=1}
      %6: i64[2] = argmin(%a) {dim=1}
      %7: f32[3] = arange() {start=0.0, end=0.3, step=0.1, dtype=f32}
      return %0, %1, %2, %3, %4, %5, %6, %7
    }""")
    a = torch.tensor([[0.7, 1.0, 1e10, 3.0, -3.0, 5.0], [2.0, float("nan"), -1.5, 7.0, 0.0, -7.0]])
    b = torch.tensor([[0.1, 0.1, 3.0, float("inf"), float("inf"), -2.0], [0.3, 1.0, 0.5, -0.0, 2.0, 3.0]])
    assert_exports_faithfully(graph, [a, b])
    expected = run_graph(graph, a, b)
    assert expected[0][0, 0] == 6 and expected[1][0, 2] == 1 and expected[5][1] == 1 and expected[7].numel() == 3


def test_an_int8_dynamic_row_holding_nan_gives_nan_in_onnx_runtime_too() -> None:
    graph = parse_graph("""
    graph g(%x: f32[3,8]) -> (f32[3,4]) {
      const %w: i8[4,8]
      const %s: f32[4]
      %0: f32[3,4] = linear_dynamic_int8(%x, %w, %s)
      return %0
    }""", constants={"w": torch.randint(-127, 128, (4, 8), dtype=torch.int8), "s": torch.rand(4) / 100})
    x = torch.randn(3, 8)
    x[1, 3] = float("nan")
    assert_exports_faithfully(graph, [x], atol=1e-4)
    assert run_graph(graph, x)[0][1].isnan().all()


def test_saving_a_model_onnx_cannot_express_is_an_error_not_an_invalid_file(tmp_path: Any) -> None:
    """ONNX defines MaxPool for no bfloat16; a runtime would refuse the file."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.MaxPool2d(2)).eval()
    cm = hp.compile(model, (torch.randn(1, 3, 8, 8),), precision="bf16", precision_options={"allow": ["max_pool"]})
    path = tmp_path / "bf16.onnx"
    with pytest.raises(OnnxExportError, match=r"ONNX rejects the exported .*bfloat16"):
        cm.save_onnx(str(path))
    assert not path.exists()


@pytest.mark.parametrize("mask_type", ["bool", "f32"])
def test_attention_rows_the_mask_hides_entirely_export_as_zeros(mask_type: str) -> None:
    graph = parse_graph(f"""
    graph g(%q: f32[1,2,4,3], %k: f32[1,2,5,3], %v: f32[1,2,5,3], %m: {mask_type}[4,5]) -> (f32[1,2,4,3]) {{
      %0: f32[1,2,4,3] = scaled_dot_product_attention(%q, %k, %v, %m)
      return %0
    }}""")
    keep = torch.rand(4, 5) > 0.3
    keep[2] = False
    mask = keep if mask_type == "bool" else torch.zeros(4, 5).masked_fill(~keep, -math.inf)
    q, k, v = torch.randn(1, 2, 4, 3), torch.randn(1, 2, 5, 3), torch.randn(1, 2, 5, 3)
    assert_exports_faithfully(graph, [q, k, v, mask])
    assert torch.equal(run_graph(graph, q, k, v, mask)[0][:, :, 2], torch.zeros(1, 2, 3))


def test_reductions_over_no_elements_and_a_reshape_to_a_zero_dim_export_as_pytorch_computes_them() -> None:
    graph = parse_graph("""
    graph g(%x: f32[2,0,3], %b: bool[2,0,3]) -> (bool[2,3], bool[2,3], f32[2,3], f32[2,3], f32[0,6]) {
      %0: bool[2,3] = any(%b) {dims=[1]}
      %1: bool[2,3] = all(%b) {dims=[1]}
      %2: f32[2,3] = mean(%x) {dims=[1]}
      %3: f32[2,3] = var(%x) {dims=[1]}
      %4: f32[0,6] = reshape(%x) {shape=[0, 6]}
      return %0, %1, %2, %3, %4
    }""")
    assert_exports_faithfully(graph, [torch.randn(2, 0, 3), torch.zeros(2, 0, 3, dtype=torch.bool)])


def test_an_opset_newer_than_onnx_knows_is_refused() -> None:
    with pytest.raises(ValueError, match=f"opset {onnx.defs.onnx_opset_version() + 1} is newer"):
        export_onnx(one_node_graph("relu", [TensorType((3,), DType.f32)], {}), opset=onnx.defs.onnx_opset_version() + 1)


def test_scans_and_softmax_of_a_0d_tensor_and_lrn_of_3d_and_5d_inputs_export() -> None:
    """ONNX Runtime's Softmax, CumSum and LRN refuse these ranks; the exporter goes through a 1-D or 4-D view."""
    graph = parse_graph("""
    graph g(%s: f32[], %c: f32[2,5,7], %v: f32[1,4,2,3,2]) -> (f32[], f32[], f32[], f32[], f32[2,5,7], f32[1,4,2,3,2]) {
      %0: f32[] = softmax(%s) {dim=0}
      %1: f32[] = log_softmax(%s) {dim=-1}
      %2: f32[] = cumsum(%s) {dim=0}
      %3: f32[] = cumprod(%s) {dim=0}
      %4: f32[2,5,7] = local_response_norm(%c) {size=3}
      %5: f32[1,4,2,3,2] = local_response_norm(%v) {size=3, alpha=0.01, beta=0.5, bias=2.0}
      return %0, %1, %2, %3, %4, %5
    }""")
    assert_exports_faithfully(graph, random_inputs(graph))


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("n", [2, 5])
@pytest.mark.parametrize("correction", [0.0, 1.0, 2.0, 3.0])
def test_var_and_std_divide_by_n_less_the_correction_but_not_below_zero_as_pytorch_does(
        correction: float, n: int, keepdim: bool) -> None:
    """A correction of n or more divides by 0: inf, or NaN for a constant row (0 / 0)."""
    x = torch.randn(3, n)
    x[1] = 0.5
    for op, eager in (("var", torch.var), ("std", torch.std)):
        graph = one_node_graph(op, [t(3, n)], {"dims": [1], "keepdim": keepdim, "correction": correction})
        model = export_onnx(graph)
        onnx.checker.check_model(model, full_check=True)
        with pytest.warns(UserWarning, match="degrees of freedom") if correction >= n else nullcontext():
            expected = eager(x, 1, correction=correction, keepdim=keepdim)
        torch.testing.assert_close(run_onnx(model, [x])[0], expected, equal_nan=True)
