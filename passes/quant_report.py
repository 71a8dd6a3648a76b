"""What the int8 passes share: picking the nodes to quantize, the per-layer error report and the fallback loop.

With calibration inputs, every quantized node's output is compared with the float graph's (`measure_error`
pooled over the batches). With a tolerance, the loop quantizes every candidate, and while the graph's
outputs are further from float32 than `config.tolerance` (`max_rel`), puts back in float the candidate that
hurts the outputs most when quantized alone, and tries again. Each decision becomes a note for the dumps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import torch

from ..ir import Graph, Node, Value
from .calibration import ValueRecorder
from .precision_config import ErrorMetrics, PrecisionConfig, measure_batches

Apply = Callable[[Graph, Collection[str]], None]  # quantizes the named nodes of a graph in place
WhyNot = Callable[[Node], str | None]  # why a node of a quantizable op cannot be quantized



def replace_node(graph: Graph, old: Node, new: Node) -> None:
    """Put single-output `new` in the place of `old`, drop what only `old` read, and give `new` the old
    output name, so that dumps, `keep_nodes` and the report keep calling the node by one name."""
    name = old.name
    graph.replace_all_uses(old.outputs[0], new.outputs[0])
    graph.remove_dead([old])
    new.outputs[0].name = graph.fresh_name(name)


def find_candidates(graph: Graph, config: PrecisionConfig, ops: Collection[str], why_not: WhyNot
                    ) -> tuple[list[str], list[str]]:
    """Names of the nodes of `ops` to quantize, and a note for each one left in float and why."""
    names, notes = [], []
    for node in graph.nodes:
        if node.op not in ops:
            continue
        name = node.name
        if node.op in config.deny:
            reason: str | None = f"{node.op} is in the precision config's deny list"
        elif name in config.keep_nodes:
            reason = "it is in the precision config's keep_nodes"
        else:
            reason = why_not(node)
        if reason is None:
            names.append(name)
        else:
            notes.append(f"%{name} ({node.op}) stays in float: {reason}")
    missing = sorted(config.keep_nodes - {node.name for node in graph.nodes})
    if missing:
        notes.append("keep_nodes names no node of this graph: " + ", ".join(f"%{n}" for n in missing))
    return names, notes


@dataclass(frozen=True)
class Exclusion:
    """A node the fallback loop put back in float: the outputs' error with only it quantized, and the
    outputs' error (all chosen nodes quantized) that made the loop act."""

    name: str
    alone: ErrorMetrics
    output: ErrorMetrics


@dataclass
class QuantReport:
    """The nodes quantized, the ones put back, per-layer and output errors (empty without calibration)."""

    quantized: list[str]
    excluded: list[Exclusion] = field(default_factory=list)
    layers: dict[str, ErrorMetrics] = field(default_factory=dict)
    output: ErrorMetrics | None = None
    tolerance: float | None = None
    batches: int = 0
    weight_bytes: tuple[int, int] = (0, 0)

    def notes(self) -> list[str]:
        notes = [f"quantized %{name}: {self.layers[name]}" for name in self.quantized if name in self.layers]
        for ex in self.excluded:
            notes.append(f"kept %{ex.name} in fp32: quantizing it alone costs sqnr {_db(ex.alone.sqnr_db)} dB "
                         f"(output max_rel {ex.alone.max_rel:.1e}); output max_rel {ex.output.max_rel:.1e} "
                         f"> tolerance {self.tolerance:.3g}")
        if self.output is not None:
            limit = "" if self.tolerance is None else f" (tolerance {self.tolerance:.3g})"
            notes.append(f"outputs over {self.batches} calibration batches with {len(self.quantized)} nodes "
                         f"quantized: {self.output}{limit}")
        return notes

    def stats(self) -> dict[str, int | float]:
        stats: dict[str, int | float] = {"nodes_quantized": len(self.quantized), "nodes_excluded": len(self.excluded),
                                         "weight_bytes_before": self.weight_bytes[0],
                                         "weight_bytes_after": self.weight_bytes[1]}
        if self.output is not None:
            stats["output_max_rel"] = self.output.max_rel
            if math.isfinite(self.output.sqnr_db):
                stats["output_sqnr_db"] = round(self.output.sqnr_db, 2)
        return stats


