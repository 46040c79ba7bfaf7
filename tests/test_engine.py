"""The dispatch engine: the problem's conventions, the decomposed Newton system, relaxation bounds, the integer
dispatch of dcls / dchr against the bound and against the exact MIQP, feasibility on random fleets, fallbacks."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evagg.simulators import dispatch as dispatch_module
from evagg.simulators.dcls import RelaxedQP
from evagg.simulators.dispatch import dispatch
from evagg.simulators.fleet import Fleet
from evagg.simulators.limits import Limits
from evagg.simulators.problem import Problem, make_feasible
from evagg.simulators.reference import Reference
from evagg.simulators.relaxation import CentralQP
from evagg.simulators.synthetic import synthetic_fleet, synthetic_reference

START = np.datetime64("2026-06-01T00:00:00", "s")
STEP = np.timedelta64(900, "s")


def fleet_frame(rows):
    cols = ["ev_id", "arrival", "departure", "energy_initial_kwh", "energy_target_kwh", "capacity_kwh",
            "p_charge_max_kw", "p_discharge_max_kw", "eta_charge", "eta_discharge", "energy_min_kwh"]
    return Fleet.from_frame(pd.DataFrame(rows, columns=cols))


def test_plugged_window_and_needs_follow_the_spec():
    fleet = fleet_frame([
        # arrives 00:10 -> first full step starts 00:15 (step 1); leaves 01:05 -> last full step 00:45 (step 3)
        ["a", "2026-06-01T00:10:00", "2026-06-01T01:05:00", 10, 30, 40, 4, 0, 1.0, 1.0, 0],
        # leaves after the 8-step horizon: need at the horizon end leaves room for charging flat out afterwards
        ["b", "2026-06-01T01:00:00", "2026-06-01T03:00:00", 10, 30, 40, 4, 0, 0.9, 0.9, 5],
    ])
    p = Problem.build(fleet, START, STEP, 8)
    assert p.plugged[0].tolist() == [False, True, True, True, False, False, False, False]
    # a: 3 steps x 4 kW x 0.25 h = 3 kWh reachable, so the need is 13 (target 30 unreachable)
    assert p.need[0] == pytest.approx(13.0)
    # b: plugged steps 4..11, 4 in the horizon, 4 after: need 10 + 8*0.9 = 17.2; by the horizon end 17.2 - 3.6
    assert p.need[1] == pytest.approx(17.2)
    assert p.need_end[1] == pytest.approx(13.6)
    assert p.floor[1] == 5


def test_make_feasible_repairs_caps_floors_and_needs():
    fleet = fleet_frame([["a", "2026-06-01T00:00:00", "2026-06-01T02:00:00", 38, 40, 40, 10, 10, 0.9, 0.9, 2]])
    p = Problem.build(fleet, START, STEP, 8)
    pc = np.full((1, 8), 10.0)  # would overflow the battery
    pd = np.full((1, 8), 5.0)  # and discharge at the same time
    pc2, pd2 = make_feasible(p, pc, pd)
    assert not any(p.violations(pc2, pd2).values())
    assert p.violations(pc, pd)["energy_above_capacity"] > 0


def _dense_newton_matrix(qp, W):
    """(H + delta I + G^T W G) of the relaxation, column by column from the exact operators."""
    lay = qp.lay
    idx = [(c, i) for i in range(lay.M) for c in (0, 1) if (qp.hc, qp.hd)[c][i]]

    def to_arrays(v):
        a = np.zeros((2, lay.M))
        for k, (c, i) in enumerate(idx):
            a[c, i] = v[k]
        return a

    def to_vector(a):
        return np.array([a[c][i] for (c, i) in idx])

    k, n = qp.kappa, len(idx)
    diag = 2 * 1e-7 * k + qp.delta
    K = np.zeros((n, n))
    for col in range(n):
        e = np.zeros(n)
        e[col] = 1.0
        xc, xd = to_arrays(e)
        g = (2 * k * qp._aggregate(xc, xd))[lay.gidx]
        gc, gd = qp._GT(W * qp._G(xc, xd))
        K[:, col] = to_vector(np.stack([gc + (g + diag * xc) * qp.hc, gd + (-g + diag * xd) * qp.hd]))
    return K, to_arrays, to_vector


def _six_evs(with_limits: bool):
    """Six synthetic EVs (half V2G) over a day, with grid limits if asked: a fleet limit and two overlapping bus
    groups (three limit rows)."""
    fleet = synthetic_fleet(6, seed=3, v2g_share=0.5)
    ref = synthetic_reference(fleet, seed=3)
    problem = Problem.build(fleet, ref.start, ref.step, ref.n_steps)
    if with_limits:
        groups = {"bus 1": ([0, 1, 2], None, 20.0), "bus 2": ([2, 3], -5.0, 15.0)}
        problem = problem.with_limits(Limits.build(6, ref.n_steps, p_max_kw=30.0, groups=groups))
    return problem, ref


@pytest.mark.parametrize("with_limits", [False, True])
def test_decomposed_newton_step_equals_the_dense_solve(with_limits):
    """Each EV's chain solved in closed form plus the coordinator's system (the aggregate, and the grid limit rows
    when there are some: a fleet limit and two overlapping bus groups) == one dense Newton solve."""
    problem, ref = _six_evs(with_limits)
    qp = RelaxedQP(problem, ref.p_ref_kw)
    assert qp.R == (3 if with_limits else 0)
    lay = qp.lay
    qp._set_modes(qp.can_c, qp.can_d)
    rng = np.random.default_rng(0)
    W = np.exp(rng.uniform(-6, 6, size=(5, lay.M))).ravel()
    if with_limits:
        W = np.concatenate([W, (np.exp(rng.uniform(-6, 6, size=(2, qp.R, qp.T))) * qp.c_mask).ravel()])
    qp._factor(W)
    K, to_arrays, to_vector = _dense_newton_matrix(qp, W)
    g = rng.normal(size=K.shape[0])
    expected = np.linalg.solve(K, g)
    got = to_vector(np.stack(qp._newton(*to_arrays(g))))
    assert np.max(np.abs(got - expected)) <= 1e-8 * np.max(np.abs(expected))


def test_the_chain_products_by_sums_equal_the_sweeps(monkeypatch):
    """Each EV's chain matrix G is applied by two cumulative sums where its factors cannot overflow, by sweeps
    where they could (energy rows weighted as heavily as late in a solve): both give the same G y."""
    from evagg.simulators import dcls

    fleet = synthetic_fleet(8, seed=3, v2g_share=0.5)
    ref = synthetic_reference(fleet, seed=3)
    qp = RelaxedQP(Problem.build(fleet, ref.start, ref.step, ref.n_steps), ref.p_ref_kw)
    lay = qp.lay
    qp._set_modes(qp.can_c, qp.can_d)
    rng = np.random.default_rng(0)
    W = np.exp(rng.uniform(-6, 6, size=(5, lay.M)))
    W[3:, lay.ev < 2] *= 1e12  # two EVs whose factors exp(-ell) would overflow
    y = rng.normal(size=lay.M)
    qp._factor(W.ravel())
    assert 0 < qp.g_swept.size < lay.n  # both ways in one product
    mixed = qp._apply_G(y)
    monkeypatch.setattr(dcls, "SAFE_ELL_DROP", -1.0)  # every EV by the sweeps
    qp._factor(W.ravel())
    assert qp.g_swept.size == lay.n
    swept = qp._apply_G(y)
    assert np.max(np.abs(mixed - swept)) <= 1e-12 * np.max(np.abs(swept))


@pytest.mark.parametrize("kind", ["regulation", "surplus"])
def test_decomposed_and_central_relaxations_agree(fleet50, kind):
    ref = synthetic_reference(fleet50, seed=7, kind=kind)
    problem = Problem.build(fleet50, ref.start, ref.step, ref.n_steps)
    dc = RelaxedQP(problem, ref.p_ref_kw).solve()
    central = CentralQP(problem, ref.p_ref_kw).solve()
    assert central.converged
    # both bounds are proven; they agree to the interior point's accuracy (1 kW^2 over a day is 0.01 kW^2 a step)
    assert dc.lower_bound == pytest.approx(central.lower_bound, rel=1e-3, abs=1.0)
    sse_dc = np.sum(((dc.pc - dc.pd).sum(0) - ref.p_ref_kw) ** 2)
    assert dc.lower_bound <= sse_dc * (1 + 1e-9)
    assert sse_dc == pytest.approx(central.lower_bound, rel=1e-3, abs=1.0)


def _solved_in_layout(fleet, kind):
    """fleet's relaxation solved by dcls and by the central QP, with dcls's answer in its flat layout: (reference,
    qp, solution, central solution, pc, pd, multipliers (5, M), row mask (5, M), h (5, M))."""
    ref = synthetic_reference(fleet, seed=7, kind=kind)
    problem = Problem.build(fleet, ref.start, ref.step, ref.n_steps)
    qp = RelaxedQP(problem, ref.p_ref_kw)
    sol = qp.solve()
    central = CentralQP(problem, ref.p_ref_kw).solve()
    lay = qp.lay
    pc, pd = lay.to_layout(sol.pc) * qp.hc, lay.to_layout(sol.pd) * qp.hd
    z = np.stack([lay.to_layout(m) for m in sol.multipliers])
    mask = np.stack([qp.hc, qp.hd] + [np.ones(lay.M, bool)] * 3)
    h = np.stack([np.zeros(lay.M), np.zeros(lay.M), -np.ones(lay.M), qp.lo - qp.e0, qp.e0 - qp.hi]) * mask
    return ref, qp, sol, central, pc, pd, z, mask, h


@pytest.mark.parametrize("kind", ["regulation", "surplus"])
def test_dual_bound_takes_the_best_multipliers_for_its_energy_prices(fleet50, kind):
    """The bound's multipliers for the non-negativity and hull rows are chosen, not taken from the interior point:
    however noisy those are, the bound stays the same (and proven); so does it when an energy row's lower and upper
    multipliers are both raised by the same amount (their difference, the energy price, is what it uses)."""
    ref, qp, sol, central, pc, pd, z, mask, h = _solved_in_layout(fleet50, kind)
    lay = qp.lay
    bound = qp._dual_bound(pc, pd, z.ravel(), h.ravel(), mask.ravel())
    rng = np.random.default_rng(3)
    noisy = z.copy()
    noisy[:3] *= rng.uniform(0.0, 10.0, size=(3, lay.M))
    noisy[3:] += rng.uniform(0.0, 1.0, size=lay.M)
    again = qp._dual_bound(pc, pd, noisy.ravel(), h.ravel(), mask.ravel())
    assert again == pytest.approx(bound, rel=1e-9, abs=1e-6)
    assert bound <= central.lower_bound + 1e-6 * max(central.lower_bound, 1.0) + 1.0
    assert sol.lower_bound >= bound - 1e-9 * max(abs(bound), 1.0)  # the solve kept its best iterate's bound


@pytest.mark.parametrize("kind", ["regulation", "surplus"])
def test_polished_bound_recovers_energy_prices_by_lp(fleet50, kind):
    """With energy prices that are noise (what a degenerate interior point can end with), the closed-form bound is
    weak; polished, the EVs' prices come from an exact LP and the bound is back at the relaxation's optimum (and
    still proven: never above the relaxed SSE)."""
    ref, qp, sol, central, pc, pd, z, mask, h = _solved_in_layout(fleet50, kind)
    lay = qp.lay
    z[3:] = np.random.default_rng(5).uniform(0.0, 0.05, size=(2, lay.M))  # energy prices of the order of y's
    plain = qp._dual_bound(pc, pd, z.ravel(), h.ravel(), mask.ravel())
    polished = qp._dual_bound(pc, pd, z.ravel(), h.ravel(), mask.ravel(), polish_to=0.0)
    sse = float(np.sum(((sol.pc - sol.pd).sum(0) - ref.p_ref_kw) ** 2))
    assert polished <= sse * (1 + 1e-9)
    assert polished == pytest.approx(central.lower_bound, rel=1e-3, abs=1.0)
    assert plain < polished - 0.01 * max(abs(polished), 100.0)


def test_relaxed_bound_is_the_best_of_the_iterates(fleet50, surplus50, monkeypatch):
    """Near a degenerate optimum the dual residual is noisy from one iterate to the next: the solve reports the best
    bound of all its late iterates, not the one of the iterate it returns."""
    problem = Problem.build(fleet50, surplus50.start, surplus50.step, surplus50.n_steps)
    qp = RelaxedQP(problem, surplus50.p_ref_kw)
    seen = []
    original = RelaxedQP._dual_bound

    def recording(self, *args):
        seen.append(original(self, *args))
        return seen[-1]

    monkeypatch.setattr(RelaxedQP, "_dual_bound", recording)
    sol = qp.solve()
    assert len(seen) > 1
    assert sol.lower_bound == max(seen)


@pytest.fixture(scope="module")
def example50():
    """The project's example: 50 sessions (80% V2G) and a day's signal that asks more than the fleet can give.
    Its relaxation's optimum, 3,769.8 kW^2, has no EV-step in two modes, so it is the integer optimum too."""
    from pathlib import Path

    from evagg.simulators.tables import read_reference, read_sessions

    data = Path(__file__).parent / "data"
    return read_sessions(data / "fleet50_sessions.csv"), read_reference(data / "fleet50_signal.csv")


