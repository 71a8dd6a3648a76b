"""Build a callable from a graph: partition it, compile each partition, plan the kernels' buffers,
emit and load the module.

A module with pooled buffers is not re-entrant: two calls running at once would write the same
buffers. `Executable` therefore keeps idle instances of the module, each with its own pool, and
gives every call one of them; a call that finds none idle (another thread, or a kernel calling back
into the executable) makes a new instance, which is kept for later calls.
"""

from __future__ import annotations

import linecache
from collections.abc import Callable, Sequence

import torch

from ..ir import Graph, TensorType
from ..passes.plan_memory import MemoryPlan
from .base import Backend
from .codegen import emit_module, load_function, module_buffers, module_constants, plan_module_memory, python_name
from .memory import BufferPool
from .partition import Partition, partition
from .reference import ReferenceBackend


class InputError(ValueError):
    """The arguments do not match the graph's inputs; the message names the input."""


class Executable:
    """A compiled graph: call it with the graph's inputs as tensors to get its outputs as a list. It runs
    without autograd: its outputs do not require grad, whatever its inputs do.

    `module_source` is the emitted module (`forward`), `kernel_sources` maps kernel names to their
    generated source (for backends that have one), `code` is both together: the whole program.
    `partitions` says which backend runs which nodes. `memory` is the plan of the pooled buffers
    (None without kernels that accept preallocated outputs); `instantiate` makes another instance of
    the module with its own pool, for calls that overlap.
    """

    def __init__(self, forward: Callable[..., list[torch.Tensor]], input_types: Sequence[tuple[str, TensorType]],
                 code: str, kernel_sources: dict[str, str], partitions: list[Partition],
                 memory: MemoryPlan | None = None,
                 instantiate: Callable[[], Callable[..., list[torch.Tensor]]] | None = None) -> None:
        self._forward = forward
        self.memory = memory
        self._instantiate = instantiate
        # Idle instances; list.pop and list.append are atomic, so taking one needs no lock.
        self._idle = [forward]
        self._input_types = list(input_types)
        # Fully static signatures take a fast path: dtype identity and shape equality per input.
        self._static = None
        if all(t.is_static for _, t in input_types):
            self._static = [(t.dtype.torch, torch.Size(t.static_shape())) for _, t in input_types]
        self.module_source = code
        self.kernel_sources = kernel_sources
        self.code = "\n\n".join([code.rstrip("\n"), *(src.rstrip("\n") for src in kernel_sources.values())]) + "\n"
        self.partitions = partitions
        # Set once a call had an input requiring grad, which the outputs do not carry on.
        self.dropped_grad = False

    def __call__(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        static = self._static
        if static is None or len(tensors) != len(static):
            self.check_inputs(tensors)
        else:
            for tensor, (dtype, shape) in zip(tensors, static, strict=True):
                if (not isinstance(tensor, torch.Tensor) or tensor.dtype is not dtype or tensor.shape != shape
                        or not tensor.is_cpu or tensor.layout is not torch.strided):
                    self.check_inputs(tensors)
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            # The kernels compute values, not gradients (some write into out= buffers, which autograd
            # rejects for inputs that require grad): outputs never require grad, as in ONNX Runtime.
            # (The weights are detached copies, so without such an input nothing requires grad anyway.)
            self.dropped_grad = True
            with torch.no_grad():
                return self._run(tensors)
        return self._run(tensors)

    def _run(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        try:
            if self._instantiate is None:
                return self._forward(*tensors)
            try:
                forward = self._idle.pop()
            except IndexError:
                forward = self._instantiate()
            try:
                return forward(*tensors)
            finally:
                self._idle.append(forward)
        except Exception as exc:
            _note_generated_line(exc)
            raise

    @property
    def instances(self) -> int:
        """How many idle instances of the module (each with its own buffer pool) there are; between calls,
        every instance made so far."""
        return len(self._idle) if self._instantiate is not None else 1

    def check_inputs(self, tensors: Sequence[object]) -> None:
        """Raise `InputError` unless `tensors` match the input types; symbolic dimensions accept any
        size, but a symbol must have the same size in every input."""
        expected = self._input_types
        if len(tensors) != len(expected):
            names = ", ".join(f"{name}: {t}" for name, t in expected)
            raise InputError(f"expected {len(expected)} input{'s' if len(expected) != 1 else ''} ({names}), "
                             f"got {len(tensors)}")
        bound: dict[str, tuple[int, int, str]] = {}
        for i, (tensor, (name, expected_type)) in enumerate(zip(tensors, expected, strict=True)):
            where = f"input {i} '{name}'"
            if not isinstance(tensor, torch.Tensor):
                raise InputError(f"{where} expects a tensor {expected_type}, got {type(tensor).__qualname__}")
            if not tensor.is_cpu:
                raise InputError(f"{where} expects a CPU tensor, got one on {tensor.device}: every partition "
                                 "runs on the CPU")
            if tensor.layout is not torch.strided:
                raise InputError(f"{where} expects a dense tensor, got a {str(tensor.layout).removeprefix('torch.')} "
                                 "one: pass `.to_dense()`")
            if (tensor.dtype != expected_type.dtype.torch or tensor.dim() != expected_type.rank
                    or any(isinstance(want, int) and want != size
                           for want, size in zip(expected_type.shape, tensor.shape, strict=True))):
                raise InputError(f"{where} expects {expected_type}, got {_describe(tensor)}")
            for dim, (want, size) in enumerate(zip(expected_type.shape, tensor.shape, strict=True)):
                if isinstance(want, int):
                    continue
                if want not in bound:
                    bound[want] = (size, i, name)
                elif bound[want][0] != size:
                    first_size, first_index, first_name = bound[want]
                    raise InputError(f"{where} expects {expected_type}, got {_describe(tensor)}: dimension {dim} "
                                     f"is {want}, bound to {first_size} by input {first_index} '{first_name}'")

    def __repr__(self) -> str:
        kernels = ", ".join(p.name for p in self.partitions)
        return f"Executable({kernels})"


def _describe(tensor: torch.Tensor) -> str:
    """The tensor's type as the IR prints it: `f32[8,16]`."""
    try:
        return str(TensorType.of(tensor))
    except TypeError:  # an element type heteropass has no name for
        return f"{tensor.dtype}[{','.join(map(str, tensor.shape))}]"


def build_executable(graph: Graph, backends: Sequence[Backend] | None = None, *,
                     plan_memory: bool = True) -> Executable:
    """Partition `graph` over `backends` (default: the reference backend alone), compile every
    partition and load the emitted module. Sets each node's `device`.

    Kernels with `accepts_out = True` take preallocated outputs; with `plan_memory` their intermediate
    outputs live in a buffer pool allocated here, once (see `plan_module_memory`).
    """
    backends = list(backends) if backends is not None else [ReferenceBackend()]
    partitions = partition(graph, backends)
    kernel_names = [python_name(p.name) for p in partitions]
    kernels = [p.backend.compile(p.subgraph()) for p in partitions]
    accepts_out = [getattr(kernel, "accepts_out", False) is True for kernel in kernels]
    plan = None
    if plan_memory and any(accepts_out):
        inplace_safe = [getattr(kernel, "inplace_safe", False) is True for kernel in kernels]
        plan = plan_module_memory(graph, partitions, accepts_out, inplace_safe)
    code = emit_module(graph, partitions, kernel_names, plan, accepts_out)
    namespace = {**dict(zip(kernel_names, kernels, strict=True)), **module_constants(graph, kernel_names),
                 "torch": torch}
    kernel_sources = {name: kernel.source for name, kernel in zip(kernel_names, kernels, strict=True)
                      if isinstance(getattr(kernel, "source", None), str)}
    input_types = [(v.name, v.type) for v in graph.inputs]
    if plan is None or not plan.buffer_of:  # nothing pooled: one instance serves every call
        return Executable(load_function(code, namespace, "forward"), input_types, code, kernel_sources, partitions,
                          plan)
    views = module_buffers(graph, partitions, kernel_names, plan)

    def instantiate() -> Callable[..., list[torch.Tensor]]:
        # Buffers made during a call under inference mode must still take writes from calls out of it.
        with torch.inference_mode(False):
            pool = BufferPool(plan.buffer_bytes)
            bound = {name: pool.view(buffer, t.dtype, t.static_shape()) for name, (buffer, t) in views.items()}
        forward = load_function(code, {**namespace, **bound}, "forward")
        forward.pool = pool
        return forward

    return Executable(instantiate(), input_types, code, kernel_sources, partitions, plan, instantiate)


def _note_generated_line(exc: BaseException) -> None:
    """Add the innermost line of generated code the error passed through (a kernel call, or a reference
    partition's line, which ends with the node's origin) as a note on `exc`."""
    line = None
    frame = exc.__traceback__
    while frame is not None:
        filename = frame.tb_frame.f_code.co_filename
        if filename.startswith("<heteropass "):
            line = linecache.getline(filename, frame.tb_lineno).strip()
        frame = frame.tb_next
    if line:
        exc.add_note(f"heteropass: raised while running `{line}`")
