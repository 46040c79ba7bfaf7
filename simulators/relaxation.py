"""DCHR: the disjunctive convex-hull relaxation of the BDO as one sparse convex QP over the whole fleet.

Each EV-step's disjunction {charging: 0 <= pc <= Pc_max, pd = 0} or {discharging: pc = 0, 0 <= pd <= Pd_max}
is relaxed to its convex hull, pc/Pc_max + pd/Pd_max <= 1 (tighter than the box relaxation 0 <= pc <= Pc_max,
0 <= pd <= Pd_max). The QP is solved by PIQP, a sparse proximal interior-point solver: measured here, HiGHS's
active-set QP solver needs 11-60 s at 50 EVs and stalls far from the optimum at 200. Mode-fixing rounds
(integer.py) then make it integer-feasible. This is the central reference formulation; `dcls` solves the same
relaxation decomposed by EV.

Variables, per plugged (EV, step) k: pc_k, pd_k, e_k (energy at the end of the step); per step t: the tracking
residual z_t = sum_i p[i,t] - p_ref[t]. Objective sum_t z_t^2. The matrices are built once per problem;
mode restrictions only change variable bounds (same sparsity), so re-solves reuse the set-up.

Grid limits (`problem.limits`): one inequality row per (limit row r, step t) with a finite bound and a member
plugged at t, P_min <= sum over r's plugged members of (pc - pd) <= P_max, at the bounds of `solver_limits`
(moved inwards by a hair, so that cleaning the solver's dust afterwards keeps the exact bounds). The lower bound
is the dual objective less what that hair can be worth (margin times the rows' multipliers), so it bounds the
problem with the exact limits.
"""
from __future__ import annotations

import multiprocessing as mp

import numpy as np
import piqp
import scipy.sparse as sp

from .dcls import solve_dcls
from .integer import dispatch_by_cuts
from .limits import solver_limits
from .problem import Problem
from .results import RelaxedSolution, idle_solution


