"""The pass manager: ordering, skipping, fixpoints, requires/ensures, failures and reproducers."""

from __future__ import annotations

import json
import shutil
from typing import ClassVar

import pytest
import torch

from heteropass.ir import Graph, parse_graph, run_graph
from heteropass.ir.compare import assert_graphs_equal
from heteropass.ir.sample import random_inputs
from heteropass.passes import (
    DumpIR,
    Fixpoint,
    Pass,
    PassContext,
    PassFailure,
    PassManager,
    PassResult,
    instruments_for,
    load_reproducer,
)
from heteropass.passes.lower_precision import LowerPrecisionPass
from heteropass.passes.manager import FixpointNotConverged
from heteropass.passes.pipelines import default_pipeline, pass_registry
from heteropass.passes.precision_config import PrecisionConfig

TEXT = """
graph g(%x: f32[4], %y: f32[4]) -> (f32[4]) {
  const %w: f32[16]
  %0: f32[4] = add(%x, %x)
  %1: f32[4] = mul(%0, %y)
  %2: f32[4] = neg(%x)
  %3: f32[4] = add(%1, %y)
  return %3
}
"""


class AddSelfToMul(Pass):
    """add(x, x) -> mul(x, 2)."""

    name = "add-self-to-mul"

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        rewritten = 0
        for node in graph:
            if node.op == "add" and node.inputs[0] is node.inputs[1]:
                two = graph.add_constant("two", torch.tensor(2.0))
                mul = graph.add_node("mul", [node.inputs[0], two], before=node)
                graph.replace_all_uses(node.output, mul.output)
                graph.remove_node(node)
                rewritten += 1
        return PassResult(graph, rewritten > 0, {"rewritten": rewritten})


class DropDead(Pass):
    """Remove nodes whose outputs nobody reads, then unused constants."""

    name = "drop-dead"

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        dead = 0
        for node in reversed(graph.nodes):
            if all(not v.uses and not graph.is_output(v) for v in node.outputs):
                graph.remove_node(node)
                dead += 1
        dead += graph.remove_unused_constants()
        return PassResult(graph, dead > 0, {"removed": dead})


class SwapAddOperands(Pass):
    """Swap the operands of every add: always "changes" the graph, so a fixpoint never settles."""

    name = "swap-add-operands"

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        adds = [n for n in graph if n.op == "add"]
        for node in adds:
            a, b = node.inputs
            node.set_input(0, b)
            node.set_input(1, a)
        return PassResult(graph, bool(adds))


class Explode(Pass):
    name = "explode"

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        raise RuntimeError("boom")


class Aggressive(Pass):
    name = "aggressive"
    opt_level = 3

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult(graph, False)


class ProvideShapes(Pass):
    name = "provide-shapes"
    ensures: ClassVar[frozenset[str]] = frozenset({"static-shapes"})

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult(graph, False)


class NeedShapes(Pass):
    name = "need-shapes"
    requires: ClassVar[frozenset[str]] = frozenset({"static-shapes"})

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult(graph, False)


class HiddenChange(Pass):
    """Changes the graph but claims it did not."""

    name = "hidden-change"

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        graph.call("neg", graph.inputs[0])
        return PassResult(graph, False)


def names(result) -> list[str]:
    return [r.name for r in result.records]


def test_runs_passes_in_order_and_leaves_the_input_alone():
    graph = parse_graph(TEXT)
    before = str(graph)
    result = PassManager([AddSelfToMul(), DropDead()]).run(graph)
    expected = """
graph g(%x: f32[4], %y: f32[4]) -> (f32[4]) {
  const %two: f32[] = 2.0
  %4: f32[4] = mul(%x, %two)
  %1: f32[4] = mul(%4, %y)
  %3: f32[4] = add(%1, %y)
  return %3
}
"""
    assert str(result.graph) == str(parse_graph(expected))
    assert str(graph) == before
    first, second = result.records
    assert (first.index, first.name, first.step, first.modified) == (1, "add-self-to-mul", 1, True)
    assert first.stats == {"rewritten": 1}
    assert first.counts_before == {"add": 2, "mul": 1, "neg": 1}
    assert first.counts_after == {"add": 1, "mul": 2, "neg": 1}
    assert (second.nodes_before, second.nodes_after, second.stats) == (4, 3, {"removed": 2})
    x, y = random_inputs(graph)
    torch.testing.assert_close(run_graph(result.graph, x, y), run_graph(graph, x, y))


