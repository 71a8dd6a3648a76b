"""recognize-gelu: erf and tanh GELU formulas in their usual groupings, and look-alikes that must stay."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from heteropass.ir import DType, Graph, TensorType, Value
from heteropass.passes.recognize_gelu import RecognizeGeluPass
from heteropass.testing.assertions import assert_pass_preserves_semantics
from heteropass.testing.strategies import graph_and_inputs, random_input

from .test_rewrite import check_pass, unchanged


def test_trunc_or_floor_division_in_place_of_a_true_one_stays() -> None:
    unchanged(RecognizeGeluPass(), """
    graph g(%x: f32[4,8]) -> (f32[4,8]) {
      const %two: f32[] = 2.0
      const %one: f32[] = 1.0
      const %sqrt2: f32[] = 1.4142135623730951
      %0: f32[4,8] = div(%x, %two) {rounding_mode="trunc"}
      %1: f32[4,8] = div(%x, %sqrt2) {rounding_mode="floor"}
      %2: f32[4,8] = erf(%1)
      %3: f32[4,8] = add(%2, %one)
      %4: f32[4,8] = mul(%0, %3)
      return %4
    }""")


def test_erf_form() -> None:
    result = check_pass(RecognizeGeluPass(), """
    graph g(%x: f32[4,8]) -> (f32[4,8]) {
      const %half: f32[] = 0.5
      const %one: f32[] = 1.0
      const %rsqrt2: f32[] = 0.7071067811865476
      %0: f32[4,8] = mul(%x, %half)
      %1: f32[4,8] = mul(%x, %rsqrt2)
      %2: f32[4,8] = erf(%1)
      %3: f32[4,8] = add(%2, %one)
      %4: f32[4,8] = mul(%0, %3)
      return %4
    }""", """
    graph g(%x: f32[4,8]) -> (f32[4,8]) {
      %0: f32[4,8] = gelu(%x)
      return %0
    }""")
    assert result.stats == {"gelu-erf": 1}


def _tanh_gelu(three: str = "3.0", c: str = "0.044715", cube_times_c: str = "mul(%c, %1)") -> str:
    """GPT-2's tanh GELU, 0.5 x (1 + tanh(sqrt(2/pi) (x + c x^three))), written out."""
    return f"""
    graph g(%x: f32[4,8]) -> (f32[4,8]) {{
      const %half: f32[] = 0.5
      const %one: f32[] = 1.0
      const %three: f32[] = {three}
      const %c: f32[] = {c}
      const %k: f32[] = 0.7978845608028654
      %0: f32[4,8] = mul(%half, %x)
      %1: f32[4,8] = pow(%x, %three)
      %2: f32[4,8] = {cube_times_c}
      %3: f32[4,8] = add(%x, %2)
      %4: f32[4,8] = mul(%k, %3)
      %5: f32[4,8] = tanh(%4)
      %6: f32[4,8] = add(%one, %5)
      %7: f32[4,8] = mul(%0, %6)
      return %7
    }}"""


def test_tanh_form_as_gpt2_writes_it() -> None:
    check_pass(RecognizeGeluPass(), _tanh_gelu(), """
    graph g(%x: f32[4,8]) -> (f32[4,8]) {
      %0: f32[4,8] = gelu(%x) {approximate="tanh"}
      return %0
    }""")


def test_wrong_constant_and_another_variable_stay() -> None:
    pass_ = unchanged(RecognizeGeluPass(), """
    graph g(%x: f32[8], %y: f32[8]) -> (f32[8], f32[8]) {
      const %half: f32[] = 0.5
      const %one: f32[] = 1.0
      const %sqrt3: f32[] = 1.7320508
      const %sqrt2: f32[] = 1.4142135
      %0: f32[8] = div(%x, %sqrt3)
      %1: f32[8] = erf(%0)
      %2: f32[8] = add(%1, %one)
      %3: f32[8] = mul(%x, %2)
      %4: f32[8] = mul(%3, %half)
      %5: f32[8] = div(%y, %sqrt2)
      %6: f32[8] = erf(%5)
      %7: f32[8] = add(%6, %one)
      %8: f32[8] = mul(%x, %7)
      %9: f32[8] = mul(%8, %half)
      return %4, %9
    }""")
    assert "expected a constant equal to 1.41421" in (pass_.report.why_not("gelu-erf", "4") or "")
    assert "expected the same value as 'x'" in (pass_.report.why_not("gelu-erf", "9") or "")


def _gelu(g: Graph, x: Value, variant: int, tanh: bool) -> Value:
    def c(value: float) -> Value:
        return g.add_constant("c", torch.tensor(value))

    if tanh:
        cube = [lambda: g.call("pow", x, c(3.0)), lambda: g.call("mul", g.call("mul", x, x), x),
                lambda: g.call("mul", x, g.call("pow", x, c(2.0)))][variant % 3]()
        k = math.sqrt(2 / math.pi)
        if variant % 2:
            arg = g.call("add", g.call("mul", x, c(k)), g.call("mul", cube, c(k * 0.044715)))
        else:
            arg = g.call("mul", g.call("add", g.call("mul", cube, c(0.044715)), x), c(k))
        inner = g.call("tanh", arg)
    else:
        scaled = g.call("div", x, c(math.sqrt(2))) if variant % 2 else g.call("mul", c(1 / math.sqrt(2)), x)
        inner = g.call("erf", scaled)
    one_plus = g.call("add", inner, c(1.0))
    return [lambda: g.call("mul", g.call("mul", x, c(0.5)), one_plus),
            lambda: g.call("mul", g.call("mul", one_plus, x), c(0.5)),
            lambda: g.call("mul", x, g.call("mul", c(0.5), one_plus)),
            lambda: g.call("div", g.call("mul", x, one_plus), c(2.0)),
            lambda: g.call("mul", one_plus, g.call("div", x, c(2.0)))][variant % 5]()


@settings(max_examples=30)
@given(st.lists(st.integers(1, 5), min_size=0, max_size=3), st.integers(0, 29), st.booleans())
def test_groupings_fuse_and_keep_results(shape: list[int], variant: int, tanh: bool) -> None:
    graph = Graph("gelu")
    x = graph.add_input("x", TensorType(tuple(shape), DType.f32))
    graph.set_outputs([_gelu(graph, x, variant, tanh)])
    after = assert_pass_preserves_semantics(RecognizeGeluPass(), graph, [random_input(x.type, 0)], atol=1e-5)
    assert after.op_counts() == {"gelu": 1}


@settings(max_examples=40)
@given(graph_and_inputs())
def test_random_graphs_keep_their_results(case: tuple) -> None:  # type: ignore[type-arg]
    graph, inputs = case
    assert_pass_preserves_semantics(RecognizeGeluPass(), graph, inputs)


def test_an_exponent_near_three_is_not_a_cube() -> None:
    """pow(x, 3.0002) is NaN for negative x; the 0.044715 and sqrt(2/pi) may be rounded, the exponent not."""
    unchanged(RecognizeGeluPass(), _tanh_gelu(three="3.0002"))


def test_why_not_names_the_constant_that_is_off() -> None:
    """mul is commutative: the swapped order fails on the cube; the note must blame %c, the near miss."""
    pass_ = unchanged(RecognizeGeluPass(), _tanh_gelu(c="0.0447", cube_times_c="mul(%1, %c)"))
    assert pass_.report.why_not("gelu-tanh", "7") == (
        "gelu-tanh at %7: operand 1 of mul %2 is %c (constant f32[] = 0.04470000043511391), expected a constant "
        "equal to 0.044715")
