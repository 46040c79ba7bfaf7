"""Simple dispatch rules to compare the optimisers against: uncontrolled, earliest deadline first, round robin.

Each is a `solve(problem, p_ref_kw, *, time_limit_s=None) -> MethodOutput` like every dispatch method. All are
vectorised over EVs (loops over time steps, and within a step over grid-limit rows, only) and return an exactly
feasible dispatch: zero power outside the plugged windows, never charge and discharge at once, energy within
[floor, cap] at every plugged step, every grid limit of `problem.limits` held at every step, and every departure
need (`problem.need_end`) met at the EV's last plugged step unless a limit forbids it (grid first, see below).

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

Grid limits (all three rules). After the rule has set the step's powers, each limit row (a set of EVs with
P_min <= sum of their net power p = pc - pd <= P_max) is brought within its bounds by moving its members' net
power p, within the EV's physical range [-min(pd_max, (e - floor)/discharge_cost), min(pc_max, (cap - e)/
charge_gain)], in tiers, each used up before the next:

- row above P_max, cut p: (1) charge above the must-charge; (2) discharge down to `lo` (EDF, round robin: a V2G
  EV with spare energy discharges so that others keep their must-charge); (3) the must-charge itself; (4)
  discharge below `lo`. Uncontrolled takes (3) before (2): a plain charger is curtailed, it does not start to
  discharge unless the limit leaves it no other way. Tiers (3) and (4) break a need: the grid comes first.
- row below P_min, raise p: (1) cut discharge; (2) add charge up to the charge headroom. Neither harms a need.

The `lo` line does not foresee later limits: a tracking rule that charges only its must-charge while the reference
is low may meet a cap when the must-charges pile up, and tier (3) then breaks needs that an optimiser (or, under a
cap, the uncontrolled rule, which charges early) would have met. The limits always hold.

Within a tier, EDF takes the cut from the EVs with the most laxity first (steps left minus the steps of flat-out
charging the need still takes) and raises the least-laxity EVs first; round robin and uncontrolled share the move
in proportion to each member's room in the tier (a DSO curtailment).

Nested and overlapping rows: the rows are visited innermost first (fewest members first), and a row's move never
takes a row visited before it out of its bounds: before sharing, each member's room is cut down, row by visited
row, so that the rooms of that row's members add up to at most its slack in the direction of the move (shared
within that row by the same rule). A row thus stays within its bounds once visited. For laminar rows (any two are
nested or disjoint, e.g. buses inside feeders inside the fleet) this meets every row whenever the step's physical
ranges allow it: a visited subtree can still move to any sum between its own bounds and what its members can
reach. A row that still cannot be met (the EVs physically cannot, or rows overlap without nesting) is reported in
the message with status "failed".
"""
from __future__ import annotations

import numpy as np

from .limits import Limits
from .problem import Problem
from .results import MethodOutput

# A row's sum may differ from its bound by float rounding of the sums only (kW).
LIMIT_EXACT_KW = 1e-9


def solve_uncontrolled(problem: Problem, p_ref_kw=None, *, time_limit_s=None) -> MethodOutput:
    """Charge flat out from the first plugged step until the EV holds its need, then stop (the last charging step
    at partial power, so the need is not overshot; never above capacity). No discharging; ignores the reference.

    The goal is the spec's departure need `problem.need` (what a plain charger does: charge to the owner's target as
    far as reachable) or `need_end` where that is higher; charging flat out towards it meets `need_end` in every
    horizon, and within a horizon that contains the departure the two are the same.

    Under grid limits each row is curtailed proportionally (see the module doc): charge above the must-charge
    first, then the must-charge; discharge only where a limit demands net injection.
    """
    n, n_t = problem.n_evs, problem.n_steps
    a = problem.charge_gain
    goal = np.minimum(np.maximum(problem.need, problem.need_end), problem.cap)
    plugged = problem.plugged
    rows = _Rows(problem.limits) if problem.limits is not None else None
    pc = np.zeros((n, n_t))
    pd = np.zeros((n, n_t))
    e = problem.e0.astype(float).copy()
    for t in range(n_t):
        on = plugged[:, t]
        want = np.divide(np.maximum(goal - e, 0.0), a, out=np.zeros(n), where=a > 0)
        p = np.where(on, np.minimum(problem.pc_max, want), 0.0)
        if rows is None:
            pc[:, t] = p
            e = e + a * p
            continue
        must, room_c, room_d, dmax, _ = _step_state(problem, t, e, on)
        cuts = (must, np.zeros(n), -room_d, -dmax)  # curtail charge, then must-charge, then (forced) discharge
        c, d = rows.hold(t, p, cuts, must + room_c, None)
        pc[:, t], pd[:, t] = c, d
        e = e + a * c - problem.discharge_cost * d
    return _output(problem, pc, pd)


