"""The Numba CPU backend: fused regions and single ops as generated @njit loops, products through oneDNN.

It claims `fused` regions of kind "elementwise", "reduction" and "gemm" whose every body op it can
compile, single elementwise ops, last-dim softmax/log_softmax/layer_norm/rms_norm and
sum/mean/amax/amin, 1-D/2-D max pooling (numba_pool.py), float linear/matmul/bmm/conv (see gemm.py),
linear_weight_int8 / linear_dynamic_int8 on float32 activations (see quant_gemm.py) and float32
attention_with_cache (numba_attention.py: a decode step's attention over its cache in place); views,
lookups, other pooling and attention (of any dtype) run through PyTorch inside its partitions
(`_LIBRARY_KINDS`). Consecutive convolutions (with their fused epilogues, and the pools they feed) may
run as one ONNX Runtime session that keeps its blocked layout inside, where that is measured faster
than running them one by one (ort_conv.py); a convolution that runs fastest by Winograd's method
(winograd.py) stays out of them. The views around an attention over a packed Q/K/V product may run
with it as one ONNX Runtime session, where measured faster (ort_attention.py). Float16/bfloat16 compute
(slower than float32 on AVX2 CPUs without native half arithmetic) and symbolic shapes are left to the
next backend. A partition compiles to Python glue that calls one kernel per node; each kernel takes its
operands and an optional `out=` list of preallocated contiguous outputs, and calls the compiled
loop through ctypes with the tensors' addresses (the values that stay inside the partition live in
buffers made once per instance, which kernels then get as constant addresses: partition_glue.py):

    def numba_0(x, out=None):
        [v1] = region_1(x, out=out)
        return [v1]

    def region_1(a0, out=None):
        a0 = a0.contiguous()
        if out is None:
            o0, = (torch.empty((64, 128), dtype=torch.float32),)
        else:
            o0, = contiguous_out(out)
        k_region_1(a0.data_ptr(), o0.data_ptr())
        return [o0]

Kernels live in files under the cache folder (default `~/.cache/heteropass/numba`), one module
per kernel named by the hash of its source, so Numba's on-disk cache (`cache=True`) lets a later
process load the machine code instead of compiling it again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..ir import DType, Graph, Node, TensorType, Value, get_op
from ..ir.ops.registry import as_outputs
from .arena import VIEW_OPS, StepIO, plan_arena, typed
from .base import Backend, Kernel
from .codegen import Namer, load_function, py_literal, python_name
from .gemm import GemmPlan, choose_plan, plan_gemm, supports_product
from .library_glue import take_source, view_expression
from .numba_codegen import (
    REDUCE_OPS,
    ROW_OPS,
    Unsupported,
    build_spec,
    calls_math,
    check_elementwise,
    compile_options,
    emit_kernel,
    kernel_module,
    pointer_entry,
    split_extent,
)
from .numba_columns import emit_column_kernel
from .numba_pool import max_pool_source, supports_max_pool
from .ort_attention import PackedAttention, choose_packed_attention, find_packed_attention
from .ort_conv import Chain, chain_member, chain_runs, choose_chains
from .parallel_kernel import SPLIT_MIN_MATH_NUMEL, SPLIT_MIN_NUMEL, SplitKernel
from .partition_glue import Step, partition_source
from .winograd import WINOGRAD

_REGION_KINDS = ("elementwise", "reduction", "gemm")
# Compiled by quant_gemm.py, which imports Numba: loaded only when a graph has one of these.
_QUANT_OPS = ("linear_weight_int8", "linear_dynamic_int8")
# Run inside a partition through PyTorch's own kernels: views and copies (reshape, transpose, split,
# concat: no arithmetic to generate, and a view costs no copy), lookups (embedding, gather), pooling,
# and attention, whose two products and softmax ATen fuses in one flash-attention kernel (the library
# route GEMM takes too). Claiming them keeps transformer layers in one partition instead of
# alternating with the reference backend at every reshape.
_LIBRARY_KINDS = ("shape", "split", "concat", "index", "pool")
_LIBRARY_OPS = ("scaled_dot_product_attention",)
_HERE = Path(__file__).parent
# Kernel files are named after their source and the code generator's, so an edit to either makes new files.
_GENERATOR_HASH = hashlib.sha1(b"".join(p.read_bytes() for p in sorted(_HERE.glob("numba_*.py")))).hexdigest()[:8]
_LOAD_LOCK = threading.RLock()  # see NumbaBackend._load_module


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "heteropass" / "numba"


class NumbaBackend(Backend):
    """Generated Numba kernels for elementwise, reduction and gemm regions on the CPU."""

    name: ClassVar[str] = "numba"
    device: ClassVar[str] = "cpu"

    def __init__(self, cache_dir: str | Path | None = None, conv_chains: bool | None = None) -> None:
        """`conv_chains`: run consecutive convolutions as one ONNX Runtime session (ort_conv.py) where
        measured faster (None), wherever possible (True) or never (False)."""
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.conv_chains = conv_chains

    def supports(self, node: Node) -> bool:
        try:
            _region_of(node)
        except (Unsupported, ValueError):
            return False
        return True

    def compile(self, partition: Graph) -> Kernel:
        namer = Namer(["torch", "contiguous_out", "out", "DType", "as_outputs", "typed", "buffers", "run"])
        namespace: dict[str, Any] = {"torch": torch, "contiguous_out": contiguous_out}
        steps: list[Step] = []
        for node in partition.nodes:
            body, kind = _region_of(node)
            name = namer.reserve(python_name(f"region_{node.outputs[0].name}"))
            region = self._compile_region(body, kind, name, namer, namespace)
            glue = region.glue
            if [v.type for v in body.outputs] != [v.type for v in node.outputs]:
                glue = _reshaping_outputs(glue, name, node, namer)
            # A region body takes the node's non-constant operands (see `_with_constant_operands`); a
            # one-node body takes the distinct ones.
            operands = [v for v in (node.inputs if node.op == "fused" else dict.fromkeys(node.inputs))
                        if v.const is None]
            library = kind == "library"
            steps.append(Step(name, [node], operands, list(node.outputs), region.takes_out, glue, region.kernels,
                              region.product, library, library and node.op in VIEW_OPS, region.direct))
        for value in partition.constants.values():
            namespace[namer(value)] = value.const
        if self.conv_chains is not False and any(map(chain_member, partition.nodes)):
            steps = self._chains(partition, steps, namespace, namer)
        if any(node.op == "scaled_dot_product_attention" for node in partition.nodes):
            steps = self._packed_attention(partition, steps, namespace, namer)
        sources = [step.source for step in steps]
        function = python_name(partition.name)
        # A library product that cannot write into `out=` makes its own output; copying it into a pooled
        # buffer would cost more than the pool saves, so then the partition takes no `out=` at all.
        producer = {id(v): step for step in steps for v in step.outputs}
        accepts_out = all(producer[id(v)].takes_out for v in partition.outputs if id(v) in producer)
        if steps:  # planning runs the view steps
            load_function("\n\n".join(sources), namespace, steps[0].name)
        plan = plan_arena([StepIO(s.inputs, s.outputs, s.takes_out, s.library, s.view) for s in steps],
                          partition.outputs, lambda i, tensors: namespace[steps[i].name](*tensors))
        for suffix in ("_instance", "_plan", "_idle"):
            namer.reserve(function + suffix)
        namespace.update({f"{function}_plan": plan, f"{function}_idle": [], "typed": typed})
        source = partition_source(partition, function, namer, steps, accepts_out, plan)
        fn = load_function("\n\n".join([source, *sources]), namespace, function)
        fn.source = "\n\n".join([source, *sources, *(kernel for step in steps for kernel in step.kernels)])
        fn.accepts_out = accepts_out
        # One elementwise region reads each element of its inputs before it writes that element of an
        # output. A library product may write its output while still reading its input; reductions write a
        # row's results before their last pass over the row; a later node may read an earlier one's input.
        kinds = [_region_of(node)[1] for node in partition.nodes]
        fn.inplace_safe = len(kinds) == 1 and kinds[0] == "elementwise"
        return fn

    def _chains(self, partition: Graph, steps: list[Step], namespace: dict[str, Any], namer: Namer
                ) -> list[Step]:
        """`steps` with runs of convolutions replaced by ONNX Runtime sessions (see ort_conv.py) where that
        is measured faster than running their nodes one by one."""
        step_of = {id(step.nodes[0]): step for step in steps}

        def member(node: Node) -> bool:
            # A convolution measured faster by Winograd's method than by any library on its own stays out.
            return chain_member(node) and not step_of[id(node)].product.startswith(WINOGRAD)

        runs = chain_runs(partition.nodes, member)
        if runs:  # the regions' glue, to time the runs node by node
            load_function("\n\n".join(step.source for step in steps), namespace, steps[0].name)
        for run in runs:
            one_by_one = []
            for node in run:
                step = step_of[id(node)]
                operands = {id(v): torch.randn(v.type.static_shape(), dtype=v.type.dtype.torch) for v in step.inputs}
                one_by_one.append(partial(namespace[step.name], *(operands[id(v)] for v in step.inputs)))
            for chain in choose_chains(run, member, partition.is_output, one_by_one,
                                       timed=self.conv_chains is None):
                name = namer.reserve(python_name(f"chain_{chain.nodes[0].outputs[0].name}"))
                namespace[f"{name}_session"] = chain.call
                first = steps.index(step_of[id(chain.nodes[0])])
                steps[first:first + len(chain.nodes)] = [
                    Step(name, chain.nodes, _outer(chain.nodes, chain.graph.inputs),
                         _outer(chain.nodes, chain.graph.outputs), True, _chain_source(name, chain))]
        return steps

    def _packed_attention(self, partition: Graph, steps: list[Step], namespace: dict[str, Any], namer: Namer
                          ) -> list[Step]:
        """`steps` with the view chains around an attention over a packed Q/K/V product replaced by one ONNX
        Runtime session (see ort_attention.py) where that is measured faster than their steps one by one."""
        step_of = {id(step.nodes[0]): step for step in steps if len(step.nodes) == 1}
        chains = [chain for chain in find_packed_attention(partition.nodes, partition.is_output)
                  if all(id(node) in step_of for node in chain.nodes)]
        if chains:  # the steps' glue, to time the chains step by step
            load_function("\n\n".join(step.source for step in steps), namespace, steps[0].name)
        for chain in chains:
            members = [step_of[id(node)] for node in chain.nodes]

            def one_by_one(qkv: torch.Tensor, chain: PackedAttention = chain, members: list[Step] = members
                           ) -> torch.Tensor:
                values = {id(chain.qkv): qkv}
                for step in members:
                    results = namespace[step.name](*(values[id(v)] for v in step.inputs))
                    values.update(zip(map(id, step.outputs), results, strict=True))
                return values[id(chain.output)]

            call = choose_packed_attention(chain, one_by_one)
            if call is None:
                continue
            name = namer.reserve(python_name(f"attention_{chain.output.name}"))
            namespace[f"{name}_session"] = call
            ops = ", ".join(f"{op} x{n}" if n > 1 else op
                            for op, n in Counter(node.op for node in chain.nodes).items())
            source = (f"def {name}(a0, out=None):\n"
                      f"    # onnxruntime MultiHeadAttention, {chain.describe()}, measured faster than: {ops}\n"
                      f"    return {name}_session(a0, out=out)\n")
            gone = {id(step) for step in members}
            at = max(steps.index(step) for step in members)
            steps = ([step for step in steps[:at] if id(step) not in gone]
                     + [Step(name, chain.nodes, [chain.qkv], [chain.output], True, source)]
                     + [step for step in steps[at + 1:] if id(step) not in gone])
        return steps

    def _compile_region(self, body: Graph, kind: str, name: str, namer: Namer, namespace: dict[str, Any]
                        ) -> _Region:
        """Glue source for one region and the kernel sources it calls; loads the kernels into `namespace`."""
        if kind == "gemm":
            return self._compile_gemm(body, name, namer, namespace)
        if kind == "quant":
            from .quant_gemm import choose_quant_plan

            return _compile_planned(body, name, namer, namespace, choose_quant_plan(body.nodes[0]), 4)
        if kind == "cached_attention":
            from .numba_attention import choose_attention_plan

            return _compile_planned(body, name, namer, namespace, choose_attention_plan(body.nodes[0]), 6)
        if kind == "library":
            if body.nodes[0].op == "take":
                return _compile_take(body, name, namer, namespace)
            return _compile_library(body, name, namer, namespace)
        kernel_name = namer.reserve(f"k_{name}")
        split_note = ""
        if kind == "pool":
            kernel_src, entry_src = max_pool_source(body.nodes[0], kernel_name)
            consts, numel = [], math.prod(body.outputs[0].type.static_shape())
            namespace[kernel_name] = self._load_module(max_pool_source(body.nodes[0], "kernel"))
        else:
            spec, consts = build_spec(body, kind, kernel_name)
            numel = math.prod(spec.loop_sizes())
            extent = split_extent(spec)
            split_from = SPLIT_MIN_MATH_NUMEL if calls_math(spec) else SPLIT_MIN_NUMEL
            ranged = numel >= split_from and extent is not None and extent > 1
            kernel_src = emit_kernel(spec, ranged) if spec.cols is None else emit_column_kernel(spec, ranged)
            entry_src = pointer_entry(spec, kernel_name, f"{kernel_name}_ptr", ranged)
            named = kernel_src.replace(f"def {kernel_name}(", "def kernel(", 1)
            entry = self._load_module((named, pointer_entry(spec, "kernel", "kernel_ptr", ranged)))
            namespace[kernel_name] = SplitKernel(entry, extent, not spec.outer, numel) if ranged else entry
            if ranged:
                unit = "rows" if spec.outer else "elements"
                split_note = f"    # {kernel_name} splits its {extent} {unit} across torch.get_num_threads() threads"
        const_names = []
        for value in consts:
            # The tensor stays alive in the namespace under its own name; the glue passes its address.
            const_name = namer.reserve(f"{name}_{python_name(value.name)}")
            namespace[f"{const_name}_tensor"] = tensor = value.const.contiguous()
            namespace[const_name] = tensor.data_ptr()
            const_names.append(const_name)
        params = [f"a{i}" for i in range(len(body.inputs))]
        outs = [f"o{i}" for i in range(len(body.outputs))]
        allocs = ", ".join(f"torch.empty({tuple(v.type.static_shape())}, dtype={v.type.dtype.torch})"
                           for v in body.outputs)
        args = [f"{p}.data_ptr()" for p in params] + const_names + [f"{o}.data_ptr()" for o in outs]
        lines = [f"def {name}({', '.join([*params, 'out=None'])}):"]
        if split_note:
            lines.append(split_note)
        # The kernel reads row-major memory: strided inputs become contiguous copies held until it returns.
        lines += [f"    {p} = {p}.contiguous()" for p in params]
        lines += [f"    if out is None:\n        {', '.join(outs)}, = ({allocs},)",
                  f"    else:\n        {', '.join(outs)}, = contiguous_out(out)"]
        call = f"{kernel_name}({', '.join(args)})"
        # A reduction over an empty dim still writes its outputs (0 for sum, NaN for mean).
        empty = all(math.prod(v.type.static_shape()) == 0 for v in body.outputs)
        lines.append(f"    # empty outputs: no kernel call ({call})" if empty else f"    {call}")
        lines.append(f"    return [{', '.join(outs)}]")
        template: list[tuple[str, int | str]] = [("a", i) for i in range(len(params))]
        template += [("c", c) for c in const_names] + [("o", j) for j in range(len(outs))]
        return _Region("\n".join(lines) + "\n", [kernel_src, entry_src], True,
                       direct=None if empty else (kernel_name, template))

    def _compile_gemm(self, body: Graph, name: str, namer: Namer, namespace: dict[str, Any]) -> _Region:
        plan: GemmPlan = choose_plan(_compilable(plan_gemm(body)), self._epilogue_call)
        product_name = namer.reserve(f"{name}_product")
        namespace[product_name] = plan.product.call
        index = {id(v): f"a{i}" for i, v in enumerate(body.inputs)}
        operands = []
        for value in plan.operands:
            if value is None:
                operands.append("None")
            elif value.const is not None:
                const_name = namer.reserve(f"{name}_{python_name(value.name)}")
                namespace[const_name] = value.const
                operands.append(const_name)
            else:
                operands.append(index[id(value)])
            if value is not None and value is plan.operands[2] and value.type.rank > 1:
                operands[-1] += ".reshape(-1)"  # a conv bias add broadcasts a [C, 1, 1] tensor
        params = [f"a{i}" for i in range(len(body.inputs))]
        lines = [f"def {name}({', '.join([*params, 'out=None'])}):",
                 f"    # {plan.product_node.op}: {plan.product.text}"]
        if plan.epilogue is None:
            if plan.product.writes_out:
                operands.append("None if out is None else out[0]")
            lines.append(f"    return [{product_name}({', '.join(operands)})]")
            return _Region("\n".join(lines) + "\n", [], plan.product.writes_out, plan.product.text)
        epilogue_name = namer.reserve(f"{name}_epilogue")
        epilogue = self._compile_region(plan.epilogue, "elementwise", epilogue_name, namer, namespace)
        epi_args = ["p"] + [index[id(v)] for v in _epilogue_operands(body, plan)]
        product = plan.epilogue.inputs[0]
        # The product dies here; the first output may reuse its memory when it has its type: a library
        # that writes into a given tensor then writes into the output (the same address every call, so
        # ONNX Runtime keeps its binding) and the epilogue runs over it in place. (A convolution of a
        # channels-last tensor gives a channels-last product: the epilogue then writes a new tensor.)
        in_place = (not body.is_output(plan.product_node.outputs[0])
                    and plan.epilogue.outputs[0].type == product.type and len(body.outputs) == 1)
        if in_place and plan.product.writes_out:
            operands.append("None if out is None else out[0]")
        epilogue_out = f"out if out is not None else {'[p] if p.is_contiguous() else None' if in_place else 'None'}"
        lines.append(f"    p = {product_name}({', '.join(operands)})")
        lines.append(f"    return {epilogue_name}({', '.join(epi_args)}, out={epilogue_out})")
        return _Region(epilogue.glue + "\n" + "\n".join(lines) + "\n", epilogue.kernels, True, plan.product.text)

    def _epilogue_call(self, option: GemmPlan) -> Callable[[torch.Tensor], object]:
        """`call(product)` running `option`'s epilogue kernel on a product (in place, as the glue runs it),
        on random operands, for timing the option."""
        assert option.epilogue is not None
        namespace: dict[str, Any] = {"torch": torch, "contiguous_out": contiguous_out}
        region = self._compile_region(option.epilogue, "elementwise", "epilogue",
                                      Namer(["torch", "contiguous_out", "out"]), namespace)
        epilogue = load_function(region.glue, namespace, "epilogue")
        args = [torch.randn(v.type.static_shape()).to(v.type.dtype.torch) for v in option.epilogue.inputs[1:]]
        in_place = (option.epilogue.outputs[0].type == option.epilogue.inputs[0].type
                    and len(option.epilogue.outputs) == 1)

        def call(product: torch.Tensor) -> object:
            return epilogue(product, *args, out=[product] if in_place else None)

        return call

    def _load_module(self, sources: tuple[str, str]) -> Any:
        """The ctypes entry of the module holding `sources`, a kernel `kernel` and its C-callable entry
        `kernel_ptr`, from Numba's disk cache when it has it."""
        module_source = kernel_module(list(sources))
        digest = hashlib.sha1((_GENERATOR_HASH + module_source).encode()).hexdigest()[:16]
        path = self.cache_dir / f"k_{digest}.py"
        module_name = f"heteropass_numba_{digest}"
        # One thread at a time: another would find the module registered below before it has its kernels.
        with _LOAD_LOCK:
            return self._load_locked(module_source, path, module_name)

    def _load_locked(self, module_source: str, path: Path, module_name: str) -> Any:
        if not path.exists():
            # Written once and never touched again: Numba's cache index is keyed on the file's mtime.
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(module_source)
            tmp.replace(path)
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            # Registered first: the cfunc compiles (or loads from the cache) while the module executes,
            # and a cached entry finds its globals by module name.
            sys.modules[module_name] = module
            try:
                with compile_options(module_source):
                    spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[module_name]
                raise
        return module.kernel_ptr.ctypes


