"""One entry point for every dispatch method: `dispatch(fleet, reference, method=...)`.

Each method is a function `solve(problem, p_ref_kw, *, time_limit_s) -> MethodOutput`, listed in `METHODS`
with what it is (a rule or an optimiser, whether it takes a warm start). This module times it,
checks its answer against every constraint of the spec, falls back to a feasible dispatch when a solver fails,
times out or returns something infeasible (and says so), and computes the metrics.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import pandas as pd

from .baselines import solve_edf, solve_round_robin, solve_uncontrolled
from .dcls import solve_dcls
from .exact import solve_exact
from .fleet import Fleet
from .limits import Limits, reconcile, tracking_lp
from .problem import FEASIBILITY_TOL, Problem, make_feasible
from .reference import Reference
from .relaxation import solve_dchr
from .results import MethodOutput, RelaxedSolution
from .tables import json_safe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Method:
    """A dispatch method: its solve function and what kind of method it is."""

    solve: Callable[..., MethodOutput]  # solve(problem, p_ref_kw, *, time_limit_s[, start]) -> MethodOutput
    rule: bool = False  # a dispatch rule, not an optimiser: under grid limits it keeps the limits and meets the
    # needs as far as its rule then does (an optimiser first lowers the needs as little as possible, `reconcile`)
    warm_start: bool = False  # takes `start=` a relaxed answer on the problem's grid (see dcls.shifted)
    applied_steps: bool = False  # takes `applied_steps=`: judges its integer rounds on the first steps only
    description: str = ""


METHODS = {
    "dcls": Method(solve_dcls, warm_start=True, applied_steps=True,
                   description="decomposition-coordination least squares"),
    "dchr": Method(solve_dchr, applied_steps=True, description="the hull relaxation as one sparse QP (PIQP)"),
    "exact": Method(solve_exact, description="the MIQP by SCIP"),
    "uncontrolled": Method(solve_uncontrolled, rule=True, description="charge flat out on arrival"),
    "edf": Method(solve_edf, rule=True, description="earliest deadline first"),
    "round_robin": Method(solve_round_robin, rule=True, description="proportional share"),
}
DEFAULT_METHOD = "dcls"  # of `dispatch`, the aggregator, `evagg dispatch` and the scenarios


@dataclass
class DispatchResult:
    """A dispatch and its metrics. Powers (N, T) in kW, energies (N, T) in kWh at the end of each step."""

    problem: Problem
    ev_id: np.ndarray
    p_ref_kw: np.ndarray
    pc: np.ndarray
    pd: np.ndarray
    energy: np.ndarray
    method: str
    status: str
    message: str
    solve_time_s: float
    iterations: int
    lower_bound: float | None
    mip_gap: float | None
    violations: dict = field(default_factory=dict)
    relaxed: RelaxedSolution | None = None
    relaxed_solves: int = 0  # how often the relaxation was solved (first solve and mode-fixing rounds)
    needs_lowered_kwh: float = 0.0  # departure needs given up because the grid limits left them out of reach
    # Sessions with a declared departure (`Fleet.departure_declared`): the plan made with the declared departures,
    # of which this result is the execution (see `dispatch`); None where the plan used the actual departures.
    plan: "DispatchResult | None" = None
    idle_plugged_h: float = 0.0  # EV-hours plugged in after the declared departure (not planned, drawing nothing)

    @property
    def aggregate_kw(self) -> np.ndarray:
        """(T,) the fleet's net power, + = drawn from the grid."""
        return (self.pc - self.pd).sum(axis=0)

    @property
    def sse(self) -> float:
        return float(np.sum((self.aggregate_kw - self.p_ref_kw) ** 2))

    @property
    def rmse(self) -> float:
        return float(np.sqrt(self.sse / max(len(self.p_ref_kw), 1)))

    @property
    def shortfall_kwh(self) -> np.ndarray:
        return self.problem.shortfall(self.energy)

    @property
    def gap_to_bound(self) -> float | None:
        """Relative excess of the SSE over the lower bound (None where no bound was computed): (SSE - bound) /
        bound, where a bound below one millionth of the reference's own square sum counts as that much (the SSE of
        following a signal to a few watts is noise around 0, not a relative gap)."""
        if self.lower_bound is None:
            return None
        floor = 1e-6 * max(float(self.p_ref_kw @ self.p_ref_kw), 1.0)
        sse = (self.plan or self).sse  # the bound is the plan's (with declared departures: not of what happened)
        return (sse - self.lower_bound) / max(self.lower_bound, floor)

    def to_frame(self) -> pd.DataFrame:
        """The dispatch result table of the spec: one row per plugged (EV, step), in time then EV order."""
        plugged = self.problem.plugged
        t_idx, i_idx = np.nonzero(plugged.T)
        return pd.DataFrame(
            {
                "time": pd.to_datetime(self.problem.times[t_idx]),
                "ev_id": self.ev_id[i_idx],
                "p_charge_kw": self.pc[i_idx, t_idx],
                "p_discharge_kw": self.pd[i_idx, t_idx],
                "energy_kwh": self.energy[i_idx, t_idx],
            }
        )

    def summary(self) -> dict:
        """Headline figures, JSON-ready."""
        short = self.shortfall_kwh
        return {
            "method": self.method,
            "status": self.status,
            "message": self.message,
            "n_evs": int(len(self.ev_id)),
            "n_steps": int(self.problem.n_steps),
            "sse_kw2": self.sse,
            "rmse_kw": self.rmse,
            "lower_bound_kw2": self.lower_bound,
            "gap_to_bound": self.gap_to_bound,
            "mip_gap": self.mip_gap,
            "shortfall_kwh": float(short.sum()),
            "evs_with_shortfall": int(np.sum(short > 1e-6)),
            # EVs leaving after the horizon: how many, and what they will miss whatever happens after it
            "evs_plugged_at_end": int(np.sum(self.problem.plugged_at_end)),
            "certain_shortfall_kwh": float(self.problem.certain_shortfall(self.energy).sum()),
            "limit_rows": 0 if self.problem.limits is None else self.problem.limits.n_rows,
            "needs_lowered_kwh": self.needs_lowered_kwh,
            **self._departures(),
            "violations": self.violations,
            "solve_time_s": self.solve_time_s,
            "iterations": self.iterations,
        }

    def _departures(self) -> dict:
        """Which departures the plan used and what the declared ones cost (see `dispatch`)."""
        if self.plan is None:
            return {"departures": "actual"}
        early = self.problem.stop < self.plan.problem.stop
        late = self.problem.stop > self.plan.problem.stop
        return {"departures": "declared", "planned_sse_kw2": self.plan.sse,
                "sessions_leaving_before_declared": int(early.sum()),
                "sessions_leaving_after_declared": int(late.sum()),
                "shortfall_by_early_departures_kwh": float(self.shortfall_kwh[early].sum()),
                "idle_plugged_h": self.idle_plugged_h}

    def summary_json(self) -> str:
        """The summary as one JSON line: every number finite or null (never NaN / Infinity, not JSON)."""
        return json.dumps(json_safe(self.summary()), sort_keys=False, allow_nan=False)