def solve_edf(problem: Problem, p_ref_kw, *, time_limit_s=None) -> MethodOutput:
    """Earliest deadline first, tracking the reference greedily step by step (see the module doc).

    After the must-charge, a positive remainder is given as extra charge to EVs in order of departure, earliest
    first (ties by position). A negative remainder is taken as discharge from V2G EVs in order of departure,
    LATEST first: those have the most steps left to win the energy back, so discharging them least often forces
    must-charging later. Under grid limits the most-laxity EVs are cut first and the least-laxity EVs raised first.
    """
    return _track(problem, p_ref_kw, _share_in_order, by_laxity=True)


def solve_round_robin(problem: Problem, p_ref_kw, *, time_limit_s=None) -> MethodOutput:
    """Proportional share: after the must-charge, the remainder of the reference is shared among the plugged EVs
    in proportion to each one's headroom (charge headroom when the remainder is positive, discharge headroom when
    it is negative), so every EV gives the same fraction of its headroom. Grid limits: proportional moves too."""
    return _track(problem, p_ref_kw, _share_proportionally, by_laxity=False)


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


def _step_state(problem: Problem, t: int, e: np.ndarray, on: np.ndarray):
    """The module doc's figures at step t for energies `e` before it: (must, charge headroom above the must,
    discharge headroom down to lo, discharge down to the floor, laxity in steps); 0 for EVs not plugged."""
    a, b = problem.charge_gain, problem.discharge_cost
    pc_max, pd_max = problem.pc_max, problem.pd_max
    zeros = np.zeros(problem.n_evs)
    left = np.maximum(problem.stop - 1 - t, 0)  # plugged steps after this one
    lo = np.maximum(problem.need_end - a * pc_max * left, problem.floor)
    must = np.where(on, np.clip(np.divide(lo - e, a, out=zeros.copy(), where=a > 0), 0.0, pc_max), 0.0)
    room_c = np.where(on, np.minimum(pc_max, np.divide(problem.cap - e, a, out=zeros.copy(), where=a > 0)), 0.0)
    room_c = np.maximum(room_c - must, 0.0)
    room_d = np.where(on & (must <= 0.0), np.minimum(pd_max, np.maximum(e - lo, 0.0) / b), 0.0)
    dmax = np.where(on, np.minimum(pd_max, np.maximum(e - problem.floor, 0.0) / b), 0.0)
    # Laxity: steps to spare before flat-out charging must start (an EV that cannot charge and still needs
    # energy has none at all).
    rate = a * pc_max
    short = np.maximum(problem.need_end - e, 0.0)
    need_steps = np.divide(short, rate, out=np.where(short > 0, np.inf, 0.0), where=rate > 0)
    laxity = left + 1 - need_steps
    return must, room_c, room_d, dmax, laxity


def _track(problem: Problem, p_ref_kw, share, by_laxity: bool) -> MethodOutput:
    n, n_t = problem.n_evs, problem.n_steps
    p_ref = np.broadcast_to(np.asarray(p_ref_kw, dtype=float), (n_t,))
    a, b = problem.charge_gain, problem.discharge_cost
    plugged = problem.plugged
    rows = _Rows(problem.limits) if problem.limits is not None else None
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
        if not on.any() and rows is None:
            continue
        must, room_c, room_d, dmax, laxity = _step_state(problem, t, e, on)
        rest = p_ref[t] - must.sum()
        c = must
        d = zeros
        if rest > 0.0:
            c = must + share(rest, room_c, charge_order)
        elif rest < 0.0:
            d = share(-rest, room_d, discharge_order)
        if rows is not None:
            # Tiers of the cut (module doc): extra charge, discharge down to lo, the must-charge, any discharge.
            cuts = (must, np.where(must > 0.0, must, -room_d), np.where(must > 0.0, 0.0, -room_d), -dmax)
            c, d = rows.hold(t, c - d, cuts, must + room_c, laxity if by_laxity else None)
        pc[:, t] = c
        pd[:, t] = d
        e = e + a * c - b * d
    return _output(problem, pc, pd)


