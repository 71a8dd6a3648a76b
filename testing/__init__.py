"""Property-based testing kit for heteropass passes and backends."""

from .assertions import assert_backend_matches_reference, assert_outputs_close, assert_pass_preserves_semantics
from .strategies import (
    EMPTY_SAFE_FAMILIES,
    FAMILIES,
    graph_and_inputs,
    graphs,
    random_input,
    strided_layout,
    tensor_types,
)

__all__ = [
    "EMPTY_SAFE_FAMILIES", "FAMILIES", "assert_backend_matches_reference", "assert_outputs_close",
    "assert_pass_preserves_semantics", "graph_and_inputs", "graphs", "random_input", "strided_layout", "tensor_types",
]
