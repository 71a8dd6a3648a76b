"""The bench scripts' output checks: a wrong or NaN runner is a failure cell and is never timed, unknown names
are errors, and a failing compile-time child shows its stderr. Nothing large is timed here."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import compile_time
import decode
import quant_kernels
import run
from checks import WrongOutputs, check_outputs, max_relative_error
from script_setup import choose
from workloads import Workload


def test_nan_where_the_reference_has_none_is_not_swallowed() -> None:
    assert math.isnan(max_relative_error(torch.full((3,), math.nan), torch.ones(3)))
    assert math.isnan(max_relative_error([torch.ones(2), torch.tensor([math.nan])], [torch.ones(2), torch.ones(1)]))
    assert max_relative_error(torch.tensor([1.0, math.nan]), torch.tensor([1.0, math.nan])) == 0.0
    with pytest.raises(WrongOutputs, match="nan"):
        check_outputs(torch.full((3,), math.nan), torch.ones(3))


def test_missing_outputs_and_other_shapes_are_wrong() -> None:
    with pytest.raises(WrongOutputs, match="1 outputs, expected 2"):
        max_relative_error([torch.ones(2)], (torch.ones(2), torch.ones(2)))
    with pytest.raises(WrongOutputs, match=r"output 0: shape \(1, 16\), expected \(4, 16\)"):
        max_relative_error(torch.ones(1, 16), torch.ones(4, 16))  # would broadcast


def test_check_outputs_keeps_float32_noise_and_fails_beyond_the_tolerance() -> None:
    expected = torch.randn(8, 8)
    assert check_outputs(expected * (1 + 1e-6), expected) < 1e-5
    with pytest.raises(WrongOutputs, match="err 1e-02"):
        check_outputs(expected + 0.01 * expected.abs().max(), expected)


def tiny() -> Workload:
    return Workload("tiny", lambda: torch.nn.Linear(16, 16).eval(), lambda: (torch.randn(4, 16),))


def test_a_wrong_runner_is_a_failure_cell_and_is_not_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    timed = []

    def fake_median_ms(fn: Any, repeats: int) -> float:
        timed.append(fn)
        return 2.0 if len(timed) == 1 else 1.0  # eager first, then each runner

    def garbage(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], threads: int) -> Any:
        return lambda: torch.zeros(4, 16)

    def nan(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], threads: int) -> Any:
        return lambda: torch.full((4, 16), math.nan)

    monkeypatch.setattr(run, "median_ms", fake_median_ms)
    monkeypatch.setitem(run.RUNNERS, "garbage", garbage)
    monkeypatch.setitem(run.RUNNERS, "nan", nan)
    monkeypatch.setitem(run.RUNNERS, "same", run.RUNNERS["eager"])
    row = run.bench_row(tiny(), 1, ["garbage", "same", "nan"], repeats=1)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["tiny", "1", "2.00"]
    assert cells[3].startswith("wrong (err ")
    assert cells[4].startswith("2.00x (1.00 ms, err 0e+00")  # ratio over eager, timed first whatever the order
    assert cells[5] == "wrong (err nan)"
    assert len(timed) == 2


def test_unknown_names_are_an_error_naming_them(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    assert choose(parser, "--only", "", ["a", "b"]) == ["a", "b"]
    assert choose(parser, "--only", "b,a,b", ["a", "b"]) == ["b", "a"]
    with pytest.raises(SystemExit):
        choose(parser, "--only", "a,a_b", ["a", "a-b"])
    assert "--only: unknown 'a_b'; valid: a, a-b" in capsys.readouterr().err


def test_decode_fails_a_system_beyond_its_precisions_tolerance() -> None:
    reference = [torch.randn(4, 64)]
    assert decode.tolerance("heteropass-int8-weight") > decode.tolerance("heteropass-bf16") > decode.tolerance("x")
    assert decode.checked_error_cells(reference, reference[0] * (1 + 1e-3), decode.tolerance("heteropass-bf16"))
    with pytest.raises(WrongOutputs, match=r"max_rel 1\.0e\+00"):
        decode.checked_error_cells(reference, torch.zeros(4, 64), decode.tolerance("torch-dynamic-int8"))
    with pytest.raises(WrongOutputs, match="shape"):
        decode.checked_error_cells(reference, torch.zeros(1, 64), decode.tolerance("onnxruntime"))


def test_quant_kernels_names_the_wrong_variants() -> None:
    x = torch.randn(4, 8)
    runs = {"fp32": lambda: x, "bf16": lambda: x.bfloat16(), "int8-weight": lambda: [x.T]}
    assert set(quant_kernels.wrong_variants(runs)) == {"int8-weight"}


def test_a_failing_compile_time_child_shows_its_error(tmp_path: Path) -> None:
    with pytest.raises(compile_time.ChildFailed, match="StopIteration"):
        compile_time.measure("no-such-workload", tmp_path)
