"""The per-layer error report and the fallback loop of the int8 passes, on the MLP quantized three ways;
also the Before/Expected check the quantization passes' tests share."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import pytest
import torch
from hypothesis import event

from heteropass.ir import Graph, parse_graph, run_graph, verify
from heteropass.ir.compare import assert_graphs_equal
from heteropass.ir.sample import random_inputs
from heteropass.ir.torch_importer import import_module
from heteropass.passes.base import PassResult
from heteropass.passes.calibration import ValueRecorder
from heteropass.passes.precision_config import ErrorMetrics, PrecisionConfig, measure_batches, measure_error
from heteropass.passes.quantize_dynamic import QuantizeDynamicPass
from heteropass.passes.quantize_static import QuantizeStaticPass
from heteropass.passes.quantize_weights import QuantizeWeightsPass
from heteropass.testing import models
from heteropass.testing.assertions import assert_backend_matches_reference

QuantPass = QuantizeWeightsPass | QuantizeDynamicPass | QuantizeStaticPass
MODES = {"int8-weight": QuantizeWeightsPass, "int8-dynamic": QuantizeDynamicPass, "int8-static": QuantizeStaticPass}


def check_quantization(pass_: QuantPass, before: str, expected: str, max_rel: float,
                       inputs: list[torch.Tensor] | None = None) -> PassResult:
    """Run `pass_` on `before`; check the result against `expected`, the verifier, the float graph (outputs
    within `max_rel` on `inputs`, default random ones) and a second run that must change nothing."""
    graph = parse_graph(before)
    original = graph.clone()
    result = pass_(graph)
    verify(graph)
    assert_graphs_equal(graph, expected)
    inputs = inputs if inputs is not None else random_inputs(original)
    error = measure_error(run_graph(original, *inputs), run_graph(graph, *inputs))
    assert error.max_rel <= max_rel, error
    assert not pass_(graph).modified
    return result


@functools.cache
def _imported_mlp() -> Graph:
    return import_module(models.mlp(), models.mlp_inputs()).graph


def check_valid_and_runs(pass_: QuantPass, graph: Graph, inputs: list[torch.Tensor]) -> PassResult:
    """Apply `pass_` to a copy of `graph`: the result verifies, keeps the signature, runs to outputs of the
    same types, finite where the float ones are, and a second run changes nothing."""
    work = graph.clone()
    result = pass_(work)
    verify(work)
    assert [v.type for v in work.inputs] == [v.type for v in graph.inputs]
    assert [v.type for v in work.outputs] == [v.type for v in graph.outputs]
    for want, got in zip(run_graph(graph, *inputs), run_graph(work, *inputs), strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        if want.is_floating_point():
            assert bool(got[want.isfinite()].isfinite().all())
    assert not pass_(work).modified
    event("quantized" if result.modified else "left alone")
    return result


def mlp_graph() -> Graph:
    """The MLP as imported (once; each caller gets its own copy)."""
    return _imported_mlp().clone()


CALIBRATION = tuple(models.mlp_inputs(seed=s) for s in range(16))  # batches of 8 rows, as imported
HELD_OUT = [models.mlp_inputs(seed=s) for s in range(100, 108)]


def _quantize(mode: str, **config: object) -> tuple[Graph, PassResult]:
    graph = mlp_graph()
    result = MODES[mode](PrecisionConfig(precision=mode, calibration=CALIBRATION, **config))(graph)  # type: ignore[arg-type]
    verify(graph)
    return graph, result


def _error_vs_float(graph: Graph, batches: Sequence[tuple[torch.Tensor, ...]]) -> ErrorMetrics:
    reference = mlp_graph()
    return measure_batches([run_graph(reference, *b) for b in batches], [run_graph(graph, *b) for b in batches])


# Held-out error limits: one int8 rounding costs up to 1/254 of a row's range per weight (and per
# activation for dynamic/static); three layers add up, and static ranges come from other batches, so
# held-out inputs beyond them clip. Measured: 9.3e-3 / 1.7e-2 / 1.6e-2 max_rel, 43.5 / 37.2 / 36.4 dB.
LIMITS = {"int8-weight": 2e-2, "int8-dynamic": 3e-2, "int8-static": 4e-2}


@pytest.mark.parametrize("mode", list(MODES))
def test_mlp_quantized_three_ways_stays_close(mode: str, record_property: pytest.RecordProperty) -> None:
    graph, result = _quantize(mode)
    error = _error_vs_float(graph, HELD_OUT)
    record_property("summary", f"MLP {mode}: held-out {error}")
    assert error.max_rel <= LIMITS[mode] and error.sqnr_db >= 30 and error.cosine > 0.9995, error
    assert result.stats["nodes_quantized"] == 3 and result.stats["nodes_excluded"] == 0
    assert result.stats["weight_bytes_before"] == 4 * (128 * 64 + 128 * 128 + 10 * 128)
    assert "linear" not in graph.op_counts() or mode == "int8-static"
    assert_backend_matches_reference(graph, inputs=list(HELD_OUT[0]))  # the reference backend runs it as is


@pytest.mark.parametrize("method, limit", [("percentile", 4e-2), ("entropy", 1e-1)])
def test_mlp_static_with_clipping_calibration(method: str, limit: float) -> None:
    graph, _ = _quantize("int8-static", calibration_method=method)
    error = _error_vs_float(graph, HELD_OUT)
    # Clipping trades the largest errors for smaller typical ones, so max_rel gets a looser limit.
    assert error.max_rel <= limit and error.sqnr_db >= 25, error


def _node_values(graph: Graph, name: str) -> list[list[torch.Tensor]]:
    values: list[list[torch.Tensor]] = []
    for batch in CALIBRATION:
        ValueRecorder(graph, [name], lambda _, x: values.append([x])).run(*batch)
    return values


def test_report_measures_each_quantized_node() -> None:
    graph, result = _quantize("int8-weight")
    reference = mlp_graph()
    layers = [n for n in result.notes if n.startswith("quantized %")]
    assert len(layers) == 3
    for node in graph.nodes:
        if node.op == "linear_weight_int8":
            name = node.name
            metrics = measure_batches(_node_values(reference, name), _node_values(graph, name))
            assert f"quantized %{name}: {metrics}" in layers
    output = _error_vs_float(graph, CALIBRATION)
    assert result.stats["output_max_rel"] == output.max_rel
    assert result.notes[-1] == f"outputs over 16 calibration batches with 3 nodes quantized: {output}"


def test_no_calibration_no_report() -> None:
    result = QuantizeWeightsPass(PrecisionConfig(precision="int8-weight"))(mlp_graph())
    assert result.notes == [] and "output_max_rel" not in result.stats
    assert result.stats["nodes_quantized"] == 3


def _alone_errors(mode: str, names: list[str]) -> dict[str, float]:
    """The calibration error of the outputs with only one node quantized (the others in keep_nodes)."""
    errors = {}
    for name in names:
        graph, _ = _quantize(mode, keep_nodes=set(names) - {name})
        errors[name] = _error_vs_float(graph, CALIBRATION).max_rel
    return errors


@pytest.mark.parametrize("mode, tolerance", [("int8-weight", 5e-3), ("int8-dynamic", 1e-2), ("int8-static", 1e-2)])
def test_fallback_keeps_the_most_damaging_nodes_in_float(mode: str, tolerance: float,
                                                         record_property: pytest.RecordProperty) -> None:
    graph, result = _quantize(mode, tolerance=tolerance)
    excluded, quantized = result.stats["nodes_excluded"], result.stats["nodes_quantized"]
    record_property("summary", f"MLP {mode} tolerance {tolerance}: {excluded} of 3 nodes kept in fp32")
    assert excluded >= 1 and quantized + excluded == 3
    assert result.stats["output_max_rel"] <= tolerance
    assert _error_vs_float(graph, CALIBRATION).max_rel == result.stats["output_max_rel"]
    kept = [n for n in result.notes if n.startswith("kept %")]
    assert len(kept) == excluded
    assert all("in fp32: quantizing it alone costs sqnr" in n and f"> tolerance {tolerance:.3g}" in n for n in kept)
    # The first node put back is the one whose quantization alone hurts the outputs most.
    alone = _alone_errors(mode, ["0", "2", "4"])
    assert kept[0].startswith(f"kept %{max(alone, key=alone.__getitem__)} in fp32")
    for note in kept:
        name = note.split()[1][1:]
        assert next(n for n in graph.nodes if n.name == name).op == "linear"


def test_tight_tolerance_leaves_the_graph_in_float() -> None:
    graph, result = _quantize("int8-weight", tolerance=1e-9)
    assert not result.modified and result.stats["nodes_excluded"] == 3
    assert_graphs_equal(graph, mlp_graph())
    assert result.notes[-1].startswith("outputs over 16 calibration batches with 0 nodes quantized: max_rel 0.00e+00")


def test_loose_tolerance_excludes_nothing() -> None:
    _, result = _quantize("int8-dynamic", tolerance=0.5)
    assert result.stats["nodes_excluded"] == 0 and result.stats["nodes_quantized"] == 3
    assert not any(n.startswith("kept %") for n in result.notes)
