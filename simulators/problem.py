"""The BDO problem on a time grid: per-EV plugged windows, bounds and departure needs, as arrays.

Built once from a fleet and a time grid; every solver works on these arrays. Conventions (see the spec):
step k covers [t_k, t_k + dt); an EV may draw or inject power in step k iff arrival <= t_k and
t_k + dt <= departure. Energies are at the end of each step; before its first plugged step an EV holds e0.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .fleet import Fleet
from .limits import LIMIT_TOL, Limits

# Every constraint must hold to this (kW / kWh), the spec's exactness.
FEASIBILITY_TOL = 1e-6

VIOLATION_KINDS = (
    "power_negative",
    "charge_above_max",
    "discharge_above_max",
    "power_outside_plugged_window",
    "charge_and_discharge_at_once",
    "energy_below_floor",
    "energy_above_capacity",
    "departure_need_unmet",
    "limit_above_max",
    "limit_below_min",
)


@dataclass(frozen=True, eq=False)
class Problem:
    """Arrays of the BDO problem for N sessions over T steps of dt_h hours, starting at `start` (docs/model.md).

    Units of the arrays (one value per session unless said), and the sessions table's column each comes from:

    | array | unit | from |
    |---|---|---|
    | pc_max, pd_max | kW | p_charge_max_kw, p_discharge_max_kw |
    | eta_c, eta_d | fraction | eta_charge, eta_discharge |
    | e0 | kWh | energy_initial_kwh (or the energy a receding horizon carries) |
    | floor | kWh | min(energy_min_kwh, e0) |
    | cap | kWh | capacity_kwh |
    | target | kWh | min(energy_target_kwh, capacity_kwh) |
    | need, need_end | kWh | see below |
    | first, stop | step index | arrival, departure (the plugged-step rule) |

    Windows: EV i is plugged in steps first[i] .. stop[i]-1 of this horizon (empty when first >= stop).
    `need_end[i]` is the energy it must hold at the end of its last plugged step of this horizon: its departure
    need when it leaves within the horizon, else the least energy from which charging flat out after the
    horizon still meets the need (so a shorter horizon never makes a need unreachable).
    """

    start: np.datetime64
    step: np.timedelta64
    n_steps: int
    dt_h: float
    first: np.ndarray  # (N,) int
    stop: np.ndarray  # (N,) int, exclusive
    departs_in_horizon: np.ndarray  # (N,) bool
    pc_max: np.ndarray  # (N,) kW
    pd_max: np.ndarray  # (N,) kW
    eta_c: np.ndarray
    eta_d: np.ndarray
    e0: np.ndarray  # (N,) kWh at the start of the first plugged step
    floor: np.ndarray  # (N,) min(e_min, e0)
    cap: np.ndarray
    target: np.ndarray  # (N,) min(e_target, cap): what the owner asked for, as far as the battery holds it
    need: np.ndarray  # (N,) the spec's need: the target as far as charging flat out can reach it
    need_end: np.ndarray  # (N,) see class doc
    limits: Limits | None = None  # hard bounds on the net power of sets of EVs (grid limits), see limits.py
    steps_after: np.ndarray | None = None  # (N,) plugged steps after the horizon (0 for EVs leaving within it)

    @classmethod
    def build(cls, fleet: Fleet, start, step, n_steps: int, energy_initial_kwh=None) -> "Problem":
        """The problem of `fleet` over `n_steps` steps of `step` from `start`.

        `energy_initial_kwh` overrides the sessions' initial energies (the state carried by a receding horizon).
        """
        start = np.datetime64(start, "s")
        step = np.timedelta64(step, "s")
        dt_h = step / np.timedelta64(1, "h")
        step_s = step.astype(np.int64)
        arr_s = (fleet.arrival - start).astype("timedelta64[s]").astype(np.int64)
        dep_s = (fleet.departure - start).astype("timedelta64[s]").astype(np.int64)
        first = np.maximum(-(-arr_s // step_s), 0)  # ceil: the first step starting at or after arrival
        stop_total = dep_s // step_s  # steps k with t_k + dt <= departure are k < floor(dep / dt)
        stop = np.clip(stop_total, 0, n_steps)
        first = np.minimum(first, n_steps)
        stop = np.maximum(stop, first)
        n_total = np.maximum(stop_total - first, 0)
        steps_after = np.where(first < n_steps, np.maximum(stop_total - n_steps, 0), 0)
        e0 = np.asarray(fleet.energy_initial_kwh if energy_initial_kwh is None else energy_initial_kwh, float)
        cap = fleet.capacity_kwh.astype(float)
        # A charger power below a milliwatt is no charger: as 0 kW it keeps the solvers' 1 / P finite (a subnormal
        # power made dcls and dchr fail and fall back).
        pc_max = _powers(fleet.p_charge_max_kw)
        eta_c = fleet.eta_charge.astype(float)
        step_gain = pc_max * eta_c * dt_h
        target = np.minimum(fleet.energy_target_kwh, cap)
        need = np.minimum(target, e0 + step_gain * n_total)
        departs = stop_total <= n_steps
        floor = np.minimum(fleet.energy_min_kwh, e0)
        # Beyond the horizon the EV can still charge flat out: only the rest must be in by the horizon's end.
        after = np.maximum(stop_total - stop, 0)
        need_end = np.where(departs, need, np.maximum(need - step_gain * after, floor))
        return cls(
            start=start, step=step, n_steps=int(n_steps), dt_h=float(dt_h), first=first, stop=stop,
            departs_in_horizon=departs, pc_max=pc_max, pd_max=_powers(fleet.p_discharge_max_kw),
            eta_c=eta_c, eta_d=fleet.eta_discharge.astype(float), e0=e0, floor=floor, cap=cap,
            target=target, need=need, need_end=need_end, steps_after=steps_after,
        )

    def with_limits(self, limits: Limits | None) -> "Problem":
        """This problem with hard grid `limits` on its EVs' net power (None: without limits)."""
        if limits is not None and (limits.members.shape[1] != self.n_evs or limits.p_max_kw.shape[1] != self.n_steps):
            raise ValueError(f"limits are for {limits.members.shape[1]} EVs x {limits.p_max_kw.shape[1]} steps, the "
                             f"problem has {self.n_evs} x {self.n_steps}")
        return replace(self, limits=limits)

    @property
    def n_evs(self) -> int:
        return len(self.first)

    @property
    def times(self) -> np.ndarray:
        return self.start + self.step * np.arange(self.n_steps)

    @property
    def plugged(self) -> np.ndarray:
        """(N, T) bool: EV i may draw or inject power in step t."""
        t = np.arange(self.n_steps)
        return (t >= self.first[:, None]) & (t < self.stop[:, None])

    @property
    def charge_gain(self) -> np.ndarray:
        """kWh stored per kW charged for one step: eta_c * dt."""
        return self.eta_c * self.dt_h

    @property
    def discharge_cost(self) -> np.ndarray:
        """kWh drawn from the battery per kW discharged for one step: dt / eta_d."""
        return self.dt_h / self.eta_d

    def energy(self, pc: np.ndarray, pd: np.ndarray) -> np.ndarray:
        """(N, T) energy at the end of each step from the powers, carried exactly from e0."""
        delta = self.charge_gain[:, None] * pc - self.discharge_cost[:, None] * pd
        return self.e0[:, None] + np.cumsum(delta, axis=1)

    def energy_at_departure(self, energy: np.ndarray) -> np.ndarray:
        """(N,) energy at the end of each EV's last plugged step in the horizon (e0 if never plugged)."""
        last = self.stop - 1
        has = self.stop > self.first
        out = self.e0.copy()
        out[has] = energy[np.flatnonzero(has), last[has]]
        return out

    def violations(self, pc: np.ndarray, pd: np.ndarray, tol: float = FEASIBILITY_TOL) -> dict[str, int]:
        """Counts of EV-steps (or EVs, for departures) that break each constraint of the spec by more than tol."""
        plugged = self.plugged
        energy = self.energy(pc, pd)
        e_dep = self.energy_at_departure(energy)
        has = self.stop > self.first
        return {
            "power_negative": int(np.sum((pc < -tol) | (pd < -tol))),
            "charge_above_max": int(np.sum(pc > self.pc_max[:, None] + tol)),
            "discharge_above_max": int(np.sum(pd > self.pd_max[:, None] + tol)),
            "power_outside_plugged_window": int(np.sum(~plugged & ((np.abs(pc) > tol) | (np.abs(pd) > tol)))),
            "charge_and_discharge_at_once": int(np.sum((pc > tol) & (pd > tol))),
            "energy_below_floor": int(np.sum(plugged & (energy < self.floor[:, None] - tol))),
            "energy_above_capacity": int(np.sum(plugged & (energy > self.cap[:, None] + tol))),
            "departure_need_unmet": int(np.sum(has & (e_dep < self.need_end - tol))),
            **(self.limits.violations(pc, pd, tol) if self.limits is not None
               else {"limit_above_max": 0, "limit_below_min": 0}),
        }

    def shortfall(self, energy: np.ndarray) -> np.ndarray:
        """(N,) kWh of the target (capped at capacity) not delivered at departure; 0 for EVs leaving later."""
        e_dep = self.energy_at_departure(energy)
        return np.where(self.departs_in_horizon, np.maximum(self.target - e_dep, 0.0), 0.0)

    @property
    def plugged_at_end(self) -> np.ndarray:
        """(N,) bool: the EV is plugged in in the horizon's last step and leaves after it."""
        after = np.zeros(self.n_evs, dtype=np.int64) if self.steps_after is None else self.steps_after
        return (after > 0) & (self.stop > self.first)

    def certain_shortfall(self, energy: np.ndarray) -> np.ndarray:
        """(N,) kWh of the target that EVs still plugged at the horizon's end will miss whatever comes after it:
        the target minus what charging flat out from the end until departure can still add (0 for the others).
        Counted apart from `shortfall`, which is the shortfall at departures within the horizon."""
        if self.steps_after is None:
            return np.zeros(self.n_evs)
        reach = np.minimum(self.energy_at_departure(energy) + self.charge_gain * self.pc_max * self.steps_after,
                           self.cap)
        return np.where(self.plugged_at_end, np.maximum(self.target - reach, 0.0), 0.0)


