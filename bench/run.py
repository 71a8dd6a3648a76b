"""Run the benchmark table: eager, inductor, ONNX Runtime and heteropass O0/O2 on every workload,
at 1 and 2 threads, medians of repeated runs, speedups over eager from the same run.

    .venv/bin/python bench/run.py [--threads 1 2] [--repeats 30] [--only mlp-b1,gpt2-2l-s128]
                                  [--markdown results.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runners import RUNNERS, timed_build
from workloads import workloads


def median_ms(run, repeats: int, min_seconds: float = 0.5) -> float:  # type: ignore[no-untyped-def]
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


def max_relative_error(actual, expected) -> float:  # type: ignore[no-untyped-def]
    from torch.utils._pytree import tree_leaves

    worst = 0.0
    for a, e in zip(tree_leaves(actual), tree_leaves(expected), strict=False):
        if isinstance(e, torch.Tensor) and e.is_floating_point():
            a = torch.as_tensor(a)
            worst = max(worst, ((a - e).abs().max() / e.abs().max().clamp_min(1e-12)).item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--only", default="", help="comma-separated workload names")
    parser.add_argument("--runners", default=",".join(RUNNERS), help="comma-separated runner names")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown to this file")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    chosen = [w for w in workloads() if not args.only or w.name in args.only.split(",")]
    runner_names = args.runners.split(",")

    rows: list[str] = []
    header = f"| workload | threads | eager ms | {' | '.join(n for n in runner_names if n != 'eager')} |"
    print(f"# {time.strftime('%Y-%m-%d')} {platform.processor() or platform.machine()} torch {torch.__version__}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for workload in chosen:
            model, inputs = workload.build(), workload.inputs()
            with torch.no_grad():
                expected = model(*inputs)
            results: dict[str, str] = {}
            eager_ms = None
            for name in runner_names:
                try:
                    run, build_s = timed_build(RUNNERS[name], model, inputs, threads)
                    ms = median_ms(run, args.repeats)
                    error = max_relative_error(run(), expected)
                except Exception as exc:  # a peer that cannot run a workload is a result too
                    results[name] = f"failed: {type(exc).__name__}"
                    print(f"  {workload.name} t={threads} {name}: FAILED {exc!s:.200}", flush=True)
                    continue
                if name == "eager":
                    eager_ms = ms
                ratio = f"{eager_ms / ms:.2f}x" if eager_ms else "-"
                results[name] = f"{ratio} ({ms:.2f} ms, err {error:.0e}, build {build_s:.1f} s)"
                print(f"  {workload.name} t={threads} {name}: {ms:.3f} ms {ratio} err {error:.1e} "
                      f"build {build_s:.1f} s", flush=True)
            cells = " | ".join(results.get(n, "-") for n in runner_names if n != "eager")
            rows.append(f"| {workload.name} | {threads} | {eager_ms:.2f} | {cells} |" if eager_ms else
                        f"| {workload.name} | {threads} | - | {cells} |")
    separator = "|" + "---|" * (3 + len([n for n in runner_names if n != "eager"]))
    table = "\n".join([header, separator, *rows])
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
