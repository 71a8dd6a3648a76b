"""One runner per system under test; each turns (model, inputs) into a zero-argument callable."""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

Runner = Callable[[torch.nn.Module, tuple[torch.Tensor, ...], int], Callable[[], Any]]


def eager(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], threads: int) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode():
            return model(*inputs)

    return run


def inductor(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], threads: int) -> Callable[[], Any]:
    torch._dynamo.reset()
    compiled = torch.compile(model, dynamic=False)

    def run() -> Any:
        with torch.no_grad():
            return compiled(*inputs)

    return run


def onnxruntime(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], threads: int) -> Callable[[], Any]:
    import onnxruntime as ort

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, inputs, dynamo=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(program.model_proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feed = {arg.name: t.numpy() for arg, t in zip(session.get_inputs(), inputs, strict=True)}
    return lambda: session.run(None, feed)


def heteropass(opt_level: int, backends: tuple[str, ...] = ("reference",)) -> Runner:
    def runner(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], threads: int) -> Callable[[], Any]:
        import heteropass as hp

        compiled = hp.compile(model, inputs, opt_level=opt_level, backends=backends)

        def run() -> Any:
            with torch.no_grad():
                return compiled(*inputs)

        return run

    return runner


RUNNERS: dict[str, Runner] = {
    "eager": eager,
    "inductor": inductor,
    "onnxruntime": onnxruntime,
    "heteropass-O0": heteropass(0),
    "heteropass-O2": heteropass(2),
    "heteropass-O2-numba": heteropass(2, ("numba", "reference")),
}


def timed_build(runner: Runner, model: torch.nn.Module, inputs: tuple[torch.Tensor, ...],
                threads: int) -> tuple[Callable[[], Any], float]:
    start = time.perf_counter()
    run = runner(model, inputs, threads)
    run()
    return run, time.perf_counter() - start
