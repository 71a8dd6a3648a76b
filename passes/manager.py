"""The pass manager: runs a pipeline of passes and fixpoint groups, skips disabled ones, tracks the
properties passes require and ensure, records what every pass did, and turns a failure into a
`PassFailure` that points at a reproducer.

    result = PassManager(default_pipeline(2), PassContext(opt_level=2), instruments_for(dump_dir="dumps")).run(g)

Instruments observe (and may check) every step through the hooks of `Instrument`.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..ir import Graph, format_graph, parse_graph
from .base import Pass, PassContext


def json_number(x: float) -> float | str:
    """`x` for JSON, which has no inf or NaN: those become the strings "inf", "-inf", "nan"."""
    return x if math.isfinite(x) else str(x)


class PassFailure(Exception):
    """A pass raised, or an instrument rejected its result. Names the pass and the reproducer folder."""

    def __init__(self, pass_name: str, reason: str, reproducer: str) -> None:
        super().__init__(f"pass '{pass_name}' failed: {reason}\n"
                         f"  reproducer (input IR of the pass): {reproducer} "
                         f"(load with heteropass.passes.load_reproducer)")
        self.pass_name = pass_name
        self.reason = reason
        self.reproducer = reproducer


class FixpointNotConverged(UserWarning):
    """A fixpoint group still changed the graph after `max_steps` rounds."""


@dataclass
class Fixpoint:
    """Repeat `passes` in order until a whole round changes nothing, or `max_steps` rounds ran."""

    passes: Sequence[Pass | Fixpoint]
    max_steps: int = 8
    name: str = "fixpoint"

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"fixpoint '{self.name}': max_steps must be at least 1, got {self.max_steps}")


@dataclass
class PassRecord:
    """One run of one pass. `index` numbers runs from 1 (dump files use it); `step` is the round of the
    enclosing fixpoint `group` (1 outside any group)."""

    index: int
    name: str
    step: int
    group: str | None
    time_ms: float
    modified: bool
    stats: dict[str, int | float]
    counts_before: dict[str, int]
    counts_after: dict[str, int]
    notes: list[str] = field(default_factory=list)

    @property
    def nodes_before(self) -> int:
        return sum(self.counts_before.values())

    @property
    def nodes_after(self) -> int:
        return sum(self.counts_after.values())

    @property
    def where(self) -> str:
        return f" (step {self.step} of {self.group})" if self.group is not None else ""

    def stats_text(self) -> str:
        """Non-zero statistics in words: `nodes folded 3, constants removed 1`."""
        return ", ".join(f"{key.replace('_', ' ')} {f'{value:.3g}' if isinstance(value, float) else value}"
                         for key, value in sorted(self.stats.items()) if value != 0)


@dataclass
class FixpointRecord:
    name: str
    steps: int
    max_steps: int
    converged: bool


@dataclass
class PipelineResult:
    """The final graph and what happened on the way."""

    graph: Graph
    pipeline: list[str]
    opt_level: int
    input_counts: dict[str, int]
    records: list[PassRecord] = field(default_factory=list)
    fixpoints: list[FixpointRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def modified(self) -> bool:
        return any(r.modified for r in self.records)

    def summary_text(self) -> str:
        """A table of the passes that ran: time, node count, and their statistics."""
        width = max([len(r.name + r.where) for r in self.records] + [4])
        lines = [f"{'#':>3}  {'pass':<{width}} {'time':>9}  {'nodes':>9}  what changed"]
        for r in self.records:
            changes = r.stats_text() or ("changed" if r.modified else "-")
            lines.append(f"{r.index:>3}  {r.name + r.where:<{width}} {r.time_ms:>6.2f} ms  "
                         f"{f'{r.nodes_before}->{r.nodes_after}':>9}  {changes}")
        total = sum(r.time_ms for r in self.records)
        lines.append(f"total: {len(self.records)} passes, {sum(r.modified for r in self.records)} changed the graph, "
                     f"{total:.2f} ms, {sum(self.input_counts.values())} -> {len(self.graph.nodes)} nodes")
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready report with a fixed key order; the times are its only nondeterministic fields."""
        passes = [{
            "index": r.index, "name": r.name, "step": r.step, "group": r.group, "time_ms": round(r.time_ms, 3),
            "changed": r.modified, "nodes": r.nodes_after, "ops": r.counts_after,
            "stats": {k: json_number(v) for k, v in sorted(r.stats.items())}, "notes": r.notes,
        } for r in self.records]
        return {
            "graph": self.graph.name,
            "opt_level": self.opt_level,
            "pipeline": self.pipeline,
            "input": {"nodes": sum(self.input_counts.values()), "ops": self.input_counts},
            "passes": passes,
            "fixpoints": [{"name": f.name, "steps": f.steps, "max_steps": f.max_steps, "converged": f.converged}
                          for f in self.fixpoints],
            "skipped": [{"name": name, "reason": reason} for name, reason in self.skipped],
            "totals": {
                "passes_run": len(self.records),
                "passes_changed": sum(r.modified for r in self.records),
                "time_ms": round(sum(r.time_ms for r in self.records), 3),
                "nodes_before": sum(self.input_counts.values()),
                "nodes_after": len(self.graph.nodes),
            },
        }


