"""Grid limits on the fleet's power: hard per-step bounds on the net power of sets of EVs.

A grid operator bounds the EV load it can take: on the whole fleet of an aggregator (P_min <= sum_i p[i,t] <=
P_max), and on the EVs behind one bus, line or transformer (a "bus group"). Every dispatch method honours them as
hard constraints (kW, + = the EVs draw power, as everywhere in the engine); `Problem.with_limits` attaches them to a
problem.

Rows: row r is a set of EVs (`members`, an (R, N) 0/1 matrix; sets may overlap or nest, e.g. a bus inside the
feeder behind a line) with a lower and an upper bound per step (-inf / +inf where there is none).

When the limits and the EVs' needs conflict (no dispatch meets both) the grid comes first: see `reconcile`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

# Every limit must hold to this (kW), as every other constraint of the spec (problem.FEASIBILITY_TOL).
LIMIT_TOL = 1e-6


@dataclass(frozen=True, eq=False)
class Limits:
    """Bounds on the net power of R sets of EVs over T steps (kW). Build with `Limits.build`."""

    names: tuple  # (R,) what each row is, e.g. "fleet", "bus 12"
    members: sp.csr_matrix  # (R, N) 1.0 where EV i counts in row r
    p_min_kw: np.ndarray  # (R, T), -inf where there is no lower bound
    p_max_kw: np.ndarray  # (R, T), +inf where there is no upper bound

    @classmethod
    def build(cls, n_evs: int, n_steps: int, p_min_kw=None, p_max_kw=None,
              groups: Mapping | None = None) -> "Limits | None":
        """Limits on the whole fleet (`p_min_kw` / `p_max_kw`: None, a number, or one per step) and on `groups`:
        {name: (members, p_min_kw, p_max_kw)} with members a bool mask (N,) or EV positions. None if no bound is
        given at all. ValueError for a NaN, a P_min above P_max, or members out of range."""
        rows, names, lo, hi = [], [], [], []

        def per_step(value, fill, what):
            if value is None:
                return np.full(n_steps, fill)
            v = np.broadcast_to(np.asarray(value, dtype=float), (n_steps,)).copy()
            if np.isnan(v).any():
                raise ValueError(f"limit {what} is NaN at step {int(np.flatnonzero(np.isnan(v))[0])}")
            return v

        def add(name, mask, p_min, p_max):
            lo_r = per_step(p_min, -np.inf, f"P_min of {name}")
            hi_r = per_step(p_max, np.inf, f"P_max of {name}")
            bad = np.flatnonzero(lo_r > hi_r + LIMIT_TOL)
            if bad.size:
                t = int(bad[0])
                raise ValueError(f"limit of {name}: P_min {lo_r[t]:g} kW is above P_max {hi_r[t]:g} kW at step {t}")
            if np.all(np.isinf(lo_r)) and np.all(np.isinf(hi_r)):
                return
            rows.append(mask)
            names.append(name)
            lo.append(lo_r)
            hi.append(hi_r)

        add("fleet", np.ones(n_evs, bool), p_min_kw, p_max_kw)
        for name, spec in (groups or {}).items():
            members, g_min, g_max = spec
            members = np.asarray(members)
            if members.dtype == bool:
                if members.shape != (n_evs,):
                    raise ValueError(f"limit {name}: a member mask needs one entry per EV ({n_evs}), got "
                                     f"{members.shape}")
                mask = members
            else:
                idx = members.astype(np.int64).ravel()
                if idx.size and (idx.min() < 0 or idx.max() >= n_evs):
                    raise ValueError(f"limit {name}: EV positions must be in 0..{n_evs - 1}")
                mask = np.zeros(n_evs, bool)
                mask[idx] = True
            add(str(name), mask, g_min, g_max)
        if not rows:
            return None
        members = sp.csr_matrix(np.vstack(rows).astype(float)) if rows else sp.csr_matrix((0, n_evs))
        return cls(names=tuple(names), members=members, p_min_kw=np.vstack(lo), p_max_kw=np.vstack(hi))

    @property
    def n_rows(self) -> int:
        return len(self.names)

    def net_kw(self, pc: np.ndarray, pd: np.ndarray) -> np.ndarray:
        """(R, T) the net power of each row's EVs."""
        return np.asarray(self.members @ (pc - pd))

    def step_rows(self, ev: np.ndarray, t: np.ndarray, n_steps: int) -> sp.csr_matrix:
        """(R * n_steps, K): row r * n_steps + s sums the EV-steps k = (ev[k], t[k]) of row r's members at step s,
        the map from a solver's plugged EV-step variables to the limited powers."""
        mk = self.members[:, ev].tocoo()
        return sp.csr_matrix((mk.data, (mk.row * n_steps + t[mk.col], mk.col)),
                             shape=(self.n_rows * n_steps, len(ev)))

    def excess_kw(self, pc: np.ndarray, pd: np.ndarray) -> np.ndarray:
        """(R, T) how far each row is above its P_max (> 0) or below its P_min (< 0); 0 within its bounds."""
        net = self.net_kw(pc, pd)
        return np.maximum(net - self.p_max_kw, 0.0) - np.maximum(self.p_min_kw - net, 0.0)

    def violations(self, pc: np.ndarray, pd: np.ndarray, tol: float = LIMIT_TOL) -> dict[str, int]:
        ex = self.excess_kw(pc, pd)
        return {"limit_above_max": int(np.sum(ex > tol)), "limit_below_min": int(np.sum(ex < -tol))}

    def select(self, index) -> "Limits":
        """The same limits over the EVs at `index` (positions or a mask), e.g. the sessions of one plan."""
        return Limits(names=self.names, members=self.members[:, index].tocsr(), p_min_kw=self.p_min_kw,
                      p_max_kw=self.p_max_kw)

    def tightened(self, margin_kw) -> "Limits":
        """The bounds moved inwards by `margin_kw` ((R,) or a number; never across each other): what a solver
        aims at so that removing its numerical dust afterwards cannot push a row over its bound."""
        m = np.broadcast_to(np.asarray(margin_kw, float).reshape(-1, 1) if np.size(margin_kw) > 1 else
                            np.asarray(margin_kw, float).reshape(()), self.p_min_kw.shape)
        mid = np.where(np.isfinite(self.p_min_kw) & np.isfinite(self.p_max_kw),
                       0.5 * (self.p_min_kw + self.p_max_kw), np.nan)
        lo, hi = self.p_min_kw + m, self.p_max_kw - m
        cross = lo > hi
        lo = np.where(cross, mid, lo)
        hi = np.where(cross, mid, hi)
        return Limits(names=self.names, members=self.members, p_min_kw=lo, p_max_kw=hi)