def _compilable(plan: GemmPlan) -> GemmPlan:
    """`plan` without the alternatives whose epilogue this backend cannot compile."""
    keep = []
    for option in plan.alternatives:
        try:
            if option.epilogue is not None:
                build_spec(option.epilogue, "elementwise", "check")
            keep.append(option)
        except (Unsupported, ValueError):
            continue
    plan.alternatives = keep
    return plan


def _epilogue_operands(body: Graph, plan: GemmPlan) -> list:
    names = {v.name for v in plan.epilogue.inputs[1:]} if plan.epilogue is not None else set()
    return [v for v in body.inputs if v.name in names]


def contiguous_out(out: list[torch.Tensor]) -> list[torch.Tensor]:
    """`out`, whose buffers must be contiguous: the kernel writes row-major memory through their addresses."""
    for t in out:
        if not t.is_contiguous():
            raise ValueError(f"out= buffers must be contiguous, got strides {t.stride()} for shape {list(t.shape)}")
    return out


def _region_of(node: Node) -> tuple[Graph, str]:
    """The region `node` compiles as: its body and kind; a single op becomes a one-node body.
    Raises Unsupported or ValueError when this backend cannot compile it."""
    if node.op == "fused":
        kind = node.attrs["kind"]
        body = _with_constant_operands(node)
        if kind not in _REGION_KINDS:
            raise Unsupported(f"fused region of kind {kind}")
    else:
        op = get_op(node.op)
        if op.kind == "elementwise":
            check_elementwise(node)
            kind = "elementwise"
        elif node.op in REDUCE_OPS or node.op in ROW_OPS:
            kind = "reduction"
            collapsed = _collapsed_reduction(node)
            if collapsed is not None:
                _check_region(collapsed, kind)
                return collapsed, kind
        elif supports_product(node):
            kind = "gemm"
        elif supports_max_pool(node):
            kind = "pool"
        elif node.op in _QUANT_OPS:
            from .quant_gemm import supports_quant_linear

            if not supports_quant_linear(node):
                raise Unsupported(f"{node.op} on {[str(v.type) for v in node.inputs]}")
            kind = "quant"
        elif node.op == "attention_with_cache":
            from .numba_attention import supports_cached_attention

            if not supports_cached_attention(node):
                raise Unsupported(f"{node.op} on {[str(v.type) for v in node.inputs]}")
            kind = "cached_attention"
        elif op.kind in _LIBRARY_KINDS or node.op in _LIBRARY_OPS:
            if not all(v.type.is_static for v in [*node.inputs, *node.outputs]):
                raise Unsupported(f"{node.op} with symbolic shapes")
            kind = "library"
        else:
            raise Unsupported(f"op {node.op}")
        body = _single_node_body(node)
    _check_region(body, kind)
    return body, kind


