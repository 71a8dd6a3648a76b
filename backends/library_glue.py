"""Glue for the PyTorch calls inside a Numba partition that have a cheaper spelling than the reference op.

A view is ~1 µs of work and as much again of Python around it in the reference (keyword handling, a
list built from its result): `view_expression` writes it as one tensor method call. `take` (an embedding
lookup) is `torch.index_select` over the flattened indices, written into `out=`, ~4x faster than the
reference, which first wraps negative indices in a few more calls.
"""

from __future__ import annotations

import math

from ..ir import Node


def view_expression(node: Node) -> str | None:
    """The outputs of view op `node` on operand `a0` as a list expression of one tensor method call, the
    same views the reference makes (static shapes); None for other ops."""
    attrs = node.attrs
    shape = tuple(node.outputs[0].type.static_shape())
    if node.op in ("reshape", "flatten"):
        return f"[a0.reshape({shape})]"
    if node.op in ("squeeze", "unsqueeze"):
        return f"[a0.view({shape})]"  # only size-1 dims come or go: always a view
    if node.op == "transpose":
        return f"[a0.transpose({attrs['dim0']}, {attrs['dim1']})]"
    if node.op == "permute":
        return f"[a0.permute({tuple(attrs['dims'])})]"
    if node.op == "split":
        return f"list(a0.split_with_sizes({list(attrs['sizes'])}, {attrs['dim']}))"
    if node.op == "slice" and attrs["step"] == 1:
        dim = attrs["dim"] % node.inputs[0].type.rank
        start = range(node.inputs[0].type.static_shape()[dim])[attrs["start"]:][:1]
        if start:
            return f"[a0.narrow({dim}, {start[0]}, {shape[dim]})]"
    return None


def take_source(node: Node, name: str, table: str, index: str, reference: str) -> str:
    """`def name(a0, a1, out=None)` computing `take` node `node` on `table` and `index` (glue names of its
    operands) by `torch.index_select`; index_select raises on negative indices and on those out of range,
    and then `reference` (the op's reference function) runs, and wraps or raises."""
    x, indices = node.inputs
    dim = node.attrs["dim"] % max(x.type.rank, 1)
    x_shape = x.type.static_shape()
    picked = (*x_shape[:dim], math.prod(indices.type.static_shape()), *x_shape[dim + 1:])
    shape = tuple(node.outputs[0].type.static_shape())
    params = [f"a{i}" for i in range(sum(v.const is None for v in dict.fromkeys(node.inputs)))]
    return (f"def {name}({', '.join([*params, 'out=None'])}):\n"
            f"    try:\n"
            f"        r = torch.index_select({table}, {dim}, {index}.reshape(-1), "
            f"out=None if out is None else out[0].view({picked}))\n"
            f"    except (IndexError, RuntimeError):\n"
            f"        r = {reference}({table}, {index}, dim={dim}, wrap={node.attrs['wrap']})\n"
            f"        if out is None:\n"
            f"            return [r]\n"
            f"        out[0].copy_(r)\n"
            f"    return out if out is not None else [r.view({shape})]\n")
