"""ONNX import: Before/Expected graphs, numeric agreement with onnxruntime, fallbacks and malformed input."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_ir
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from heteropass.ir import parse_graph, run_graph, verify
from heteropass.ir.compare import assert_graphs_equal
from heteropass.ir.onnx_exporter import export_onnx
from heteropass.ir.onnx_importer import OnnxImportError, import_onnx
from heteropass.onnx_backend import HeteropassBackend
from heteropass.testing import models

F32, I64 = TensorProto.FLOAT, TensorProto.INT64


def make_model(nodes: list[onnx.NodeProto], inputs: list[tuple[str, int, list[int]]],
               outputs: list[tuple[str, int, list[int] | None]], initializers: dict[str, np.ndarray] | None = None,
               opset: int = 21) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(a, n) for n, a in (initializers or {}).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[value.name] = rng.integers(-7, 8, shape).astype(dtype)
    return feeds


def assert_matches_onnxruntime(model: onnx.ModelProto, **kwargs: object) -> None:
    feeds = random_feeds(model)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)
    actual = HeteropassBackend.prepare(model, **kwargs).run(feeds)
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# -- Before/Expected --------------------------------------------------------------------------------
def test_initializers_become_constants_and_nodes_map_to_ir_ops() -> None:
    model = make_model([helper.make_node("Add", ["x", "b"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
                       [("x", F32, [2, 3])], [("y", F32, [2, 3])], {"b": np.ones(3, np.float32)})
    program = import_onnx(model)
    assert (program.input_names, program.output_names, program.opset) == (["x"], ["y"], 21)
    assert_graphs_equal(program.graph, """
    graph g(%x: f32[2,3]) -> (f32[2,3]) {
      const %b: f32[3] = [1.0, 1.0, 1.0]
      %0: f32[2,3] = add(%x, %b)
      %1: f32[2,3] = relu(%0)
      return %1
    }""")
    assert [v.name for v in program.graph.nodes[-1].outputs] == ["y"]


def test_shape_arithmetic_folds_into_a_static_reshape() -> None:
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
             helper.make_node("Unsqueeze", ["batch", "zero_axis"], ["batch1"]),
             helper.make_node("Concat", ["batch1", "minus_one"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    model = make_model(nodes, [("x", F32, [2, 3, 4])], [("y", F32, [2, 12])],
                       {"zero": np.array(0, np.int64), "zero_axis": np.array([0], np.int64),
                        "minus_one": np.array([-1], np.int64)})
    assert_graphs_equal(import_onnx(model).graph, """
    graph g(%x: f32[2,3,4]) -> (f32[2,12]) {
      %0: f32[2,12] = reshape(%x) {shape=[2, 12]}
      return %0
    }""")


def test_gemm_with_transposed_weight_is_linear_and_asymmetric_conv_pads_first() -> None:
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[0, 1, 1, 0]),
             helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "bias"], ["y"], transB=1)]
    model = make_model(nodes, [("x", F32, [1, 2, 4, 4])], [("y", F32, [1, 5])],
                       {"w": np.ones((3, 2, 2, 2), np.float32), "fc": np.ones((5, 48), np.float32),
                        "bias": np.zeros(5, np.float32)})
    assert_graphs_equal(import_onnx(model).graph, """
    graph g(%x: f32[1,2,4,4]) -> (f32[1,5]) {
      const %w: f32[3,2,2,2]
      const %fc: f32[5,48]
      const %bias: f32[5] = [0.0, 0.0, 0.0, 0.0, 0.0]
      %0: f32[1,2,5,5] = pad(%x) {pads=[1, 0, 0, 1]}
      %1: f32[1,3,4,4] = conv(%0, %w) {stride=[1, 1], padding=[0, 0], dilation=[1, 1]}
      %2: f32[1,48] = reshape(%1) {shape=[1, 48]}
      %3: f32[1,5] = linear(%2, %fc, %bias)
      return %3
    }""")


# -- numeric agreement with onnxruntime -------------------------------------------------------------
_CASES = {
    "softmax_reduce": ([helper.make_node("Softmax", ["x"], ["s"], axis=1),
                        helper.make_node("ReduceMean", ["s", "axes"], ["y"], keepdims=0)],
                       [("x", F32, [2, 5, 3])], [("y", F32, [2, 3])], {"axes": np.array([1], np.int64)}),
    "integer_div_mod": ([helper.make_node("Div", ["a", "b"], ["q"]), helper.make_node("Mod", ["a", "b"], ["r"]),
                         helper.make_node("Mod", ["a", "b"], ["f"], fmod=1)],
                        [("a", TensorProto.INT32, [6]), ("b", TensorProto.INT32, [6])],
                        [("q", TensorProto.INT32, [6]), ("r", TensorProto.INT32, [6]), ("f", TensorProto.INT32, [6])],
                        None),
    "slice_negative_step": ([helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"])],
                            [("x", F32, [5, 7])], [("y", F32, [5, 3])],
                            {"starts": np.array([-1], np.int64), "ends": np.array([-8], np.int64),
                             "axes": np.array([1], np.int64), "steps": np.array([-3], np.int64)}),
    "topk_cumsum": ([helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1),
                     helper.make_node("CumSum", ["v", "axis"], ["y"], exclusive=1, reverse=1)],
                    [("x", F32, [3, 6])], [("y", F32, [3, 4]), ("i", I64, [3, 4])],
                    {"k": np.array([4], np.int64), "axis": np.array(1, np.int64)}),
    "pool_norm": ([helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 0, 0],
                                    ceil_mode=1),
                   helper.make_node("AveragePool", ["p"], ["a"], kernel_shape=[2, 2], auto_pad="SAME_UPPER"),
                   helper.make_node("LayerNormalization", ["a", "scale"], ["y"], axis=-2)],
                  [("x", F32, [1, 2, 7, 7])], [("y", F32, [1, 2, 4, 4])], {"scale": np.full((4, 4), 0.5, np.float32)}),
    "resize_linear": ([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")],
                      [("x", F32, [1, 1, 3, 4])], [("y", F32, [1, 1, 6, 6])],
                      {"scales": np.array([1, 1, 2, 1.5], np.float32)}),
    "einsum_where": ([helper.make_node("Einsum", ["a", "b"], ["e"], equation="bij,bjk->bik"),
                      helper.make_node("Greater", ["e", "zero"], ["m"]),
                      helper.make_node("Where", ["m", "e", "zero"], ["y"])],
                     [("a", F32, [2, 3, 4]), ("b", F32, [2, 4, 5])], [("y", F32, [2, 3, 5])],
                     {"zero": np.array(0, np.float32)}),
    "quantize_roundtrip": ([helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"]),
                            helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"])],
                           [("x", F32, [4, 5])], [("y", F32, [4, 5])],
                           {"scale": np.array(0.02, np.float32), "zp": np.array(128, np.uint8)}),
    "reductions_without_axes_that_reduce_nothing": (
        [helper.make_node(op, ["x"], [op], noop_with_empty_axes=1) for op in
         ("ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax")],
        [("x", F32, [2, 3])],
        [(op, F32, [2, 3]) for op in
         ("ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax")], None),
    "reductions_of_a_scalar": ([helper.make_node(op, ["x"], [op], keepdims=0) for op in
                                ("ReduceSum", "ReduceL2", "ReduceLogSumExp", "ReduceMax", "ReduceProd")],
                               [("x", F32, [])],
                               [(op, F32, []) for op in
                                ("ReduceSum", "ReduceL2", "ReduceLogSumExp", "ReduceMax", "ReduceProd")], None),
}


@pytest.mark.parametrize("name", sorted(_CASES))
def test_matches_onnxruntime(name: str) -> None:
    nodes, inputs, outputs, initializers = _CASES[name]
    assert_matches_onnxruntime(make_model(nodes, inputs, outputs, initializers))


@pytest.mark.parametrize("axes, attrs", [([2], {"keepdims": 0}), ([-1], {"keepdims": 1}), ([1, 2], {"keepdims": 0}),
                                         ([], {"noop_with_empty_axes": 1})])
@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.DOUBLE])
def test_reduce_log_sum_exp_is_shifted_by_the_max_as_onnx_runtime_computes_it(axes: list[int], attrs: dict,
                                                                                dtype: int) -> None:
    # exp overflows above ~88.7 (f32) and underflows below ~-103; rows of -inf give -inf, a +inf gives +inf.
    rows = [[100, 101, 102], [1000, 999, 0], [-200, -201, -300], [-np.inf] * 3, [np.inf, -np.inf, 0],
            [np.nan, 1, 2], [-np.inf, 0, 1]]
    x = np.array(rows, helper.tensor_dtype_to_np_dtype(dtype)).reshape(7, 1, 3)
    model = make_model([helper.make_node("ReduceLogSumExp", ["x", "axes"], ["y"], **attrs)],
                       [("x", dtype, [7, 1, 3])], [("y", dtype, None)], {"axes": np.array(axes, np.int64)})
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (want,) = session.run(None, {"x": x})
    (got,) = HeteropassBackend.prepare(model).run([x])
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_old_opsets_are_upgraded_with_their_semantics() -> None:
    # Softmax-11 normalizes over all dims from `axis` on, not just `axis`.
    model = make_model([helper.make_node("Softmax", ["x"], ["y"], axis=1)], [("x", F32, [2, 3, 4])],
                       [("y", F32, [2, 3, 4])], opset=11)
    assert import_onnx(model).opset == 13
    assert_matches_onnxruntime(model)


def test_onnx_ir_models_and_run_node() -> None:
    model = make_model([helper.make_node("Tanh", ["x"], ["y"])], [("x", F32, [3])], [("y", F32, [3])])
    assert import_onnx(onnx_ir.serde.deserialize_model(model)).graph.op_counts() == {"tanh": 1}
    x = np.array([0.5, -1.0, 2.0], np.float32)
    (y,) = HeteropassBackend.run_node(helper.make_node("Tanh", ["x"], ["y"]), [x])
    np.testing.assert_allclose(y, np.tanh(x), rtol=1e-6)
    assert HeteropassBackend.supports_device("CPU") and not HeteropassBackend.supports_device("CUDA")


def test_inputs_needed_at_import_time_can_be_bound() -> None:
    model = make_model([helper.make_node("Reshape", ["x", "shape"], ["y"])], [("x", F32, [2, 6]), ("shape", I64, [2])],
                       [("y", F32, None)])
    with pytest.raises(OnnxImportError, match="must be known at import time") as info:
        import_onnx(model)
    assert info.value.needs_values == ("shape",)
    program = import_onnx(model, bind={"shape": np.array([3, -1])})
    assert program.input_names == ["x"] and program.graph.outputs[0].type.shape == (3, 4)
    rep = HeteropassBackend.prepare(model)
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    assert rep.run([x, np.array([4, 3])])[0].shape == (4, 3)
    assert rep.run([x, np.array([6, 2])])[0].shape == (6, 2)
    for wrong in (np.array([3, -1], np.int32), np.array([3, 2, 2])):  # ONNX Runtime refuses these feeds too
        with pytest.raises(OnnxImportError, match=r"bound to graph input 'shape' is .*; the model declares i64\[2\]"):
            import_onnx(model, bind={"shape": wrong})


# -- unsupported ops and fallbacks ------------------------------------------------------------------
def _reverse_sequence_model() -> onnx.ModelProto:
    node = helper.make_node("ReverseSequence", ["x", "lens"], ["r"], name="rev", batch_axis=1, time_axis=0)
    return make_model([node, helper.make_node("Relu", ["r"], ["y"])], [("x", F32, [4, 3])], [("y", F32, [4, 3])],
                      {"lens": np.array([4, 2, 1], np.int64)})


def test_unsupported_op_names_op_node_and_opset() -> None:
    with pytest.raises(OnnxImportError, match=r"node 'rev' \(ReverseSequence, opset 21\): op ReverseSequence is not "
                                              "supported"):
        import_onnx(_reverse_sequence_model())


@pytest.mark.parametrize("fallback", ["reference", "onnxruntime"])
def test_fallback_runs_the_node_with_an_onnx_evaluator(fallback: str) -> None:
    model = _reverse_sequence_model()
    with pytest.warns(UserWarning, match=rf"1 ONNX node\(s\) run with the {fallback} evaluator:\n  node 'rev'"):
        program = import_onnx(model, fallback=fallback)
    verify(program.graph)
    assert program.graph.op_counts() == {"opaque": 1, "relu": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert_matches_onnxruntime(model, fallback=fallback)


@pytest.mark.parametrize("fallback", ["reference", "onnxruntime"])
def test_a_fallback_if_gets_the_outer_values_its_branches_read(fallback: str) -> None:
    """The branches read `x` and `w` from the enclosing graph, and `c` (also the If's own operand)."""
    cast = helper.make_node("Cast", ["c"], ["cf"], to=F32)
    then_branch = helper.make_graph([helper.make_node("Add", ["x", "w"], ["t"])], "then", [],
                                    [helper.make_tensor_value_info("t", F32, [3])])
    else_branch = helper.make_graph([cast, helper.make_node("Mul", ["x", "cf"], ["e"])], "else", [],
                                    [helper.make_tensor_value_info("e", F32, [3])])
    branch = helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch, name="if")
    model = make_model([branch], [("c", TensorProto.BOOL, []), ("x", F32, [3])], [("y", F32, [3])],
                       {"w": np.array([1.0, -2.0, 0.5], np.float32)})
    with pytest.warns(UserWarning, match="run with the"):
        rep = HeteropassBackend.prepare(model, fallback=fallback)
    x = np.array([1.5, 2.0, -3.0], np.float32)
    np.testing.assert_array_equal(rep.run({"c": np.array(True), "x": x})[0], x + np.array([1.0, -2.0, 0.5], np.float32))
    np.testing.assert_array_equal(rep.run({"c": np.array(False), "x": x})[0], x * 0.0)


