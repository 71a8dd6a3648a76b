"""`heteropass.compile(..., precision=...)` end to end: the four model families in every precision, the
error report, the tolerance, dumps, the command line and torch.compile."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.utils._pytree import tree_leaves

import heteropass as hp
from heteropass.cli import main
from heteropass.passes.precision_config import PRECISIONS, PrecisionConfig, measure_error
from heteropass.testing import models

MODELS: dict[str, tuple[Callable[[], torch.nn.Module], Callable[..., tuple]]] = {
    "mlp": (models.mlp, models.mlp_inputs),
    "cnn": (models.resnet_cnn, models.resnet_inputs),
    "gpt2": (models.hf_gpt2, models.hf_gpt2_inputs),
    "bert": (models.hf_bert, models.hf_bert_inputs),
}
# Largest max-relative error against float32 (relative to the output's largest magnitude). bf16 keeps 8
# mantissa bits (rounding 2^-9 per operand), fp16 11 bits; int8 has 127 steps per channel or tensor. The
# measured errors on these models are 3e-4..5e-3 (bf16), 7e-5..7e-4 (fp16), 6e-4..1.1e-2 (int8): the bounds
# leave 3-5x room for other seeds.
BOUNDS = {"bf16": 2e-2, "fp16": 3e-3, "int8-weight": 3e-2, "int8-dynamic": 5e-2, "int8-static": 5e-2}
LOWERED_OPS = {"bf16": "cast", "fp16": "cast", "int8-weight": "linear_weight_int8",
               "int8-dynamic": "linear_dynamic_int8", "int8-static": "dequantize"}


def _ops(graph: hp.ir.Graph) -> set[str]:
    found = set()
    for node in graph.nodes:
        found.add(node.op)
        if node.op == "fused":
            found |= _ops(node.attrs["body"])
    return found


@pytest.mark.parametrize("precision", [p for p in PRECISIONS if p != "fp32"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_compiles_in_every_precision_within_its_bound(name: str, precision: str) -> None:
    make, inputs = MODELS[name]
    model = make()
    cm = hp.compile(model, inputs(seed=1), precision=precision, calibration=[inputs(seed=s) for s in (2, 3, 4)])
    assert cm.accuracy is not None and cm.accuracy.max_rel <= BOUNDS[precision]
    assert f"precision {precision}: error vs float32 on 3 calibration batch(es): max_rel" in cm.report
    lowered = LOWERED_OPS[precision]
    if name == "cnn" and precision.startswith("int8-") and precision != "int8-static":
        lowered = "dequantize" if precision == "int8-weight" else "conv"  # dynamic int8 leaves convolutions
    assert lowered in _ops(cm.graph)
    held_out = inputs(seed=9)
    with torch.no_grad():
        expected = [t for t in tree_leaves(model(*held_out)) if isinstance(t, torch.Tensor)]
    actual = [t for t in tree_leaves(cm(*held_out)) if isinstance(t, torch.Tensor)]
    assert [t.dtype for t in actual] == [t.dtype for t in expected]  # outputs keep the model's types
    assert measure_error(expected, actual).max_rel <= BOUNDS[precision]


def test_fp32_is_untouched_and_reports_no_accuracy() -> None:
    cm = hp.compile(models.mlp(), models.mlp_inputs(), precision="fp32")
    assert cm.accuracy is None and "precision" not in cm.report
    weight_only = hp.compile(models.mlp(), models.mlp_inputs(), precision="int8-weight")
    assert "on 1 example input batch(es)" in weight_only.report


def test_tolerance_keeps_sensitive_nodes_in_float32_and_says_why(tmp_path: Path) -> None:
    model, batches = models.mlp(), [models.mlp_inputs(seed=s) for s in range(4)]
    loose = hp.compile(model, batches[0], precision="int8-dynamic", calibration=batches)
    tight = hp.compile(model, batches[0], precision="int8-dynamic", calibration=batches, tolerance=4e-3,
                       dump_dir=str(tmp_path))
    assert tight.accuracy.max_rel <= 4e-3 < loose.accuracy.max_rel
    float_linears = [n for n in tight.graph.nodes
                     if n.op == "linear" or (n.op == "fused" and "linear" in _ops(n.attrs["body"]))]
    assert float_linears
    summary = json.loads((tmp_path / "summary.json").read_text())
    notes = [note for p in summary["passes"] if p["name"] == "quantize-dynamic" for note in p["notes"]]
    assert any(note.startswith("kept %") and "tolerance" in note for note in notes)
    report = json.loads((tmp_path / "precision.json").read_text())
    assert report["precision"] == "int8-dynamic" and report["error_vs_fp32"]["max_rel"] <= 4e-3
    assert report["batches"] == 4 and report["inputs"] == "calibration"


def test_bf16_tolerance_without_calibration_measures_on_the_example_inputs() -> None:
    cm = hp.compile(models.mlp(), models.mlp_inputs(), precision="bf16", tolerance=1e-6)
    assert cm.accuracy.max_rel <= 1e-6  # nothing can be lowered that tightly: every product stays f32
    assert "cast" not in _ops(cm.graph) and "on 1 calibration batch(es)" in cm.report


def test_bad_precision_requests_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        hp.compile(models.mlp(), models.mlp_inputs(), precision="int4")
    with pytest.raises(ValueError, match="int8-static' needs calibration"):
        hp.compile(models.mlp(), models.mlp_inputs(), precision="int8-static")
    with pytest.raises(ValueError, match="granularity"):
        hp.compile(models.mlp(), models.mlp_inputs(), precision="int8-dynamic",
                   precision_options={"granularity": "column"})
    with pytest.raises(ValueError, match=r"unknown precision_options \['tolerance'\]"):
        hp.compile(models.mlp(), models.mlp_inputs(), precision="bf16", precision_options={"tolerance": 0.1})
    with pytest.raises(ValueError, match=r"allow/deny name unknown ops \['Linear'\]"):
        hp.compile(models.mlp(), models.mlp_inputs(), precision="int8-weight", precision_options={"deny": ["Linear"]})
    with pytest.raises(ValueError, match="'block_size' applies to precision int8-weight, not 'int8-dynamic'"):
        hp.compile(models.mlp(), models.mlp_inputs(), precision="int8-dynamic", precision_options={"block_size": 8})
    with pytest.raises(ValueError, match="'allow' applies to precision bf16 / fp16"):
        hp.compile(models.mlp(), models.mlp_inputs(), precision="int8-dynamic", precision_options={"allow": ["conv"]})
    with pytest.raises(ValueError, match=r"calibration batch 1: input 0 'x' expects f32\[8,64\], got f32\[4,64\]"):
        hp.compile(models.mlp(), models.mlp_inputs(), precision="int8-static",
                   calibration=[models.mlp_inputs(), models.mlp_inputs(batch=4)])


@pytest.mark.parametrize("precision", ["int8-weight", "int8-dynamic", "int8-static"])
def test_torch_compile_backend_takes_a_precision(precision: str, tmp_path: Path) -> None:
    torch._dynamo.reset()
    model, x = models.mlp(), models.mlp_inputs()
    request: str | PrecisionConfig = precision
    if precision == "int8-static":  # calibration inputs in the compiled graph's input order
        request = PrecisionConfig(precision, calibration=tuple(models.mlp_inputs(seed=s) for s in (1, 2, 3)))
    compiled = torch.compile(model, backend="heteropass", dynamic=False,
                             options={"precision": request, "dump_dir": str(tmp_path)})
    with torch.no_grad():
        expected, actual = model(x[0]), compiled(x[0])
    error = measure_error([expected], [actual]).max_rel
    assert 0 < error <= BOUNDS[precision]  # quantized: not float32's result
    placed = (tmp_path / "graph_000" / "placed.ir").read_text()
    assert LOWERED_OPS[precision] in placed and "is not a constant" not in placed
    with torch.no_grad():
        next(model.parameters()).mul_(2)  # the weights were frozen into the graph: an in-place update needs a recompile
        with pytest.raises(RuntimeError, match="frozen into the compiled graph, changed in place"):
            compiled(x[0])


def test_torch_compile_precision_warns_on_a_training_graph() -> None:
    torch._dynamo.reset()
    model, x = models.mlp(), models.mlp_inputs()
    compiled = torch.compile(model, backend="heteropass", dynamic=False, options={"precision": "int8-weight"})
    with pytest.warns(UserWarning, match="applies to inference graphs only"):
        actual = compiled(x[0])
    torch.testing.assert_close(actual, model(x[0]))


class KeywordMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = torch.nn.Linear(16, 32), torch.nn.Linear(32, 4)

    def forward(self, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x).relu() + shift)


def test_calibration_batches_take_keyword_arguments() -> None:
    torch.manual_seed(0)
    model = KeywordMLP().eval()
    batches = [(torch.randn(4, 16), torch.randn(4, 32) * 3) for _ in range(3)]
    example = {"x": torch.randn(4, 16), "shift": torch.randn(4, 32)}
    as_dicts = hp.compile(model, (), example_kwargs=example, precision="int8-static",
                          calibration=[{"x": x, "shift": shift} for x, shift in batches])
    as_pairs = hp.compile(model, (example["x"],), example_kwargs={"shift": example["shift"]},
                          precision="int8-static", calibration=[((x,), {"shift": shift}) for x, shift in batches])
    # Calibrated on the example's (smaller) shift instead, the activation scales differ.
    on_example = hp.compile(model, (example["x"],), example_kwargs={"shift": example["shift"]},
                            precision="int8-static", calibration=[((x,), {"shift": example["shift"]})
                                                                  for x, _ in batches])
    x, shift = batches[1]
    with torch.no_grad():
        expected = model(x, shift=shift)
    by_dicts, by_pairs = as_dicts(x=x, shift=shift), as_pairs(x, shift=shift)
    assert measure_error([expected], [by_dicts]).max_rel <= BOUNDS["int8-static"]
    torch.testing.assert_close(by_dicts, by_pairs)
    assert not torch.equal(on_example(x, shift=shift), by_pairs)
    with pytest.raises(ValueError, match=r"calibration batch 0 lacks the keyword tensor\(s\) \['shift'\]"):
        hp.compile(model, (example["x"],), example_kwargs={"shift": example["shift"]}, precision="int8-static",
                   calibration=[(x,)])


class DictInput(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(16, 8)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.linear(batch["x"])


def test_a_dict_batch_is_the_one_argument_of_a_model_compiled_without_keywords() -> None:
    torch.manual_seed(0)
    model, batches = DictInput().eval(), [{"x": torch.randn(4, 16)} for _ in range(3)]
    compiled = hp.compile(model, (batches[0],), precision="int8-static", calibration=batches)
    with torch.no_grad():
        assert measure_error([model(batches[1])], [compiled(batches[1])]).max_rel <= BOUNDS["int8-static"]


def test_precision_json_is_valid_json_when_the_result_is_exact(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.ReLU())
    hp.compile(model, (torch.randn(4, 8),), precision="int8-weight", dump_dir=str(tmp_path))  # nothing to lower

    def reject(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    report = json.loads((tmp_path / "precision.json").read_text(), parse_constant=reject)
    assert report["error_vs_fp32"]["sqnr_db"] == "inf" and report["error_vs_fp32"]["max_rel"] == 0.0


def test_command_line_lowers_and_prints_the_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mlp.onnx"
    hp.compile(models.mlp(), models.mlp_inputs()).save_onnx(str(path))
    assert main(["compile", str(path), "--precision", "int8-static", "--calibration-batches", "2"]) == 0
    printed = capsys.readouterr().out
    assert "quantize-static" in printed and "precision int8-static: error vs float32 on 2 random batch(es)" in printed