def test_skips_passes_above_the_opt_level():
    graph = parse_graph(TEXT)
    result = PassManager([Aggressive(), DropDead()], PassContext(opt_level=2)).run(graph)
    assert names(result) == ["drop-dead"]
    assert result.skipped == [("aggressive", "opt_level 3 > 2")]
    assert names(PassManager([Aggressive()], PassContext(opt_level=3)).run(graph)) == ["aggressive"]


def test_skips_disabled_passes():
    ctx = PassContext(disabled=frozenset({"add-self-to-mul"}))
    result = PassManager([AddSelfToMul(), DropDead()], ctx).run(parse_graph(TEXT))
    assert names(result) == ["drop-dead"]
    assert result.skipped == [("add-self-to-mul", "disabled")]
    assert result.graph.op_counts() == {"add": 2, "mul": 1}


def test_unknown_disabled_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown pass.*no-such-pass.*known passes:.*add-self-to-mul"):
        PassManager([AddSelfToMul()], PassContext(disabled=frozenset({"no-such-pass"})))


def test_fixpoint_repeats_until_nothing_changes():
    result = PassManager([Fixpoint([AddSelfToMul(), DropDead()], max_steps=5, name="cleanup")]).run(
        parse_graph(TEXT))
    assert [(r.name, r.step, r.group, r.modified) for r in result.records] == [
        ("add-self-to-mul", 1, "cleanup", True), ("drop-dead", 1, "cleanup", True),
        ("add-self-to-mul", 2, "cleanup", False), ("drop-dead", 2, "cleanup", False)]
    assert result.summary()["fixpoints"] == [{"name": "cleanup", "steps": 2, "max_steps": 5, "converged": True}]


def test_fixpoint_that_does_not_settle_is_reported():
    manager = PassManager([Fixpoint([SwapAddOperands()], max_steps=3, name="spin")])
    with pytest.warns(FixpointNotConverged, match="'spin' still changed the graph after 3 steps"):
        result = manager.run(parse_graph(TEXT))
    assert [r.step for r in result.records] == [1, 2, 3]
    assert result.summary()["fixpoints"] == [{"name": "spin", "steps": 3, "max_steps": 3, "converged": False}]


def test_fixpoint_needs_a_step():
    with pytest.raises(ValueError, match="max_steps"):
        Fixpoint([DropDead()], max_steps=0)


def test_requirement_nobody_ensures_is_an_error_before_running():
    with pytest.raises(ValueError, match="'need-shapes' requires static-shapes"):
        PassManager([NeedShapes(), ProvideShapes()])
    with pytest.raises(ValueError, match="'need-shapes' requires static-shapes"):
        PassManager([ProvideShapes(), NeedShapes()], PassContext(disabled=frozenset({"provide-shapes"})))


@pytest.mark.parametrize(("text", "expected"), [
    (TEXT, ["provide-shapes", "add-self-to-mul", "provide-shapes", "need-shapes"]),
    ("graph h(%x: f32[2]) -> (f32[2]) {\n  %0: f32[2] = neg(%x)\n  return %0\n}",
     ["provide-shapes", "add-self-to-mul", "need-shapes"]),
])
def test_a_modifying_pass_invalidates_properties_it_does_not_ensure(text, expected):
    result = PassManager([ProvideShapes(), AddSelfToMul(), NeedShapes()]).run(parse_graph(text))
    assert names(result) == expected


