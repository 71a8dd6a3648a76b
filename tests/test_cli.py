"""The `heteropass` command line, called in-process (`cli.main`) and once as `python -m heteropass`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from heteropass.cli import main


def _save(path: Path, nodes: list[onnx.NodeProto], x_shape: list[int], y_shape: list[int],
          initializers: list[onnx.TensorProto]) -> Path:
    graph = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """relu(x @ w + b) with random weights."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    return _save(tmp_path / "tiny.onnx", nodes, [4, 8], [4, 16], weights)


@pytest.fixture
def unsupported(tmp_path: Path) -> Path:
    """A model with ReverseSequence, an op heteropass has no lowering rule for."""
    lens = numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "lens")
    nodes = [helper.make_node("ReverseSequence", ["x", "lens"], ["r"], batch_axis=1, time_axis=0),
             helper.make_node("Relu", ["r"], ["y"])]
    return _save(tmp_path / "reverse.onnx", nodes, [4, 3], [4, 3], [lens])


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"heteropass {argv[0]}: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in err


def test_compile_prints_a_summary_and_writes_dumps_and_a_model(model: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    dumps, out = tmp_path / "d", tmp_path / "out.onnx"
    assert main(["compile", str(model), "--opt-level", "2", "--dump-dir", str(dumps), "--dump-onnx",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 -> 1 nodes at O2" in printed and "fuse-gemm-epilogue" in printed and f"wrote {out}" in printed
    assert {"000_input.ir", "summary.json", "placed.ir", "module.py"} <= {p.name for p in dumps.iterdir()}
    assert any(re.fullmatch(r"\d{3}_fuse-gemm-epilogue\.ir", p.name) for p in dumps.iterdir())
    assert len(list(dumps.glob("*.onnx"))) == len(list(dumps.glob("[0-9][0-9][0-9]_*.ir")))
    assert json.loads((dumps / "summary.json").read_text())
    optimized = onnx.load(out)
    onnx.checker.check_model(optimized, full_check=True)
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    runs = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
            for path in (model, out)]
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-5, atol=1e-6)


def test_run_prints_latency_and_the_difference_to_onnxruntime(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(model), "--inputs", "random", "--repeats", "2"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"median latency: heteropass [\d.]+ ms, ONNX Runtime [\d.]+ ms", printed)
    row = next(line for line in printed.splitlines() if "f32[4,16]" in line)
    assert float(row.split()[-2]) < 1e-5  # the max abs diff column


def test_dump_prints_the_ir_after_every_pass(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dump", str(model), "--print-after-all"]) == 0
    printed = capsys.readouterr().out
    assert "# after propagate-shapes: unchanged" in printed and "# after fuse-gemm-epilogue: changed" in printed
    assert "graph tiny(%x: f32[4,8]) -> (f32[4,16]) {" in printed


def test_missing_and_truncated_files_are_one_line_errors(model: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    _one_line_error(capsys, ["compile", str(tmp_path / "missing.onnx")], "cannot read ONNX model",
                    "No such file or directory")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(model.read_bytes()[:100])
    _one_line_error(capsys, ["run", str(truncated)], "truncated or corrupt")


def test_unsupported_op_fails_without_fallback_and_runs_with_it(unsupported: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    _one_line_error(capsys, ["compile", str(unsupported)], "ReverseSequence is not supported",
                    "use --fallback reference")
    assert main(["run", str(unsupported), "--fallback", "reference", "--repeats", "1"]) == 0
    assert "median latency" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--debug", "compile"], ["compile", "--debug"]])
def test_debug_shows_the_traceback(argv: list[str], tmp_path: Path) -> None:
    with pytest.raises(Exception, match="cannot read ONNX model"):
        main([*argv, str(tmp_path / "missing.onnx")])


def test_python_dash_m_heteropass(model: Path) -> None:
    help_run = subprocess.run([sys.executable, "-m", "heteropass", "--help"], capture_output=True, text=True,
                              timeout=120, check=True)
    assert "{compile,run,dump}" in help_run.stdout
    failed = subprocess.run([sys.executable, "-m", "heteropass", "compile", str(model.with_name("missing.onnx"))],
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.startswith("heteropass compile: error: cannot read ONNX model")


def test_run_counts_matching_infinities_as_no_difference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """log(0) is -inf in both; inf - inf is NaN, which would hide a real disagreement."""
    path = _save(tmp_path / "log.onnx", [helper.make_node("Mul", ["x", "zero"], ["z"]),
                                         helper.make_node("Log", ["z"], ["y"])], [4], [4],
                 [numpy_helper.from_array(np.zeros(4, np.float32), "zero")])
    assert main(["run", str(path), "--repeats", "1"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "f32[4]" in line)
    assert row.split()[-2] == "0"


def test_bad_numbers_are_refused_before_any_work(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _one_line_error(capsys, ["compile", str(model), "--precision", "bf16", "--tolerance", "nan"],
                    "tolerance must be positive, got nan")
    with pytest.raises(SystemExit):
        main(["run", str(model), "--repeats", "0"])
    assert "--repeats: must be at least 1, got 0" in capsys.readouterr().err


def test_a_failing_pass_says_where_its_reproducer_is(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from heteropass.passes.fuse_gemm_epilogue import FuseGemmEpiloguePass

    def fail(*args: object) -> None:
        raise RuntimeError("simulated pass bug")

    monkeypatch.setattr(FuseGemmEpiloguePass, "call", fail)
    assert main(["compile", str(model), "--dump-dir", str(tmp_path / "dumps")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("heteropass compile: error: pass 'fuse-gemm-epilogue' failed: RuntimeError")
    assert err[1] == (f"heteropass compile: the failing pass's input is in {tmp_path / 'dumps'} "
                      "(heteropass.passes.load_reproducer reads it)")
