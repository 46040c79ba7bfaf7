"""The exact method: the spec's MIQP written out in pyomo, solved by SCIP through pyscipopt (`scip_direct`).

A readable reference formulation, for small fleets and to check the other methods against; it does not scale
(binaries per plugged EV-step). Variables exist only for plugged (EV, step) pairs:

    pc[i,t] >= 0, pd[i,t] >= 0, uc[i,t], ud[i,t] binary         (pd, ud only for EVs with Pd_max > 0)
    uc + ud <= 1,  pc <= Pc_max*uc,  pd <= Pd_max*ud
    e[i,t] = e[i,t-1] + charge_gain*pc - discharge_cost*pd,  e before the first plugged step = e0
    floor <= e <= cap,   e[i, last plugged step] >= need_end
    dev[t] = sum_i (pc - pd) - p_ref[t]                          (steps in which some EV is plugged)
    P_min[r,t] <= sum_{i in row r} (pc - pd) <= P_max[r,t]       (grid limits: finite bounds with a member plugged)
    min  sum_t dev[t]^2  (+ the constant sum of p_ref^2 over steps in which no EV is plugged)

The grid limits are at the bounds of `limits.solver_limits` (a hair inside the exact ones), so that cleaning
SCIP's tolerance dust from its answer (`make_feasible`) cannot push a row over its exact bound.

`dev` is an auxiliary free variable so that SCIP sees T squares instead of the expanded square of each step's
sum (N^2 terms per step). SCIP has no quadratic objective: pyomo's scip_direct puts the objective into an
epigraph variable and a convex quadratic constraint, which SCIP handles as a nonlinear constraint.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np

from .baselines import solve_edf, solve_round_robin
from .limits import LIMIT_TOL, solver_limits
from .problem import Problem, make_feasible
from .results import MethodOutput, tracking_sse

log = logging.getLogger(__name__)


def build_model(problem: Problem, p_ref_kw):
    """The pyomo model of the MIQP above (a ConcreteModel), with the problem's arrays as plain numbers."""
    import pyomo.environ as pyo

    p_ref = np.broadcast_to(np.asarray(p_ref_kw, dtype=float), (problem.n_steps,))
    plugged = problem.plugged
    pairs = [(int(i), int(t)) for i, t in zip(*np.nonzero(plugged))]  # EV-major, steps ascending
    v2g_pairs = [(i, t) for i, t in pairs if problem.pd_max[i] > 0]
    active_steps = [int(t) for t in np.flatnonzero(plugged.any(axis=0))]
    idle_steps = np.flatnonzero(~plugged.any(axis=0))
    pc_max, pd_max = problem.pc_max, problem.pd_max
    gain, cost = problem.charge_gain, problem.discharge_cost
    first, last = problem.first, problem.stop - 1

    m = pyo.ConcreteModel(name="bdo_miqp")
    m.P = pyo.Set(initialize=pairs, dimen=2, ordered=True)  # plugged (EV, step)
    m.PV = pyo.Set(initialize=v2g_pairs, dimen=2, ordered=True)  # plugged (EV, step) of V2G EVs
    m.S = pyo.Set(initialize=active_steps, ordered=True)  # steps in which at least one EV is plugged

    m.pc = pyo.Var(m.P, within=pyo.NonNegativeReals, bounds=lambda m, i, t: (0.0, float(pc_max[i])))
    m.uc = pyo.Var(m.P, within=pyo.Binary)
    m.pd = pyo.Var(m.PV, within=pyo.NonNegativeReals, bounds=lambda m, i, t: (0.0, float(pd_max[i])))
    m.ud = pyo.Var(m.PV, within=pyo.Binary)
    m.e = pyo.Var(m.P, bounds=lambda m, i, t: (float(problem.floor[i]), float(problem.cap[i])))
    m.dev = pyo.Var(m.S, within=pyo.Reals)

    def discharge(i, t):
        return m.pd[i, t] if (i, t) in m.PV else 0.0

    m.charge_on = pyo.Constraint(m.P, rule=lambda m, i, t: m.pc[i, t] <= float(pc_max[i]) * m.uc[i, t])
    m.discharge_on = pyo.Constraint(m.PV, rule=lambda m, i, t: m.pd[i, t] <= float(pd_max[i]) * m.ud[i, t])
    m.one_mode = pyo.Constraint(m.PV, rule=lambda m, i, t: m.uc[i, t] + m.ud[i, t] <= 1)

    def energy_rule(m, i, t):
        before = float(problem.e0[i]) if t == first[i] else m.e[i, t - 1]
        return m.e[i, t] == before + float(gain[i]) * m.pc[i, t] - float(cost[i]) * discharge(i, t)

    m.energy = pyo.Constraint(m.P, rule=energy_rule)
    departing = [int(i) for i in np.flatnonzero(problem.stop > problem.first)]
    m.departure = pyo.Constraint(
        departing, rule=lambda m, i: m.e[i, int(last[i])] >= float(problem.need_end[i])
    )

    evs_at = {t: [] for t in active_steps}
    for i, t in pairs:
        evs_at[t].append(i)

    def deviation_rule(m, t):
        net = sum(m.pc[i, t] - discharge(i, t) for i in evs_at[t])
        return m.dev[t] == net - float(p_ref[t])

    m.deviation = pyo.Constraint(m.S, rule=deviation_rule)

    limit_rows = _limit_rows(problem, evs_at)
    m.L = pyo.Set(initialize=list(limit_rows), dimen=2, ordered=True)  # (limit row, step) with a finite bound

    def limit_rule(m, r, t):
        evs, lo, hi = limit_rows[r, t]
        net = sum(m.pc[i, t] - discharge(i, t) for i in evs)
        return (lo, net, hi)

    m.limit = pyo.Constraint(m.L, rule=limit_rule)
    idle_sse = float(np.sum(p_ref[idle_steps] ** 2))
    m.sse = pyo.Objective(expr=sum(m.dev[t] ** 2 for t in m.S) + idle_sse, sense=pyo.minimize)
    return m


