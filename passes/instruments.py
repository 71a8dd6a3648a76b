"""Instruments for the pass manager: print, dump, verify and execution-check the IR after each pass
(MLIR's print-ir-after-all / after-change, verify-each; TVM's DumpIR)."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import torch

from ..ir import Graph, TensorType, format_graph, run_graph, verify
from ..ir.sample import random_inputs
from .base import Pass
from .manager import Instrument, PassRecord, PipelineResult

DUMP_DIR_ENV = "HETEROPASS_DUMP_DIR"


def describe(record: PassRecord) -> str:
    """The header of a dump: `after fold-constants (step 1 of cleanup): changed, 0.41 ms, nodes folded 3`.

    Zero statistics are left out to keep it short; `summary.json` has them all."""
    parts = ["changed" if record.modified else "unchanged", f"{record.time_ms:.2f} ms"]
    if record.stats_text():
        parts.append(record.stats_text())
    return f"after {record.name}{record.where}: {', '.join(parts)}"


class PrintAfterAll(Instrument):
    """Print the IR after every pass, with its `describe` header. `stream` defaults to the current stdout."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def after_pass(self, pass_: Pass, graph: Graph, record: PassRecord) -> None:
        if self.wants(record):
            print(format_graph(graph, header=describe(record)), file=self.stream or sys.stdout)

    def wants(self, record: PassRecord) -> bool:
        return True


class PrintAfterChange(PrintAfterAll):
    """Print the IR only after passes that changed it."""

    def wants(self, record: PassRecord) -> bool:
        return record.modified


_DUMP_FILE = re.compile(r"^\d{3,}_.+\.(ir|onnx|onnx\.txt)$")
# What a compilation writes next to the pass dumps; a new run removes the last run's, so none is stale.
_RUN_FILES = ("summary.json", "placed.ir", "module.py", "precision.json")


class DumpIR(Instrument):
    """Write `000_input.ir`, then `NNN_<pass>.ir` after every pass run (numbered as in the summary),
    and `summary.json` at the end. Dump files of an earlier run in the folder are removed first."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def before_pipeline(self, graph: Graph) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in self.directory.iterdir():
            if _DUMP_FILE.match(path.name) or path.name in _RUN_FILES or path.name.startswith("reproducer."):
                path.unlink()
        (self.directory / "000_input.ir").write_text(format_graph(graph, header="input"))

    def after_pass(self, pass_: Pass, graph: Graph, record: PassRecord) -> None:
        path = self.directory / f"{record.index:03d}_{record.name}.ir"
        notes = "".join(f"\nnote: {note}" for note in record.notes)
        path.write_text(format_graph(graph, header=describe(record) + notes))

    def after_pipeline(self, graph: Graph, result: PipelineResult) -> None:
        (self.directory / "summary.json").write_text(json.dumps(result.summary(), indent=2) + "\n")

    def reproducer_dir(self) -> str | None:
        return str(self.directory)


class DumpOnnx(Instrument):
    """Write the graph as an ONNX model after every pass, `NNN_<pass>.onnx` next to the IR dumps (so
    Netron can show each step; fused regions become local functions). A graph ONNX cannot express
    (an opaque node, say) gets `NNN_<pass>.onnx.txt` with the reason instead."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def before_pipeline(self, graph: Graph) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write(graph, "000_input")

    def after_pass(self, pass_: Pass, graph: Graph, record: PassRecord) -> None:
        self._write(graph, f"{record.index:03d}_{record.name}")

    def _write(self, graph: Graph, stem: str) -> None:
        from ..ir.onnx_exporter import OnnxExportError, save_onnx

        try:
            save_onnx(graph, str(self.directory / f"{stem}.onnx"))
        except OnnxExportError as exc:
            (self.directory / f"{stem}.onnx.txt").write_text(f"not exported: {exc}\n")


class VerifyEach(Instrument):
    """Run the IR verifier after every pass."""

    checks = True

    def after_pass(self, pass_: Pass, graph: Graph, record: PassRecord) -> None:
        verify(graph)


class DriftError(Exception):
    """A pass changed what the graph computes beyond the tolerance."""