def test_failing_pass_writes_a_loadable_reproducer(tmp_path):
    graph = parse_graph(TEXT)
    # Data the parser could not make up: the reproducer must carry it.
    graph.constants["w"].const = torch.linspace(-1, 1, 16)
    manager = PassManager([AddSelfToMul(), Explode()], PassContext(opt_level=1), [DumpIR(tmp_path)])
    with pytest.raises(PassFailure, match="pass 'explode' failed: RuntimeError: boom") as info:
        manager.run(graph)
    assert info.value.pass_name == "explode"
    assert str(tmp_path) in str(info.value)
    expected = AddSelfToMul()(graph.clone()).graph
    rebuilt, pipeline = load_reproducer(tmp_path)
    assert pipeline == ["add-self-to-mul", "explode"]
    assert str(rebuilt) == str(expected)
    for name, value in expected.constants.items():
        assert torch.equal(rebuilt.constants[name].const, value.const)
    assert '"failing_pass": "explode"' in (tmp_path / "reproducer.json").read_text()
    assert not (tmp_path / "reproducer.output.ir").exists()


def test_reproducer_goes_to_a_temp_dir_without_a_dump_dir():
    with pytest.raises(PassFailure) as info:
        PassManager([Explode()]).run(parse_graph(TEXT))
    try:
        rebuilt, pipeline = load_reproducer(info.value.reproducer)
        assert info.value.reproducer in str(info.value)
        assert str(rebuilt) == str(parse_graph(TEXT))
        assert pipeline == ["explode"]
    finally:
        shutil.rmtree(info.value.reproducer)


def test_a_pass_that_hides_a_change_fails(tmp_path):
    with pytest.raises(PassFailure, match=r"'hidden-change' failed.*modified=False"):
        PassManager([HiddenChange()], instruments=[DumpIR(tmp_path)]).run(parse_graph(TEXT))


class ScaleWeightInPlace(Pass):
    """Writes into a constant's tensor, which the caller's graph (and the model) share."""

    name = "scale-weight-in-place"

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        graph.constants["w"].const.mul_(0)
        return PassResult(graph, True)


class SwapWeightQuietly(Pass):
    """Replaces a constant's data but reports modified=False; large constants print by name only."""

    name = "swap-weight-quietly"

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        graph.constants["w"].const = torch.zeros(16)
        return PassResult(graph, False)


@pytest.mark.parametrize("wrong, message", [
    (ScaleWeightInPlace(), "wrote into constant %w in place"),
    (SwapWeightQuietly(), "reported modified=False but replaced the data of constant %w"),
])
def test_a_pass_that_edits_constants_behind_the_managers_back_fails(tmp_path, wrong, message):
    with pytest.raises(PassFailure, match=f"'{wrong.name}' failed: RuntimeError: it {message}"):
        PassManager([wrong], instruments=[DumpIR(tmp_path)]).run(parse_graph(TEXT))


class FailingFp16(Pass):
    """A pass constructed with a precision request, failing."""

    name = "failing-fp16"

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        raise RuntimeError("boom")

    def settings(self) -> dict[str, object]:
        return LowerPrecisionPass(PrecisionConfig("fp16")).settings()


def test_a_reproducer_records_what_the_failing_pass_was_constructed_with(tmp_path):
    with pytest.raises(PassFailure):
        PassManager([FailingFp16()], instruments=[DumpIR(tmp_path)]).run(parse_graph(TEXT))
    settings = json.loads((tmp_path / "reproducer.json").read_text())["pass_settings"]
    assert settings["precision"] == "fp16" and settings["calibration_batches"] == 0


def test_pass_registry_names_every_pass():
    registry = pass_registry()
    assert sorted(registry) == [
        "decompose-group-norm", "eliminate-common-subexpressions", "eliminate-dead-code", "fold-batchnorm-into-conv",
        "fold-constants", "fold-repeat-kv", "fuse-cached-attention", "fuse-elementwise", "fuse-gemm-epilogue",
        "fuse-linear-bias", "fuse-reductions", "lower-precision", "merge-parallel-linears", "plan-memory",
        "propagate-shapes", "quantize-dynamic", "quantize-static", "quantize-weights", "recognize-attention",
        "recognize-gelu", "recognize-layer-norm", "recognize-rms-norm", "recognize-softmax", "simplify-algebra"]
    assert all(cls.name == name for name, cls in registry.items())


