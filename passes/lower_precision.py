"""lower-precision: run matrix products, convolutions and attention in bf16 or fp16 (torch.autocast's policy).

Every node is lowered, kept or follows. `LOWER` ops run in the low dtype: their float32 operands are cast
down and float32 constants among them are converted at compile time (a new low-precision constant, not a
run-time cast). `KEEP_FP32` ops, and ops on no list, run in their original types: an operand lowered upstream
is cast back up. `FOLLOW` ops run in the widest dtype of their non-constant float operands, float32 constants
converted to it, like autocast's "promote" ops, so a chain of elementwise ops after a product stays low.
Graph inputs and outputs keep their types, with casts at the boundary; a value is cast at most once per dtype.
With `config.tolerance`, `precision_budget.search_budget` picks which `LOWER` nodes to lower.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..ir import OPS, DType, Graph, Node, Value, get_op, run_graph
from .base import PassContext, PassResult
from .precision_budget import search_budget
from .precision_config import ErrorMetrics, PrecisionConfig, PrecisionPass, measure_batches
from .simplify_algebra import RULES as SIMPLIFY_RULES
from .simplify_algebra import SimplifyAlgebraPass

# Ops that run in the low dtype: products whose kernels are fast in 16 bits and accumulate in float32
# internally (autocast's lower_precision_fp list for CPU and CUDA).
LOWER: frozenset[str] = frozenset({
    "linear", "matmul", "bmm", "einsum", "conv", "conv_transpose", "scaled_dot_product_attention",
})

_SOFTMAX = "it sums exponentials over a row; 16-bit probabilities lose the small entries attention and losses need"
_STATISTICS = ("it normalizes by a mean or variance over many elements, which 16 bits accumulate poorly; eps falls "
               "below 16-bit resolution (rms_norm's default eps is the dtype's own epsilon)")
_RANGE = "its result overflows f16 (max 65504) for moderately large inputs"
_SINGULAR = "it is steep near a singular point, where 16-bit rounding is magnified"
_ACCUMULATES = "it accumulates many elements; a 16-bit result drops small addends and f16 overflows"

# Ops kept in float32 even when their operands arrive in 16 bits, and why (autocast's float32 lists).
KEEP_FP32: dict[str, str] = {
    **dict.fromkeys(("softmax", "log_softmax"), _SOFTMAX),
    **dict.fromkeys(("layer_norm", "rms_norm", "group_norm", "batch_norm"), _STATISTICS),
    **dict.fromkeys(("exp", "expm1", "pow", "sinh", "cosh", "softplus"), _RANGE),
    **dict.fromkeys(("log", "log1p", "reciprocal", "rsqrt", "tan", "asin", "acos", "acosh", "atanh"), _SINGULAR),
    **dict.fromkeys(("sum", "mean", "var", "std", "prod", "cumsum", "cumprod", "adaptive_avg_pool"), _ACCUMULATES),
}

# Ops that run in the dtype of their inputs: bounded or well-conditioned elementwise math (rounding the result
# costs one 16-bit ulp), comparisons, and data movement and selection (exact in any dtype).
FOLLOW: frozenset[str] = frozenset({
    "neg", "abs", "sqrt", "sin", "cos", "tanh", "sigmoid", "erf", "atan", "asinh", "floor", "ceil", "round",
    "sign", "relu", "silu", "gelu", "hardswish", "hardsigmoid", "mish", "leaky_relu", "elu", "clamp", "isnan",
    "add", "sub", "mul", "div", "maximum", "minimum", "fmod", "remainder", "where", "tril", "triu",
    "eq", "ne", "lt", "le", "gt", "ge",
    "reshape", "permute", "transpose", "expand", "squeeze", "unsqueeze", "flatten", "slice", "concat", "stack",
    "split", "pad", "flip", "tile", "index", "index_select", "gather", "gather_nd", "take", "embedding",
    "max_pool", "adaptive_max_pool", "interpolate", "amax", "amin", "argmax", "argmin", "topk",
})

_UNLISTED = "it is on none of LOWER, FOLLOW and KEEP_FP32 (no checked bf16/f16 form)"
# A product summed in float32 (a decomposed norm's x*x, cosine similarity's x1*x2, a variance): computed in
# f16, it overflows before the sum (300 * 300 > 65504); autocast runs norm and cosine_similarity in float32.
_SUMMED_PRODUCT = "its products feed a float32 sum and overflow f16 (300 * 300 > 65504) before it"
_SUMS = frozenset({"sum", "mean", "var", "std"})
_RESHAPES = frozenset({"reshape", "flatten", "permute", "transpose", "squeeze", "unsqueeze", "expand"})


def _feeds_sum(value: Value) -> bool:
    """Whether a sum-like reduction reads `value`, directly or through reshapes."""
    return any(user.op in _SUMS or (user.op in _RESHAPES and _feeds_sum(user.output)) for user in value.users)
_TARGETS = {"bf16": DType.bf16, "fp16": DType.f16}
_CAST_RULES = tuple(rule for rule in SIMPLIFY_RULES if rule.name in ("cast-noop", "cast-round-trip"))

# How a node is rewritten: run in the target dtype, follow its inputs, keep its original types, or (casts)
# leave the operand alone since the op fixes its own result type.
Mode = str
LOWERED, FOLLOWS, KEPT, AS_IS = "lower", "follow", "keep", "as-is"


def fits(tensor: torch.Tensor, dtype: DType) -> bool:
    """Whether converting `tensor` to `dtype` creates no infinities (f16 tops out at 65504) and loses no
    more than the type's epsilon of the tensor's largest magnitude: values below f16's normal range
    (6.1e-5) lose their precision, and a constant made only of them (1e-8) would become 0."""
    converted = tensor.to(dtype.torch)
    if bool((converted.isinf() & tensor.isfinite()).any()):
        return False
    finite = tensor.isfinite()
    if not bool(finite.any()):
        return True
    error = (converted.to(tensor.dtype) - tensor)[finite].abs().max()
    return bool(error <= torch.finfo(dtype.torch).eps * tensor[finite].abs().max())


@dataclass
class Plan:
    """What the policy decided for one graph: each node's mode by name, why each kept node stays in float32,
    and the nodes it would lower (in graph order), which the error budget may trim."""

    modes: dict[str, Mode] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    candidates: list[str] = field(default_factory=list)


def _touches_f32(node: Node) -> bool:
    return any(v.type.dtype is DType.f32 for v in node.inputs)


def _cannot_lower(node: Node, target: DType) -> str | None:
    floats = [v for v in node.inputs + node.outputs if v.type.dtype.is_floating]
    if any(v.type.dtype not in (DType.f32, target) for v in floats):
        return "its operands or results are not all f32 (autocast lowers only float32)"
    for v in floats:
        if v.const is not None and not fits(v.const, target):
            return f"the constant %{v.name} is outside the {target} range (overflows or underflows)"
    return None


def _classify(node: Node, config: PrecisionConfig, target: DType) -> tuple[Mode, str | None]:
    if node.name in config.keep_nodes:
        return KEPT, "it is named in keep_nodes"
    if node.op in config.deny:
        return KEPT, "its op is on the deny list"
    if node.op in config.allow or node.op in LOWER:
        reason = _cannot_lower(node, target) if _touches_f32(node) else "it reads no float32 operand"
        return (KEPT, reason) if reason else (LOWERED, None)
    if node.op == "cast":
        # A cast to its operand's own type is an identity: it follows, and the cleanup removes it.
        return (FOLLOWS if node.attrs["dtype"] is node.inputs[0].type.dtype else AS_IS), None
    if node.op in KEEP_FP32:
        return KEPT, KEEP_FP32[node.op]
    if node.op == "mul" and target is DType.f16 and _feeds_sum(node.output):
        return KEPT, _SUMMED_PRODUCT
    if node.op == "interpolate" and node.attrs["antialias"]:
        return KEPT, "PyTorch's antialiased interpolation has no bf16/f16 CPU kernel"
    return (FOLLOWS, None) if node.op in FOLLOW else (KEPT, _UNLISTED)


def plan(graph: Graph, config: PrecisionConfig, target: DType) -> Plan:
    """Classify every node by the op lists and the config's overrides (keep_nodes, then deny, then allow)."""
    result = Plan()
    for node in graph.nodes:
        name = node.name
        mode, reason = _classify(node, config, target)
        result.modes[name] = mode
        if mode == LOWERED:
            result.candidates.append(name)
        elif reason is not None and _touches_f32(node):
            result.reasons[name] = reason
    return result


