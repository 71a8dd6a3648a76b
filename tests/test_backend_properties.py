"""Compiled graphs, as drawn and as the O2 pipeline leaves them, compute what the reference
interpreter computes."""

from __future__ import annotations

import pytest
from hypothesis import given

from heteropass.backends.base import Backend
from heteropass.backends.numba_backend import NumbaBackend
from heteropass.backends.reference import ReferenceBackend
from heteropass.ir import DType
from heteropass.passes import PassContext, PassManager
from heteropass.passes.pipelines import default_pipeline
from heteropass.testing import assert_backend_matches_reference, graph_and_inputs

# Backend lists to test; a new backend joins here with the reference backend as its fallback.
BACKENDS: dict[str, list[Backend]] = {"reference": [ReferenceBackend()], "numba": [NumbaBackend(), ReferenceBackend()]}
CASES = graph_and_inputs(input_dtypes=(DType.f32, DType.f32, DType.f64, DType.i64))


@pytest.mark.parametrize("backends", BACKENDS.values(), ids=BACKENDS.keys())
@given(case=CASES)
def test_backend_matches_reference(backends: list[Backend], case: tuple) -> None:
    graph, inputs = case
    assert_backend_matches_reference(graph, backends, inputs)


@pytest.mark.parametrize("backends", BACKENDS.values(), ids=BACKENDS.keys())
@given(case=CASES)
def test_backend_matches_reference_on_optimized_graphs(backends: list[Backend], case: tuple) -> None:
    graph, inputs = case
    optimized = PassManager(default_pipeline(2), PassContext(opt_level=2)).run(graph).graph
    assert_backend_matches_reference(optimized, backends, inputs)
