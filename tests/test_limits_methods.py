"""Grid limits as hard constraints in the methods exact, dchr, uncontrolled, EDF and round robin (called directly,
not through dispatch()): every limit held, every other constraint too, and the limits cost tracking, not feasibility.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linprog

from evagg.simulators.baselines import solve_edf, solve_round_robin, solve_uncontrolled
from evagg.simulators.exact import solve_exact
from evagg.simulators.limits import Limits
from evagg.simulators.problem import Problem
from evagg.simulators.reference import Reference
from evagg.simulators.relaxation import solve_dchr

from sessions import assert_feasible, make_problem, sse

BASELINES = {"uncontrolled": solve_uncontrolled, "edf": solve_edf, "round_robin": solve_round_robin}
# The baselines meet a row's bound up to the float rounding of its sum only.
EXACT_KW = 1e-9


def binding_limits(problem: Problem, unlimited, bus: np.ndarray, sub_bus: np.ndarray | None = None) -> Limits:
    """Limits that the `unlimited` dispatch breaks: the fleet at 60% of its peak, the bus at 60% of its peak and at
    half its largest injection (or, where the bus never injects, drawing at least 2 kW per plugged member, up to
    10 kW), the optional sub-bus (inside the bus) at 70% of its peak."""
    net = unlimited.pc - unlimited.pd
    bus_net = net[bus].sum(axis=0)
    n_plugged = problem.plugged[bus].sum(axis=0)
    if bus_net.min() < 0:
        bus_min = np.where(n_plugged > 0, 0.5 * bus_net.min(), -np.inf)
    else:
        bus_min = np.where(n_plugged > 0, np.minimum(2.0 * n_plugged, 10.0), -np.inf)
    groups = {"bus": (bus, bus_min, 0.6 * bus_net.max())}
    if sub_bus is not None:
        groups["sub-bus"] = (sub_bus, None, 0.7 * net[sub_bus].sum(axis=0).max())
    return Limits.build(problem.n_evs, problem.n_steps, p_max_kw=0.6 * net.sum(axis=0).max(), groups=groups)


def check_limited(problem: Problem, limits: Limits, unlimited, limited, tol: float) -> None:
    """The limited answer holds every limit (to tol) and every other constraint; the unlimited one broke at least
    the fleet's P_max and one bus bound, so the limits changed the answer."""
    limited_problem = problem.with_limits(limits)
    assert_feasible(limited_problem, limited)  # all violation counts zero, needs included
    assert np.abs(limits.excess_kw(limited.pc, limited.pd)).max() <= tol
    before = limits.excess_kw(unlimited.pc, unlimited.pd)
    assert (before[0] > 1e-6).any()  # the fleet's P_max bound the unlimited answer
    assert (np.abs(before[1]) > 1e-6).any()
    assert not np.allclose(limited.pc - limited.pd, unlimited.pc - unlimited.pd)


def fleet_bound_sse(limits: Limits, p_ref: np.ndarray) -> float:
    """A lower bound on the SSE of any dispatch within the fleet row's bounds: where the reference is outside them,
    the fleet can at best sit on the nearer bound."""
    return float(np.sum(np.maximum(p_ref - limits.p_max_kw[0], 0.0) ** 2 + np.maximum(limits.p_min_kw[0] - p_ref, 0.0) ** 2))


