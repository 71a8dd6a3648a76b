"""Read the dump format back into a `Graph`, so passes can be tested as text."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import torch

from .graph import Graph, Value
from .ops import OpError, get_op
from .types import DType, TensorType


class ParseError(Exception):
    """Malformed IR text; the message gives the line and what was expected."""


_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\n]+|\#[^\n]*)
  | (?P<value>%[A-Za-z0-9_.]+)
  | (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<arrow>->)
  | (?P<ident>-?[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[()\[\]{},:=@])
""", re.VERBOSE)


class _Tokens:
    def __init__(self, text: str) -> None:
        self.items: list[tuple[str, str, int]] = []
        pos, line = 0, 1
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                raise ParseError(f"line {line}: unexpected character {text[pos]!r}")
            kind = m.lastgroup or ""
            if kind != "ws":
                self.items.append((kind, m.group(), line))
            line += m.group().count("\n")
            pos = m.end()
        self.items.append(("eof", "", line))
        self.i = 0

    def peek(self) -> tuple[str, str, int]:
        return self.items[self.i]

    def next(self) -> tuple[str, str, int]:
        tok = self.items[self.i]
        self.i += 1
        return tok

    def accept(self, text: str) -> bool:
        if self.peek()[1] == text and self.peek()[0] != "string":
            self.i += 1
            return True
        return False

    def expect(self, text: str) -> None:
        kind, got, line = self.next()
        if got != text or kind == "string":
            raise ParseError(f"line {line}: expected {text!r}, got {got or 'end of text'!r}")

    def expect_kind(self, kind: str) -> str:
        got_kind, got, line = self.next()
        if got_kind != kind:
            raise ParseError(f"line {line}: expected a {kind}, got {got or 'end of text'!r}")
        return got


def _literal(toks: _Tokens) -> Any:
    kind, text, line = toks.next()
    if kind == "number":
        return float(text) if any(c in text for c in ".eE") else int(text)
    if kind == "string":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ParseError(f"line {line}: bad string {text}: {exc.msg}") from None
    if text == "[":
        items = []
        if not toks.accept("]"):
            items.append(_literal(toks))
            while toks.accept(","):
                items.append(_literal(toks))
            toks.expect("]")
        return items
    if kind == "ident":
        special = {"true": True, "false": False, "none": None, "inf": float("inf"), "-inf": float("-inf"),
                   "nan": float("nan")}
        if text in special:
            return special[text]
        try:
            return DType.parse(text)
        except ValueError:
            pass
    raise ParseError(f"line {line}: expected a literal, got {text!r}")


def _type(toks: _Tokens) -> TensorType:
    line = toks.peek()[2]
    name = toks.expect_kind("ident")
    try:
        dtype = DType.parse(name)
    except ValueError as exc:
        raise ParseError(f"line {line}: {exc}") from None
    toks.expect("[")
    dims: list[int | str] = []
    if not toks.accept("]"):
        while True:
            kind, text, line = toks.next()
            if kind == "number":
                if not text.isdigit():
                    raise ParseError(f"line {line}: a dimension is a size >= 0 or a symbol, got {text}")
                dims.append(int(text))
            elif kind == "ident":
                dims.append(text)
            else:
                raise ParseError(f"line {line}: expected a dimension, got {text!r}")
            if toks.accept("]"):
                break
            toks.expect(",")
    return TensorType(tuple(dims), dtype)


def _flat(literal: Any) -> list[Any]:
    return [x for item in literal for x in _flat(item)] if isinstance(literal, list) else [literal]


def _constant_tensor(name: str, type: TensorType, literal: Any, constants: Mapping[str, torch.Tensor],
                     seed: int, line: int) -> torch.Tensor:
    if literal is not None:
        if not type.dtype.is_floating and any(isinstance(x, float) for x in _flat(literal)):
            raise ParseError(f"line {line}: constant %{name} is {type}, its value holds a non-integer")
        try:
            return torch.tensor(literal, dtype=type.dtype.torch).reshape(type.static_shape())
        except (RuntimeError, TypeError, ValueError, OverflowError) as exc:
            raise ParseError(f"line {line}: constant %{name}: {type} cannot hold {literal!r} ({exc})") from None
    if name in constants:
        return constants[name]
    # No data in the text: a deterministic random tensor stands in (tests compare structure).
    gen = torch.Generator().manual_seed(seed)
    shape = type.static_shape()
    if type.dtype.is_floating:
        return torch.randn(shape, generator=gen).to(type.dtype.torch)
    if type.dtype is DType.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    return torch.randint(0, 4, shape, generator=gen).to(type.dtype.torch)