def _widest(dtypes: Sequence[DType]) -> DType:
    """The dtype that holds all of `dtypes` (f16 and bf16 together need f32)."""
    if DType.f64 in dtypes:
        return DType.f64
    distinct = set(dtypes)
    return distinct.pop() if len(distinct) == 1 else DType.f32


class _Rewrite:
    """Rewrites one graph in place, node by node in topological order, so every operand already has its
    final type when its reader is visited."""

    def __init__(self, graph: Graph, target: DType) -> None:
        self.graph = graph
        self.target = target
        self.original = {id(v): v.type for v in graph.values()}
        self.versions: dict[tuple[int, DType], Value] = {}
        self.replaced: list[Value] = []
        self.counts = {"lowered": 0, "followed": 0, "casts": 0, "constants_converted": 0}

    def as_dtype(self, value: Value, dtype: DType, before: Node | None) -> Value:
        """`value` in `dtype`: itself, a converted constant, or a cast (each made once)."""
        if value.type.dtype is dtype:
            return value
        key = (id(value), dtype)
        if key not in self.versions:
            if value.const is not None:
                self.versions[key] = self.graph.add_constant(f"{value.name}.{dtype}", value.const.to(dtype.torch))
                self.replaced.append(value)
                self.counts["constants_converted"] += 1
            else:
                device = before.device if before is not None else None
                self.versions[key] = self.graph.add_node("cast", [value], {"dtype": dtype}, before=before,
                                                         device=device).output
                self.counts["casts"] += 1
        return self.versions[key]

    def visit(self, node: Node, mode: Mode) -> None:
        original = [self.original[id(v)].dtype for v in node.inputs]
        if mode == LOWERED:
            wanted = {i: self.target for i, dtype in enumerate(original) if dtype is DType.f32}
            self.counts["lowered"] += 1
        elif mode == KEPT:
            wanted = dict(enumerate(original))
        elif mode == FOLLOWS and any(v.type.dtype is not dtype for v, dtype in zip(node.inputs, original, strict=True)):
            wanted = self._follow(node)
        else:
            return
        if mode == FOLLOWS and node.op == "cast":
            node.attrs = {**node.attrs, "dtype": node.inputs[0].type.dtype}
        for i, dtype in wanted.items():
            value = node.inputs[i]
            if value.type.dtype is not dtype:
                node.set_input(i, self.as_dtype(value, dtype, node))
        types = get_op(node.op).infer([v.type for v in node.inputs], node.attrs)
        for value, type in zip(node.outputs, types, strict=True):
            value.type = type
        if mode == FOLLOWS and any(v.type != self.original[id(v)] for v in node.outputs):
            self.counts["followed"] += 1

    def _follow(self, node: Node) -> dict[int, DType]:
        """Operand dtypes for a FOLLOW node some of whose operands changed: the widest dtype of its non-constant
        float operands and non-f32 constants. f32 constants convert to it when they fit (else it widens to f32);
        scalar constants of other dtypes stay, as torch's promotion ignores them next to tensors."""
        floats = {i: v for i, v in enumerate(node.inputs) if v.type.dtype.is_floating}
        flexible = {i for i, v in floats.items() if v.const is not None and v.type.dtype is DType.f32}
        scalars = {i for i, v in floats.items() if v.const is not None and v.type.rank == 0 and i not in flexible}
        dtype = _widest([v.type.dtype for i, v in floats.items() if i not in flexible | scalars])
        if any(not fits(floats[i].const, dtype) for i in flexible):  # type: ignore[arg-type]
            dtype = _widest([dtype, DType.f32])
        return {i: dtype for i in floats if i not in scalars}

    def finish(self) -> None:
        """Cast changed graph outputs back to their original types, drop constants nothing reads any more."""
        self.graph.outputs = [self.as_dtype(v, self.original[id(v)].dtype, None) for v in self.graph.outputs]
        for value in self.replaced:
            if self.graph.constants.get(value.name) is value and not value.uses and not self.graph.is_output(value):
                self.graph.remove_constant(value)


