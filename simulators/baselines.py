"""Simple dispatch rules to compare the optimisers against: uncontrolled, earliest deadline first, round robin.

Each is a `solve(problem, p_ref_kw, *, time_limit_s=None) -> MethodOutput` like every dispatch method. All are
vectorised over EVs (loops over time steps only) and return an exactly feasible dispatch: zero power outside the
plugged windows, never charge and discharge at once, energy within [floor, cap] at every plugged step and every
departure need (`problem.need_end`) met at the EV's last plugged step.

The two tracking rules (EDF, round robin) share one step-by-step scheme. At step t, for each plugged EV holding
energy e (kWh, before the step) with r plugged steps left after this one:

- least energy after the step:  lo = max(need_end - charge_gain*pc_max*r, floor)   (charging flat out in the r
  remaining steps still reaches need_end; the "laxity zero" line)
- must-charge:        must = max(lo - e, 0) / charge_gain                (<= pc_max by induction)
- charge headroom:    min(pc_max, (cap - e) / charge_gain) - must
- discharge headroom: min(pd_max, (e - lo) / discharge_cost)             (0 for EVs that must charge, or no V2G)

Every EV first gets its must-charge; the rest of the reference (p_ref - sum must) is then handed out as extra
charge (when positive) or as discharge (when negative) up to those headrooms; the rules differ only in how.
Staying at or above `lo` after every step is what keeps every later need reachable.
"""
from __future__ import annotations

import numpy as np

from .dispatch import MethodOutput
from .problem import Problem


def solve_uncontrolled(problem: Problem, p_ref_kw=None, *, time_limit_s=None) -> MethodOutput:
    """Charge flat out from the first plugged step until the EV holds its need, then stop (the last charging step
    at partial power, so the need is not overshot; never above capacity). No discharging; ignores the reference.

    The goal is the spec's departure need `problem.need` (what a plain charger does: charge to the owner's target as
    far as reachable) or `need_end` where that is higher; charging flat out towards it meets `need_end` in every
    horizon, and within a horizon that contains the departure the two are the same.
    """
    n, n_t = problem.n_evs, problem.n_steps
    a = problem.charge_gain
    goal = np.minimum(np.maximum(problem.need, problem.need_end), problem.cap)
    plugged = problem.plugged
    pc = np.zeros((n, n_t))
    e = problem.e0.astype(float).copy()
    for t in range(n_t):
        on = plugged[:, t]
        want = np.divide(np.maximum(goal - e, 0.0), a, out=np.zeros(n), where=a > 0)
        p = np.where(on, np.minimum(problem.pc_max, want), 0.0)
        pc[:, t] = p
        e = e + a * p
    return MethodOutput(pc=pc, pd=np.zeros((n, n_t)), status="feasible", message="")


def solve_edf(problem: Problem, p_ref_kw, *, time_limit_s=None) -> MethodOutput:
    """Earliest deadline first, tracking the reference greedily step by step (see the module doc).

    After the must-charge, a positive remainder is given as extra charge to EVs in order of departure, earliest
    first (ties by position). A negative remainder is taken as discharge from V2G EVs in order of departure,
    LATEST first: those have the most steps left to win the energy back, so discharging them least often forces
    must-charging later.
    """
    return _track(problem, p_ref_kw, _share_in_order)


def solve_round_robin(problem: Problem, p_ref_kw, *, time_limit_s=None) -> MethodOutput:
    """Proportional share: after the must-charge, the remainder of the reference is shared among the plugged EVs
    in proportion to each one's headroom (charge headroom when the remainder is positive, discharge headroom when
    it is negative), so every EV gives the same fraction of its headroom."""
    return _track(problem, p_ref_kw, _share_proportionally)


def _share_in_order(amount: float, headroom: np.ndarray, order: np.ndarray) -> np.ndarray:
    """`amount` (>= 0) filled into `headroom` (>= 0) in the given order of EVs: each gets what is left, up to its
    headroom."""
    h = headroom[order]
    before = np.cumsum(h) - h
    out = np.zeros_like(headroom)
    out[order] = np.clip(amount - before, 0.0, h)
    return out


def _share_proportionally(amount: float, headroom: np.ndarray, order: np.ndarray) -> np.ndarray:
    total = headroom.sum()
    if total <= 0.0:
        return np.zeros_like(headroom)
    return headroom * min(amount / total, 1.0)


def _track(problem: Problem, p_ref_kw, share) -> MethodOutput:
    n, n_t = problem.n_evs, problem.n_steps
    p_ref = np.broadcast_to(np.asarray(p_ref_kw, dtype=float), (n_t,))
    a, b = problem.charge_gain, problem.discharge_cost
    pc_max, pd_max = problem.pc_max, problem.pd_max
    plugged = problem.plugged
    last = problem.stop - 1
    # Extra charge goes to the earliest departure first, discharge is taken from the latest first (EDF's rule;
    # round robin ignores the order). A stable sort keeps ties in EV order.
    charge_order = np.argsort(problem.stop, kind="stable")
    discharge_order = np.argsort(-problem.stop, kind="stable")
    pc = np.zeros((n, n_t))
    pd = np.zeros((n, n_t))
    e = problem.e0.astype(float).copy()
    zeros = np.zeros(n)
    for t in range(n_t):
        on = plugged[:, t]
        if not on.any():
            continue
        left = np.maximum(last - t, 0)  # plugged steps after this one
        lo = np.maximum(problem.need_end - a * pc_max * left, problem.floor)
        must = np.where(on, np.clip(np.divide(lo - e, a, out=zeros.copy(), where=a > 0), 0.0, pc_max), 0.0)
        room_c = np.where(on, np.minimum(pc_max, np.divide(problem.cap - e, a, out=zeros.copy(), where=a > 0)), 0.0)
        room_c = np.maximum(room_c - must, 0.0)
        room_d = np.where(on & (must <= 0.0), np.minimum(pd_max, np.maximum(e - lo, 0.0) / b), 0.0)
        rest = p_ref[t] - must.sum()
        c = must
        d = zeros
        if rest > 0.0:
            c = must + share(rest, room_c, charge_order)
        elif rest < 0.0:
            d = share(-rest, room_d, discharge_order)
        pc[:, t] = c
        pd[:, t] = d
        e = e + a * c - b * d
    return MethodOutput(pc=pc, pd=pd, status="feasible", message="")
