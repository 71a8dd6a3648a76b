"""Every pass of the default pipelines, and each whole pipeline, keeps the reference semantics of
random graphs; and a wrong pass is caught with a small counterexample."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from hypothesis import event, find, given, settings

from heteropass.ir import DType, Graph
from heteropass.passes import Fixpoint, Pass, PassContext, PassResult
from heteropass.passes.pipelines import OPT_LEVELS, default_pipeline
from heteropass.testing import assert_pass_preserves_semantics, graph_and_inputs

CASES = graph_and_inputs(input_dtypes=(DType.f32, DType.f32, DType.f64, DType.i64))


def _flatten(items: Sequence[Pass | Fixpoint]) -> Iterator[Pass]:
    for item in items:
        if isinstance(item, Fixpoint):
            yield from _flatten(item.passes)
        else:
            yield item


def _pipeline_passes() -> list[Pass]:
    by_name: dict[str, Pass] = {}
    for level in OPT_LEVELS:
        for pass_ in _flatten(default_pipeline(level)):
            by_name.setdefault(pass_.name, pass_)
    return list(by_name.values())


PASSES = _pipeline_passes()


@pytest.mark.parametrize("pass_", PASSES, ids=[p.name for p in PASSES])
@given(case=CASES)
def test_pass_preserves_semantics(pass_: Pass, case: tuple) -> None:
    graph, inputs = case
    after = assert_pass_preserves_semantics(pass_, graph, inputs)
    event("changed the graph" if str(after) != str(graph) else "left the graph alone")


@pytest.mark.parametrize("opt_level", OPT_LEVELS)
@given(case=CASES)
def test_pipeline_preserves_semantics(opt_level: int, case: tuple) -> None:
    graph, inputs = case
    after = assert_pass_preserves_semantics(default_pipeline(opt_level), graph, inputs,
                                            ctx=PassContext(opt_level=opt_level))
    event("removed nodes" if len(after.nodes) < len(graph.nodes) else "removed no node")


class _AddToSubPass(Pass):
    """Deliberately wrong: rewrites every add into a sub."""

    name = "add-to-sub"

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        adds = [node for node in graph.nodes if node.op == "add"]
        for node in adds:
            graph.replace_all_uses(node.output, graph.call("sub", *node.inputs, before=node))
            graph.remove_node(node)
        return PassResult(graph, modified=bool(adds))


def _breaks_semantics(case: tuple) -> bool:
    try:
        assert_pass_preserves_semantics(_AddToSubPass(), *case)
    except AssertionError:
        return True
    return False


def test_a_wrong_pass_shrinks_to_a_small_counterexample() -> None:
    graph, _ = find(CASES, _breaks_semantics, settings=settings(max_examples=1000, database=None, derandomize=True))
    assert len(graph.nodes) <= 3, f"the minimal counterexample is not minimal:\n{graph}"