@pytest.mark.parametrize("method", ["dcls", "dchr"])
def test_normal_regime_meets_the_bound(example50, method):
    fleet, ref = example50
    res = dispatch(fleet, ref, method)
    assert res.violations == dict.fromkeys(res.violations, 0)
    assert res.lower_bound == pytest.approx(3769.8, abs=0.5)
    assert res.lower_bound <= res.sse * (1 + 1e-9)
    # the spec's target: within 1% (or 1 kW^2 per step) of the bound where the relaxation has no conflicts
    assert res.sse <= max(res.lower_bound * 1.01, res.lower_bound + ref.n_steps)


@pytest.mark.parametrize("method", ["dcls", "dchr"])
def test_surplus_regime_is_integer_feasible_and_above_the_bound(fleet50, surplus50, method):
    res = dispatch(fleet50, surplus50, method)
    assert res.violations == dict.fromkeys(res.violations, 0)
    assert res.lower_bound <= res.sse * (1 + 1e-9)
    # the same fleet charged flat out is the obvious answer to a surplus: ours must track it at least as well
    assert res.sse <= dispatch(fleet50, surplus50, "uncontrolled").sse


def test_dcls_is_deterministic(fleet50, reference50):
    a = dispatch(fleet50, reference50, "dcls")
    b = dispatch(fleet50, reference50, "dcls")
    assert np.array_equal(a.pc, b.pc) and np.array_equal(a.pd, b.pd)


