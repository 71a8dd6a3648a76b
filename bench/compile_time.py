"""Compile time of a workload at O2 with the Numba backend: cold (empty kernel caches) and warm.

    OMP_NUM_THREADS=1 .venv/bin/python bench/compile_time.py [--only gpt2-2l-s128] [--repeats 3]

Each measurement is a fresh process timing `heteropass.compile` plus the first call (torch.export,
passes, code generation, kernel compilation, timing of library options). The cold process gets
`NUMBA_CACHE_DIR` and `XDG_CACHE_HOME` pointed at a new empty folder; the warm processes that follow
reuse it, as a second run of the same program on a deployed machine would.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workloads import workloads


def child(name: str) -> None:
    import heteropass as hp

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    workload = next(w for w in workloads() if w.name == name)
    model, inputs = workload.build(), workload.inputs()
    start = time.perf_counter()
    compiled = hp.compile(model, inputs, opt_level=2, backends=("numba", "reference"))
    with torch.no_grad():
        compiled(*inputs)
    print(f"{time.perf_counter() - start:.3f}")


def measure(name: str, cache: Path) -> float:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache / "numba"), XDG_CACHE_HOME=str(cache))
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OMP_WAIT_POLICY", "passive")
    done = subprocess.run([sys.executable, __file__, "--child", name], env=env, check=True,
                          capture_output=True, text=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="gpt2-2l-s128", help="comma-separated workload names")
    parser.add_argument("--repeats", type=int, default=3, help="warm processes per workload")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    print("| workload | cold s | warm s (median) |\n|---|---|---|")
    for name in args.only.split(","):
        with tempfile.TemporaryDirectory(prefix="heteropass-cache-") as folder:
            cold = measure(name, Path(folder))
            warm = statistics.median(measure(name, Path(folder)) for _ in range(args.repeats))
        print(f"| {name} | {cold:.1f} | {warm:.1f} |", flush=True)


if __name__ == "__main__":
    main()