def _db(value: float) -> str:
    return f"{value:.1f}" if math.isfinite(value) else str(value)


Batches = list[list[torch.Tensor]]
Recorded = list[dict[str, torch.Tensor]]


def _run(graph: Graph, names: Collection[str], batches: Sequence[Sequence[torch.Tensor]]) -> tuple[Batches, Recorded]:
    outputs: Batches = []
    recorded: Recorded = []
    for batch in batches:
        values: dict[str, torch.Tensor] = {}
        outputs.append(ValueRecorder(graph, names, values.__setitem__).run(*batch))
        recorded.append(values)
    return outputs, recorded


class _Trial:
    """Quantizes clones of the float graph with chosen nodes and measures them against it."""

    def __init__(self, graph: Graph, candidates: Sequence[str], apply: Apply, batches: Sequence[Sequence[torch.Tensor]]
                 ) -> None:
        self.graph, self.candidates, self.apply, self.batches = graph, candidates, apply, batches
        self.reference, self.reference_values = _run(graph, candidates, batches)

    def run(self, names: Collection[str]) -> tuple[ErrorMetrics, Recorded]:
        work = self.graph.clone()
        self.apply(work, names)
        outputs, values = _run(work, names, self.batches)
        return measure_batches(self.reference, outputs), values

    def layer_error(self, name: str, values: Recorded) -> ErrorMetrics:
        return measure_batches([[r[name]] for r in self.reference_values], [[v[name]] for v in values])


def _choose(graph: Graph, candidates: list[str], apply: Apply, config: PrecisionConfig) -> QuantReport:
    trial = _Trial(graph, candidates, apply, config.calibration)
    chosen = list(candidates)
    error, values = trial.run(chosen)
    report = QuantReport(chosen, tolerance=config.tolerance, batches=len(config.calibration))
    alone: dict[str, ErrorMetrics] = {}
    while config.tolerance is not None and not error.max_rel <= config.tolerance and chosen:
        if not alone:
            alone = {name: trial.run([name])[0] for name in candidates}
        worst = max(chosen, key=lambda n: (alone[n].max_rel, -alone[n].sqnr_db))
        report.excluded.append(Exclusion(worst, alone[worst], error))
        chosen.remove(worst)
        error, values = trial.run(chosen)
    report.layers = {name: trial.layer_error(name, values) for name in chosen}
    report.output = error
    return report


def _weight_bytes(graph: Graph, names: Collection[str]) -> int:
    """Bytes of the distinct constants the named nodes read besides a bias (operands 0 and 1)."""
    constants = {id(v): v for node in graph.nodes if node.name in names for v in node.inputs[:2]
                 if v.const is not None}
    return sum(v.const.nbytes for v in constants.values())  # type: ignore[union-attr]


def _activation_param(value: Value) -> bool:
    """A scale or zero point of an activation's quantize/dequantize pair (not weight data)."""
    return all(node.op in ("quantize", "dequantize") and index > 0 and node.inputs[0].const is None
               for node, index in value.uses)


def quantize_nodes(graph: Graph, candidates: list[str], apply: Apply, config: PrecisionConfig) -> QuantReport:
    """Quantize `candidates` in `graph` with `apply`: all of them, or, with a tolerance, those the fallback
    loop keeps; measured against the float graph when `config.calibration` is given."""
    if candidates and config.calibration:
        report = _choose(graph, candidates, apply, config)
    else:
        report = QuantReport(list(candidates))
    before = {id(v): v for v in graph.constants.values()}
    weight_bytes = _weight_bytes(graph, report.quantized)
    apply(graph, report.quantized)
    after = {id(v): v for v in graph.constants.values()}
    removed = sum(v.const.nbytes for k, v in before.items() if k not in after)  # type: ignore[union-attr]
    added = sum(v.const.nbytes for k, v in after.items()  # type: ignore[union-attr]
                if k not in before and not _activation_param(v))
    report.weight_bytes = (weight_bytes, weight_bytes - removed + added)
    return report
