"""Instruments: dumps, printing, verify-each, check-each and the configuration helpers."""

from __future__ import annotations

import io
import json
import math
import re

import pytest
import torch

from heteropass.ir import Graph, parse_graph
from heteropass.passes import (
    CheckEach,
    DumpIR,
    Fixpoint,
    Pass,
    PassContext,
    PassFailure,
    PassManager,
    PassResult,
    PrintAfterAll,
    PrintAfterChange,
    VerifyEach,
    dump_dir_from_env,
    instruments_for,
    load_reproducer,
)
from heteropass.passes.instruments import DriftError, relative_error

TEXT = """
graph g(%x: f32[4], %y: f32[4]) -> (f32[4], i64[4]) {
  const %k: i64[4] = [1, 2, 3, 4]
  %0: f32[4] = mul(%x, %y)
  %1: f32[4] = add(%0, %x)
  %2: f32[4] = neg(%y)
  %3: i64[4] = add(%k, %k)
  return %1, %3
}
"""


class MulToSquare(Pass):
    """mul(x, y) -> mul(x, x): a wrong rewrite."""

    name = "mul-to-square"

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        changed = 0
        for node in graph:
            if node.op == "mul" and node.inputs[1] is not node.inputs[0]:
                node.set_input(1, node.inputs[0])
                changed += 1
        return PassResult(graph, changed > 0, {"rewritten": changed})


class AddToSub(Pass):
    """add -> sub on floats: a wrong rewrite."""

    name = "add-to-sub"

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        for node in graph:
            if node.op == "add" and node.output.type.dtype.is_floating:
                sub = graph.add_node("sub", node.inputs, before=node)
                graph.replace_all_uses(node.output, sub.output)
                graph.remove_node(node)
        return PassResult(graph, True)


class DropDead(Pass):
    name = "drop-dead"

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        dead = [n for n in reversed(graph.nodes) if all(not v.uses and not graph.is_output(v) for v in n.outputs)]
        for node in dead:
            graph.remove_node(node)
        return PassResult(graph, bool(dead), {"nodes_removed": len(dead)})


class BreakUseLists(Pass):
    """Rewires an operand without updating use lists, which the verifier must catch."""

    name = "break-use-lists"

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        graph.nodes[0].inputs[1] = graph.nodes[0].inputs[0]
        return PassResult(graph, True)


def pipeline() -> list:
    return [DropDead(), Fixpoint([DropDead()], max_steps=3, name="again")]


def test_dump_folder_holds_numbered_files_and_a_summary(tmp_path):
    (tmp_path / "007_stale.ir").write_text("left over")
    PassManager(pipeline(), instruments=[DumpIR(tmp_path)]).run(parse_graph(TEXT))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["000_input.ir", "001_drop-dead.ir", "002_drop-dead.ir", "summary.json"]
    assert (tmp_path / "000_input.ir").read_text().startswith("# input\ngraph g(")
    header = (tmp_path / "001_drop-dead.ir").read_text().splitlines()[0]
    assert re.fullmatch(r"# after drop-dead: changed, \d+\.\d\d ms, nodes removed 1", header)
    header = (tmp_path / "002_drop-dead.ir").read_text().splitlines()[0]
    assert re.fullmatch(r"# after drop-dead \(step 1 of again\): unchanged, \d+\.\d\d ms", header)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary) == ["graph", "opt_level", "pipeline", "input", "passes", "fixpoints", "skipped", "totals"]
    first = summary["passes"][0]
    assert list(first) == ["index", "name", "step", "group", "time_ms", "changed", "nodes", "ops", "stats", "notes"]
    assert (first["index"], first["name"], first["changed"], first["nodes"]) == (1, "drop-dead", True, 3)
    assert first["ops"] == {"add": 2, "mul": 1}
    assert first["stats"] == {"nodes_removed": 1}
    assert first["notes"] == []
    assert summary["input"] == {"nodes": 4, "ops": {"add": 2, "mul": 1, "neg": 1}}
    assert summary["totals"]["passes_run"] == 2
    assert summary["fixpoints"] == [{"name": "again", "steps": 1, "max_steps": 3, "converged": True}]


