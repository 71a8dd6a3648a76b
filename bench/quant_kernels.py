"""Int8 and half-precision linear layers against float32 `F.linear` on GPT-2 / Llama decode shapes.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive .venv/bin/python bench/quant_kernels.py [--threads 1 2]
        [--rows 1 64] [--repeats 21] [--only 768x768,4096x4096]

Per shape (out x in) and batch rows: medians of interleaved runs (every variant once per round, so
load from other processes hits them alike) of float32 F.linear, torch.ao's dynamic int8 Linear
(fbgemm), the Numba backend's linear_weight_int8 (per-channel scales) and linear_dynamic_int8
(per-row x scales) compiled from one-node graphs, and bf16 / fp16 F.linear. GB/s counts the weight
bytes each call streams (4 per float32 weight, 1 per int8 weight); "x" columns are float32 time
over the variant's time. Before timing, each variant's output is checked against float32 F.linear's
(max_rel 5e-2; int8 reaches 2e-2, bf16 4e-3): a wrong variant gets a "wrong (...)" cell and no time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from heteropass.backends.numba_backend import NumbaBackend
from heteropass.backends.quant_gemm import choose_quant_plan
from heteropass.ir import Graph, TensorType

sys.path.insert(0, str(Path(__file__).resolve().parent))

from checks import WrongOutputs, check_outputs
from script_setup import choose

SHAPES = [(768, 768), (3072, 768), (768, 3072), (1024, 2816), (4096, 4096), (32000, 1024)]
NAMES = ["fp32", "ao-dyn-int8", "int8-weight", "dyn-int8", "bf16", "fp16"]
TOLERANCE = 5e-2  # max_rel against float32 F.linear; int8 variants reach 2e-2 here, bf16 4e-3


def quant_linear(op: str, x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                 **attrs: object) -> tuple[Callable[[], object], str]:
    """The Numba backend's compiled one-node graph `op(x, qweight, scale, bias)` with constant weights,
    and the name of the plan it measured fastest."""
    graph = Graph(op)
    inputs = [graph.add_input("x", TensorType.of(x))] + [graph.add_constant(n, t) for n, t in
                                                          (("w", qweight), ("s", scale), ("b", bias))]
    graph.set_outputs([graph.call(op, *inputs, **attrs)])
    kernel = NumbaBackend().compile(graph)
    return (lambda: kernel(x)), choose_quant_plan(graph.nodes[0]).name


def variants(out: int, inner: int, rows: int) -> tuple[dict[str, Callable[[], object]], dict[str, str]]:
    x, weight, bias = torch.randn(rows, inner), torch.randn(out, inner) / inner**0.5, torch.randn(out)
    scale = weight.abs().amax(dim=1) / 127
    qweight = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    layer = torch.nn.Linear(inner, out)
    layer.weight.data, layer.bias.data = weight, bias
    with warnings.catch_warnings():  # torch.ao's deprecation notice
        warnings.simplefilter("ignore")
        ao = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(layer), {torch.nn.Linear}, dtype=torch.qint8)
    weight_only, weight_plan = quant_linear("linear_weight_int8", x, qweight, scale, bias, block_size=0)
    dynamic, dynamic_plan = quant_linear("linear_dynamic_int8", x, qweight, scale, bias, granularity="row")
    halves = {name: (x.to(dtype), weight.to(dtype), bias.to(dtype))
              for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16))}
    runs = {"fp32": lambda: F.linear(x, weight, bias), "ao-dyn-int8": lambda: ao(x),
            "int8-weight": weight_only, "dyn-int8": dynamic,
            **{name: (lambda a=args: F.linear(*a)) for name, args in halves.items()}}
    return runs, {"int8-weight": weight_plan, "dyn-int8": dynamic_plan}


def medians(runs: dict[str, Callable[[], object]], repeats: int, budget_s: float) -> dict[str, float]:
    """Median seconds per variant over interleaved rounds; a variant stops after 5 runs once it has
    used `budget_s`."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():
        fn()
    for _ in range(repeats):
        for name, fn in runs.items():
            if len(times[name]) >= 5 and sum(times[name]) > budget_s:
                continue
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def wrong_variants(runs: dict[str, Callable[[], object]]) -> dict[str, str]:
    """Why each variant whose output differs from float32 F.linear's beyond TOLERANCE is wrong, by name."""
    reference = runs["fp32"]()
    wrong = {}
    for name, fn in runs.items():
        try:
            check_outputs(fn(), reference, TOLERANCE)
        except WrongOutputs as exc:
            wrong[name] = str(exc)
    return wrong


def row(threads: int, rows: int, out: int, inner: int, repeats: int, budget_s: float) -> str:
    """The table row of one shape: the variants are checked, then the right ones timed."""
    runs, plans = variants(out, inner, rows)
    wrong = wrong_variants(runs)
    ms = {k: v * 1e3 for k, v in medians({n: f for n, f in runs.items() if n not in wrong}, repeats, budget_s).items()}
    times = [f"{ms[n]:.3f}" if n in ms else f"wrong ({wrong[n]})" for n in NAMES]
    bandwidth = [f"{size * out * inner / ms[n] / 1e6:.1f}" if n in ms else "-"
                 for size, n in ((4, "fp32"), (1, "int8-weight"))]
    ratios = [f"{ms['fp32'] / ms[n]:.2f}" if n in ms and "fp32" in ms else "-"
              for n in ("ao-dyn-int8", "int8-weight", "dyn-int8", "bf16")]
    return (f"| {threads} | {rows} | {out}x{inner} | " + " | ".join([*times, *bandwidth, *ratios])
            + f" | {plans['int8-weight']}, {plans['dyn-int8']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per variant and shape, at least 5 runs")
    parser.add_argument("--only", default="", help="comma-separated OUTxIN shapes")
    args = parser.parse_args()
    by_name = {f"{out}x{inner}": (out, inner) for out, inner in SHAPES}
    shapes = [by_name[n] for n in choose(parser, "--only", args.only, list(by_name))]
    torch.backends.quantized.engine = "fbgemm"
    print("| threads | rows | out x in | " + " | ".join(f"{n} ms" for n in NAMES)
          + " | fp32 GB/s | int8-weight GB/s | x ao | x int8-weight | x dyn-int8 | x bf16 | plans |")
    print("|" + "---|" * (len(NAMES) + 10))
    for threads in args.threads:
        torch.set_num_threads(threads)
        for rows in args.rows:
            for out, inner in shapes:
                print(row(threads, rows, out, inner, args.repeats, args.budget), flush=True)


if __name__ == "__main__":
    main()