def _with_constant_operands(node: Node) -> Graph:
    """The body of region `node` with the inputs that the node feeds constants turned into those constants,
    so that a library product can prepack a constant weight. The region then takes only its other operands."""
    body: Graph = node.attrs["body"]
    if all(v.const is None for v in node.inputs):
        return body
    copy = Graph(body.name)
    mapping = {id(inner): copy.add_constant(inner.name, outer.const) if outer.const is not None
               else copy.add_input(inner.name, inner.type)
               for inner, outer in zip(body.inputs, node.inputs, strict=True)}
    mapping.update((id(v), copy.add_constant(v.name, v.const)) for v in body.constants.values())
    for n in body.nodes:
        new = copy.add_node(n.op, [mapping[id(v)] for v in n.inputs], n.attrs, output_types=[v.type for v in n.outputs],
                            names=[v.name for v in n.outputs])
        mapping.update((id(a), b) for a, b in zip(n.outputs, new.outputs, strict=True))
    copy.set_outputs(mapping[id(v)] for v in body.outputs)
    return copy


def _operand_names(body: Graph, name: str, namer: Namer, namespace: dict[str, Any]) -> list[str]:
    """Glue names of a one-node body's operands: its parameters `a0, a1, ...`, or a constant bound in `namespace`."""
    index = {id(v): f"a{i}" for i, v in enumerate(body.inputs)}
    names = []
    for value in body.nodes[0].inputs:
        if value.const is None:
            names.append(index[id(value)])
        else:
            names.append(namer.reserve(f"{name}_{python_name(value.name)}"))
            namespace[names[-1]] = value.const
    return names