@pytest.mark.parametrize("fallback", ["reference", "onnxruntime"])
def test_a_fallback_loop_without_cond_runs_its_trip_count(fallback: str) -> None:
    """onnx's reference evaluator runs a Loop whose `cond` is omitted zero times; ONNX Runtime runs M."""
    state = [helper.make_tensor_value_info(n, F32, [3]) for n in ("s_in", "s_out")]
    body = helper.make_graph([helper.make_node("Add", ["s_in", "x"], ["s_out"]),
                              helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
                             [helper.make_tensor_value_info("i", I64, []),
                              helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), state[0]],
                             [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), state[1]])
    loop = helper.make_node("Loop", ["n", "", "s0"], ["y"], body=body, name="loop")
    model = make_model([loop], [("s0", F32, [3]), ("x", F32, [3])], [("y", F32, [3])], {"n": np.array(3, np.int64)})
    with pytest.warns(UserWarning, match="run with the"):
        assert_matches_onnxruntime(model, fallback=fallback)


# -- malformed input --------------------------------------------------------------------------------
def _relu_model() -> onnx.ModelProto:
    return make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", F32, [2])], [("y", F32, [2])],
                      {"w": np.arange(64, dtype=np.float32)})


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(_relu_model().SerializeToString()[:-40])
    with pytest.raises(OnnxImportError, match="truncated or corrupt"):
        import_onnx(path)


