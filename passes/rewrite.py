"""A pattern-rewrite engine: rules as data, matched at a root node, applied in a walk or to a fixpoint.

A `Pat` describes the value a node computes: `Pat("mul", Pat.var("x"), Pat.const("c", value=0.5))`.
Captures are named; a name used twice must bind the same value, so `Pat("mul", x, x)` is a square.
Commutative ops (`OpDef.commutative`) match their operands in either order. A `Rule` pairs a pattern
with a constraint on the whole match (returning why it fails, or None) and a rewrite that builds the
replacement value; `RuleSet`s compose with `+`. Every failed try is kept in a `RewriteReport` with
the first sub-pattern or constraint that failed, so `why_not("layer-norm", "17")` answers in words.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..ir import Graph, Node, Value, format_node, get_op
from ..ir.numbers import shortest_float
from .base import Pass, PassContext, PassResult

ValueCheck = Callable[[Value], bool]


# `attrs` for a pattern's `div`: true division only (floor and trunc division have the same op name).
TRUE_DIV = {"rounding_mode": None}


class Pat:
    """A pattern over one value; build with `Pat(op, *operands)`, `Pat.var`, `Pat.const`, `Pat.opt`, `Pat.any`.

    `op` is an op name or a tuple of alternatives. `attrs` must equal the node's attributes
    (after the schema fills defaults). `where` is a predicate on the matched value, described in
    messages by `what`. `name` captures the value.
    """

    __slots__ = ("alternatives", "attrs", "kind", "name", "operands", "ops", "value", "what", "where")

    def __init__(self, op: str | tuple[str, ...], *operands: Pat, name: str | None = None,
                 attrs: dict[str, Any] | None = None, where: ValueCheck | None = None, what: str = "") -> None:
        self.kind = "op"
        self.ops = (op,) if isinstance(op, str) else tuple(op)
        for o in self.ops:
            get_op(o)
        self.operands = operands
        self.name = name
        self.attrs = {k: tuple(v) if isinstance(v, list) else v for k, v in (attrs or {}).items()}
        self.where = where
        self.what = what or (f"{'/'.join(self.ops)} satisfying {where.__name__}" if where else "")
        self.value: float | None = None
        self.alternatives: tuple[Pat, ...] = ()

    @classmethod
    def _leaf(cls, kind: str, name: str | None, where: ValueCheck | None, what: str) -> Pat:
        pat = cls.__new__(cls)
        pat.kind, pat.ops, pat.operands, pat.name, pat.attrs = kind, (), (), name, {}
        pat.where, pat.what, pat.value, pat.alternatives = where, what, None, ()
        return pat

    @classmethod
    def var(cls, name: str | None = None, where: ValueCheck | None = None, what: str = "") -> Pat:
        """Any value (graph input, constant or node output)."""
        return cls._leaf("var", name, where, what)

    @classmethod
    def opt(cls, name: str) -> Pat:
        """A trailing optional operand: any value, or absent (captured as None)."""
        return cls._leaf("opt", name, None, "")

    @classmethod
    def const(cls, name: str | None = None, value: float | None = None, scalar: bool = False,
              rtol: float = 1e-4) -> Pat:
        """A constant; with `value`, every element must be within `rtol` of it (math constants such as
        sqrt(2/pi) are written with a few digits); with `scalar`, it must have one element."""
        def check(v: Value) -> bool:
            assert v.const is not None
            if scalar and v.const.numel() != 1:
                return False
            if value is None:
                return True
            if v.const.numel() == 0 or not (v.const.is_floating_point() or value == int(value)):
                return False
            c = v.const.double()
            return bool(torch.isclose(c, torch.tensor(value, dtype=torch.float64), rtol=rtol, atol=0).all())

        what = f"a constant equal to {value:g}" if value is not None else "a scalar constant" if scalar else ""
        pat = cls._leaf("const", name, check, what or "a constant")
        pat.value = value
        return pat

    @classmethod
    def any(cls, *alternatives: Pat, name: str | None = None) -> Pat:
        """The first of `alternatives` that matches (all are tried when backtracking)."""
        pat = cls._leaf("any", name, None, "")
        pat.alternatives = alternatives
        return pat

    @property
    def root_ops(self) -> frozenset[str]:
        """The ops a matched root node can have (empty: any value, so not usable as a rule root)."""
        if self.kind == "any":
            return frozenset().union(*(a.root_ops for a in self.alternatives))
        return frozenset(self.ops)

    @property
    def min_nodes(self) -> int:
        """The fewest nodes any match of this pattern spans."""
        if self.kind == "any":
            return min(a.min_nodes for a in self.alternatives)
        if self.kind != "op":
            return 0
        return 1 + sum(p.min_nodes for p in self.operands)

    def __repr__(self) -> str:
        label = f"{self.name}=" if self.name else ""
        if self.kind == "op":
            return f"{label}{'|'.join(self.ops)}({', '.join(map(repr, self.operands))})"
        if self.kind == "any":
            return f"{label}any({', '.join(map(repr, self.alternatives))})"
        return f"{label}{self.kind}" + (f"({self.value:g})" if self.value is not None else "")


def describe(value: Value) -> str:
    """`%16 = mean(%x) {dims=[2]}`-style text for messages."""
    if value.producer is not None:
        text = format_node(value.producer).strip()
        return "%" + value.name + " = " + text.split(" = ", 1)[-1] if len(value.producer.outputs) == 1 else text
    if value.const is not None:
        data = f" = {value.const.tolist()}" if value.const.numel() <= 4 else ""
        return f"%{value.name} (constant {value.type}{data})"
    return f"%{value.name} (graph input {value.type})"


@dataclass
class _Trace:
    """The deepest failure seen while matching one rule at one root: (nodes matched so far, reason). Of two
    at the same depth, a near miss (a constant of the wrong value, an op with the wrong attributes) wins
    over a value of the wrong kind, which is what the other operand order of a commutative op gives."""

    progress: tuple[int, bool] = (-1, False)
    reason: str = ""

    def fail(self, progress: int, reason: str, near: bool = False) -> None:
        if (progress, near) > self.progress:
            self.progress, self.reason = (progress, near), reason


Captures = dict[str, Value | None]


def _match(pat: Pat, value: Value | None, caps: Captures, nodes: tuple[Node, ...], path: str,
           trace: _Trace) -> Iterator[tuple[Captures, tuple[Node, ...]]]:
    """Yield every (captures, matched nodes) extension under which `value` matches `pat`."""
    if pat.name is not None and pat.name in caps:
        if caps[pat.name] is value:
            yield caps, nodes
        else:
            bound = caps[pat.name]
            trace.fail(len(nodes), f"{path} is {describe(value) if value else 'absent'}, expected the same value "
                                   f"as '{pat.name}' ({'absent' if bound is None else '%' + bound.name})")
        return
    if pat.kind == "any":
        for alt in pat.alternatives:
            for caps2, nodes2 in _match(alt, value, caps, nodes, path, trace):
                yield _bind(pat, value, caps2), nodes2
        return
    if value is None:
        if pat.kind == "opt":
            yield _bind(pat, value, caps), nodes
        else:
            trace.fail(len(nodes), f"{path} is absent")
        return
    if pat.kind == "const" and value.const is None:
        trace.fail(len(nodes), f"{path} is {describe(value)}, expected {pat.what}")
        return
    if pat.where is not None and not pat.where(value):
        trace.fail(len(nodes), f"{path} is {describe(value)}, expected {pat.what}",
                   near=pat.kind == "const" or (value.producer is not None and value.producer.op in pat.ops))
        return
    if pat.kind != "op":
        yield _bind(pat, value, caps), nodes
        return
    node = value.producer
    if node is None or node.op not in pat.ops:
        trace.fail(len(nodes), f"{path} is {describe(value)}, expected {' or '.join(pat.ops)}")
        return
    if len(node.outputs) != 1:
        trace.fail(len(nodes), f"{path} is one of several outputs of {node.op}")
        return
    for key, want in pat.attrs.items():
        if node.attrs.get(key) != want:
            trace.fail(len(nodes), f"{path} is {describe(value)}, expected {key}={want}", near=True)
            return
    operands: list[Value | None] = list(node.inputs)
    if len(operands) > len(pat.operands) or any(p.kind != "opt" for p in pat.operands[len(operands):]):
        trace.fail(len(nodes), f"{path} is {describe(value)}: {len(operands)} operands, expected {len(pat.operands)}")
        return
    operands += [None] * (len(pat.operands) - len(operands))
    orders = [list(range(len(operands)))]
    if get_op(node.op).commutative and len(operands) == 2 and operands[0] is not operands[1]:
        orders.append([1, 0])
    inner = (*nodes, node)
    for order in orders:
        yield from _match_operands(pat, node, [operands[j] for j in order], order, 0, _bind(pat, value, caps),
                                   inner, trace)


def _match_operands(pat: Pat, node: Node, operands: list[Value | None], positions: list[int], i: int,
                    caps: Captures, nodes: tuple[Node, ...], trace: _Trace
                    ) -> Iterator[tuple[Captures, tuple[Node, ...]]]:
    """Match `operands` (the node's, possibly swapped; `positions` are their places in the node) in turn."""
    if i == len(operands):
        yield caps, nodes
        return
    where = f"operand {positions[i]} of {node.op} %{node.outputs[0].name}"
    for caps2, nodes2 in _match(pat.operands[i], operands[i], caps, nodes, where, trace):
        yield from _match_operands(pat, node, operands, positions, i + 1, caps2, nodes2, trace)


def _bind(pat: Pat, value: Value | None, caps: Captures) -> Captures:
    return caps if pat.name is None else {**caps, pat.name: value}


@dataclass
class Match:
    """One match of a rule: the root node, the captured values, and the nodes the pattern spans."""

    rule: Rule
    graph: Graph
    root: Node
    captures: Captures
    nodes: tuple[Node, ...]
    created: list[Node] = field(default_factory=list)
    new_constants: list[Value] = field(default_factory=list)

    def __getitem__(self, name: str) -> Value:
        value = self.captures[name]
        if value is None:
            raise KeyError(f"rule {self.rule.name}: capture '{name}' is absent")
        return value

    def get(self, name: str) -> Value | None:
        return self.captures.get(name)

    def node(self, name: str) -> Node:
        """The node that produced the captured value `name`."""
        producer = self[name].producer
        assert producer is not None, f"rule {self.rule.name}: '{name}' is not a node output"
        return producer

    def scalar(self, name: str) -> float:
        """The single element of the captured constant `name` (see `shortest_float`)."""
        const = self[name].const
        assert const is not None and const.numel() == 1, f"rule {self.rule.name}: '{name}' is not a scalar constant"
        return shortest_float(const)

    def call(self, op: str, *inputs: Value, **attrs: Any) -> Value:
        """Insert `op` before the root, on the root's device and with its source."""
        node = self.graph.add_node(op, inputs, attrs, before=self.root, device=self.root.device,
                                   source=self.root.source)
        self.created.append(node)
        return node.output

    def constant(self, hint: str, tensor: torch.Tensor) -> Value:
        value = self.graph.add_constant(hint, tensor)
        self.new_constants.append(value)
        return value

    def undo(self) -> None:
        """Remove what the rewrite inserted (it is unused: nothing was replaced yet)."""
        for node in reversed(self.created):
            self.graph.remove_node(node)
        for value in self.new_constants:
            self.graph.remove_constant(value)


Constraint = Callable[[Match], str | None]


@dataclass(frozen=True)
class Rule:
    """A named rewrite: where `pattern` matches and `constraint` returns None, `rewrite` builds the value
    to use instead of the root (through `Match.call`). `constraint` returns the reason it rejects a
    match. A replacement of another type than the root's is undone and counts as a failed match."""

    name: str
    pattern: Pat
    rewrite: Callable[[Match], Value]
    constraint: Constraint | None = None

    def __post_init__(self) -> None:
        if not self.pattern.root_ops:
            raise ValueError(f"rule {self.name}: the pattern's root must be an op pattern")


class RuleSet:
    """An ordered collection of rules, indexed by root op; `a + b` tries a's rules first."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = tuple(rules)
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate rule names in {names}")
        self.by_op: dict[str, list[Rule]] = {}
        for rule in self.rules:
            for op in sorted(rule.pattern.root_ops):
                self.by_op.setdefault(op, []).append(rule)

    def __add__(self, other: RuleSet) -> RuleSet:
        return RuleSet(self.rules + other.rules)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)


@dataclass
class Miss:
    """Why `rule` did not match at `value`; `near` when more than half the pattern's nodes matched."""

    rule: str
    value: Value
    reason: str
    near: bool


@dataclass
class RewriteReport:
    """What a rewrite run did: applications per rule, and the last reason each rule failed at each root."""

    applied: dict[str, int] = field(default_factory=dict)
    misses: dict[tuple[str, int], Miss] = field(default_factory=dict)
    rounds: int = 0
    converged: bool = True

    def why_not(self, rule: str, value_name: str) -> str | None:
        """The reason `rule` did not match at the node computing `%value_name` (None: not tried there,
        or it matched)."""
        for miss in self.misses.values():
            if miss.rule == rule and miss.value.name == value_name:
                return miss.reason
        return None

    def near_misses(self) -> list[str]:
        return [m.reason for m in self.misses.values() if m.near]

    def stats(self) -> dict[str, int | float]:
        """Applications per rule name and near misses per rule (`near-miss.<rule>`)."""
        stats: dict[str, int | float] = dict(self.applied)
        for miss in self.misses.values():
            if miss.near:
                key = f"near-miss.{miss.rule}"
                stats[key] = stats.get(key, 0) + 1
        return stats


def _outside_use(match: Match) -> str | None:
    """Why deleting the matched interior would break another reader, or None."""
    inside = {id(n) for n in match.nodes}
    for node in match.nodes:
        if node is match.root:
            continue
        out = node.outputs[0]
        if match.graph.is_output(out):
            return f"{describe(out)} is also a graph output"
        for user, _ in out.uses:
            if id(user) not in inside:
                return f"{describe(out)} is also read by {describe(user.outputs[0])}"
    return None


def _try(rule: Rule, graph: Graph, root: Node, report: RewriteReport) -> bool:
    trace = _Trace()
    failure: tuple[int, str] | None = None
    for caps, nodes in _match(rule.pattern, root.outputs[0], {}, (), f"%{root.outputs[0].name}", trace):
        match = Match(rule, graph, root, caps, tuple(dict.fromkeys(nodes)))
        reason = _outside_use(match)
        if reason is None and rule.constraint is not None:
            reason = rule.constraint(match)
        if reason is not None:
            # A later match (another commuted order) may still succeed; keep the first rejection.
            failure = failure or (len(match.nodes) + 1, reason)
            continue
        replacement = rule.rewrite(match)
        old = root.outputs[0]
        if replacement.type != old.type:
            # Broadcasting or type promotion in the matched nodes made the fused form differ.
            match.undo()
            failure = failure or (len(match.nodes) + 1, f"the fused form would have type {replacement.type}, "
                                                        f"not {old.type}")
            continue
        graph.replace_all_uses(old, replacement)
        graph.remove_dead(match.nodes)
        report.applied[rule.name] = report.applied.get(rule.name, 0) + 1
        report.misses.pop((rule.name, id(old)), None)
        return True
    progress, reason = failure if failure is not None else (trace.progress[0], trace.reason)
    # A near miss got past half of the pattern: worth a note in the summary, unlike every mul tried for GELU.
    near = 2 * progress > rule.pattern.min_nodes
    report.misses[(rule.name, id(root.outputs[0]))] = Miss(rule.name, root.outputs[0],
                                                           f"{rule.name} at %{root.outputs[0].name}: {reason}", near)
    return False


def apply_rules(graph: Graph, rules: RuleSet, *, fixpoint: bool = True, max_rounds: int = 16) -> RewriteReport:
    """Walk the nodes in order trying each rule whose root op matches; with `fixpoint`, repeat walks
    until one changes nothing (at most `max_rounds`). Nodes a rewrite inserts are visited next walk."""
    report = RewriteReport()
    while True:
        report.rounds += 1
        changed = False
        for node in graph:
            if node.graph is not graph or len(node.outputs) != 1:
                continue
            for rule in rules.by_op.get(node.op, ()):
                if _try(rule, graph, node, report):
                    changed = True
                    break
        if not changed or not fixpoint:
            break
        if report.rounds >= max_rounds:
            report.converged = False
            break
    live = {id(v) for v in graph.values()}
    report.misses = {k: m for k, m in report.misses.items() if id(m.value) in live}
    return report


class PatternPass(Pass):
    """A pass that applies `rules` to a fixpoint. Statistics: applications per rule and `near-miss.<rule>`
    counts; its notes (in the dumps and summary.json) are the near-miss reasons, at most `MAX_NOTES`;
    `self.report` keeps the last run's whole `RewriteReport`."""

    rules: ClassVar[RuleSet]
    MAX_NOTES: ClassVar[int] = 20

    def __init__(self) -> None:
        self.report = RewriteReport()

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        self.report = apply_rules(graph, self.rules, max_rounds=ctx.option(self.name, "max_rounds", 16))
        return PassResult(graph, bool(self.report.applied), self.report.stats(),
                          self.report.near_misses()[: self.MAX_NOTES])