def _compile_planned(body: Graph, name: str, namer: Namer, namespace: dict[str, Any], plan: Any,
                     arity: int) -> _Region:
    """Glue for a one-node region run by `plan` (a quant_gemm or numba_attention plan, measured fastest on its
    shapes): `plan.call(operands..., out=)` with absent optional operands passed as None up to `arity`."""
    node = body.nodes[0]
    call_name = namer.reserve(f"{name}_{python_name(plan.name)}")
    namespace[call_name] = plan.call
    operands = _operand_names(body, name, namer, namespace) + ["None"] * (arity - len(node.inputs))
    params = [f"a{i}" for i in range(len(body.inputs))]
    source = (f"def {name}({', '.join([*params, 'out=None'])}):\n"
              f"    # {node.op}: {plan.text}\n"
              f"    return [{call_name}({', '.join(operands)}, out=None if out is None else contiguous_out(out)[0])]\n")
    return _Region(source, [], True)


def _collapsed_reduction(node: Node) -> Graph | None:
    """A reduction over several adjacent dims (a global average pool's `mean` over H and W, a `sum` over
    every dim) as the one-dim reduction the kernels compute, over the contiguous input viewed with those
    dims merged: the memory is the same, so the kernel runs on the original tensor. Its outputs then have
    the dims merged (see `_reshaping_outputs`). None for other reductions."""
    if (node.op not in REDUCE_OPS or len(node.inputs) != 1 or not node.inputs[0].type.is_static
            or node.inputs[0].const is not None):
        return None
    shape = node.inputs[0].type.static_shape()
    dims = sorted({d % len(shape) for d in node.attrs["dims"]}) if node.attrs["dims"] is not None and shape \
        else list(range(len(shape)))
    if len(dims) < 2 or dims != list(range(dims[0], dims[-1] + 1)):
        return None
    merged = (*shape[:dims[0]], math.prod(shape[dims[0]:dims[-1] + 1]), *shape[dims[-1] + 1:])
    body = Graph(node.op)
    x = body.add_input(node.inputs[0].name, TensorType(merged, node.inputs[0].type.dtype))
    reduced = body.add_node(node.op, [x], {**node.attrs, "dims": (dims[0],)}, names=[v.name for v in node.outputs])
    body.set_outputs(reduced.outputs)
    return body


