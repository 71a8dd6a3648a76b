"""Products and convolutions for the Numba backend: a library call plus a fused epilogue.

GEMM and convolution are not written in Numba: they go to oneDNN through PyTorch
(`torch.ops.mkldnn._linear_pointwise` / `_convolution_pointwise`, which pick AVX-512 kernels where
MKL's `F.linear` stays on AVX2 on AMD CPUs, but reorder the weight on every call), to MKL
(`torch.addmm` / `torch.mm`, which write into a given `out=`), to `torch.matmul` / `torch.bmm`, or,
for constant weights, to ONNX Runtime's MLAS (ort_gemm.py), the fastest of them on AVX2; a 3x3 stride-1
convolution may also run by Winograd's F(4x4, 3x3), Numba transforms around one batched GEMM (winograd.py).
A region's epilogue becomes a oneDNN post-op when it is a bias add and/or one activation that
oneDNN computes to float32 accuracy; otherwise a Numba elementwise kernel applies it to the
product, in place when the product is not needed afterwards. `plan_gemm` lists the ways to compute
a region; `choose_plan` times them on the region's shapes and keeps the fastest.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch

from ..ir import DType, Graph, Node, Value, get_op
from .ort_gemm import ort_product_call
from .timing import fastest_runs
from .winograd import winograd_conv_call

PRODUCT_OPS = ("linear", "matmul", "bmm", "conv")

# Activations oneDNN fuses as post-ops with float32 accuracy and IEEE NaN propagation: not its tanh-GELU (off
# by ~1e-4), nor its relu (or leaky_relu), which maps NaN to 0 where torch.relu keeps it. The Numba epilogue
# applies those: one more pass over the product (~15% on a 64-channel 1x1 conv over 56x56 when forced, ~0 on
# a 3x3 one or a 768x3072 linear), but the timed choice rarely took the relu post-op (ONNX Runtime, Winograd).
_POST_OPS: dict[str, Callable[[Node], tuple[str, str] | None]] = {
    "sigmoid": lambda n: ("sigmoid", ""),
    "tanh": lambda n: ("tanh", ""),
    "silu": lambda n: ("swish", ""),
    "hardswish": lambda n: ("hardswish", ""),
    "gelu": lambda n: ("gelu", "none") if n.attrs["approximate"] == "none" else None,
}


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def supports_product(node: Node) -> bool:
    """Whether `product_call` handles `node`: float32/float64 linear with a 2-D weight, matmul, bmm or batched
    conv with static shapes (an unbatched conv's input has no batch dim, which the library calls require)."""
    if node.op not in PRODUCT_OPS:
        return False
    types = [v.type for v in [*node.inputs, *node.outputs]]
    if any(not t.is_static or t.dtype not in (DType.f32, DType.f64) for t in types):
        return False
    if len({t.dtype for t in types}) != 1:
        return False
    if node.op == "linear" and node.inputs[1].type.rank != 2:
        return False  # a 1-D weight (one score per row): no library primitive takes it
    return node.op != "conv" or (node.inputs[1].type.rank in (3, 4, 5)
                                 and node.inputs[0].type.rank == node.inputs[1].type.rank)


@dataclass
class Product:
    """How to compute one product: `call(x, w, b, out=None)` (b may be None) and the source line naming it.

    `writes_out`: the library writes the result into `out` when one is given (otherwise `out` is ignored).
    """

    call: Callable[..., torch.Tensor]
    text: str
    post_op: str = "none"
    writes_out: bool = False


def onednn_computes(node: Node) -> bool:
    """Whether `product_call` computes `node` with oneDNN, the one library here that applies post-ops: a
    float32 linear or 1-D/2-D convolution. oneDNN cannot make a primitive for an empty reduction (a
    linear of 0 inputs); empty products cost nothing."""
    nonempty = all(math.prod(v.type.static_shape()) for v in [*node.inputs, *node.outputs])
    kind = node.op == "linear" or (node.op == "conv" and node.inputs[1].type.rank - 2 in (1, 2))
    return kind and node.outputs[0].type.dtype is DType.f32 and onednn_available() and nonempty


def product_call(node: Node, post_op: tuple[str, str] | None = None, use_onednn: bool = True) -> Product:
    """The library call for product `node`, with oneDNN post-op `post_op` = (attr, algorithm) when given
    (only where `onednn_computes`: other libraries would leave the activation out)."""
    attr, algorithm = post_op or ("none", "")
    onednn = use_onednn and onednn_computes(node)
    if post_op is not None and not onednn:
        raise ValueError(f"{node.op} {node.outputs[0].type} has no oneDNN primitive to apply post-op {attr}")
    if node.op == "linear":
        if onednn:
            onednn = torch.ops.mkldnn._linear_pointwise.default

            def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, out: object = None) -> torch.Tensor:
                return onednn(x, w, b, attr, [], algorithm)

            return Product(linear, f'torch.ops.mkldnn._linear_pointwise(x, w, b, "{attr}", [], "{algorithm}")', attr)
        return mkl_linear(node)
    if node.op == "conv":
        spatial = node.inputs[1].type.rank - 2
        stride, padding, dilation = (_expand(node.attrs[k], spatial) for k in ("stride", "padding", "dilation"))
        groups = node.attrs["groups"]
        if onednn:
            def conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, out: object = None) -> torch.Tensor:
                return torch.ops.mkldnn._convolution_pointwise(x, w, b, padding, stride, dilation, groups, attr, [],
                                                               algorithm)

            return Product(conv, f"torch.ops.mkldnn._convolution_pointwise(x, w, b, {padding}, {stride}, "
                                 f'{dilation}, {groups}, "{attr}", [], "{algorithm}")', attr)
        reference = get_op("conv").reference

        def conv_reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                           out: object = None) -> torch.Tensor:
            return reference(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)

        return Product(conv_reference, f"F.conv{spatial}d(x, w, b, {stride}, {padding}, {dilation}, {groups})")
    fn = torch.matmul if node.op == "matmul" else torch.bmm
    if any(v.type.rank < 2 for v in node.inputs):
        # torch.matmul computes a vector operand as a matrix and resizes a given `out` to that shape.
        return Product(lambda a, b, _, out=None: fn(a, b), f"torch.{fn.__name__}(a, b)")

    def product(a: torch.Tensor, b: torch.Tensor, _: None, out: torch.Tensor | None = None) -> torch.Tensor:
        return fn(a, b, out=out)

    return Product(product, f"torch.{fn.__name__}(a, b, out=out)", writes_out=True)


