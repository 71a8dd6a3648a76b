"""Python source generation: identifiers for IR values, attribute literals, and the emitted module.

The emitted module is one `forward` function that calls the partitions' kernels in order:

    def forward(x):
        \"\"\"Graph mlp, compiled by heteropass.

        (x: f32[8,16]) -> (f32[8,32])
        \"\"\"
        # reference_0: reference @cpu, 2 nodes: linear, relu
        [v1] = reference_0(x)
        # elementwise_1: elementwise @cpu, 1 node: mul
        [v2] = elementwise_1(v1)
        del v1
        return [v2]

Kernels that accept preallocated outputs (`kernel.accepts_out`) get them as `out=[...]`: views of the
executable's buffer pool (globals `buf_<id>`, made once at build time) for intermediates, and fresh
tensors for graph outputs, which the caller keeps:

        [v5] = numba_2(v1, v3, out=[buf_0])
        [v6] = numba_3(v5, out=[torch.empty((8, 32), dtype=torch.float32)])
"""

from __future__ import annotations

import builtins
import hashlib
import keyword
import linecache
import math
import re
import textwrap
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..ir import DType, Graph, TensorType, Value
from ..ir.ops import resolve_target
from ..passes.plan_memory import MemoryPlan, Step, plan_memory
from .arena import VIEW_OPS

if TYPE_CHECKING:
    from .partition import Partition

_NOT_IDENTIFIER = re.compile(r"\W")
_COMMENT_WIDTH = 116


def python_name(name: str) -> str:
    """A Python identifier that reads like `name`: `fc1.weight` -> `fc1_weight`, `3` -> `v3`."""
    ident = _NOT_IDENTIFIER.sub("_", name) or "v"
    if ident[0].isdigit():
        ident = "v" + ident
    return ident


class Namer:
    """Gives each value a distinct identifier, avoiding keywords, builtins and `reserved` names."""

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        self._taken = set(keyword.kwlist) | set(keyword.softkwlist) | set(dir(builtins)) | set(reserved)
        self._names: dict[Value, str] = {}  # values hash by identity

    def __call__(self, value: Value) -> str:
        name = self._names.get(value)
        if name is None:
            name = self._names[value] = self.reserve(python_name(value.name))
        return name

    def reserve(self, hint: str) -> str:
        """Take `hint`, or `hint_1`, `hint_2`, ... when it is taken."""
        name, suffix = hint, 0
        while name in self._taken:
            suffix += 1
            name = f"{hint}_{suffix}"
        self._taken.add(name)
        return name


def py_literal(value: Any) -> str:
    """Python source for an attribute value (numbers, strings, tuples, DType, None)."""
    if isinstance(value, DType):
        return f"DType.{value.name}"
    if isinstance(value, float) and not math.isfinite(value):
        return f'float("{value}")'
    if isinstance(value, list | tuple):
        items = [py_literal(v) for v in value]
        return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
    if value is None or isinstance(value, bool | int | float | str):
        return repr(value)
    raise TypeError(f"no Python literal for attribute value {value!r}")


def describe_ops(ops: Sequence[str]) -> str:
    """`linear, relu, linear` -> `linear x2, relu`: the ops in first-seen order with counts."""
    counts: dict[str, int] = {}
    for op in ops:
        counts[op] = counts.get(op, 0) + 1
    return ", ".join(op if n == 1 else f"{op} x{n}" for op, n in counts.items())


def comment(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, _COMMENT_WIDTH - len(indent), initial_indent=f"{indent}# ",
                         subsequent_indent=f"{indent}#   ", break_on_hyphens=False)


def partition_steps(partitions: Sequence[Partition]) -> list[Step]:
    """The partitions as memory-planning steps: each reads its inputs and writes its outputs."""
    return [Step(tuple(p.nodes), tuple(p.inputs), tuple(p.outputs)) for p in partitions]