def _reshaping_outputs(glue: str, name: str, node: Node, namer: Namer) -> str:
    """`glue` renamed, under a function `name` that views its results in the shapes of `node`'s outputs."""
    inner = namer.reserve(f"{name}_rows")
    shapes = [tuple(v.type.static_shape()) for v in node.outputs]
    operands = [f"a{i}" for i in range(sum(v.const is None for v in dict.fromkeys(node.inputs)))]
    params, call_args = ", ".join([*operands, "out=None"]), ", ".join([*operands, "out=out"])
    results = ", ".join(f"r{i}.reshape({shape})" for i, shape in enumerate(shapes))
    targets = ", ".join(f"r{i}" for i in range(len(shapes)))
    return (glue.replace(f"def {name}(", f"def {inner}(", 1) +
            f"\ndef {name}({params}):\n    [{targets}] = {inner}({call_args})\n    return [{results}]\n")


def _compile_library(body: Graph, name: str, namer: Namer, namespace: dict[str, Any]) -> _Region:
    """Glue that calls the op's PyTorch implementation (see `_LIBRARY_KINDS`); it makes its own outputs.
    A view op on a run-time operand is one tensor method call (see `library_glue.view_expression`)."""
    node = body.nodes[0]
    if node.inputs[0].const is None and (expression := view_expression(node)) is not None:
        params = [f"a{i}" for i in range(len(body.inputs))]
        source = f"def {name}({', '.join([*params, 'out=None'])}):\n    return {expression}\n"
        return _Region(source, [], False)
    function = namer.reserve(f"{name}_{node.op}")
    namespace.update({function: get_op(node.op).reference, "DType": DType, "as_outputs": as_outputs})
    args = _operand_names(body, name, namer, namespace)
    args += [f"{key}={py_literal(value)}" for key, value in node.attrs.items()]
    params = [f"a{i}" for i in range(len(body.inputs))]
    source = (f"def {name}({', '.join([*params, 'out=None'])}):\n"
              f"    return as_outputs({function}({', '.join(args)}))\n")
    return _Region(source, [], False)


