"""ONNX in and out: a model imported, optimized at O2 and exported again computes in onnxruntime what
the original model computes; and a PyTorch model exported to ONNX and the same model traced through
torch.export optimize to the same IR modulo names."""

from __future__ import annotations

import onnx
import pytest
import torch

from heteropass.api import CompileOptions, optimize
from heteropass.ir import Graph, Value, format_graph
from heteropass.ir.compare import assert_graphs_equal
from heteropass.ir.onnx_exporter import export_onnx
from heteropass.ir.onnx_importer import import_onnx
from heteropass.ir.sample import random_inputs
from heteropass.ir.torch_importer import import_module

from .test_onnx_models import (
    EXPORTED,
    FAST_EXPORTS,
    LIGHT,
    SLOW_LIGHT,
    assert_matches,
    light_model,
    run_ort,
    torch_export,
)

# Their fully connected weights stay uniform (see `light_model`): heteropass holds them as expanded
# scalars, but exporting writes them out in full (100-400 MB), which is too slow for a test.
_HUGE_WHEN_EXPORTED = {"bvlc_alexnet", "vgg19", "zfnet512"}


def _round_trip(model: onnx.ModelProto, inputs: list[torch.Tensor] | None = None) -> None:
    program = import_onnx(model)
    inputs = random_inputs(program.graph, seed=2) if inputs is None else inputs
    result, _ = optimize(program.graph, CompileOptions(opt_level=2))
    exported = export_onnx(result.graph, input_names=program.input_names, output_names=program.output_names)
    onnx.checker.check_model(exported, full_check=True)
    assert [v.name for v in exported.graph.input] == program.input_names
    assert [v.name for v in exported.graph.output] == program.output_names
    assert_matches(run_ort(exported, program.input_names, inputs), run_ort(model, program.input_names, inputs))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_LIGHT else n
                                  for n in LIGHT if n not in _HUGE_WHEN_EXPORTED])
def test_light_cnn_round_trips(name: str) -> None:
    _round_trip(light_model(name))


@pytest.mark.parametrize("name", [n if n in FAST_EXPORTS else pytest.param(n, marks=pytest.mark.slow)
                                  for n in EXPORTED])
def test_torch_export_round_trips(name: str) -> None:
    model, inputs = torch_export(name)
    _round_trip(model, list(inputs))


def _constant_pairs(a: Graph, b: Graph) -> list[tuple[Value, Value]]:
    """The constants of two structurally equal graphs paired by where they are first used."""
    pairs: dict[int, tuple[Value, Value]] = {}
    for node_a, node_b in zip(a.nodes, b.nodes, strict=True):
        for x, y in zip(node_a.inputs, node_b.inputs, strict=True):
            if x.const is not None:
                pairs.setdefault(id(x), (x, y))
    return list(pairs.values())


def _optimized(graph: Graph) -> Graph:
    return optimize(graph, CompileOptions(opt_level=2))[0].graph


# The importers spell some ops differently (a global average pool, a two-dim permute, Gather vs
# embedding); simplify-algebra brings both to one spelling, and the ONNX importer reads float32
# attributes back as their shortest decimal (eps 1e-05, not 9.999999747378752e-06). They differ on
# invalid input only: an embedding's take raises on a negative id (wrap=false), Gather's wraps it.
@pytest.mark.parametrize("name", ["mlp", "resnet_cnn", pytest.param("gpt2_style", marks=pytest.mark.slow)])
def test_onnx_export_and_torch_export_optimize_to_the_same_ir(name: str) -> None:
    factory, make_inputs = EXPORTED[name]
    from_onnx = _optimized(import_onnx(torch_export(name)[0]).graph)
    from_torch = _optimized(import_module(factory(), make_inputs()).graph)
    # Structure first (large constants compare by type only); the ONNX exporter folds batch norms
    # itself, rounding differently from fold-batchnorm-into-conv, so data compares with a tolerance.
    assert_graphs_equal(from_onnx, format_graph(from_torch).replace(" {wrap=false}", ""))
    for x, y in _constant_pairs(from_onnx, from_torch):
        torch.testing.assert_close(x.const, y.const, rtol=1e-5, atol=1e-6, msg=f"%{x.name} vs %{y.name}")

