"""Merge identical constants and nodes that compute the same thing."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from ..ir import Graph, Node, Value, get_op
from ..ir.compare import tensor_bytes
from .base import Pass, PassContext, PassResult

# Constants up to this many bytes are hashed whole; larger ones by a strided sample, so a model's
# weights are not read in full unless two of them already agree in type and sample.
_HASH_ALL_BYTES = 1 << 16
_SAMPLE_ELEMENTS = 256


def _same_bits(a: Value, b: Value) -> bool:
    assert a.const is not None and b.const is not None
    return torch.equal(tensor_bytes(a.const), tensor_bytes(b.const))


def _fingerprint(tensor: torch.Tensor) -> tuple[Any, ...]:
    flat = tensor.detach().reshape(-1)
    if flat.numel() * flat.element_size() > _HASH_ALL_BYTES:
        step = max(1, flat.numel() // _SAMPLE_ELEMENTS)
        flat = flat[::step]
    digest = hashlib.blake2b(tensor_bytes(flat).numpy().tobytes(), digest_size=16).digest()
    return (tensor.dtype, tuple(tensor.shape), digest)


def _freeze(value: Any) -> Any:
    """A hashable key for an attribute value that tells 0.0 from -0.0 (== would not)."""
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, tuple):
        return tuple(_freeze(v) for v in value)
    return (type(value).__name__, value)


def _node_key(node: Node) -> tuple[Any, ...] | None:
    opdef = get_op(node.op)
    # Opaque calls may be nondeterministic (random, stateful): two of them are not interchangeable.
    if opdef.kind == "opaque":
        return None
    operands = [id(v) for v in node.inputs]
    if opdef.commutative:
        operands.sort()
    attrs = tuple(sorted((k, _freeze(v)) for k, v in node.attrs.items()))
    return (node.op, attrs, tuple(operands), node.device, tuple(v.type for v in node.outputs))


class EliminateCommonSubexpressionsPass(Pass):
    """Replace a constant equal (bit for bit, same type) to an earlier one by it, and a node with
    the same op, attributes, operands (either order for commutative ops) and device as an earlier
    node by that node. Opaque nodes are never merged."""

    name = "eliminate-common-subexpressions"
    opt_level = 2

    def call(self, graph: Graph, ctx: PassContext) -> PassResult:
        constants_merged = self._merge_constants(graph)
        nodes_merged = 0
        seen: dict[tuple[Any, ...], Node] = {}
        # One forward walk suffices: merging rewires later readers before they are keyed.
        for node in graph:
            key = _node_key(node)
            if key is None:
                continue
            original = seen.setdefault(key, node)
            if original is node:
                continue
            for old, new in zip(node.outputs, original.outputs, strict=True):
                graph.replace_all_uses(old, new)
            graph.remove_node(node)
            nodes_merged += 1
        return PassResult(graph, bool(constants_merged or nodes_merged),
                          {"nodes_merged": nodes_merged, "constants_merged": constants_merged})

    @staticmethod
    def _merge_constants(graph: Graph) -> int:
        buckets: dict[tuple[Any, ...], list[Value]] = {}
        duplicates: list[tuple[Value, Value]] = []
        for value in graph.constants.values():
            assert value.const is not None
            bucket = buckets.setdefault(_fingerprint(value.const), [])
            match = next((kept for kept in bucket if _same_bits(kept, value)), None)
            if match is None:
                bucket.append(value)
            else:
                duplicates.append((value, match))
        for value, kept in duplicates:
            graph.replace_all_uses(value, kept)
            graph.remove_constant(value)
        return len(duplicates)
