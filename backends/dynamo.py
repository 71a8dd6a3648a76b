"""`torch.compile(model, backend="heteropass")`: Dynamo hands us FX graphs, one per graph break.

AOTAutograd lowers each to ATen (with the same decompositions as `heteropass.compile`), and each
ATen graph runs through the import → pass pipeline → executable path. Options come from
`torch.compile(..., options={"opt_level": 2, "dump_dir": "dumps/"})`; with a dump folder each graph
gets its own subfolder `graph_000`, `graph_001`, ...

A graph heteropass cannot import (complex tensors, symbolic shapes, ...) runs eagerly with a warning,
or fails with `strict=True`. An int8 precision quantizes weights, so it needs them as constants: for
inference graphs (run under `torch.no_grad()` or `torch.inference_mode()`) the model's parameters and
buffers are frozen into the graph when it is compiled, as inductor's `freezing` does; updating them in
place later is an error at the next call (compile again after `torch._dynamo.reset()`). Training graphs
keep them as inputs and run in float32, with a warning.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch._dynamo.backends.common import aot_autograd
from torch._functorch._aot_autograd.schemas import MutationType
from torch._functorch.aot_autograd import make_boxed_func
from torch._subclasses.fake_tensor import unset_fake_temporarily

from ..api import CompileOptions, optimize
from ..ir.torch_importer import decomposition_table, import_aten_graph
from ..passes.instruments import dump_dir_from_env

# Precisions that rewrite weights ahead of time, so need the parameters as constants.
_FREEZING_PRECISIONS = ("int8-weight", "int8-dynamic", "int8-static")


def _options(options: dict[str, Any] | None) -> CompileOptions:
    known = {f.name for f in dataclasses.fields(CompileOptions)}
    unknown = set(options or {}) - known
    if unknown:
        raise ValueError(f"unknown heteropass option(s) {sorted(unknown)}; known: {sorted(known)}")
    opts = CompileOptions(**(options or {}))
    return dataclasses.replace(opts, dump_dir=dump_dir_from_env(opts.dump_dir))


def _compiler(opts: CompileOptions, real_inputs: Sequence[Any], *, inference: bool, backward: bool = False
              ) -> Callable[[torch.fx.GraphModule, Sequence[Any]], Callable[..., Any]]:
    """AOTAutograd's compiler for forward, inference or (`backward`) backward graphs; `real_inputs` are
    Dynamo's inputs, whose parameters an inference graph freezes when the precision needs constant weights.
    Effect tokens lead a forward or inference graph's inputs only."""
    needs_constants = opts.precision.precision in _FREEZING_PRECISIONS

    def compile_aten(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
        if any(isinstance(x, torch.SymInt) or (isinstance(x, torch.Tensor) and not _static(x))
               for x in example_inputs):
            warnings.warn("heteropass: this graph has symbolic shapes (dynamic=True or automatic dynamic "
                          "shapes); running it eagerly. Use torch.compile(..., dynamic=False).", stacklevel=2)
            return make_boxed_func(gm)
        context = torch._guards.TracingContext.try_get()
        metadata = context.fw_metadata if context is not None else None
        # AOTAutograd passes None for the effect tokens it puts first (see with_effects in the importer).
        tokens = len(metadata.tokens) if metadata is not None and not backward else 0
        frozen: dict[int, torch.Tensor] = {}
        if needs_constants and inference and metadata is not None:
            frozen = _frozen_parameters(metadata, tokens, example_inputs, real_inputs)
        elif needs_constants:
            warnings.warn(f"heteropass: precision {opts.precision.precision!r} applies to inference graphs only "
                          "(call the compiled model under torch.no_grad() or torch.inference_mode()); this "
                          "training graph runs in float32", stacklevel=2)
        graph_opts = opts
        if opts.dump_dir:
            graph_opts = dataclasses.replace(opts, dump_dir=_next_graph_dir(Path(opts.dump_dir)))
        # AOTAutograd calls us under its FakeTensorMode; constant folding and dumps need real tensors.
        with unset_fake_temporarily():
            constants = {i: torch.empty(0) for i in range(tokens)}
            try:
                program = import_aten_graph(gm, list(example_inputs), strict=opts.strict,
                                            constants={**constants, **frozen})
            except Exception as exc:
                if opts.strict:
                    raise
                warnings.warn(f"heteropass cannot import this graph ({type(exc).__name__}: {exc}); running it "
                              "eagerly (strict=True makes this an error)", stacklevel=2)
                return make_boxed_func(gm)
            _, executable = optimize(program.graph, graph_opts)
        kept = [i for i in range(tokens, len(example_inputs)) if i not in frozen]
        # Inference tensors keep no version counter (and cannot change outside inference mode).
        versions = [(i, tensor, tensor._version) for i, tensor in frozen.items() if not tensor.is_inference()]

        def run(*args: Any) -> Any:
            for i, tensor, version in versions:
                if tensor._version != version:
                    raise RuntimeError(f"heteropass: input {i} ({gm.graph.find_nodes(op='placeholder')[i].name}), "
                                       "a parameter or buffer frozen into the compiled graph, changed in place "
                                       "since; call torch._dynamo.reset() and compile again")
            inputs = [args[i] for i in kept] if len(kept) != len(args) else args
            return program.unflatten_outputs(executable(*program.flatten_inputs(inputs, {})))

        boxed = make_boxed_func(run)
        boxed.heteropass_executable = executable  # type: ignore[attr-defined]
        return boxed

    return compile_aten


def _frozen_parameters(metadata: Any, tokens: int, example_inputs: Sequence[Any], real_inputs: Sequence[Any]
                       ) -> dict[int, torch.Tensor]:
    """The graph's inputs that are the model's parameters and buffers (Dynamo's static inputs), by position
    in `example_inputs` (which the `tokens` effect tokens lead; the static indices count them, Dynamo's
    inputs and the input metadata do not), with their real tensors; not those the graph mutates or an
    output aliases."""
    if len(example_inputs) - tokens != len(real_inputs):
        return {}
    aliased = {out.base_idx for out in metadata.output_info if out.base_idx is not None}
    frozen = {}
    for position in metadata.static_input_indices:
        i = position - tokens
        if i < 0:
            continue
        real, fake = real_inputs[i], example_inputs[position]
        info = metadata.input_info[i] if i < len(metadata.input_info) else None
        if (info is None or info.mutation_type is not MutationType.NOT_MUTATED or i in aliased
                or type(real) not in (torch.Tensor, torch.nn.Parameter) or not isinstance(fake, torch.Tensor)
                or real.shape != fake.shape or real.dtype != fake.dtype):
            continue
        frozen[position] = real
    return frozen


def _next_graph_dir(root: Path) -> str:
    """`root/graph_NNN`, numbered after the graphs already dumped there."""
    taken = [int(p.name[6:]) for p in root.glob("graph_[0-9][0-9][0-9]")] if root.is_dir() else []
    directory = root / f"graph_{max(taken, default=-1) + 1:03d}"
    directory.mkdir(parents=True)
    return str(directory)


def _static(t: torch.Tensor) -> bool:
    return all(isinstance(d, int) for d in t.shape)


def heteropass_backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
                       options: dict[str, Any] | None = None, **_: Any) -> Callable[..., Any]:
    """The Dynamo backend, registered under the name "heteropass" by the package's
    `torch_dynamo_backends` entry point (so `torch.compile` finds it without an import)."""
    opts = _options(options)
    real = list(example_inputs)  # held only while AOTAutograd compiles, which it does before returning
    backend = aot_autograd(fw_compiler=_compiler(opts, real, inference=False),
                           bw_compiler=_compiler(opts, real, inference=False, backward=True),
                           inference_compiler=_compiler(opts, real, inference=True),
                           decompositions=decomposition_table())
    try:
        return backend(gm, example_inputs)
    finally:
        real.clear()
