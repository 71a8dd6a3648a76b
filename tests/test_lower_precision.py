"""lower-precision: products run in bf16/fp16 with casts at the boundary, sensitive ops stay f32, the rest
follows its inputs; overrides; the op lists run in 16 bits on CPU; lowered graphs stay close to float32."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

import heteropass as hp
from heteropass.ir import (
    OPS,
    DType,
    Graph,
    Interpreter,
    Node,
    TensorType,
    Value,
    get_op,
    parse_graph,
    run_graph,
    verify,
)
from heteropass.ir.compare import assert_graphs_equal
from heteropass.ir.sample import random_inputs, random_tensor
from heteropass.ir.torch_importer import import_module
from heteropass.passes import PassContext, PassManager, PassResult, default_pipeline
from heteropass.passes.lower_precision import FOLLOW, KEEP_FP32, LOWER, LowerPrecisionPass, plan
from heteropass.passes.precision_config import PrecisionConfig, measure_error
from heteropass.passes.simplify_algebra import RULES, SimplifyAlgebraPass
from heteropass.testing import FAMILIES, graph_and_inputs, models

from .test_ops import SAMPLES

# Outputs must stay within 8 units of roundoff of the low dtype, relative to each output's range: a few
# roundings per layer (operands, product, activation) over the few layers of these graphs. bf16 keeps 8
# significand bits (u = 2^-9), fp16 keeps 11 (u = 2^-12).
TOLERANCE = {"bf16": 8 * 2.0**-9, "fp16": 8 * 2.0**-12}
BEFORE_FUSION = PassContext(disabled=frozenset({"fuse-gemm-epilogue", "fuse-reductions", "fuse-elementwise",
                                                 "plan-memory"}))


def assert_close_to_f32(original: Graph, lowered: Graph, inputs: list[torch.Tensor], precision: str) -> float:
    """Each float output of `lowered` within TOLERANCE[precision] of `original`'s, relative to its range;
    returns the largest error."""
    worst = 0.0
    for i, (ref, got) in enumerate(zip(run_graph(original, *inputs), run_graph(lowered, *inputs), strict=True)):
        assert got.dtype == ref.dtype, f"output {i} is {got.dtype}, expected {ref.dtype}"
        error = measure_error([ref], [got])
        assert error.max_rel <= TOLERANCE[precision], f"output {i}: {error}\n\n{original}\n{lowered}"
        worst = max(worst, error.max_rel)
    return worst


def check(before: str, expected: str, config: PrecisionConfig | None = None) -> PassResult:
    """Lower `before`; check it against `expected`, the verifier, the float32 results and a second run."""
    graph = parse_graph(before)
    original = graph.clone()
    result = LowerPrecisionPass(config)(graph)
    verify(graph)
    assert_graphs_equal(graph, expected)
    assert_close_to_f32(original, graph, random_inputs(original), (config or PrecisionConfig("bf16")).precision)
    assert not LowerPrecisionPass(config)(graph).modified
    return result


def test_linear_runs_low_with_casts_at_the_boundary_and_a_converted_weight() -> None:
    graph = parse_graph("""
    graph g(%x: f32[2,4]) -> (f32[2,3]) {
      const %w: f32[3,4]
      const %b: f32[3] = [1.0, 2.0, 0.5]
      %0: f32[2,3] = linear(%x, %w, %b)
      return %0
    }""")
    weight = graph.constants["w"].const
    result = check(str(graph), """
    graph g(%x: f32[2,4]) -> (f32[2,3]) {
      const %w: bf16[3,4]
      const %b: bf16[3] = [1.0, 2.0, 0.5]
      %0: bf16[2,4] = cast(%x) {dtype=bf16}
      %1: bf16[2,3] = linear(%0, %w, %b)
      %2: f32[2,3] = cast(%1) {dtype=f32}
      return %2
    }""")
    assert result.stats == {"lowered": 1, "followed": 0, "kept": 0, "casts": 2, "constants_converted": 2}
    assert result.notes == []
    LowerPrecisionPass()(graph)
    assert sorted(graph.constants) == ["b.bf16", "w.bf16"]
    assert torch.equal(graph.constants["w.bf16"].const, weight.to(torch.bfloat16))  # type: ignore[union-attr]


def test_softmax_stays_f32_between_lowered_products() -> None:
    result = check("""
    graph g(%q: f32[2,4,8], %k: f32[2,8,4], %v: f32[2,4,8]) -> (f32[2,4,8]) {
      %0: f32[2,4,4] = bmm(%q, %k)
      %1: f32[2,4,4] = softmax(%0) {dim=-1}
      %2: f32[2,4,8] = bmm(%1, %v)
      return %2
    }""", """
    graph g(%q: f32[2,4,8], %k: f32[2,8,4], %v: f32[2,4,8]) -> (f32[2,4,8]) {
      %0: bf16[2,4,8] = cast(%q) {dtype=bf16}
      %1: bf16[2,8,4] = cast(%k) {dtype=bf16}
      %2: bf16[2,4,4] = bmm(%0, %1)
      %3: f32[2,4,4] = cast(%2) {dtype=f32}
      %4: f32[2,4,4] = softmax(%3) {dim=-1}
      %5: bf16[2,4,4] = cast(%4) {dtype=bf16}
      %6: bf16[2,4,8] = cast(%v) {dtype=bf16}
      %7: bf16[2,4,8] = bmm(%5, %6)
      %8: f32[2,4,8] = cast(%7) {dtype=f32}
      return %8
    }""")
    assert result.stats["lowered"] == 2 and result.stats["kept"] == 1 and result.stats["casts"] == 6
    assert result.notes == [f"kept softmax at f32 (%1): {KEEP_FP32['softmax']}"]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_product_summed_in_f32_stays_f32_under_fp16(precision: str) -> None:
    """A norm's x*x after a lowered linear: in f16 it overflows past |x| = 256 before the float32 sum."""
    before = """
    graph g(%x: f32[2,4], %w: f32[3,4]) -> (f32[2]) {
      %0: f32[2,3] = linear(%x, %w)
      %1: f32[2,3] = mul(%0, %0)
      %2: f32[2] = sum(%1) {dims=[-1]}
      %3: f32[2] = sqrt(%2)
      return %3
    }"""
    low = "f16" if precision == "fp16" else "bf16"
    squares = ("%3: f32[2,3] = cast(%2) {dtype=f32}\n      %4: f32[2,3] = mul(%3, %3)\n"
               if precision == "fp16" else
               f"%3: {low}[2,3] = mul(%2, %2)\n      %4: f32[2,3] = cast(%3) {{dtype=f32}}\n")
    result = check(before, f"""
    graph g(%x: f32[2,4], %w: f32[3,4]) -> (f32[2]) {{
      %0: {low}[2,4] = cast(%x) {{dtype={low}}}
      %1: {low}[3,4] = cast(%w) {{dtype={low}}}
      %2: {low}[2,3] = linear(%0, %1)
      {squares}      %5: f32[2] = sum(%4) {{dims=[-1]}}
      %6: f32[2] = sqrt(%5)
      return %6
    }}""", PrecisionConfig(precision))
    assert any("overflow f16 (300 * 300" in note for note in result.notes) == (precision == "fp16")


