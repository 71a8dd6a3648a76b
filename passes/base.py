"""The pass contract: a pass rewrites a graph and reports whether it changed anything."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..ir import Graph


@dataclass
class PassResult:
    """What a pass returns: the (possibly new) graph, whether it changed, its statistics, and notes:
    sentences for the dumps, such as why a pattern did not match a node."""

    graph: Graph
    modified: bool
    stats: dict[str, int | float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class PassContext:
    """Configuration that travels with a compilation (no global flags).

    `options` holds per-pass settings keyed by pass name, e.g. `{"fold-constants": {"max_numel": 1024}}`.
    """

    opt_level: int = 2
    disabled: frozenset[str] = frozenset()
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def option(self, pass_name: str, key: str, default: Any) -> Any:
        return self.options.get(pass_name, {}).get(key, default)


class Pass:
    """Base class. Subclasses set `name` (kebab-case), `opt_level` (the least level that runs it)
    and implement `call`. `requires`/`ensures` name properties (e.g. "static-shapes") the pass
    needs before it runs and guarantees after; `approximates` marks a pass that changes results on
    purpose (precision lowering, quantization), which check-each measures but does not fail."""

    name: ClassVar[str]
    opt_level: ClassVar[int] = 1
    approximates: ClassVar[bool] = False
    requires: ClassVar[frozenset[str]] = frozenset()
    ensures: ClassVar[frozenset[str]] = frozenset()

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """What the pass was constructed with, as JSON-ready values; a reproducer records it."""
        return {}

    def __call__(self, graph: Graph, ctx: PassContext | None = None) -> PassResult:
        return self.call(graph, ctx or PassContext())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"