def _compile_take(body: Graph, name: str, namer: Namer, namespace: dict[str, Any]) -> _Region:
    """Glue for `take` (see `library_glue.take_source`); it writes into `out=`."""
    function = namer.reserve(f"{name}_take")
    namespace[function] = get_op("take").reference
    table, index = _operand_names(body, name, namer, namespace)
    return _Region(take_source(body.nodes[0], name, table, index, function), [], True)


def _check_region(body: Graph, kind: str) -> None:
    if kind in ("quant", "cached_attention", "library", "pool"):
        return
    if kind == "gemm":
        plan = plan_gemm(body)
        if plan.epilogue is not None:
            build_spec(plan.epilogue, "elementwise", "check")
    else:
        build_spec(body, kind, "check")


def _single_node_body(node: Node) -> Graph:
    body = Graph(node.op)
    mapping = {}
    for value in node.inputs:
        if id(value) in mapping:
            continue
        if value.const is not None:
            mapping[id(value)] = body.add_constant(value.name, value.const)
        else:
            mapping[id(value)] = body.add_input(value.name, value.type)
    copy = body.add_node(node.op, [mapping[id(v)] for v in node.inputs], node.attrs,
                         output_types=[v.type for v in node.outputs], names=[v.name for v in node.outputs])
    body.set_outputs(copy.outputs)
    return body


@dataclass
class _Region:
    """A compiled region: its glue, the sources of the kernels that calls, whether it writes into `out=`,
    the library call a gemm region makes, and the kernel a one-kernel region calls (see `Step.direct`)."""

    glue: str
    kernels: list[str]
    takes_out: bool
    product: str = ""
    direct: tuple[str, list[tuple[str, int | str]]] | None = None


def _outer(nodes: list[Node], values: list[Value]) -> list[Value]:
    """The partition values that a chain graph's `values` stand for (the chain graph keeps their names)."""
    by_name = {v.name: v for n in nodes for v in [*n.inputs, *n.outputs]}
    return [by_name[v.name] for v in values]


def _chain_source(name: str, chain: Chain) -> str:
    """Glue for a chain: one session call; the comment says which nodes it computes."""
    params = [f"a{i}" for i in range(len(chain.graph.inputs))]
    lines = [f"def {name}({', '.join([*params, 'out=None'])}):",
             f"    # onnxruntime session over {len(chain.nodes)} nodes, in its blocked NCHWc layout; {chain.note}"]
    lines += [f"    #   {line}" for line in chain.describe()]
    lines.append(f"    return {name}_session({', '.join([*params, 'out=out'])})")
    return "\n".join(lines) + "\n"
