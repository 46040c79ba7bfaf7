"""Hand-made fleets for tests: sessions given as dicts with arrival / departure in steps from START."""
from __future__ import annotations

import numpy as np
import pandas as pd

from evagg.simulators.fleet import Fleet
from evagg.simulators.results import tracking_sse
from evagg.simulators.problem import Problem
from evagg.simulators.tables import validate_sessions

START = np.datetime64("2026-06-01T00:00:00", "s")
DEFAULTS = dict(
    energy_initial_kwh=0.0, energy_target_kwh=20.0, capacity_kwh=100.0, p_charge_max_kw=10.0,
    p_discharge_max_kw=0.0, eta_charge=1.0, eta_discharge=1.0, energy_min_kwh=0.0,
)


def make_fleet(sessions: list[dict], dt_h: float = 1.0) -> Fleet:
    """A fleet from session dicts (`arrive` / `depart` in steps of dt_h hours from START, floats allowed, the
    other keys as in the sessions table), checked like a sessions file."""
    step_s = int(round(dt_h * 3600))
    rows = []
    for k, s in enumerate(sessions):
        row = dict(DEFAULTS, ev_id=f"ev{k}")
        row.update({c: v for c, v in s.items() if c not in ("arrive", "depart")})
        row["arrival"] = START + np.timedelta64(int(round(s["arrive"] * step_s)), "s")
        row["departure"] = START + np.timedelta64(int(round(s["depart"] * step_s)), "s")
        rows.append(row)
    return Fleet.from_frame(validate_sessions(pd.DataFrame(rows)))


def make_problem(sessions: list[dict], n_steps: int, dt_h: float = 1.0) -> Problem:
    step_s = int(round(dt_h * 3600))
    return Problem.build(make_fleet(sessions, dt_h), START, np.timedelta64(step_s, "s"), n_steps)


def sse(out, p_ref) -> float:
    """Tracking SSE of a method's output (kW^2)."""
    return tracking_sse(out.pc, out.pd, p_ref)


def assert_feasible(problem: Problem, out) -> None:
    """Every constraint of the spec holds, with the output's shape."""
    bad = {k: v for k, v in problem.violations(out.pc, out.pd).items() if v}
    assert not bad, bad
    assert out.pc.shape == out.pd.shape == (problem.n_evs, problem.n_steps)