def plan_module_memory(graph: Graph, partitions: Sequence[Partition], accepts_out: Sequence[bool],
                       inplace_safe: Sequence[bool]) -> MemoryPlan:
    """Buffers for the outputs of the kernels that accept preallocated outputs, over the partition order.

    Only kernels whose `inplace_safe` is set may overwrite a dying input (they read every element of
    an input before writing the same element of an output)."""
    pooled = [v for p, out in zip(partitions, accepts_out, strict=True) if out for v in p.outputs]
    return plan_memory(graph, partition_steps(partitions), pooled=pooled,
                       inplace_steps=[i for i, safe in enumerate(inplace_safe) if safe])


class _ModuleNames:
    """The identifiers of the emitted module: inputs, returned constants, then the pool's views; the
    other values are named as the source is written. `views[value id]` names the view a pooled value
    is written to; `specs[name]` says which buffer, dtype and shape that view has."""

    def __init__(self, graph: Graph, kernel_names: Sequence[str], partitions: Sequence[Partition],
                 plan: MemoryPlan | None) -> None:
        self.namer = namer = Namer([*kernel_names, "forward", "torch"])
        for value in graph.inputs:
            namer(value)
        for value in graph.outputs:
            if value.const is not None:
                namer(value)
        self.views: dict[int, str] = {}
        self.specs: dict[str, tuple[int, TensorType]] = {}
        if plan is None:
            return
        by_spec: dict[tuple[int, TensorType], str] = {}
        for part in partitions:
            for value in part.outputs:
                buffer = plan.buffer_of.get(value.name)
                if buffer is None:
                    continue
                spec = (buffer, value.type)
                if spec not in by_spec:
                    by_spec[spec] = namer.reserve(f"buf_{buffer}")
                    self.specs[by_spec[spec]] = spec
                self.views[id(value)] = by_spec[spec]