def test_dumps_are_deterministic_apart_from_times(tmp_path):
    def normalized(path):
        return re.sub(r"\d+\.\d+ ms", "T ms", path.read_text())

    for run in ("a", "b"):
        PassManager(pipeline(), instruments=[DumpIR(tmp_path / run), CheckEach()]).run(parse_graph(TEXT))
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files:
        if name.endswith(".ir"):
            assert normalized(tmp_path / "a" / name) == normalized(tmp_path / "b" / name), name
    summaries = [json.loads((tmp_path / run / "summary.json").read_text()) for run in ("a", "b")]
    for summary in summaries:
        summary["totals"].pop("time_ms")
        for record in summary["passes"]:
            record.pop("time_ms")
    assert summaries[0] == summaries[1]


def test_print_after_change_prints_only_changed_passes():
    changed, every = io.StringIO(), io.StringIO()
    PassManager(pipeline(), instruments=[PrintAfterChange(changed), PrintAfterAll(every)]).run(parse_graph(TEXT))
    assert re.findall(r"# after ([\w-]+)", changed.getvalue()) == ["drop-dead"]
    assert "unchanged" not in changed.getvalue()
    assert re.findall(r"# after ([\w-]+)", every.getvalue()) == ["drop-dead", "drop-dead"]


def test_print_after_all_defaults_to_stdout(capsys):
    PassManager([DropDead()], instruments=instruments_for(print_after_all=True)).run(parse_graph(TEXT))
    assert capsys.readouterr().out.startswith("# after drop-dead: changed")


def test_verify_each_names_the_pass():
    manager = PassManager([DropDead(), BreakUseLists()], instruments=[VerifyEach()])
    with pytest.raises(PassFailure, match="pass 'break-use-lists' failed: VerificationError") as info:
        manager.run(parse_graph(TEXT))
    rebuilt, _ = load_reproducer(info.value.reproducer)
    assert rebuilt.op_counts() == {"add": 2, "mul": 1}


def test_check_each_records_drift_of_correct_passes(tmp_path):
    result = PassManager(pipeline(), instruments=[CheckEach(seeds=(0, 1)), DumpIR(tmp_path)]).run(
        parse_graph(TEXT))
    assert [r.stats["drift"] for r in result.records] == [0.0, 0.0]
    assert json.loads((tmp_path / "summary.json").read_text())["passes"][0]["stats"]["drift"] == 0.0


@pytest.mark.parametrize("wrong", [AddToSub(), MulToSquare()])
def test_check_each_catches_a_wrong_pass_and_names_it(tmp_path, wrong):
    manager = PassManager([DropDead(), wrong], instruments=[DumpIR(tmp_path), CheckEach()])
    with pytest.raises(PassFailure, match=f"pass '{wrong.name}' failed: .*output 0 .*drifted by") as info:
        manager.run(parse_graph(TEXT))
    assert info.value.pass_name == wrong.name
    rebuilt, pipeline_names = load_reproducer(tmp_path)
    assert pipeline_names == ["drop-dead", wrong.name]
    assert rebuilt.op_counts() == {"add": 2, "mul": 1}
    assert json.loads((tmp_path / "reproducer.json").read_text())["failing_pass"] == wrong.name
    rejected = (tmp_path / "reproducer.output.ir").read_text()
    assert rejected.startswith(f"# output of {wrong.name}, rejected: DriftError")
    assert str(parse_graph(rejected)) != str(rebuilt)


class HalveOutputs(Pass):
    """Scales every float output by 1/2: a pass that changes results on purpose, like precision lowering."""

    name = "halve-outputs"
    approximates = True

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        half = graph.add_constant("half", torch.tensor(0.5))
        graph.set_outputs([graph.add_node("mul", [v, half]).output if v.type.dtype.is_floating else v
                           for v in graph.outputs])
        return PassResult(graph, True)


def test_a_new_run_removes_what_the_last_compilation_wrote_into_the_folder(tmp_path):
    for name in ("placed.ir", "module.py", "precision.json", "notes.txt"):
        (tmp_path / name).write_text("from an earlier compilation")
    PassManager(pipeline(), instruments=[DumpIR(tmp_path)]).run(parse_graph(TEXT))
    assert not any((tmp_path / name).exists() for name in ("placed.ir", "module.py", "precision.json"))
    assert (tmp_path / "notes.txt").exists(), "files heteropass does not write are the user's"


class Overflow(HalveOutputs):
    """Scales by inf, as a float16 overflow does: drift inf."""

    name = "overflow"

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        huge = graph.add_constant("huge", torch.tensor(float("inf")))
        graph.set_outputs([graph.add_node("mul", [v, huge]).output if v.type.dtype.is_floating else v
                           for v in graph.outputs])
        return PassResult(graph, True)


