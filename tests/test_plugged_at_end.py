"""Shortfall counted the same way for every EV that misses its target, and the EVs still plugged in at the end of
a co-simulation reported apart (how many, and the shortfall already certain for them): rows of the bad-input
issue."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from evagg.scenarios.cli import main
from evagg.simulators.aggregator import Aggregator
from evagg.simulators.fleet import Fleet
from evagg.simulators.problem import Problem
from evagg.simulators.reference import Reference
from evagg.simulators.tables import write_sessions

START = pd.Timestamp("2026-06-01T00:00:00")
STEP_S = 900


def _fleet() -> Fleet:
    """a: 0 kW charger, plugged from before the start to long after the end (its target out of reach);
    b: a stay shorter than one step within the run (target above its initial energy);
    c: an ordinary session leaving after the end with time enough to reach its target;
    d: an ordinary session leaving within the run."""
    t = lambda h: START + pd.Timedelta(hours=h)  # noqa: E731
    return Fleet.from_frame(pd.DataFrame({
        "ev_id": ["a", "b", "c", "d"],
        "arrival": [t(-1), t(0.3), t(0.0), t(0.0)],
        "departure": [t(10), t(0.45), t(12), t(1.5)],
        "energy_initial_kwh": [10.0, 10.0, 10.0, 10.0],
        "energy_target_kwh": [30.0, 14.0, 40.0, 15.0],
        "capacity_kwh": [60.0, 60.0, 60.0, 60.0],
        "p_charge_max_kw": [0.0, 11.0, 11.0, 11.0],
        "p_discharge_max_kw": [0.0, 0.0, 0.0, 0.0],
        "eta_charge": [0.95] * 4, "eta_discharge": [0.95] * 4,
        "bus": [1, 1, 2, 2],
    }))


def test_a_stay_shorter_than_a_step_is_counted_like_the_batch_dispatch():
    """The old aggregator never counted the shortfall of a session plugged in for no whole step."""
    fleet = _fleet()
    n = 8
    agg = Aggregator(fleet, START, STEP_S, horizon=4, method="edf")
    agg.run(n)
    problem = Problem.build(fleet, START.to_datetime64(), np.timedelta64(STEP_S, "s"), n)
    batch = problem.shortfall(np.broadcast_to(problem.e0[:, None], (len(fleet), n)))
    assert batch[1] == 4.0  # b never charges: its whole need is missed
    assert agg.shortfall_kwh >= batch[1]
    assert np.isclose(agg.final_energy_kwh[1], 10.0)  # b is counted as departed, with its energy
    assert agg.n_departed == 2  # b and d


def test_evs_still_plugged_at_the_end_and_their_certain_shortfall():
    fleet = _fleet()
    agg = Aggregator(fleet, START, STEP_S, horizon=4, method="edf")
    assert agg.plugged_at_end() == (0, 0.0)  # before any step
    agg.run(8)  # 2 h: a and c stay after it
    n, certain = agg.plugged_at_end()
    assert n == 2
    # a cannot charge: its whole need is certain to be missed; c can still reach its target
    assert np.isclose(certain, 20.0)
    assert agg.shortfall_kwh < 20.0  # not counted in the departures' shortfall


def test_a_cosimulation_reports_the_evs_plugged_at_the_end(tmp_path, capsys):
    sessions, out = tmp_path / "s.csv", tmp_path / "run"
    write_sessions(_fleet(), sessions)
    code = main(["run", "--sessions", str(sessions), "--start", str(START.isoformat()), "--steps", "8",
                 "--method", "edf", "--out", str(out), "--no-progress", "--no-plots"])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    figures = json.loads((out / "summary.json").read_text())["figures"]
    assert figures["evs_plugged_at_end"] == 2
    assert np.isclose(figures["certain_shortfall_kwh"], 20.0)
    assert figures["energy_shortfall_kwh"] >= 4.0 - 1e-9  # b's, though it was plugged in for no whole step
    assert "EVs still plugged in at the end" in stdout and "their certain shortfall [kWh]" in stdout
