"""Shared test configuration: hypothesis profiles, single-threaded torch, and summaries that tests
record with `record_property("summary", text)`, printed at the end of the run (also under xdist).

Profiles, chosen with HETEROPASS_HYPOTHESIS_PROFILE:
- "ci" (default): reproducible (derandomized, no example database), sized for a 2-core machine;
- "dev": few examples, random seeds, failures replayed from the local database;
- "thorough": many random examples, for hunting bugs before a release.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# pytest-xdist runs one worker per core; torch's intra-op threads would oversubscribe them.
torch.set_num_threads(1)

_SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.data_too_large]

settings.register_profile("ci", max_examples=300, deadline=None, derandomize=True, database=None,
                          suppress_health_check=_SLOW_IS_FINE, print_blob=True)
settings.register_profile("dev", max_examples=30, deadline=None, suppress_health_check=_SLOW_IS_FINE)
settings.register_profile("thorough", max_examples=3000, deadline=None, suppress_health_check=_SLOW_IS_FINE,
                          print_blob=True)
settings.load_profile(os.environ.get("HETEROPASS_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def decompositions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One element per `ExportedProgram.run_decompositions` call the test makes (the import re-traces
    the program only when torch.export's graph cannot be lowered as exported)."""
    calls: list[int] = []
    original = torch.export.ExportedProgram.run_decompositions

    def counted(program: torch.export.ExportedProgram, *args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(program, *args, **kwargs)

    monkeypatch.setattr(torch.export.ExportedProgram, "run_decompositions", counted)
    return calls


_SUMMARIES: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _SUMMARIES.extend(str(value) for key, value in report.user_properties if key == "summary")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for summary in _SUMMARIES:
        terminalreporter.write_line(summary)
