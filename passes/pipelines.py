"""The default pipelines per opt level, and the registry of passes by name. The one place both are defined."""

from __future__ import annotations

from .base import Pass
from .eliminate_common_subexpressions import EliminateCommonSubexpressionsPass
from .eliminate_dead_code import EliminateDeadCodePass
from .fold_batchnorm_into_conv import FoldBatchNormIntoConvPass
from .fold_constants import FoldConstantsPass
from .fuse_elementwise import FuseElementwisePass
from .fuse_gemm_epilogue import FuseGemmEpiloguePass
from .fuse_linear_bias import FuseLinearBiasPass
from .fuse_reductions import FuseReductionsPass
from .manager import Fixpoint
from .plan_memory import PlanMemoryPass
from .propagate_shapes import PropagateShapesPass
from .recognize_attention import RecognizeAttentionPass
from .recognize_gelu import RecognizeGeluPass
from .recognize_layer_norm import RecognizeLayerNormPass
from .recognize_rms_norm import RecognizeRmsNormPass
from .recognize_softmax import RecognizeSoftmaxPass
from .simplify_algebra import SimplifyAlgebraPass

OPT_LEVELS = (0, 1, 2, 3)

_PASSES: tuple[type[Pass], ...] = (
    PropagateShapesPass,
    SimplifyAlgebraPass,
    FoldConstantsPass,
    EliminateCommonSubexpressionsPass,
    EliminateDeadCodePass,
    RecognizeSoftmaxPass,
    RecognizeAttentionPass,
    RecognizeLayerNormPass,
    RecognizeRmsNormPass,
    RecognizeGeluPass,
    FuseLinearBiasPass,
    FoldBatchNormIntoConvPass,
    FuseGemmEpiloguePass,
    FuseReductionsPass,
    FuseElementwisePass,
    PlanMemoryPass,
)


def pass_registry() -> dict[str, type[Pass]]:
    """Every pass class by its name, e.g. `"fold-constants" -> FoldConstantsPass`."""
    return {cls.name: cls for cls in _PASSES}


def _cleanup(name: str) -> Fixpoint:
    return Fixpoint([SimplifyAlgebraPass(), FoldConstantsPass(), EliminateCommonSubexpressionsPass(),
                     EliminateDeadCodePass()], max_steps=8, name=name)


def _recognize() -> list[Pass]:
    """Decomposed forms raised to the ops backends have fast kernels for. Order matters: attention
    reads a softmax; a layer norm's centred part is also an RMS norm."""
    return [RecognizeSoftmaxPass(), RecognizeAttentionPass(), RecognizeLayerNormPass(), RecognizeRmsNormPass(),
            RecognizeGeluPass(), FuseLinearBiasPass(), FoldBatchNormIntoConvPass()]


def _fuse() -> list[Pass]:
    """Group nodes into regions a backend compiles as one kernel: GEMM epilogues first (they sit
    on the most expensive nodes), then reductions with their prologue/epilogue, then the rest."""
    return [FuseGemmEpiloguePass(), FuseReductionsPass(), FuseElementwisePass()]


def default_pipeline(opt_level: int) -> list[Pass | Fixpoint]:
    """O0: shapes only (later stages rely on static shapes); O1: shapes and dead code; O2/O3: shapes,
    cleanup (simplify, fold, CSE, DCE to a fixpoint), pattern recognition, cleanup again, fusion, and
    memory planning (which reports the plan; the executable allocates by it)."""
    if opt_level not in OPT_LEVELS:
        raise ValueError(f"opt_level must be one of {OPT_LEVELS}, got {opt_level}")
    if opt_level == 0:
        return [PropagateShapesPass()]
    if opt_level == 1:
        return [PropagateShapesPass(), EliminateDeadCodePass()]
    return [PropagateShapesPass(), _cleanup("cleanup"), *_recognize(), _cleanup("cleanup-after-patterns"),
            *_fuse(), PlanMemoryPass()]