def test_a_failing_solver_falls_back_to_a_feasible_dispatch(fleet50, reference50, monkeypatch):
    def broken(problem, p_ref, *, time_limit_s=None):
        raise RuntimeError("solver exploded")

    monkeypatch.setitem(dispatch_module.METHODS, "broken", dispatch_module.Method(broken))
    res = dispatch(fleet50, reference50, "broken")
    assert res.status == "fallback"
    assert "solver exploded" in res.message
    assert not any(res.violations.values())


def test_result_table_has_the_specs_columns(fleet50, reference50):
    res = dispatch(fleet50, reference50, "dcls")
    table = res.to_frame()
    assert list(table.columns) == ["time", "ev_id", "p_charge_kw", "p_discharge_kw", "energy_kwh"]
    assert len(table) == int(res.problem.plugged.sum())
    agg = table.assign(p=table.p_charge_kw - table.p_discharge_kw).groupby("time").p.sum()
    np.testing.assert_allclose(agg.reindex(pd.to_datetime(res.problem.times), fill_value=0.0).to_numpy(),
                               res.aggregate_kw, atol=1e-9)


@st.composite
def small_fleets(draw):
    n = draw(st.integers(1, 6))
    n_steps = draw(st.integers(4, 20))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    arrive = rng.integers(0, n_steps, n)
    stay = rng.integers(1, n_steps + 4, n)
    cap = rng.uniform(10, 80, n)
    e0 = cap * rng.uniform(0, 1, n)
    pcmax = rng.choice([0.0, 3.7, 11.0, 22.0], n, p=[0.05, 0.35, 0.35, 0.25])
    pdmax = np.where(rng.uniform(size=n) < 0.6, rng.choice([3.7, 11.0], n), 0.0)
    rows = [[f"ev{i}", str(START + STEP * int(arrive[i]) + np.timedelta64(int(rng.integers(0, 900)), "s")),
             str(START + STEP * int(arrive[i] + stay[i])), e0[i], cap[i] * rng.uniform(0, 1.1),
             cap[i], pcmax[i], pdmax[i], rng.uniform(0.85, 1.0), rng.uniform(0.85, 1.0),
             min(cap[i] * rng.uniform(0, 0.3), cap[i])] for i in range(n)]
    scale = float(np.sum(pcmax) + 1)
    p_ref = np.round(rng.normal(0.3, 0.6, n_steps) * scale, 3)
    return fleet_frame(rows), Reference(START, STEP, p_ref)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_fleets())