def method_info(method: str) -> Method:
    """The registry's entry of `method`, or a ValueError naming the methods there are."""
    try:
        return METHODS[method]
    except KeyError:
        raise ValueError(f"unknown dispatch method {method!r}; choose one of {', '.join(METHODS)}") from None


def dispatch(
    fleet: Fleet,
    reference: Reference,
    method: str = DEFAULT_METHOD,
    time_limit_s: float | None = None,
    problem: Problem | None = None,
    warm_start=None,
    limits: Limits | None = None,
    applied_steps: int | None = None,
) -> DispatchResult:
    """Dispatch `fleet` to follow `reference` over the reference's whole horizon with `method`.

    Sessions with a declared departure (`fleet.departure_declared`, and no `problem` given) are planned with it and
    the plan is then carried out as the sessions really go (`_as_declared`): an EV that leaves earlier loses the
    plan's power after it left (its shortfall counts), one that stays is plugged in idle after the declared time.

    Never raises for a solver's failure: the result then holds a feasible fallback and says so in
    `status` / `message`. `problem` may be passed to reuse one already built for this fleet and time grid.
    `warm_start` (dcls only): a relaxed answer on this problem's grid, e.g. `dcls.shifted(previous.relaxed, k, T)`
    for a receding horizon re-planned k steps later; it makes the re-plan cost a fraction of a cold solve.
    `limits` (or `problem.limits`): hard grid limits on the net power of the fleet and of sets of its EVs (see
    limits.py). Where they leave departure needs out of reach, the needs give way (grid first): the result's
    `needs_lowered_kwh` and `message` say by how much.
    `applied_steps`: a receding horizon applies only the plan's first steps and re-plans the rest; dcls and dchr
    then judge their mode-fixing rounds on those steps (integer.cut_and_fix). The whole plan stays feasible.
    """
    info = method_info(method)
    if problem is None and fleet.departure_declared is not None:
        return _as_declared(fleet, reference, method, time_limit_s, warm_start, limits, applied_steps)
    if problem is None:
        problem = Problem.build(fleet, reference.start, reference.step, reference.n_steps)
    if limits is not None:
        problem = problem.with_limits(limits)
    p_ref = np.asarray(reference.p_ref_kw, dtype=float)
    t0 = time.perf_counter()
    asked = problem
    limit_note = ""
    if problem.limits is not None and not info.rule \
            and any(problem.violations(*_uncontrolled(problem)).values()):
        # The limits may conflict with the needs (a curtailed uncontrolled charger does not meet them all):
        # settle it by the grid-first rule before an optimiser runs, giving up as little need as possible.
        problem, limit_note = reconcile(problem)
    try:
        options = {"start": warm_start} if warm_start is not None and info.warm_start else {}
        if applied_steps is not None and info.applied_steps:
            options["applied_steps"] = applied_steps
        out = info.solve(problem, p_ref, time_limit_s=time_limit_s, **options)
    except Exception as exc:  # a solver must never crash the caller: fall back and say why
        log.exception("dispatch method %s failed", method)
        out = _fallback(problem, p_ref, f"{method} failed ({type(exc).__name__}: {exc})")
    if not (np.all(np.isfinite(out.pc)) and np.all(np.isfinite(out.pd))):
        out = _fallback(problem, p_ref, f"{method} returned non-finite powers")
    pc, pd = out.pc, out.pd
    violations = problem.violations(pc, pd)
    if problem.limits is not None and info.rule and violations["departure_need_unmet"] \
            and sum(violations.values()) == violations["departure_need_unmet"]:
        # A rule keeps the limits first and meets the needs as far as it then can: what it left is its shortfall.
        e_dep = problem.energy_at_departure(problem.energy(pc, pd))
        short = np.maximum(problem.need_end - e_dep, 0.0)
        problem = replace(problem, need_end=problem.need_end - short)
        limit_note = (f"under the grid limits, {method} left {short.sum():.6g} kWh of "
                      f"{int(np.sum(short > FEASIBILITY_TOL))} EV(s)' departure needs unmet (grid first)")
        violations = problem.violations(pc, pd)
    if any(violations.values()):
        bad = {k: v for k, v in violations.items() if v}
        pc, pd = make_feasible(problem, pc, pd)
        out.message = (out.message + "; " if out.message else "") + f"repaired {bad} to a feasible dispatch"
        violations = problem.violations(pc, pd)
        if any(violations.values()):  # cannot happen if make_feasible is right; never hand out an infeasible plan
            out = _fallback(problem, p_ref, f"{method} answer could not be repaired ({violations})")
            pc, pd, violations = out.pc, out.pd, problem.violations(out.pc, out.pd)
    if limit_note:
        out.message = limit_note + ("; " + out.message if out.message else "")
    elapsed = time.perf_counter() - t0
    if out.status in ("fallback", "failed", "time_limit"):
        log.warning("dispatch %s: %s", method, out.message)
    return DispatchResult(
        problem=problem, ev_id=fleet.ev_id, p_ref_kw=p_ref, pc=pc, pd=pd, energy=problem.energy(pc, pd),
        method=method, status=out.status, message=out.message, solve_time_s=elapsed, iterations=out.iterations,
        lower_bound=out.lower_bound, mip_gap=out.mip_gap, violations=violations, relaxed=out.relaxed,
        relaxed_solves=out.relaxed_solves,
        needs_lowered_kwh=float(np.sum(asked.need_end - problem.need_end)),
    )