def test_undefined_input() -> None:
    model = make_model([helper.make_node("Add", ["x", "missing_weight"], ["y"], name="add")], [("x", F32, [2])],
                       [("y", F32, [2])])
    with pytest.raises(OnnxImportError, match="node 'add' \\(Add\\) reads 'missing_weight', which is neither"):
        import_onnx(model)


def test_wrong_attribute_type() -> None:
    node = helper.make_node("Transpose", ["x"], ["y"], name="t", perm=[1.0, 0.0])
    model = make_model([node], [("x", F32, [2, 3])], [("y", F32, [3, 2])])
    with pytest.raises(OnnxImportError, match=r"node 't' \(Transpose\): Mismatched attribute type .*perm.*INTS"):
        import_onnx(model)


@pytest.mark.parametrize("nodes, inputs, message", [
    ([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Sigmoid", ["x"], ["y"])], ["x"],
     r"'y' is defined twice: by node 'y' \(Relu\) and by node 'y' \(Sigmoid\)"),
    ([helper.make_node("Relu", ["x"], ["x"], name="r")], ["x"], r"'x' is defined twice: by a graph input and by node"),
    ([helper.make_node("Relu", ["x"], ["y"])], ["x", "x"], "graph input 'x' is listed twice"),
    ([helper.make_node("Concat", ["x", "x"], ["y"], name="c")], ["x"], r"node 'c' \(Concat\): Required attribute"),
    ([helper.make_node("Relu", ["x", "x"], ["y"], name="r")], ["x"], r"node 'r' \(Relu\): .*input size 2"),
    ([helper.make_node("GlobalAveragePool", ["x"], ["y"], name="p")], ["x"],
     r"node 'p' \(GlobalAveragePool.*rank 3 or more"),
    ([helper.make_node("ReduceMax", ["s"], ["y"], name="r", axes=[0])], ["s"], r"node 'r' \(ReduceMax.*rank 0"),
])
def test_models_onnx_runtime_rejects_are_rejected_naming_the_node(nodes: list, inputs: list[str], message: str) -> None:
    model = make_model(nodes, [(name, F32, [] if name == "s" else [2, 3]) for name in inputs],
                       [("y" if nodes[0].output[0] != "x" else "x", F32, None)], opset=13)
    with pytest.raises(OnnxImportError, match=message):
        import_onnx(model)


@pytest.mark.parametrize("attrs, message", [({"num_groups": 1, "bogus": 1}, "Unrecognized attribute: bogus"),
                                            ({}, "Required attribute 'num_groups' is missing")])
def test_a_deprecated_schema_still_has_its_attributes_checked(attrs: dict, message: str) -> None:
    """GroupNormalization-18 is deprecated, which onnx's check_node refuses outright: its checks run by hand."""
    node = helper.make_node("GroupNormalization", ["x", "s", "s"], ["y"], name="g", **attrs)
    model = make_model([node], [("x", F32, [2, 4, 3]), ("s", F32, [1])], [("y", F32, None)], opset=18)
    with pytest.raises(OnnxImportError, match=rf"invalid ONNX model: node 'g' \(GroupNormalization\): {message}"):
        import_onnx(model)


@pytest.mark.parametrize("node, inputs", [
    (helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[3, 3], pads=[1, 1, 1, 1], ceil_mode=1),
     [("x", F32, [2, 3, 7, 8])]),  # onnx keeps a last window that would start in the padding
    (helper.make_node("Einsum", ["x", "z"], ["y"], equation="ij,ij->ij"),
     [("x", F32, [3, 1]), ("z", F32, [1, 4])]),  # onnx does not broadcast size-1 dims
])
def test_where_onnx_shape_inference_misses_onnx_runtimes_rule_the_lowering_wins_with_a_warning(
        node: onnx.NodeProto, inputs: list) -> None:
    model = make_model([node], inputs, [("y", F32, None)], opset=13)
    with pytest.warns(UserWarning, match="ONNX shape inference disagrees with the lowering"):
        assert_matches_onnxruntime(model)


