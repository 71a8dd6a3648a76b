"""Error-budget search: the largest set of candidate nodes to run in lower precision whose combined error on
calibration inputs stays within a tolerance.

Each candidate's sensitivity is measured by lowering it alone. Candidates within the tolerance are then taken
in ascending sensitivity: first all of them together; if that exceeds the tolerance, the longest prefix that
fits (binary search), then each remaining candidate on top of those accepted, keeping it only if the combined
graph still fits. A search over n candidates costs n + 1 + log2(n) + (the candidates after the prefix) graph
evaluations, each over every calibration batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..ir import Graph, run_graph
from .precision_config import ErrorMetrics, measure_batches

EXACT = ErrorMetrics(0.0, 0.0, math.inf, 1.0)


@dataclass
class BudgetResult:
    """The search's outcome: the candidates to lower (in ascending sensitivity), the measured error of
    lowering exactly those, each candidate's error when lowered alone, notes for every candidate kept,
    and how many graphs were evaluated."""

    chosen: list[str]
    error: ErrorMetrics
    sensitivity: dict[str, ErrorMetrics] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    evaluations: int = 0


class _Measure:
    """Evaluates a graph with some candidates lowered against the float32 reference outputs."""

    def __init__(self, graph: Graph, build: Callable[[frozenset[str]], Graph],
                 calibration: Sequence[Sequence[torch.Tensor]]) -> None:
        self.build = build
        self.calibration = calibration
        self.reference = [run_graph(graph, *batch) for batch in calibration]
        self.evaluations = 0

    def __call__(self, names: Sequence[str]) -> ErrorMetrics:
        if not names:
            return EXACT
        self.evaluations += 1
        lowered = self.build(frozenset(names))
        return measure_batches(self.reference, [run_graph(lowered, *batch) for batch in self.calibration])


def search_budget(graph: Graph, candidates: Sequence[str], build: Callable[[frozenset[str]], Graph],
                  calibration: Sequence[Sequence[torch.Tensor]], tolerance: float, precision: str) -> BudgetResult:
    """Choose which `candidates` (node names of `graph`) to lower. `build(names)` returns a copy of `graph`
    with exactly those nodes lowered to `precision`; errors are `max_rel` against `graph` on `calibration`."""
    if not calibration:
        raise ValueError("the error budget needs calibration inputs")
    measure = _Measure(graph, build, calibration)
    ops = {node.outputs[0].name: node.op for node in graph.nodes}
    sensitivity = {name: measure([name]) for name in candidates}
    notes = []
    order = sorted(candidates, key=lambda name: sensitivity[name].max_rel)
    within = [name for name in order if sensitivity[name].max_rel <= tolerance]
    for name in order[len(within):]:
        notes.append(f"kept %{name} ({ops[name]}) at f32: lowering it alone gives max_rel "
                     f"{sensitivity[name].max_rel:.2e} > tolerance {tolerance:.2e}")
    error = measure(within)
    chosen = list(within)
    if not error.max_rel <= tolerance:  # NaN (an overflow turned into NaN) is over any tolerance
        chosen, error, first_failure = _longest_prefix(within, measure, tolerance, error)
        for position, name in enumerate(within[len(chosen):]):
            combined = first_failure if position == 0 else measure([*chosen, name])
            if combined.max_rel <= tolerance:
                chosen.append(name)
                error = combined
            else:
                cheaper = f"{len(chosen)} cheaper op" + ("" if len(chosen) == 1 else "s")
                notes.append(f"kept %{name} ({ops[name]}) at f32: lowering it with the {cheaper} exceeds the "
                             f"tolerance (max_rel {combined.max_rel:.2e} > {tolerance:.2e})")
    notes.append(f"error budget: lowered {len(chosen)} of {len(candidates)} candidate ops to {precision}; measured "
                 f"{error} on {len(calibration)} calibration batches, tolerance max_rel {tolerance:.2e} "
                 f"({measure.evaluations} graph evaluations)")
    return BudgetResult(chosen, error, sensitivity, notes, measure.evaluations)


def _longest_prefix(names: list[str], measure: _Measure, tolerance: float, full: ErrorMetrics
                    ) -> tuple[list[str], ErrorMetrics, ErrorMetrics]:
    """The longest prefix of `names` within the tolerance (all of `names` is known to exceed it, measured as
    `full`), its error, and the error of the prefix one longer (the first that exceeds it)."""
    low, high = 0, len(names)  # prefix `low` fits, prefix `high` does not
    errors = {0: EXACT, len(names): full}
    while high - low > 1:
        middle = (low + high) // 2
        errors[middle] = measure(names[:middle])
        if errors[middle].max_rel <= tolerance:
            low = middle
        else:
            high = middle
    return names[:low], errors[low], errors[high]
