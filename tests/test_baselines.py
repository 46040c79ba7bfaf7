"""The baseline dispatch rules (uncontrolled, EDF, round robin): exact feasibility on random fleets, hand cases."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evagg.simulators.baselines import solve_edf, solve_round_robin, solve_uncontrolled
from evagg.simulators.problem import Problem

import sessions
from sessions import make_problem, sse

BASELINES = (solve_uncontrolled, solve_edf, solve_round_robin)


def assert_feasible(problem: Problem, out) -> None:
    sessions.assert_feasible(problem, out)
    # exactly zero (not just within tolerance) outside the windows and where the other mode is on
    assert np.all(out.pc[~problem.plugged] == 0) and np.all(out.pd[~problem.plugged] == 0)
    assert not np.any((out.pc > 0) & (out.pd > 0))


# ---- random fleets -------------------------------------------------------------------------------------------

@st.composite
def fleets_and_references(draw):
    n_steps = draw(st.integers(1, 24))
    dt_h = draw(st.sampled_from([0.25, 0.5, 1.0]))
    n = draw(st.integers(1, 8))
    unit = st.floats(0.0, 1.0)
    sessions = []
    for _ in range(n):
        arrive = draw(st.floats(-3.0, n_steps + 1.0))
        depart = arrive + draw(st.floats(0.01, n_steps + 4.0))
        cap = draw(st.floats(5.0, 100.0))
        pc_max = draw(st.sampled_from([0.0, 3.7, 11.0, 22.0, 50.0]))
        v2g = draw(st.booleans())
        sessions.append(dict(
            arrive=arrive, depart=depart, capacity_kwh=cap,
            energy_initial_kwh=cap * draw(unit),
            energy_target_kwh=cap * draw(st.floats(0.0, 1.3)),
            energy_min_kwh=cap * draw(st.floats(0.0, 0.5)),
            p_charge_max_kw=pc_max, p_discharge_max_kw=draw(st.sampled_from([3.7, 11.0, 22.0])) if v2g else 0.0,
            eta_charge=draw(st.floats(0.7, 1.0)), eta_discharge=draw(st.floats(0.7, 1.0)),
        ))
    p_ref = np.array(draw(st.lists(st.floats(-80.0, 150.0), min_size=n_steps, max_size=n_steps)))
    return make_problem(sessions, n_steps, dt_h), p_ref


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets_and_references())
def test_baselines_are_exactly_feasible(case):
    problem, p_ref = case
    for solve in BASELINES:
        out = solve(problem, p_ref)
        assert_feasible(problem, out)
        assert out.status == "feasible"
    assert np.all(solve_uncontrolled(problem, p_ref).pd == 0)


@settings(max_examples=60, deadline=None)
@given(fleets_and_references())
def test_edf_and_round_robin_charge_only_what_is_needed_for_a_zero_reference(case):
    """Without V2G and with a zero reference, nobody charges beyond what the needs force: every EV ends at
    max(need_end, e0) (charging only when it must, i.e. as late as possible)."""
    problem, _ = case
    problem = dataclasses.replace(problem, pd_max=np.zeros(problem.n_evs))
    zero = np.zeros(problem.n_steps)
    has = problem.stop > problem.first
    for solve in (solve_edf, solve_round_robin):
        out = solve(problem, zero)
        assert_feasible(problem, out)
        assert np.all(out.pd == 0)
        e_end = problem.energy_at_departure(problem.energy(out.pc, out.pd))
        np.testing.assert_allclose(e_end[has], np.maximum(problem.need_end, problem.e0)[has], atol=1e-9)


# ---- hand cases ---------------------------------------------------------------------------------------------

def test_uncontrolled_hand_case():
    problem = make_problem(
        [
            # plugged steps 1..4 (arrives 0.5 -> first step 1); gain 9 kWh per step; needs 20 kWh more
            dict(arrive=0.5, depart=5.0, energy_initial_kwh=10.0, energy_target_kwh=30.0, eta_charge=0.9),
            # target above capacity: charges to the capacity 40 (from 35: 5 kWh in step 0 at 5 kW)
            dict(arrive=0.0, depart=6.0, energy_initial_kwh=35.0, energy_target_kwh=50.0, capacity_kwh=40.0),
            # unreachable target: flat out in both plugged steps 2, 3
            dict(arrive=2.0, depart=4.0, energy_initial_kwh=0.0, energy_target_kwh=90.0),
            # already above its target: nothing
            dict(arrive=0.0, depart=6.0, energy_initial_kwh=50.0, energy_target_kwh=30.0, p_discharge_max_kw=10.0),
        ],
        n_steps=6,
    )
    out = solve_uncontrolled(problem, np.full(6, 123.0))
    expected = np.zeros((4, 6))
    expected[0, 1:4] = [10.0, 10.0, 2.0 / 0.9]  # 10 -> 19 -> 28 -> 30 kWh
    expected[1, 0] = 5.0
    expected[2, 2:4] = 10.0
    np.testing.assert_allclose(out.pc, expected, atol=1e-12)
    assert np.all(out.pd == 0)
    assert (out.status, out.message) == ("feasible", "")
    assert_feasible(problem, out)
    # the reference is ignored, also when absent
    np.testing.assert_array_equal(solve_uncontrolled(problem).pc, out.pc)


def test_edf_tracks_a_reachable_reference_exactly():
    problem = make_problem(
        [
            dict(arrive=0, depart=4, energy_target_kwh=20.0),  # leaves last, needs 20 kWh
            dict(arrive=0, depart=2, energy_target_kwh=5.0),  # leaves first, needs 5 kWh
        ],
        n_steps=4,
    )
    p_ref = np.array([5.0, 5.0, 10.0, 10.0])
    out = solve_edf(problem, p_ref)
    assert_feasible(problem, out)
    assert sse(out, p_ref) == pytest.approx(0.0, abs=1e-18)
    # the earliest departure gets the extra charge first (even beyond its need), the other charges when it must
    np.testing.assert_allclose(out.pc, [[0, 0, 10, 10], [5, 5, 0, 0]], atol=1e-12)


def test_edf_discharges_v2g_to_follow_a_negative_reference():
    problem = make_problem(
        [dict(arrive=0, depart=4, energy_initial_kwh=10.0, energy_target_kwh=10.0, p_discharge_max_kw=5.0)],
        n_steps=4,
    )
    p_ref = np.array([-5.0, 5.0, -5.0, 5.0])
    for solve in (solve_edf, solve_round_robin):
        out = solve(problem, p_ref)
        assert_feasible(problem, out)
        np.testing.assert_allclose(out.pc - out.pd, [p_ref], atol=1e-12)


def test_edf_must_charge_overrides_the_reference():
    # needs 30 kWh in 3 steps at 10 kW: must charge flat out, whatever the reference says
    problem = make_problem([dict(arrive=0, depart=3, energy_target_kwh=30.0, p_discharge_max_kw=10.0)], n_steps=3)
    for solve in (solve_edf, solve_round_robin):
        out = solve(problem, np.array([-10.0, 0.0, 0.0]))
        assert_feasible(problem, out)
        np.testing.assert_allclose(out.pc, [[10.0, 10.0, 10.0]])


def test_edf_discharges_latest_departure_first():
    common = dict(energy_initial_kwh=50.0, energy_target_kwh=10.0, p_discharge_max_kw=10.0)
    problem = make_problem([dict(arrive=0, depart=2, **common), dict(arrive=0, depart=4, **common)], n_steps=4)
    out = solve_edf(problem, np.array([-15.0, 0.0, 0.0, 0.0]))
    assert_feasible(problem, out)
    np.testing.assert_allclose(out.pd[:, 0], [5.0, 10.0])


def test_round_robin_shares_in_proportion_to_headroom():
    problem = make_problem(
        [dict(arrive=0, depart=2, p_charge_max_kw=10.0, energy_target_kwh=0.0),
         dict(arrive=0, depart=2, p_charge_max_kw=5.0, energy_target_kwh=0.0),
         dict(arrive=0, depart=2, p_charge_max_kw=20.0, energy_target_kwh=0.0, capacity_kwh=2.5)],  # 2.5 kWh room
        n_steps=2,
    )
    out = solve_round_robin(problem, np.array([8.75, 100.0]))
    assert_feasible(problem, out)
    # headrooms 10, 5, 2.5 kW share 8.75 kW at half each
    np.testing.assert_allclose(out.pc[:, 0], [5.0, 2.5, 1.25])
    # then the reference is beyond every headroom: all flat out, the third up to its capacity
    np.testing.assert_allclose(out.pc[:, 1], [10.0, 5.0, 1.25])


def test_empty_and_unplugged():
    problem = make_problem([dict(arrive=5, depart=9)], n_steps=4)  # plugged after the horizon
    for solve in BASELINES:
        out = solve(problem, np.ones(4))
        assert_feasible(problem, out)
        assert not out.pc.any() and not out.pd.any()