def _margin(limits: Limits) -> np.ndarray:
    """(R, 1) kW: how far inside each row's bounds the solvers aim (see solver_limits)."""
    n_members = np.asarray(limits.members.sum(axis=1)).ravel()
    finite = np.where(np.isfinite(limits.p_max_kw), np.abs(limits.p_max_kw), 0.0)
    finite = np.maximum(finite, np.where(np.isfinite(limits.p_min_kw), np.abs(limits.p_min_kw), 0.0))
    return (1e-5 * (1.0 + n_members) + 1e-6 * finite.max(axis=1))[:, None]


def solver_limits(limits: Limits, problem=None) -> Limits:
    """The limits a solver should aim at: each row's bounds moved inwards by 1e-5 kW per member EV plus 1e-6 of
    the bound's size. A solver meets its constraints only to its own tolerance, and removing that dust afterwards
    (`make_feasible`) moves each EV's power by up to a few 1e-6 kW; this margin keeps the rows within their exact
    bounds after it, at a cost far below any tracking figure.

    With the `problem`, a bound is never moved past what its plugged members can reach at all (e.g. a P_max of 0 on
    EVs without V2G stays 0: moved inwards it would ask them to inject power they cannot)."""
    tight = limits.tightened(_margin(limits))
    if problem is None:
        return tight
    plugged = problem.plugged.astype(float)
    lowest = -np.asarray(limits.members @ (plugged * problem.pd_max[:, None]))  # (R, T) all members discharging
    highest = np.asarray(limits.members @ (plugged * problem.pc_max[:, None]))
    hi = np.where(tight.p_max_kw < lowest, np.minimum(limits.p_max_kw, np.maximum(tight.p_max_kw, lowest)),
                  tight.p_max_kw)
    lo = np.where(tight.p_min_kw > highest, np.maximum(limits.p_min_kw, np.minimum(tight.p_min_kw, highest)),
                  tight.p_min_kw)
    # A bound its members cannot reach even all flat out binds nothing: no row for it (an operator's limit is
    # often above what the few EVs at a bus can draw).
    hi = np.where(limits.p_max_kw >= highest, np.inf, hi)
    lo = np.where(limits.p_min_kw <= lowest, -np.inf, lo)
    return Limits(names=limits.names, members=limits.members, p_min_kw=lo, p_max_kw=hi)


# -- the conflict rule, and a dispatch that is feasible by construction ----------------------------------------
#
# Grid first: the limits are hard. Where they leave an EV's departure need out of reach, the need gives way, by
# the least total energy (kWh) that makes limits and needs feasible together; that energy is reported as a
# shortfall caused by the limits. A limit the fleet cannot meet whatever it does (e.g. a P_min above what its
# plugged EVs can draw, or a bound at a step in which none of its EVs is plugged in) is widened as little as
# possible, and said. Both are found by one linear programme over the hull relaxation (HiGHS through scipy).

