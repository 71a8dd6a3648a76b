"""The error budget: sensitive products stay in float32 with a note saying why, a loose tolerance lowers
every candidate, a tight one none, and the search costs a number of graph evaluations linear in the
candidates."""

from __future__ import annotations

import math
import time

import pytest
import torch

import heteropass as hp
from heteropass.ir import DType, Graph, parse_graph
from heteropass.ir.compare import assert_graphs_equal
from heteropass.ir.torch_importer import import_module
from heteropass.passes import PassContext, PassManager, default_pipeline
from heteropass.passes.lower_precision import LowerPrecisionPass, plan, rewrite
from heteropass.passes.precision_budget import BudgetResult, search_budget
from heteropass.passes.precision_config import PrecisionConfig
from heteropass.testing import models

BEFORE_FUSION = PassContext(disabled=frozenset({"fuse-gemm-epilogue", "fuse-reductions", "fuse-elementwise",
                                                 "plan-memory"}))
TARGETS = {"bf16": DType.bf16, "fp16": DType.f16}


def _imported(model: torch.nn.Module, inputs: tuple) -> Graph:
    """The model as the precision passes see it: imported, cleaned up and pattern-recognized, not fused."""
    return PassManager(default_pipeline(2), BEFORE_FUSION).run(import_module(model, inputs).graph).graph


@pytest.fixture(scope="module")
def mlp() -> tuple[Graph, tuple[tuple[torch.Tensor, ...], ...]]:
    return _imported(models.mlp(), models.mlp_inputs()), tuple(models.mlp_inputs(seed=s) for s in range(2, 6))


def _sensitivities(graph: Graph, calibration: tuple, precision: str) -> BudgetResult:
    """Every candidate's error when lowered alone (a search that accepts anything)."""
    target = TARGETS[precision]
    decided = plan(graph, PrecisionConfig(precision), target)

    def build(names: frozenset[str]) -> Graph:
        work = graph.clone()
        rewrite(work, target, decided.modes, names)
        return work

    return search_budget(graph, decided.candidates, build, calibration, math.inf, precision)


def _lower(graph: Graph, precision: str, calibration: tuple, tolerance: float):  # type: ignore[no-untyped-def]
    work = graph.clone()
    config = PrecisionConfig(precision, calibration=calibration, tolerance=tolerance)
    return work, LowerPrecisionPass(config)(work)


def test_products_that_cancel_stay_f32_and_the_rest_lowers() -> None:
    # %a - %b cancels: in 16 bits either product alone is off by a rounding of |x @ c| (~4), ten times
    # the result's range; the small linear only perturbs its own small contribution.
    gen = torch.Generator().manual_seed(0)
    c1 = torch.randn(16, 16, generator=gen)
    constants = {"c1": c1, "c2": c1 + 0.01 * torch.randn(16, 16, generator=gen),
                 "w": 0.01 * torch.randn(16, 16, generator=gen)}
    graph = parse_graph("""
    graph g(%x: f32[8,16]) -> (f32[8,16]) {
      const %c1: f32[16,16]
      const %c2: f32[16,16]
      const %w: f32[16,16]
      %a: f32[8,16] = matmul(%x, %c1)
      %b: f32[8,16] = matmul(%x, %c2)
      %d: f32[8,16] = sub(%a, %b)
      %l: f32[8,16] = linear(%x, %w)
      %y: f32[8,16] = add(%d, %l)
      return %y
    }""", constants)
    calibration = tuple((torch.randn(8, 16, generator=gen),) for _ in range(3))
    work, result = _lower(graph, "bf16", calibration, 1e-2)
    assert_graphs_equal(work, """
    graph g(%x: f32[8,16]) -> (f32[8,16]) {
      const %c1: f32[16,16]
      const %c2: f32[16,16]
      const %w: bf16[16,16]
      %a: f32[8,16] = matmul(%x, %c1)
      %b: f32[8,16] = matmul(%x, %c2)
      %d: f32[8,16] = sub(%a, %b)
      %0: bf16[8,16] = cast(%x) {dtype=bf16}
      %l: bf16[8,16] = linear(%0, %w)
      %1: f32[8,16] = cast(%l) {dtype=f32}
      %y: f32[8,16] = add(%d, %1)
      return %y
    }""")
    kept = [note for note in result.notes if note.startswith("kept")]
    assert [note.split(":")[0] for note in kept] == ["kept %a (matmul) at f32", "kept %b (matmul) at f32"]
    assert all("lowering it alone gives max_rel" in note and "> tolerance 1.00e-02" in note for note in kept)
    assert result.notes[-1].startswith("error budget: lowered 1 of 3 candidate ops to bf16; measured max_rel")
    assert result.stats["lowered"] == 1 and result.stats["kept"] == 2
    assert 0 < result.stats["error_max_rel"] <= 1e-2
    assert result.stats["budget_evaluations"] == 4


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_loose_tolerance_lowers_every_candidate(mlp: tuple, precision: str) -> None:
    graph, calibration = mlp
    work, result = _lower(graph, precision, calibration, 0.1)
    plain = graph.clone()
    LowerPrecisionPass(PrecisionConfig(precision))(plain)
    assert_graphs_equal(work, plain)
    assert result.stats["lowered"] == 3 and result.stats["kept"] == 0
    assert result.stats["budget_evaluations"] == 4  # each candidate alone, then all together
    assert result.notes == [result.notes[-1]] and result.notes[-1].startswith(
        f"error budget: lowered 3 of 3 candidate ops to {precision}")


