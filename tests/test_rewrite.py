"""The pattern-rewrite engine: matching, captures, constraints, the walk, and the reasons it records."""

from __future__ import annotations

import pytest

from heteropass.ir import Value, parse_graph, run_graph, verify
from heteropass.ir.compare import assert_graphs_equal
from heteropass.ir.sample import random_inputs
from heteropass.passes.base import PassResult
from heteropass.passes.rewrite import Match, Pat, PatternPass, Rule, RuleSet, apply_rules
from heteropass.testing.assertions import assert_outputs_close


def check_pass(pass_: PatternPass, before: str, expected: str, *, rtol: float = 1e-5,
               atol: float = 1e-6) -> PassResult:
    """Run `pass_` on `before`; check the result against `expected`, the reference interpreter and a
    second run of a fresh pass that must change nothing. Shared by the pattern passes' tests."""
    graph = parse_graph(before)
    original = graph.clone()
    result = pass_(graph)
    verify(graph)
    assert_graphs_equal(graph, expected)
    inputs = random_inputs(original)
    assert_outputs_close(run_graph(graph, *inputs), run_graph(original, *inputs), rtol, atol)
    assert not type(pass_)()(graph).modified
    return result


def unchanged(pass_: PatternPass, text: str) -> PatternPass:
    """Check that `pass_` leaves `text` alone; return it for `report.why_not` queries."""
    check_pass(pass_, text, text)
    return pass_


def _run(text: str, rules: RuleSet, **kwargs: object) -> tuple:  # type: ignore[type-arg]
    graph = parse_graph(text)
    report = apply_rules(graph, rules, **kwargs)  # type: ignore[arg-type]
    verify(graph)
    return graph, report


def _fma(m: Match) -> Value:
    """x * a + b -> (x + b/a) * a: the rewrite only has to be semantically equal for these tests."""
    shifted = m.call("add", m["x"], m.constant("shift", m["b"].const / m["a"].const))  # type: ignore[operator]
    return m.call("mul", shifted, m["a"])


_FMA = Rule("fma", Pat("add", Pat("mul", Pat.var("x"), Pat.const("a", scalar=True), name="prod"),
                       Pat.const("b", scalar=True)), _fma)


def test_commutative_operands_match_in_either_order() -> None:
    graph, report = _run("""
    graph g(%x: f32[4]) -> (f32[4], f32[4]) {
      const %a: f32[] = 2.0
      const %b: f32[] = 4.0
      %0: f32[4] = mul(%a, %x)
      %1: f32[4] = add(%b, %0)
      %2: f32[4] = mul(%x, %a)
      %3: f32[4] = add(%2, %b)
      return %1, %3
    }""", RuleSet([_FMA]))
    assert report.applied == {"fma": 2}
    assert_graphs_equal(graph, """
    graph g(%x: f32[4]) -> (f32[4], f32[4]) {
      const %s0: f32[] = 2.0
      const %a: f32[] = 2.0
      const %s1: f32[] = 2.0
      %0: f32[4] = add(%x, %s0)
      %1: f32[4] = mul(%0, %a)
      %2: f32[4] = add(%x, %s1)
      %3: f32[4] = mul(%2, %a)
      return %1, %3
    }""")


def test_non_commutative_op_keeps_operand_order() -> None:
    rule = Rule("x-minus-one", Pat("sub", Pat.var("x"), Pat.const(value=1.0)), lambda m: m.call("neg", m["x"]))
    _, report = _run("""
    graph g(%x: f32[4]) -> (f32[4]) {
      const %one: f32[] = 1.0
      %0: f32[4] = sub(%one, %x)
      return %0
    }""", RuleSet([rule]))
    assert report.applied == {}
    assert report.why_not("x-minus-one", "0") == ("x-minus-one at %0: operand 1 of sub %0 is %x (graph input f32[4]), "
                                                  "expected a constant equal to 1")


