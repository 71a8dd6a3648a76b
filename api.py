"""`heteropass.compile`: import a model, run the pass pipeline, build the executable module."""

from __future__ import annotations

import json
import time
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .backends import resolve_backends
from .backends.base import Backend
from .backends.executable import Executable, build_executable
from .ir import OPS, Graph, TensorType, format_graph, run_graph
from .ir.torch_importer import TorchProgram, import_module
from .passes.base import PassContext
from .passes.instruments import dump_dir_from_env, instruments_for
from .passes.manager import PassManager, PipelineResult, json_number
from .passes.pipelines import default_pipeline
from .passes.precision_config import PRECISIONS, ErrorMetrics, PrecisionConfig, measure_batches


@dataclass(frozen=True)
class CompileOptions:
    """Everything that steers a compilation. `disable` names passes to skip (kebab-case);
    `backends` names the backends (or gives instances) in priority order (the reference backend runs the rest);
    `precision` is the precision request (a `PrecisionConfig`, or just its precision name)."""

    opt_level: int = 2
    dump_dir: str | None = None
    strict: bool = False
    disable: tuple[str, ...] = ()
    print_after_all: bool = False
    print_after_change: bool = False
    verify_each: bool = False
    check_each: bool = False
    backends: tuple[str | Backend, ...] = ("reference",)
    dump_onnx: bool = False
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)

    def __post_init__(self) -> None:
        if isinstance(self.precision, str):
            object.__setattr__(self, "precision", PrecisionConfig(self.precision))
        for name in ("disable", "backends"):  # one name (or backend) alone means that one, not its letters
            names = getattr(self, name)
            object.__setattr__(self, name, (names,) if isinstance(names, str | Backend) else tuple(names))


def optimize(graph: Graph, options: CompileOptions, backends: Sequence[Backend | str] | None = None,
             check_inputs: Sequence[torch.Tensor] | None = None) -> tuple[PipelineResult, Executable]:
    """Run the default pipeline of `options.opt_level` on `graph` and build its executable.

    With a dump folder, the graph with its device placement goes there as `placed.ir` and the
    emitted module as `module.py`, next to the IR dumps of the passes. `check_inputs` (the graph's
    inputs) are what `options.check_each` runs on; random inputs without them.
    """
    ctx = PassContext(opt_level=options.opt_level, disabled=frozenset(options.disable))
    instruments = instruments_for(dump_dir=options.dump_dir, print_after_all=options.print_after_all,
                                  print_after_change=options.print_after_change,
                                  verify_each=options.verify_each, check_each=options.check_each,
                                  dump_onnx=options.dump_onnx, check_inputs=check_inputs)
    pipeline = default_pipeline(options.opt_level, options.precision if options.precision.active else None)
    result = PassManager(pipeline, ctx, instruments).run(graph)
    planned = options.opt_level >= 2 and "plan-memory" not in options.disable
    chosen = resolve_backends(options.backends if backends is None else backends)
    executable = build_executable(result.graph, chosen, plan_memory=planned)
    if options.dump_dir:
        placement = ", ".join(f"{p.name} ({len(p.nodes)} nodes @{p.backend.device})" for p in executable.partitions)
        header = f"after partitioning: {len(executable.partitions)} partition(s): {placement}"
        Path(options.dump_dir, "placed.ir").write_text(format_graph(result.graph, header=header))
        Path(options.dump_dir, "module.py").write_text(executable.code)
    return result, executable


def measure_accuracy(reference: Graph, executable: Executable, batches: Sequence[Sequence[torch.Tensor]]
                     ) -> ErrorMetrics:
    """The executable's error against the float32 reference interpreter on `batches` of graph inputs."""
    expected = [run_graph(reference, *batch) for batch in batches]
    return measure_batches(expected, [executable(*batch) for batch in batches])