def _output(problem: Problem, pc: np.ndarray, pd: np.ndarray) -> MethodOutput:
    """The rule's answer; "failed" (and where) if a grid limit could not be met."""
    if problem.limits is None:
        return MethodOutput(pc=pc, pd=pd, status="feasible", message="")
    excess = problem.limits.excess_kw(pc, pd)
    bad = np.abs(excess) > LIMIT_EXACT_KW
    if not bad.any():
        return MethodOutput(pc=pc, pd=pd, status="feasible", message="")
    steps = np.flatnonzero(bad.any(axis=0))
    names = [problem.limits.names[r] for r in np.flatnonzero(bad.any(axis=1))]
    return MethodOutput(
        pc=pc, pd=pd, status="failed",
        message=f"grid limits {', '.join(names)} cannot be met at {len(steps)} step(s) (first: step {steps[0]}, "
                f"by up to {np.abs(excess).max():.6g} kW): the EVs' power ranges do not reach them",
    )


class _Rows:
    """The grid-limit rows of a problem, prepared for the step-by-step rule of the module doc."""

    def __init__(self, limits: Limits):
        m = limits.members.tocsr()
        self.members = [np.sort(m.indices[m.indptr[r]:m.indptr[r + 1]]) for r in range(limits.n_rows)]
        self.p_min, self.p_max = limits.p_min_kw, limits.p_max_kw
        # Innermost first: a row nested in another has fewer members, so it is visited (and protected) first.
        self.visit = np.argsort(np.diff(m.indptr), kind="stable")
        self.overlap = (m @ m.T).toarray() > 0
        self.n = m.shape[1]

    def hold(self, t: int, p: np.ndarray, cut_floors, ceiling: np.ndarray, laxity):
        """(pc, pd) at step t from the rule's net powers `p` (N,), every row brought within its bounds.

        `cut_floors`: the tiers of a cut, each the (N,) net power the tier may cut down to (non-increasing from
        tier to tier); `ceiling`: the (N,) net power a raise may reach, in two tiers (cut discharge to 0, then
        charge). `laxity`: (N,) cut the largest first and raise the smallest first; None: proportional shares."""
        p = np.asarray(p, dtype=float).copy()
        raise_tiers = (np.zeros(self.n), ceiling)
        visited = []
        for r in self.visit:
            lo, hi = self.p_min[r, t], self.p_max[r, t]
            if lo == -np.inf and hi == np.inf:
                continue
            idx = self.members[r]
            total = p[idx].sum()
            if total > hi:
                sign, amount, tiers = -1.0, total - hi, cut_floors
                rank = None if laxity is None else -laxity
            elif total < lo:
                sign, amount, tiers = 1.0, lo - total, raise_tiers
                rank = laxity
            else:
                visited.append(r)
                continue
            for level in tiers:
                room = np.zeros(self.n)
                room[idx] = np.maximum(sign * (level[idx] - p[idx]), 0.0)
                self._within_visited(t, p, room, sign, rank, [q for q in visited if self.overlap[r, q]])
                move = _share_by_rank(amount, room[idx], None if rank is None else rank[idx])
                p[idx] += sign * move
                amount -= move.sum()
                if amount <= 0.0:
                    break
            visited.append(r)
        return np.maximum(p, 0.0), np.maximum(-p, 0.0)

    def _within_visited(self, t, p, room, sign, rank, rows) -> None:
        """Cut `room` (in place) so that moving every EV by it keeps each of `rows` within its bounds: per row,
        its members' rooms add up to at most its slack in the direction `sign`, shared by the same rule."""
        for q in rows:
            bound = self.p_min[q, t] if sign < 0 else self.p_max[q, t]
            if not np.isfinite(bound):
                continue
            idx = self.members[q]
            slack = max(sign * (bound - p[idx].sum()), 0.0)
            if room[idx].sum() > slack:
                room[idx] = _share_by_rank(slack, room[idx], None if rank is None else rank[idx])


def _share_by_rank(amount: float, room: np.ndarray, rank) -> np.ndarray:
    """`amount` shared over `room`: in order of increasing `rank` (stable), or in proportion to room if None."""
    if rank is None:
        return _share_proportionally(amount, room, None)
    return _share_in_order(amount, room, np.argsort(rank, kind="stable"))
