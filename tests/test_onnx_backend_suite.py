"""The official ONNX backend node tests, run through `HeteropassBackend`.

Every node test runs with `fallback="reference"`; a test passes natively when its compiled graph has
no opaque fallback node. The test fails if a test listed in `onnx_expected_failures` passes or an
unlisted one fails, and prints the pass counts (all, native, numeric-only subset) next to ONNX
Runtime's on the same cases.

The cases are the 1,884 node tests this onnx build (1.23.2) generates in memory, not the 2,033 of
other builds. ONNX Runtime's count comes from its own `onnx.backend` implementation
(`onnxruntime.backend`) run over the same cases with the same comparison (`_compare`); it takes about
a minute, so CI does not repeat it: `python -m heteropass.tests.test_onnx_backend_suite` recomputes it.
Recorded 2026-11-28 (onnx 1.23.2, onnxruntime 1.32.0, CPU):

- heteropass at O2: 1,581 pass, 1,474 of them natively and 107 through the reference fallback
  (numeric-only subset: 1,563/1,579, 1,458 natively = 92.3%); the 9 ImageDecoder tests run through
  the fallback and need Pillow;
- onnxruntime.backend: 1,571 pass. Of its 313 failures, 124 have inputs or outputs of ml_dtypes types
  (bfloat16, float8, int4/2, float4) that ORT's numpy binding refuses, 94 are ops or type combinations
  without a CPU kernel, 18 ops it does not register (training ops, preview FlexAttention), 26 are
  numeric mismatches (DFT, STFT, training-mode dropout, ...) and 51 other errors.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import pytest
from onnx.backend.test.loader import load_model_tests

from heteropass.onnx_backend import HeteropassBackend

from .onnx_expected_failures import REASONS

# onnxruntime.backend on the same cases (see the module docstring); recompute by running this module.
ORT_PASSES, ORT_CASES, ORT_RECORDED = 1571, 1884, "2026-11-28, onnx 1.23.2, onnxruntime 1.32.0"

# Element types of the "numeric" subset: float, double, half, integers up to 64 bits of the IR, bool.
_NUMERIC = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8,
            onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT8,
            onnx.TensorProto.BOOL}


def _array(value: object) -> np.ndarray:
    return onnx.numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)


def _compare(case: Any, results: Sequence[Any], outputs: Sequence[Any]) -> None:
    """Raise unless `results` match the case's expected `outputs` in element type, shape and value
    (within the case's tolerances); sequence outputs compare element by element."""
    assert len(results) == len(outputs)
    for got, want in zip(results, outputs, strict=True):
        if isinstance(want, list):
            _compare(case, list(got), want)
            continue
        got, want = np.asarray(got), _array(want)
        assert (got.dtype, got.shape) == (want.dtype, want.shape)
        if want.dtype == object:
            assert got.tolist() == want.tolist()
        else:
            np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=case.rtol,
                                       atol=case.atol)


def _check(case: Any) -> bool:
    """Run one node test; returns whether it ran natively (no fallback node). Raises on a mismatch."""
    rep = HeteropassBackend.prepare(case.model, fallback="reference")
    for inputs, outputs in case.data_sets:
        _compare(case, rep.run(inputs), outputs)
    return all(node.op != "opaque" for program in rep.programs for node in program.graph)


def _check_onnxruntime(case: Any) -> None:
    import onnxruntime.backend

    rep = onnxruntime.backend.prepare(case.model, device="CPU")
    for inputs, outputs in case.data_sets:
        _compare(case, rep.run([_array(x) for x in inputs]), outputs)


def _failures(cases: Sequence[Any], check: Callable[[Any], object]) -> tuple[dict[str, str], set[str]]:
    """The failing cases with their first error line, and the cases whose check returned True."""
    failures: dict[str, str] = {}
    true: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case in cases:
            try:
                if check(case) is True:
                    true.add(case.name)
            except Exception as exc:  # every kind of failure counts; the message says which
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                failures[case.name] = f"{type(exc).__name__}: {first_line}"
    return failures, true


def _numeric(model: onnx.ModelProto) -> bool:
    values = [*model.graph.input, *model.graph.output]
    return all(v.type.WhichOneof("value") == "tensor_type" and v.type.tensor_type.elem_type in _NUMERIC
               for v in values)


@pytest.mark.slow
def test_onnx_node_suite(record_property: Callable[[str, object], None]) -> None:
    cases = load_model_tests(kind="node")
    failures, native = _failures(cases, _check)
    numeric = {case.name for case in cases if _numeric(case.model)}
    passed = len(cases) - len(failures)
    report = (f"ONNX node tests: {passed}/{len(cases)} pass ({len(native)} natively, {passed - len(native)} with the "
              f"reference fallback); numeric-only subset: {len(numeric - set(failures))}/{len(numeric)} pass, "
              f"{len(numeric & native)} natively; onnxruntime.backend: {ORT_PASSES}/{ORT_CASES} pass "
              f"(recorded {ORT_RECORDED})")
    record_property("summary", report)  # printed at the end of the run by conftest.py
    unexpected = {name: msg for name, msg in failures.items() if name not in REASONS}
    fixed = sorted(set(REASONS) - set(failures))
    assert not unexpected, f"{report}\nunexpected failures:\n" + "\n".join(f"{k}: {v}" for k, v in unexpected.items())
    assert not fixed, f"{report}\nlisted as expected failures but pass now (remove them): {fixed}"


if __name__ == "__main__":
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    all_cases = load_model_tests(kind="node")
    ort_failures, _ = _failures(all_cases, _check_onnxruntime)
    print(f"onnxruntime.backend {onnxruntime.__version__} with onnx {onnx.__version__}: "
          f"{len(all_cases) - len(ort_failures)}/{len(all_cases)} node tests pass")