def mkl_linear(node: Node) -> Product:
    """`linear` through MKL: `torch.addmm` (`torch.mm` without a bias) on the input viewed as rows, into `out`."""
    x_shape = node.inputs[0].type.static_shape()
    rows, k = math.prod(x_shape[:-1]), x_shape[-1]
    n = node.outputs[0].type.static_shape()[-1]

    def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, out: torch.Tensor | None = None
               ) -> torch.Tensor:
        x2 = x.reshape(rows, k)
        y2 = None if out is None else out.view(rows, n)
        y2 = torch.mm(x2, w.t(), out=y2) if b is None else torch.addmm(b, x2, w.t(), out=y2)
        return y2.view(out_shape) if out is None else out

    out_shape = tuple(node.outputs[0].type.static_shape())
    return Product(linear, "torch.addmm(b, x, w.t(), out=out)" if len(node.inputs) > 2 else
                   "torch.mm(x, w.t(), out=out)", writes_out=True)


def library_products(node: Node) -> list[Product]:
    """Every library call that computes bare product `node` (no post-op), the oneDNN one first; ONNX
    Runtime's MLAS where the weight is a constant (see ort_gemm.py), and Winograd's F(4x4, 3x3) for a
    3x3 stride-1 convolution with a constant weight (see winograd.py)."""
    products = [product_call(node)]
    if node.op == "linear" and products[0].post_op == "none" and "mkldnn" in products[0].text:
        products.append(mkl_linear(node))
    if node.op == "conv" and "mkldnn" in products[0].text:
        products.append(product_call(node, use_onednn=False))
    for found in (ort_product_call(node), winograd_conv_call(node)):
        if found is not None:
            products.append(Product(found[0], found[1], writes_out=True))
    return products


# Measured choices, per (options, operand shapes, threads) in this process: timing is a property of the machine.
_CHOICES: dict[tuple, int] = {}
# Products take milliseconds at most and are timed with cold caches (see timing.py): a few turns each.
PLAN_BUDGET_S = 0.05


