"""Compiled graphs, as drawn and as the O2 pipeline leaves them, compute what the reference
interpreter computes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heteropass.backends.base import Backend
from heteropass.backends.numba_backend import NumbaBackend
from heteropass.backends.reference import ReferenceBackend
from heteropass.ir import DType
from heteropass.passes import PassContext, PassManager
from heteropass.passes.pipelines import default_pipeline
from heteropass.testing import EMPTY_SAFE_FAMILIES, assert_backend_matches_reference, graph_and_inputs, strided_layout

CASES = graph_and_inputs(input_dtypes=(DType.f32, DType.f32, DType.f64, DType.i64))

# Backend lists to test; a new backend joins here with the reference backend as its fallback.
# Numba compiles each new kernel in about 2 s (cached on disk across runs), so it draws fewer graphs.
BACKENDS: dict[str, tuple[list[Backend], int | None]] = {
    "reference": ([ReferenceBackend()], None),
    "numba": ([NumbaBackend(), ReferenceBackend()], 100),
}


def _examples(max_examples: int | None) -> settings:
    return settings(max_examples=max_examples) if max_examples else settings()


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_backend_matches_reference(name: str) -> None:
    backends, max_examples = BACKENDS[name]

    @_examples(max_examples)
    @given(case=CASES)
    def check(case: tuple) -> None:
        graph, inputs = case
        assert_backend_matches_reference(graph, backends, inputs)

    check()


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_backend_matches_reference_on_optimized_graphs(name: str) -> None:
    backends, max_examples = BACKENDS[name]

    @_examples(max_examples)
    @given(case=CASES)
    def check(case: tuple) -> None:
        graph, inputs = case
        optimized = PassManager(default_pipeline(2), PassContext(opt_level=2)).run(graph).graph
        assert_backend_matches_reference(optimized, backends, inputs)

    check()


EMPTY_CASES = graph_and_inputs(input_dtypes=(DType.f32, DType.f64, DType.i64, DType.i32, DType.bool),
                               families=EMPTY_SAFE_FAMILIES, min_dim=0)


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_backend_matches_reference_on_empty_dims_and_strided_inputs(name: str) -> None:
    """Size-0 dims, bool and int32 inputs, and inputs in other memory layouts (a strided view, column-major,
    at an offset), before and after the O2 pipeline."""
    backends, max_examples = BACKENDS[name]

    @_examples(max_examples and max_examples // 2)
    @given(case=EMPTY_CASES, layouts=st.lists(st.integers(0, 3), min_size=3, max_size=3))
    def check(case: tuple, layouts: list[int]) -> None:
        graph, inputs = case
        inputs = [strided_layout(x, layout) for x, layout in zip(inputs, layouts, strict=False)]
        assert_backend_matches_reference(graph, backends, inputs)
        optimized = PassManager(default_pipeline(2), PassContext(opt_level=2)).run(graph.clone()).graph
        assert_backend_matches_reference(optimized, backends, inputs)

    check()