def relative_error(reference: torch.Tensor, actual: torch.Tensor) -> float:
    """max|a - r| / max(max|r|, tiny) over finite elements. NaN and inf must sit at the same places
    (with the same sign); integer and bool tensors must be equal. A mismatch gives `inf`."""
    if reference.shape != actual.shape or reference.dtype != actual.dtype:
        return math.inf
    if not reference.dtype.is_floating_point:
        return 0.0 if torch.equal(reference, actual) else math.inf
    ref, act = reference.double(), actual.double()
    if not torch.equal(ref.isnan(), act.isnan()):
        return math.inf
    infinite = ref.isinf() | act.isinf()
    if not torch.equal(ref[infinite], act[infinite]):
        return math.inf
    finite = ref.isfinite()
    if not finite.any():
        return 0.0
    error = (ref[finite] - act[finite]).abs().max().item()
    scale = max(ref[finite].abs().max().item(), torch.finfo(reference.dtype).tiny)
    return error / scale


class CheckEach(Instrument):
    """Run the reference interpreter before and after every pass; record the largest relative error the
    pass introduced as the stat `drift`, and fail when it exceeds `tolerance`.

    It runs on `inputs` (the caller's example inputs, which keep indices in range) when given, else on
    random inputs, one set per seed. A pass that changes results on purpose (`Pass.approximates`:
    precision lowering, quantization) has its drift recorded, not failed; the compiled module's
    `accuracy` measures it against float32."""

    checks = True

    def __init__(self, tolerance: float = 1e-5, seeds: Sequence[int] = (0,),
                 inputs: Sequence[torch.Tensor] | None = None) -> None:
        self.tolerance = tolerance
        self.seeds = tuple(seeds)
        self.given = None if inputs is None else list(inputs)
        self._inputs: list[list[torch.Tensor]] = []
        self._labels: list[str] = []
        self._expected: list[list[torch.Tensor]] = []
        self._signature: list[TensorType] = []

    def before_pipeline(self, graph: Graph) -> None:
        self._signature = [v.type for v in graph.inputs]
        if self.given is not None:
            self._inputs, self._labels = [self.given], ["the example inputs"]
        else:
            self._inputs = [random_inputs(graph, seed=seed) for seed in self.seeds]
            self._labels = [f"seed {seed}" for seed in self.seeds]
        try:
            self._expected = [run_graph(graph, *inputs) for inputs in self._inputs]
        except Exception as exc:
            raise DriftError(f"check-each: the input graph fails on {self._labels[0]} before any pass ran ({exc}); "
                             "random integers lie in [0, 4): give example inputs") from exc

    def after_pass(self, pass_: Pass, graph: Graph, record: PassRecord) -> None:
        if [v.type for v in graph.inputs] != self._signature:
            raise DriftError(f"check-each: '{pass_.name}' changed the graph's inputs")
        results = [run_graph(graph, *inputs) for inputs in self._inputs]
        drift, worst = 0.0, ""
        for label, expected, actual in zip(self._labels, self._expected, results, strict=True):
            if len(expected) != len(actual):
                raise DriftError(f"check-each: '{pass_.name}' changed the number of outputs "
                                 f"from {len(expected)} to {len(actual)}")
            for i, (ref, act) in enumerate(zip(expected, actual, strict=True)):
                error = relative_error(ref, act)
                if error > drift:
                    drift, worst = error, f"output {i} ({act.dtype}{list(act.shape)}) on {label}"
        record.stats["drift"] = drift
        if drift > self.tolerance and not pass_.approximates:
            raise DriftError(f"check-each: '{pass_.name}' changed the result: {worst} drifted by {drift:.3g} "
                             f"(relative; tolerance {self.tolerance:g})")
        self._expected = results


def instruments_for(dump_dir: str | os.PathLike[str] | None = None, print_after_all: bool = False,
                    print_after_change: bool = False, verify_each: bool = False,
                    check_each: bool = False, dump_onnx: bool = False,
                    check_inputs: Sequence[torch.Tensor] | None = None) -> list[Instrument]:
    """The instruments for the usual debugging switches (`dump_onnx` adds ONNX files to `dump_dir`;
    `check_inputs`, the graph's inputs for check-each, else random ones)."""
    instruments: list[Instrument] = []
    if verify_each:
        instruments.append(VerifyEach())
    if check_each:
        instruments.append(CheckEach(inputs=check_inputs))
    if print_after_all:
        instruments.append(PrintAfterAll())
    elif print_after_change:
        instruments.append(PrintAfterChange())
    if dump_dir is not None:
        instruments.append(DumpIR(dump_dir))
        if dump_onnx:
            instruments.append(DumpOnnx(dump_dir))
    return instruments


def dump_dir_from_env(explicit: str | None) -> str | None:
    """The dump folder: `explicit` if given, else `$HETEROPASS_DUMP_DIR` if set and not empty.

    The only place the variable is read; call it at the API boundary and pass the result down."""
    if explicit is not None:
        return explicit
    return os.environ.get(DUMP_DIR_ENV) or None