def test_a_product_reaching_a_sum_through_a_reshape_or_beside_other_readers_stays_f32() -> None:
    graph = parse_graph("""
    graph g(%x: f32[2,3,4], %w: f32[4,4]) -> (f32[2], f32[2,3,4]) {
      %0: f32[2,3,4] = linear(%x, %w)
      %1: f32[2,3,4] = mul(%0, %0)
      %2: f32[2,12] = reshape(%1) {shape=[2,12]}
      %3: f32[2] = sum(%2) {dims=[-1]}
      %4: f32[2,3,4] = add(%1, %0)
      return %3, %4
    }""")
    modes = plan(graph, PrecisionConfig("fp16"), DType.f16).modes
    assert modes[graph.nodes[1].name] == "keep"
    assert plan(graph, PrecisionConfig("bf16"), DType.bf16).modes[graph.nodes[1].name] == "follow"


def test_follow_ops_take_the_widest_dtype_of_their_inputs() -> None:
    # gelu and the constant add follow the product; mixing with the f32 input %y widens to f32 (autocast's
    # promote); where keeps its bool condition and converts its f32 constant.
    result = check("""
    graph g(%x: f32[2,4], %y: f32[2,3]) -> (f32[2,3], f32[2,3]) {
      const %w: f32[3,4]
      const %c: f32[3] = [0.5, -1.0, 2.0]
      const %zero: f32[] = 0.0
      %0: f32[2,3] = linear(%x, %w)
      %1: f32[2,3] = gelu(%0)
      %2: f32[2,3] = add(%1, %c)
      %3: bool[2,3] = gt(%2, %zero)
      %4: f32[2,3] = where(%3, %2, %c)
      %5: f32[2,3] = mul(%4, %y)
      return %4, %5
    }""", """
    graph g(%x: f32[2,4], %y: f32[2,3]) -> (f32[2,3], f32[2,3]) {
      const %w: bf16[3,4]
      const %c: bf16[3] = [0.5, -1.0, 2.0]
      const %zero: bf16[] = 0.0
      %0: bf16[2,4] = cast(%x) {dtype=bf16}
      %1: bf16[2,3] = linear(%0, %w)
      %2: bf16[2,3] = gelu(%1)
      %3: bf16[2,3] = add(%2, %c)
      %4: bool[2,3] = gt(%3, %zero)
      %5: bf16[2,3] = where(%4, %3, %c)
      %6: f32[2,3] = cast(%5) {dtype=f32}
      %7: f32[2,3] = mul(%6, %y)
      return %6, %7
    }""")
    assert result.stats["followed"] == 3
    assert result.stats["constants_converted"] == 3