def _as_declared(fleet: Fleet, reference: Reference, method: str, time_limit_s, warm_start, limits,
                 applied_steps) -> DispatchResult:
    """The dispatch of sessions whose drivers declared their departures: the plan that the declared times allow
    (what an aggregator knows at plug-in), carried out until each EV's actual departure. Leaving before the
    declared time cuts the plan's later steps (less power than planned: the tracking and the shortfall say what it
    cost); staying after it adds plugged steps that draw nothing (`idle_plugged_h`). The result's `problem` is the
    sessions' actual one (its table rows are the steps the EVs were plugged in), `plan` the plan itself, and
    `violations` the plan's (leaving early is the driver's doing, not a broken constraint)."""
    plan = dispatch(replace(fleet, departure=fleet.departure_declared, departure_declared=None), reference,
                    method=method, time_limit_s=time_limit_s, warm_start=warm_start, limits=limits,
                    applied_steps=applied_steps)
    actual = Problem.build(replace(fleet, departure_declared=None), reference.start, reference.step,
                           reference.n_steps)
    if plan.problem.limits is not None:
        actual = actual.with_limits(plan.problem.limits)
    on = actual.plugged
    pc, pd = np.where(on, plan.pc, 0.0), np.where(on, plan.pd, 0.0)
    idle = on & ~plan.problem.plugged
    return replace(plan, problem=actual, pc=pc, pd=pd, energy=actual.energy(pc, pd), plan=plan,
                   idle_plugged_h=float(idle.sum() * actual.dt_h))


def _uncontrolled(problem: Problem):
    out = solve_uncontrolled(problem)
    return out.pc, out.pd


def _fallback(problem: Problem, p_ref: np.ndarray, message: str) -> MethodOutput:
    """A feasible dispatch when a method failed: uncontrolled charging; under grid limits first the L1 tracking LP's
    answer (feasible by construction, and it still follows the reference: in a receding horizon, an optimiser's
    plan whose repair broke a limit at a later step would otherwise hand the applied step to uncontrolled
    charging), then uncontrolled charging curtailed by the limits."""
    if problem.limits is not None:
        lp = tracking_lp(problem, p_ref)
        if lp is not None:
            pc, pd = make_feasible(problem, *lp)
            if not any(problem.violations(pc, pd).values()):
                return MethodOutput(pc=pc, pd=pd, status="fallback",
                                    message=message + "; fell back to the L1 tracking LP within the limits")
    out = solve_uncontrolled(problem, p_ref)
    out.status, out.message = "fallback", message + "; fell back to uncontrolled"
    return out
