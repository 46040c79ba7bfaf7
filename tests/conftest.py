"""Shared fixtures: small synthetic fleets and signals made by evagg's own generator (no shared files needed)."""
from __future__ import annotations

import pytest

from evagg.simulators.synthetic import synthetic_fleet, synthetic_reference
from evagg.simulators.tables import write_reference, write_sessions

START = "2026-06-01T00:00:00"


@pytest.fixture(scope="session")
def fleet50():
    """50 sessions (seed 7), half of them V2G, over one day from START."""
    return synthetic_fleet(50, seed=7, start=START)


@pytest.fixture(scope="session")
def reference50(fleet50):
    """A regulation reference for `fleet50`: 96 steps of 15 min from START (kW)."""
    return synthetic_reference(fleet50, start=START, step_s=900, n_steps=96, seed=7)


@pytest.fixture(scope="session")
def surplus50(fleet50):
    """A PV-surplus reference for `fleet50`, asking for more than it can take around midday."""
    return synthetic_reference(fleet50, start=START, step_s=900, n_steps=96, seed=7, kind="surplus")


@pytest.fixture
def fleet50_files(tmp_path, fleet50, reference50):
    """(sessions.csv, signal.csv) of fleet50 / reference50 in a fresh temporary directory."""
    sessions, signal = tmp_path / "sessions.csv", tmp_path / "signal.csv"
    write_sessions(fleet50, sessions)
    write_reference(reference50, signal)
    return sessions, signal
