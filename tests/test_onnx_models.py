"""Real ONNX models imported with `import_onnx`, compiled at O2 and compared with onnxruntime on the
same random inputs: the CNNs shipped with the onnx package ("light" models) and models exported from
PyTorch with `torch.onnx.export(dynamo=True)`.

The light models fill every weight with ConstantOfShape(0.02), so their outputs (and the stored
`*_output_0.pb`) are uniform and would hide most mistakes; `light_model` gives them random weights.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from heteropass.api import CompileOptions, optimize
from heteropass.ir.onnx_importer import OnnxProgram, import_onnx
from heteropass.ir.sample import random_inputs
from heteropass.testing import models

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT = sorted(path.stem.removeprefix("light_") for path in LIGHT_DIR.glob("light_*.onnx"))
# Over 2 s each on one core (import, O2, running 224x224 inputs in both engines).
SLOW_LIGHT = {"bvlc_alexnet", "densenet121", "inception_v2", "resnet50", "vgg19", "zfnet512"}

# name -> (model factory, example inputs); the dynamo exporter takes 3-6 s per model.
EXPORTED: dict[str, tuple[Callable[[], torch.nn.Module], Callable[[], tuple[torch.Tensor, ...]]]] = {
    "mlp": (models.mlp, models.mlp_inputs),
    "resnet_cnn": (models.resnet_cnn, models.resnet_inputs),
    "gpt2_style": (models.gpt2_style, models.gpt2_style_inputs),
    "hf_gpt2": (models.hf_gpt2, models.hf_gpt2_inputs),
    "hf_bert": (models.hf_bert, models.hf_bert_inputs),
}
FAST_EXPORTS = {"mlp", "resnet_cnn"}
_UNIFORM_ABOVE = 1 << 22


def light_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """The light model `name` with its ConstantOfShape weights replaced by random Constant nodes:
    He-scaled normal for weights of rank 2 and more, uniform in [-0.1, 0.1] for biases and in [0.5, 1.5]
    for batch-norm scales and variances (which must stay positive). Weights over `_UNIFORM_ABOVE`
    elements (the fully connected layers of alexnet, vgg19 and zfnet512) stay uniform, so the test
    needs megabytes instead of gigabytes; their random biases still make the outputs differ."""
    model = onnx.load(LIGHT_DIR / f"light_{name}.onnx")
    shapes = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    positive = {node.input[i] for node in model.graph.node if node.op_type == "BatchNormalization" for i in (1, 4)}
    rng = np.random.default_rng(seed)
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in shapes:
            continue
        shape = tuple(int(d) for d in shapes[node.input[0]])
        if np.prod(shape) > _UNIFORM_ABOVE:
            continue
        if len(shape) >= 2:
            data = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / np.prod(shape[1:])))
        elif node.output[0] in positive:
            data = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            data = rng.uniform(-0.1, 0.1, shape).astype(np.float32)
        node.CopyFrom(onnx.helper.make_node("Constant", [], [node.output[0]], name=node.name,
                                            value=onnx.numpy_helper.from_array(data)))
    return model


def torch_export(name: str) -> tuple[onnx.ModelProto, tuple[torch.Tensor, ...]]:
    """The test model `name` exported with the dynamo exporter (its progress output silenced), and its inputs."""
    factory, make_inputs = EXPORTED[name]
    model, inputs = factory(), make_inputs()
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            program = torch.onnx.export(model, inputs, dynamo=True, verbose=False)
    finally:
        logger.setLevel(level)
    assert program is not None
    return program.model_proto, inputs


def run_ort(model: onnx.ModelProto | bytes, names: Sequence[str], inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return session.run(None, {name: t.numpy() for name, t in zip(names, inputs, strict=True)})


def assert_matches(got: Sequence[torch.Tensor | np.ndarray], want: Sequence[np.ndarray], rtol: float = 1e-4) -> None:
    """Each output within `rtol` of the reference's largest magnitude; the reference must not be constant,
    which would hide wrong weights or wiring."""
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        g = g.numpy() if isinstance(g, torch.Tensor) else g
        assert (g.shape, g.dtype) == (w.shape, w.dtype), f"output {i}"
        assert np.ptp(w) > 0, f"output {i} of the reference is constant"
        error = np.abs(g.astype(np.float64) - w).max() / np.abs(w).max()
        assert error <= rtol, f"output {i}: max error {error:.3g} of max |reference|"


def compile_and_compare(program: OnnxProgram, model: onnx.ModelProto, inputs: Sequence[torch.Tensor]) -> None:
    _, executable = optimize(program.graph, CompileOptions(opt_level=2))
    assert_matches(executable(*inputs), run_ort(model, program.input_names, inputs))


def _marked(names: Sequence[str], fast: set[str] | frozenset[str]) -> list:  # type: ignore[type-arg]
    return [pytest.param(n, marks=() if n in fast else pytest.mark.slow) for n in names]


@pytest.mark.parametrize("name", _marked(LIGHT, set(LIGHT) - SLOW_LIGHT))
def test_light_cnn_matches_onnxruntime(name: str) -> None:
    model = light_model(name)
    program = import_onnx(model)
    assert program.graph.op_counts().get("opaque", 0) == 0
    compile_and_compare(program, model, random_inputs(program.graph, seed=1))


@pytest.mark.parametrize("name", _marked(list(EXPORTED), FAST_EXPORTS))
def test_torch_export_matches_onnxruntime(name: str) -> None:
    model, inputs = torch_export(name)
    program = import_onnx(model)
    assert program.graph.op_counts().get("opaque", 0) == 0
    compile_and_compare(program, model, inputs)


def test_light_models_are_all_found() -> None:
    assert {"bvlc_alexnet", "resnet50", "squeezenet", "densenet121", "inception_v1"} <= set(LIGHT)