def test_operands_breaking_their_ops_type_constraints_are_rejected_naming_the_node() -> None:
    model = make_model([helper.make_node("Add", ["x", "b"], ["y"], name="mixed")],
                       [("x", F32, [3]), ("b", I64, [3])], [("y", F32, [3])])
    with pytest.raises(OnnxImportError, match=r"invalid ONNX model: .*node name: mixed.*inconsistent type"):
        import_onnx(model)


@pytest.mark.parametrize("opset", [18, 20])
def test_deprecated_group_normalization_18_with_one_scale_per_group_runs_as_onnx_runtime_runs_it(opset: int) -> None:
    rng = np.random.default_rng(1)
    node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2, epsilon=1e-3)
    assert_matches_onnxruntime(make_model([node], [("x", F32, [2, 6, 4, 5])], [("y", F32, [2, 6, 4, 5])],
                                          {"s": rng.standard_normal(2).astype(np.float32),
                                           "b": rng.standard_normal(2).astype(np.float32)}, opset=opset))


def test_an_opset_newer_than_onnx_knows_is_rejected() -> None:
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", F32, [2])], [("y", F32, [2])], opset=99)
    with pytest.raises(OnnxImportError, match="uses opset 99"):
        import_onnx(model)


def test_a_rule_failing_on_a_malformed_node_names_it() -> None:
    model = make_model([helper.make_node("DepthToSpace", ["x"], ["y"], name="d2s", blocksize=0)],
                       [("x", F32, [1, 4, 2, 2])], [("y", F32, None)])
    with pytest.raises(OnnxImportError, match=r"node 'd2s' \(DepthToSpace"):
        import_onnx(model)


