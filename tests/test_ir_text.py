"""Graph building, printing, parsing and verification."""

from __future__ import annotations

import pytest
import torch

from heteropass.ir import DType, Graph, ParseError, TensorType, VerificationError, parse_graph, run_graph, verify

TEXT = """\
graph mlp(%x: f32[8,16]) -> (f32[256], f32[8,16]) {
  const %fc.weight: f32[32,16]
  const %c0: f32[] = 0.5
  %0: f32[8,32] = linear(%x, %fc.weight)
  %1: f32[8,32] = mul(%0, %c0)
  %2: f32[8,16], %3: f32[8,16] = split(%1) {sizes=[16, 16], dim=1}
  %4: f32[8,32] = concat(%2, %3) {dim=1}
  %5: f32[256] = reshape(%4) {shape=[-1]}                  @cpu
  return %5, %2
}
"""


def build() -> Graph:
    g = Graph("mlp")
    x = g.add_input("x", TensorType((8, 16), DType.f32))
    w = g.add_constant("fc.weight", torch.randn(32, 16))
    c = g.add_constant("c0", torch.tensor(0.5))
    y = g.call("mul", g.call("linear", x, w), c)
    halves = g.add_node("split", [y], {"sizes": [16, 16], "dim": 1})
    cat = g.call("concat", *halves.outputs, dim=1)
    flat = g.add_node("reshape", [cat], {"shape": [-1]}, device="cpu")
    g.set_outputs([flat.output, halves.outputs[0]])
    return g


def test_printer_matches_dump_format() -> None:
    assert str(build()) == TEXT


