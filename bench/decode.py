"""Batch-1 decode step of a GPT-2-style and a Llama-style model (KV cache of 128 past positions as inputs)
and the 1024-4096-4096-1024 GELU MLP at batch 1 and 64, where weight bytes dominate: eager fp32, PyTorch
dynamic int8, ONNX Runtime fp32 and dynamic int8, heteropass at fp32 / bf16 / int8-weight (16-bit rounded
activations, and float32 ones: -a32) / int8-dynamic.
One thread (OMP_NUM_THREADS=1, OMP_WAIT_POLICY=passive, torch.set_num_threads(1), ORT intra-op 1), medians
of repeated runs, ratios over eager fp32 timed alternately with each system (the machine is shared, so
both see the same load), and the error of all outputs against eager fp32 (`measure_error`: max_rel
over the reference's largest magnitude, SQNR). The error is checked before timing: a system whose outputs
differ in count or shape, or whose max_rel is NaN or above its precision's bar (`TOLERANCES`; 1e-4 for
float32), gets a "failed: wrong (...)" row and no ratio.

    .venv/bin/python bench/decode.py [--repeats 20] [--only gpt2-decode,llama-decode,mlp-b1,mlp-b64]
                                     [--systems torch-dynamic-int8,onnxruntime,...] [--markdown decode.md]

PyTorch's quantize_dynamic replaces nn.Linear only; GPT-2's projections are transformers `Conv1D`s, so
for that baseline they are first swapped for equal nn.Linear layers (`conv1d_as_linear`). ONNX Runtime's
dynamic quantizer runs on the model exported with torch.onnx.export, Gemms rewritten as MatMul + Add and
preprocessed with quant_pre_process, with 7-bit weights (see quant_accuracy.py); the export happens
once per workload and its time counts in the build of the first ONNX Runtime system.
"""

from __future__ import annotations

import argparse
import copy
import gc
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from script_setup import choose, restart_with_environment

if __name__ == "__main__":  # one thread, set before `import torch` loads OpenMP, which reads OMP_* once
    restart_with_environment({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1",
                              "OMP_WAIT_POLICY": "passive"})

import torch
from checks import FP32_TOLERANCE, WrongOutputs, output_tensors
from quant_accuracy import (
    export_onnx,
    heteropass_compiled,
    ort_quantize_dynamic,
    ort_runner,
    torch_dynamic_int8,
)
from run import median_ms
from runners import Runner, eager, timed_build
from torch import nn
from workloads import WideMLP

# max_rel against eager fp32 above which a system's outputs are wrong, by the precision in its name; the
# int8 systems reach 9e-2 (PyTorch's on Llama), bf16 1.3e-2, float32 ones 1e-6
TOLERANCES = {"int8": 0.25, "bf16": 5e-2}


@dataclass(frozen=True)
class DecodeWorkload:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[nn.Module], tuple[torch.Tensor, ...]]


def workloads() -> list[DecodeWorkload]:
    from heteropass.testing import decode_models

    def mlp() -> nn.Module:
        torch.manual_seed(0)
        return WideMLP().eval()

    return [
        DecodeWorkload("gpt2-decode", decode_models.gpt2_decode, decode_models.decode_inputs),
        DecodeWorkload("llama-decode", decode_models.llama_decode, decode_models.decode_inputs),
        DecodeWorkload("mlp-b1", mlp, lambda _: (torch.randn(1, 1024, generator=torch.Generator().manual_seed(1)),)),
        DecodeWorkload("mlp-b64", mlp, lambda _: (torch.randn(64, 1024, generator=torch.Generator().manual_seed(1)),)),
    ]


def conv1d_as_linear(model: nn.Module) -> nn.Module:
    """A copy of `model` with every transformers Conv1D (y = x @ W + b, W [in, out]) replaced by the equal
    nn.Linear, so that PyTorch's quantize_dynamic sees GPT-2's projections."""
    from transformers.pytorch_utils import Conv1D

    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                linear = nn.Linear(child.weight.shape[0], child.weight.shape[1])
                linear.weight.data = child.weight.data.t().contiguous()
                linear.bias.data = child.bias.data.clone()
                setattr(parent, name, linear)
    return model


def torch_dynamic(model: nn.Module, inputs: tuple[torch.Tensor, ...], threads: int) -> Callable[[], Any]:
    return eager(torch_dynamic_int8(conv1d_as_linear(model)), inputs, threads)


def onnxruntime(quantize: bool, folder: Path) -> Runner:
    """ONNX Runtime on the model exported once into `folder` (one folder per workload), optionally
    quantized with its dynamic int8 quantizer."""

    def runner(model: nn.Module, inputs: tuple[torch.Tensor, ...], threads: int) -> Callable[[], Any]:
        path = folder / "model.onnx"
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            export_onnx(model, inputs, path)
        if quantize:
            path = ort_quantize_dynamic(path, folder / "model.int8.onnx")
        return ort_runner(path, inputs, threads)

    return runner


def heteropass(precision: str, options: dict[str, Any] | None = None) -> Runner:
    def runner(model: nn.Module, inputs: tuple[torch.Tensor, ...], threads: int) -> Callable[[], Any]:
        compiled = heteropass_compiled(model, inputs, precision, [inputs], options)

        def run() -> Any:
            with torch.inference_mode():
                return compiled(*inputs)

        return run

    return runner


