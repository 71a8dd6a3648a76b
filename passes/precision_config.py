"""What a precision-lowering or quantization run is asked to do, and how its error is measured.

`PrecisionConfig` travels from `heteropass.compile(..., precision=...)` into the precision passes;
`measure_error` is the one definition of "how far is this result from the float32 one" that the
error-budget search, the int8 fallback loop and the compile report all use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .base import Pass

PRECISIONS = ("fp32", "bf16", "fp16", "int8-weight", "int8-dynamic", "int8-static")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


@dataclass(frozen=True)
class PrecisionConfig:
    """A precision request.

    `precision`: one of PRECISIONS. `calibration`: sample inputs (each a tuple of the graph's input
    tensors, in graph-input order) used for static quantization ranges and for measuring error.
    `tolerance`: the largest `ErrorMetrics.max_rel` of the outputs allowed against float32; with it,
    passes keep the ops that would exceed it at higher precision and say why. `allow` / `deny`: op
    names (`"matmul"`, `"softmax"`) to lower or keep in float32 beyond the defaults; `keep_nodes`:
    node names (a node is named by its first output, `%linear_1` -> `"linear_1"`) kept in float32,
    ONNX Runtime's `nodes_to_exclude`. `block_size`: group size of weight-only int8 scales (0 means
    one scale per output channel). `activation_bits`: 16 rounds a weight-only int8 linear's input per row
    to a 16-bit grid (step max|row| / 32767) so that kernels multiply int8 by int16 (about 2x faster on
    CPUs without VNNI, error two orders below the weights'); 32 keeps it float32. `granularity`:
    dynamic int8 activation scales per `"row"` or `"tensor"`. `calibration_method` / `percentile`: how
    static quantization picks activation ranges.
    """

    precision: str = "fp32"
    calibration: tuple[tuple[torch.Tensor, ...], ...] = ()
    tolerance: float | None = None
    allow: frozenset[str] = frozenset()
    deny: frozenset[str] = frozenset()
    keep_nodes: frozenset[str] = frozenset()
    block_size: int = 0
    activation_bits: int = 16
    granularity: str = "row"
    calibration_method: str = "minmax"
    percentile: float = 99.99

    def as_dict(self) -> dict[str, object]:
        """The request as JSON-ready values (the calibration inputs as their count), for reproducers."""
        return {"precision": self.precision, "calibration_batches": len(self.calibration),
                "tolerance": self.tolerance, "allow": sorted(self.allow), "deny": sorted(self.deny),
                "keep_nodes": sorted(self.keep_nodes), "block_size": self.block_size,
                "activation_bits": self.activation_bits, "granularity": self.granularity,
                "calibration_method": self.calibration_method, "percentile": self.percentile}

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ValueError(f"calibration_method must be one of {CALIBRATION_METHODS}, "
                             f"got {self.calibration_method!r}")
        if self.granularity not in ("row", "tensor"):
            raise ValueError(f"granularity must be 'row' or 'tensor', got {self.granularity!r}")
        if self.block_size < 0:
            raise ValueError(f"block_size must be >= 0, got {self.block_size}")
        if self.activation_bits not in (16, 32):
            raise ValueError(f"activation_bits must be 16 or 32, got {self.activation_bits}")
        if self.tolerance is not None and not self.tolerance > 0:  # NaN too
            raise ValueError(f"tolerance must be positive, got {self.tolerance}")
        if self.tolerance is not None and not self.calibration:
            raise ValueError("a tolerance needs calibration inputs to measure the error against")
        if self.precision == "int8-static" and not self.calibration:
            raise ValueError("precision='int8-static' needs calibration inputs")
        for field_name in ("allow", "deny", "keep_nodes"):
            object.__setattr__(self, field_name, frozenset(getattr(self, field_name)))
        object.__setattr__(self, "calibration", tuple(tuple(batch) for batch in self.calibration))

    @property
    def active(self) -> bool:
        return self.precision != "fp32"


@dataclass(frozen=True)
class ErrorMetrics:
    """How far results are from a float32 reference, over all floating-point outputs.

    `max_abs`: largest absolute difference; `max_rel`: `max_abs` over the largest reference
    magnitude (relative to the output's range, so near-zero elements do not blow it up);
    `sqnr_db`: signal-to-quantization-noise ratio, 10*log10(sum ref^2 / sum err^2) (inf when exact);
    `cosine`: cosine similarity of the flattened results.
    """

    max_abs: float
    max_rel: float
    sqnr_db: float
    cosine: float

    def __str__(self) -> str:
        sqnr = "inf" if math.isinf(self.sqnr_db) else f"{self.sqnr_db:.1f}"
        return f"max_rel {self.max_rel:.2e}, max_abs {self.max_abs:.2e}, sqnr {sqnr} dB, cosine {self.cosine:.6f}"

    def as_dict(self) -> dict[str, float]:
        return {"max_abs": self.max_abs, "max_rel": self.max_rel, "sqnr_db": self.sqnr_db, "cosine": self.cosine}


def measure_error(reference: Sequence[torch.Tensor], actual: Sequence[torch.Tensor]) -> ErrorMetrics:
    """Error of `actual` against `reference`, pooled over the floating-point tensors (others must be equal
    in shape; their values are not compared)."""
    if len(reference) != len(actual):
        raise ValueError(f"{len(actual)} results for {len(reference)} reference results")
    refs, gots = [], []
    for i, (ref, got) in enumerate(zip(reference, actual, strict=True)):
        if tuple(ref.shape) != tuple(got.shape):
            raise ValueError(f"result {i} has shape {tuple(got.shape)}, reference {tuple(ref.shape)}")
        if ref.dtype.is_floating_point:
            refs.append(ref.detach().double().flatten())
            gots.append(got.detach().double().flatten())
    if not refs:
        return ErrorMetrics(0.0, 0.0, math.inf, 1.0)
    ref, got = torch.cat(refs), torch.cat(gots)
    err = got - ref
    max_abs = float(err.abs().max()) if err.numel() else 0.0
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    noise, signal = float(err.square().sum()), float(ref.square().sum())
    if noise == 0:
        sqnr = math.inf
    elif signal > 0 and math.isfinite(noise):
        sqnr = 10 * (math.log10(signal) - math.log10(noise))
    else:  # no signal, or an infinite or NaN error (a 16-bit overflow)
        sqnr = -math.inf
    norms = float(ref.norm() * got.norm())
    cosine = float(ref @ got) / norms if norms > 0 else float(noise == 0)
    return ErrorMetrics(max_abs, max_abs / scale if scale > 0 else max_abs, sqnr, cosine)


def measure_batches(reference: Sequence[Sequence[torch.Tensor]], actual: Sequence[Sequence[torch.Tensor]]
                    ) -> ErrorMetrics:
    """`measure_error` pooled over several calibration batches."""
    return measure_error([t for batch in reference for t in batch], [t for batch in actual for t in batch])


class PrecisionPass(Pass):
    """A pass that changes results on purpose (lowering or quantization) as its `config` asks: check-each
    measures its drift without failing it, and a reproducer records the request."""

    approximates = True
    config: PrecisionConfig

    def settings(self) -> dict[str, object]:
        return self.config.as_dict()
