"""Structural graph equality modulo value names, for Before/Expected tests.

Both graphs are rendered in a canonical text where every value is renamed by position: inputs
`%arg0..`, constants `%cst0..` in order of first use, node outputs `%0..` in node order. Two graphs
are equal when these texts are equal, which covers input types, constant types (and data of
constants small enough to print), ops, attributes, devices, operand wiring and outputs. The graph
name and constant declaration order do not matter. Data of larger constants is compared too when
both sides hold real data (an expected graph parsed from text has none for them).
"""

from __future__ import annotations

import torch

from .graph import Graph, Value
from .ops import get_op
from .parser import parse_graph
from .printer import INLINE_CONST_LIMIT, format_attr_value, format_attrs


def _canonical_names(graph: Graph) -> dict[int, str]:
    names: dict[int, str] = {id(v): f"arg{i}" for i, v in enumerate(graph.inputs)}
    constants: list[Value] = []

    def see(value: Value) -> None:
        if value.is_constant and id(value) not in names:
            names[id(value)] = f"cst{len(constants)}"
            constants.append(value)

    for node in graph.nodes:
        for value in node.inputs:
            see(value)
    for value in graph.outputs:
        see(value)
    for value in graph.constants.values():
        see(value)
    count = 0
    for node in graph.nodes:
        for value in node.outputs:
            names[id(value)] = str(count)
            count += 1
    return names


def _constants_by_name(graph: Graph, names: dict[int, str]) -> list[Value]:
    return sorted(graph.constants.values(), key=lambda v: int(names[id(v)][3:]))


def canonical_text(graph: Graph) -> list[str]:
    """The graph as lines of text with values renamed by position."""
    names = _canonical_names(graph)

    def ref(value: Value) -> str:
        return "%" + names.get(id(value), f"<undefined {value.name}>")

    params = ", ".join(f"{ref(v)}: {v.type}" for v in graph.inputs)
    results = ", ".join(str(v.type) for v in graph.outputs)
    lines = [f"graph({params}) -> ({results})"]
    for value in _constants_by_name(graph, names):
        line = f"const {ref(value)}: {value.type}"
        assert value.const is not None
        if value.const.numel() <= INLINE_CONST_LIMIT:
            line += " = " + format_attr_value(value.const.tolist())
        lines.append(line)
    for node in graph.nodes:
        outs = ", ".join(f"{ref(v)}: {v.type}" for v in node.outputs)
        args = ", ".join(ref(v) for v in node.inputs)
        device = f" @{node.device}" if node.device is not None else ""
        lines.append(f"{outs} = {node.op}({args}){format_attrs(node)}{device}")
        for name in get_op(node.op).graph_attrs:
            lines += [f"    {line}" for line in canonical_text(node.attrs[name])]
    lines.append("return " + ", ".join(ref(v) for v in graph.outputs))
    return lines


def tensor_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's elements' bytes as a flat u8 tensor (a copy only where its layout needs one)."""
    flat = tensor.detach().reshape(-1)
    if flat.numel() == 0:
        return torch.empty(0, dtype=torch.uint8)
    if flat.stride(0) != 1:
        # A one-element tensor counts as contiguous whatever its stride (a one-element slice of
        # every other element has stride 2), and `view` refuses that stride.
        flat = flat.clone(memory_format=torch.contiguous_format)
    return flat.view(torch.uint8)


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    # Bits, not values: NaN equals NaN and -0.0 differs from 0.0, as a constant's identity should.
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(tensor_bytes(a), tensor_bytes(b))


def _first_difference(actual: Graph, expected: Graph, compare_large_data: bool) -> str | None:
    left, right = canonical_text(actual), canonical_text(expected)
    # Each text ends with its only `return` line, so texts of different lengths differ on some line.
    for i, (a, b) in enumerate(zip(left, right, strict=False)):
        if a != b:
            return f"line {i + 1} differs:\n  actual:   {a}\n  expected: {b}"
    if compare_large_data:
        names_a, names_e = _canonical_names(actual), _canonical_names(expected)
        for a, e in zip(_constants_by_name(actual, names_a), _constants_by_name(expected, names_e), strict=True):
            assert a.const is not None and e.const is not None
            if a.const.numel() > INLINE_CONST_LIMIT and not _bitwise_equal(a.const, e.const):
                return f"constant %{names_a[id(a)]} (%{a.name} vs %{e.name}): data differs"
    return None


def graphs_equal(a: Graph, b: Graph) -> bool:
    """True when the graphs are the same modulo value names, constant data included."""
    return _first_difference(a, b, compare_large_data=True) is None


def assert_graphs_equal(actual: Graph, expected: Graph | str) -> None:
    """Raise AssertionError, showing both graphs and the first difference, unless they are equal.

    `expected` may be IR text; its constants printed without a value then match any data.
    """
    compare_large_data = isinstance(expected, Graph)
    expected_graph = expected if isinstance(expected, Graph) else parse_graph(expected)
    difference = _first_difference(actual, expected_graph, compare_large_data)
    if difference is not None:
        raise AssertionError(f"graphs differ: {difference}\n\n--- actual\n{actual}\n--- expected\n{expected_graph}\n"
                             f"--- actual (canonical)\n" + "\n".join(canonical_text(actual)) +
                             "\n--- expected (canonical)\n" + "\n".join(canonical_text(expected_graph)))