def test_deny_and_allow_override_the_lists_by_op() -> None:
    config = PrecisionConfig("bf16", deny={"matmul"}, allow={"softmax", "add"})
    result = check("""
    graph g(%x: f32[4,4], %y: f32[4,4]) -> (f32[4,4]) {
      %0: f32[4,4] = matmul(%x, %y)
      %1: f32[4,4] = add(%x, %y)
      %2: f32[4,4] = softmax(%1) {dim=1}
      %3: f32[4,4] = add(%0, %2)
      return %3
    }""", """
    graph g(%x: f32[4,4], %y: f32[4,4]) -> (f32[4,4]) {
      %0: f32[4,4] = matmul(%x, %y)
      %1: bf16[4,4] = cast(%x) {dtype=bf16}
      %2: bf16[4,4] = cast(%y) {dtype=bf16}
      %3: bf16[4,4] = add(%1, %2)
      %4: bf16[4,4] = softmax(%3) {dim=1}
      %5: bf16[4,4] = cast(%0) {dtype=bf16}
      %6: bf16[4,4] = add(%5, %4)
      %7: f32[4,4] = cast(%6) {dtype=f32}
      return %7
    }""", config)
    assert result.notes == ["kept matmul at f32 (%0): its op is on the deny list"]


def test_keep_nodes_keeps_single_nodes_by_name() -> None:
    config = PrecisionConfig("fp16", keep_nodes={"first", "gone"})
    result = check("""
    graph g(%x: f32[4,8]) -> (f32[4,8]) {
      const %w: f32[8,8]
      %first: f32[4,8] = linear(%x, %w)
      %second: f32[4,8] = linear(%first, %w)
      return %second
    }""", """
    graph g(%x: f32[4,8]) -> (f32[4,8]) {
      const %w: f32[8,8]
      const %w16: f16[8,8]
      %0: f32[4,8] = linear(%x, %w)
      %1: f16[4,8] = cast(%0) {dtype=f16}
      %2: f16[4,8] = linear(%1, %w16)
      %3: f32[4,8] = cast(%2) {dtype=f32}
      return %3
    }""", config)
    assert result.notes == ["kept linear at f32 (%first): it is named in keep_nodes",
                            "keep_nodes names no node of this graph: %gone"]
    assert result.stats["kept"] == 1


