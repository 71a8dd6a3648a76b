"""recognize-softmax: decomposed softmax and log-softmax forms, and what must not match."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from heteropass.ir import DType, Graph, TensorType
from heteropass.passes.recognize_softmax import RecognizeSoftmaxPass
from heteropass.testing.assertions import assert_pass_preserves_semantics
from heteropass.testing.strategies import graph_and_inputs, random_input

from .test_rewrite import check_pass, unchanged


def test_softmax_and_log_softmax() -> None:
    result = check_pass(RecognizeSoftmaxPass(), """
    graph g(%x: f32[2,5], %y: f32[3,4]) -> (f32[2,5], f32[2,5], f32[3,4]) {
      %0: f32[2,1] = amax(%x) {dims=[-1], keepdim=true}
      %1: f32[2,5] = sub(%x, %0)
      %2: f32[2,5] = exp(%1)
      %3: f32[2,1] = sum(%2) {dims=[1], keepdim=true}
      %4: f32[2,5] = div(%2, %3)
      %5: f32[2,1] = log(%3)
      %6: f32[2,5] = sub(%1, %5)
      %7: f32[3,4] = exp(%y)
      %8: f32[1,4] = sum(%7) {dims=[0], keepdim=true}
      %9: f32[1,4] = reciprocal(%8)
      %10: f32[3,4] = mul(%9, %7)
      return %4, %6, %10
    }""", """
    graph g(%x: f32[2,5], %y: f32[3,4]) -> (f32[2,5], f32[2,5], f32[3,4]) {
      %0: f32[2,1] = amax(%x) {dims=[-1], keepdim=true}
      %1: f32[2,5] = sub(%x, %0)
      %2: f32[2,5] = exp(%1)
      %3: f32[2,1] = sum(%2) {dims=[1], keepdim=true}
      %4: f32[2,5] = div(%2, %3)
      %5: f32[2,1] = log(%3)
      %6: f32[2,5] = sub(%1, %5)
      %7: f32[3,4] = softmax(%y) {dim=0}
      return %4, %6, %7
    }""")
    # The shared exp/sum block both forms; each alone fuses.
    assert result.stats["softmax"] == 1
    check_pass(RecognizeSoftmaxPass(), """
    graph g(%x: f32[2,5]) -> (f32[2,5]) {
      %0: f32[2,1] = amax(%x) {dims=[-1], keepdim=true}
      %1: f32[2,5] = sub(%x, %0)
      %2: f32[2,5] = exp(%1)
      %3: f32[2,1] = sum(%2) {dims=[1], keepdim=true}
      %5: f32[2,1] = log(%3)
      %6: f32[2,5] = sub(%1, %5)
      return %6
    }""", """
    graph g(%x: f32[2,5]) -> (f32[2,5]) {
      %0: f32[2,5] = log_softmax(%x) {dim=1}
      return %0
    }""")


def test_shared_intermediate_is_reported() -> None:
    pass_ = RecognizeSoftmaxPass()
    result = pass_(_decomposed(TensorType((2, 5), DType.f32), 1, extra_reader=True))
    reason = pass_.report.why_not("softmax", "4")
    assert reason is not None and "is also a graph output" in reason
    assert result.notes == [reason]


def test_a_shift_over_another_dim_is_kept_as_an_operand() -> None:
    # exp(s) / sum(exp(s), 0) is softmax(s, 0) whatever s is; the shift over dim 1 just stays outside.
    check_pass(RecognizeSoftmaxPass(), """
    graph g(%x: f32[4,4]) -> (f32[4,4]) {
      %0: f32[4,1] = amax(%x) {dims=[1], keepdim=true}
      %1: f32[4,4] = sub(%x, %0)
      %2: f32[4,4] = exp(%1)
      %3: f32[1,4] = sum(%2) {dims=[0], keepdim=true}
      %4: f32[4,4] = div(%2, %3)
      return %4
    }""", """
    graph g(%x: f32[4,4]) -> (f32[4,4]) {
      %0: f32[4,1] = amax(%x) {dims=[1], keepdim=true}
      %1: f32[4,4] = sub(%x, %0)
      %2: f32[4,4] = softmax(%1) {dim=0}
      return %2
    }""")


def test_floor_division_by_the_sum_stays() -> None:
    unchanged(RecognizeSoftmaxPass(), """
    graph g(%x: f32[4,4]) -> (f32[4,4]) {
      %2: f32[4,4] = exp(%x)
      %5: f32[4,1] = sum(%2) {dims=[1], keepdim=true}
      %6: f32[4,4] = div(%2, %5) {rounding_mode="floor"}
      return %6
    }""")


def test_a_sum_without_keepdim_stays() -> None:
    # Without keepdim the [4] sum broadcasts along the other axis: not a softmax.
    pass_ = unchanged(RecognizeSoftmaxPass(), """
    graph g(%x: f32[4,4]) -> (f32[4,4]) {
      %2: f32[4,4] = exp(%x)
      %5: f32[4] = sum(%2) {dims=[1]}
      %6: f32[4,4] = div(%2, %5)
      return %6
    }""")
    assert pass_.report.why_not("softmax", "6") == ("softmax at %6: %5 = sum must reduce one dim with keepdim=true, "
                                                     "got dims=(1,), keepdim=False")


def _decomposed(type: TensorType, dim: int, extra_reader: bool = False, log: bool = False) -> Graph:
    g = Graph("softmax")
    x = g.add_input("x", type)
    shifted = g.call("sub", x, g.call("amax", x, dims=(dim,), keepdim=True))
    e = g.call("exp", shifted)
    total = g.call("sum", e, dims=(dim,), keepdim=True)
    out = g.call("sub", shifted, g.call("log", total)) if log else g.call("div", e, total)
    g.set_outputs([out, e] if extra_reader else [out])
    return g


@settings(max_examples=25)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=4), st.data(), st.booleans())
def test_decomposed_forms_fuse_and_keep_results(shape: list[int], data: st.DataObject, log: bool) -> None:
    type = TensorType(tuple(shape), DType.f32)
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    graph = _decomposed(type, dim, log=log)
    after = assert_pass_preserves_semantics(RecognizeSoftmaxPass(), graph, [random_input(type, 0)])
    assert after.op_counts() == {"log_softmax" if log else "softmax": 1}


@settings(max_examples=40)
@given(graph_and_inputs())
def test_random_graphs_keep_their_results(case: tuple) -> None:  # type: ignore[type-arg]
    graph, inputs = case
    assert_pass_preserves_semantics(RecognizeSoftmaxPass(), graph, inputs)


def test_half_precision_decomposition_is_kept() -> None:
    """In f16 the decomposed form rounds after exp and after the sum; fusing would change the result."""
    result = RecognizeSoftmaxPass()(_decomposed(TensorType((2, 5), DType.f16), 1))
    assert not result.modified
    assert any("fusing would change where the result is rounded" in note for note in result.notes)
