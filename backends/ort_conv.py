"""Chains of convolutions through one ONNX Runtime session, which keeps activations in its blocked layout.

One session per convolution (ort_gemm.py) reorders its input from NCHW to ONNX Runtime's blocked
NCHWc layout and its output back on every call, and leaves the residual add and activation to a
Numba epilogue. A session over several consecutive convolutions (a ResNet block, or a run of them)
reorders only at its ends and fuses each convolution's bias, residual add ("Sum" input) and
activation into the convolution itself. ONNX Runtime is used as a convolution library here: a chain
holds only convolutions with constant weights, the elementwise epilogues ONNX Runtime fuses into
them (`CHAIN_EPILOGUE_OPS`) and the pools they feed, which then read the blocked layout too (a ResNet
stem's max pool); everything else stays with the Numba backend. `choose_chains` times a run as one
session, as sessions split at its pools, and node by node, and keeps the fastest.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from ..ir import DType, Graph, Node, Value, format_graph
from .ort_gemm import BoundRuns, ort_applies, ort_available, session_options
from .timing import fastest_runs

try:
    import onnxruntime as ort
except ImportError:  # onnxruntime is optional for this backend
    ort = None

# Epilogue ops of a convolution that ONNX Runtime's NCHWc convolution computes inside it: a residual
# or bias add and an activation.
CHAIN_EPILOGUE_OPS = ("add", "relu", "sigmoid", "tanh", "leaky_relu")
# Pools a chain holds after its convolutions, so that the activations stay blocked across them.
CHAIN_POOL_OPS = ("max_pool", "avg_pool")


class ChainUnsupported(Exception):
    """ONNX Runtime cannot run a chain: the exporter or the session refused it; the message says why."""


def chain_member(node: Node) -> bool:
    """Whether `node` may join a convolution chain: a float32 conv with constant weights that ONNX Runtime
    runs (see ort_gemm.py), alone or as the product of a "gemm" region whose epilogue is `CHAIN_EPILOGUE_OPS`."""
    if not ort_available():
        return False
    if node.op == "conv":
        return ort_applies(node)
    if node.op != "fused" or node.attrs["kind"] != "gemm" or not node.attrs["body"].nodes:
        return False
    body: Graph = node.attrs["body"]
    outer = {id(inner): value for inner, value in zip(body.inputs, node.inputs, strict=True)}
    product = body.nodes[0]
    return (product.op == "conv" and ort_applies(product, lambda v: outer.get(id(v), v).const is not None)
            and all(n.op in CHAIN_EPILOGUE_OPS for n in body.nodes[1:])
            and all(v.type.dtype is DType.f32 for n in body.nodes for v in [*n.inputs, *n.outputs]))


def chain_pool(node: Node) -> bool:
    """Whether pool `node` may follow a convolution in a chain: a float32 2-D pool over static shapes whose
    windows all lie in the padded input (`_whole_windows`)."""
    return (ort_available() and node.op in CHAIN_POOL_OPS and len(node.attrs["kernel"]) == 2
            and node.inputs[0].const is None and node.inputs[0].type.rank == 4
            and all(v.type.is_static and v.type.dtype is DType.f32 for v in [*node.inputs, *node.outputs])
            and _whole_windows(node))


def _whole_windows(node: Node) -> bool:
    """Whether pool `node`'s windows all lie in the padded input: its output has the size that rounding
    down gives, and so has ONNX's (which rounds up under `ceil_mode`). Otherwise ONNX Runtime and PyTorch
    may disagree: PyTorch drops a last window that would start in the right padding, ONNX Runtime keeps
    it (a larger output), and averages over windows cut at the input's end differ between them."""
    kernel = node.attrs["kernel"]

    def per_dim(values: tuple[int, ...]) -> list[int]:
        return list(values) * len(kernel) if len(values) == 1 else list(values)

    stride, padding = per_dim(node.attrs["stride"] or kernel), per_dim(node.attrs["padding"])
    dilation = per_dim(node.attrs.get("dilation", (1,)))
    sizes = node.inputs[0].type.static_shape()[2:]
    spans = [size + 2 * p - d * (k - 1) - 1 for size, k, p, d in zip(sizes, kernel, padding, dilation, strict=True)]
    floor = [span // s + 1 for span, s in zip(spans, stride, strict=True)]
    onnx = [-(-span // s) + 1 for span, s in zip(spans, stride, strict=True)] if node.attrs["ceil_mode"] else floor
    return floor == onnx == list(node.outputs[0].type.static_shape()[2:])


def chain_runs(nodes: Sequence[Node], member: Callable[[Node], bool]) -> list[list[Node]]:
    """The maximal runs of consecutive `nodes` (a topological order, so every run is convex) of `member`s
    and the pools (`chain_pool`) after them, that hold two nodes or more: a convolution and the pool it
    feeds are a chain too."""
    runs: list[list[Node]] = []
    current: list[Node] = []
    for node in [*nodes, None]:
        if node is not None and (member(node) or (chain_pool(node) and current)):
            current.append(node)
            continue
        if len(current) >= 2:
            runs.append(current)
        current = []
    return runs


def split_at_pools(run: list[Node], member: Callable[[Node], bool]) -> list[list[Node]]:
    """The parts of `run` between its pools that hold at least two members (shorter ones run alone)."""
    parts: list[list[Node]] = [[]]
    for node in run:
        if member(node):
            parts[-1].append(node)
        else:
            parts.append([])
    return [part for part in parts if len(part) >= 2]


def chain_graph(nodes: Sequence[Node], returned: Callable[[Value], bool], name: str = "chain") -> Graph:
    """A graph computing `nodes` (consecutive, convex): its inputs are the values they read from outside,
    its outputs the values they make that other nodes read or that are `returned`; constants are shared."""
    inside = {id(n) for n in nodes}
    graph = Graph(name)
    mapping: dict[int, Value] = {}
    for node in nodes:
        for value in node.inputs:
            if id(value) not in mapping:
                mapping[id(value)] = (graph.add_constant(value.name, value.const) if value.const is not None
                                      else graph.add_input(value.name, value.type))
        copy = graph.add_node(node.op, [mapping[id(v)] for v in node.inputs], node.attrs,
                              output_types=[v.type for v in node.outputs], names=[v.name for v in node.outputs])
        mapping.update((id(old), new) for old, new in zip(node.outputs, copy.outputs, strict=True))
    graph.set_outputs(mapping[id(v)] for n in nodes for v in n.outputs
                      if returned(v) or any(id(user) not in inside for user, _ in v.uses))
    return graph


@dataclass
class Chain:
    """Consecutive `nodes` computed by one session: `call(*inputs, out=None)` computes `graph`, whose
    inputs and outputs are named after the values of `nodes` they stand for; `note` says why it was chosen."""

    nodes: list[Node]
    graph: Graph
    call: Callable[..., list[torch.Tensor]]
    note: str

    def describe(self) -> list[str]:
        """One line per node: `%10 = conv+add+relu(%6, %3)`."""
        lines = []
        for node in self.nodes:
            ops = [n.op for n in node.attrs["body"].nodes] if node.op == "fused" else [node.op]
            operands = ", ".join(f"%{v.name}" for v in node.inputs if v.const is None)
            lines.append(f"%{node.outputs[0].name} = {'+'.join(ops)}({operands})")
        return lines


# Whole runs take milliseconds each: more turns than a product's timing gets, so that load on a shared
# machine does not decide.
CHAIN_BUDGET_S = 0.2
# Measured choices, per (run, threads) in this process, as for products (gemm.choose_plan).
_CHOICES: dict[tuple[str, int], tuple[str, str]] = {}


def choose_chains(run: list[Node], member: Callable[[Node], bool], returned: Callable[[Value], bool],
                  one_by_one: Sequence[Callable[[], object]], timed: bool = True,
                  choices: dict[tuple[str, int], tuple[str, str]] = _CHOICES) -> list[Chain]:
    """The chains that compute `run` (from `chain_runs`) fastest: the whole run in one session, its parts
    between pools (`split_at_pools`; the pools and lone nodes then run by themselves), or none.

    `one_by_one[i]()` runs `run[i]` by itself on random operands. Every session and node is timed on
    random operands, all taking turns (`timing.fastest_runs`); the choice is remembered in `choices`.
    Without `timed`, the whole run is one session whenever ONNX Runtime runs it.
    """
    options = [run, *split_at_pools(run, member)] if not all(map(member, run)) else [run]
    graphs = [chain_graph(nodes, returned) for nodes in options]
    sessions: dict[int, Callable[..., list[torch.Tensor]] | None] = {}

    def session(i: int) -> Callable[..., list[torch.Tensor]] | None:
        if i not in sessions:
            try:
                sessions[i] = chain_session(graphs[i])
            except ChainUnsupported:
                sessions[i] = None  # a chain ONNX Runtime cannot run is no option
        return sessions[i]

    if not timed:
        return [Chain(run, graphs[0], call, "one session whenever possible")] if (call := session(0)) else []
    key = (format_graph(graphs[0]), torch.get_num_threads())
    if key not in choices:
        runs: dict[Hashable, Callable[[], object]] = {("node", j): fn for j, fn in enumerate(one_by_one)}
        for i, graph in enumerate(graphs):
            if (call := session(i)) is not None:
                runs[("chain", i)] = partial(call, *(torch.randn(v.type.static_shape()) for v in graph.inputs))
        seconds = fastest_runs(runs, CHAIN_BUDGET_S)
        alone = {id(n): seconds[("node", j)] for j, n in enumerate(run)}
        totals = {"none": sum(alone.values())}
        if ("chain", 0) in seconds:
            totals["whole"] = seconds[("chain", 0)]
        if len(options) > 1 and all(("chain", i) in seconds for i in range(1, len(options))):
            in_parts = {id(n) for part in options[1:] for n in part}
            totals["parts"] = (sum(seconds[("chain", i)] for i in range(1, len(options)))
                               + sum(t for node_id, t in alone.items() if node_id not in in_parts))
        times = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in totals.items())
        choices[key] = (min(totals, key=totals.__getitem__), times)
    choice, times = choices[key]
    picked = {"whole": [0], "parts": list(range(1, len(options))), "none": []}[choice]
    chains = [Chain(options[i], graphs[i], session(i), f"measured {times}") for i in picked]
    return [chain for chain in chains if chain.call is not None]


def chain_session(graph: Graph) -> Callable[..., list[torch.Tensor]]:
    """`call(*inputs, out=None)` running `graph` (a chain: its nodes pass `chain_member`, its
    constants are the weights) in one ONNX Runtime session; the results land in `out` when given.
    The session binds the tensors' memory directly, so nothing is copied. It runs once here, on random
    inputs: a session that ONNX Runtime builds but cannot run raises `ChainUnsupported`, not a later call."""
    from ..ir.onnx_exporter import OnnxExportError, export_onnx

    if ort is None:
        raise ChainUnsupported("onnxruntime is not installed")
    try:
        model = export_onnx(graph, as_functions=False)
    except OnnxExportError as exc:
        raise ChainUnsupported(f"chain {graph.name}: {exc}") from exc
    threads = torch.get_num_threads()

    def make_session(count: int) -> object:
        return ort.InferenceSession(model.SerializeToString(), session_options(count),
                                    providers=["CPUExecutionProvider"])

    try:
        session = make_session(threads)
    except Exception as exc:  # ONNX Runtime's errors (Fail, InvalidGraph, ...) derive from Exception only
        raise ChainUnsupported(f"chain {graph.name}: onnxruntime refused it: {exc}") from exc
    in_shapes = [tuple(v.type.static_shape()) for v in graph.inputs]
    out_types = [(tuple(v.type.static_shape()), v.type.dtype.torch) for v in graph.outputs]
    runs = BoundRuns(lambda count: session if count == threads else make_session(count),
                     list(zip([i.name for i in session.get_inputs()], in_shapes, strict=True)),
                     [(o.name, shape) for o, (shape, _) in zip(session.get_outputs(), out_types, strict=True)])

    def call(*inputs: torch.Tensor, out: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        held = [x.contiguous() for x in inputs]
        results = [torch.empty(shape, dtype=dtype) for shape, dtype in out_types] if out is None else out
        for y in results:
            if not y.is_contiguous():
                raise ValueError(f"out= buffers must be contiguous, got strides {y.stride()} for shape {list(y.shape)}")
        runs.run(held, results)
        return results

    try:
        call(*(torch.randn(shape) for shape in in_shapes))
    except Exception as exc:  # as above; e.g. an output shape that ONNX Runtime computes differently
        raise ChainUnsupported(f"chain {graph.name}: onnxruntime cannot run it: {exc}") from exc
    return call