def test_dcls_and_dchr_are_feasible_and_never_beat_the_bound(case):
    fleet, ref = case
    for method in ("dcls", "dchr"):
        res = dispatch(fleet, ref, method)
        assert res.status != "fallback", res.message
        assert res.violations == dict.fromkeys(res.violations, 0)
        if res.lower_bound is not None:
            assert res.lower_bound <= res.sse + 1e-6 * max(res.sse, 1.0)


def test_receding_horizon_replan_warm_starts_from_the_shifted_plan(fleet50, reference50):
    """Re-planning k steps later from the previous plan reaches the cold solve's optimum in fewer iterations."""
    from evagg.simulators.dcls import shifted

    first = dispatch(fleet50, reference50, "dcls")
    k, T = 30, reference50.n_steps - 30
    energy = first.energy
    e_k = np.where(first.problem.first < k, energy[:, k - 1], fleet50.energy_initial_kwh)
    later = Reference(reference50.start + reference50.step * k, reference50.step, reference50.p_ref_kw[k:])
    problem = Problem.build(fleet50, later.start, later.step, T, energy_initial_kwh=e_k)
    cold = dispatch(fleet50, later, "dcls", problem=problem)
    warm = dispatch(fleet50, later, "dcls", problem=problem, warm_start=shifted(first.relaxed, k, T))
    assert not any(warm.violations.values())
    assert warm.relaxed.iterations < cold.relaxed.iterations
    # both bounds are proven, so each lies below both answers; and the two answers are of the same quality in the
    # spec's terms (1%, or 1 kW^2 a step): the two runs may stop at different points and integer plans
    assert max(warm.lower_bound, cold.lower_bound) <= min(warm.sse, cold.sse) * (1 + 1e-9)
    assert warm.sse == pytest.approx(cold.sse, rel=1e-2, abs=float(T))