def _old_model(node: onnx.NodeProto, x_shape: list[int], opset: int,
               scales: list[float] | None = None) -> onnx.ModelProto:
    initializers = {"scales": np.array(scales, np.float32)} if scales else {}
    return make_model([node], [("x", F32, x_shape)], [("y", F32, None)], initializers, opset=opset)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_old_opset_row_normalizations_of_an_empty_input(op: str, axis: int) -> None:
    """Upgraded, these become Flatten -> op -> Reshape, whose opset-13 Reshape reads the 0 of an empty
    batch as "copy the input's dim": the import failed where ONNX Runtime returns the empty input."""
    assert_matches_onnxruntime(_old_model(helper.make_node(op, ["x"], ["y"], axis=axis), [0, 3, 4], 11))
    assert_matches_onnxruntime(_old_model(helper.make_node(op, ["x"], ["y"], axis=axis), [2, 0, 4], 11))


@pytest.mark.parametrize("op", ["Softmax", "Hardmax"])
def test_old_opset_row_normalizations_of_an_empty_intermediate_that_is_also_an_output(op: str) -> None:
    """Shape inference records a graph output's shape among the outputs, not the value_infos."""
    nodes = [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["r"]),
             helper.make_node(op, ["r"], ["y"], axis=2)]
    slices = {"starts": np.array([0], np.int64), "ends": np.array([0], np.int64), "axes": np.array([1], np.int64)}
    assert_matches_onnxruntime(make_model(nodes, [("x", F32, [2, 3, 3, 4])], [("r", F32, None), ("y", F32, None)],
                                          slices, opset=11))


