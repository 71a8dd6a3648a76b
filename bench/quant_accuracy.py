"""Top-1 accuracy on scikit-learn's digits test split of an MLP and a CNN trained on its training split:
eager fp32, heteropass at every precision, PyTorch's dynamic int8 and ONNX Runtime's dynamic and static
int8 quantizers, all on the same trained model and the same 449 test images.

    .venv/bin/python bench/quant_accuracy.py [--only mlp,cnn] [--markdown accuracy.md]

Calibration (heteropass int8-static, ONNX Runtime static) uses the three 449-image batches of the training
split. The baselines quantize weights per output channel. ONNX Runtime's quantizers run with reduce_range
(7-bit weights), which its documentation recommends on AVX2 without VNNI and which PyTorch's x86 engine
also does: without it, u8s8 products saturate and the MLP's logits lose about 20 dB of SQNR here.
ONNX Runtime's dynamic quantizer handles MatMul but not Gemm, so the exported Gemms are rewritten as
MatMul + Add first (`gemm_to_matmul`), then ORT's recommended `quant_pre_process` runs. PyTorch's
quantize_dynamic quantizes nn.Linear only: the CNN's convolutions stay in fp32 there.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from script_setup import choose, restart_with_environment

if __name__ == "__main__":  # before `import torch` loads OpenMP, which reads OMP_* once
    restart_with_environment({"OMP_WAIT_POLICY": "passive"}, override=False)

import numpy as np
import torch
from checks import output_tensors
from torch import nn

PRECISIONS = ("fp32", "bf16", "fp16", "int8-weight", "int8-dynamic", "int8-static")
BACKENDS = ("numba", "reference")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters' and quantizers' progress lines, warnings and advice."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def export_onnx(model: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> Path:
    """`model` exported with torch.onnx.export (dynamo) at the shapes of `inputs`, as one file."""
    import onnx

    with quiet():
        program = torch.onnx.export(model, inputs, dynamo=True)
    onnx.save_model(program.model_proto, str(path))
    return path


def gemm_to_matmul(path: Path, out: Path) -> Path:
    """Rewrite every Gemm with a constant B (alpha = beta = 1, A not transposed) as MatMul + Add, so
    ONNX Runtime's dynamic quantizer, which handles MatMul only, sees the layer."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    initializers = {t.name: t for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or not plain or node.input[1] not in initializers:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        if attrs.get("transB", 0):
            weight = np.ascontiguousarray(weight.T)
        name = f"{node.input[1]}_kn"
        model.graph.initializer.append(numpy_helper.from_array(weight, name))
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [product], name=f"{node.name}_matmul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_add"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    onnx.save_model(model, str(out))
    return out


def ort_preprocess(path: Path, out: Path) -> Path:
    """The model ONNX Runtime's quantizers are meant to see: Gemms as MatMul + Add (`gemm_to_matmul`), then
    `quant_pre_process` (shape inference and ORT's graph optimizations, which fold constant transposes
    such as a tied LM head's into initializers)."""
    from onnxruntime.quantization import quant_pre_process

    matmul = gemm_to_matmul(path, out.with_suffix(".matmul.onnx"))
    with quiet():
        quant_pre_process(matmul, out, skip_symbolic_shape=True)
    return out