def test_a_crashing_qp_worker_becomes_a_reported_fallback(fleet50, reference50, monkeypatch):
    """PIQP can crash the process on very large fleets; there dchr runs it in a worker whose death is reported."""
    import os
    import signal

    from evagg.simulators import relaxation

    monkeypatch.setattr(relaxation, "IN_PROCESS_MAX_EV_STEPS", 0)
    monkeypatch.setattr(relaxation.CentralQP, "solve", lambda *a, **k: os.kill(os.getpid(), signal.SIGSEGV))
    res = dispatch(fleet50, reference50, "dchr")
    assert res.status == "fallback"
    assert "PIQP worker died" in res.message and "solved by dcls instead" in res.message
    assert not any(res.violations.values())
    assert res.sse == pytest.approx(dispatch(fleet50, reference50, "dcls").sse)


def test_the_qp_worker_gives_the_in_process_answer(fleet50, surplus50, monkeypatch):
    from evagg.simulators import relaxation

    here = dispatch(fleet50, surplus50, "dchr")
    monkeypatch.setattr(relaxation, "IN_PROCESS_MAX_EV_STEPS", 0)
    there = dispatch(fleet50, surplus50, "dchr")
    assert np.array_equal(here.pc, there.pc) and np.array_equal(here.pd, there.pd)


@pytest.mark.parametrize("kind", ["regulation", "surplus"])
def test_dcls_and_dchr_agree_with_the_exact_miqp_on_a_small_fleet(kind):
    """Against SCIP on the MIQP itself (its best answer within 60 s): the same optimum in the normal regime, and
    within 1% where the surplus makes the relaxation cycle energy (the integer optimum lies above its bound)."""
    fleet = synthetic_fleet(8, seed=4, start="2026-06-01T00:00:00", v2g_share=0.8)
    full = synthetic_reference(fleet, seed=4, kind=kind)
    k0, T = 32, 40  # 08:00 to 18:00, across the midday surplus block
    ref = Reference(full.start + full.step * k0, full.step, full.p_ref_kw[k0:k0 + T])
    exact = dispatch(fleet, ref, "exact", time_limit_s=60)
    assert exact.status in ("optimal", "time_limit"), exact.message
    for method in ("dcls", "dchr"):
        res = dispatch(fleet, ref, method)
        assert not any(res.violations.values())
        assert res.lower_bound <= exact.sse * (1 + 1e-9)
        if kind == "regulation":
            assert res.sse == pytest.approx(exact.sse, rel=1e-3, abs=float(T))
        else:
            assert res.sse <= exact.sse * 1.01