def test_a_name_used_twice_binds_one_value() -> None:
    graph, report = _run("""
    graph g(%x: f32[4], %y: f32[4]) -> (f32[4], f32[4]) {
      %0: f32[4] = mul(%x, %x)
      %1: f32[4] = mul(%x, %y)
      return %0, %1
    }""", RuleSet([Rule("square", Pat("mul", Pat.var("x"), Pat.var("x")), lambda m: m.call("pow", m["x"], m["x"]))]))
    assert report.applied == {"square": 1}
    assert graph.op_counts() == {"mul": 1, "pow": 1}
    reason = report.why_not("square", "1")
    assert reason is not None and "expected the same value as 'x' (%x)" in reason


def test_alternatives_and_optional_operands() -> None:
    rule = Rule("drop-bias", Pat("linear", Pat.var("x"), Pat.var("w"), Pat.opt("b")),
                lambda m: m.call("linear", m["x"], m["w"]),
                lambda m: None if m.get("b") is not None else "no bias to drop")
    graph, report = _run("""
    graph g(%x: f32[2,4], %w: f32[3,4], %b: f32[3]) -> (f32[2,3], f32[2,3]) {
      %0: f32[2,3] = linear(%x, %w, %b)
      %1: f32[2,3] = linear(%x, %w)
      return %0, %1
    }""", RuleSet([rule]))
    assert report.applied == {"drop-bias": 1}
    assert report.why_not("drop-bias", "1") == "drop-bias at %1: no bias to drop"
    assert graph.op_counts() == {"linear": 2}


def test_constant_value_and_scalar_checks() -> None:
    half = Pat("mul", Pat.var("x"), Pat.const("c", value=0.5, scalar=True))
    rule = Rule("halve", half, lambda m: m.call("div", m["x"], m.constant("two", m["c"].const * 4)))  # type: ignore[operator]
    _, report = _run("""
    graph g(%x: f32[4]) -> (f32[4], f32[4], f32[4]) {
      const %h: f32[] = 0.5
      const %q: f32[] = 0.25
      const %hs: f32[4] = [0.5, 0.5, 0.5, 0.5]
      %0: f32[4] = mul(%x, %h)
      %1: f32[4] = mul(%x, %q)
      %2: f32[4] = mul(%x, %hs)
      return %0, %1, %2
    }""", RuleSet([rule]))
    assert report.applied == {"halve": 1}
    assert "expected a constant equal to 0.5" in (report.why_not("halve", "1") or "")
    assert "%hs (constant f32[4] = [0.5, 0.5, 0.5, 0.5])" in (report.why_not("halve", "2") or "")


def test_intermediate_with_another_reader_blocks_the_rewrite() -> None:
    text = """
    graph g(%x: f32[4]) -> (f32[4], f32[4]) {
      const %a: f32[] = 2.0
      const %b: f32[] = 4.0
      %0: f32[4] = mul(%x, %a)
      %1: f32[4] = add(%0, %b)
      %2: f32[4] = neg(%0)
      return %1, %2
    }"""
    graph, report = _run(text, RuleSet([_FMA]))
    assert report.applied == {}
    assert_graphs_equal(graph, text)
    assert report.why_not("fma", "1") == "fma at %1: %0 = mul(%x, %a) is also read by %2 = neg(%0)"
    assert report.near_misses() == ["fma at %1: %0 = mul(%x, %a) is also read by %2 = neg(%0)"]
    assert report.stats() == {"near-miss.fma": 1}


def test_a_fused_form_of_another_type_is_undone() -> None:
    text = """
    graph g(%x: f32[4]) -> (f32[2,4]) {
      const %a: f32[2,1] = [[2.0], [3.0]]
      %0: f32[2,4] = neg(%x)
      %1: f32[2,4] = add(%0, %a)
      return %1
    }"""
    rule = Rule("drop-add", Pat("add", Pat("neg", Pat.var("x")), Pat.var("a")), lambda m: m.call("neg", m["x"]))
    graph, report = _run(text.replace("%0: f32[2,4] = neg", "%0: f32[4] = neg"), RuleSet([rule]))
    assert report.applied == {}
    assert graph.op_counts() == {"add": 1, "neg": 1} and len(graph.constants) == 1
    assert report.why_not("drop-add", "1") == "drop-add at %1: the fused form would have type f32[4], not f32[2,4]"