def test_consecutive_lowered_ops_have_no_casts_between_them() -> None:
    # The no-op cast %1 would become a bf16 -> f32 -> bf16 round trip; it goes, and no pair is left.
    check("""
    graph g(%x: f32[2,8]) -> (f32[2,4], f32[2,4]) {
      const %w1: f32[8,8]
      const %w2: f32[8,8]
      %0: f32[2,8] = linear(%x, %w1)
      %1: f32[2,8] = cast(%0) {dtype=f32}
      %2: f32[2,8] = relu(%1)
      %3: f32[2,8] = matmul(%2, %w2)
      %4: f32[2,4], %5: f32[2,4] = split(%3) {sizes=[4, 4], dim=1}
      return %4, %5
    }""", """
    graph g(%x: f32[2,8]) -> (f32[2,4], f32[2,4]) {
      const %w1: bf16[8,8]
      const %w2: bf16[8,8]
      %0: bf16[2,8] = cast(%x) {dtype=bf16}
      %1: bf16[2,8] = linear(%0, %w1)
      %2: bf16[2,8] = relu(%1)
      %3: bf16[2,8] = matmul(%2, %w2)
      %4: bf16[2,4], %5: bf16[2,4] = split(%3) {sizes=[4, 4], dim=1}
      %6: f32[2,4] = cast(%4) {dtype=f32}
      %7: f32[2,4] = cast(%5) {dtype=f32}
      return %6, %7
    }""")


def test_fp16_keeps_constants_beyond_its_range_in_f32() -> None:
    config = PrecisionConfig("fp16")
    result = check("""
    graph g(%x: f32[2,2]) -> (f32[2,2]) {
      const %huge: f32[2,2] = [[1.0, 70000.0], [0.5, 2.0]]
      const %scale: f32[] = 100000.0
      const %small: f32[2,2] = [[1.0, 0.5], [0.25, 2.0]]
      const %far: f32[2] = [1.0, 100000.0]
      %0: f32[2,2] = matmul(%x, %huge)
      %1: f32[2,2] = div(%0, %scale)
      %2: f32[2,2] = matmul(%1, %small)
      %3: f32[2,2] = mul(%2, %far)
      return %3
    }""", """
    graph g(%x: f32[2,2]) -> (f32[2,2]) {
      const %huge: f32[2,2] = [[1.0, 70000.0], [0.5, 2.0]]
      const %scale: f32[] = 100000.0
      const %small: f16[2,2] = [[1.0, 0.5], [0.25, 2.0]]
      const %far: f32[2] = [1.0, 100000.0]
      %0: f32[2,2] = matmul(%x, %huge)
      %1: f32[2,2] = div(%0, %scale)
      %2: f16[2,2] = cast(%1) {dtype=f16}
      %3: f16[2,2] = matmul(%2, %small)
      %4: f32[2,2] = cast(%3) {dtype=f32}
      %5: f32[2,2] = mul(%4, %far)
      return %5
    }""", config)
    assert result.notes == ["kept matmul at f32 (%0): the constant %huge is outside the f16 range "
                            "(overflows or underflows)"]


def test_fp16_keeps_constants_that_would_underflow_in_f32() -> None:
    """1e-8 is below f16's smallest normal (6.1e-5): converted, the product would be 0."""
    text = """
    graph g(%x: f32[2,2]) -> (f32[2,2]) {
      const %w: f32[2,2] = [[1.0, 0.5], [0.25, 2.0]]
      const %tiny: f32[] = 1e-08
      %0: f32[2,2] = matmul(%x, %w)
      %1: f32[2,2] = mul(%0, %tiny)
      return %1
    }"""
    result = check(text, """
    graph g(%x: f32[2,2]) -> (f32[2,2]) {
      const %w: f16[2,2] = [[1.0, 0.5], [0.25, 2.0]]
      const %tiny: f32[] = 1e-08
      %0: f16[2,2] = cast(%x) {dtype=f16}
      %1: f16[2,2] = matmul(%0, %w)
      %2: f32[2,2] = cast(%1) {dtype=f32}
      %3: f32[2,2] = mul(%2, %tiny)
      return %3
    }""", PrecisionConfig("fp16"))
    assert result.notes == []