def test_check_each_measures_a_pass_that_approximates_without_failing_it(tmp_path):
    result = PassManager([HalveOutputs(), DropDead()], instruments=[CheckEach()]).run(parse_graph(TEXT))
    assert result.records[0].stats["drift"] == pytest.approx(0.5)
    assert result.records[1].stats["drift"] == 0.0
    PassManager([Overflow()], instruments=[CheckEach(), DumpIR(tmp_path)]).run(parse_graph(TEXT))
    summary = (tmp_path / "summary.json").read_text()
    assert json.loads(summary)["passes"][0]["stats"]["drift"] == "inf" and "Infinity" not in summary


EMBEDDING = """
graph g(%ids: i64[3]) -> (f32[3,2]) {
  const %table: f32[2,2] = [[1.0, 2.0], [3.0, 4.0]]
  %0: f32[3,2] = take(%table, %ids) {dim=0}
  return %0
}
"""


def test_check_each_runs_on_the_inputs_it_is_given():
    """Random integers lie in [0, 4): out of range for a 2-row table; the example inputs are in range."""
    with pytest.raises(DriftError, match=r"fails on seed 0 before any pass ran .*give example inputs"):
        PassManager(pipeline(), instruments=[CheckEach()]).run(parse_graph(EMBEDDING))
    checked = CheckEach(inputs=[torch.tensor([1, 0, 1])])
    result = PassManager(pipeline(), instruments=[checked]).run(parse_graph(EMBEDDING))
    assert [r.stats["drift"] for r in result.records] == [0.0, 0.0]


def test_relative_error():
    ref = torch.tensor([1.0, -4.0, float("nan"), float("inf")])
    assert relative_error(ref, ref.clone()) == 0.0
    nudged = torch.tensor([1.0, -4.0 + 2e-3, float("nan"), float("inf")])
    assert relative_error(ref, nudged) == pytest.approx(2e-3 / 4, rel=1e-4)
    assert relative_error(ref, torch.tensor([1.0, -4.0, 0.0, float("inf")])) == math.inf
    assert relative_error(ref, torch.tensor([1.0, -4.0, float("nan"), -float("inf")])) == math.inf
    assert relative_error(torch.zeros(3), torch.zeros(3)) == 0.0
    # An all-zero reference scales by the dtype's tiniest normal number: any difference is huge.
    assert relative_error(torch.zeros(3), torch.full((3,), 1e-3)) > 1e30
    assert relative_error(torch.tensor([1, 2]), torch.tensor([1, 2])) == 0.0
    assert relative_error(torch.tensor([1, 2]), torch.tensor([1, 3])) == math.inf
    assert relative_error(torch.tensor([True]), torch.tensor([False])) == math.inf
    assert relative_error(torch.ones(2), torch.ones(3)) == math.inf
    assert relative_error(torch.ones(2), torch.ones(2, dtype=torch.float64)) == math.inf


def test_instruments_for():
    kinds = [type(i) for i in instruments_for("d", print_after_change=True, verify_each=True, check_each=True)]
    assert kinds == [VerifyEach, CheckEach, PrintAfterChange, DumpIR]
    assert instruments_for() == []


def test_dump_dir_from_env(monkeypatch):
    monkeypatch.delenv("HETEROPASS_DUMP_DIR", raising=False)
    assert dump_dir_from_env(None) is None
    monkeypatch.setenv("HETEROPASS_DUMP_DIR", "/tmp/from-env")
    assert dump_dir_from_env(None) == "/tmp/from-env"
    assert dump_dir_from_env("explicit") == "explicit"
    monkeypatch.setenv("HETEROPASS_DUMP_DIR", "")
    assert dump_dir_from_env(None) is None


class ExplainsItself(Pass):
    """Changes nothing, but says why (as a pattern pass reports near misses)."""

    name = "explains-itself"

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult(graph, False, {}, [f"%{graph.outputs[0].name} was left alone: no reason to touch it"])


def test_pass_notes_reach_dump_files_and_summary(tmp_path):
    PassManager([ExplainsItself()], instruments=[DumpIR(tmp_path)]).run(parse_graph(TEXT))
    lines = (tmp_path / "001_explains-itself.ir").read_text().splitlines()
    assert lines[0].startswith("# after explains-itself: unchanged")
    assert re.fullmatch(r"# note: %\w+ was left alone: no reason to touch it", lines[1])
    notes = json.loads((tmp_path / "summary.json").read_text())["passes"][0]["notes"]
    assert notes == [lines[1].removeprefix("# note: ")]
