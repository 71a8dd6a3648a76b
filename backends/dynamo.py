"""`torch.compile(model, backend="heteropass")`: Dynamo hands us FX graphs, one per graph break.

AOTAutograd lowers each to ATen (with the same decompositions as `heteropass.compile`), and each
ATen graph runs through the import → pass pipeline → executable path. Options come from
`torch.compile(..., options={"opt_level": 2, "dump_dir": "dumps/"})`; with a dump folder each graph
gets its own subfolder `graph_000`, `graph_001`, ...
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch._dynamo.backends.common import aot_autograd
from torch._subclasses.fake_tensor import unset_fake_temporarily

from ..api import CompileOptions, optimize
from ..ir.torch_importer import decomposition_table, import_aten_graph
from ..passes.instruments import dump_dir_from_env


def _options(options: dict[str, Any] | None) -> CompileOptions:
    known = {f.name for f in dataclasses.fields(CompileOptions)}
    unknown = set(options or {}) - known
    if unknown:
        raise ValueError(f"unknown heteropass option(s) {sorted(unknown)}; known: {sorted(known)}")
    opts = CompileOptions(**(options or {}))
    return dataclasses.replace(opts, dump_dir=dump_dir_from_env(opts.dump_dir))


def _compiler(opts: CompileOptions) -> Callable[[torch.fx.GraphModule, Sequence[Any]], Callable[..., Any]]:
    def compile_aten(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
        if any(isinstance(x, torch.SymInt) or (isinstance(x, torch.Tensor) and not _static(x))
               for x in example_inputs):
            warnings.warn("heteropass: this graph has symbolic shapes (dynamic=True or automatic dynamic "
                          "shapes); running it eagerly. Use torch.compile(..., dynamic=False).", stacklevel=2)
            return gm
        graph_opts = opts
        if opts.dump_dir:
            graph_opts = dataclasses.replace(opts, dump_dir=_next_graph_dir(Path(opts.dump_dir)))
        # AOTAutograd calls us under its FakeTensorMode; constant folding and dumps need real tensors.
        with unset_fake_temporarily():
            program = import_aten_graph(gm, list(example_inputs), strict=opts.strict)
            _, executable = optimize(program.graph, graph_opts)

        def run(*args: Any) -> Any:
            return program.unflatten_outputs(executable(*program.flatten_inputs(args, {})))

        run.heteropass_executable = executable  # type: ignore[attr-defined]
        return run

    return compile_aten


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
    compiler = _compiler(_options(options))
    backend = aot_autograd(fw_compiler=compiler, decompositions=decomposition_table())
    return backend(gm, example_inputs)
