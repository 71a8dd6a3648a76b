"""The fused op: a region of nodes (a nested graph) that a backend compiles into one kernel.

`fused(*operands) {body, kind}` runs `body` (a `Graph` whose inputs match the operands) and
returns its outputs. Fusion passes create regions; backends claim the kinds they can compile.
The kinds and what a body of each kind may contain:

- "elementwise": only elementwise ops. Every body output has the region's iteration shape S
  (the broadcast of the operand shapes; dtypes may differ); operands broadcast to S.
- "reduction": an elementwise prologue over S, reductions of S over one dimension d, the same
  for all (sum/mean/amax/amin/var/std/prod/any/all with dims=[d], softmax/log_softmax over d, layer_norm/rms_norm over
  the last dim), then an elementwise epilogue over S or over the reduced shape (S with d 1 or
  dropped). One output element per index of the other dimensions.
- "gemm": the first body node is linear, matmul or conv over body inputs; every other node is
  elementwise over the product's shape (an epilogue: bias, activation, residual add, ...).

Anything else is "generic" and only the reference backend runs it.
"""

from __future__ import annotations

from typing import Any

import torch

from ..graph import Graph
from ..types import TensorType
from .registry import Attr, OpError, register


def _infer_fused(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    body: Graph = attrs["body"]
    expected = [v.type for v in body.inputs]
    if types != expected:
        raise OpError(f"fused region {body.name} takes ({', '.join(map(str, expected))}), "
                      f"got ({', '.join(map(str, types))})")
    return [v.type for v in body.outputs]


@register("fused", ["*operands"], {"body": Attr("graph"), "kind": Attr("str", "elementwise")}, kind="fused",
          infer=_infer_fused)
def fused(*operands: torch.Tensor, body: Graph, kind: str) -> tuple[torch.Tensor, ...]:
    """Run the region `body` on the operands; `kind` says what shape of kernel it is
    ("elementwise", "reduction", "gemm", "generic")."""
    from ..interpreter import run_graph

    return tuple(run_graph(body, *operands))