class CompiledModule:
    """A compiled model: call it like the model. `graph` is the optimized IR, `code` the emitted
    module's source, `report` what each pass did and how long it took, and, for a lowered precision,
    `accuracy`: the error against float32 on the calibration inputs (or the example inputs).

    It is an inference snapshot of the model: outputs do not require grad, and `modes` pairs the
    model's submodules that read `self.training` (weakly held) with their mode at compile time, which a
    call checks."""

    def __init__(self, program: TorchProgram, pipeline: PipelineResult, executable: Executable,
                 options: CompileOptions, import_ms: float, accuracy: ErrorMetrics | None = None,
                 modes: Sequence[tuple[weakref.ref[torch.nn.Module], bool]] = ()) -> None:
        self.program = program
        self.pipeline = pipeline
        self.executable = executable
        self.options = options
        self.import_ms = import_ms
        self.accuracy = accuracy
        self.modes = list(modes)
        self._mutated = sorted({graph_input for _, graph_input in program.write_back})
        self._disjoint: set[tuple] = set()  # pairs of input layouts `_check_aliasing` found disjoint
        self._warned_grad = False

    @property
    def graph(self) -> Graph:
        return self.pipeline.graph

    @property
    def code(self) -> str:
        return self.executable.code

    @property
    def dump_dir(self) -> str | None:
        return self.options.dump_dir

    @property
    def report(self) -> str:
        text = f"import: {self.program.route or 'ATen graph'}, {self.import_ms:.0f} ms\n" + self.pipeline.summary_text()
        if self.accuracy is not None:
            batches = max(len(self.options.precision.calibration), 1)
            where = "calibration batch(es)" if self.options.precision.calibration else "example input batch(es)"
            text += (f"\nprecision {self.options.precision.precision}: error vs float32 on {batches} {where}: "
                     f"{self.accuracy}")
        return text

    def save_onnx(self, path: str) -> None:
        """Write the optimized graph as an ONNX model. Inputs keep the model's argument names; an
        output is named by its place in the model's result (`last_hidden_state`, `0`, ...), or
        `output` when the model returns one tensor, with a suffix `_1`, ... where an input or another output
        has that name already."""
        from torch.utils import _pytree as pytree

        from .ir.onnx_exporter import save_onnx

        program = self.program
        result = pytree.tree_unflatten(list(range(len(program.output_leaves))), program.output_spec)
        names = [v.name for v in self.graph.outputs]
        named: set[int] = set()
        taken = {v.name: v for v in self.graph.inputs}
        for key_path, leaf in pytree.tree_flatten_with_path(result)[0]:
            slot = program.output_leaves[leaf]
            if isinstance(slot, int) and slot not in named:
                keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in key_path]
                name = base = "_".join(keys) or "output"
                value = self.graph.outputs[slot]
                suffix = 0
                while name in taken and taken[name] is not value:  # an input's name, or another output's
                    suffix += 1
                    name = f"{base}_{suffix}"
                names[slot] = name
                taken[name] = value
                named.add(slot)
        save_onnx(self.graph, path, output_names=names)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.modes:
            self._check_modes()
        flat = self.program.flatten_inputs(args, kwargs)
        if self._mutated:
            self._check_aliasing(flat)
        outputs = self.executable(*flat)
        if self.executable.dropped_grad and not self._warned_grad:
            self._warned_grad = True
            warnings.warn("heteropass.compile makes an inference module: its outputs do not require grad and "
                          "no gradient reaches its inputs or the model's parameters; use "
                          "torch.compile(model, backend='heteropass') to train", stacklevel=2)
        self.program.write_state(flat, outputs)
        return self.program.unflatten_outputs(outputs)

    def _check_modes(self) -> None:
        """Train/eval mode is compiled in: a module switched since must be compiled again."""
        for ref, training in self.modes:
            module = ref()
            if module is not None and module.training != training:
                was, now = ("training", "eval") if training else ("eval", "training")
                raise RuntimeError(f"{type(module).__name__} was in {was} mode when compiled and is in {now} "
                                   f"mode now; heteropass.compile is a snapshot of the mode: compile again")

    def _check_aliasing(self, flat: Sequence[torch.Tensor]) -> None:
        """A graph input the model updates in place must not overlap another input in memory: the graph
        reads every input as a separate tensor, eager would see the update through the other. (The two
        halves of one packed KV cache do not overlap, nor do interleaved views such as `x[:, ::2]` and
        `x[:, 1::2]`.)"""
        names = [v.name for v in self.graph.inputs]
        for j in self._mutated:
            first, end = _byte_range(flat[j])
            for i, tensor in enumerate(flat):
                start, stop = _byte_range(tensor)
                if i == j or not (first < end and start < stop and start < end and first < stop):
                    continue
                # Interleaved views found disjoint once (a cache's halves, passed every call) are not
                # enumerated again.
                layouts = (_layout(flat[j]), _layout(tensor))
                if layouts in self._disjoint:
                    continue
                if not _elements_overlap(flat[j], tensor):
                    if len(self._disjoint) >= 64:
                        self._disjoint.clear()
                    self._disjoint.add(layouts)
                    continue
                raise ValueError(f"input {j} '{names[j]}', which the model updates in place, shares memory "
                                 f"with input {i} '{names[i]}'; pass separate tensors (e.g. .clone())")


