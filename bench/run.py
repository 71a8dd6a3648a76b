"""Run the benchmark table: eager, inductor, ONNX Runtime and heteropass O0/O2 on every workload,
at 1 and 2 threads, medians of repeated runs, speedups over eager from the same run.

    .venv/bin/python bench/run.py [--threads 1 2] [--repeats 30] [--only mlp-b1,gpt2-2l-s128]
                                  [--runners inductor,heteropass-O2] [--markdown results.md]
                                  [--suite reductions]

`--suite reductions` runs blocks that reduce over a dim that is not the last instead (mean pooling,
ConvNeXt's channel LayerNorm, a channel softmax, GroupNorm + SiLU).

Eager always runs first: it is the baseline of every ratio. Each runner's outputs are checked against
eager's before it is timed (`checks.check_outputs`, 1e-4 relative); a runner whose outputs differ in
count, shape or value, or hold a NaN where eager's do not, gets a "wrong (...)" cell and no ratio.
The script re-executes itself with OMP_WAIT_POLICY=passive (unless set) before it imports torch.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from script_setup import choose, restart_with_environment

if __name__ == "__main__":  # before `import torch` loads OpenMP, which reads OMP_* once
    restart_with_environment({"OMP_WAIT_POLICY": "passive"}, override=False)

import torch
from checks import WrongOutputs, check_outputs
from checks import max_relative_error as max_relative_error  # kept importable from here, where it lived
from runners import RUNNERS, timed_build
from workloads import Workload, reduction_workloads, workloads


@dataclass(frozen=True)
class Result:
    ms: float
    error: float
    build_s: float


def median_ms(run: Callable[[], Any], repeats: int, min_seconds: float = 0.5) -> float:
    for _ in range(3):
        run()
    times: list[float] = []
    deadline = time.perf_counter() + min_seconds
    while len(times) < repeats or time.perf_counter() < deadline:
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
        if len(times) >= 10 * repeats:
            break
    return statistics.median(times)


def measure(name: str, model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], expected: Any, threads: int,
            repeats: int) -> Result:
    """Build runner `name`, check its outputs against `expected` (WrongOutputs if they differ), then time it."""
    run, build_s = timed_build(RUNNERS[name], model, inputs, threads)
    error = check_outputs(run(), expected)
    return Result(median_ms(run, repeats), error, build_s)


def try_measure(label: str, name: str, *args: Any) -> Result | str:
    """`measure`, or the table cell that says why there is no time: a peer that cannot run a workload, or
    runs it wrongly, is a result too."""
    try:
        result = measure(name, *args)
    except WrongOutputs as exc:
        print(f"  {label} {name}: FAILED wrong outputs: {exc}", flush=True)
        return f"wrong ({exc})"
    except Exception as exc:
        print(f"  {label} {name}: FAILED {type(exc).__name__}: {exc!s:.200}", flush=True)
        return f"failed: {type(exc).__name__}"
    print(f"  {label} {name}: {result.ms:.3f} ms err {result.error:.1e} build {result.build_s:.1f} s", flush=True)
    return result


def bench_row(workload: Workload, threads: int, names: list[str], repeats: int) -> str:
    """The table row of `workload` at `threads`: eager first, then each runner as a ratio over eager."""
    model, inputs = workload.build(), workload.inputs()
    with torch.no_grad():
        expected = model(*inputs)
    label = f"{workload.name} t={threads}"
    eager = try_measure(label, "eager", model, inputs, expected, threads, repeats)
    cells = []
    for name in names:
        result = try_measure(label, name, model, inputs, expected, threads, repeats)
        if isinstance(result, str):
            cells.append(result)
            continue
        ratio = f"{eager.ms / result.ms:.2f}x" if isinstance(eager, Result) else "-"
        cells.append(f"{ratio} ({result.ms:.2f} ms, err {result.error:.0e}, build {result.build_s:.1f} s)")
    eager_cell = f"{eager.ms:.2f}" if isinstance(eager, Result) else eager
    return "| " + " | ".join([workload.name, str(threads), eager_cell, *cells]) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--only", default="", help="comma-separated workload names")
    parser.add_argument("--runners", default="", help="comma-separated runner names besides eager (default: all)")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown to this file")
    parser.add_argument("--suite", choices=["issue", "reductions"], default="issue",
                        help="the fusion issue's table (default) or the reductions over other dims")
    args = parser.parse_args()
    available = {w.name: w for w in (workloads() if args.suite == "issue" else reduction_workloads())}
    chosen = [available[n] for n in choose(parser, "--only", args.only, list(available))]
    names = [n for n in choose(parser, "--runners", args.runners, list(RUNNERS)) if n != "eager"]

    print(f"# {time.strftime('%Y-%m-%d')} {platform.processor() or platform.machine()} torch {torch.__version__}")
    rows = ["| " + " | ".join(["workload", "threads", "eager ms", *names]) + " |", "|" + "---|" * (3 + len(names))]
    for threads in args.threads:
        torch.set_num_threads(threads)
        rows += [bench_row(workload, threads, names, args.repeats) for workload in chosen]
    table = "\n".join(rows)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