def test_a_stale_empty_value_info_does_not_skip_an_old_softmax() -> None:
    """ONNX Runtime only warns when a model's value_info disagrees with the shapes at run time: a declared 0
    dim must not make the softmax an Identity."""
    model = make_model([helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("Softmax", ["r"], ["y"])],
                       [("x", F32, [2, 3, 4])], [("y", F32, None)], {"shape": np.array([2, 3, 4], np.int64)}, opset=11)
    model.graph.value_info.append(helper.make_tensor_value_info("r", F32, [2, 0, 4]))
    assert_matches_onnxruntime(model)


def test_old_opset_hardmax_and_linear_resize_keep_their_meaning() -> None:
    """Before opset 13 Hardmax takes one maximum per row of the input flattened at `axis`; Resize-10 and
    Upsample map coordinates as x / scale. The version converter loses both."""
    assert_matches_onnxruntime(_old_model(helper.make_node("Hardmax", ["x"], ["y"], axis=1), [2, 3, 4], 11))
    assert_matches_onnxruntime(_old_model(helper.make_node("Hardmax", ["x"], ["y"], axis=0), [2, 3, 4], 11))
    resize = helper.make_node("Resize", ["x", "scales"], ["y"], mode="linear")
    assert_matches_onnxruntime(_old_model(resize, [1, 1, 4, 4], 10, [1.0, 1.0, 2.0, 2.0]))
    upsample = helper.make_node("Upsample", ["x", "scales"], ["y"], mode="linear")
    assert_matches_onnxruntime(_old_model(upsample, [1, 1, 3, 4], 9, [1.0, 1.0, 2.0, 1.5]))


def test_cycle() -> None:
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second")]
    model = make_model(nodes, [("x", F32, [2])], [("b", F32, [2])])
    with pytest.raises(OnnxImportError, match=r"cycle: nodes \['first', 'second'\]"):
        import_onnx(model)


