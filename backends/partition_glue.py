"""The Python function a Numba partition compiles to: one call per step, intermediate values in an arena.

With values in the arena (arena.py) the partition function is made per instance: a factory allocates the
buffers, makes the arena's tensors and the views of them, and returns the function that runs the steps;
a step whose operands are all contiguous arena values calls its kernel with their addresses directly.
Each call takes an idle instance (a concurrent call builds another):

    def numba_0_instance():
        buffers = numba_0_plan.make_buffers()
        v1 = typed(buffers[0], torch.float32, (64, 128))
        region_1_out = [v1]
        v2 = typed(buffers[1], torch.float32, (64, 128))
        p_v1 = v1.data_ptr()
        p_v2 = v2.data_ptr()

        def numba_0_run(x, out=None):
            region_1(x, out=region_1_out)
            k_region_2(p_v1, p_v2)
            [v3] = region_3(v2, out=None if out is None else out)
            return [v3]

        numba_0_run.buffers = buffers  # the memory behind the addresses it passes
        return numba_0_run


    def numba_0(x, out=None):
        ...  # pop an idle instance, or build one; run it; put it back
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import Graph, Node, Value
from .arena import ArenaPlan
from .codegen import Namer


@dataclass
class Step:
    """One call in a partition's function: a region's glue, or a chain's session, computing `nodes`.
    `inputs` are the partition values it is called with, `outputs` those it returns; `source` is its
    glue and `kernels` the sources of the Numba kernels that calls; `product` says which library call a
    gemm region makes (see gemm.py). `library`: a PyTorch call (`view`: one that returns views);
    `direct`: the kernel a one-kernel region calls and its arguments (("a", i): the address of input i,
    ("o", j): of output j, ("c", name): a constant's address bound to `name`)."""

    name: str
    nodes: list[Node]
    inputs: list[Value]
    outputs: list[Value]
    takes_out: bool
    source: str
    kernels: list[str] = field(default_factory=list)
    product: str = ""
    library: bool = False
    view: bool = False
    direct: tuple[str, list[tuple[str, int | str]]] | None = None


def partition_source(partition: Graph, function: str, namer: Namer, steps: list[Step], accepts_out: bool,
                     plan: ArenaPlan) -> str:
    """`def numba_0(x, out=None)`: call each step; with `accepts_out`, outputs of the partition go to `out`
    through the steps that take it, the others are copied there; without, the function ignores `out`.
    With values in `plan`'s arena, the function runs an instance made by `numba_0_instance` (module doc);
    the namespace must bind `{function}_plan` to `plan`, `{function}_idle` to a list and `typed`."""
    outputs = [id(v) for v in partition.outputs]
    position = {id(v): i for i, v in enumerate(partition.outputs) if outputs.count(id(v)) == 1}
    params = ", ".join([*(namer(v) for v in partition.inputs), "out=None"])
    setup: list[str] = []
    body: list[str] = []
    pointers: dict[int, str] = {}

    def pointer(value: Value) -> str:
        if id(value) not in pointers:
            pointers[id(value)] = namer.reserve(f"p_{namer(value)}")
            setup.append(f"{pointers[id(value)]} = {namer(value)}.data_ptr()")
        return pointers[id(value)]

    written: set[int] = set()
    for i, step in enumerate(steps):
        args = [namer(v) for v in step.inputs]
        targets = ", ".join(namer(v) for v in step.outputs)
        if i in plan.views:
            setup.append(f"[{targets}] = {step.name}({', '.join(args)})")
            continue
        if step.outputs and all(id(v) in plan.buffer_of for v in step.outputs):
            for v in step.outputs:
                shape = tuple(v.type.static_shape())
                setup.append(f"{namer(v)} = typed(buffers[{plan.buffer_of[id(v)]}], {v.type.dtype.torch}, {shape})")
            if step.direct is not None and all(id(v) in plan.contiguous for v in step.inputs):
                kernel, template = step.direct
                call = [pointer(step.inputs[int(at)]) if kind == "a" else
                        pointer(step.outputs[int(at)]) if kind == "o" else str(at) for kind, at in template]
                body.append(f"{kernel}({', '.join(call)})")
            else:
                buffers = namer.reserve(f"{step.name}_out")
                setup.append(f"{buffers} = [{targets}]")
                body.append(f"{step.name}({', '.join([*args, f'out={buffers}'])})")
            continue
        wanted = [position.get(id(v)) for v in step.outputs]
        if all(w is not None for w in wanted) and step.takes_out and accepts_out:
            buffers = "out" if wanted == list(range(len(outputs))) else f"[{', '.join(f'out[{w}]' for w in wanted)}]"
            args.append(f"out=None if out is None else {buffers}")
            written.update(id(v) for v in step.outputs)
        body.append(f"[{targets}] = {step.name}({', '.join(args)})")
    # Outputs no kernel wrote into `out` directly (returned twice, or beside an internal value) are copied.
    copies = [(i, v) for i, v in enumerate(partition.outputs) if id(v) not in written] if accepts_out else []
    if copies:
        body.append("if out is not None:")
        body += [f"    out[{i}].copy_({namer(v)})" for i, v in copies]
        body.append("    return out")
    body.append(f"return [{', '.join(namer(v) for v in partition.outputs)}]")
    if not plan.static:
        return "\n".join([f"def {function}({params}):", *(f"    {line}" for line in body)]) + "\n"
    run = namer.reserve(f"{function}_run")
    names = ", ".join([*(namer(v) for v in partition.inputs), "out=out"])
    return "\n".join([
        f"def {function}_instance():",
        f"    buffers = {function}_plan.make_buffers()",
        *(f"    {line}" for line in setup),
        "",
        f"    def {run}({params}):",
        *(f"        {line}" for line in body),
        "",
        f"    {run}.buffers = buffers  # the memory behind the addresses it passes",
        f"    return {run}",
        "",
        "",
        f"def {function}({params}):",
        "    try:",
        f"        run = {function}_idle.pop()",
        "    except IndexError:",
        "        with torch.inference_mode(False):  # buffers (and views of them) that calls out of it may write",
        f"            run = {function}_instance()",
        "    try:",
        f"        return run({names})",
        "    finally:",
        f"        {function}_idle.append(run)",
    ]) + "\n"