def ort_quantize_dynamic(path: Path, out: Path) -> Path:
    """ONNX Runtime dynamic int8 of the model at `path`, preprocessed: int8 weights per channel with 7-bit
    range, uint8 activations quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ready = ort_preprocess(path, out.with_suffix(".pre.onnx"))
    with quiet():
        quantize_dynamic(ready, out, per_channel=True, reduce_range=True, weight_type=QuantType.QInt8)
    return out


def ort_quantize_static(path: Path, out: Path, calibration: Sequence[tuple[torch.Tensor, ...]]) -> Path:
    """ONNX Runtime static int8 in QDQ form of the model at `path`, preprocessed: per-channel int8 weights
    with 7-bit range, int8 activations with min/max ranges from `calibration`."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    ready = ort_preprocess(path, out.with_suffix(".pre.onnx"))
    names = [i.name for i in ort.InferenceSession(str(ready), providers=["CPUExecutionProvider"]).get_inputs()]

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{n: t.numpy() for n, t in zip(names, batch, strict=True)} for batch in calibration])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    with quiet():
        quantize_static(ready, out, Batches(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return out


def ort_runner(path: Path, inputs: tuple[torch.Tensor, ...], threads: int = 1) -> Callable[[], list[np.ndarray]]:
    """A zero-argument callable running the ONNX model at `path` on `inputs` with ONNX Runtime."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {arg.name: t.numpy() for arg, t in zip(session.get_inputs(), inputs, strict=True)}
    return lambda: session.run(None, feed)


def torch_dynamic_int8(model: nn.Module) -> nn.Module:
    """PyTorch eager dynamic int8 (torch.ao.quantization.quantize_dynamic) of every nn.Linear, per channel."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with quiet():  # torch.ao.quantization's deprecation notice
        return quantize_dynamic(copy.deepcopy(model), {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def heteropass_compiled(model: nn.Module, inputs: tuple[torch.Tensor, ...], precision: str,
                        calibration: Sequence[tuple[torch.Tensor, ...]], options: dict[str, Any] | None = None) -> Any:
    """`heteropass.compile` at `precision` (with `precision_options`) on the numba and reference backends,
    calibrated on `calibration` where the precision mode uses it."""
    import heteropass as hp

    return hp.compile(model, inputs, precision=precision, calibration=list(calibration), backends=BACKENDS,
                      precision_options=options)


def first_tensor(result: Any) -> torch.Tensor:
    """The first output (the logits) as a float32 tensor."""
    return output_tensors(result)[0].float()


def error_text(reference: Iterable[torch.Tensor], actual: Iterable[torch.Tensor]) -> str:
    """ErrorMetrics (passes/precision_config.py) of `actual` against `reference`, as a short cell."""
    from heteropass.passes.precision_config import measure_error

    metrics = measure_error(list(reference), list(actual))
    sqnr = "inf" if np.isinf(metrics.sqnr_db) else f"{metrics.sqnr_db:.1f}"
    return f"max_rel {metrics.max_rel:.1e}, SQNR {sqnr} dB"


def systems(task: Any, onnx_dir: Path) -> list[tuple[str, Callable[[], Callable[[], Any]]]]:
    """(label, build) for every system under test; build returns a zero-argument predict on the test set."""
    model, x = task.model, task.x_test
    calibration = task.calibration(3)
    fp32_onnx = onnx_dir / f"{task.name}.onnx"

    def eager() -> Callable[[], Any]:
        return lambda: model(x)

    def heteropass(precision: str) -> Callable[[], Callable[[], Any]]:
        def build() -> Callable[[], Any]:
            compiled = heteropass_compiled(model, (x,), precision, calibration)
            report = compiled.accuracy
            if report is not None:
                print(f"    heteropass {precision}: calibration error {report}", flush=True)
            return lambda: compiled(x)

        return build

    def torch_dynamic() -> Callable[[], Any]:
        quantized = torch_dynamic_int8(model)
        return lambda: quantized(x)

    def ort(kind: str) -> Callable[[], Callable[[], Any]]:
        def build() -> Callable[[], Any]:
            if not fp32_onnx.exists():
                export_onnx(model, (x,), fp32_onnx)
            path = fp32_onnx
            if kind == "dynamic":
                path = ort_quantize_dynamic(fp32_onnx, onnx_dir / f"{task.name}.dynamic.onnx")
            elif kind == "static":
                path = ort_quantize_static(fp32_onnx, onnx_dir / f"{task.name}.static.onnx", calibration)
            return ort_runner(path, (x,))

        return build

    return [("eager fp32", eager), *((f"heteropass {p}", heteropass(p)) for p in PRECISIONS),
            ("torch quantize_dynamic int8", torch_dynamic), ("onnxruntime fp32", ort("fp32")),
            ("onnxruntime quantize_dynamic int8", ort("dynamic")), ("onnxruntime quantize_static int8", ort("static"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="mlp,cnn", help="comma-separated models: mlp, cnn")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown to this file")
    args = parser.parse_args()
    from heteropass.testing import digits

    trainers = {"mlp": digits.train_mlp, "cnn": digits.train_cnn}
    names = choose(parser, "--only", args.only, list(trainers))
    torch.set_num_threads(1)

    print(f"# {time.strftime('%Y-%m-%d')} {platform.processor() or platform.machine()} torch {torch.__version__}")
    rows = ["| model | system | top-1 % | vs eager fp32 (points) | logits vs eager fp32 |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as onnx_dir:
        for name in names:
            task = trainers[name]()
            with torch.inference_mode():
                reference = first_tensor(task.model(task.x_test))
            baseline = digits.top1(reference, task.y_test)
            for label, build in systems(task, Path(onnx_dir)):
                try:
                    predict = build()
                    with torch.inference_mode():
                        logits = first_tensor(predict())
                except Exception as exc:  # a mode that does not run is a result too
                    print(f"  {name} {label}: FAILED {type(exc).__name__}: {exc!s:.200}", flush=True)
                    rows.append(f"| {name} | {label} | failed: {type(exc).__name__} | - | - |")
                    continue
                accuracy = digits.top1(logits, task.y_test)
                error = error_text([reference], [logits])
                print(f"  {name} {label}: top-1 {accuracy:.2f}% ({accuracy - baseline:+.2f}) {error}", flush=True)
                rows.append(f"| {name} | {label} | {accuracy:.2f} | {accuracy - baseline:+.2f} | {error} |")
    table = "\n".join(rows)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