def test_the_hull_bound_is_weak_where_full_evs_must_burn_energy():
    """Two full V2G EVs (11 kW, 50 kWh, eta 0.94, 2 h in 15-min steps) asked to absorb 10 kW can only burn energy
    by discharging and charging in turn; the relaxation lets a full EV charge and discharge in the same step. The
    MIQP's optimum (SCIP, proven) lies 24 % above the relaxation's proven bound: what docs/model.md ("Where the
    relaxation is weak") says a gap_to_bound of several percent can mean. dcls's answer is feasible, between the two,
    and within 10 % of the MIQP's optimum (measured 7.5 %: its rounding has both EVs cycle in step, where the MIQP
    has them out of step, one charging while the other discharges). The dispatch's message says the bound is weak.
    """
    from sessions import make_fleet

    ev = dict(arrive=0, depart=8, energy_initial_kwh=50.0, energy_target_kwh=45.0, capacity_kwh=50.0,
              energy_min_kwh=5.0, p_charge_max_kw=11.0, p_discharge_max_kw=11.0, eta_charge=0.94, eta_discharge=0.94)
    fleet = make_fleet([ev, ev], dt_h=0.25)
    ref = Reference(fleet.arrival[0], np.timedelta64(900, "s"), np.full(8, 10.0))
    exact = dispatch(fleet, ref, "exact", time_limit_s=60)
    assert exact.status == "optimal", exact.message
    res = dispatch(fleet, ref, "dcls")
    assert not any(res.violations.values())
    assert res.lower_bound <= exact.lower_bound * (1 + 1e-9) and exact.sse > 1.2 * res.lower_bound
    assert exact.sse * (1 - 1e-6) <= res.sse <= 1.1 * exact.sse
    # ... and the dispatch says so, where its gap is over the 1 % the method states
    assert res.gap_to_bound > 0.01 and "the proven bound is weak here" in res.message
    # nothing of the kind where the EVs have room to charge: the same EVs arriving half full
    res = dispatch(make_fleet([dict(ev, energy_initial_kwh=25.0)] * 2, dt_h=0.25), ref, "dcls")
    assert not any(res.violations.values()) and "weak" not in res.message


@pytest.mark.parametrize("v2g_share", [0.5, 1.0])
def test_an_integer_dispatch_takes_at_most_three_relaxed_solves(v2g_share):
    """A PV surplus makes the relaxation burn energy by charging and discharging at once on most EV-steps; the
    dithered mode fixing makes it integer-feasible in at most 3 relaxed solves, within 1% of the proven bound."""
    fleet = synthetic_fleet(60, seed=3, v2g_share=v2g_share)
    ref = synthetic_reference(fleet, seed=3, kind="surplus")
    first = RelaxedQP(Problem.build(fleet, ref.start, ref.step, ref.n_steps), ref.p_ref_kw).solve()
    assert np.sum((first.pc > 1e-3) & (first.pd > 1e-3)) > 100  # the case this is about: many EV-steps in two modes
    res = dispatch(fleet, ref, "dcls")
    assert not any(res.violations.values())
    assert 2 <= res.relaxed_solves <= 3
    assert res.lower_bound <= res.sse
    if v2g_share == 0.5:  # measured +0.3%; with every EV V2G this small fleet lands at +2% (a known limitation)
        assert res.gap_to_bound <= 0.01


def test_a_reference_followed_exactly_has_a_bound_of_zero_and_no_absurd_gap():
    """Where the fleet can follow the reference (SSE about 0), the proven bound is never below 0 (a sum of squares)
    and the gap is measured against a scale of the reference, not against a bound of about 0."""
    fleet = synthetic_fleet(40, seed=2, v2g_share=0.8)
    # a reference some feasible dispatch meets exactly: the uncontrolled fleet's own power
    ref = Reference(START, STEP, dispatch(fleet, Reference(START, STEP, np.zeros(96)), "uncontrolled").aggregate_kw)
    res = dispatch(fleet, ref, "dcls")
    assert not any(res.violations.values())
    assert res.lower_bound >= 0.0
    assert res.sse < 1e-3 * float(ref.p_ref_kw @ ref.p_ref_kw)
    assert 0.0 <= res.gap_to_bound < 1.0


def test_the_repair_keeps_grid_limits_that_netting_would_break():
    """Netting an EV-step that charges and discharges at once stores the energy it burned; where that EV is nearly
    full, the capacity cut lowers its bus's net power, and a bus that may not export (P_min = 0) would then export
    through a neighbour's discharge: the repair makes that neighbour discharge less."""
    fleet = fleet_frame([
        ["a", "2026-06-01T00:00:00", "2026-06-01T01:00:00", 39.9, 0, 40, 10, 10, 0.9, 0.9, 0],
        ["b", "2026-06-01T00:00:00", "2026-06-01T01:00:00", 20.0, 0, 40, 10, 10, 0.9, 0.9, 0],
    ])
    plain = Problem.build(fleet, START, STEP, 4)
    limits = Limits.build(2, 4, groups={"bus 1": (np.array([True, True]), 0.0, None)})
    limited = plain.with_limits(limits)
    pc = np.array([[10.0, 0, 0, 0], [0, 0, 0, 0]])
    pd = np.array([[9.0, 0, 0, 0], [0.5, 0, 0, 0]])  # bus net +0.5 kW: within P_min = 0
    assert limits.excess_kw(pc, pd).min() >= 0
    assert limits.excess_kw(*make_feasible(plain, pc, pd)).min() < 0  # the repair that ignores the limits breaks it
    pc2, pd2 = make_feasible(limited, pc, pd)
    assert not any(limited.violations(pc2, pd2).values())
    assert pd2[1, 0] > 0  # b still discharges, as little less as the limit asks