def module_constants(graph: Graph, kernel_names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The globals `emit_module`'s source needs besides the kernels and the pool: constants returned directly."""
    namer = _ModuleNames(graph, kernel_names, [], None).namer
    return {namer(v): v.const for v in graph.outputs if v.const is not None}


def module_buffers(graph: Graph, partitions: Sequence[Partition], kernel_names: Sequence[str],
                   plan: MemoryPlan) -> dict[str, tuple[int, TensorType]]:
    """The pool views `emit_module`'s source needs with `plan`: global name -> (buffer id, type)."""
    return _ModuleNames(graph, kernel_names, partitions, plan).specs


def _out_argument(part: Partition, names: _ModuleNames) -> str | None:
    """`out=[...]` for a kernel that accepts preallocated outputs; None when an output's shape is symbolic."""
    if not all(v.type.is_static for v in part.outputs):
        return None
    buffers = []
    for value in part.outputs:
        view = names.views.get(id(value))
        if view is None:
            view = f"torch.empty({py_literal(value.type.static_shape())}, dtype={value.type.dtype.torch})"
        buffers.append(view)
    return f"out=[{', '.join(buffers)}]"


def emit_module(graph: Graph, partitions: Sequence[Partition], kernel_names: Sequence[str],
                plan: MemoryPlan | None = None, accepts_out: Sequence[bool] | None = None) -> str:
    """Source of `forward(<inputs>)`: call each partition's kernel (bound as a global under its
    `kernel_names` entry) in order, delete each intermediate after its last use, return the outputs.

    With a `plan`, the kernels flagged in `accepts_out` get their outputs preallocated: pooled values
    in the views `module_buffers` names, the others fresh.
    """
    names = _ModuleNames(graph, kernel_names, partitions, plan)
    namer = names.namer
    accepts_out = accepts_out if plan is not None and accepts_out is not None else [False] * len(partitions)
    # Graph inputs belong to the caller, who still holds them; deleting them would free nothing.
    kept = {id(v) for v in graph.inputs} | {id(v) for v in graph.outputs}
    dead_after: list[list[Value]] = [[] for _ in partitions]
    seen: set[int] = set()
    for i, part in reversed(list(enumerate(partitions))):
        for value in part.inputs:
            if id(value) not in kept and id(value) not in seen:
                seen.add(id(value))
                dead_after[i].append(value)

    params = ", ".join(namer(v) for v in graph.inputs)
    signature = ", ".join(f"{namer(v)}: {v.type}" for v in graph.inputs)
    results = ", ".join(str(v.type) for v in graph.outputs)
    lines = [f"def forward({params}):", f'    """Graph {graph.name}, compiled by heteropass.', ""]
    lines += textwrap.wrap(f"({signature}) -> ({results})", _COMMENT_WIDTH - 4, initial_indent="    ",
                           subsequent_indent="        ", break_on_hyphens=False)
    lines.append('    """')
    if plan is not None and plan.buffer_of:
        lines += comment(f"memory: {plan.describe()}", "    ")
    for i, (part, kernel) in enumerate(zip(partitions, kernel_names, strict=True)):
        count = f"{len(part.nodes)} node{'s' if len(part.nodes) != 1 else ''}"
        ops = describe_ops([n.op for n in part.nodes])
        lines += comment(f"{kernel}: {part.backend.name} @{part.backend.device}, {count}: {ops}", "    ")
        args = [namer(v) for v in part.inputs]
        out = _out_argument(part, names) if accepts_out[i] else None
        call = f"{kernel}({', '.join(args if out is None else [*args, out])})"
        if part.outputs:
            targets = ", ".join(namer(v) for v in part.outputs)
            call = f"[{targets}] = {call}" if len(part.outputs) == 1 else f"{targets} = {call}"
        lines.append(f"    {call}")
        if dead_after[i]:
            lines.append(f"    del {', '.join(namer(v) for v in dead_after[i])}")
    lines.append(f"    return [{', '.join(_returned(graph, names.namer))}]")
    return "\n".join(lines) + "\n"


def _returned(graph: Graph, namer: Namer) -> list[str]:
    """The returned expressions: a copy of each output that the caller could otherwise change for someone
    else (a constant, a graph input or a view of one, an output already returned), as eager PyTorch
    returns fresh tensors for `clone()`, `x * 1` and a folded weight expression, which the passes reduce
    to those. A view of another output stays a view of it, as in eager (`return h, h.t()`). A view of
    an intermediate (or a `split` result) is made contiguous: the importer drops `.contiguous()` and
    `.clone()`, after which eager's `.view` works and an expanded result does not alias itself;
    merge-parallel-linears returns column slices of one product where eager returned separate
    contiguous tensors."""
    inputs = {id(v) for v in graph.inputs}
    outputs = {id(v) for v in graph.outputs}
    seen: set[int] = set()
    returned = []
    for value in graph.outputs:
        sources = _view_sources(value)
        shared = id(value) in seen or any(v.const is not None or id(v) in inputs for v in sources)
        seen.add(id(value))
        if shared:
            returned.append(f"{namer(value)}.clone()")
        elif any(id(v) in outputs for v in sources[1:]):
            returned.append(namer(value))
        elif len(sources) > 1 or (value.producer is not None and value.producer.op == "split"):
            returned.append(f"{namer(value)}.contiguous()")
        else:
            returned.append(namer(value))
    return returned


def _view_sources(value: Value) -> list[Value]:
    """`value` and the values whose memory it may share: through view ops, and through opaque calls whose
    ATen schema returns an alias (diagonal, unfold, as_strided run as PyTorch calls)."""
    sources, pending = [], [value]
    while pending:
        current = pending.pop()
        sources.append(current)
        producer = current.producer
        if producer is not None and producer.op in VIEW_OPS:
            pending.append(producer.inputs[0])
        elif producer is not None and producer.op == "opaque" and _returns_alias(producer.attrs["target"]):
            pending.extend(producer.inputs)
    return sources


def _returns_alias(target: str) -> bool:
    try:
        op = resolve_target(target)
    except ValueError:
        return True  # unknown: copying is always safe
    return not isinstance(op, torch._ops.OpOverload) or any(r.alias_info is not None for r in op._schema.returns)


def load_function(source: str, namespace: dict[str, Any], function: str) -> Callable[..., Any]:
    """Execute generated `source` in `namespace` and return `function`, with `.source` attached.

    The source is registered with linecache so that tracebacks show its lines.
    """
    digest = hashlib.sha1(source.encode()).hexdigest()[:10]
    filename = f"<heteropass {function} {digest}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    exec(compile(source, filename, "exec"), namespace)
    loaded = namespace[function]
    loaded.source = source
    return loaded
