"""timing.py: every run is timed (after a warm-up) at least twice, taking turns, with or without flushing caches."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from heteropass.backends import timing


@pytest.mark.parametrize("evict", [False, True])
def test_runs_take_turns_and_the_slower_run_measures_slower(evict: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    flushes: list[int] = []
    monkeypatch.setattr(timing, "evict_caches", lambda nbytes: flushes.append(nbytes))
    runs = {"fast": lambda: calls.append("fast"), "slow": lambda: (calls.append("slow"), time.sleep(0.002))}
    seconds = timing.fastest_runs(runs, budget_s=0.0, evict=evict, evict_bytes=1 << 20)
    assert calls[:6] == ["fast", "slow"] * 3  # warm-up calls, then two turns
    assert seconds["slow"] > seconds["fast"] and seconds["slow"] >= 0.002
    assert flushes == ([1 << 20] * (len(calls) - 2) if evict else [])


def test_evict_caches_touches_a_buffer_larger_than_a_core_cache() -> None:
    timing.evict_caches()
    buffer = timing._evict_buffers[timing._EVICT_BYTES]
    before = float(buffer[0])
    timing.evict_caches()
    assert buffer.numel() * 4 >= 2 << 20 and float(buffer[-1]) == before + 1


def test_memory_eviction_writes_more_than_the_largest_cache() -> None:
    caches = [path.read_text().strip() for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size")]
    largest = max((int(text[:-1]) << {"K": 10, "M": 20}[text[-1]] for text in caches if text[-1] in "KM"),
                  default=32 << 20)
    assert timing.memory_evict_bytes() > largest


def test_a_memory_sized_eviction_buffer_is_not_kept() -> None:
    timing.fastest_runs({"noop": lambda: None}, budget_s=0.0, evict=True, evict_bytes=8 << 20)
    assert (8 << 20) not in timing._evict_buffers
