"""timing.py: every run is timed (after a warm-up) at least twice, taking turns, with or without flushing caches."""

from __future__ import annotations

import time

import pytest

from heteropass.backends import timing


@pytest.mark.parametrize("evict", [False, True])
def test_runs_take_turns_and_the_slower_run_measures_slower(evict: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    flushes: list[int] = []
    monkeypatch.setattr(timing, "evict_caches", lambda: flushes.append(1))
    runs = {"fast": lambda: calls.append("fast"), "slow": lambda: (calls.append("slow"), time.sleep(0.002))}
    seconds = timing.fastest_runs(runs, budget_s=0.0, evict=evict)
    assert calls[:6] == ["fast", "slow"] * 3  # warm-up calls, then two turns
    assert seconds["slow"] > seconds["fast"] and seconds["slow"] >= 0.002
    assert len(flushes) == (len(calls) - 2 if evict else 0)


def test_evict_caches_touches_a_buffer_larger_than_a_core_cache() -> None:
    timing.evict_caches()
    before = float(timing._evict_buffer[0][0])
    timing.evict_caches()
    assert timing._evict_buffer[0].numel() * 4 >= 2 << 20 and float(timing._evict_buffer[0][-1]) == before + 1