def systems(folder: Path) -> dict[str, Runner]:
    """The systems compared with eager fp32, by name; ONNX Runtime keeps its export in `folder`."""
    return {
        "torch-dynamic-int8": torch_dynamic,
        "onnxruntime": onnxruntime(False, folder),
        "onnxruntime-dynamic-int8": onnxruntime(True, folder),
        **{f"heteropass-{p}": heteropass(p) for p in ("fp32", "bf16", "int8-weight", "int8-dynamic")},
        "heteropass-int8-weight-a32": heteropass("int8-weight", {"activation_bits": 32}),
    }


def tolerance(system: str) -> float:
    """The max_rel against eager fp32 above which `system`'s outputs are wrong, by the precision in its name."""
    return next((bar for precision, bar in TOLERANCES.items() if precision in system), FP32_TOLERANCE)


def checked_error_cells(reference: list[torch.Tensor], actual: Any, bar: float) -> tuple[str, str]:
    """max_rel and SQNR (dB) of all outputs against the reference, as `measure_error` pools them; WrongOutputs
    when the output counts or shapes differ, or max_rel is above `bar` or NaN."""
    from heteropass.passes.precision_config import measure_error

    try:
        metrics = measure_error(reference, [t.float() for t in output_tensors(actual)])
    except ValueError as exc:  # output count or shape
        raise WrongOutputs(str(exc)) from None
    if not metrics.max_rel <= bar:
        raise WrongOutputs(f"max_rel {metrics.max_rel:.1e} > {bar:g}")
    return f"{metrics.max_rel:.1e}", "inf" if metrics.sqnr_db == float("inf") else f"{metrics.sqnr_db:.1f}"


def paired_ms(baseline: Callable[[], Any], candidate: Callable[[], Any], repeats: int,
              min_seconds: float = 0.5) -> tuple[float, float]:
    """Median milliseconds of `baseline` and `candidate` timed alternately, so that both see the same load
    on a shared machine and their ratio stays meaningful when the load drifts."""
    for _ in range(3):
        baseline(), candidate()
    times: tuple[list[float], list[float]] = ([], [])
    deadline = time.perf_counter() + min_seconds
    while len(times[1]) < repeats or time.perf_counter() < deadline:
        for run, samples in zip((baseline, candidate), times, strict=True):
            start = time.perf_counter()
            run()
            samples.append((time.perf_counter() - start) * 1e3)
        if len(times[1]) >= 10 * repeats:
            break
    return statistics.median(times[0]), statistics.median(times[1])


def bench_workload(workload: DecodeWorkload, names: list[str], folder: Path, repeats: int) -> list[str]:
    """Table rows of `workload`: eager fp32 alone, then each system timed alternately with eager fp32."""
    model = workload.build()
    inputs = workload.inputs(model)
    with torch.inference_mode():
        reference = [t.float() for t in output_tensors(model(*inputs))]
    baseline = eager(model, inputs, 1)
    eager_ms = median_ms(baseline, repeats)
    print(f"  {workload.name} eager: {eager_ms:.3f} ms", flush=True)
    rows = [f"| {workload.name} | eager fp32 | {eager_ms:.2f} | {eager_ms:.2f} | 1.00x | 0 | inf | 0.0 |"]
    runners = systems(folder)
    for name in names:
        try:
            run, build_s = timed_build(runners[name], model, inputs, 1)
            max_rel, sqnr = checked_error_cells(reference, run(), tolerance(name))  # before timing
            paired_eager_ms, ms = paired_ms(baseline, run, repeats)
        except Exception as exc:  # a system that cannot run a workload, or runs it wrongly, is a result too
            reason = f"wrong ({exc})" if isinstance(exc, WrongOutputs) else type(exc).__name__
            print(f"  {workload.name} {name}: FAILED {reason}: {exc!s:.300}", flush=True)
            rows.append(f"| {workload.name} | {name} | failed: {reason} | - | - | - | - | - |")
            continue
        finally:
            run = None  # type: ignore[assignment]
            gc.collect()
        ratio = paired_eager_ms / ms
        print(f"  {workload.name} {name}: {ms:.3f} ms (eager {paired_eager_ms:.3f}) {ratio:.2f}x max_rel {max_rel} "
              f"SQNR {sqnr} dB build {build_s:.1f} s", flush=True)
        rows.append(f"| {workload.name} | {name} | {ms:.2f} | {paired_eager_ms:.2f} | {ratio:.2f}x | {max_rel} | "
                    f"{sqnr} | {build_s:.1f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--only", default="", help="comma-separated workload names")
    parser.add_argument("--systems", default="", help="comma-separated system names (eager fp32 always runs)")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    available = {w.name: w for w in workloads()}
    chosen = [available[n] for n in choose(parser, "--only", args.only, list(available))]
    names = choose(parser, "--systems", args.systems, list(systems(Path())))
    print(f"# {time.strftime('%Y-%m-%d')} {platform.processor() or platform.machine()} torch {torch.__version__}, "
          f"1 thread, {args.repeats} repeats")
    rows = ["| workload | system | median ms | eager fp32 ms, same window | vs eager fp32 | max_rel vs fp32 | "
            "SQNR dB | build s |", "|---|---|---|---|---|---|---|---|"]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for workload in chosen:
            rows += bench_workload(workload, names, Path(folder, workload.name), args.repeats)
            gc.collect()
    table = "\n".join(rows)
    print(table)
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