def test_graphs_without_float32_work_are_left_alone() -> None:
    graph = parse_graph("""
    graph g(%x: f64[2,3], %i: i64[3,3], %h: bf16[2,3]) -> (f64[2,3], i64[3,3], f32[2,3]) {
      const %w: f64[3,3]
      const %c: f32[3] = [1.0, 2.0, 3.0]
      %0: f64[2,3] = matmul(%x, %w)
      %1: i64[3,3] = matmul(%i, %i)
      %2: f32[2,3] = add(%h, %c)
      return %0, %1, %2
    }""")
    before = str(graph)
    result = LowerPrecisionPass()(graph)
    assert not result.modified and str(graph) == before
    assert result.stats["lowered"] == 0


def test_calibration_inputs_give_the_measured_error() -> None:
    graph = parse_graph("""
    graph g(%x: f32[4,16]) -> (f32[4,16]) {
      const %w: f32[16,16]
      %0: f32[4,16] = linear(%x, %w)
      return %0
    }""")
    batches = [tuple(random_inputs(graph, seed)) for seed in range(3)]
    result = LowerPrecisionPass(PrecisionConfig("bf16", calibration=batches))(graph)
    assert 0 < result.stats["error_max_rel"] <= TOLERANCE["bf16"]
    assert 0.999 < result.stats["error_cosine"] <= 1.0


