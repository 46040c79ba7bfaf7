"""Grid limits in the engine: hard bounds on the net power of the fleet and of bus groups (limits.py), in dcls and
in `dispatch`, with the grid-first rule when they conflict with the EVs' needs."""
from __future__ import annotations

import numpy as np
import pytest

from evagg.simulators.dcls import RelaxedQP, solve_dcls
from evagg.simulators.dispatch import dispatch
from evagg.simulators.limits import Limits, reconcile
from evagg.simulators.problem import Problem
from evagg.simulators.synthetic import synthetic_fleet, synthetic_reference

START = "2026-06-01T00:00:00"


@pytest.fixture(scope="module")
def case():
    fleet = synthetic_fleet(40, seed=11, start=START, v2g_share=0.5)
    ref = synthetic_reference(fleet, start=START, step_s=900, n_steps=96, seed=11)
    free = dispatch(fleet, ref, "dcls")
    bus = np.arange(len(fleet)) % 4
    return fleet, ref, free, bus


def _limits(case, fleet_frac=0.6, bus_frac=0.5):
    fleet, ref, free, bus = case
    p = free.aggregate_kw
    net = free.pc - free.pd
    groups = {f"bus {b}": (bus == b, None, bus_frac * net[bus == b].sum(axis=0).max()) for b in (0, 1)}
    return Limits.build(len(fleet), ref.n_steps, p_max_kw=fleet_frac * p.max(), p_min_kw=0.5 * p.min(),
                        groups=groups)


def test_dcls_keeps_every_limit_and_pays_for_it_in_tracking(case):
    fleet, ref, free, bus = case
    limits = _limits(case)
    assert (limits.excess_kw(free.pc, free.pd) > 1e-3).any(), "the limits must bind for this test to mean anything"
    res = dispatch(fleet, ref, "dcls", limits=limits)
    assert res.violations == dict.fromkeys(res.violations, 0)
    assert np.abs(limits.excess_kw(res.pc, res.pd)).max() <= 1e-6
    assert res.needs_lowered_kwh == 0.0
    assert res.sse >= free.sse - 1e-6
    # the bound is proven for the limited problem, and the limited answer is close to it
    assert res.lower_bound <= res.sse * (1 + 1e-9)
    assert res.gap_to_bound < 0.05


def test_dcls_relaxation_with_limits_agrees_with_the_central_qp(case):
    from evagg.simulators.relaxation import CentralQP

    fleet, ref, free, bus = case
    problem = Problem.build(fleet, ref.start, ref.step, ref.n_steps).with_limits(_limits(case))
    dc = RelaxedQP(problem, ref.p_ref_kw).solve()
    central = CentralQP(problem, ref.p_ref_kw).solve()
    assert dc.converged and central.converged
    assert dc.lower_bound == pytest.approx(central.lower_bound, rel=1e-3, abs=1.0)


def test_limits_that_leave_needs_out_of_reach_lower_them_as_little_as_possible(case):
    """Grid first: a fleet limit far below what the EVs need; every method keeps it, the optimiser gives up the
    least need (the reconciling LP's), the rules give up more, and everything is said."""
    fleet, ref, free, bus = case
    limits = Limits.build(len(fleet), ref.n_steps, p_max_kw=0.1 * free.aggregate_kw.max())
    res = dispatch(fleet, ref, "dcls", limits=limits)
    assert res.violations == dict.fromkeys(res.violations, 0)
    assert res.aggregate_kw.max() <= 0.1 * free.aggregate_kw.max() + 1e-6
    assert res.needs_lowered_kwh > 1.0
    assert "grid first" in res.message
    rule = dispatch(fleet, ref, "uncontrolled", limits=limits)
    assert rule.violations == dict.fromkeys(rule.violations, 0)
    assert rule.needs_lowered_kwh >= res.needs_lowered_kwh - 1e-3
    # the energy delivered is what the limit lets through: the EVs' shortfall is the need given up
    assert res.shortfall_kwh.sum() >= res.needs_lowered_kwh - 1e-3


def test_a_limit_the_fleet_cannot_meet_is_widened_and_said():
    fleet = synthetic_fleet(5, seed=2, start=START, v2g_share=0.0)
    ref = synthetic_reference(fleet, start=START, step_s=900, n_steps=96, seed=2)
    # P_min of 1,000 kW: five chargers cannot draw that
    limits = Limits.build(5, 96, p_min_kw=1000.0)
    problem, note = reconcile(Problem.build(fleet, ref.start, ref.step, ref.n_steps).with_limits(limits))
    assert "cannot be met by the fleet" in note
    res = dispatch(fleet, ref, "dcls", problem=problem)
    assert res.violations == dict.fromkeys(res.violations, 0)


def test_limits_build_rejects_bad_bounds():
    with pytest.raises(ValueError, match="P_min 5 kW is above P_max 3 kW at step 2"):
        Limits.build(3, 4, p_min_kw=[0, 0, 5, 0], p_max_kw=3)
    with pytest.raises(ValueError, match="NaN at step 1"):
        Limits.build(3, 4, p_max_kw=[1, np.nan, 1, 1])
    with pytest.raises(ValueError, match="EV positions must be in 0..2"):
        Limits.build(3, 4, groups={"bus 1": ([0, 3], None, 5.0)})
    assert Limits.build(3, 4) is None


def test_dcls_with_limits_warm_starts_from_a_shifted_plan(case):
    from evagg.simulators.dcls import shifted

    fleet, ref, free, bus = case
    limits = _limits(case)
    problem = Problem.build(fleet, ref.start, ref.step, ref.n_steps).with_limits(limits)
    cold = solve_dcls(problem, ref.p_ref_kw)
    assert cold.relaxed.limit_multipliers is not None
    warm = solve_dcls(problem, ref.p_ref_kw, start=shifted(cold.relaxed, 0, ref.n_steps))
    for out in (cold, warm):
        assert not any(problem.violations(out.pc, out.pd).values())