LIMIT_SLACK_WEIGHT = 1e4  # kWh of need given up that one kW x step of limit widening is worth: limits come first
NEED_MARGIN_KWH = 1e-4  # a lowered need is lowered by this much more than the LP says (interior room for the solvers)


def _lp(problem, objective: str, p_ref_kw=None, limits: Limits | None = None):
    """The hull relaxation of `problem` as an LP (sparse, HiGHS). objective "reconcile": free shortfalls and limit
    slacks, minimise LIMIT_SLACK_WEIGHT * slack + shortfall; "track": needs and limits hard, minimise the L1
    tracking error sum_t |P_t - p_ref_t|. A tiny throughput cost keeps the EVs from charging and discharging at
    once where nothing needs it. Returns (pc, pd, shortfall (N,), slack_lo, slack_hi (R, T)) or None if the LP
    failed."""
    limits = problem.limits if limits is None else limits
    T, N = problem.n_steps, problem.n_evs
    ev, t = np.nonzero(problem.plugged)
    K = len(ev)
    first_of_ev = np.r_[True, ev[1:] != ev[:-1]] if K else np.zeros(0, bool)
    last_of_ev = np.r_[ev[1:] != ev[:-1], True] if K else np.zeros(0, bool)
    a, b = problem.charge_gain[ev], problem.discharge_cost[ev]
    pcmax, pdmax = problem.pc_max[ev], problem.pd_max[ev]
    reconcile = objective == "reconcile"
    R = 0 if limits is None else limits.n_rows
    n_s = R * T if reconcile else 0
    # variables: pc [0,K) pd [K,2K) e [2K,3K) short [3K,3K+N) s_lo, s_hi (R*T each) | track: u (T) instead
    i_pc, i_pd, i_e, i_sh = 0, K, 2 * K, 3 * K
    i_lo = i_sh + (N if reconcile else 0)
    i_hi = i_lo + n_s
    i_u = i_hi + n_s
    n_var = i_u + (0 if reconcile else T)
    k = np.arange(K)
    # energy chain
    rows = np.r_[k, k[~first_of_ev], k, k]
    cols = np.r_[i_e + k, i_e + k[~first_of_ev] - 1, i_pc + k, i_pd + k]
    vals = np.r_[np.ones(K), -np.ones(int((~first_of_ev).sum())), -a, b]
    A_eq = sp.csr_matrix((vals, (rows, cols)), shape=(K, n_var))
    b_eq = np.where(first_of_ev, problem.e0[ev], 0.0)
    ub_blocks, b_ub = [], []
    both = np.flatnonzero((pcmax > 0) & (pdmax > 0))
    nb = len(both)
    ub_blocks.append(sp.csr_matrix((np.r_[1 / pcmax[both], 1 / pdmax[both]],
                                    (np.r_[np.arange(nb), np.arange(nb)], np.r_[i_pc + both, i_pd + both])),
                                   shape=(nb, n_var)))
    b_ub.append(np.ones(nb))
    # departure: e_last (+ short) >= need_end
    last = np.flatnonzero(last_of_ev)
    evs_last = ev[last]
    cols = [i_e + last] + ([i_sh + evs_last] if reconcile else [])
    vals = [-np.ones(len(last))] + ([-np.ones(len(last))] if reconcile else [])
    r_idx = np.tile(np.arange(len(last)), len(cols))
    ub_blocks.append(sp.csr_matrix((np.concatenate(vals), (r_idx, np.concatenate(cols))), shape=(len(last), n_var)))
    b_ub.append(-problem.need_end[evs_last])
    if R:
        # row r, step t: sum over members plugged at t of (pc - pd)
        S = limits.step_rows(ev, t, T)
        net = sp.hstack([S, -S, sp.csr_matrix((R * T, n_var - 2 * K))]).tocsr()
        hi, lo = limits.p_max_kw.ravel(), limits.p_min_kw.ravel()
        up, dn = np.flatnonzero(np.isfinite(hi)), np.flatnonzero(np.isfinite(lo))
        A_up, A_dn = net[up], -net[dn]
        if reconcile:
            A_up = A_up - sp.csr_matrix((np.ones(len(up)), (np.arange(len(up)), i_hi + up)), shape=(len(up), n_var))
            A_dn = A_dn - sp.csr_matrix((np.ones(len(dn)), (np.arange(len(dn)), i_lo + dn)), shape=(len(dn), n_var))
        ub_blocks += [A_up, A_dn]
        b_ub += [hi[up], -lo[dn]]
    cost = np.zeros(n_var)
    eps = 1e-6
    cost[i_pc:i_pc + K] = eps
    cost[i_pd:i_pd + K] = eps
    if reconcile:
        cost[i_sh:i_sh + N] = 1.0
        cost[i_lo:i_hi + n_s] = LIMIT_SLACK_WEIGHT * problem.dt_h
    else:
        # u_t >= +-(P_t - p_ref_t)
        agg = sp.csr_matrix((np.r_[np.ones(K), -np.ones(K)], (np.r_[t, t], np.r_[i_pc + k, i_pd + k])),
                            shape=(T, n_var))
        u = sp.csr_matrix((np.ones(T), (np.arange(T), i_u + np.arange(T))), shape=(T, n_var))
        p_ref = np.broadcast_to(np.asarray(p_ref_kw, float), (T,))
        ub_blocks += [agg - u, -agg - u]
        b_ub += [p_ref, -p_ref]
        cost[i_u:] = 1.0
    lb = np.r_[np.zeros(2 * K), problem.floor[ev], np.zeros(n_var - 3 * K)]
    ub = np.r_[pcmax, pdmax, problem.cap[ev], np.full(n_var - 3 * K, np.inf)]
    res = linprog(cost, A_ub=sp.vstack(ub_blocks).tocsr(), b_ub=np.concatenate(b_ub), A_eq=A_eq, b_eq=b_eq,
                  bounds=np.c_[lb, ub], method="highs")
    if res.status != 0 or res.x is None:
        return None
    x = res.x
    pc, pd = np.zeros((N, T)), np.zeros((N, T))
    pc[ev, t], pd[ev, t] = x[:K], x[K:2 * K]
    short = x[i_sh:i_sh + N] if reconcile else np.zeros(N)
    s_lo = x[i_lo:i_lo + n_s].reshape(R, T) if reconcile else np.zeros((R, T))
    s_hi = x[i_hi:i_hi + n_s].reshape(R, T) if reconcile else np.zeros((R, T))
    return pc, pd, short, s_lo, s_hi