def _limit_rows(problem: Problem, evs_at: dict) -> dict:
    """{(r, t): (members plugged at t, P_min or None, P_max or None)} for every limit row and step with a finite
    bound and at least one member plugged (without one, nothing in the model could change the row's sum)."""
    if problem.limits is None:
        return {}
    aimed = solver_limits(problem.limits, problem)
    members = problem.limits.members.tocsr()
    out = {}
    for t, evs in evs_at.items():
        plugged = np.zeros(problem.n_evs, bool)
        plugged[evs] = True
        for r in range(problem.limits.n_rows):
            lo, hi = aimed.p_min_kw[r, t], aimed.p_max_kw[r, t]
            if not (np.isfinite(lo) or np.isfinite(hi)):
                continue
            row = members.indices[members.indptr[r]:members.indptr[r + 1]]
            row = row[plugged[row]]
            if row.size:
                out[r, t] = ([int(i) for i in row], float(lo) if np.isfinite(lo) else None,
                             float(hi) if np.isfinite(hi) else None)
    return out


def solve_exact(problem: Problem, p_ref_kw, *, time_limit_s=None, mip_gap=1e-6) -> MethodOutput:
    """The MIQP solved by SCIP: status "optimal" when SCIP proves optimality (to `mip_gap`, SCIP's relative gap),
    "time_limit" with the best solution found when `time_limit_s` runs out, and "fallback" (the uncontrolled
    dispatch, with a message saying why) when SCIP finds no solution or anything fails. Never raises.

    `lower_bound` is SCIP's dual bound on the SSE (kW^2, clipped at 0 which holds for any sum of squares);
    `mip_gap` is the proven relative gap of the returned dispatch, (SSE - bound) / SSE (0 when both are 0); SCIP's
    own stopping rule "limits/gap" divides by min(|primal|, |dual|) instead, so it is a hair stricter.
    """
    t_start = time.perf_counter()
    try:
        return _solve_exact(problem, p_ref_kw, time_limit_s, mip_gap, t_start)
    except Exception as exc:  # never raise: a feasible fallback, and say why
        log.exception("exact: SCIP solve failed")
        return _fallback(problem, p_ref_kw, f"exact failed ({type(exc).__name__}: {exc})")


def _fallback(problem: Problem, p_ref_kw, why: str) -> MethodOutput:
    """The better tracking of the EDF and round-robin baselines (the same dispatch SCIP was started from)."""
    p_ref = np.broadcast_to(np.asarray(p_ref_kw, dtype=float), (problem.n_steps,))
    name, out = _best_baseline(problem, p_ref)
    out.status = "fallback"
    out.message = f"{why}; fell back to the {name} baseline"
    return out


def _scip():
    """pyomo's direct interface to SCIP through pyscipopt (its newer solver API, whose results carry the
    termination condition, incumbent and dual bound; `pyomo.environ.SolverFactory("scip_direct")` wraps the same
    class in the legacy API). SolverFactory("scip") would need a SCIP executable, which pyscipopt does not bring."""
    from pyomo.contrib.solver.common.factory import SolverFactory

    return SolverFactory("scip_direct")


