"""Preallocated buffers for the values a partition computes and reads itself.

A partition function (numba_backend.py) runs steps that mostly write into `out=` buffers. The values that
do not leave the partition get buffers made once per instance of the function, shared by values whose
lifetimes do not overlap, and the views of them (reshape, transpose, split, ...) are made once too, when
the instance is built. A call then allocates none of them and makes none of those views, the buffers stay
warm in the caches, and their addresses never change: kernels get them as constants and ONNX Runtime
keeps its bindings (ort_gemm.BoundRuns). Concurrent calls each take an instance of their own.

What may end up in a partition output stays out: the outputs themselves and whatever a PyTorch call
(which may return a view of its operand) turns into one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..ir import Value

# Library ops whose result is (usually) a view of their operand: made once per instance when the
# operand lives in the arena and the result is measured to be a view (a reshape may copy instead).
VIEW_OPS = ("reshape", "transpose", "permute", "squeeze", "unsqueeze", "flatten", "expand", "slice", "split")


@dataclass
class StepIO:
    """What planning needs to know of one step: the values it reads and writes, whether it writes into
    given `out=` buffers, whether it is a PyTorch call (whose outputs may alias its inputs) and whether
    it is a view op."""

    inputs: list[Value]
    outputs: list[Value]
    takes_out: bool
    library: bool
    view: bool


@dataclass
class ArenaPlan:
    """`buffer_bytes[i]`: the size of buffer i; `buffer_of[id(v)]`: the buffer value v is written into;
    `views`: the steps run once per instance, on arena values, to make their outputs; `static`: every
    value in the arena (in buffers or views of them); `contiguous`: those that are contiguous."""

    buffer_bytes: list[int] = field(default_factory=list)
    buffer_of: dict[int, int] = field(default_factory=dict)
    views: set[int] = field(default_factory=set)
    static: set[int] = field(default_factory=set)
    contiguous: set[int] = field(default_factory=set)

    def make_buffers(self) -> list[torch.Tensor]:
        return [torch.empty(n, dtype=torch.uint8) for n in self.buffer_bytes]


def typed(buffer: torch.Tensor, dtype: torch.dtype, shape: Sequence[int]) -> torch.Tensor:
    """The start of byte buffer `buffer` as a contiguous tensor of `dtype` and `shape`."""
    count = math.prod(shape)
    return buffer[:count * dtype.itemsize].view(dtype).view(tuple(shape))


def plan_arena(steps: Sequence[StepIO], outputs: Sequence[Value],
               run_view: Callable[[int, list[torch.Tensor]], list[torch.Tensor]]) -> ArenaPlan:
    """Which values of `steps` live in buffers made per instance, and which buffer each takes.

    `outputs` are the partition's outputs; `run_view(i, inputs)` runs view step i on tensors, to check
    that it returns views (a step that copies then runs at every call)."""
    escaping = {id(v) for v in outputs}
    for step in reversed(steps):
        if step.library and any(id(v) in escaping for v in step.outputs):
            escaping.update(id(v) for v in step.inputs)
    copying: set[int] = set()
    while True:
        plan = _assign(steps, escaping, copying)
        found = _copying_views(plan, steps, run_view)
        if not found:
            return plan
        copying |= found


def _fits(value: Value, escaping: set[int]) -> bool:
    return id(value) not in escaping and value.type.is_static and value.const is None


def _assign(steps: Sequence[StepIO], escaping: set[int], copying: set[int]) -> ArenaPlan:
    plan = ArenaPlan()
    roots: dict[int, set[int]] = {}  # value -> the buffered values whose memory it may share
    last_use: dict[int, int] = {}
    for i, step in enumerate(steps):
        shared = set().union(*(roots.get(id(v), set()) for v in step.inputs))
        for root in shared:
            last_use[root] = i
        if step.takes_out and step.outputs and all(_fits(v, escaping) for v in step.outputs):
            for v in step.outputs:
                plan.static.add(id(v))
                roots[id(v)] = {id(v)}
                last_use[id(v)] = i
        elif step.library:
            if step.view and i not in copying and step.inputs and all(id(v) in plan.static for v in step.inputs):
                plan.views.add(i)
                plan.static.update(id(v) for v in step.outputs)
            for v in step.outputs:
                roots[id(v)] = shared
    free: list[int] = []
    ending: dict[int, list[int]] = {}
    for root, i in last_use.items():
        ending.setdefault(i, []).append(root)
    for i, step in enumerate(steps):
        if i not in plan.views:
            for v in step.outputs:
                if id(v) in plan.static:
                    plan.buffer_of[id(v)] = _take(plan, free, _nbytes(v))
        free.extend(plan.buffer_of[root] for root in ending.get(i, []) if root in plan.buffer_of)
    return plan


def _nbytes(value: Value) -> int:
    return max(1, math.prod(value.type.static_shape()) * value.type.dtype.torch.itemsize)


def _take(plan: ArenaPlan, free: list[int], nbytes: int) -> int:
    """A free buffer for `nbytes` (the smallest that holds it, else the largest, grown), or a new one."""
    if free:
        fitting = [b for b in free if plan.buffer_bytes[b] >= nbytes]
        buffer = (min(fitting, key=plan.buffer_bytes.__getitem__) if fitting
                  else max(free, key=plan.buffer_bytes.__getitem__))
        free.remove(buffer)
        plan.buffer_bytes[buffer] = max(plan.buffer_bytes[buffer], nbytes)
        return buffer
    plan.buffer_bytes.append(nbytes)
    return len(plan.buffer_bytes) - 1


def _copying_views(plan: ArenaPlan, steps: Sequence[StepIO],
                   run_view: Callable[[int, list[torch.Tensor]], list[torch.Tensor]]) -> set[int]:
    """The view steps of `plan` that return something other than views of the arena's buffers; notes
    which arena values are contiguous."""
    buffers = plan.make_buffers()
    storages = {b.untyped_storage().data_ptr() for b in buffers}
    tensors: dict[int, torch.Tensor] = {}
    copying = set()
    for i, step in enumerate(steps):
        if i in plan.views:
            results = run_view(i, [tensors[id(v)] for v in step.inputs])
            if any(r.untyped_storage().data_ptr() not in storages for r in results):
                copying.add(i)  # its results still feed later views, which then copy too
            tensors.update((id(v), r) for v, r in zip(step.outputs, results, strict=True))
        else:
            for v in step.outputs:
                if id(v) in plan.buffer_of:
                    tensors[id(v)] = typed(buffers[plan.buffer_of[id(v)]], v.type.dtype.torch,
                                           v.type.static_shape())
    plan.contiguous = {key for key, tensor in tensors.items() if tensor.is_contiguous()}
    return copying