class CentralQP:
    def __init__(self, problem: Problem, p_ref_kw: np.ndarray):
        self.problem = problem
        self.p_ref = np.asarray(p_ref_kw, dtype=float)
        T = problem.n_steps
        plugged = problem.plugged & ((problem.pc_max > 0) | (problem.pd_max > 0))[:, None]
        ev, t = np.nonzero(plugged)  # EV-major: each EV's steps are consecutive and in time order
        K = len(ev)
        self.ev, self.t, self.K, self.T = ev, t, K, T
        if K == 0:
            return
        # variable blocks: pc [0, K), pd [K, 2K), e [2K, 3K), z [3K, 3K + T)
        ipc, ipd, ie, iz = 0, K, 2 * K, 3 * K
        n = 3 * K + T
        first_of_ev = np.r_[True, ev[1:] != ev[:-1]] if K else np.zeros(0, bool)
        last_of_ev = np.r_[ev[1:] != ev[:-1], True] if K else np.zeros(0, bool)
        a = problem.charge_gain[ev]
        b = problem.discharge_cost[ev]
        k = np.arange(K)
        # energy chain: e_k - e_{k-1} - a pc_k + b pd_k = e0 (first step) or 0
        rows = np.r_[k, k[~first_of_ev], k, k]
        cols = np.r_[ie + k, ie + k[~first_of_ev] - 1, ipc + k, ipd + k]
        vals = np.r_[np.ones(K), -np.ones((~first_of_ev).sum()), -a, b]
        beq = np.where(first_of_ev, problem.e0[ev], 0.0)
        # aggregate: z_t - sum_k (pc_k - pd_k) [t_k = t] = -p_ref_t
        rows = np.r_[rows, K + np.arange(T), K + t, K + t]
        cols = np.r_[cols, iz + np.arange(T), ipc + k, ipd + k]
        vals = np.r_[vals, np.ones(T), -np.ones(K), np.ones(K)]
        beq = np.r_[beq, -self.p_ref]
        A = sp.csc_matrix((vals, (rows, cols)), shape=(K + T, n))
        # hull rows where both modes exist: pc/Pc + pd/Pd <= 1
        pcmax, pdmax = problem.pc_max[ev], problem.pd_max[ev]
        both = np.flatnonzero((pcmax > 0) & (pdmax > 0))
        nb = len(both)
        G = sp.csc_matrix(
            (np.r_[1.0 / pcmax[both], 1.0 / pdmax[both]], (np.r_[np.arange(nb), np.arange(nb)], np.r_[ipc + both, ipd + both])),
            shape=(nb, n),
        )
        h_l, h_u = np.full(nb, -np.inf), np.ones(nb)
        # grid limits: P_min[r,t] <= sum_k member[r, ev_k] (pc_k - pd_k) [t_k = t] <= P_max[r,t]
        G_lim, lim_l, lim_u, self._lim_margin = _limit_rows(problem, ev, t, n, ipc, ipd)
        self._lim_rows = slice(nb, nb + G_lim.shape[0])
        G = sp.vstack([G, G_lim], format="csc")
        h_l, h_u = np.r_[h_l, lim_l], np.r_[h_u, lim_u]
        lo = problem.floor[ev].copy()
        lo[last_of_ev] = np.maximum(lo[last_of_ev], problem.need_end[ev[last_of_ev]])
        self.x_l = np.r_[np.zeros(2 * K), lo, np.full(T, -np.inf)]
        self.x_u_full = np.r_[pcmax, pdmax, problem.cap[ev], np.full(T, np.inf)]
        P = sp.csc_matrix((np.full(T, 2.0), (iz + np.arange(T), iz + np.arange(T))), shape=(n, n))
        c = np.zeros(n)
        self.solver = piqp.SparseSolver()
        self.solver.settings.eps_abs = 1e-8
        self.solver.settings.eps_rel = 1e-9
        self.solver.settings.max_iter = 200
        self.solver.setup(P, c, A, beq, G, h_l, h_u, self.x_l, self.x_u_full)
        self._status_ok = piqp.Status.PIQP_SOLVED
        self._set_up_with = None

    def solve(self, has_c=None, has_d=None, deadline=None, start=None) -> RelaxedSolution:
        # `start` is accepted for the common interface; PIQP re-uses its set-up but starts each solve afresh.
        K, ev, t = self.K, self.ev, self.t
        if K == 0:
            return idle_solution(self.problem.n_evs, self.p_ref)
        x_u = self.x_u_full.copy()
        if has_c is not None:
            x_u[:K] = np.where(has_c[ev, t], x_u[:K], 0.0)
        if has_d is not None:
            x_u[K:2 * K] = np.where(has_d[ev, t], x_u[K:2 * K], 0.0)
        if self._set_up_with is not None:
            self.solver.update(x_u=x_u)
        self._set_up_with = True
        status = self.solver.solve()
        res = self.solver.result
        x = np.asarray(res.x)
        pc = np.zeros((self.problem.n_evs, self.T))
        pd = np.zeros_like(pc)
        pc[ev, t] = x[:K]
        pd[ev, t] = x[K:2 * K]
        ok = status == self._status_ok
        bound = -np.inf
        if ok:  # the dual objective is a bound for the limits the solver saw; for the exact ones, less the margin
            z = np.abs(np.asarray(res.z_l)[self._lim_rows]) + np.abs(np.asarray(res.z_u)[self._lim_rows])
            bound = float(res.info.dual_obj) - float(np.sum(self._lim_margin * z))
        return RelaxedSolution(
            pc=pc, pd=pd, lower_bound=bound,  # dual objective: a bound
            iterations=int(res.info.iter), converged=ok, message="" if ok else f"PIQP: {status.name}",
        )