def rewrite(graph: Graph, target: DType, modes: dict[str, Mode], lowered: frozenset[str]) -> dict[str, int]:
    """Apply `modes` to `graph` in place, lowering only the `LOWERED` nodes named in `lowered` (the others
    are kept). Returns the counts: lowered, followed (now in `target`), casts, constants_converted."""
    work = _Rewrite(graph, target)
    for node in list(graph.nodes):
        mode = modes.get(node.name, KEPT)
        work.visit(node, KEPT if mode == LOWERED and node.name not in lowered else mode)
    work.finish()
    return work.counts


def _group_notes(graph: Graph, reasons: dict[str, str], config: PrecisionConfig) -> list[str]:
    """One note per (op, reason): "kept softmax at f32 (%3, %9): <reason>"."""
    ops = {n.name: n.op for n in graph.nodes}
    groups: dict[tuple[str, str], list[str]] = {}
    for name, reason in reasons.items():
        groups.setdefault((ops[name], reason), []).append(f"%{name}")
    notes = [f"kept {op} at f32 ({', '.join(names)}): {reason}" for (op, reason), names in groups.items()]
    missing = sorted(config.keep_nodes - set(ops))
    if missing:
        notes.append("keep_nodes names no node of this graph: " + ", ".join(f"%{n}" for n in missing))
    return notes


