"""The exact MIQP (pyomo + SCIP): known optima of hand cases, feasibility, time limits, failures, baselines."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from evagg.simulators.baselines import solve_edf, solve_round_robin, solve_uncontrolled
from evagg.simulators.exact import solve_exact
from evagg.simulators.problem import Problem

from sessions import START, assert_feasible, make_fleet, make_problem, sse

def random_problem(seed: int, n: int, n_steps: int) -> tuple[Problem, np.ndarray]:
    """A small random fleet over n_steps of 30 min (half of it V2G) and a reference around what it can take."""
    rng = np.random.default_rng(seed)
    arrive = rng.uniform(-2, n_steps * 0.5, n)
    depart = arrive + rng.uniform(n_steps * 0.3, n_steps * 1.2, n)
    cap = rng.choice([40.0, 60.0, 80.0], n)
    pc_max = rng.choice([3.7, 7.4, 11.0], n)
    sessions = [
        dict(arrive=arrive[i], depart=depart[i], capacity_kwh=cap[i], energy_initial_kwh=cap[i] * rng.uniform(0.2, 0.6),
             energy_target_kwh=cap[i] * rng.uniform(0.6, 1.0), energy_min_kwh=0.1 * cap[i], p_charge_max_kw=pc_max[i],
             p_discharge_max_kw=pc_max[i] if i % 2 == 0 else 0.0, eta_charge=rng.uniform(0.88, 0.96),
             eta_discharge=rng.uniform(0.88, 0.96))
        for i in range(n)
    ]
    problem = make_problem(sessions, n_steps, dt_h=0.5)
    level = pc_max.sum() * 0.4
    p_ref = level * (0.6 + np.sin(np.linspace(0, 3 * np.pi, n_steps))) + rng.normal(0, 3, n_steps)
    return problem, p_ref


def test_single_ev_spreads_its_need_evenly():
    # needs 20 kWh in 4 one-hour steps, reference 0: the optimum charges 5 kW each step, SSE 4 * 25 = 100
    problem = make_problem([dict(arrive=0, depart=4)], n_steps=4)
    out = solve_exact(problem, np.zeros(4))
    assert out.status == "optimal", out.message
    assert_feasible(problem, out)
    assert sse(out, np.zeros(4)) == pytest.approx(100.0, rel=1e-6)
    np.testing.assert_allclose(out.pc, [[5.0, 5.0, 5.0, 5.0]], atol=2e-3)
    assert out.lower_bound == pytest.approx(100.0, rel=1e-5) and out.lower_bound <= 100.0 + 1e-9
    assert 0.0 <= out.mip_gap <= 1e-5


def test_v2g_ev_discharges_and_charges_back():
    # e0 = need = 10 kWh: discharge x then charge x back in steps 3/4, optimum x = 1.5: SSE 100 + 100 + 2 * 2.25
    problem = make_problem(
        [dict(arrive=0, depart=4, energy_initial_kwh=10.0, energy_target_kwh=10.0, p_discharge_max_kw=10.0)], n_steps=4
    )
    p_ref = np.array([-20.0, 20.0, -3.0, 0.0])
    out = solve_exact(problem, p_ref)
    assert out.status == "optimal", out.message
    assert_feasible(problem, out)
    assert sse(out, p_ref) == pytest.approx(204.5, rel=1e-6)
    np.testing.assert_allclose(out.pc - out.pd, [[-10.0, 10.0, -1.5, 1.5]], atol=2e-3)


def test_never_charges_and_discharges_at_once():
    # Full battery (e0 = cap = need = 10 kWh), 50 % efficient both ways, reference 10 kW twice. Charging and
    # discharging at once would draw 7.5 kW net at no energy (relaxation SSE 2 * 2.5^2 = 12.5). With one mode per
    # step: discharge x, then charge y = 4x back (0.5 y = 2 x): min (x + 10)^2 + (4x - 10)^2 at x = 30/17,
    # SSE = 42500 / 289.
    problem = make_problem(
        [dict(arrive=0, depart=2, energy_initial_kwh=10.0, energy_target_kwh=10.0, capacity_kwh=10.0,
              p_discharge_max_kw=10.0, eta_charge=0.5, eta_discharge=0.5)],
        n_steps=2,
    )
    p_ref = np.array([10.0, 10.0])
    out = solve_exact(problem, p_ref)
    assert out.status == "optimal", out.message
    assert_feasible(problem, out)
    assert not np.any((out.pc > 0) & (out.pd > 0))
    assert sse(out, p_ref) == pytest.approx(42500 / 289, rel=1e-6)
    np.testing.assert_allclose(out.pd[0], [30 / 17, 0.0], atol=1e-3)
    np.testing.assert_allclose(out.pc[0], [0.0, 120 / 17], atol=1e-3)
    assert out.lower_bound == pytest.approx(42500 / 289, rel=1e-5)


@pytest.mark.parametrize("seed, n, n_steps", [(1, 4, 16), (2, 6, 20), (3, 8, 24)])
def test_exact_is_feasible_and_beats_every_baseline(seed, n, n_steps):
    problem, p_ref = random_problem(seed, n, n_steps)
    out = solve_exact(problem, p_ref, time_limit_s=20)
    assert out.status in ("optimal", "time_limit"), out.message
    assert_feasible(problem, out)
    best = sse(out, p_ref)
    assert out.lower_bound is not None and out.lower_bound <= best * (1 + 1e-6) + 1e-6
    for solve in (solve_uncontrolled, solve_edf, solve_round_robin):
        assert best <= sse(solve(problem, p_ref), p_ref) * (1 + 1e-6) + 1e-6, solve.__name__


def test_tiny_time_limit_still_gives_a_feasible_dispatch():
    problem, p_ref = random_problem(3, 8, 24)
    out = solve_exact(problem, p_ref, time_limit_s=1e-4)
    assert out.status in ("time_limit", "fallback")
    assert out.message
    assert_feasible(problem, out)


def test_solver_failure_falls_back(monkeypatch):
    from evagg.simulators import exact

    def broken():
        raise RuntimeError("no SCIP here")

    monkeypatch.setattr(exact, "_scip", broken)
    problem, p_ref = random_problem(1, 4, 16)
    out = solve_exact(problem, p_ref)
    assert out.status == "fallback"
    assert "no SCIP here" in out.message
    assert_feasible(problem, out)
    # the better-tracking baseline, not charging flat out
    best = min((solve_edf(problem, p_ref), solve_round_robin(problem, p_ref)), key=lambda o: sse(o, p_ref))
    np.testing.assert_array_equal(out.pc, best.pc)
    assert sse(out, p_ref) <= sse(solve_uncontrolled(problem), p_ref)


def test_infeasible_model_falls_back_and_says_why():
    # a need that no dispatch can meet (built by hand; Problem.build never makes one): SCIP proves infeasibility
    problem = make_problem([dict(arrive=0, depart=2)], n_steps=2)
    problem = dataclasses.replace(problem, need_end=np.array([50.0]))
    out = solve_exact(problem, np.zeros(2))
    assert out.status == "fallback"
    assert "provenInfeasible" in out.message or "infeasible" in out.message.lower()
    np.testing.assert_allclose(out.pc, [[10.0, 10.0]])  # the baseline: flat out towards the unreachable need


def test_nobody_plugged():
    problem = make_problem([dict(arrive=5, depart=9)], n_steps=4)
    p_ref = np.array([1.0, -2.0, 0.0, 3.0])
    out = solve_exact(problem, p_ref)
    assert out.status == "optimal"
    assert not out.pc.any() and not out.pd.any()
    assert out.lower_bound == pytest.approx(14.0)


def test_exact_through_dispatch():
    from evagg.simulators.dispatch import dispatch
    from evagg.simulators.reference import Reference

    fleet = make_fleet([dict(arrive=0, depart=4), dict(arrive=1, depart=3, p_discharge_max_kw=5.0,
                                                        energy_initial_kwh=10.0, energy_target_kwh=12.0)])
    reference = Reference(START, np.timedelta64(3600, "s"), np.array([0.0, 12.0, -4.0, 4.0]))
    result = dispatch(fleet, reference, method="exact")
    assert result.status == "optimal", result.message
    assert not any(result.violations.values())
    assert result.gap_to_bound is not None and abs(result.gap_to_bound) < 1e-5