def test_round_trip_keeps_text_and_results() -> None:
    g = build()
    parsed = parse_graph(TEXT, {"fc.weight": g.constants["fc.weight"].const})
    verify(parsed)
    assert str(parsed) == TEXT
    x = torch.randn(8, 16)
    for a, b in zip(run_graph(g, x), run_graph(parsed, x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_literals_round_trip() -> None:
    text = """\
graph g(%x: f32[2,3]) -> (f32[2,3], bool[2,3]) {
  const %lo: f32[3] = [-inf, 1e-05, 2.5]
  %0: f32[2,3] = maximum(%x, %lo)
  %1: f32[2,3] = clamp(%0) {min=-1.0}
  %2: bool[2,3] = isnan(%1)
  %3: f32[2,3] = cast(%1) {dtype=f32}
  return %3, %2
}
"""
    assert str(parse_graph(text)) == text


def test_an_attribute_equal_to_its_default_but_for_the_sign_of_zero_is_printed() -> None:
    text = """\
graph g(%x: f32[3]) -> (f32[5]) {
  %0: f32[5] = pad(%x) {pads=[1, 1], value=-0.0}
  return %0
}
"""
    graph = parse_graph(text)
    assert str(graph) == text
    assert torch.equal(run_graph(graph, torch.ones(3))[0][0].signbit(), torch.tensor(True))


def test_use_lists_follow_edits() -> None:
    g = build()
    mul = g.nodes[1]
    linear_out = mul.inputs[0]
    g.replace_all_uses(mul.output, linear_out)
    g.remove_node(mul)
    g.remove_unused_constants()
    verify(g)
    assert "c0" not in g.constants and [n for n, _ in linear_out.uses] == [g.nodes[1]]


def test_remove_used_node_is_refused() -> None:
    g = build()
    with pytest.raises(ValueError, match="still used"):
        g.remove_node(g.nodes[0])


@pytest.mark.parametrize(("text", "message"), [
    ("graph g(%x: f32[2]) -> (f32[2]) {\n  %0: f32[2] = add(%x, %y)\n  return %0\n}", "line 2: %y is used before"),
    ("graph g(%x: f32[2]) -> (f32[2]) {\n  %0: f32[3] = neg(%x)\n  return %0\n}", r"declared f32\[3\] but neg gives"),
    ("graph g(%x: f32[2]) -> (f32[2]) {\n  %0: f32[2] = neg(%x) {axis=1}\n  return %0\n}", "unknown attribute"),
    ("graph g(%x: f32[2]) -> (f32[2]) {\n  %0: f32[2] = nope(%x)\n  return %0\n}", "unknown op 'nope'"),
    ("graph g(%x: q32[2]) -> (f32[2]) {\n  return %x\n}", "unknown dtype"),
    ("graph g(%x: f32[2]) -> (f32[3]) {\n  return %x\n}", "line 2: graph g declares results"),
    ("graph g(%x: f32[2]) -> (f32[2]) {\n  %x: f32[2] = neg(%x)\n  return %x\n}", "defined twice"),
    ("graph g() -> (f32[2]) {\n  const %c: f32[2] = [1.0, 2.0, 3.0]\n  return %c\n}", r"line 2: constant %c: f32"),
    ("graph g() -> (i8[]) {\n  const %c: i8[] = 300\n  return %c\n}", "line 2: .* cannot hold 300"),
    ("graph g() -> (f32[]) {\n  const %c: f32[] = \"a\"\n  return %c\n}", "line 2: .* cannot hold 'a'"),
    ("graph g() -> (i64[]) {\n  const %c: i64[] = 1.5\n  return %c\n}", "line 2: .* holds a non-integer"),
    ("graph g() -> (f32[n]) {\n  const %c: f32[n] = [1.0]\n  return %c\n}", "line 2: .* symbolic dimensions"),
    ("graph g(%x: f32[-2]) -> (f32[-2]) {\n  return %x\n}", "line 1: a dimension is a size >= 0"),
    ("graph g(%x: f32[2]) -> (f32[2]) {\n  %0: f32[2] = cumsum(%x) {dim=0, dim=-1}\n  return %0\n}",
     "line 2: attribute dim is given twice"),
    ("graph g(%x: f32[2]) -> (f32[2]) {\n  %0: f32[2] = opaque(%x) {target=\"a\\q\"}\n  return %0\n}",
     "line 2: bad string"),
])
def test_parse_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_graph(text)


def test_verifier_catches_broken_graphs() -> None:
    g = build()
    g.nodes[0], g.nodes[1] = g.nodes[1], g.nodes[0]
    with pytest.raises(VerificationError, match="not defined before use"):
        verify(g)
    g = build()
    g.nodes[1].outputs[0].type = TensorType((8, 31), DType.f32)
    with pytest.raises(VerificationError, match="disagree with inference"):
        verify(g)
    g = build()
    g.nodes[0].inputs[0].uses.clear()
    with pytest.raises(VerificationError, match="use list"):
        verify(g)
    for data in (torch.randn(32, 16, dtype=torch.float64), torch.randn(1, 16)):
        g = build()
        g.constants["fc.weight"].const = data
        with pytest.raises(VerificationError, match=r"constant %fc.weight is declared f32\[32,16\] but holds"):
            verify(g)


def test_clone_is_independent() -> None:
    g = build()
    copy = g.clone()
    assert str(copy) == str(g)
    copy.nodes[-1].device = None
    verify(copy)
    assert str(copy) != str(g)


FUSED = """\
graph m(%x: f32[8,16]) -> (f32[8,32]) {
  const %w: f32[32,16]
  const %b: f32[32]
  %0: f32[8,32] = linear(%x, %w)
  %1: f32[8,32] = fused[add, mul, relu](%0, %b)            @cpu
    graph region(%a: f32[8,32], %b: f32[32]) -> (f32[8,32]) {
      const %c: f32[] = 0.5
      %0: f32[8,32] = add(%a, %b)
      %1: f32[8,32] = mul(%0, %c)
      %2: f32[8,32] = relu(%1)
      return %2
    }
  return %1
}
"""


def test_region_op_prints_parses_and_runs_its_body() -> None:
    g = parse_graph(FUSED)
    verify(g)
    assert str(g) == FUSED
    w, b = g.constants["w"].const, g.constants["b"].const
    x = torch.randn(8, 16)
    torch.testing.assert_close(run_graph(g, x)[0], torch.relu((x @ w.T + b) * 0.5))
    copy = g.clone()
    assert str(copy) == FUSED and copy.nodes[1].attrs["body"] is not g.nodes[1].attrs["body"]


def test_region_errors_name_the_body() -> None:
    with pytest.raises(ParseError, match=r"fused region region takes \(f32\[8,32\], f32\[32\]\)"):
        parse_graph(FUSED.replace("(%0, %b)", "(%0, %0)"))
    g = parse_graph(FUSED)
    g.nodes[1].attrs["body"].nodes[1].outputs[0].type = TensorType((8, 31), DType.f32)
    with pytest.raises(VerificationError, match="in its body graph"):
        verify(g)