def _limit_rows(problem: Problem, ev: np.ndarray, t: np.ndarray, n: int, ipc: int, ipd: int):
    """The grid-limit rows over the QP's variables: (G (m, n), h_l, h_u, margin (m,)), one row per (limit row,
    step) with a finite bound and at least one member among the plugged EV-steps k = (ev[k], t[k]); bounds from
    `solver_limits`, `margin` the larger distance to the exact bounds. Empty when there are no limits."""
    if problem.limits is None:
        return sp.csc_matrix((0, n)), np.zeros(0), np.zeros(0), np.zeros(0)
    exact = problem.limits
    aimed = solver_limits(exact, problem)
    T = problem.n_steps
    S = exact.step_rows(ev, t, T)  # (R*T, K): the plugged EV-steps each (row, step) sums
    finite = (np.isfinite(exact.p_min_kw) | np.isfinite(exact.p_max_kw)).ravel()
    # A (row, step) without a plugged member has no variable: nothing any dispatch could change, so no row.
    keys = np.flatnonzero(finite & (S.getnnz(axis=1) > 0))
    m = len(keys)
    S = S[keys]
    G = sp.hstack([sp.csc_matrix((m, ipc)), S, sp.csc_matrix((m, ipd - ipc - S.shape[1])), -S,
                   sp.csc_matrix((m, n - ipd - S.shape[1]))]).tocsc()
    rr, tt = keys // T, keys % T
    h_l, h_u = aimed.p_min_kw[rr, tt], aimed.p_max_kw[rr, tt]
    with np.errstate(invalid="ignore"):  # inf - inf where a side has no bound: no margin there
        margin = np.fmax(np.nan_to_num(h_l - exact.p_min_kw[rr, tt], nan=0.0),
                         np.nan_to_num(exact.p_max_kw[rr, tt] - h_u, nan=0.0))
    return G, h_l, h_u, np.maximum(margin, 0.0)


# PIQP 0.7 crashes the process (segmentation fault in its set-up) on the largest fleets measured here (about
# 230,000 EV-steps; 196,000 were fine): above this many EV-steps the QP is solved in a worker process, so that a
# crash becomes a reported failure (and a feasible fallback) instead of taking the caller down.
IN_PROCESS_MAX_EV_STEPS = 20_000


class _WorkerQP:
    """CentralQP in a child process (fork), driven round by round over a pipe."""

    def __init__(self, problem: Problem, p_ref_kw: np.ndarray):
        ctx = mp.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, problem, p_ref_kw), daemon=True)
        self._proc.start()
        child.close()

    def solve(self, has_c=None, has_d=None, deadline=None, start=None) -> RelaxedSolution:
        try:
            self._conn.send((has_c, has_d))
            return self._conn.recv()
        except (EOFError, OSError):
            self._proc.join(5)
            raise RuntimeError(f"the PIQP worker died (exit code {self._proc.exitcode})") from None

    def __del__(self):
        if getattr(self, "_proc", None) is not None and self._proc.is_alive():
            self._proc.kill()


def _serve(conn, problem, p_ref_kw):
    qp = CentralQP(problem, p_ref_kw)
    while True:
        try:
            has_c, has_d = conn.recv()
        except EOFError:
            return
        conn.send(qp.solve(has_c, has_d))


def solve_dchr(problem: Problem, p_ref_kw: np.ndarray, *, time_limit_s: float | None = None,
               applied_steps: int | None = None):
    """DCHR dispatch: the central hull relaxation (PIQP), then mode-fixing rounds until integer-feasible."""
    ev_steps = int(problem.plugged.sum())
    qp_class = CentralQP if ev_steps <= IN_PROCESS_MAX_EV_STEPS else _WorkerQP
    try:
        return dispatch_by_cuts(problem, p_ref_kw, qp_class(problem, p_ref_kw), time_limit_s,
                                applied_steps=applied_steps)
    except RuntimeError as exc:  # the PIQP worker died: the same relaxation, decomposed, is the next best answer
        out = solve_dcls(problem, p_ref_kw, time_limit_s=time_limit_s, applied_steps=applied_steps)
        out.status, out.message = "fallback", f"dchr failed ({exc}); solved by dcls instead"
        return out
