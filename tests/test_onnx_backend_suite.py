"""The official ONNX backend node tests, run through `HeteropassBackend`.

Every node test runs with `fallback="reference"`; a test passes natively when its compiled graph has
no opaque fallback node. The test fails if a test listed in `onnx_expected_failures` passes or an
unlisted one fails, and prints the pass counts (all, native, numeric-only subset).
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx.backend.test.loader import load_model_tests

from heteropass.onnx_backend import HeteropassBackend

from .onnx_expected_failures import REASONS

# Element types of the "numeric" subset: float, double, half, integers up to 64 bits of the IR, bool.
_NUMERIC = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8,
            onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT8,
            onnx.TensorProto.BOOL}


def _array(value: object) -> np.ndarray:
    return onnx.numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)


def _check(case: object) -> bool:
    """Run one node test; returns whether it ran natively (no fallback node). Raises on a mismatch."""
    rep = HeteropassBackend.prepare(case.model, fallback="reference")  # type: ignore[attr-defined]
    for inputs, outputs in case.data_sets:  # type: ignore[attr-defined]
        results = rep.run(inputs)
        assert len(results) == len(outputs)
        for got, want in zip(results, map(_array, outputs), strict=True):
            assert (got.dtype, got.shape) == (want.dtype, want.shape)
            np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=case.rtol,  # type: ignore[attr-defined]
                                       atol=case.atol)  # type: ignore[attr-defined]
    return all(node.op != "opaque" for program in rep.programs for node in program.graph)


def _numeric(model: onnx.ModelProto) -> bool:
    values = [*model.graph.input, *model.graph.output]
    return all(v.type.WhichOneof("value") == "tensor_type" and v.type.tensor_type.elem_type in _NUMERIC
               for v in values)


@pytest.mark.slow
def test_onnx_node_suite(request: pytest.FixtureRequest) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = load_model_tests(kind="node")
        failures: dict[str, str] = {}
        native: set[str] = set()
        for case in cases:
            try:
                if _check(case):
                    native.add(case.name)
            except Exception as exc:  # every kind of failure counts; the message says which
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                failures[case.name] = f"{type(exc).__name__}: {first_line}"
    numeric = {case.name for case in cases if _numeric(case.model)}
    passed = len(cases) - len(failures)
    report = (f"ONNX node tests: {passed}/{len(cases)} pass ({len(native)} natively, {passed - len(native)} with the "
              f"reference fallback); numeric-only subset: {len(numeric - set(failures))}/{len(numeric)} pass, "
              f"{len(numeric & native)} natively")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(report)
    unexpected = {name: msg for name, msg in failures.items() if name not in REASONS}
    fixed = sorted(set(REASONS) - set(failures))
    assert not unexpected, f"{report}\nunexpected failures:\n" + "\n".join(f"{k}: {v}" for k, v in unexpected.items())
    assert not fixed, f"{report}\nlisted as expected failures but pass now (remove them): {fixed}"