def choose_plan(plan: GemmPlan, epilogue_call: Callable[[GemmPlan], Callable[[torch.Tensor], object]],
                choices: dict[tuple, int] = _CHOICES) -> GemmPlan:
    """The fastest of `plan.options`, each timed as it runs in a model: its product into a preallocated
    output, then its epilogue (`epilogue_call(option)` applies the option's Numba epilogue to a product),
    on random operands of the region's shapes with the caches flushed before each run, the options
    taking turns (`timing.fastest_runs`); remembered in `choices`.
    """
    options = plan.options
    if len(options) == 1:
        return plan
    key = (tuple(o.product.text for o in options), tuple(_signature(o.epilogue) for o in options),
           tuple(tuple(v.type.static_shape()) if v is not None else None for o in options for v in o.operands),
           torch.get_num_threads())
    if key not in choices:
        epilogues: dict[int, Callable[[torch.Tensor], object]] = {}
        runs = {}
        for i, option in enumerate(options):
            args = _examples(option)
            out = torch.empty(option.product_node.outputs[0].type.static_shape(),
                              dtype=option.product_node.outputs[0].type.dtype.torch)
            if option.epilogue is None:
                runs[i] = partial(option.product.call, *args, out)
                continue
            if id(option.epilogue) not in epilogues:
                epilogues[id(option.epilogue)] = epilogue_call(option)
            runs[i] = partial(_then, option.product.call, args, out, epilogues[id(option.epilogue)])
        seconds = fastest_runs(runs, PLAN_BUDGET_S, evict=True)
        choices[key] = min(seconds, key=seconds.__getitem__)
    return options[choices[key]]


def _then(product: Callable[..., torch.Tensor], args: list[torch.Tensor | None], out: torch.Tensor,
          epilogue: Callable[[torch.Tensor], object]) -> None:
    epilogue(product(*args, out))


def _signature(graph: Graph | None) -> tuple:
    """What timing depends on in an epilogue: its ops with their operand types and attributes."""
    if graph is None:
        return ()
    return tuple((n.op, tuple(str(v.type) for v in n.inputs), repr(sorted(n.attrs.items()))) for n in graph.nodes)


def _examples(option: GemmPlan) -> list[torch.Tensor | None]:
    args = [None if v is None else torch.randn(v.type.static_shape(), dtype=v.type.dtype.torch)
            for v in option.operands]
    if args[2] is not None:
        args[2] = args[2].reshape(-1)  # a conv bias add broadcasts a [C, 1, 1] tensor
    return args


def _expand(values: tuple[int, ...], rank: int) -> list[int]:
    return list(values) * rank if len(values) == 1 else list(values)


@dataclass
class GemmPlan:
    """A gemm region split into the product (with what oneDNN fuses) and the rest, the epilogue.

    `operands` are the product's (x, w, b) as body values (b may be None); `epilogue` is None when
    the library computes the whole region.
    """

    product: Product
    product_node: Node
    operands: list[Value | None]
    epilogue: Graph | None
    alternatives: list[GemmPlan] = field(default_factory=list)

    @property
    def options(self) -> list[GemmPlan]:
        """This plan and its alternatives, each computing the whole region."""
        return [self, *self.alternatives]


def plan_gemm(body: Graph) -> GemmPlan:
    """Split a gemm region body; the plan's `alternatives` compute it with other library calls.
    A linear with a bias and an epilogue may also leave its bias to the epilogue, which passes over the
    product anyway (the libraries add a bias by copying it into the output first: one more pass).
    Raises ValueError when the body is not a product plus epilogue."""
    plan = _preferred_plan(body)
    node = plan.product_node
    bare = list(node.inputs) + [None] * (3 - len(node.inputs))
    epilogue = _epilogue_graph(body, node) if len(body.nodes) > 1 else None
    for product in library_products(node):
        if product.text != plan.product.text:
            plan.alternatives.append(GemmPlan(product, node, bare, epilogue))
    if node.op == "linear" and len(node.inputs) > 2 and epilogue is not None:
        unbiased = _without_bias(node)
        moved = _epilogue_graph(body, node, bias=node.inputs[2])
        products = [mkl_linear(unbiased)]
        if (found := ort_product_call(unbiased)) is not None:
            products.append(Product(found[0], found[1], writes_out=True))
        for product in products:
            product.text += "; bias in the epilogue"
            plan.alternatives.append(GemmPlan(product, node, [*node.inputs[:2], None], moved))
    return plan


def _without_bias(node: Node) -> Node:
    """A copy of linear `node` without its bias, in a graph of its own (its weight stays a constant)."""
    graph = Graph("product")
    x, w = node.inputs[:2]
    operands = [graph.add_input(x.name, x.type),
                graph.add_constant(w.name, w.const) if w.const is not None else graph.add_input(w.name, w.type)]
    copy = graph.add_node(node.op, operands, node.attrs, output_types=[node.outputs[0].type])
    graph.set_outputs(copy.outputs)
    return copy


