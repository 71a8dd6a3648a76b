"""The default pipelines per opt level, and the registry of passes by name. The one place both are defined."""

from __future__ import annotations

from .base import Pass
from .eliminate_common_subexpressions import EliminateCommonSubexpressionsPass
from .eliminate_dead_code import EliminateDeadCodePass
from .fold_constants import FoldConstantsPass
from .manager import Fixpoint
from .propagate_shapes import PropagateShapesPass
from .simplify_algebra import SimplifyAlgebraPass

OPT_LEVELS = (0, 1, 2, 3)

_PASSES: tuple[type[Pass], ...] = (
    PropagateShapesPass,
    SimplifyAlgebraPass,
    FoldConstantsPass,
    EliminateCommonSubexpressionsPass,
    EliminateDeadCodePass,
)


def pass_registry() -> dict[str, type[Pass]]:
    """Every pass class by its name, e.g. `"fold-constants" -> FoldConstantsPass`."""
    return {cls.name: cls for cls in _PASSES}


def default_pipeline(opt_level: int) -> list[Pass | Fixpoint]:
    """O0: shapes only (later stages rely on static shapes); O1: shapes and dead code; O2/O3: shapes, then
    simplify, fold, CSE and DCE repeated to a fixpoint."""
    if opt_level not in OPT_LEVELS:
        raise ValueError(f"opt_level must be one of {OPT_LEVELS}, got {opt_level}")
    if opt_level == 0:
        return [PropagateShapesPass()]
    if opt_level == 1:
        return [PropagateShapesPass(), EliminateDeadCodePass()]
    cleanup = [SimplifyAlgebraPass(), FoldConstantsPass(), EliminateCommonSubexpressionsPass(),
               EliminateDeadCodePass()]
    return [PropagateShapesPass(), Fixpoint(cleanup, max_steps=8, name="cleanup")]
