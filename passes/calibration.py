"""Calibration: run the graph on sample inputs, record the range of chosen values, and turn each range into
the scale and zero point of an int8 quantization.

Observers: `MinMaxObserver` keeps the full range; `PercentileObserver` and `EntropyObserver` clip it to a
threshold on |x| read from a histogram (the given percentile of the magnitudes, or TensorRT's choice: the
threshold whose quantization to 128 levels, 256 for never-negative data going to u8, loses the least
information, in KL divergence). Histograms need the range first, so those observers see the calibration
batches twice. Infinities and NaNs are left out of every statistic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from typing import ClassVar

import numpy as np
import torch

from ..ir import DType, Graph, Interpreter, Node
from .precision_config import PrecisionConfig

HISTOGRAM_BINS = 2048
ENTROPY_LEVELS = 128  # magnitudes int8 can tell apart on one side of zero, as TensorRT counts them

QuantParams = tuple[torch.Tensor, torch.Tensor | None]


def quant_params(low: torch.Tensor, high: torch.Tensor, dtype: DType) -> QuantParams:
    """Scale (float32) and zero point that map [low, high], widened to contain 0, onto `dtype`, elementwise:
    u8 asymmetric (a u8 zero point), or i8 symmetric over -127..127 (no zero point). A range of width 0 gets
    scale 1, which keeps its values (zeros) exact."""
    zero = torch.zeros((), dtype=torch.float64)
    low, high = torch.minimum(low.double(), zero), torch.maximum(high.double(), zero)
    if dtype is DType.i8:
        amax = torch.maximum(-low, high)
        return torch.where(amax > 0, amax / 127, 1.0).float(), None
    if dtype is DType.u8:
        width = high - low
        scale = torch.where(width > 0, width / 255, 1.0).float()
        zero_point = torch.round(-low / scale.double()).clamp(0, 255).to(torch.uint8)
        return scale, zero_point
    raise ValueError(f"int8 quantization is to i8 or u8, not {dtype}")


def _finite(x: torch.Tensor) -> torch.Tensor:
    """The finite values of `x`: an inf or NaN in a calibration batch says nothing about a range."""
    x = x.detach()
    return x if bool(x.isfinite().all()) else x[x.isfinite()]


class Observer:
    """Records the smallest and largest value it sees; `range(dtype)` is the range to quantize to `dtype`."""

    uses_histogram: ClassVar[bool] = False

    def __init__(self) -> None:
        self.low = math.inf
        self.high = -math.inf

    def observe(self, x: torch.Tensor) -> None:
        x = _finite(x)
        if x.numel():
            self.low = min(self.low, float(x.min()))
            self.high = max(self.high, float(x.max()))

    def observe_histogram(self, x: torch.Tensor) -> None:
        """Second look at the same tensors, once `observe` has seen them all (histogram observers)."""

    def observed(self) -> tuple[float, float]:
        if self.low > self.high:
            raise ValueError("the observer has seen no values")
        return self.low, self.high

    def range(self, dtype: DType) -> tuple[float, float]:
        return self.observed()

    def qparams(self, dtype: DType) -> QuantParams:
        low, high = self.range(dtype)
        return quant_params(torch.tensor(low), torch.tensor(high), dtype)


class MinMaxObserver(Observer):
    """The whole observed range: nothing is clipped, outliers stretch the step."""


class HistogramObserver(Observer):
    """A histogram of |x| over [0, amax] of the observed range; `range` clips the observed range to
    [-threshold, threshold]."""

    uses_histogram = True

    def __init__(self, bins: int = HISTOGRAM_BINS) -> None:
        super().__init__()
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.float64)

    @property
    def amax(self) -> float:
        low, high = self.observed()
        return max(-low, high)

    def observe_histogram(self, x: torch.Tensor) -> None:
        amax = self.amax
        x = _finite(x)
        if amax > 0 and x.numel():
            self.counts += torch.histc(x.abs().double(), self.bins, 0.0, amax).numpy()

    def threshold(self, dtype: DType) -> float:
        raise NotImplementedError

    def range(self, dtype: DType) -> tuple[float, float]:
        low, high = self.observed()
        if not self.counts.any():
            return low, high
        limit = self.threshold(dtype)
        return max(low, -limit), min(high, limit)


class PercentileObserver(HistogramObserver):
    """Clips |x| at its `percentile`-th percentile (upper edge of the bin where the cumulative count gets there)."""

    def __init__(self, percentile: float, bins: int = HISTOGRAM_BINS) -> None:
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        super().__init__(bins)
        self.percentile = percentile

    def threshold(self, dtype: DType) -> float:
        cumulative = np.cumsum(self.counts)
        index = int(np.searchsorted(cumulative, cumulative[-1] * self.percentile / 100))
        return min(index + 1, self.bins) * self.amax / self.bins


class EntropyObserver(HistogramObserver):
    """TensorRT's entropy calibration: for each candidate threshold (the upper edge of bin i, at least `levels`
    bins past the first non-empty one: see `threshold`), P is the histogram up to it with everything beyond
    added to the last bin, Q is that part of the histogram merged into `levels` groups and spread back over
    each group's non-empty bins; the threshold with the least KL(P || Q) wins (the largest, on ties).
    `levels` is 128 (int8 magnitudes), 256 for u8 of data that is never negative. As NVIDIA's calibrator,
    the first bin counts as the second: a spike of exact zeros (after a ReLU) would otherwise make every
    wider threshold look worse."""

    def divergences(self, levels: int) -> np.ndarray:
        """KL(P || Q) for the thresholds at bins levels..bins (index 0: `levels` bins), all at once.

        With h the histogram, C its prefix sums, o = C[n] - C[i] the counts beyond the threshold and
        S_g / N_g the count / non-empty bins of group g: sum p log(p / q) = sum_{j<i} h_j log h_j
        - sum_g S_g log(S_g / N_g) + (last bin: h_{i-1} -> h_{i-1} + o, less o log(S_last / N_last));
        KL is that over C[n], plus log(C[i] / C[n]) for the different totals of P and Q."""
        if levels > self.bins:
            raise ValueError(f"{levels} levels need at least as many histogram bins, got {self.bins}")
        h = self.counts.copy()
        h[0] = h[1]
        total = h.sum()
        i = np.arange(levels, self.bins + 1)
        cum = np.concatenate([[0.0], np.cumsum(h)])
        filled = np.concatenate([[0.0], np.cumsum(h > 0)])
        cum_hlogh = np.concatenate([[0.0], np.cumsum(_xlogx(h))])
        starts = (np.arange(levels + 1)[None, :] * i[:, None] + levels - 1) // levels
        sums = np.diff(cum[starts], axis=1)
        counts = np.diff(filled[starts], axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            groups = np.where(sums > 0, sums * np.log(sums / np.maximum(counts, 1)), 0.0).sum(axis=1)
            beyond = total - cum[i]
            last = h[i - 1]
            q_last = sums[:, -1] / np.maximum(counts[:, -1], 1)
            tail = np.where(beyond > 0, beyond * np.log(q_last), 0.0)
            plogp = cum_hlogh[i] - _xlogx(last) + _xlogx(last + beyond) - groups - tail
            kl = plogp / total + np.log(cum[i] / total)
        return np.where((last == 0) & (beyond > 0) | (cum[i] == 0), np.inf, kl)

    def threshold(self, dtype: DType) -> float:
        """The upper edge of the candidate bin with the least divergence, among those at least `levels` bins
        past the first non-empty one. TensorRT starts at `levels` bins from 0, which assumes data near 0:
        for data away from it (all in [5, 15]) the candidates just past its smallest value see P and Q
        as the same spike (KL 0) and clip nearly all of it to that value."""
        levels = 2 * ENTROPY_LEVELS if dtype is DType.u8 and self.observed()[0] >= 0 else ENTROPY_LEVELS
        first = int(np.flatnonzero(self.counts)[0])
        kl = self.divergences(levels)[first:]
        if not len(kl):
            return self.amax  # the data spans fewer than `levels` bins below its amax: nothing to clip
        last_min = len(kl) - 1 - int(np.argmin(kl[::-1]))
        return (first + last_min + levels) * self.amax / self.bins


def _xlogx(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)


def make_observer(method: str, percentile: float = 99.99) -> Observer:
    """The observer of a `PrecisionConfig.calibration_method`."""
    if method == "minmax":
        return MinMaxObserver()
    if method == "percentile":
        return PercentileObserver(percentile)
    if method == "entropy":
        return EntropyObserver()
    raise ValueError(f"unknown calibration method {method!r}")


class ValueRecorder(Interpreter):
    """Runs the graph and hands the tensors of the named values (inputs or node outputs) to `on_value`."""

    def __init__(self, graph: Graph, names: Collection[str], on_value: Callable[[str, torch.Tensor], None]) -> None:
        super().__init__(graph)
        self.names = frozenset(names)
        self.on_value = on_value

    def run(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        for value, tensor in zip(self.graph.inputs, inputs, strict=False):
            if value.name in self.names:
                self.on_value(value.name, tensor)
        return super().run(*inputs)

    def run_node(self, node: Node, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        results = super().run_node(node, args)
        for value, result in zip(node.outputs, results, strict=True):
            if value.name in self.names:
                self.on_value(value.name, result)
        return results


def observe(graph: Graph, names: Collection[str], batches: Sequence[Sequence[torch.Tensor]],
            make: Callable[[], Observer]) -> dict[str, Observer]:
    """One observer per named value, fed by running `graph` on every batch (twice for histograms)."""
    if not batches:
        raise ValueError("calibration needs at least one batch of inputs")
    observers = {name: make() for name in names}
    seen: set[str] = set()

    def first_look(name: str, x: torch.Tensor) -> None:
        seen.add(name)
        observers[name].observe(x)

    for batch in batches:
        ValueRecorder(graph, observers, first_look).run(*batch)
    missing = sorted(set(observers) - seen)
    if missing:
        raise ValueError(f"graph {graph.name} has no value {', '.join('%' + n for n in missing)}")
    if any(o.uses_histogram for o in observers.values()):
        for batch in batches:
            ValueRecorder(graph, observers, lambda name, x: observers[name].observe_histogram(x)).run(*batch)
    return observers


def calibrate(graph: Graph, names: Collection[str], config: PrecisionConfig,
              dtype: DType = DType.u8) -> dict[str, QuantParams]:
    """Per-tensor scale and zero point of each named value on `config.calibration`, by its calibration method."""
    observers = observe(graph, names, config.calibration,
                        lambda: make_observer(config.calibration_method, config.percentile))
    params = {}
    for name, observer in observers.items():
        try:
            params[name] = observer.qparams(dtype)
        except ValueError as exc:
            raise ValueError(f"calibrating %{name}: {exc} (every calibration value was NaN or infinite)") from exc
    return params