def _save_with_external_data(folder: Path) -> Path:
    folder.mkdir()
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [("x", F32, [64])], [("y", F32, [64])],
                       {"w": np.arange(64, dtype=np.float32)})
    path = folder / "model.onnx"
    onnx.save_model(model, path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    return path


def _point_external_data(path: Path, location: str) -> None:
    model = onnx.load(path, load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save_model(model, path)


def test_external_data_inside_the_folder_loads(tmp_path: Path) -> None:
    path = _save_with_external_data(tmp_path / "m")
    graph = import_onnx(path).graph
    assert torch.equal(graph.constants["w"].const, torch.arange(64, dtype=torch.float32))


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_external_data_outside_the_folder_is_rejected(tmp_path: Path, where: str) -> None:
    path = _save_with_external_data(tmp_path / "m")
    outside = tmp_path / "secret.bin"
    outside.write_bytes((path.parent / "weights.bin").read_bytes())
    if where == "parent":
        location, problem = "../secret.bin", "leaves the model's folder"
    elif where == "absolute":
        location, problem = str(outside), "is an absolute path"
    else:
        os.symlink(outside, path.parent / "link.bin")
        location, problem = "link.bin", "outside the model's folder"
    _point_external_data(path, location)
    with pytest.raises(OnnxImportError, match=f"external data of tensor 'w': location .* {problem}"):
        import_onnx(path)


# -- models exported from PyTorch -------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "resnet_cnn"])
def test_torch_exported_models(name: str) -> None:
    model = models.mlp() if name == "mlp" else models.resnet_cnn()
    inputs = models.mlp_inputs() if name == "mlp" else models.resnet_inputs()
    model.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, buffer, dynamo=False)
    proto = onnx.load_from_string(buffer.getvalue())
    assert "opaque" not in import_onnx(proto).graph.op_counts()
    assert_matches_onnxruntime(proto)
    (actual,) = HeteropassBackend.prepare(proto).run([t.numpy() for t in inputs])
    with torch.no_grad():
        np.testing.assert_allclose(actual, model(*inputs).numpy(), rtol=1e-4, atol=1e-5)


def test_qdq_model_imports_as_quantize_dequantize_and_exports_back() -> None:
    """The form ONNX Runtime's quantizer writes: activations through QuantizeLinear/DequantizeLinear,
    an int8 weight with per-channel scales through DequantizeLinear, then MatMul."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "sw"], ["wd"], axis=1),
             helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    model = make_model(nodes, [("x", TensorProto.FLOAT, [3, 8])], [("y", TensorProto.FLOAT, [3, 4])], {
        "sx": np.array(0.02, dtype=np.float32), "zx": np.array(128, dtype=np.uint8),
        "wq": rng.integers(-127, 128, (8, 4)).astype(np.int8), "sw": rng.uniform(0.01, 0.02, 4).astype(np.float32)})
    program = import_onnx(model)
    verify(program.graph)
    ops = [n.op for n in program.graph.nodes]
    assert ops.count("quantize") == 1 and ops.count("dequantize") == 2
    feeds = random_feeds(model)
    # Without graph optimizations: ORT's fused u8 x s8 kernel saturates int16 sums on AVX2 machines.
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    expected = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = run_graph(program.graph, torch.from_numpy(feeds["x"]))[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    exported = export_onnx(program.graph)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in exported.graph.node}


def test_backend_run_by_name_requires_exactly_the_model_inputs() -> None:
    model = make_model([helper.make_node("Add", ["x", "b"], ["y"])], [("x", F32, [3]), ("b", F32, [3])],
                       [("y", F32, [3])])
    rep = HeteropassBackend.prepare(model)
    x = np.ones(3, np.float32)
    np.testing.assert_array_equal(rep.run({"x": x, "b": x})[0], 2 * x)
    with pytest.raises(ValueError, match=r"missing input\(s\) \['b'\]"):
        rep.run({"x": x})
    with pytest.raises(ValueError, match=r"unknown input\(s\) \['bogus'\]"):
        rep.run({"x": x, "b": x, "bogus": x})
    with_default = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [("x", F32, [3]), ("w", F32, [3])],
                              [("y", F32, [3])], {"w": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"\['w'\] are initializers"):
        HeteropassBackend.prepare(with_default).run({"x": x, "w": x})


@pytest.mark.parametrize("node, x_shape, initializers, message", [
    (helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="bogus"), [1, 1, 2, 2],
     {"scales": np.array([1, 1, 2, 2], np.float32)}, "mode must be nearest, linear or cubic, got 'bogus'"),
    (helper.make_node("Pad", ["x", "pads"], ["y"], mode="bogus"), [2, 2], {"pads": np.array([1, 1, 1, 1])},
     "mode must be constant, reflect, edge or wrap"),
    (helper.make_node("Split", ["x"], ["y"], axis=0, num_outputs=0), [2, 2], {}, "num_outputs must be at least 1"),
    (helper.make_node("Conv", ["x", "w"], ["y"], pads=[1]), [1, 1, 4, 4], {"w": np.ones((1, 1, 3, 3), np.float32)},
     "pads must hold 4 values"),
    (helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2]), [1, 1, 4, 4], {},
     "strides must hold 2 values"),
    (helper.make_node("Trilu", ["x", "k"], ["y"]), [2, 3], {"k": np.array([1, 2])}, "k must hold one value"),
    (helper.make_node("Gather", ["x", "i"], ["y"], axis=1), [2, 3], {"i": np.array([0, -3, 3])},
     "index 3 is out of range for axis 1 of size 3"),
    (helper.make_node("GatherElements", ["x", "i"], ["y"]), [2, 3], {"i": np.array([[-3, 0, 1]])},
     "index -3 is out of range for axis 0 of size 2"),
])
def test_invalid_attribute_values_are_errors_naming_the_node(node: onnx.NodeProto, x_shape: list[int],
                                                           initializers: dict[str, np.ndarray], message: str) -> None:
    model = make_model([node], [("x", F32, x_shape)], [("y", F32, None)], initializers)
    with pytest.raises(OnnxImportError, match=rf"node 'y' \({node.op_type}, opset 21\): {message}"):
        import_onnx(model)


def test_an_error_at_run_time_names_the_onnx_node() -> None:
    """An index out of range fails inside the op; the error's note names the node it came from."""
    model = make_model([helper.make_node("Gather", ["w", "ids"], ["y"], name="embed")], [("ids", I64, [3])],
                       [("y", F32, [3, 4])], {"w": np.ones((10, 4), np.float32)})
    rep = HeteropassBackend.prepare(model)
    with pytest.raises(IndexError) as caught:
        rep.run([np.array([0, 1, 10])])
    assert any("node 'embed' (Gather, opset 21)" in note for note in getattr(caught.value, "__notes__", []))


@pytest.mark.parametrize("name", ["2layer-mlp", ".hidden", "0"])
def test_a_graph_name_that_is_not_an_identifier_still_prints_as_parsable_ir(name: str) -> None:
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", F32, [3])], [("y", F32, [3])])
    model.graph.name = name
    graph = import_onnx(model).graph
    assert str(parse_graph(str(graph))) == str(graph)


@pytest.mark.parametrize("attrs, sizes, expected", [
    ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, [1, 3, 12, 16],
     "interpolate"),
    ({"mode": "nearest", "coordinate_transformation_mode": "half_pixel", "nearest_mode": "round_prefer_ceil"},
     [1, 3, 3, 4], "interpolate"),
    ({"mode": "linear"}, [1, 3, 9, 13], "interpolate"),
    ({"mode": "linear", "coordinate_transformation_mode": "align_corners"}, [1, 3, 9, 13], "interpolate"),
    ({"mode": "cubic"}, [1, 3, 9, 13], "interpolate"),
    ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, [1, 3, 9, 13],
     "take"),  # ratio 1.5: ONNX's dst / scale and PyTorch's dst * (in / out) may floor differently
    ({"mode": "cubic", "cubic_coeff_a": -0.5}, [1, 3, 9, 13], "matmul"),
    ({"mode": "linear", "coordinate_transformation_mode": "asymmetric"}, [1, 3, 9, 13], "matmul"),
    ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, [1, 6, 12, 16],
     "take"),  # the channels resized too
], ids=["nearest_2x", "nearest_exact_half", "linear", "linear_corners", "cubic", "nearest_1_5x", "cubic_a_0_5",
        "linear_asymmetric", "nearest_channels"])
