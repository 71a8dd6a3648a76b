"""Compile time of a workload at O2 with the Numba backend: cold (empty kernel caches) and warm.

    OMP_NUM_THREADS=1 .venv/bin/python bench/compile_time.py [--only gpt2-2l-s128] [--repeats 3]

Each measurement is a fresh process timing `heteropass.compile` plus the first call (torch.export,
passes, code generation, kernel compilation, timing of library options). The cold process gets
`NUMBA_CACHE_DIR` and `XDG_CACHE_HOME` pointed at a new empty folder; the warm processes that follow
reuse it, as a second run of the same program on a deployed machine would. A child that fails has its
stderr shown and its row marked failed; the other workloads are still measured.
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

from script_setup import choose
from workloads import workloads


class ChildFailed(Exception):
    """A measuring child process exited with an error; the message is its stderr's tail."""


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
    done = subprocess.run([sys.executable, __file__, "--child", name], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise ChildFailed(f"exit status {done.returncode}:\n{done.stderr.strip()[-3000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def row(name: str, repeats: int) -> str:
    """The table row of workload `name`: one cold process, then `repeats` warm ones on its caches."""
    with tempfile.TemporaryDirectory(prefix="heteropass-cache-") as folder:
        try:
            cold = measure(name, Path(folder))
            warm = statistics.median(measure(name, Path(folder)) for _ in range(repeats))
        except ChildFailed as exc:
            print(f"{name}: FAILED, child {exc}", file=sys.stderr, flush=True)
            return f"| {name} | failed | failed |"
    return f"| {name} | {cold:.1f} | {warm:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="gpt2-2l-s128", help="comma-separated workload names")
    parser.add_argument("--repeats", type=int, default=3, help="warm processes per workload")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    names = choose(parser, "--only", args.only, [w.name for w in workloads()])
    print("| workload | cold s | warm s (median) |\n|---|---|---|")
    for name in names:
        print(row(name, args.repeats), flush=True)


if __name__ == "__main__":
    main()
