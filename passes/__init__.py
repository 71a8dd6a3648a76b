"""Passes over the IR and the pass manager that runs them."""

from .base import Pass, PassContext, PassResult
from .instruments import (
    CheckEach,
    DumpIR,
    PrintAfterAll,
    PrintAfterChange,
    VerifyEach,
    dump_dir_from_env,
    instruments_for,
)
from .manager import Fixpoint, Instrument, PassFailure, PassManager, PassRecord, PipelineResult, load_reproducer
from .pipelines import default_pipeline, pass_registry

__all__ = [
    "CheckEach", "DumpIR", "Fixpoint", "Instrument", "Pass", "PassContext", "PassFailure", "PassManager",
    "PassRecord", "PassResult", "PipelineResult", "PrintAfterAll", "PrintAfterChange", "VerifyEach",
    "default_pipeline", "dump_dir_from_env", "instruments_for", "load_reproducer", "pass_registry",
]