def reconcile(problem):
    """`problem` with its limits and departure needs made feasible together by the grid-first rule (see above),
    and a message saying what gave way ("" if nothing had to). The LP runs on the limits a solver aims at
    (`solver_limits`), so that the methods, which aim there too, find the reconciled problem feasible."""
    limits = problem.limits
    if limits is None:
        return problem, ""
    out = _lp(problem, "reconcile", limits=solver_limits(limits, problem))
    if out is None:
        return problem, "could not check the grid limits against the EVs' needs (the LP failed)"
    _, _, short, s_lo, s_hi = out
    notes = []
    lowered = short > 1e-7
    if lowered.any():
        # a hair more than the LP finds, so that the lowered needs leave the interior point some room
        need_end = np.where(lowered, np.maximum(problem.need_end - short - NEED_MARGIN_KWH, problem.floor),
                            problem.need_end)
        problem = replace(problem, need_end=need_end)
        notes.append(f"the grid limits leave {short[lowered].sum():.6g} kWh of {int(lowered.sum())} EV(s)' "
                     "departure needs out of reach: those needs were lowered (grid first)")
    widened = (s_lo > 1e-7) | (s_hi > 1e-7)
    if widened.any():
        # The LP met the solver's bounds widened by the slack, at the edge of what the fleet can do; widened by
        # twice the solver's margin more, the solvers aim at a bound with room inside it.
        extra = 2 * _margin(limits)
        new = Limits(names=limits.names, members=limits.members,
                     p_min_kw=np.where(s_lo > 1e-7, limits.p_min_kw - s_lo - extra, limits.p_min_kw),
                     p_max_kw=np.where(s_hi > 1e-7, limits.p_max_kw + s_hi + extra, limits.p_max_kw))
        problem = replace(problem, limits=new)
        r, t = np.nonzero(widened)
        notes.append(f"{int(widened.sum())} limit(s) cannot be met by the fleet whatever it does (e.g. "
                     f"{limits.names[r[0]]} at step {t[0]}: by {max(s_lo[r[0], t[0]], s_hi[r[0], t[0]]):.6g} kW) and "
                     "were widened as little as possible")
    return problem, "; ".join(notes)


def tracking_lp(problem, p_ref_kw):
    """A dispatch feasible by construction for a reconciled problem: the L1 tracking LP's answer with charge and
    discharge netted, or None if the LP failed. The last fallback of `dispatch` when limits are set."""
    limits = None if problem.limits is None else solver_limits(problem.limits, problem)
    out = _lp(problem, "track", p_ref_kw=p_ref_kw, limits=limits)
    if out is None:
        return None
    pc, pd = out[0], out[1]
    net = pc - pd
    return np.maximum(net, 0.0), np.maximum(-net, 0.0)