# ---- the optimisers ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(fleet50, reference50):
    """6 EVs of fleet50 plugged most of 16 steps from 18:00 (two with V2G), reference50 scaled to their size."""
    k0, n_steps = 72, 16
    full = Problem.build(fleet50, reference50.start, reference50.step, reference50.n_steps)
    picked = np.flatnonzero(full.plugged[:, k0:k0 + n_steps].sum(axis=1) >= n_steps // 2)[:6]
    fleet = fleet50.select(picked)
    ref = Reference(reference50.start + reference50.step * k0, reference50.step,
                    reference50.p_ref_kw[k0:k0 + n_steps] * len(picked) / len(fleet50))
    return Problem.build(fleet, ref.start, ref.step, ref.n_steps), ref.p_ref_kw


def test_exact_holds_limits_at_a_tracking_cost(tiny):
    problem, p_ref = tiny
    unlimited = solve_exact(problem, p_ref, time_limit_s=20)
    limits = binding_limits(problem, unlimited, bus=np.arange(problem.n_evs) < 3)
    limited_problem = problem.with_limits(limits)
    limited = solve_exact(limited_problem, p_ref, time_limit_s=20)
    assert unlimited.status == limited.status == "optimal", (unlimited.message, limited.message)
    check_limited(problem, limits, unlimited, limited, tol=1e-6)
    # Both are optimal (to SCIP's relative gap 1e-6): the limits can only cost tracking.
    assert sse(limited, p_ref) >= sse(unlimited, p_ref) * (1 - 1e-5) - 1e-6
    assert sse(limited, p_ref) > sse(unlimited, p_ref) + 1.0  # and here they do
    assert limited.lower_bound <= sse(limited, p_ref) + 1e-6
    # The relaxation's bound with the limits (its margin taken off) is below the exact optimum with them.
    relaxed = solve_dchr(limited_problem, p_ref)
    assert relaxed.lower_bound <= sse(limited, p_ref) * (1 + 1e-6) + 1e-6
    # The fallback baselines hold the limits too.
    assert solve_edf(limited_problem, p_ref).status == solve_round_robin(limited_problem, p_ref).status == "feasible"


@pytest.mark.parametrize("signal", ["reference50", "surplus50"])
def test_dchr_holds_limits_at_a_tracking_cost(request, fleet50, signal):
    ref = request.getfixturevalue(signal)
    problem = Problem.build(fleet50, ref.start, ref.step, ref.n_steps)
    unlimited = solve_dchr(problem, ref.p_ref_kw)
    limits = binding_limits(problem, unlimited, bus=np.arange(problem.n_evs) % 3 == 0)
    limited = solve_dchr(problem.with_limits(limits), ref.p_ref_kw)
    check_limited(problem, limits, unlimited, limited, tol=1e-6)
    # The relaxation with the limits is a subset of the one without: its bound can only rise (to solver accuracy).
    assert limited.lower_bound >= unlimited.lower_bound * (1 - 1e-6) - 1e-6
    assert sse(limited, ref.p_ref_kw) >= limited.lower_bound - 1e-6
    assert sse(limited, ref.p_ref_kw) >= sse(unlimited, ref.p_ref_kw)


# ---- the baselines -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("signal", ["reference50", "surplus50"])
@pytest.mark.parametrize("name", list(BASELINES))
def test_baseline_holds_nested_limits_exactly(request, fleet50, signal, name):
    solve = BASELINES[name]
    ref = request.getfixturevalue(signal)
    problem = Problem.build(fleet50, ref.start, ref.step, ref.n_steps)
    unlimited = solve(problem, ref.p_ref_kw)
    ev = np.arange(problem.n_evs)
    limits = binding_limits(problem, unlimited, bus=ev % 3 == 0, sub_bus=ev % 6 == 0)  # fleet > bus > sub-bus
    limited = solve(problem.with_limits(limits), ref.p_ref_kw)
    assert (limited.status, limited.message) == ("feasible", "")
    check_limited(problem, limits, unlimited, limited, tol=EXACT_KW)
    # Not "at least the unlimited SSE": a greedy rule can track better when held back (the cap saves energy for
    # later steps; it does here for all three). What holds for any dispatch within the fleet's bounds:
    assert sse(limited, ref.p_ref_kw) >= fleet_bound_sse(limits, ref.p_ref_kw)


@pytest.mark.parametrize("name", list(BASELINES))
def test_limits_that_never_bind_change_nothing(fleet50, reference50, name):
    solve = BASELINES[name]
    problem = Problem.build(fleet50, reference50.start, reference50.step, reference50.n_steps)
    limits = Limits.build(problem.n_evs, problem.n_steps, p_min_kw=-1e6, p_max_kw=1e6,
                          groups={"bus": (np.arange(problem.n_evs) % 3 == 0, -1e5, 1e5)})
    unlimited = solve(problem, reference50.p_ref_kw)
    limited = solve(problem.with_limits(limits), reference50.p_ref_kw)
    np.testing.assert_array_equal(limited.pc, unlimited.pc)
    np.testing.assert_array_equal(limited.pd, unlimited.pd)


def test_fleet_cut_keeps_the_bus_minimum():
    """Fleet P_max 10 kW over three EVs that want 10 kW each; EVs 0, 1 form a bus that must draw >= 8 kW. A cut in
    proportion to everyone's charge (6.67 kW each) would take the bus to 6.67 kW: the bus's members may give only
    its slack of 12 kW."""
    problem = make_problem([dict(arrive=0, depart=4, energy_target_kwh=0.0)] * 3, n_steps=1)
    limits = Limits.build(3, 1, p_max_kw=10.0, groups={"bus": ([0, 1], 8.0, None)})
    limited = problem.with_limits(limits)
    p_ref = np.array([30.0])
    out = solve_round_robin(limited, p_ref)
    assert_feasible(limited, out)
    # rooms: bus members 6 each (their slack 12, shared), EV 2 10; the cut of 20 in proportion to them
    np.testing.assert_allclose(out.pc[:, 0], [10 - 6 * 20 / 22, 10 - 6 * 20 / 22, 10 - 10 * 20 / 22], atol=1e-12)
    # EDF cuts the EV with the most laxity first: all three have the same; ties by position, the bus's members
    # give their slack of 12 kW, then EV 2 the other 8
    out = solve_edf(limited, p_ref)
    assert_feasible(limited, out)
    np.testing.assert_allclose(out.pc[:, 0], [0.0, 8.0, 2.0], atol=1e-12)


def test_grid_first_when_a_limit_forbids_the_must_charge():
    """An EV that must charge 10 kW in each of 3 steps under a fleet P_max of 5 kW: the limit wins, the need is
    unmet (dispatch() lowers such needs before calling a method; a baseline alone shows the rule)."""
    problem = make_problem([dict(arrive=0, depart=3, energy_target_kwh=30.0)], n_steps=3)
    limited = problem.with_limits(Limits.build(1, 3, p_max_kw=5.0))
    for solve in BASELINES.values():
        out = solve(limited, np.full(3, 10.0))
        np.testing.assert_allclose(out.pc, [[5.0, 5.0, 5.0]], atol=1e-12)
        v = limited.violations(out.pc, out.pd)
        assert v["departure_need_unmet"] == 1
        assert sum(v.values()) == 1


def test_uncontrolled_discharges_only_where_a_limit_demands_injection():
    # V2G EV with 20 kWh, needing 10 at the end of step 3 (of 4, 1 h): the fleet must inject >= 5 kW in step 0
    problem = make_problem(
        [dict(arrive=0, depart=4, energy_initial_kwh=20.0, energy_target_kwh=30.0, p_discharge_max_kw=10.0)],
        n_steps=4,
    )
    limited = problem.with_limits(Limits.build(1, 4, p_max_kw=[-5.0, np.inf, np.inf, np.inf]))
    out = solve_uncontrolled(limited, None)
    assert_feasible(limited, out)
    np.testing.assert_allclose(out.pc - out.pd, [[-5.0, 10.0, 5.0, 0.0]], atol=1e-12)


# ---- random cases: exact where any dispatch can meet the limits, and a failure only where none can ---------------

def random_case(rng: np.random.Generator):
    n_steps, n = int(rng.integers(1, 13)), int(rng.integers(1, 9))
    dt_h = float(rng.choice([0.25, 0.5, 1.0]))
    sessions = []
    for _ in range(n):
        arrive = rng.uniform(-2.0, n_steps)
        cap = rng.uniform(10.0, 80.0)
        v2g = rng.random() < 0.5
        sessions.append(dict(
            arrive=arrive, depart=arrive + rng.uniform(0.5, n_steps + 3.0), capacity_kwh=cap,
            energy_initial_kwh=cap * rng.uniform(0.1, 0.9), energy_target_kwh=cap * rng.uniform(0.2, 1.1),
            energy_min_kwh=cap * rng.uniform(0.0, 0.3), p_charge_max_kw=float(rng.choice([3.7, 11.0, 22.0])),
            p_discharge_max_kw=float(rng.choice([3.7, 11.0])) if v2g else 0.0,
            eta_charge=rng.uniform(0.8, 1.0), eta_discharge=rng.uniform(0.8, 1.0),
        ))
    problem = make_problem(sessions, n_steps, dt_h)
    scale = 11.0 * n

    def bounds():
        lo = np.where(rng.random(n_steps) < 0.25, rng.uniform(-0.8, 0.05, n_steps) * scale, -np.inf)
        hi = np.where(rng.random(n_steps) < 0.5, rng.uniform(0.05, 0.9, n_steps) * scale, np.inf)
        return lo, np.maximum(hi, lo)

    # laminar rows: the fleet, a bus, a sub-bus inside it, a second bus disjoint from the first
    ev = rng.permutation(n)
    bus, sub, other = ev[: n // 2 + 1], ev[: n // 4 + 1], ev[n // 2 + 1:]
    lo, hi = bounds()
    groups = {"bus": (bus, *bounds()), "sub-bus": (sub, *bounds())}
    if other.size:
        groups["other bus"] = (other, *bounds())
    limits = Limits.build(n, n_steps, p_min_kw=lo, p_max_kw=hi, groups=groups)
    p_ref = rng.uniform(-1.0, 1.5, n_steps) * scale
    return problem.with_limits(limits), p_ref


def unreachable(problem: Problem, pc: np.ndarray, pd: np.ndarray, t: int, slack: float) -> bool:
    """No net powers within the EVs' physical ranges at step t (from the energies the dispatch left them) meet
    every row's bounds widened by `slack`: an LP feasibility check, independent of the rule's own arithmetic."""
    e = problem.e0 if t == 0 else problem.energy(pc, pd)[:, t - 1]
    on = problem.plugged[:, t]
    up = np.where(on, np.clip(np.minimum(problem.pc_max, (problem.cap - e) / problem.charge_gain), 0.0, None), 0.0)
    down = np.where(on, np.minimum(problem.pd_max, np.maximum(e - problem.floor, 0.0) / problem.discharge_cost), 0.0)
    m = problem.limits.members.toarray()
    lo, hi = problem.limits.p_min_kw[:, t] - slack, problem.limits.p_max_kw[:, t] + slack
    A = np.vstack([m[np.isfinite(hi)], -m[np.isfinite(lo)]])
    b = np.r_[hi[np.isfinite(hi)], -lo[np.isfinite(lo)]]
    res = linprog(np.zeros(problem.n_evs), A_ub=A, b_ub=b, bounds=list(zip(-down, up)), method="highs")
    return res.status == 2


def test_baselines_meet_laminar_limits_whenever_the_evs_can():
    rng = np.random.default_rng(2024)
    met = failed = 0
    for _ in range(60):
        problem, p_ref = random_case(rng)
        n_rows = problem.limits.n_rows
        for solve in BASELINES.values():
            out = solve(problem, p_ref)
            v = problem.violations(out.pc, out.pd)
            # the EVs' own constraints always hold (needs may give way to a limit: grid first)
            assert all(v[k] == 0 for k in v if k not in ("departure_need_unmet", "limit_above_max", "limit_below_min"))
            assert np.all(out.pc[~problem.plugged] == 0) and np.all(out.pd[~problem.plugged] == 0)
            assert not np.any((out.pc > 0) & (out.pd > 0))
            excess = np.abs(problem.limits.excess_kw(out.pc, out.pd))
            if out.status == "feasible":
                assert excess.max() <= EXACT_KW and out.message == ""
                met += 1
                continue
            assert out.status == "failed" and "cannot be met" in out.message
            failed += 1
            # Rows visited innermost first with the visited rows' slack kept: for laminar rows a failure means no
            # dispatch could meet the rows at that step (up to the rows' own widening of the failure, see doc).
            for t in np.flatnonzero(excess.max(axis=0) > EXACT_KW):
                assert unreachable(problem, out.pc, out.pd, t, slack=excess[:, t].max() / (4 * n_rows)), t
    assert met > 100 and failed > 5  # both sides exercised (160 and 20 with this seed)