def test_fixpoint_revisits_inserted_nodes_and_single_walk_does_not() -> None:
    abs_neg = Rule("abs-neg", Pat("abs", Pat("neg", Pat.var("x"))), lambda m: m.call("abs", m["x"]))
    text = """
    graph g(%x: f32[4]) -> (f32[4]) {
      %0: f32[4] = neg(%x)
      %1: f32[4] = neg(%0)
      %2: f32[4] = abs(%1)
      return %2
    }"""
    graph, report = _run(text, RuleSet([abs_neg]), fixpoint=False)
    assert report.applied == {"abs-neg": 1} and report.rounds == 1
    assert graph.op_counts() == {"abs": 1, "neg": 1}
    graph, report = _run(text, RuleSet([abs_neg]))
    assert report.applied == {"abs-neg": 2} and report.converged
    assert graph.op_counts() == {"abs": 1}


def test_rule_sets_compose_in_order() -> None:
    to_relu = Rule("abs-to-relu", Pat("abs", Pat.var("x")), lambda m: m.call("relu", m["x"]))
    abs_neg = Rule("abs-neg", Pat("abs", Pat("neg", Pat.var("x"))), lambda m: m.call("abs", m["x"]))
    text = """
    graph g(%x: f32[4]) -> (f32[4]) {
      %0: f32[4] = neg(%x)
      %1: f32[4] = abs(%0)
      return %1
    }"""
    graph, _ = _run(text, RuleSet([abs_neg]) + RuleSet([to_relu]), fixpoint=False)
    assert graph.op_counts() == {"abs": 1}
    graph, _ = _run(text, RuleSet([to_relu]) + RuleSet([abs_neg]), fixpoint=False)
    assert graph.op_counts() == {"neg": 1, "relu": 1}


def test_rounds_are_bounded() -> None:
    grow = Rule("grow", Pat("neg", Pat.var("x")), lambda m: m.call("neg", m.call("neg", m.call("neg", m["x"]))))
    graph, report = _run("""
    graph g(%x: f32[4]) -> (f32[4]) {
      %0: f32[4] = neg(%x)
      return %0
    }""", RuleSet([grow]), max_rounds=3)
    assert report.rounds == 3 and not report.converged
    assert graph.op_counts() == {"neg": 27}


def test_rule_sets_reject_duplicate_names_and_rootless_patterns() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        RuleSet([_FMA]) + RuleSet([_FMA])
    with pytest.raises(ValueError, match="root"):
        Rule("any", Pat.var("x"), lambda m: m["x"])


class _FmaPass(PatternPass):
    name = "test-fma"
    rules = RuleSet([_FMA])


def test_pattern_pass_reports_stats_and_notes() -> None:
    result = check_pass(_FmaPass(), """
    graph g(%x: f32[4], %y: f32[4]) -> (f32[4], f32[4]) {
      const %a: f32[] = 2.0
      const %b: f32[] = 4.0
      %0: f32[4] = mul(%x, %a)
      %1: f32[4] = add(%0, %b)
      %2: f32[4] = mul(%y, %a)
      %3: f32[4] = add(%2, %y)
      return %1, %3
    }""", """
    graph g(%x: f32[4], %y: f32[4]) -> (f32[4], f32[4]) {
      const %a: f32[] = 2.0
      const %s: f32[] = 2.0
      %0: f32[4] = add(%x, %s)
      %1: f32[4] = mul(%0, %a)
      %2: f32[4] = mul(%y, %a)
      %3: f32[4] = add(%2, %y)
      return %1, %3
    }""")
    assert result.stats == {"fma": 1, "near-miss.fma": 1}
    result = _FmaPass()(parse_graph("""
    graph g(%y: f32[4]) -> (f32[4]) {
      const %a: f32[] = 2.0
      %2: f32[4] = mul(%y, %a)
      %3: f32[4] = add(%2, %y)
      return %3
    }"""))
    assert result.notes == ["fma at %3: operand 1 of add %3 is %y (graph input f32[4]), expected a scalar constant"]