def _preferred_plan(body: Graph) -> GemmPlan:
    if not body.nodes or not supports_product(body.nodes[0]):
        raise ValueError("a gemm region must start with a float linear, matmul, bmm or conv")
    node = body.nodes[0]
    operands: list[Value | None] = list(node.inputs) + [None] * (3 - len(node.inputs))
    rest = body.nodes[1:]
    if any(get_op(n.op).kind != "elementwise" for n in rest):
        raise ValueError("a gemm region's epilogue must be elementwise")
    fused: list[Node] = []
    post_op = None
    if onednn_computes(node):
        fused, post_op, bias = _onednn_epilogue(body, node, operands[2])
        operands[2] = bias
    if len(fused) == len(rest):
        return GemmPlan(product_call(node, post_op), node, operands, None)
    # Otherwise the library computes the bare product (with its own bias) and Numba the rest.
    return GemmPlan(product_call(node), node, list(node.inputs) + [None] * (3 - len(node.inputs)),
                    _epilogue_graph(body, node))


def _onednn_epilogue(body: Graph, node: Node, bias: Value | None
                     ) -> tuple[list[Node], tuple[str, str] | None, Value | None]:
    """The leading epilogue nodes oneDNN can take: [add(bias)] [activation], each the only reader of the last."""
    fused: list[Node] = []
    current = node.outputs[0]
    rest = body.nodes[1:]
    out_channels = node.outputs[0].type.static_shape()[1 if node.op == "conv" else -1]
    bias_shape = (out_channels,) + (1,) * (node.outputs[0].type.rank - 2 if node.op == "conv" else 0)
    dtype = node.outputs[0].type.dtype

    def sole_reader(value: Value) -> Node | None:
        if body.is_output(value) or len(value.uses) != 1:
            return None
        return value.uses[0][0]

    nxt = sole_reader(current)
    if (bias is None and nxt is not None and rest and nxt is rest[0] and nxt.op == "add"
            and nxt.outputs[0].type == current.type):
        other = nxt.inputs[1] if nxt.inputs[0] is current else nxt.inputs[0]
        if other is not current and other.type.dtype is dtype and tuple(other.type.static_shape()) == bias_shape:
            fused.append(nxt)
            bias = other
            current = nxt.outputs[0]
            nxt = sole_reader(current)
    post_op = None
    if nxt is not None and len(fused) + 1 < len(rest) + 1 and nxt is rest[len(fused)] and nxt.op in _POST_OPS:
        post_op = _POST_OPS[nxt.op](nxt)
        if post_op is not None and nxt.outputs[0].type == current.type:
            fused.append(nxt)
        else:
            post_op = None
    if len(fused) != len(rest) or not body.outputs or body.outputs[0] is not (fused[-1].outputs[0] if fused
                                                                                else node.outputs[0]):
        return [], None, node.inputs[2] if len(node.inputs) > 2 else None
    if len(body.outputs) != 1:
        return [], None, node.inputs[2] if len(node.inputs) > 2 else None
    return fused, post_op, bias


def _epilogue_graph(body: Graph, node: Node, bias: Value | None = None) -> Graph:
    """The body without its product node; the product is the epilogue's first input. With `bias`, the
    epilogue first adds it to the product (computed without it)."""
    epi = Graph(f"{body.name}_epilogue")
    product = epi.add_input(node.outputs[0].name, node.outputs[0].type)
    mapping = {id(node.outputs[0]): product}
    used = {id(v) for n in body.nodes[1:] for v in n.inputs} | {id(v) for v in body.outputs} | {id(bias)}
    for value in body.inputs:
        if id(value) in used:
            mapping[id(value)] = epi.add_input(value.name, value.type)
    if bias is not None:
        if id(bias) not in mapping:
            mapping[id(bias)] = epi.add_constant(bias.name, bias.const)
        biased = epi.add_node("add", [product, mapping[id(bias)]], output_types=[product.type])
        mapping[id(node.outputs[0])] = biased.outputs[0]
    for n in body.nodes[1:]:
        for value in n.inputs:
            if value.const is not None and id(value) not in mapping:
                mapping[id(value)] = epi.add_constant(value.name, value.const)
        copy = epi.add_node(n.op, [mapping[id(v)] for v in n.inputs], n.attrs,
                            output_types=[v.type for v in n.outputs], names=[v.name for v in n.outputs])
        mapping.update((id(a), b) for a, b in zip(n.outputs, copy.outputs, strict=True))
    for value in body.outputs:
        if id(value) not in mapping:
            raise ValueError(f"gemm region output %{value.name} is not computed by the epilogue")
    epi.set_outputs(mapping[id(v)] for v in body.outputs)
    return epi