NO_POWER_KW = 1e-6


def _powers(kw) -> np.ndarray:
    kw = np.asarray(kw, dtype=float)
    return np.where(kw < NO_POWER_KW, 0.0, kw)


def make_feasible(problem: Problem, pc: np.ndarray, pd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The nearest-at-hand exactly feasible dispatch to a nearly feasible one (a solver's answer within its
    tolerances, or a rounded relaxation): clip powers to their bounds and windows, net out simultaneous charge and
    discharge, cut power where energy would leave [floor, cap], then add charging as late as headroom allows where
    a departure need is short. Under grid limits, where that broke a row's bound (netting stores energy the answer
    burned, and the capacity cut then lowers a bus's net power, measured in a feeder's re-plans), the row's members
    discharge less (below P_min) or charge less (above P_max) at that step, and the rest is repaired again: at most
    LIMIT_REPAIR_ROUNDS times. Vectorised over EVs; loops over steps only."""
    pc, pd = _within_bounds(problem, pc, pd)
    limits = problem.limits
    for _ in range(LIMIT_REPAIR_ROUNDS if limits is not None else 0):
        excess = limits.excess_kw(pc, pd)
        if not np.any(np.abs(excess) > LIMIT_TOL):
            break
        # The share of its members' discharge (charge) that each row must give up at each step, with a margin that
        # lands it strictly inside; an EV in several such rows gives up the largest share (at most all of it).
        below, above = np.maximum(-excess, 0.0), np.maximum(excess, 0.0)
        rows_d, rows_c = np.asarray(limits.members @ pd), np.asarray(limits.members @ pc)
        with np.errstate(divide="ignore", invalid="ignore"):
            cut_d = np.where(below > LIMIT_TOL, np.minimum((below + LIMIT_TOL) / rows_d, 1.0), 0.0)
            cut_c = np.where(above > LIMIT_TOL, np.minimum((above + LIMIT_TOL) / rows_c, 1.0), 0.0)
        member = limits.members.T.tocsr()
        pd = pd * (1.0 - _largest_per_ev(member, cut_d))
        pc = pc * (1.0 - _largest_per_ev(member, cut_c))
        pc, pd = _within_bounds(problem, pc, pd)
    return pc, pd


LIMIT_REPAIR_ROUNDS = 5


def _largest_per_ev(member, share: np.ndarray) -> np.ndarray:
    """(N, T): for each EV and step, the largest `share` (R, T) among the rows it is a member of (`member`: (N, R))."""
    out = np.zeros((member.shape[0], share.shape[1]))
    for r in np.flatnonzero(share.max(axis=1, initial=0.0) > 0):  # only the rows with a broken bound
        evs = member[:, r].nonzero()[0]
        out[evs] = np.maximum(out[evs], share[r][None, :])
    return out


def _within_bounds(problem: Problem, pc: np.ndarray, pd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """make_feasible without the grid limits."""
    plugged = problem.plugged
    pc = np.where(plugged, np.clip(pc, 0.0, problem.pc_max[:, None]), 0.0)
    pd = np.where(plugged, np.clip(pd, 0.0, problem.pd_max[:, None]), 0.0)
    net = pc - pd
    pc, pd = np.maximum(net, 0.0), np.maximum(-net, 0.0)
    a, b = problem.charge_gain, problem.discharge_cost
    e = problem.e0.copy()
    for t in range(problem.n_steps):
        pc[:, t] = np.minimum(pc[:, t], np.maximum(problem.cap - e, 0.0) / a)
        pd[:, t] = np.minimum(pd[:, t], np.maximum(e - problem.floor, 0.0) / b)
        e = e + a * pc[:, t] - b * pd[:, t]
    energy = problem.energy(pc, pd)
    deficit = problem.need_end - problem.energy_at_departure(energy)
    short = np.flatnonzero((deficit > 0) & (problem.stop > problem.first))
    if short.size:
        pc_s, pd_s, en_s, need_s = pc[short], pd[short], energy[short], deficit[short].copy()
        a_s, b_s = a[short], b[short]
        cap_s, pcmax_s = problem.cap[short], problem.pc_max[short]
        plug_s = plugged[short]
        for t in range(problem.n_steps - 1, -1, -1):
            if not np.any(need_s > 0):
                break
            headroom = np.min(cap_s[:, None] - en_s[:, t:], axis=1)
            # Gain at step t: first give up discharging, then charge more, never past a later step's capacity.
            gain_avail = np.where(plug_s[:, t], b_s * pd_s[:, t] + a_s * (pcmax_s - pc_s[:, t]), 0.0)
            gain = np.clip(np.minimum(np.minimum(need_s, gain_avail), headroom), 0.0, None)
            from_pd = np.minimum(gain, b_s * pd_s[:, t])
            pd_s[:, t] -= from_pd / b_s
            pc_s[:, t] += (gain - from_pd) / a_s
            en_s[:, t:] += gain[:, None]
            need_s -= gain
        pc[short], pd[short] = pc_s, pd_s
    return pc, pd