def test_a_tight_tolerance_keeps_every_candidate(mlp: tuple) -> None:
    graph, calibration = mlp
    work, result = _lower(graph, "bf16", calibration, 1e-5)
    assert not result.modified and str(work) == str(graph)
    assert sorted(note.split(":")[0] for note in result.notes[:-1]) == [
        "kept %0 (linear) at f32", "kept %2 (linear) at f32", "kept %4 (linear) at f32"]
    assert result.stats["lowered"] == 0 and result.stats["kept"] == 3 and result.stats["error_max_rel"] == 0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_ops_that_fit_alone_but_not_together_back_off(mlp: tuple, precision: str) -> None:
    graph, calibration = mlp
    alone = _sensitivities(graph, calibration, precision)
    tolerance = max(e.max_rel for e in alone.sensitivity.values()) * 1.001
    assert alone.error.max_rel > tolerance, "the MLP's errors no longer add up: pick another tolerance"
    _, result = _lower(graph, precision, calibration, tolerance)
    assert 1 <= result.stats["lowered"] < 3
    assert result.stats["error_max_rel"] <= tolerance
    backed_off = [note for note in result.notes if "cheaper op" in note]
    assert len(backed_off) == 3 - result.stats["lowered"]
    assert all("exceeds the tolerance (max_rel " in note for note in backed_off)


def test_tighter_tolerances_never_lower_more(mlp: tuple) -> None:
    graph, calibration = mlp
    counts = []
    for tolerance in (1e-2, 4e-3, 3e-3, 2.5e-3, 2e-3, 1e-3):
        _, result = _lower(graph, "bf16", calibration, tolerance)
        assert result.stats["error_max_rel"] <= tolerance
        counts.append(result.stats["lowered"])
    assert counts == sorted(counts, reverse=True) and counts[0] == 3


def test_the_search_is_linear_in_the_candidates(record_property) -> None:  # type: ignore[no-untyped-def]
    graph = _imported(models.gpt2_style(n_layer=4), models.gpt2_style_inputs())
    calibration = tuple(models.gpt2_style_inputs(seed=s) for s in range(2, 6))
    everything = _sensitivities(graph, calibration, "bf16")
    n = len(everything.sensitivity)
    tolerance = everything.error.max_rel / 4  # forces the prefix search and the greedy tail
    start = time.perf_counter()
    _, result = _lower(graph, "bf16", calibration, tolerance)
    seconds = time.perf_counter() - start
    assert n >= 20 and 0 < result.stats["lowered"] < n
    assert result.stats["error_max_rel"] <= tolerance
    assert result.stats["budget_evaluations"] <= 2 * n + 1 + math.ceil(math.log2(n))
    record_property("summary", f"precision budget gpt2 x4 bf16: {result.stats['lowered']} of {n} lowered at "
                               f"tolerance {tolerance:.2e} (all lowered: {everything.error.max_rel:.2e}), "
                               f"{result.stats['budget_evaluations']} evaluations of {len(calibration)} batches "
                               f"in {seconds:.2f} s")


class _BranchesThatOverflowTogether(torch.nn.Module):
    """Each branch fits f16 alone (~40000); their sum (~80000) overflows it, and the layer norm after
    it turns the infinity into NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)
        self.norm, self.out = torch.nn.LayerNorm(16), torch.nn.Linear(16, 4)
        with torch.no_grad():
            for linear in (self.a, self.b):
                linear.weight.copy_(1.0 + 0.1 * torch.randn(16, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.a(x) + self.b(x)))


def test_a_combination_that_gives_nan_is_over_the_tolerance() -> None:
    torch.manual_seed(0)
    model, x = _BranchesThatOverflowTogether().eval(), torch.full((4, 16), 2500.0) + torch.randn(4, 16)
    cm = hp.compile(model, (x,), precision="fp16", tolerance=0.01)
    assert cm.accuracy is not None and cm.accuracy.max_rel <= 0.01
    assert bool(cm(x).isfinite().all())


def test_the_search_needs_calibration_inputs(mlp: tuple) -> None:
    graph, _ = mlp
    with pytest.raises(ValueError, match="needs calibration inputs"):
        search_budget(graph, ["0"], lambda names: graph, (), 1e-2, "bf16")