def _solve_exact(problem, p_ref_kw, time_limit_s, mip_gap, t_start) -> MethodOutput:
    from pyomo.contrib.solver.common.results import SolutionStatus, TerminationCondition as TC

    n, n_t = problem.n_evs, problem.n_steps
    p_ref = np.broadcast_to(np.asarray(p_ref_kw, dtype=float), (n_t,))
    if not problem.plugged.any():  # nothing to decide (pyomo would see an objective without variables)
        return MethodOutput(
            pc=np.zeros((n, n_t)), pd=np.zeros((n, n_t)), status="optimal",
            lower_bound=float(np.sum(p_ref**2)), mip_gap=0.0,
        )
    m = build_model(problem, p_ref)
    # Warm start: the modes (uc, ud) of the better tracking baseline, as a partial solution that SCIP's completesol
    # heuristic completes (a QP in the powers) before presolving. Only a head start for the primal side; it does
    # not change the model, and it gives a time-limited run a good incumbent early.
    _set_start_modes(m, _best_baseline(problem, p_ref)[1])
    options = {"limits/gap": float(mip_gap), "display/verblevel": 0}
    if time_limit_s is not None:
        # The limit covers the whole method: what building the model took is not left to SCIP.
        options["limits/time"] = max(float(time_limit_s) - (time.perf_counter() - t_start), 0.0)
    results = _scip().solve(
        m, load_solutions=False, raise_exception_on_nonoptimal_result=False, warmstart_discrete_vars=True,
        solver_options=options,
    )
    tc = results.termination_condition
    if results.solution_status not in (SolutionStatus.feasible, SolutionStatus.optimal):
        why = f"SCIP found no feasible solution (termination: {tc.name})"
        if tc == TC.maxTimeLimit:
            why = f"SCIP found no feasible solution within the time limit of {time_limit_s:g} s"
        return _fallback(problem, p_ref, why)
    results.solution_loader.load_vars()
    # results.objective_bound is SCIP's dual bound (getDualbound) and incumbent_objective its primal bound, both in
    # the objective's units (kW^2, the idle steps' constant included); -inf before SCIP has a bound.
    lb = _finite(results.objective_bound)

    pc = np.zeros((n, n_t))
    pd = np.zeros((n, n_t))
    for (i, t), v in m.pc.items():
        pc[i, t] = v.value or 0.0
    for (i, t), v in m.pd.items():
        pd[i, t] = v.value or 0.0
    # SCIP meets constraints only to its feasibility tolerance (1e-6, relative for large values), so the loaded
    # solution may break a bound, a departure need or charge-xor-discharge by solver dust. make_feasible only
    # clips / nets out / tops up that dust (changes ~1e-6); it is not a repair of a wrong answer.
    pc, pd = make_feasible(problem, pc, pd)
    if problem.limits is not None:
        # The margin of solver_limits covers that dust; should it not, a baseline that holds the limits is better
        # than handing out a dispatch over a grid limit.
        excess = np.abs(problem.limits.excess_kw(pc, pd)).max(initial=0.0)
        if excess > LIMIT_TOL:
            return _fallback(problem, p_ref, f"SCIP's answer is over a grid limit by {excess:.3g} kW after cleaning")

    # The gap is that of the dispatch returned (its SSE, not SCIP's epigraph value, which may undercut the true
    # square by the feasibility tolerance) over SCIP's dual bound.
    lower_bound = None if lb is None else max(lb, 0.0)
    sse = tracking_sse(pc, pd, p_ref)
    gap = None if lower_bound is None else max(sse - lower_bound, 0.0) / max(sse, 1e-12)
    if tc == TC.convergenceCriteriaSatisfied:  # SCIP's "optimal" or "gaplimit" (optimal to mip_gap)
        status, message = "optimal", ""
    elif tc == TC.maxTimeLimit:
        status = "time_limit"
        message = f"SCIP stopped at the time limit of {time_limit_s:g} s with a feasible solution"
        if gap is not None:
            message += f" (proven relative gap {gap:.3g})"
    else:
        status, message = "feasible", f"SCIP stopped ({tc.name}); the best solution found is returned"
    return MethodOutput(pc=pc, pd=pd, status=status, message=message, lower_bound=lower_bound, mip_gap=gap)


def _best_baseline(problem: Problem, p_ref: np.ndarray) -> MethodOutput:
    """(name, output) of the better tracking of EDF and round robin; both hold the grid limits of `problem` where
    the EVs can."""
    outs = [("edf", solve_edf(problem, p_ref)), ("round_robin", solve_round_robin(problem, p_ref))]
    # A rule that could not hold a limit (status "failed") only if neither could.
    return min(outs, key=lambda o: (o[1].status == "failed", tracking_sse(o[1].pc, o[1].pd, p_ref)))


def _set_start_modes(m, start: MethodOutput) -> None:
    """uc = 1 wherever the start dispatch does not discharge (charging allowed, even at zero power), ud = 1 where
    it discharges."""
    for (i, t), v in m.uc.items():
        v.set_value(0.0 if start.pd[i, t] > 0.0 else 1.0)
    for (i, t), v in m.ud.items():
        v.set_value(1.0 if start.pd[i, t] > 0.0 else 0.0)


def _finite(x):
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None