def parse_graph(text: str, constants: Mapping[str, torch.Tensor] | None = None) -> Graph:
    """Parse one graph. Constants printed without a value take their tensor from `constants`
    (by name) or, failing that, a deterministic random tensor of the declared type."""
    toks = _Tokens(text)
    graph = _parse_graph(toks, constants or {})
    if toks.peek()[0] != "eof":
        raise ParseError(f"line {toks.peek()[2]}: text after the end of the graph")
    return graph


def _parse_graph(toks: _Tokens, constants: Mapping[str, torch.Tensor]) -> Graph:
    """One `graph ... { ... }` from the token stream; region ops' bodies recurse here."""
    toks.expect("graph")
    graph = Graph(toks.expect_kind("ident"))
    env: dict[str, Value] = {}

    def define(name: str, value: Value, line: int) -> None:
        if name in env:
            raise ParseError(f"line {line}: %{name} is defined twice")
        env[name] = value

    def use(tok: tuple[str, str, int]) -> Value:
        kind, text, line = tok
        if kind != "value":
            raise ParseError(f"line {line}: expected a %value, got {text!r}")
        if text[1:] not in env:
            raise ParseError(f"line {line}: %{text[1:]} is used before it is defined")
        return env[text[1:]]

    toks.expect("(")
    if not toks.accept(")"):
        while True:
            line = toks.peek()[2]
            name = toks.expect_kind("value")[1:]
            toks.expect(":")
            define(name, graph.add_input(name, _type(toks)), line)
            if toks.accept(")"):
                break
            toks.expect(",")
    toks.expect("->")
    toks.expect("(")
    declared_results: list[TensorType] = []
    if not toks.accept(")"):
        declared_results.append(_type(toks))
        while toks.accept(","):
            declared_results.append(_type(toks))
        toks.expect(")")
    toks.expect("{")

    while not toks.accept("return"):
        line = toks.peek()[2]
        if toks.accept("const"):
            name = toks.expect_kind("value")[1:]
            toks.expect(":")
            type = _type(toks)
            literal = _literal(toks) if toks.accept("=") else None
            if not type.is_static:
                raise ParseError(f"line {line}: constant %{name} has symbolic dimensions: {type}")
            tensor = _constant_tensor(name, type, literal, constants, seed=len(graph.constants), line=line)
            if TensorType.of(tensor) != type:
                raise ParseError(f"line {line}: constant %{name} is {TensorType.of(tensor)}, declared {type}")
            define(name, graph.add_constant(name, tensor), line)
            continue
        outs: list[tuple[str, TensorType]] = []
        while True:
            name = toks.expect_kind("value")[1:]
            toks.expect(":")
            outs.append((name, _type(toks)))
            if not toks.accept(","):
                break
        toks.expect("=")
        op = toks.expect_kind("ident")
        if toks.accept("["):  # a region op's label lists its body's ops; the body itself follows
            while not toks.accept("]"):
                if toks.next()[0] == "eof":
                    raise ParseError(f"line {line}: unclosed '[' after {op}")
        toks.expect("(")
        operands: list[Value] = []
        if not toks.accept(")"):
            operands.append(use(toks.next()))
            while toks.accept(","):
                operands.append(use(toks.next()))
            toks.expect(")")
        attrs: dict[str, Any] = {}
        if toks.accept("{"):
            while True:
                key_line = toks.peek()[2]
                key = toks.expect_kind("ident")
                if key in attrs:
                    raise ParseError(f"line {key_line}: attribute {key} is given twice")
                toks.expect("=")
                attrs[key] = _literal(toks)
                if toks.accept("}"):
                    break
                toks.expect(",")
        device = toks.expect_kind("ident") if toks.accept("@") else None
        try:
            for name in get_op(op).graph_attrs:
                attrs[name] = _parse_graph(toks, constants)
        except OpError as exc:
            raise ParseError(f"line {line}: {exc}") from None
        try:
            node = graph.add_node(op, operands, attrs, names=[n for n, _ in outs], device=device)
        except OpError as exc:
            raise ParseError(f"line {line}: {exc}") from None
        if len(node.outputs) != len(outs):
            raise ParseError(f"line {line}: {op} has {len(node.outputs)} outputs, text names {len(outs)}")
        for value, (name, declared) in zip(node.outputs, outs, strict=True):
            if value.name != name:
                raise ParseError(f"line {line}: %{name} is defined twice")
            if value.type != declared:
                raise ParseError(f"line {line}: %{name} is declared {declared} but {op} gives {value.type}")
            define(name, value, line)

    return_line = toks.items[toks.i - 1][2]
    results = []
    if toks.peek()[0] == "value":
        results.append(use(toks.next()))
        while toks.accept(","):
            results.append(use(toks.next()))
    toks.expect("}")
    graph.set_outputs(results)
    got = [v.type for v in results]
    if got != declared_results:
        raise ParseError(f"line {return_line}: graph {graph.name} declares results "
                         f"({', '.join(map(str, declared_results))}) but returns ({', '.join(map(str, got))})")
    return graph