def _error_stats(error: ErrorMetrics) -> dict[str, int | float]:
    stats: dict[str, int | float] = {"error_max_rel": error.max_rel, "error_max_abs": error.max_abs,
                                     "error_cosine": error.cosine}
    if abs(error.sqnr_db) != float("inf"):
        stats["error_sqnr_db"] = error.sqnr_db
    return stats


class LowerPrecisionPass(PrecisionPass):
    """Lower `LOWER` ops to `config.precision` ("bf16" or "fp16", default bf16), let `FOLLOW` ops follow their
    inputs, keep `KEEP_FP32` and unlisted ops in float32, with casts only where the dtype changes. With
    `config.tolerance`, lowers the largest set of `LOWER` nodes whose measured error on `config.calibration`
    stays within it. Notes say which ops stayed in float32 and why; stats count lowered, followed and kept
    nodes, inserted casts and converted constants, and the measured error when calibration inputs are given."""

    name = "lower-precision"
    opt_level = 0

    def __init__(self, config: PrecisionConfig | None = None) -> None:
        self.config = config or PrecisionConfig(precision="bf16")
        if self.config.precision not in _TARGETS:
            raise ValueError(f"lower-precision lowers to {sorted(_TARGETS)}, not {self.config.precision!r}")
        unknown = sorted((self.config.allow | self.config.deny) - set(OPS))
        if unknown:
            raise ValueError(f"allow/deny name unknown ops: {unknown}")
        both = sorted(self.config.allow & self.config.deny)
        if both:
            raise ValueError(f"ops both allowed and denied: {both}")
        unchecked = sorted(self.config.allow - LOWER - FOLLOW - set(KEEP_FP32))
        if unchecked:
            raise ValueError(f"cannot lower {unchecked}: {_UNLISTED}")
        self.target = _TARGETS[self.config.precision]

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        config, target = self.config, self.target
        decided = plan(graph, config, target)
        notes = _group_notes(graph, decided.reasons, config)
        stats: dict[str, int | float] = {}
        lowered = frozenset(decided.candidates)
        error: ErrorMetrics | None = None
        if config.tolerance is not None and decided.candidates:
            def build(subset: frozenset[str]) -> Graph:
                work = graph.clone()
                rewrite(work, target, decided.modes, subset)
                return work

            budget = search_budget(graph, decided.candidates, build, config.calibration, config.tolerance,
                                   config.precision)
            lowered, error = frozenset(budget.chosen), budget.error
            notes += budget.notes
            stats.update(budget_candidates=len(decided.candidates), budget_evaluations=budget.evaluations,
                         tolerance=config.tolerance)
        reference = graph.clone() if config.calibration and error is None else None
        casts_before = sum(node.op == "cast" for node in graph.nodes)
        counts = rewrite(graph, target, decided.modes, lowered)
        modified = counts["casts"] + counts["constants_converted"] + counts["followed"] > 0 or bool(lowered)
        if modified:
            SimplifyAlgebraPass(_CAST_RULES)(graph, ctx)
        if reference is not None and modified:
            error = measure_batches([run_graph(reference, *b) for b in config.calibration],
                                    [run_graph(graph, *b) for b in config.calibration])
        stats.update(lowered=counts["lowered"], followed=counts["followed"],
                     kept=len(decided.reasons) + len(decided.candidates) - len(lowered),
                     casts=sum(node.op == "cast" for node in graph.nodes) - casts_before,
                     constants_converted=counts["constants_converted"])
        if error is not None:
            stats.update(_error_stats(error))
        return PassResult(graph, modified, stats, notes)