class Instrument:
    """Hooks the manager calls around the pipeline and every pass. Subclasses override what they need.

    Instruments with `checks = True` run their `after_pass` first, so what they add to the record
    (e.g. drift) is there when printing and dumping instruments see it. Exceptions raised by
    `before_pass`/`after_pass` become a `PassFailure` of that pass.
    """

    checks: bool = False

    def before_pipeline(self, graph: Graph) -> None:
        pass

    def before_pass(self, pass_: Pass, graph: Graph) -> None:
        pass

    def after_pass(self, pass_: Pass, graph: Graph, record: PassRecord) -> None:
        pass

    def after_pipeline(self, graph: Graph, result: PipelineResult) -> None:
        pass

    def reproducer_dir(self) -> str | None:
        """Where a failing pass's reproducer should go, if this instrument owns a folder."""
        return None


def _flatten(items: Sequence[Pass | Fixpoint]) -> Iterator[Pass]:
    for item in items:
        if isinstance(item, Fixpoint):
            yield from _flatten(item.passes)
        else:
            yield item


class PassManager:
    """Runs `passes` (passes and `Fixpoint` groups) under `ctx` with `instruments`.

    Passes above `ctx.opt_level` or named in `ctx.disabled` are skipped. The input graph is not
    modified: the manager works on a clone.
    """

    def __init__(self, passes: Sequence[Pass | Fixpoint], ctx: PassContext | None = None,
                 instruments: Sequence[Instrument] = ()) -> None:
        self.passes = list(passes)
        self.ctx = ctx or PassContext()
        self.instruments = list(instruments)
        # Checking instruments first: see `Instrument`.
        self._after_order = sorted(self.instruments, key=lambda i: not i.checks)
        self._check_disabled()
        self._check_requirements()

    # -- validation before running -------------------------------------------------------------
    def _skip_reason(self, pass_: Pass) -> str | None:
        if pass_.name in self.ctx.disabled:
            return "disabled"
        if pass_.opt_level > self.ctx.opt_level:
            return f"opt_level {pass_.opt_level} > {self.ctx.opt_level}"
        return None

    def _check_disabled(self) -> None:
        if not self.ctx.disabled:
            return
        from .pipelines import pass_registry  # pipelines builds on this module

        known = set(pass_registry()) | {p.name for p in _flatten(self.passes)}
        unknown = sorted(set(self.ctx.disabled) - known)
        if unknown:
            raise ValueError(f"cannot disable unknown pass(es) {', '.join(unknown)}; "
                             f"known passes: {', '.join(sorted(known))}")

    def _check_requirements(self) -> None:
        ensured: set[str] = set()
        for pass_ in _flatten(self.passes):
            if self._skip_reason(pass_) is not None:
                continue
            missing = sorted(pass_.requires - ensured)
            if missing:
                raise ValueError(f"pass '{pass_.name}' requires {', '.join(missing)}, which no earlier enabled "
                                 f"pass in the pipeline ensures; add a pass that ensures it before "
                                 f"'{pass_.name}' (or do not disable it)")
            ensured |= pass_.ensures

    # -- running -------------------------------------------------------------------------------
    def run(self, graph: Graph) -> PipelineResult:
        graph = graph.clone()
        result = PipelineResult(graph, [p.name for p in _flatten(self.passes)], self.ctx.opt_level,
                                graph.op_counts())
        run = _Run(self, result)
        for instrument in self.instruments:
            instrument.before_pipeline(graph)
        run.items(self.passes, step=1, group=None)
        for record in result.fixpoints:
            if not record.converged:
                warnings.warn(f"fixpoint '{record.name}' still changed the graph after {record.max_steps} steps",
                              FixpointNotConverged, stacklevel=2)
        for instrument in self.instruments:
            instrument.after_pipeline(result.graph, result)
        return result


