"""The default pipelines per opt level, and the registry of passes by name. The one place both are defined."""

from __future__ import annotations

from .base import Pass
from .decompose_group_norm import DecomposeGroupNormPass
from .eliminate_common_subexpressions import EliminateCommonSubexpressionsPass
from .eliminate_dead_code import EliminateDeadCodePass
from .fold_batchnorm_into_conv import FoldBatchNormIntoConvPass
from .fold_constants import FoldConstantsPass
from .fold_repeat_kv import FoldRepeatKvPass
from .fuse_cached_attention import FuseCachedAttentionPass
from .fuse_elementwise import FuseElementwisePass
from .fuse_gemm_epilogue import FuseGemmEpiloguePass
from .fuse_linear_bias import FuseLinearBiasPass
from .fuse_reductions import FuseReductionsPass
from .lower_precision import LowerPrecisionPass
from .manager import Fixpoint
from .merge_parallel_linears import MergeParallelLinearsPass
from .plan_memory import PlanMemoryPass
from .precision_config import PrecisionConfig
from .propagate_shapes import PropagateShapesPass
from .quantize_dynamic import QuantizeDynamicPass
from .quantize_static import QuantizeStaticPass
from .quantize_weights import QuantizeWeightsPass
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
    FoldRepeatKvPass,
    RecognizeLayerNormPass,
    RecognizeRmsNormPass,
    RecognizeGeluPass,
    FuseLinearBiasPass,
    MergeParallelLinearsPass,
    FuseCachedAttentionPass,
    FoldBatchNormIntoConvPass,
    DecomposeGroupNormPass,
    FuseGemmEpiloguePass,
    FuseReductionsPass,
    FuseElementwisePass,
    PlanMemoryPass,
    LowerPrecisionPass,
    QuantizeWeightsPass,
    QuantizeDynamicPass,
    QuantizeStaticPass,
)


def pass_registry() -> dict[str, type[Pass]]:
    """Every pass class by its name, e.g. `"fold-constants" -> FoldConstantsPass`."""
    return {cls.name: cls for cls in _PASSES}


def _cleanup(name: str) -> Fixpoint:
    return Fixpoint([SimplifyAlgebraPass(), FoldConstantsPass(), EliminateCommonSubexpressionsPass(),
                     EliminateDeadCodePass()], max_steps=8, name=name)


def _recognize() -> list[Pass]:
    """Decomposed forms raised to the ops backends have fast kernels for. Order matters: attention
    reads a softmax (and grouped-query attention reads an attention); a layer norm's centred part is
    also an RMS norm."""
    return [RecognizeSoftmaxPass(), RecognizeAttentionPass(), FoldRepeatKvPass(), RecognizeLayerNormPass(),
            RecognizeRmsNormPass(), RecognizeGeluPass(), FuseLinearBiasPass(), FoldBatchNormIntoConvPass()]


def _fuse() -> list[Pass]:
    """Group work into fewer, larger kernels: parallel linears into one product (after the precision
    passes, so that `keep_nodes` still finds the linears by name), attention over a freshly concatenated
    cache into one op, group norms as layer norms over the groups, then regions a backend compiles as one
    kernel: GEMM epilogues first (they sit on the most expensive nodes), then reductions with their
    prologue/epilogue, then the rest."""
    return [MergeParallelLinearsPass(), FuseCachedAttentionPass(), DecomposeGroupNormPass(), FuseGemmEpiloguePass(),
            FuseReductionsPass(), FuseElementwisePass()]


def precision_passes(config: PrecisionConfig) -> list[Pass]:
    """The passes that carry out a precision request: none for fp32; bf16/fp16 lowering (with the
    error budget when `config.tolerance` is set); one of the three int8 quantization passes."""
    if config.precision == "fp32":
        return []
    passes: dict[str, type[Pass]] = {
        "bf16": LowerPrecisionPass, "fp16": LowerPrecisionPass, "int8-weight": QuantizeWeightsPass,
        "int8-dynamic": QuantizeDynamicPass, "int8-static": QuantizeStaticPass,
    }
    return [passes[config.precision](config)]  # type: ignore[call-arg]


def default_pipeline(opt_level: int, precision: PrecisionConfig | None = None) -> list[Pass | Fixpoint]:
    """O0: shapes only (later stages rely on static shapes); O1: shapes and dead code; O2/O3: shapes,
    cleanup (simplify, fold, CSE, DCE to a fixpoint), pattern recognition, cleanup again, fusion, and
    memory planning (which reports the plan; the executable allocates by it).

    A `precision` request inserts its passes after pattern recognition (so they see whole linear,
    attention and norm ops) and before fusion (so kernels are generated for the lowered types).
    """
    if opt_level not in OPT_LEVELS:
        raise ValueError(f"opt_level must be one of {OPT_LEVELS}, got {opt_level}")
    lowering = precision_passes(precision) if precision is not None else []
    if opt_level == 0:
        return [PropagateShapesPass(), *lowering]
    if opt_level == 1:
        return [PropagateShapesPass(), *lowering, EliminateDeadCodePass()]
    return [PropagateShapesPass(), _cleanup("cleanup"), *_recognize(), _cleanup("cleanup-after-patterns"),
            *lowering, *_fuse(), PlanMemoryPass()]