def test_resize_in_a_mode_pytorch_shares_runs_as_one_interpolate(attrs: dict, sizes: list[int], expected: str) -> None:
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], **attrs)
    model = make_model([node], [("x", F32, [1, 3, 6, 8])], [("y", F32, sizes)],
                       {"sizes": np.array(sizes, np.int64)})
    assert_matches_onnxruntime(model)
    assert expected in import_onnx(model).graph.op_counts()


def test_pytorch_half_pixel_resize_to_one_element_reads_the_first() -> None:
    """The spec's `length_resized > 1 ? (x + 0.5) / scale - 0.5 : 0`, whatever scale * in is."""
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear",
                            coordinate_transformation_mode="pytorch_half_pixel")
    model = make_model([node], [("x", F32, [1, 1, 5, 6])], [("y", F32, [1, 1, 1, 1])],
                       {"scales": np.array([1, 1, 0.25, 0.25], np.float32)})
    assert_matches_onnxruntime(model)


def test_mean_variance_normalization_of_offset_inputs_keeps_its_precision() -> None:
    """The variance of the centered values: E[x^2] - E[x]^2 (the spec's function body) cancels in float32
    for pixel-like inputs with an offset (0.1 off for values near 1000)."""
    model = make_model([helper.make_node("MeanVarianceNormalization", ["x"], ["y"])], [("x", F32, [2, 3, 4, 5])],
                       [("y", F32, [2, 3, 4, 5])], opset=13)
    x = (1000 + 4 * np.random.default_rng(0).random((2, 3, 4, 5))).astype(np.float32)
    x64 = x.astype(np.float64)
    centered = x64 - x64.mean(axis=(0, 2, 3), keepdims=True)
    exact = centered / (np.sqrt((centered ** 2).mean(axis=(0, 2, 3), keepdims=True)) + 1e-9)
    [got] = HeteropassBackend.prepare(model).run({"x": x})
    np.testing.assert_allclose(got, exact, atol=2e-4)


@pytest.mark.parametrize("op, attrs", [("InstanceNormalization", {}), ("GroupNormalization", {"num_groups": 6})])
def test_norms_over_groups_of_one_value_import(op: str, attrs: dict[str, int]) -> None:
    """A [1, C, 1] input: PyTorch's F.group_norm refuses one value per group (a training check)."""
    model = make_model([helper.make_node(op, ["x", "s", "b"], ["y"], **attrs)], [("x", F32, [1, 6, 1])],
                       [("y", F32, [1, 6, 1])], {"s": np.ones(6, np.float32), "b": np.arange(6, dtype=np.float32)})
    [got] = HeteropassBackend.prepare(model).run({"x": np.random.default_rng(0).standard_normal((1, 6, 1),
                                                                                          dtype=np.float32)})
    np.testing.assert_allclose(got[0, :, 0], np.arange(6), atol=1e-3)