def _byte_range(tensor: torch.Tensor) -> tuple[int, int]:
    """The addresses [start, stop) a tensor's elements span (empty for no elements; strides are >= 0)."""
    start = tensor.data_ptr()
    if tensor.numel() == 0:
        return start, start
    extent = 1 + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride(), strict=True))
    return start, start + extent * tensor.element_size()


def _layout(tensor: torch.Tensor) -> tuple:
    """Where a tensor's elements lie in memory."""
    return tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.element_size()


def _byte_runs(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The start addresses (sorted) of the contiguous runs of bytes a tensor's elements fill, and the
    length of each run: its trailing dims that are contiguous in memory make one run, the others are
    enumerated."""
    dims = [(size, stride) for size, stride in zip(tensor.shape, tensor.stride(), strict=True) if size != 1]
    run = 1
    while dims and dims[-1][1] == run:
        run *= dims.pop()[0]
    offsets = torch.zeros((), dtype=torch.int64)
    for size, stride in dims:
        offsets = offsets.unsqueeze(-1) + torch.arange(size) * stride
    starts = offsets.flatten() * tensor.element_size() + tensor.data_ptr()
    return starts.sort().values, run * tensor.element_size()


def _elements_overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether some byte of an element of `a` is a byte of an element of `b`."""
    (starts_a, length_a), (starts_b, length_b) = _byte_runs(a), _byte_runs(b)
    # The first run of a starting after s - length_a is the only one that can reach b's run at s.
    candidates = torch.searchsorted(starts_a, starts_b - length_a, right=True)
    inside = candidates < len(starts_a)
    return bool((starts_a[candidates[inside]] < starts_b[inside] + length_b).any())


def compile(model: torch.nn.Module, example_inputs: tuple[Any, ...] | Any, *,
            example_kwargs: dict[str, Any] | None = None, opt_level: int = 2, dump_dir: str | None = None,
            strict: bool = False, disable: str | Sequence[str] = (),
            backends: Backend | str | Sequence[Backend | str] = ("reference",),
            print_after_all: bool = False, print_after_change: bool = False, verify_each: bool = False,
            check_each: bool = False, dump_onnx: bool = False, precision: str = "fp32",
            calibration: Sequence[Any] | None = None, tolerance: float | None = None,
            precision_options: dict[str, Any] | None = None) -> CompiledModule:
    """Compile `model` for inputs shaped like `example_inputs` (a tuple of positional arguments).

    `opt_level` 0-3 picks the pipeline; `dump_dir` (or the HETEROPASS_DUMP_DIR environment variable)
    receives the IR after every pass (and, with `dump_onnx`, the graph as an ONNX model after every
    pass), `summary.json` and the emitted module; `strict=True` turns ops
    heteropass does not know into an error instead of a PyTorch fallback; `backends` lists the
    backends to use in priority order, by name ("numba", "reference") or as instances.

    `precision` lowers the model: "bf16"/"fp16" (matmuls and convolutions in the low type, norms,
    softmax and reductions kept in float32), "int8-weight" (int8 weights; the linears' inputs rounded
    per row to 16 bits, or kept float32 with `precision_options={"activation_bits": 32}`),
    "int8-dynamic" (activations quantized at run time) or "int8-static" (activation ranges from
    `calibration`, a list of example inputs shaped like `example_inputs`). With `tolerance` (the
    largest max-relative error of the outputs against float32 on the calibration inputs, or on
    the example inputs when there are none) the passes keep the ops that would exceed it in float32
    and say why in the dumps. `precision_options` sets the other `PrecisionConfig` fields (`allow`,
    `deny`, `keep_nodes`, `block_size`, `activation_bits`, `granularity`, `calibration_method`,
    `percentile`).
    The measured error is `compiled.accuracy` and ends `compiled.report`. With `example_kwargs`,
    give each calibration batch as a dict of keyword arguments or an `(args, kwargs)` pair.

    The compiled module is an inference snapshot, as after torch.compile's freezing or an ONNX Runtime
    session: the weights are copied at compile time (changes to the model's weights afterwards, such as
    `load_state_dict`, need a new compile), train/eval mode is fixed (a call after switching the mode is
    an error), and outputs do not require grad. To train, use `torch.compile(model, backend="heteropass")`.
    """
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    backends = (backends,) if isinstance(backends, str | Backend) else backends
    _check_precision_request(precision, precision_options)
    modes = _mode_snapshot(model)
    start = time.perf_counter()
    program = import_module(model, example_inputs, strict=strict, example_kwargs=example_kwargs)
    import_ms = (time.perf_counter() - start) * 1e3
    config = _precision_config(program, precision, calibration, tolerance, precision_options, example_inputs,
                               example_kwargs)
    options = CompileOptions(opt_level=opt_level, dump_dir=dump_dir_from_env(dump_dir), strict=strict,
                             disable=disable, print_after_all=print_after_all,
                             print_after_change=print_after_change, verify_each=verify_each,
                             check_each=check_each, dump_onnx=dump_onnx,
                             backends=tuple(b if isinstance(b, str) else b.name for b in backends),
                             precision=config)
    example = program.flatten_inputs(example_inputs, example_kwargs)
    pipeline, executable = optimize(program.graph, options, backends, check_inputs=example if check_each else None)
    accuracy = None
    if config.active:
        batches = config.calibration or (example,)
        accuracy = measure_accuracy(program.graph, executable, batches)
        if options.dump_dir:
            Path(options.dump_dir, "precision.json").write_text(json.dumps(
                {"precision": config.precision, "tolerance": config.tolerance, "batches": len(batches),
                 "inputs": "calibration" if config.calibration else "example",
                 "error_vs_fp32": {k: json_number(v) for k, v in accuracy.as_dict().items()}},
                indent=2) + "\n")
    return CompiledModule(program, pipeline, executable, options, import_ms, accuracy, modes)


def _mode_snapshot(model: torch.nn.Module) -> list[tuple[weakref.ref[torch.nn.Module], bool]]:
    """The submodules whose forward reads `self.training` (BatchNorm, Dropout, ...), with their mode; a
    warning when one is compiled in training mode, which is rarely meant for inference."""
    modes = []
    for module in model.modules():
        code = getattr(type(module).forward, "__code__", None)
        if code is not None and "training" in code.co_names:
            modes.append((weakref.ref(module), module.training))
    training = sorted({type(ref()).__name__ for ref, flag in modes if flag})
    if training:
        warnings.warn(f"compiling {type(model).__name__} in training mode: {', '.join(training)} will behave as "
                      "in training (batch statistics, dropout) in the compiled module; call model.eval() before "
                      "compiling for inference", stacklevel=3)
    return modes


_PRECISION_OPTIONS = ("allow", "deny", "keep_nodes", "block_size", "activation_bits", "granularity",
                      "calibration_method", "percentile")
# The precisions each option means something for (the others: every lowered precision).
_OPTION_PRECISIONS = {"allow": ("bf16", "fp16"), "block_size": ("int8-weight",), "activation_bits": ("int8-weight",),
                      "granularity": ("int8-dynamic",), "calibration_method": ("int8-static",),
                      "percentile": ("int8-static",)}


def _check_precision_request(precision: str, options: dict[str, Any] | None) -> None:
    """Fail before the (slow) import on a precision or option that cannot work."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    unknown = sorted(set(options or {}) - set(_PRECISION_OPTIONS))
    if unknown:
        raise ValueError(f"unknown precision_options {unknown}; known: {list(_PRECISION_OPTIONS)} (calibration "
                         f"and tolerance are arguments of compile)")
    for option in options or {}:
        applies = _OPTION_PRECISIONS.get(option, tuple(p for p in PRECISIONS if p != "fp32"))
        if precision not in applies:
            raise ValueError(f"precision_options {option!r} applies to precision {' / '.join(applies)}, "
                             f"not {precision!r}")
    ops = {*(options or {}).get("allow", ()), *(options or {}).get("deny", ())}
    if unknown_ops := sorted(ops - set(OPS)):
        raise ValueError(f"allow/deny name unknown ops {unknown_ops} (IR op names, e.g. 'linear', 'softmax')")


def _calibration_call(batch: Any, index: int, example_kwargs: dict[str, Any] | None
                      ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A calibration batch as the model call's `(args, kwargs)`. A batch is the positional arguments (a
    tuple or list, or one tensor or dict: the model's one argument), a dict of keyword arguments when the
    model was compiled with `example_kwargs`, or an `(args, kwargs)` pair. Keywords a batch leaves out
    come from `example_kwargs`, except tensors: every batch brings its own."""
    if isinstance(batch, dict) and example_kwargs:
        args, kwargs = (), batch
    elif (isinstance(batch, tuple | list) and len(batch) == 2 and isinstance(batch[0], tuple | list)
          and isinstance(batch[1], dict)):
        args, kwargs = tuple(batch[0]), batch[1]
    else:
        args, kwargs = (tuple(batch) if isinstance(batch, tuple | list) else (batch,)), {}
    example = example_kwargs or {}
    missing = sorted(k for k, v in example.items() if k not in kwargs and isinstance(v, torch.Tensor))
    if missing:
        raise ValueError(f"calibration batch {index} lacks the keyword tensor(s) {missing} of example_kwargs: give "
                         "each batch as a dict of keyword arguments or an (args, kwargs) pair")
    return args, {**{k: v for k, v in example.items() if k not in kwargs}, **kwargs}


def _precision_config(program: TorchProgram, precision: str, calibration: Sequence[Any] | None,
                      tolerance: float | None, options: dict[str, Any] | None, example_inputs: tuple[Any, ...],
                      example_kwargs: dict[str, Any] | None) -> PrecisionConfig:
    """The precision request with calibration inputs flattened to graph-input order. A tolerance without
    calibration inputs is measured on the example inputs."""
    batches = [program.flatten_inputs(*_calibration_call(b, index, example_kwargs))
               for index, b in enumerate(calibration or ())]
    for index, batch in enumerate(batches):
        for i, (tensor, value) in enumerate(zip(batch, program.graph.inputs, strict=True)):
            if TensorType.of(tensor) != value.type:
                raise ValueError(f"calibration batch {index}: input {i} '{value.name}' expects {value.type}, "
                                 f"got {TensorType.of(tensor)}")
    if tolerance is not None and not batches:
        batches = [program.flatten_inputs(example_inputs, example_kwargs)]
    if precision == "int8-static" and not batches:
        raise ValueError("precision='int8-static' needs calibration=[inputs, ...]: example inputs shaped like "
                         "example_inputs whose activation ranges set the quantization scales")
    return PrecisionConfig(precision, calibration=tuple(tuple(b) for b in batches), tolerance=tolerance,
                           **(options or {}))