def test_a_receding_horizon_judges_the_mode_fixing_on_the_applied_step():
    """Only the plan's first step is applied; netting that loses tracking at a later step only (an EV nearly full
    there) needs no mode-fixing round when the plan is judged on its applied step, and one otherwise."""
    from evagg.simulators.integer import cut_and_fix
    from evagg.simulators.results import RelaxedSolution

    fleet = fleet_frame([["a", "2026-06-01T00:00:00", "2026-06-01T01:00:00", 39.0, 0, 40, 10, 10, 0.9, 0.9, 0]])
    problem = Problem.build(fleet, START, STEP, 4)
    # relaxed: charge 4 kW at step 0 (0.9 kWh, to 39.9 kWh), then burn at step 1: 10 in, 9 out (net +1 kW)
    answer = RelaxedSolution(pc=np.array([[4.0, 10.0, 0, 0]]), pd=np.array([[0, 9.0, 0, 0]]), lower_bound=0.0,
                             iterations=1, converged=True)
    p_ref = np.array([4.0, 1.0, 0, 0])
    calls = []

    def solve_relaxed(has_c, has_d, start=None):
        calls.append((has_c, has_d))
        return answer

    pc, pd, _, solves, _ = cut_and_fix(problem, p_ref, solve_relaxed, applied_steps=1)
    assert solves == 1 and len(calls) == 1
    assert pc[0, 0] - pd[0, 0] == pytest.approx(4.0)  # the applied step follows the reference
    assert not any(problem.violations(pc, pd).values())
    calls.clear()
    _, _, _, solves_whole, _ = cut_and_fix(problem, p_ref, solve_relaxed)
    assert solves_whole > 1 and len(calls) == solves_whole  # judged on the whole plan, netting step 1 costs a round


def _mode_fixing_rounds(short_kw: float, bound: float):
    """Two EVs, a relaxed answer whose netting overflows one of them, and a conflict-free answer after the first
    rounding that is `short_kw` short at the last step: (its tracking SSE, relaxed solves, feasible?)."""
    from evagg.simulators import integer
    from evagg.simulators.results import RelaxedSolution, tracking_sse

    fleet = fleet_frame([
        ["a", "2026-06-01T00:00:00", "2026-06-01T01:00:00", 80.0, 0, 100, 500, 500, 0.9, 0.9, 0],
        ["b", "2026-06-01T00:00:00", "2026-06-01T01:00:00", 500.0, 0, 1000, 1000, 1000, 0.9, 0.9, 0],
    ])
    problem = Problem.build(fleet, START, STEP, 4)
    p_ref = np.array([50.0, 200.0, 200.0, 200.0])
    # relaxed: a burns at step 0 (500 in, 450 out), so netting it stores 11 kWh and a overflows at step 1
    first = RelaxedSolution(pc=np.array([[500.0, 50, 0, 0], [0, 150, 200, 200]]),
                            pd=np.array([[450.0, 0, 0, 0], [0, 0, 0, 0]]), lower_bound=bound, iterations=1,
                            converged=True)
    second = RelaxedSolution(pc=np.array([[50.0, 0, 0, 0], [0, 200, 200, 200 - short_kw]]), pd=np.zeros((2, 4)),
                             lower_bound=bound, iterations=1, converged=True)
    calls = []

    def solve_relaxed(has_c, has_d, start=None):
        calls.append(has_c)
        return first if len(calls) == 1 else second

    pc, pd, _, solves, _ = integer.cut_and_fix(problem, p_ref, solve_relaxed)
    assert solves == len(calls)
    return tracking_sse(pc, pd, p_ref), solves, not any(problem.violations(pc, pd).values()), p_ref