@pytest.mark.parametrize(("config", "message"), [
    (PrecisionConfig("int8-weight"), "lowers to"),
    (PrecisionConfig("bf16", allow={"matmull"}), "unknown ops: \\['matmull'\\]"),
    (PrecisionConfig("bf16", allow={"add"}, deny={"add"}), "both allowed and denied"),
    (PrecisionConfig("bf16", allow={"det"}), "cannot lower \\['det'\\]"),
])
def test_bad_configs_are_refused(config: PrecisionConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LowerPrecisionPass(config)


def test_lists_are_disjoint_and_name_registered_ops() -> None:
    assert not (LOWER & FOLLOW) and not (LOWER & set(KEEP_FP32)) and not (FOLLOW & set(KEEP_FP32))
    assert (LOWER | FOLLOW | set(KEEP_FP32)) <= set(OPS)


def _t(*shape: int) -> TensorType:
    return TensorType(shape, DType.f32)


# Forms whose CPU kernel depends on the rank, beyond test_ops' one sample per op.
_VARIANTS = [
    ("conv", [_t(1, 2, 8), _t(3, 2, 3), _t(3)], {}),
    ("conv", [_t(1, 2, 4, 4, 4), _t(3, 2, 3, 3, 3)], {}),
    ("conv_transpose", [_t(1, 2, 8), _t(2, 3, 3)], {}),
    ("conv_transpose", [_t(1, 2, 4, 4, 4), _t(2, 3, 3, 3, 3), _t(3)], {}),
    ("max_pool", [_t(1, 2, 4, 4, 4)], {"kernel": [2, 2, 2]}),
    ("adaptive_avg_pool", [_t(1, 2, 4, 4, 4)], {"output_size": [2, 2, 2]}),
    ("adaptive_max_pool", [_t(1, 2, 8)], {"output_size": [3]}),
    ("scaled_dot_product_attention", [_t(1, 2, 4, 8), _t(1, 2, 4, 8), _t(1, 2, 4, 8), _t(4, 4)], {}),
    ("matmul", [_t(2, 1, 3, 4), _t(4, 5)], {}),
    ("matmul", [_t(4), _t(4)], {}),
    ("interpolate", [_t(1, 2, 4, 4)], {"mode": "nearest", "size": [8, 6]}),
    ("interpolate", [_t(1, 2, 4, 4)], {"mode": "nearest_exact", "size": [8, 6]}),
    ("interpolate", [_t(1, 2, 4, 4)], {"mode": "cubic", "size": [8, 6], "align_corners": True}),
    ("interpolate", [_t(1, 2, 8)], {"mode": "linear", "size": [5]}),
    ("interpolate", [_t(1, 2, 4, 4, 4)], {"mode": "linear", "size": [3, 5, 8]}),
]
_LISTED = sorted(LOWER | FOLLOW | set(KEEP_FP32))
_CALLS = [(op, *SAMPLES[op]) for op in _LISTED] + _VARIANTS


@pytest.mark.parametrize("precision", [DType.bf16, DType.f16])
@pytest.mark.parametrize(("op", "types", "attrs"), _CALLS, ids=[f"{c[0]}-{i}" for i, c in enumerate(_CALLS)])
def test_listed_ops_run_in_16_bits_on_cpu(op: str, types: list[TensorType], attrs: dict,
                                          precision: DType) -> None:
    # Every op the pass may run in 16 bits (allow can lower KEEP_FP32 ops too) has a bf16/fp16 CPU kernel.
    low = [TensorType(t.shape, precision) if t.dtype is DType.f32 else t for t in types]
    opdef = get_op(op)
    attrs = opdef.check_attrs(attrs)
    gen = torch.Generator().manual_seed(0)
    outputs = opdef.run([random_tensor(t, gen) for t in low], attrs)
    assert [TensorType.of(o) for o in outputs] == opdef.infer(low, attrs)
    assert all(o.dtype != torch.float32 for o in outputs)


_MODELS = {"mlp": (models.mlp, models.mlp_inputs), "resnet": (models.resnet_cnn, models.resnet_inputs),
           "gpt2": (models.gpt2_style, models.gpt2_style_inputs)}


@functools.cache
def _imported(model: str) -> Graph:
    """The model as the precision passes see it: imported, cleaned up and pattern-recognized, not fused."""
    make, inputs = _MODELS[model]
    return PassManager(default_pipeline(2), BEFORE_FUSION).run(import_module(make(), inputs()).graph).graph


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("model", sorted(_MODELS))
def test_models_stay_within_tolerance_of_f32(model: str, precision: str, record_property) -> None:  # type: ignore[no-untyped-def]
    graph, inputs = _imported(model), _MODELS[model][1]
    lowered = graph.clone()
    result = LowerPrecisionPass(PrecisionConfig(precision))(lowered)
    verify(lowered)
    assert result.stats["lowered"] >= 3
    worst = max(assert_close_to_f32(graph, lowered, list(inputs(seed=seed)), precision) for seed in range(3))
    record_property("summary", f"lower-precision {model} {precision}: max_rel {worst:.2e} "
                               f"(tolerance {TOLERANCE[precision]:.2e}), {result.stats}")


# Comparisons, where and casts to integers turn a 16-bit rounding into a whole-unit difference; the
# accuracy property holds for continuous graphs. Products are drawn more often, as they are what lowers.
_CONTINUOUS = [f for f in FAMILIES if f not in ("compare", "where", "cast")] + ["matmul"] * 4


class _Magnitudes(Interpreter):
    """Runs a graph and records, for every float value, the largest magnitude that was rounded to compute it:
    its own, or for sums and products the sum of the magnitudes of the terms (`|x| @ |w|`), the scale of
    a dot product's rounding error."""

    def __init__(self, graph: Graph) -> None:
        super().__init__(graph)
        self.largest: dict[int, float] = {}

    def run_node(self, node: Node, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        results = super().run_node(node, args)
        terms = super().run_node(node, [a.abs() for a in args]) if node.op in ("sum", "matmul") else results
        pairs = [*zip(node.inputs, args, strict=True), *zip(node.outputs, terms, strict=True)]
        self.largest.update({id(v): float(t.abs().max()) for v, t in pairs if t.is_floating_point() and t.numel()})
        return results


def _ancestors(value: Value) -> list[Value]:
    seen: dict[int, Value] = {}
    stack = [value]
    while stack:
        v = stack.pop()
        if id(v) not in seen:
            seen[id(v)] = v
            stack.extend(v.producer.inputs if v.producer is not None else [])
    return list(seen.values())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@given(case=graph_and_inputs(families=_CONTINUOUS))
def test_random_graphs_stay_within_tolerance(precision: str, case: tuple) -> None:
    # A rounding error is relative to the magnitude of what was rounded, which after cancellation (a dot
    # product of mixed signs) can far exceed the result: each output's error is measured against the largest
    # magnitude among the values it is computed from.
    graph, inputs = case
    lowered = graph.clone()
    result = LowerPrecisionPass(PrecisionConfig(precision))(lowered)
    magnitudes = _Magnitudes(graph)
    expected = magnitudes.run(*inputs)
    for i, (value, ref, got) in enumerate(zip(graph.outputs, expected, run_graph(lowered, *inputs), strict=True)):
        assert got.dtype == ref.dtype
        if ref.is_floating_point() and ref.numel():
            scale = max(magnitudes.largest.get(id(v), 0.0) for v in _ancestors(value))
            error = float((got.double() - ref.double()).abs().max())
            assert error <= TOLERANCE[precision] * scale, (f"output {i}: error {error:.3g} > {TOLERANCE[precision]:.3g}"
                                                          f" x {scale:.3g}\n\n{graph}\n{lowered}")
    event("lowered a product" if result.stats["lowered"] else "lowered no product")


_CAST_RULES = [rule for rule in RULES if rule.name in ("cast-noop", "cast-round-trip")]


def _cast_round_trips(graph: Graph) -> int:
    """How many no-op casts and widen-then-narrow cast pairs `graph` holds."""
    return sum(SimplifyAlgebraPass(_CAST_RULES)(graph.clone()).stats.values())  # type: ignore[arg-type]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@given(case=graph_and_inputs(input_dtypes=(DType.f32, DType.f32, DType.f64, DType.i64)), data=st.data())
def test_random_graphs_stay_valid(precision: str, case: tuple, data: st.DataObject) -> None:
    graph, inputs = case
    names = sorted(node.outputs[0].name for node in graph.nodes)
    keep = data.draw(st.sets(st.sampled_from(names), max_size=2)) if names else set()
    deny = data.draw(st.sets(st.sampled_from(sorted(OPS)), max_size=2))
    config = PrecisionConfig(precision, deny=deny, keep_nodes=keep)
    lowered = graph.clone()
    result = LowerPrecisionPass(config)(lowered)
    verify(lowered)
    assert [v.type for v in lowered.inputs] == [v.type for v in graph.inputs]
    assert [v.type for v in lowered.outputs] == [v.type for v in graph.outputs]
    assert [t.dtype for t in run_graph(lowered, *inputs)] == [t.dtype for t in run_graph(graph, *inputs)]
    assert result.modified == (str(lowered) != str(graph))
    assert _cast_round_trips(lowered) <= _cast_round_trips(graph)
    assert not LowerPrecisionPass(config)(lowered).modified


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_antialiased_interpolation_stays_f32_having_no_16_bit_kernel(precision: str) -> None:
    class Shrink(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.interpolate(x * 2, scale_factor=0.5, mode="bilinear", antialias=True)

    x = torch.randn(1, 2, 8, 8)
    compiled = hp.compile(Shrink(), (x,), precision=precision, precision_options={"allow": {"mul"}})
    torch.testing.assert_close(compiled(x), Shrink()(x), rtol=2e-2, atol=2e-2)


def test_error_metrics_of_an_overflowed_or_tiny_result() -> None:
    """A 16-bit overflow gives an infinite error, not a math domain error; a tiny signal against a large
    error is a finite, very negative SQNR."""
    overflowed = measure_error([torch.tensor([1.0, 2.0])], [torch.tensor([math.inf, 2.0])])
    assert overflowed.max_rel == math.inf and overflowed.sqnr_db == -math.inf
    nan = measure_error([torch.tensor([1.0, 2.0])], [torch.tensor([math.nan, 2.0])])
    assert nan.sqnr_db == -math.inf
    tiny = measure_error([torch.tensor([1e-150], dtype=torch.float64)], [torch.tensor([1e150], dtype=torch.float64)])
    assert tiny.sqnr_db == pytest.approx(-6000.0)