class _Run:
    """The state of one `PassManager.run`: the current graph, its printed form, the properties that hold."""

    def __init__(self, manager: PassManager, result: PipelineResult) -> None:
        self.manager = manager
        self.result = result
        self.holding: set[str] = set()
        self.text = format_graph(result.graph)

    def items(self, items: Sequence[Pass | Fixpoint], step: int, group: str | None) -> bool:
        changed = False
        for item in items:
            if isinstance(item, Fixpoint):
                changed |= self.fixpoint(item)
                continue
            reason = self.manager._skip_reason(item)
            if reason is not None:
                if step == 1:
                    self.result.skipped.append((item.name, reason))
                continue
            changed |= self.one(item, step, group)
        return changed

    def fixpoint(self, fixpoint: Fixpoint) -> bool:
        changed = False
        for step in range(1, fixpoint.max_steps + 1):
            if not self.items(fixpoint.passes, step, fixpoint.name):
                self.result.fixpoints.append(FixpointRecord(fixpoint.name, step, fixpoint.max_steps, True))
                return changed
            changed = True
        self.result.fixpoints.append(FixpointRecord(fixpoint.name, fixpoint.max_steps, fixpoint.max_steps, False))
        return changed

    def one(self, pass_: Pass, step: int, group: str | None) -> bool:
        # A property a modifying pass invalidated is re-established by re-running its provider, as MLIR
        # recomputes an invalidated analysis.
        for prop in sorted(pass_.requires - self.holding):
            provider = next(p for p in _flatten(self.manager.passes)
                            if prop in p.ensures and self.manager._skip_reason(p) is None)
            self.one(provider, step, group)
        graph = self.result.graph
        before_text, before_consts = self.text, {name: v.const for name, v in graph.constants.items()
                                                 if v.const is not None}
        # Inference tensors (a model loaded under torch.inference_mode) keep no version counter.
        before_data = {name: (id(t), None if t.is_inference() else t._version) for name, t in before_consts.items()}
        before_counts = graph.op_counts()
        output_text = None
        try:
            for instrument in self.manager.instruments:
                instrument.before_pass(pass_, graph)
            start = time.perf_counter()
            outcome = pass_.call(graph, self.manager.ctx)
            elapsed = (time.perf_counter() - start) * 1e3
            graph = outcome.graph
            self.text = output_text = format_graph(graph)
            if not outcome.modified and self.text != before_text:
                raise RuntimeError("it reported modified=False but changed the graph")
            _check_constants(graph, before_data, outcome.modified)
            record = PassRecord(len(self.result.records) + 1, pass_.name, step, group, elapsed, outcome.modified,
                                dict(outcome.stats), before_counts, graph.op_counts(), list(outcome.notes))
            for instrument in self.manager._after_order:
                instrument.after_pass(pass_, graph, record)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            try:
                _check_constants(self.result.graph, before_data, True)
            except RuntimeError as edited:
                reason += f" (also, {edited}: the reproducer's constants hold that edit)"
            directory = self._reproducer_dir()
            write_reproducer(directory, before_text, before_consts, self.result.pipeline, pass_, step,
                             self.manager.ctx, reason, output_text)
            raise PassFailure(pass_.name, reason, directory) from exc
        self.result.graph = graph
        self.result.records.append(record)
        # A modifying pass keeps only the properties it ensures (MLIR's preserved analyses).
        self.holding = set(pass_.ensures) if outcome.modified else self.holding | pass_.ensures
        return outcome.modified

    def _reproducer_dir(self) -> str:
        for instrument in self.manager.instruments:
            directory = instrument.reproducer_dir()
            if directory is not None:
                return directory
        return tempfile.mkdtemp(prefix="heteropass-reproducer-")


def _check_constants(graph: Graph, before: dict[str, tuple[int, int | None]], modified: bool) -> None:
    """A pass replaces a constant's tensor, never writes into it (the caller's graph and the model's
    weights share it); and one that reports modified=False keeps every tensor, which the printed text,
    naming large constants only, cannot show."""
    for name, value in graph.constants.items():
        if name not in before or value.const is None:
            continue
        identity, version = before[name]
        if id(value.const) == identity and version is not None and value.const._version != version:
            raise RuntimeError(f"it wrote into constant %{name} in place; a pass must give it a new tensor")
        if not modified and id(value.const) != identity:
            raise RuntimeError(f"it reported modified=False but replaced the data of constant %{name}")


def write_reproducer(directory: str, text: str, constants: dict[str, torch.Tensor], pipeline: list[str],
                     pass_: Pass, step: int, ctx: PassContext, error: str, output_text: str | None) -> None:
    """Write `reproducer.ir` (the failing pass's input), `reproducer.constants.pt`, `reproducer.json` (with
    the pass's `settings`, e.g. its precision request) and, when the pass returned a graph that an
    instrument rejected, that graph as `reproducer.output.ir`."""
    pass_name = pass_.name
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / "reproducer.ir").write_text(text)
    if output_text is not None:
        (path / "reproducer.output.ir").write_text(f"# output of {pass_name}, rejected: {error}\n{output_text}")
    torch.save(constants, path / "reproducer.constants.pt")
    info = {"pipeline": pipeline, "failing_pass": pass_name, "pass_settings": pass_.settings(), "step": step,
            "opt_level": ctx.opt_level, "disabled": sorted(ctx.disabled), "options": ctx.options, "error": error}
    (path / "reproducer.json").write_text(json.dumps(info, indent=2, default=repr) + "\n")


def load_reproducer(directory: str | Path) -> tuple[Graph, list[str]]:
    """Rebuild the failing pass's input graph (constants exact) and the pipeline's pass names.

    `reproducer.json` also names the failing pass, its settings, the opt level and the error."""
    path = Path(directory)
    info = json.loads((path / "reproducer.json").read_text())
    constants = torch.load(path / "reproducer.constants.pt")
    return parse_graph((path / "reproducer.ir").read_text(), constants), list(info["pipeline"])