def test_mode_fixing_stops_once_the_error_is_negligible_against_the_reference(monkeypatch):
    """Where the bound is about 0, a dispatch off by 0.2 kW on a ~350 kW reference is as close as the relaxed
    solves get: no further mode-fixing round is run for it (it cost a third relaxed solve before)."""
    from evagg.simulators import integer

    sse, solves, feasible, p_ref = _mode_fixing_rounds(0.2, 0.0)
    assert integer.CLOSE_TO_BOUND < sse <= integer.NEGLIGIBLE_SSE * p_ref @ p_ref  # not close by the bound's test
    assert sse == pytest.approx(0.2 ** 2) and feasible
    assert solves == 2
    monkeypatch.setattr(integer, "NEGLIGIBLE_SSE", 0.0)
    assert _mode_fixing_rounds(0.2, 0.0)[1] == 3  # without the test a round that cannot gain anything runs


def test_mode_fixing_stops_within_the_stated_accuracy_of_the_bound():
    """A rounding within 1% of the proven bound (here 0.5%) ends the mode fixing: the second rounding never
    beat the first on the case suite and cost a third of the time."""
    from evagg.simulators import integer

    sse, solves, feasible, p_ref = _mode_fixing_rounds(2.0, 4.0 / 1.005)
    assert sse == pytest.approx(4.0) and feasible and sse > integer.NEGLIGIBLE_SSE * p_ref @ p_ref
    assert solves == 2
    assert _mode_fixing_rounds(2.0, 4.0 / 1.02)[1] == 3  # 2% above it: the other rounding is tried


@pytest.mark.parametrize("kind", ["regulation", "surplus"])
def test_rounding_solves_stop_looser_but_stay_close(fleet50, kind, monkeypatch):
    """A relaxation with fixed modes (a rounding's solve) stops at ROUNDING_ACCURACY, not ACCURATE_ENOUGH: it bounds
    nothing and its answer is netted and repaired. Its tracking SSE stays within 1e-3 (relative to the reference's
    square sum) of the same solve run to the full accuracy, and it still reports convergence."""
    from evagg.simulators import dcls
    from evagg.simulators.integer import _dithered_charge
    from evagg.simulators.results import tracking_sse

    ref = synthetic_reference(fleet50, seed=7, kind=kind)
    problem = Problem.build(fleet50, ref.start, ref.step, ref.n_steps)
    qp = RelaxedQP(problem, ref.p_ref_kw)
    first = qp.solve()
    conflict = (first.pc > 1e-4) & (first.pd > 1e-4)
    assert conflict.any()  # the premise: a rounding has modes to fix
    charge = _dithered_charge(problem, first, conflict, qp.can_c, "spread")
    has_c, has_d = qp.can_c & ~(conflict & ~charge), qp.can_d & ~(conflict & charge)

    loose = qp.solve(has_c, has_d, start=first)
    monkeypatch.setattr(dcls, "ROUNDING_ACCURACY", dcls.ACCURATE_ENOUGH)
    strict = qp.solve(has_c, has_d, start=first)
    assert loose.converged and strict.converged
    assert loose.iterations <= strict.iterations
    sse_loose = tracking_sse(loose.pc, loose.pd, ref.p_ref_kw)
    sse_strict = tracking_sse(strict.pc, strict.pd, ref.p_ref_kw)
    assert abs(sse_loose - sse_strict) <= 1e-3 * float(ref.p_ref_kw @ ref.p_ref_kw)


@pytest.mark.parametrize("limited", [False, True])
def test_small_limited_coordinators_factor_on_one_blas_thread(limited, monkeypatch):
    """Under grid limits the coordinator is (1 + R) T rows wide; up to dcls.ONE_BLAS_THREAD_ROWS BLAS runs on one
    thread while it is solved (on 2 cores the threads' hand-offs doubled a grid-limited co-simulation's re-plans),
    and the setting is restored afterwards; unlimited fleets keep whatever the process has."""
    from threadpoolctl import threadpool_info

    from evagg.simulators import dcls

    def blas_threads():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    before = blas_threads()
    problem, ref = _six_evs(limited)
    seen = []
    factor = dcls.RelaxedQP._factor

    def recording(self, W):
        seen.append(blas_threads())
        return factor(self, W)

    monkeypatch.setattr(dcls.RelaxedQP, "_factor", recording)
    qp = dcls.RelaxedQP(problem, ref.p_ref_kw)
    assert (1 + qp.R) * qp.T <= dcls.ONE_BLAS_THREAD_ROWS  # the premise: a small coordinator
    sol = qp.solve()
    assert sol.converged and seen
    assert all(threads == ([1] * len(before) if limited else before) for threads in seen)
    assert blas_threads() == before
