"""Calibration: hand-computed ranges and quantization parameters, the clipping observers on known
distributions, the vectorized entropy search against a direct one, and the quantize/dequantize round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import heteropass as hp
from heteropass.ir import DType, parse_graph
from heteropass.ir.ops.quant import broadcast_param, dequantize, quantize
from heteropass.passes.calibration import (
    EntropyObserver,
    MinMaxObserver,
    PercentileObserver,
    ValueRecorder,
    calibrate,
    make_observer,
    observe,
    quant_params,
)
from heteropass.passes.precision_config import PrecisionConfig

GRAPH = """
graph g(%x: f32[4]) -> (f32[4]) {
  const %two: f32[] = 2.0
  %0: f32[4] = relu(%x)
  %1: f32[4] = mul(%0, %two)
  return %1
}"""


def _seen(observer: MinMaxObserver | EntropyObserver | PercentileObserver, *tensors: torch.Tensor
          ) -> MinMaxObserver | EntropyObserver | PercentileObserver:
    for x in tensors:
        observer.observe(x)
    for x in tensors:
        observer.observe_histogram(x)
    return observer


def test_quant_params_by_hand() -> None:
    scale, zero = quant_params(torch.tensor(-1.0), torch.tensor(3.0), DType.u8)
    assert scale.item() == pytest.approx(4 / 255) and zero is not None and zero.item() == 64  # round(63.75)
    assert zero.dtype == torch.uint8 and scale.dtype == torch.float32
    scale, zero = quant_params(torch.tensor(-1.0), torch.tensor(3.0), DType.i8)
    assert scale.item() == pytest.approx(3 / 127) and zero is None
    # Ranges are widened to hold 0: all-positive data starts at 0, all-negative data ends there.
    scale, zero = quant_params(torch.tensor([0.5, -2.0, 0.0]), torch.tensor([2.0, -1.0, 0.0]), DType.u8)
    assert torch.allclose(scale, torch.tensor([2 / 255, 2 / 255, 1.0]))
    assert zero.tolist() == [0, 255, 0]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="i8 or u8"):
        quant_params(torch.tensor(0.0), torch.tensor(1.0), DType.i32)


def test_minmax_ranges_of_graph_values_over_batches() -> None:
    graph = parse_graph(GRAPH)
    batches = [(torch.tensor([-1.0, 2.0, 0.0, 0.5]),), (torch.tensor([0.5, 3.0, -4.0, 1.0]),)]
    observers = observe(graph, ["x", "0", "1"], batches, MinMaxObserver)
    assert {name: o.range(DType.u8) for name, o in observers.items()} == {
        "x": (-4.0, 3.0), "0": (0.0, 3.0), "1": (0.0, 6.0)}
    params = calibrate(graph, ["x", "1"], PrecisionConfig(calibration=batches))
    assert params["x"][0].item() == pytest.approx(7 / 255) and params["x"][1].item() == round(4 / (7 / 255))
    assert params["1"][0].item() == pytest.approx(6 / 255) and params["1"][1].item() == 0
    i8 = calibrate(graph, ["x"], PrecisionConfig(calibration=batches), DType.i8)
    assert i8["x"][0].item() == pytest.approx(4 / 127) and i8["x"][1] is None


def test_infinities_and_nans_are_left_out() -> None:
    x = torch.tensor([1.0, math.inf, math.nan, -2.0, -math.inf])
    assert _seen(MinMaxObserver(), x).range(DType.u8) == (-2.0, 1.0)
    assert _seen(PercentileObserver(100.0), x).range(DType.u8) == (-2.0, 1.0)


def test_calibration_names_missing_values() -> None:
    with pytest.raises(ValueError, match="no value %nope"):
        calibrate(parse_graph(GRAPH), ["x", "nope"], PrecisionConfig(calibration=[(torch.ones(4),)]))


def test_recorder_sees_inputs_and_intermediate_values() -> None:
    seen: dict[str, torch.Tensor] = {}
    outputs = ValueRecorder(parse_graph(GRAPH), ["x", "0"], seen.__setitem__).run(torch.tensor([-1.0, 2, 0, 3]))
    assert seen["x"].tolist() == [-1.0, 2, 0, 3] and seen["0"].tolist() == [0.0, 2, 0, 3]
    assert outputs[0].tolist() == [0.0, 4, 0, 6]


def test_percentile_of_uniform_data() -> None:
    x = torch.linspace(-1, 1, 200_001)
    observer = _seen(PercentileObserver(99.0), x)
    low, high = observer.range(DType.u8)
    bin_width = 1 / 2048
    assert 0.99 <= high <= 0.99 + bin_width and low == -high
    assert _seen(PercentileObserver(100.0), x).range(DType.u8) == (-1.0, 1.0)


def test_clipping_observers_are_tighter_than_minmax_with_outliers() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(200_000, generator=gen), torch.tensor([50.0, -40.0])])
    assert _seen(MinMaxObserver(), x).range(DType.i8) == (-40.0, 50.0)
    # 99.9% of |N(0, 1)| lies below 3.29.
    low, high = _seen(PercentileObserver(99.9), x).range(DType.i8)
    assert high == pytest.approx(3.29, abs=0.1) and low == -high
    low, high = _seen(EntropyObserver(), x).range(DType.i8)
    assert 3.0 < high < 10.0 and low == -high


def test_entropy_keeps_the_range_of_data_without_tails() -> None:
    uniform = torch.linspace(-1, 1, 100_001)
    assert _seen(EntropyObserver(), uniform).range(DType.i8)[1] > 0.95
    gen = torch.Generator().manual_seed(1)
    gaussian = torch.randn(1_000_000, generator=gen)
    high = _seen(EntropyObserver(), gaussian).range(DType.i8)[1]
    assert 3.5 < high < float(gaussian.abs().max())


def test_entropy_keeps_the_range_of_data_away_from_zero() -> None:
    """Candidates start `levels` bins past the smallest magnitude: uniform data in [5, 15] is not clipped
    to about 5 (P and Q of a threshold just past the data's start are the same spike), and the int8-static
    linear stays close to eager PyTorch."""
    gen = torch.Generator().manual_seed(3)
    batches = [torch.rand(64, 32, generator=gen) * 10 + 5 for _ in range(4)]
    for dtype in (DType.i8, DType.u8):
        low, high = _seen(EntropyObserver(), *batches).range(dtype)
        assert low == pytest.approx(5.0, abs=0.01) and high > 14.0
    gaussian = torch.randn(1_000_000, generator=gen) + 10
    high = _seen(EntropyObserver(), gaussian).range(DType.i8)[1]
    assert 13.0 < high < float(gaussian.max())
    model = torch.nn.Linear(32, 8).eval()
    compiled = hp.compile(model, (batches[0],), precision="int8-static", calibration=[(b,) for b in batches],
                          precision_options={"calibration_method": "entropy"})
    x = torch.rand(64, 32, generator=gen) * 10 + 5
    with torch.no_grad():
        expected = model(x)
    assert (compiled(x) - expected).abs().max() < 0.05 * expected.abs().max()


def _threshold_with(observer: EntropyObserver, levels: int) -> float:
    kl = observer.divergences(levels)
    return (len(kl) - 1 - int(np.argmin(kl[::-1])) + levels) * observer.amax / observer.bins


def test_entropy_gives_unsigned_data_twice_the_levels() -> None:
    normal = torch.randn(500_000, generator=torch.Generator().manual_seed(2))
    relu = _seen(EntropyObserver(), normal.relu())
    assert relu.range(DType.u8) == (0.0, _threshold_with(relu, 256))
    assert relu.range(DType.i8) == (0.0, _threshold_with(relu, 128))
    assert _threshold_with(relu, 256) != _threshold_with(relu, 128)
    signed = _seen(EntropyObserver(), normal)
    limit = _threshold_with(signed, 128)
    assert signed.range(DType.u8) == (max(signed.low, -limit), min(signed.high, limit))


def _direct_divergences(counts: np.ndarray, levels: int) -> np.ndarray:
    """TensorRT's search written out candidate by candidate."""
    hist = counts.copy()
    hist[0] = hist[1]
    result = []
    for i in range(levels, len(hist) + 1):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        group = np.arange(i) * levels // i
        q = np.zeros(i)
        for g in range(levels):
            members = (group == g) & (hist[:i] > 0)
            if members.any():
                q[members] = hist[:i][group == g].sum() / members.sum()
        support = p > 0
        if q.sum() == 0 or np.any(support & (q == 0)):
            result.append(math.inf)
            continue
        p, q = p[support] / p.sum(), q[support] / q.sum()
        result.append(float(np.sum(p * np.log(p / q))))
    return np.array(result)


@settings(max_examples=40)
@given(st.integers(2, 8), st.integers(0, 70), st.integers(0, 2**16), st.floats(0.2, 1.0))
def test_entropy_search_matches_the_direct_one(levels: int, extra_bins: int, seed: int, density: float) -> None:
    rng = np.random.default_rng(seed)
    bins = levels + extra_bins
    observer = EntropyObserver(bins=bins)
    observer.counts = rng.integers(0, 6, bins) * (rng.random(bins) < density).astype(np.float64)
    np.testing.assert_allclose(observer.divergences(levels), _direct_divergences(observer.counts, levels),
                               rtol=1e-9, atol=1e-12)


def test_make_observer_by_method() -> None:
    assert isinstance(make_observer("minmax"), MinMaxObserver)
    percentile = make_observer("percentile", 99.5)
    assert isinstance(percentile, PercentileObserver) and percentile.percentile == 99.5
    assert isinstance(make_observer("entropy"), EntropyObserver)
    with pytest.raises(ValueError, match="percentile"):
        PercentileObserver(0.0)


def _block_extremes(x: torch.Tensor, axis: int | None, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max per tensor, per slice along `axis`, or per block along `axis`."""
    if axis is None:
        return x.amin(), x.amax()
    if block_size == 0:
        moved = x.movedim(axis, 0).reshape(x.shape[axis], -1)
        return moved.amin(1), moved.amax(1)
    moved = x.movedim(axis, -1)
    blocks = -(-moved.shape[-1] // block_size)
    lows, highs = [], []
    for b in range(blocks):
        part = moved[..., b * block_size:(b + 1) * block_size]
        lows.append(part.amin(-1))
        highs.append(part.amax(-1))
    return torch.stack(lows, -1).movedim(-1, axis), torch.stack(highs, -1).movedim(-1, axis)


@settings(max_examples=120)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=3), st.sampled_from(["tensor", "axis", "block"]),
       st.data(), st.sampled_from([DType.i8, DType.u8]), st.integers(0, 2**16), st.floats(1e-3, 1e3))
def test_round_trip_error_is_at_most_half_a_step(shape: list[int], form: str, data: st.DataObject, dtype: DType,
                                                 seed: int, magnitude: float) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * magnitude
    if data.draw(st.booleans()):
        x = x.abs()  # one-sided data: the asymmetric zero point sits at an end
    axis = None if form == "tensor" else data.draw(st.integers(0, len(shape) - 1))
    block_size = data.draw(st.integers(1, 4)) if form == "block" else 0
    low, high = _block_extremes(x, axis, block_size)
    scale, zero = quant_params(low, high, dtype)
    attrs = {"axis": 0 if axis is None else axis, "block_size": block_size}
    q = quantize(x, scale, zero, dtype=dtype, **attrs)
    assert q.dtype == dtype.torch
    restored = dequantize(q, scale, zero, **attrs)
    step = broadcast_param(scale, x, attrs["axis"], block_size)
    assert torch.all((restored - x).abs() <= step / 2 * (1 + 1e-5) + 1e-6 * magnitude)