def test_default_pipelines_per_opt_level():
    def flat(items):
        return [(item.name, flat(item.passes)) if isinstance(item, Fixpoint) else item.name for item in items]

    cleanup = ["simplify-algebra", "fold-constants", "eliminate-common-subexpressions", "eliminate-dead-code"]
    assert flat(default_pipeline(0)) == ["propagate-shapes"]
    assert flat(default_pipeline(1)) == ["propagate-shapes", "eliminate-dead-code"]
    recognize = ["recognize-softmax", "recognize-attention", "fold-repeat-kv", "recognize-layer-norm",
                 "recognize-rms-norm", "recognize-gelu", "fuse-linear-bias", "fold-batchnorm-into-conv"]
    fuse = ["merge-parallel-linears", "fuse-cached-attention", "decompose-group-norm", "fuse-gemm-epilogue",
            "fuse-reductions", "fuse-elementwise"]
    assert flat(default_pipeline(2)) == ["propagate-shapes", ("cleanup", cleanup), *recognize,
                                         ("cleanup-after-patterns", cleanup), *fuse, "plan-memory"]
    assert flat(default_pipeline(3)) == flat(default_pipeline(2))
    with pytest.raises(ValueError, match="opt_level"):
        default_pipeline(4)


@pytest.mark.parametrize("precision, name", [("bf16", "lower-precision"), ("fp16", "lower-precision"),
                                             ("int8-weight", "quantize-weights"),
                                             ("int8-dynamic", "quantize-dynamic")])
def test_a_precision_request_runs_after_pattern_recognition_and_before_fusion(precision, name):
    names = [item.name for item in default_pipeline(2, PrecisionConfig(precision))]
    assert names.index("cleanup-after-patterns") + 1 == names.index(name) == names.index("merge-parallel-linears") - 1
    assert [item.name for item in default_pipeline(0, PrecisionConfig(precision))] == ["propagate-shapes", name]
    assert [i.name for i in default_pipeline(2, PrecisionConfig("fp32"))] == [i.name for i in default_pipeline(2)]


DEFAULT_INPUT = """
graph g(%x: f32[4], %y: f32[4]) -> (f32[4]) {
  const %one: f32[] = 1.0
  const %a: f32[4] = [1.0, 2.0, 3.0, 4.0]
  %0: f32[4] = mul(%x, %one)
  %1: f32[4] = add(%a, %a)
  %2: f32[4] = add(%0, %1)
  %3: f32[4] = add(%0, %1)
  %4: f32[4] = mul(%2, %3)
  %5: f32[4] = neg(%y)
  return %4
}
"""

DEFAULT_EXPECTED = {
    0: DEFAULT_INPUT,
    1: DEFAULT_INPUT.replace("  %5: f32[4] = neg(%y)\n", ""),
    2: """
graph g(%x: f32[4], %y: f32[4]) -> (f32[4]) {
  %0: f32[4] = fused[add, mul](%x)
    graph region(%x: f32[4]) -> (f32[4]) {
      const %c: f32[4] = [2.0, 4.0, 6.0, 8.0]
      %0: f32[4] = add(%x, %c)
      %1: f32[4] = mul(%0, %0)
      return %1
    }
  return %0
}
""",
}


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_default_pipeline_runs_checked(level):
    ctx = PassContext(opt_level=level)
    instruments = instruments_for(verify_each=True, check_each=True)
    result = PassManager(default_pipeline(level), ctx, instruments).run(parse_graph(DEFAULT_INPUT))
    assert_graphs_equal(result.graph, DEFAULT_EXPECTED[min(level, 2)])
    assert all(r.stats["drift"] <= 1e-5 for r in result.records)
    assert all(f.converged for f in result.fixpoints)


def test_disabling_a_known_pass_outside_the_pipeline_is_fine():
    ctx = PassContext(opt_level=1, disabled=frozenset({"fold-constants"}))
    result = PassManager(default_pipeline(1), ctx).run(parse_graph(DEFAULT_INPUT))
    assert names(result) == ["propagate-shapes", "eliminate-dead-code"]
