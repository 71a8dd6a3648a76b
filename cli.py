"""The `heteropass` command line: compile, run and dump ONNX models.

    heteropass compile model.onnx --opt-level 2 --dump-dir dumps/ -o optimized.onnx
    heteropass run model.onnx --inputs random
    heteropass compile model.onnx --precision int8-static --calibration-batches 8 --tolerance 0.02
    heteropass dump model.onnx --print-after-all

Errors print as one line and exit with status 1 (`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from .api import CompileOptions, measure_accuracy, optimize
from .backends.executable import Executable
from .ir import Graph
from .ir.sample import random_inputs
from .passes.manager import PassFailure, PipelineResult
from .passes.precision_config import PRECISIONS, PrecisionConfig

console = Console(highlight=False, soft_wrap=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heteropass", description="Optimize and run ONNX models with heteropass.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument("model", help="an .onnx file")
        sub.add_argument("--opt-level", type=int, default=2, choices=range(4))
        sub.add_argument("--disable", default="", help="comma-separated pass names to skip")
        sub.add_argument("--fallback", choices=["reference", "onnxruntime"],
                         help="run ops heteropass does not support through this evaluator instead of failing")
        sub.add_argument("--precision", choices=PRECISIONS, default="fp32", help="lower the model to this precision")
        sub.add_argument("--tolerance", type=float,
                         help="largest max-relative output error vs float32; ops that exceed it stay float32")
        sub.add_argument("--calibration-batches", type=int, default=4,
                         help="random input batches that calibrate int8-static and measure the error (default 4)")
        # SUPPRESS as default: otherwise the subcommand's False overwrites `heteropass --debug compile ...`.
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        return sub

    compile_cmd = add("compile", "import, optimize and export; print what each pass did")
    compile_cmd.add_argument("--dump-dir", help="write the IR after every pass and summary.json here")
    compile_cmd.add_argument("--dump-onnx", action="store_true",
                             help="with --dump-dir, also write the model as ONNX after every pass")
    compile_cmd.add_argument("-o", "--output", help="write the optimized model to this .onnx file")
    run_cmd = add("run", "execute on random inputs and time against ONNX Runtime")
    run_cmd.add_argument("--inputs", choices=["random"], default="random")
    run_cmd.add_argument("--repeats", type=_positive_int, default=20)
    run_cmd.add_argument("--seed", type=int, default=0)
    dump_cmd = add("dump", "print the IR after the passes of the pipeline")
    dump_cmd.add_argument("--print-after-all", action="store_true", help="print the IR after every pass")
    dump_cmd.add_argument("--print-after-change", action="store_true", help="print the IR after passes that changed it")
    return parser


def _options(args: argparse.Namespace, graph: Graph, **extra: Any) -> CompileOptions:
    disable = tuple(name for name in args.disable.split(",") if name)
    return CompileOptions(opt_level=args.opt_level, disable=disable, precision=_precision(args, graph), **extra)


def _precision(args: argparse.Namespace, graph: Graph) -> PrecisionConfig:
    """The precision request; calibration batches are random inputs (seeds 1000, 1001, ...), which an
    ONNX file gives us no better source of."""
    needs_data = args.precision == "int8-static" or args.tolerance is not None
    batches = [random_inputs(graph, seed=1000 + i) for i in range(args.calibration_batches)] if needs_data else []
    return PrecisionConfig(args.precision, calibration=tuple(tuple(b) for b in batches), tolerance=args.tolerance)


def _print_accuracy(graph: Graph, options: CompileOptions, executable: Executable) -> None:
    if options.precision.active:
        batches = options.precision.calibration or (tuple(random_inputs(graph, seed=1000)),)
        console.print(f"precision {options.precision.precision}: error vs float32 on {len(batches)} random "
                      f"batch(es): {measure_accuracy(graph, executable, batches)}")


def _import(args: argparse.Namespace) -> Any:
    from .ir.onnx_importer import OnnxImportError, import_onnx

    try:
        return import_onnx(args.model, fallback=args.fallback)
    except OnnxImportError as exc:  # say it in the command line's words
        raise OnnxImportError(str(exc).replace("import with fallback='reference'", "use --fallback reference")) from exc


def _summary(before: Graph, result: PipelineResult) -> None:
    table = Table(title=f"{result.graph.name}: {len(before.nodes)} -> {len(result.graph.nodes)} nodes "
                        f"at O{result.opt_level}")
    for column in ("#", "pass", "ms", "nodes", "what changed"):
        table.add_column(column, justify="right" if column in ("#", "ms", "nodes") else "left")
    for r in result.records:
        table.add_row(str(r.index), r.name + r.where, f"{r.time_ms:.2f}", f"{r.nodes_before}->{r.nodes_after}",
                      (r.stats_text() or "changed") if r.modified else "-")
    console.print(table)
    counts = Table(title="nodes by op")
    for column in ("op", "before", "after"):
        counts.add_column(column, justify="left" if column == "op" else "right")
    old, new = before.op_counts(), result.graph.op_counts()
    for op in sorted(old.keys() | new.keys()):
        counts.add_row(op, str(old.get(op, 0)), str(new.get(op, 0)))
    console.print(counts)


def cmd_compile(args: argparse.Namespace) -> None:
    program = _import(args)
    before = program.graph.clone()
    options = _options(args, program.graph, dump_dir=args.dump_dir, dump_onnx=args.dump_onnx)
    result, executable = optimize(program.graph, options)
    _summary(before, result)
    _print_accuracy(before, options, executable)
    if args.output:
        from .ir.onnx_exporter import save_onnx

        save_onnx(result.graph, args.output, input_names=program.input_names, output_names=program.output_names)
        console.print(f"wrote {args.output}")
    if args.dump_dir:
        console.print(f"dumps in {args.dump_dir}/")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _max_abs_diff(got: np.ndarray, expected: np.ndarray) -> float:
    """max |got - expected|, where equal values (inf and inf) and NaN against NaN count as no difference."""
    if not got.size:
        return 0.0
    g, e = got.astype(np.float64), expected.astype(np.float64)
    same = (g == e) | (np.isnan(g) & np.isnan(e))
    with np.errstate(invalid="ignore"):
        return float(np.where(same, 0.0, np.abs(g - e)).max())


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def cmd_run(args: argparse.Namespace) -> None:
    import onnxruntime as ort

    program = _import(args)
    inputs = random_inputs(program.graph, seed=args.seed)
    options = _options(args, program.graph)
    _, executable = optimize(program.graph, options)
    _print_accuracy(program.graph, options, executable)
    outputs = executable(*inputs)
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    feed = {name: t.numpy() for name, t in zip(program.input_names, inputs, strict=True)}
    expected = session.run(program.output_names, feed)
    ours = _median_ms(lambda: executable(*inputs), args.repeats)
    theirs = _median_ms(lambda: session.run(program.output_names, feed), args.repeats)
    table = Table(title=f"{args.model} on random inputs (seed {args.seed})")
    for column in ("output", "type", "max abs diff vs ONNX Runtime"):
        table.add_column(column)
    for name, value, reference in zip(program.output_names, outputs, expected, strict=True):
        diff = _max_abs_diff(value.numpy(), reference)
        table.add_row(name, str(program.graph.outputs[program.output_names.index(name)].type), f"{diff:.3g}")
    console.print(table)
    console.print(f"median latency: heteropass {ours:.3f} ms, ONNX Runtime {theirs:.3f} ms "
                  f"({theirs / ours:.2f}x ONNX Runtime)")


def cmd_dump(args: argparse.Namespace) -> None:
    program = _import(args)
    print_all = args.print_after_all or not args.print_after_change
    result, _ = optimize(program.graph, _options(args, program.graph, print_after_all=print_all,
                                                 print_after_change=args.print_after_change and not print_all))
    console.print(result.summary_text())


def _closed_pipe(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, BrokenPipeError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


COMMANDS = {"compile": cmd_compile, "run": cmd_run, "dump": cmd_dump}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except Exception as exc:
        if _closed_pipe(exc):  # `heteropass dump ... | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        if args.debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"heteropass {args.command}: error: {message}", file=sys.stderr)
        if isinstance(exc, PassFailure):
            print(f"heteropass {args.command}: the failing pass's input is in {exc.reproducer} "
                  "(heteropass.passes.load_reproducer reads it)", file=sys.stderr)
        return 1
    return 0
