"""Decomposition-coordination least squares (DC-LS) for the BDO: the paper's method, made second-order.

The relaxation solved here is the disjunctive convex hull of each EV-step's charge-or-discharge disjunction
(pc/Pc_max + pd/Pd_max <= 1, see relaxation.py for the same QP handed to a general solver), with energy
bounds and departure needs, and the least-squares tracking objective on the aggregate.

Decomposition: every EV is a subproblem of its own: its (pc, pd) per plugged step, its energy chain and bounds.
Coordination: the only coupling is the aggregate sum_i p[i,t] - p_ref[t]. The method is a primal-dual
interior-point iteration in which each EV solves its own Newton (least-squares) system, vectorised across the
fleet, and the coordinator solves one T x T system that reallocates the aggregate residual among the EVs in
proportion to their current compliance (their headroom, as the barrier sees it); repeated until the tracking
residual's duality gap is closed. The paper's coordinator reallocates residuals first-order; such schemes
converge slowly (the issue measured a vectorised ADMM at 1.1% after about 130 s at 5,000 EVs), while this one
needs 15-40 Newton steps.

Per EV, its Newton system is a chain in time (energy couples neighbouring steps), so its response to the
coordinator's price is a semiseparable T x T matrix computed in closed form from two sweeps (no factorisation,
no cancellation: every quantity is a sum or ratio of positive terms); all EVs' sweeps run as numpy array ops.

Integer feasibility ("disjunctive cuts"): EV-steps of the relaxed optimum that charge and discharge at once are
cut off by fixing their mode to one side (dithered over EVs and steps), and the relaxation is solved again,
at most three solves in all (see integer.py). The first relaxation's dual gives a proven lower bound on the tracking SSE.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np
import scipy.sparse as sp
from scipy.linalg import cho_factor, cho_solve
from scipy.optimize import linprog
from threadpoolctl import ThreadpoolController

from .integer import NEGLIGIBLE_SSE, dispatch_by_cuts
from .limits import solver_limits
from .problem import Problem
from .results import RelaxedSolution, idle_solution

# Tie-breakers that pick, among equal-SSE optima, one without simultaneous charge and discharge and with the
# power spread evenly: a throughput cost eps*(pc+pd) and a tiny ridge rho*(pc^2+pd^2) (kW-based, unscaled).
# Both move the SSE by far less than the solver tolerance; the lower bound accounts for them exactly.
EPS_THROUGHPUT = 1e-6
RHO_RIDGE = 1e-7
ENERGY_SLACK_KWH = 1e-6
REFINE_PASSES = 4  # at most one solve plus three rounds of iterative refinement per Newton direction (measured:
# with one round the final dual residual leaves the proven bound 1.4 kW^2 below the optimum on a 50-EV day, with three
# 0.01; without refinement while the merit was above 1e-3, a PV-surplus day of 200 EVs stalled at 1e-2)
REFINE_TO = 1e-10  # ... refined until the augmented residuals are below this share of the right-hand side, or, far
REFINE_MERIT = 1e-4  # from the optimum, below this share of it times the merit (measured on 200-EV days: as many
# solves as refining by the merit's size did, half of them under grid limits, and the surplus day converged)
# Residuals and duality gap relative to the problem's scale below which an answer counts as the optimum (the
# tolerance aimed at is `solve(tol=1e-6)`); the lower bound is proven from the final multipliers whatever they are.
ACCURATE_ENOUGH = 1e-4
# ... and for a relaxation with some modes fixed (a rounding's solve: it bounds nothing, and its answer is netted
# and repaired): measured on 2,000-EV cases (strong swing, surplus, 80 % V2G surplus), 1e-3 instead of 1e-4 cost the
# dispatch 0.0005-0.009 % of SSE and saved 10-40 % of that solve's time (strong swing, seed 3: 19 iterations
# instead of 27); 1e-2 cost up to 0.08 %.
ROUNDING_ACCURACY = 1e-3
# Once the primal side is this accurate, every iterate's multipliers are turned into a proven bound (_dual_bound) and
# the best one is kept: near the optimum of a degenerate fleet (PV surplus, barrier weights spanning 1e12) the dual
# residual turns noisy from one iterate to the next (the Newton directions' backward error, eps |K| |dx|, is
# of its order) while the primal point and the bound still improve; the solve stops as soon as the relaxed SSE is
# within PROVEN_GAP of that bound, or when the primal side stops improving (STAGNATION_ITERATIONS) (measured:
# surplus, 2,000 EVs: the bound of the best-merit point was 1 % below the optimum on one run and 0.002 % on another,
# depending on the BLAS's threads; the best bound, 0.008 % on both, and the primal side stalls with steps of 0 once
# the dual residual is noise: 10 more iterations bought nothing).
BOUND_FROM = 1e-2
PROVEN_GAP = 1e-4
# Where the solve ends further than PROVEN_GAP from its bound, the energy prices of the EVs whose prices fall short
# (worst first, until the others' shortfall is below POLISH_LEFT x the gap aimed at; at most this many EV-steps)
# are taken from an exact LP (measured: strong swing, 2,000 EVs, seed 3: the bound 10 % below the relaxed SSE; the
# worst 198 EVs by LP (0.12 s) took it to 0.011 %, POLISH_LEFT = 0.1 (568 EVs, 0.52 s, a third of the solve) to
# 0.008 %, all of them (2.2 s) to 0.006 %).
POLISH_LEFT = 1.0
POLISH_EV_STEPS = 20_000
# ... and once during the solve, as soon as the relaxed SSE has moved by less than this share over two iterations
# while the multipliers' bound is still further than PROVEN_GAP (to half of it: the stop needs some room): the point
# has settled and only the bound is noisy (measured, 2,000 EVs: strong swing seed 3 ends proven after 26 iterations
# instead of stalling after 30, 80 %-V2G surplus seed 3 after 29 instead of 33; 0.1-0.2 s of LP each).
SETTLED = 1e-5
STAGNATION_ITERATIONS = 3  # ... and once that accurate, stop when the merit has not halved in this many steps
STALL_ITERATIONS = 10  # once near (STALL_BELOW) or long at it: stop when the best merit fell by less than 10% in
STALL_BELOW = 1e-2  # this many steps: it is stuck (far from the optimum the merit may rise for a while first)
# How far a warm start is pushed back into the interior (slacks relative to their scale, multipliers). Measured
# (2,000-EV cases, a rounding's fixed-mode solve started from the first answer): 0.1 took 15-21 iterations where
# 0.01 took 17-23 and 0.3 took 19-24; the feeder day's horizon re-plans cost the same with 0.1 and 0.01 (70 ms a step).
WARM_MARGIN = 0.1
# A cold start's slacks (at least this share of their scale) and multipliers. Measured on 21 fleets (the case
# suite's and the project's own, 200 and 2,000 EVs, both regimes): the first relaxed solve took 346 iterations in
# all with 1.0 and 0.3 against 401 with 0.1 and 1.0 (none more; 1.0 and 0.1: 338, 3.0 and 0.3: 361).
COLD_SLACK = 1.0
COLD_MULTIPLIER = 0.3
PRIMAL_REG = 1e-4  # the Newton matrix's primal regularisation, relative to the aggregate coupling (see _factor)
SAFE_ELL_DROP = 600.0  # how far ell may fall over a window for exp(-ell), exp(ell) as factors (e^600 < 1e261)
_CHUNK_ELEMENTS = 1 << 21  # EVs x steps^2 per dense block batch (16 MiB of float64)
_GEMM_EVS = 20_000  # EVs per batch of the coordinator's matrix product (two EVs x T factors)


# Grid limits make the coordinator (1 + R) T rows wide; up to this size it is factored with one BLAS thread: on 2
# cores the threads' hand-offs cost more than they save on such small matrices (measured: the feeder's day with
# dcls+grid, 1,000 EVs, coordinators of 288-544 rows, 345 -> 171 ms of re-plans a step; a 336-row Cholesky took
# 2.1 ms median in the run, 0.9-1.1 ms alone). Larger coordinators were not measured and keep the threads, as do
# unlimited fleets (2,000-10,000 EVs: 1-13 % faster with 2 threads).
ONE_BLAS_THREAD_ROWS = 600
_blas_controller: ThreadpoolController | None = None


def _one_blas_thread():
    """A context in which BLAS runs on one thread (the controller is made once: it scans the loaded libraries)."""
    global _blas_controller
    if _blas_controller is None:
        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")


class _Layout:
    """The active EVs' plugged steps as one flat array of EV-steps (no padding: work and memory grow with the
    EV-steps, not with EVs x the longest window), ordered by position in the window, then by EV: the EVs sorted
    longest window first (then by `key`, the EV's class of grid limit rows, and by first step), so that the EVs
    still plugged at window position j are a prefix of length cnt[j] of position j's block. A chain along each
    EV's window (a cumulative sum, a recursion of the Newton step) is then one slice operation per position."""

    def __init__(self, problem: Problem, active: np.ndarray, key: np.ndarray | None = None):
        length = (problem.stop - problem.first)[active]
        first = problem.first[active]
        key = np.zeros(len(first), np.int64) if key is None else key[active]
        order = np.lexsort((first, key, -length))
        self.key = key[order]
        self.idx = np.flatnonzero(active)[order]
        self.first = first[order]
        self.length = np.maximum(length[order], 1)  # an active EV is plugged at one step at least
        self.n = len(self.idx)
        self.L = int(self.length.max(initial=1))
        # cnt[j]: EVs whose window reaches position j; off[j]: where position j's block starts
        self.cnt = self.n - np.cumsum(np.bincount(self.length, minlength=self.L + 1))[:self.L]
        self.off = np.concatenate([[0], np.cumsum(self.cnt)])
        self.M = int(self.off[-1])
        self.pos = np.repeat(np.arange(self.L), self.cnt)
        self.ev = np.arange(self.M) - self.off[self.pos]
        self.gidx = self.first[self.ev] + self.pos
        self.last = self.off[self.length - 1] + np.arange(self.n)  # each EV's last step
        self.has_prev = self.pos > 0
        self.prev = np.where(self.has_prev, self.off[np.maximum(self.pos - 1, 0)] + self.ev, 0)
        self.has_next = self.pos + 1 < self.length[self.ev]
        self.next = np.where(self.has_next, self.off[np.minimum(self.pos + 1, self.L)] + self.ev, 0)
        self._blocks = [(int(self.off[j]), int(self.cnt[j])) for j in range(self.L)]

    def to_layout(self, full: np.ndarray) -> np.ndarray:
        """(N, T) array -> (M,) EV-steps."""
        return full[self.idx[self.ev], self.gidx]

    def to_full(self, flat: np.ndarray, n_evs: int, n_steps: int) -> np.ndarray:
        out = np.zeros((n_evs, n_steps))
        out[self.idx[self.ev], self.gidx] = flat
        return out

    def per_ev(self, values: np.ndarray) -> np.ndarray:
        """(n,) per active EV -> (M,) on each of its steps."""
        return values[self.ev]

    def before(self, x: np.ndarray) -> np.ndarray:
        """The value at each EV's previous step (0 at its first), along the last axis."""
        return np.where(self.has_prev, x[..., self.prev], 0.0)

    def after(self, x: np.ndarray) -> np.ndarray:
        """The value at each EV's next step (0 at its last), along the last axis."""
        return np.where(self.has_next, x[..., self.next], 0.0)

    def cumsum(self, x: np.ndarray) -> np.ndarray:
        """Each EV's running sum along its window (the last axis holds EV-steps)."""
        y = np.array(x, dtype=float, copy=True)
        blocks = self._blocks
        for j in range(1, self.L):
            (o, c), (op, _) = blocks[j], blocks[j - 1]
            y[..., o:o + c] += y[..., op:op + c]
        return y

    def rcumsum(self, x: np.ndarray) -> np.ndarray:
        """Each EV's sum from each step to its window's end: the small terms far in the window first."""
        y = np.array(x, dtype=float, copy=True)
        blocks = self._blocks
        for j in range(self.L - 2, -1, -1):
            (o, _), (on, cn) = blocks[j], blocks[j + 1]
            y[..., o:o + cn] += y[..., on:on + cn]
        return y

    def padded_index(self, evs: np.ndarray) -> np.ndarray:
        """(len(evs), L) flat positions of these EVs' steps, -1 past each window's end (for the few EVs whose
        chain products need dense blocks or sweeps)."""
        j = np.arange(self.L)
        return np.where(j[None, :] < self.length[evs, None], self.off[j][None, :] + evs[:, None], -1)


class RelaxedQP:
    """The relaxation of the BDO for `problem`, with optional per-(EV, step) mode restrictions.

    Built once per problem (arrays only); `solve(has_c, has_d)` re-solves it for other mode restrictions.
    """

    def __init__(self, problem: Problem, p_ref_kw: np.ndarray, polish_bound: bool = True):
        self.problem = problem
        self.polish_bound = polish_bound  # see POLISH_LEFT: worth its LP where the bound is reported
        self.p_ref = np.asarray(p_ref_kw, dtype=float)
        self.T = problem.n_steps
        plugged = problem.plugged
        self.can_c = plugged & (problem.pc_max[:, None] > 0)
        self.can_d = plugged & (problem.pd_max[:, None] > 0)
        active = (self.can_c | self.can_d).any(axis=1)
        classes = self._limit_rows(problem, active)
        self.lay = lay = _Layout(problem, active, classes)
        self.cls = lay.key
        i = lay.idx
        per_step = lambda v: lay.per_ev(v[i])  # noqa: E731  (an EV's value on each of its steps)
        self.Pc = per_step(problem.pc_max)
        self.Pd = per_step(problem.pd_max)
        self.a = per_step(problem.charge_gain)
        self.b = per_step(problem.discharge_cost)
        self.e0 = per_step(problem.e0)
        lo = per_step(problem.floor)
        lo[lay.last] = np.maximum(problem.floor[i], problem.need_end[i])
        # Energy bounds widened by ENERGY_SLACK_KWH: an EV that arrives full, or must charge flat out to meet its
        # need, has no interior (its multipliers would be unbounded); the final repair restores the exact bounds.
        self.lo = lo - ENERGY_SLACK_KWH
        self.hi = per_step(problem.cap) + ENERGY_SLACK_KWH
        with np.errstate(divide="ignore"):
            self.ic = np.where(self.Pc > 0, 1.0 / self.Pc, 0.0)
            self.id = np.where(self.Pd > 0, 1.0 / self.Pd, 0.0)
        # Objective scale: gradients of O(1) keep the interior-point tolerances meaningful for any fleet size.
        self.kappa = 1.0 / max(1.0, float(np.max(np.abs(self.p_ref), initial=0.0)),
                               float(problem.pc_max[i].sum()) / max(self.T, 1))
        self.delta = PRIMAL_REG * 2 * self.kappa
        self._upper_t = np.triu(np.ones((self.T, self.T), dtype=bool), 1)
        self.cls_step = lay.per_ev(self.cls)
        self.row_keys = self.cls_step * self.T + lay.gidx  # (class, step) of each EV-step, for the row sums
        self.hc = self.hd = None  # the mode restrictions being solved for: set by `_set_modes`
        self._batches = None  # see _gemm_batches

    def _set_modes(self, has_c: np.ndarray, has_d: np.ndarray):
        """Solve for these mode restrictions ((N, T) bool, within what each EV-step can do) from now on: the
        linear maps below (_GT, _Kinv, _factor) act on the allowed EV-steps only."""
        self.hc = self.lay.to_layout(has_c & self.can_c).astype(bool)
        self.hd = self.lay.to_layout(has_d & self.can_d).astype(bool)

    def _limit_rows(self, problem: Problem, active: np.ndarray) -> np.ndarray:
        """Set up the grid limit rows (see limits.py) this problem has: R rows with a finite bound at a step where
        one of their EVs is plugged in, as a lower row (P_rt - lo >= 0) and an upper row (hi - P_rt >= 0) per
        (row, step). EVs with the same rows form a class: `B` (C, 1 + R) says which rows (column 0: the fleet's
        aggregate of the objective) each class belongs to. Returns each EV's class (N,)."""
        T = self.T
        self.R = 0
        cls = np.zeros(problem.n_evs, np.int64)
        self.B = np.ones((1, 1))
        if problem.limits is not None:
            lim = solver_limits(problem.limits, problem)
            mem = (lim.members.toarray() > 0) & active[None, :]
            present = (mem.astype(float) @ (self.can_c | self.can_d).astype(float)) > 0  # (R, T)
            lo = np.where(present, lim.p_min_kw, -np.inf)
            hi = np.where(present, lim.p_max_kw, np.inf)
            keep = (np.isfinite(lo) | np.isfinite(hi)).any(axis=1)
            if keep.any():
                mem, lo, hi = mem[keep], lo[keep], hi[keep]
                self.R = int(keep.sum())
                keys, cls = np.unique(mem.T, axis=0, return_inverse=True)
                cls = cls.ravel()
                self.B = np.hstack([np.ones((len(keys), 1)), keys.astype(float)])
                self.c_mask = np.stack([np.isfinite(lo), np.isfinite(hi)])
                self.c_h = np.stack([np.where(np.isfinite(lo), lo, 0.0), np.where(np.isfinite(hi), -hi, 0.0)])
                # a slack's natural scale: the members' total charge power
                size = mem.astype(float) @ problem.pc_max + 1.0
                self.c_scale = np.broadcast_to(size[None, :, None], (2, self.R, T))
        return cls

    def _split(self, v):
        """A flat row vector -> (per-EV-step rows (5, M), limit rows (2, R, T)), as views."""
        v, k = np.ravel(v), 5 * self.lay.M
        return v[:k].reshape(5, self.lay.M), v[k:].reshape(2, self.R, self.T)

    def _rows(self, pc, pd):
        """(1 + R, T): the fleet's aggregate and each limit row's net power."""
        C = self.B.shape[0]
        per_class = np.bincount(self.row_keys, weights=pc - pd, minlength=C * self.T).reshape(C, self.T)
        return self.B.T @ per_class

    def _spread(self, w):
        """J_rows^T w for row prices w (1 + R, T): each EV-step's sum over its rows, (M,)."""
        return (self.B @ w)[self.cls_step, self.lay.gidx]

    # -- the linear maps -------------------------------------------------------------------------------------
    def _aggregate(self, pc, pd):
        return np.bincount(self.lay.gidx, weights=pc - pd, minlength=self.T)

    def _G(self, pc, pd):
        """Row values G x (without h), flat: the five per-EV-step row kinds (5, M), then the limit rows (2, R, T)."""
        e = self.lay.cumsum(self.a * pc - self.b * pd)
        out = np.stack([pc, pd, -(pc * self.ic + pd * self.id), e, -e]).ravel()
        if self.R:
            P = self._rows(pc, pd)[1:]
            out = np.concatenate([out, P.ravel(), -P.ravel()])
        return out

    def _GT(self, v):
        """G^T v for flat row multipliers v -> (gc, gd), on the allowed EV-steps (`_set_modes`)."""
        v, vr = self._split(v)
        w = self.lay.rcumsum(v[3] - v[4])
        gc = v[0] - v[2] * self.ic + self.a * w
        gd = v[1] - v[2] * self.id - self.b * w
        if self.R:
            q = self._spread(np.vstack([np.zeros((1, self.T)), vr[0] - vr[1]]))
            gc, gd = gc + q, gd - q
        return gc * self.hc, gd * self.hd

    # -- one Newton system: per-EV chains + the coordinator's T x T system ---------------------------------
    def _factor(self, W_flat):
        """Prepare the solve of (K + 2 kappa J^T J + sum_r J_r^T D_r J_r) dx = g for flat barrier weights W: K per
        EV (its own rows), the coordinator for the aggregate and the limit rows (D_r: their weights)."""
        W, Wr = self._split(W_flat)
        lay, hc, hd = self.lay, self.hc, self.hd
        two_rho = 2 * RHO_RIDGE * self.kappa
        # Primal regularisation of the Newton matrix only (the residuals stay exact): transfers of power between
        # EVs leave the objective flat, and without it their near-zero curvature would swamp the coordinator.
        d1, d2 = two_rho + self.delta + W[0], two_rho + self.delta + W[1]
        B11 = np.where(hc, d1 + W[2] * self.ic**2, 1.0)
        B22 = np.where(hd, d2 + W[2] * self.id**2, 1.0)
        B12 = np.where(hc & hd, W[2] * self.ic * self.id, 0.0)
        # det = B11*B22 - B12^2 without cancelling the hull row's weight W[2]^2 terms
        det = np.where(hc & hd, d1 * d2 + W[2] * (self.ic**2 * d2 + self.id**2 * d1), B11 * B22)
        i11 = np.where(hc, B22 / det, 0.0)
        i22 = np.where(hd, B11 / det, 0.0)
        i12 = np.where(hc & hd, -B12 / det, 0.0)
        a, b = self.a, self.b
        self.BEc, self.BEd = a * i11 - b * i12, a * i12 - b * i22  # B^-1 E^T, E = (a, -b)
        self.i11, self.i12, self.i22 = i11, i12, i22
        beta = self.BEc - self.BEd
        gamma = a * self.BEc - b * self.BEd
        both = hc & hd
        # J B^-1 J^T - beta^2/gamma = (a - b)^2 / (det B * gamma) for two-variable steps, 0 for one: no cancellation
        direct = np.where(both, (a - b) ** 2 / (det * gamma), 0.0)
        self.gamma = gamma
        c = beta / gamma
        We = W[3] + W[4]
        # Left stiffness: node j tied to ground through springs 1/gamma and energy weights We; right stiffness
        # likewise from the window's end. One slice per window position (the EVs still plugged there).
        SL = np.empty(lay.M)
        SR = np.zeros(lay.M)
        o, n0 = lay._blocks[0]
        SL[o:o + n0] = 1.0 / gamma[o:o + n0]
        for j in range(1, lay.L):
            (o, cj), (op, _) = lay._blocks[j], lay._blocks[j - 1]
            SL[o:o + cj] = 1.0 / (gamma[o:o + cj] + 1.0 / (SL[op:op + cj] + We[op:op + cj]))
        for j in range(lay.L - 2, -1, -1):
            (o, _), (on, cn) = lay._blocks[j], lay._blocks[j + 1]
            t = We[on:on + cn] + SR[on:on + cn]
            SR[o:o + cn] = t / (1.0 + gamma[on:on + cn] * t)
        Xd = 1.0 / (SL + We + SR)  # diagonal of A^-1
        u = gamma * lay.before(SL + We)  # 0 at each EV's first step
        one_minus_rho = np.where(lay.has_prev, u / (1.0 + u), 1.0)
        ell = -lay.cumsum(np.log1p(u))
        t = We + SR
        sigma = np.where(lay.has_prev, gamma * t / (1.0 + gamma * t), 0.0)
        V = lay.before(Xd) * sigma  # G[j,k] = -(1-rho_{j-1}) * V_k * exp(ell_{k-1} - ell_j), j < k
        Gdiag = Xd * one_minus_rho + V
        ellprev = lay.before(ell)
        # For applying G (see _apply_G) by two sweeps: its diagonal, the factors of its off-diagonal part and the
        # decay exp(ell_j - ell_{j-1}) = 1 / (1 + u_j) in (0, 1].
        decay = 1.0 / (1.0 + u)
        self.g_diag = Gdiag
        gidx, cls = lay.gidx, self.cls_step
        safe = -ell[lay.last] <= SAFE_ELL_DROP
        safe_step = lay.per_ev(safe)
        # G's off-diagonal part as two factors, G[j,k] = A_j B_k for j < k (see M below), where neither can
        # overflow: applied by two cumulative sums over the window instead of 2 L sweeps (at 200 EVs over 96 steps
        # the sweeps were 1,800 array operations per interior-point iteration). The other EVs keep the sweeps.
        with np.errstate(over="ignore", invalid="ignore"):
            self.g_A = np.where(safe_step, one_minus_rho * np.exp(-ell), 0.0)
            self.g_B = np.where(safe_step, V * np.exp(ellprev), 0.0)
        self.g_swept = np.flatnonzero(~safe)
        pidx = lay.padded_index(self.g_swept)  # (swept EVs, L), -1 past a window's end
        self.g_pidx = pidx
        pad = lambda x: np.where(pidx >= 0, x[np.maximum(pidx, 0)], 0.0)  # noqa: E731
        self.g_omr_t = np.ascontiguousarray(pad(one_minus_rho).T)
        self.g_v_t = np.ascontiguousarray(pad(V).T)
        self.g_decay_t = np.ascontiguousarray(pad(decay).T)
        C = self.B.shape[0]
        M = np.zeros((C, self.T, self.T))  # per class of limit rows: sum_i J_i K_i^-1 J_i^T
        # Each EV's J K^-1 J^T is diag(c^2 Gdiag + direct) plus c G c off the diagonal, and c G c's upper part is
        # the outer product of two window vectors (G[j,k] = left_j right_k, j < k), exact as two factors while
        # neither can overflow (ell falls by at most 600 over the window). Placed on the aggregate grid, the sum
        # of those outer products over the fleet is one matrix product per class; only its upper triangle is
        # meant (each EV's entries there have j < k), the rest is discarded.
        diag = c * c * Gdiag + direct
        T = self.T
        M += np.bincount(cls * (T * T) + gidx * (T + 1), weights=diag,
                         minlength=C * T * T).reshape(C, T, T)  # onto each class's diagonal
        left, right = -c * self.g_A, c * self.g_B  # 0 on the steps of EVs that are not `safe`
        upper_t = self._upper_t
        for k, n_rows, steps, flat in self._gemm_batches():
            lg = np.zeros(n_rows * T)
            rg = np.zeros(n_rows * T)
            lg[flat], rg[flat] = left[steps], right[steps]
            M[k] += np.where(upper_t, lg.reshape(n_rows, T).T @ rg.reshape(n_rows, T), 0.0)
        # EVs whose factors could overflow: one exp per entry, a batch of similar windows at a time (the layout
        # puts the longest first).
        sw = self.g_swept
        s = 0
        while s < sw.size:
            lc = int(lay.length[sw[s]])
            idx = sw[s:s + max(1, _CHUNK_ELEMENTS // (lc * lc))]
            s += len(idx)
            p = pidx[s - len(idx):s, :lc]
            inside = p >= 0
            p0 = np.maximum(p, 0)
            jj = np.arange(lc)
            upper = (jj[:, None] < jj[None, :]) & inside[:, :, None] & inside[:, None, :]
            expo = np.where(upper, ellprev[p0][:, None, :] - ell[p0][:, :, None], -np.inf)
            Mb = -np.where(inside, (c * one_minus_rho)[p0], 0.0)[:, :, None] \
                * np.where(inside, (c * V)[p0], 0.0)[:, None, :] * np.exp(expo)
            cols = gidx[p0]
            for bb in range(len(idx)):
                w = int(lay.length[idx[bb]])
                M[self.cls[idx[bb]]][np.ix_(cols[bb, :w], cols[bb, :w])] += Mb[bb, :w, :w]
        M = M + np.transpose(np.triu(M, 1), (0, 2, 1))  # the lower triangles from the upper (triu works per class)
        # Coordinator over the aggregate and the limit rows, with D = (2 kappa, D_r): (I + D^1/2 U K^-1 U^T D^1/2),
        # U K^-1 U^T's block (a, b) being the sum of the classes in both rows a and b. Without limits this is
        # 2 kappa (I/(2 kappa) + sum_i J_i K_i^-1 J_i^T).
        D = np.full((1, self.T), 2 * self.kappa)
        if self.R:
            D = np.vstack([D, np.where(self.c_mask[0], Wr[0], 0.0) + np.where(self.c_mask[1], Wr[1], 0.0)])
        self.Dh = np.sqrt(D)
        n_rows = (1 + self.R) * self.T
        if self.R:
            # sum_c B[c,a] B[c,b] M[c] for every pair of rows (a, b): one matrix product over the classes
            # (a three-operand einsum loops over all of them: measured 3.8 ms of a 5 ms Newton step, 14 rows)
            A = self.B.shape[1]
            pairs = (self.B[:, :, None] * self.B[:, None, :]).reshape(C, A * A)
            M = (pairs.T @ M.reshape(C, -1)).reshape(A, A, self.T, self.T).transpose(0, 2, 1, 3)
            M = M.reshape(n_rows, n_rows)
        else:
            M = M[0]
        dh = self.Dh.ravel()
        # S / (2 kappa): the aggregate's rows at unit scale, as (I / (2 kappa) + M) without limits
        S = (dh[:, None] / self.Dh[0, 0]) * M * (dh[None, :] / self.Dh[0, 0])
        S[np.diag_indices(n_rows)] += 1.0 / self.Dh[0, 0] ** 2
        # With limit rows the system is (1 + R) T wide: factor once, solve by triangular substitution (without
        # them it is T x T and the long-standing solve path is kept: its rounding is what the bounds were measured on).
        self.chol = cho_factor(S, lower=True, check_finite=False) if self.R else np.linalg.cholesky(S)

    def _gemm_batches(self):
        """[(class, EVs, their EV-steps, where those go in an (EVs x T) block)]: the coordinator's matrix product
        in batches of at most _GEMM_EVS EVs of one class (bounded memory); the layout's, made once."""
        if self._batches is None:
            lay, T = self.lay, self.T
            self._batches = []
            for k in range(self.B.shape[0]):
                rows = np.flatnonzero(self.cls == k)
                for s in range(0, len(rows), _GEMM_EVS):
                    r = rows[s:s + _GEMM_EVS]
                    rank = np.full(lay.n, -1)
                    rank[r] = np.arange(len(r))
                    at = rank[lay.ev]
                    steps = np.flatnonzero(at >= 0)
                    self._batches.append((k, len(r), steps, at[steps] * T + lay.gidx[steps]))
        return self._batches

    def _Kinv(self, gc, gd):
        """K^-1 g per EV (each EV's chain solved independently)."""
        xc = self.i11 * gc + self.i12 * gd
        xd = self.i12 * gc + self.i22 * gd
        d = self.a * xc - self.b * xd
        y = d / self.gamma
        mu = (d - self._apply_G(y)) / self.gamma
        return (xc - mu * self.BEc) * self.hc, (xd - mu * self.BEd) * self.hd

    def _apply_G(self, y):
        """G y per EV for (M,) y, in O(L) per EV: G[j,k] = -(1-rho_{j-1}) V_k exp(ell_{k-1} - ell_j) for j < k,
        symmetric, diagonal Gdiag (see _factor). Where its factors A_j = (1-rho_j) exp(-ell_j), B_k = V_k
        exp(ell_{k-1}) cannot overflow (ell falls by at most 600 over the window): G y = Gdiag y - A (sum_{k>j} B_k
        y_k) - B (sum_{j<k} A_j y_j), two cumulative sums. Elsewhere its upper and lower parts are first-order
        recursions along the window whose factors exp(ell_j - ell_{j-1}) lie in (0, 1]: no overflow, no L x L block."""
        lay = self.lay
        out = self.g_diag * y
        after = lay.after(lay.rcumsum(self.g_B * y))  # sum over k > j of B_k y_k: small terms (far in the window) first
        before = lay.before(lay.cumsum(self.g_A * y))  # sum over j < k of A_j y_j
        out -= self.g_A * after + self.g_B * before
        if self.g_swept.size:
            pidx = self.g_pidx
            inside = pidx >= 0
            p0 = np.maximum(pidx, 0)
            omr, v, decay = self.g_omr_t, self.g_v_t, self.g_decay_t
            y_t = np.where(inside, y[p0], 0.0).T
            swept = np.where(inside, (self.g_diag * y)[p0], 0.0).T.copy()
            vy, wy = v * y_t, omr * y_t
            L = y_t.shape[0]
            r = np.zeros(y_t.shape[1])
            for j in range(L - 2, -1, -1):  # upper: R_j = V_{j+1} y_{j+1} + decay_{j+1} R_{j+1}
                r = vy[j + 1] + decay[j + 1] * r
                swept[j] -= omr[j] * r
            q = np.zeros(y_t.shape[1])
            for k in range(1, L):  # lower: Q_k = (1-rho) y at k-1 + decay_{k-1} Q_{k-1}
                q = wy[k - 1] + decay[k - 1] * q
                swept[k] -= v[k] * q
            out[pidx[inside]] = swept.T[inside]
        return out

    def _newton(self, gc, gd):
        # Woodbury: N^-1 g = K^-1 g - K^-1 U^T D^1/2 S^-1 D^1/2 U K^-1 g
        uc, ud = self._Kinv(gc, gd)
        Pu = (self.Dh / self.Dh[0, 0] * self._rows(uc, ud)).ravel()
        if self.R:
            v = cho_solve(self.chol, Pu, check_finite=False)
        else:
            v = np.linalg.solve(self.chol.T, np.linalg.solve(self.chol, Pu))
        w = (self.Dh / self.Dh[0, 0]) * v.reshape(self.Dh.shape)
        wl = self._spread(w)
        vc, vd = self._Kinv(wl, -wl)
        return uc - vc, ud - vd

    # -- the interior-point iteration ------------------------------------------------------------------------
    def solve(self, has_c=None, has_d=None, tol=1e-6, max_iter=80, deadline=None,
              start: RelaxedSolution | None = None) -> RelaxedSolution:
        """Solve for these mode restrictions ((N, T) bool; None = all modes allowed), from `start` if given: an
        answer on the same (N, T) grid (the last round's, or a shifted previous plan)."""
        small_coordinator = self.R and (1 + self.R) * self.T <= ONE_BLAS_THREAD_ROWS
        with _one_blas_thread() if small_coordinator else contextlib.nullcontext():
            return self._solve(has_c, has_d, tol, max_iter, deadline, start)

    def _solve(self, has_c, has_d, tol, max_iter, deadline, start) -> RelaxedSolution:
        lay, k = self.lay, self.kappa
        if lay.n == 0:
            return idle_solution(self.problem.n_evs, self.p_ref)
        self._set_modes(self.can_c if has_c is None else has_c, self.can_d if has_d is None else has_d)
        hc, hd, valid = self.hc, self.hd, np.ones(lay.M, bool)
        all_modes = hc.sum() == self.can_c.sum() and hd.sum() == self.can_d.sum()
        accuracy = ACCURATE_ENOUGH if all_modes else ROUNDING_ACCURACY
        tol = tol if all_modes else max(tol, ROUNDING_ACCURACY)
        flat = lambda ev, rows: np.concatenate([ev.ravel(), rows.ravel()]) if self.R else ev.ravel()  # noqa: E731
        mask = flat(np.stack([hc, hd, valid, valid, valid]), self.c_mask if self.R else None)
        m = int(mask.sum())
        h = flat(np.stack([np.zeros_like(self.lo), np.zeros_like(self.lo), -np.ones_like(self.lo),
                           self.lo - self.e0, self.e0 - self.hi]), self.c_h if self.R else None) * mask
        r_win = self.p_ref[lay.gidx]
        fc = k * (EPS_THROUGHPUT - 2 * r_win) * hc
        fd = k * (EPS_THROUGHPUT + 2 * r_win) * hd
        two_rho = 2 * RHO_RIDGE * k

        def hess(pc, pd):
            # (H + delta I) x: the objective's Hessian with the Newton matrix's primal regularisation
            g = (2 * k * self._aggregate(pc, pd))[lay.gidx]
            diag = two_rho + self.delta
            return (g + diag * pc) * hc, (-g + diag * pd) * hd

        def grad(pc, pd):
            P = self._aggregate(pc, pd)
            g = (2 * k * P)[lay.gidx]
            return (g + two_rho * pc) * hc + fc, (-g + two_rho * pd) * hd + fd

        scale = flat(np.stack([np.broadcast_to(self.Pc, hc.shape), np.broadcast_to(self.Pd, hc.shape),
                               np.ones(hc.shape), self.hi - self.lo + 1.0, self.hi - self.lo + 1.0]),
                     self.c_scale if self.R else None)
        if start is not None:
            # Warm start from an earlier answer (the last round with a few more modes fixed, or the previous plan
            # of a receding horizon): its point, pushed back into the interior by a small margin, and its
            # multipliers, kept away from zero.
            pc, pd = lay.to_layout(start.pc) * hc, lay.to_layout(start.pd) * hd
            z_rows = start.limit_multipliers
            if self.R and (z_rows is None or z_rows.shape != (2, self.R, self.T)):
                z_rows = np.ones((2, self.R, self.T))
            z = flat(np.stack([lay.to_layout(m) for m in start.multipliers]), z_rows)
            s = np.where(mask, np.maximum(self._G(pc, pd) - h, WARM_MARGIN * scale), 1.0)
            z = np.where(mask, np.maximum(z, WARM_MARGIN), 0.0)
        else:
            pc = 0.3 * self.Pc * hc
            pd = 0.3 * self.Pd * hd
            s = np.where(mask, np.maximum(self._G(pc, pd) - h, COLD_SLACK * scale), 1.0)
            z = np.where(mask, COLD_MULTIPLIER, 0.0)
        norm_h = 1.0 + float(np.max(np.abs(h)))
        norm_f = 1.0 + float(max(np.max(np.abs(fc)), np.max(np.abs(fd))))
        message = ""
        best = None  # (merit, pc, pd, z): near the optimum, Newton directions lose accuracy; keep the best point
        history = []  # best merit after each iteration
        proven = False
        best_primal = np.inf  # the best of max(primal residual, relative duality gap)
        # Divergence is judged on the primal residual and the duality gap relative to the largest objective met so
        # far: relative to the current one, the gap rises while the objective falls to 0 on a fleet that can follow
        # the reference exactly (measured: 100,000 EVs, 80 % V2G: 50 -> 6,400 in 13 iterations while the gap itself
        # fell 1,000-fold; taken for divergence, the solve stopped with nothing).
        obj_scale, best_guard = 0.0, np.inf
        primal_history = []
        bound = -np.inf  # the best proven bound of any iterate (see BOUND_FROM)
        sse_history, polished = [], False  # the relaxed SSE of the iterates since BOUND_FROM; see SETTLED
        ref_sq = float(self.p_ref @ self.p_ref)
        negligible = 1e-12 * max(ref_sq, 1.0)  # an SSE this small is 0 for the gap
        for it in range(1, max_iter + 1):
            gc_, gd_ = grad(pc, pd)
            GTz = self._GT(z)
            rdc, rdd = gc_ - GTz[0], gd_ - GTz[1]
            rp = (self._G(pc, pd) - h - s) * mask
            # (off the mask s = 1 and z = 0 throughout, and every direction's ds, dz is 0 there: see the updates)
            gap = float(s @ z)
            mu = gap / m
            P = self._aggregate(pc, pd)
            obj = k * (float(np.sum((P - self.p_ref) ** 2)) + EPS_THROUGHPUT * float(np.sum(pc + pd))
                       + RHO_RIDGE * float(np.sum(pc * pc + pd * pd)))
            res_p = float(np.max(np.abs(rp))) / norm_h
            res_d = float(max(np.max(np.abs(rdc)), np.max(np.abs(rdd)))) / norm_f
            primal = max(res_p, gap / (1.0 + abs(obj)))
            merit = max(primal, res_d)
            obj_scale = max(obj_scale, abs(obj))
            guard = max(res_p, gap / (1.0 + obj_scale))
            if not np.isfinite(merit) or guard > 100 * best_guard:
                break  # diverging (a noisy dual residual alone is not: see BOUND_FROM)
            best_guard = min(best_guard, guard)
            best_primal = min(best_primal, primal)
            primal_history.append(best_primal)
            if best is None or merit < best[0]:
                best = (merit, pc, pd, z)
            history.append(best[0])
            if merit < tol:
                break
            if primal < BOUND_FROM:
                bound = max(bound, self._dual_bound(pc, pd, z, h, mask))
                sse = float(np.sum((P - self.p_ref) ** 2))
                if not polished and self.polish_bound and all_modes and res_p < accuracy \
                        and sse - max(bound, 0.0) > PROVEN_GAP * sse + negligible and len(sse_history) >= 2 \
                        and max(abs(sse - v) for v in sse_history[-2:]) <= SETTLED * sse:
                    # the primal point has settled while the multipliers' bound is still noisy: prove it by LP now
                    polished = True
                    bound = max(bound, self._dual_bound(pc, pd, z, h, mask,
                                                        polish_to=0.5 * POLISH_LEFT * PROVEN_GAP * sse))
                sse_history.append(sse)
                if res_p < accuracy and sse - max(bound, 0.0) <= PROVEN_GAP * sse + negligible:
                    best = (min(merit, best[0]), pc, pd, z)  # this point, proven within PROVEN_GAP of the optimum
                    proven = True
                    break
                if len(primal_history) > STAGNATION_ITERATIONS \
                        and best_primal > 0.5 * primal_history[-1 - STAGNATION_ITERATIONS]:
                    message = f"interior point stalled at relative accuracy {best[0]:.1e} after {it} iterations"
                    break  # the primal side no longer moves: the best bound so far is what there is
            if best[0] < accuracy and len(history) > STAGNATION_ITERATIONS \
                    and best[0] > 0.5 * history[-1 - STAGNATION_ITERATIONS]:
                break  # accurate enough and no longer improving: more iterations would only burn time
            if (best[0] < STALL_BELOW or it > 4 * STALL_ITERATIONS) and len(history) > STALL_ITERATIONS \
                    and best[0] > 0.9 * history[-1 - STALL_ITERATIONS]:
                message = f"interior point stalled at relative accuracy {best[0]:.1e} after {it} iterations"
                break  # not accurate, and stuck: the bound below is still proven, from the best point's multipliers
            if deadline is not None and time.perf_counter() > deadline:
                message = f"time limit after {it - 1} interior-point iterations"
                break
            W = z / s
            z_safe = np.where(mask, z, 1.0)
            self._factor(W)

            def direction(rc, passes=REFINE_PASSES):
                # The Newton system in augmented form [H, -G^T; G, S/Z] [dx; dz] = [q1; q2], solved through the
                # reduced (H + G^T W G) dx = q1 + G^T W q2, then refined on the augmented system's residual (it stays
                # well scaled when barrier weights W span many orders of magnitude) until it is small against the
                # right-hand side (REFINE_TO, REFINE_MERIT), at most `passes` solves: the conditioning says when.
                q1c, q1d = -rdc, -rdd
                q2 = -rp - rc / z_safe  # (rp and rc are 0 off the mask)
                Wq2 = W * q2
                size = 0.0 if passes == 1 else max(REFINE_TO, REFINE_MERIT * merit) * max(
                    float(np.max(np.abs(q1c))), float(np.max(np.abs(q1d))), float(np.max(np.abs(Wq2))), 1e-300)
                dpc = dpd = dz = Gd = None  # Gd: G (dpc, dpd), summed over the passes as they are (G is linear)
                for _ in range(passes):
                    if dz is None:
                        GTv = self._GT(Wq2)
                        rhs_c, rhs_d, e2 = q1c + GTv[0], q1d + GTv[1], q2
                    else:
                        # Only the first block's residual is left to refine: each pass sets its dz = W (e2 - G dx),
                        # which zeroes the second block's, q2 - G dpc - (S/Z) dz, up to rounding (S/Z W = 1).
                        Hc, Hd = hess(dpc, dpd)
                        GTdz = self._GT(dz)
                        rhs_c, rhs_d = q1c - (Hc - GTdz[0]), q1d - (Hd - GTdz[1])
                        if max(float(np.max(np.abs(rhs_c))), float(np.max(np.abs(rhs_d)))) <= size:
                            break
                        e2 = 0.0
                    xc, xd = self._newton(rhs_c, rhs_d)
                    Gx = self._G(xc, xd)
                    ez = W * (e2 - Gx)
                    if dz is None:
                        dpc, dpd, dz, Gd = xc, xd, ez, Gx
                    else:
                        dpc, dpd, dz, Gd = dpc + xc, dpd + xd, dz + ez, Gd + Gx
                ds = (Gd + rp) * mask
                return dpc, dpd, ds, dz

            def max_step(ds, dz):
                # the longest step keeping s, z > 0: 1 / the largest relative decrease (s, z_safe > 0 everywhere)
                fall = -min(float(np.min(ds / s)), float(np.min(dz / z_safe)))
                return 1.0 if fall <= 1.0 else 1.0 / fall

            rc = s * z
            _, _, ds_a, dz_a = direction(rc, passes=1)  # the predictor only sets the centring: no refinement
            a_aff = max_step(ds_a, dz_a)
            mu_aff = float((s + a_aff * ds_a) @ (z + a_aff * dz_a)) / m
            sigma = (mu_aff / mu) ** 3
            rc = (s * z + ds_a * dz_a - sigma * mu) * mask
            dpc, dpd, ds, dz = direction(rc)
            step = min(1.0, 0.99 * max_step(ds, dz))
            pc, pd = pc + step * dpc, pd + step * dpd
            s = s + step * ds
            z = z + step * dz
        else:
            message = f"no convergence in {max_iter} interior-point iterations"
        merit, pc, pd, z = best
        converged = merit < accuracy or proven
        if converged:
            message = ""  # stopped short of `tol` but within `accuracy`: nothing for the user to act on
        elif not message.startswith(("time limit", "no convergence", "interior point stalled")):
            message = f"interior point stopped at relative accuracy {merit:.1e}"
        bound = max(bound, self._dual_bound(pc, pd, z, h, mask))
        P = self._aggregate(pc, pd)
        sse = float(np.sum((P - self.p_ref) ** 2))
        # (the bound of a relaxation with fixed modes bounds nothing the user is shown, and an SSE the dispatch
        # counts as following the reference exactly needs no better one: measured, 200 EVs following a reference
        # to 1e-5 kW^2, the LP doubled the dispatch's time to prove a bound of 0 against 0)
        if self.polish_bound and all_modes and sse - max(bound, 0.0) > PROVEN_GAP * sse + negligible \
                and sse > NEGLIGIBLE_SSE * ref_sq:
            bound = max(bound, self._dual_bound(pc, pd, z, h, mask, polish_to=POLISH_LEFT * PROVEN_GAP * sse))
            if message and bound > 0:
                message += f"; its answer is within {100 * (sse - bound) / bound:.2g} % of the proven bound"
        full = lambda a: lay.to_full(a, self.problem.n_evs, self.T)  # noqa: E731
        z_ev, z_rows = self._split(z)
        return RelaxedSolution(
            pc=full(pc), pd=full(pd), lower_bound=bound, iterations=it, converged=converged, message=message,
            multipliers=np.stack([full(m) for m in z_ev]), limit_multipliers=z_rows.copy() if self.R else None,
        )

    def _dual_bound(self, pc, pd, z, h, mask, polish_to: float | None = None) -> float:
        """A proven lower bound on min ||sum p - p_ref||^2 over the relaxed set, from the multipliers z.

        Weak duality: for z' >= 0 and y with G^T z' = J^T y, the bound is h^T z' - |y|^2/4 - y^T p_ref. Take
        y = 2 (P - p_ref), the limit rows' multipliers from z and, also from z, each EV's energy price w (its energy
        rows' multipliers summed from each step on); given those, the best multipliers of the other rows follow in
        closed form (see _ev_duals), which absorbs exactly what the tie-breakers and the dual residual leave over.
        The bound is then a sum over EVs of what each EV's prices prove, and any prices prove something: with
        `polish_to` (kW^2), the EVs whose prices prove least against their own part of the primal point, worst
        first, until what the others fall short by is at most that, get theirs from an exact LP instead (see
        _lp_energy_prices; at most POLISH_EV_STEPS), and each EV keeps the better of the two.
        """
        lay = self.lay
        P = self._aggregate(pc, pd)
        y = 2 * (P - self.p_ref)
        zb = np.maximum(z, 0.0) * mask / self.kappa
        v, vr = self._split(zb)
        w = lay.rcumsum(v[3] - v[4])
        price = y[lay.gidx]  # each EV-step's price of net charging: the aggregate's and its limit rows'
        if self.R:
            price = price - self._spread(np.vstack([np.zeros((1, self.T)), vr[0] - vr[1]]))
        per_ev = self._ev_duals(price, w)
        if polish_to is not None:
            # an EV's part of the primal point costs at least what any prices prove for it: the difference says
            # which EVs' prices are worth an exact LP
            own = np.bincount(lay.ev, weights=price * (pc * self.hc - pd * self.hd), minlength=lay.n)
            short = np.maximum(own - per_ev, 0.0)
            order = np.argsort(-short)
            left = float(short.sum()) - np.cumsum(short[order])  # what the others fall short by
            k = int(np.searchsorted(-left, -polish_to)) + 1  # the first prefix leaving at most polish_to
            if left.size and short[order[0]] > 0:
                evs = order[:k][np.cumsum(lay.length[order[:k]]) <= POLISH_EV_STEPS]
                for w_lp in self._lp_energy_prices(price, w, evs):
                    per_ev = np.maximum(per_ev, self._ev_duals(price, w_lp))
        value = float(np.sum(per_ev))
        if self.R:
            _, h_rows = self._split(h)
            value += float(np.sum(h_rows * vr))
        return value - 0.25 * float(y @ y) - float(y @ self.p_ref)

    def _ev_duals(self, price, w) -> np.ndarray:
        """(n,) what energy prices w (M,) prove for each EV against the step prices `price` (M,): the least over its
        relaxed set of sum price * (pc - pd) is at least

            sum_j -max(0, (a w - price) Pc, (price - b w) Pd)  +  sum_j min(d Lo, d Hi),   d_j = w_j - w_{j+1},

        (the hull row's best multiplier, and the energy rows' from the change of w: Lo, Hi are the energy bounds
        relative to the arrival energy). Weak duality per EV, valid for any w."""
        lay = self.lay
        alpha = (price - self.a * w) * self.hc
        beta = (self.b * w - price) * self.hd
        z2 = np.maximum(np.maximum(-alpha * self.Pc, -beta * self.Pd), 0.0)
        d = w - lay.after(w)
        energy = np.minimum(d * (self.lo - self.e0), d * (self.hi - self.e0))
        return np.bincount(lay.ev, weights=energy - z2, minlength=lay.n)

    def _lp_energy_prices(self, price, w, evs) -> list[np.ndarray]:
        """Energy prices for the EVs `evs` from an exact LP (HiGHS) of their least cost sum price * (pc - pd)
        over their relaxed sets: the duals of their energy balance rows, with either sign convention (each is
        checked by _ev_duals; whichever proves more is kept). Returns [] if HiGHS gives no answer."""
        lay = self.lay
        rows = np.flatnonzero(np.isin(lay.ev, evs))
        m = rows.size
        if m == 0:
            return []
        local = np.full(lay.M, -1)
        local[rows] = np.arange(m)
        first = ~lay.has_prev[rows]
        before = np.flatnonzero(~first)
        eye = sp.identity(m, format="csr")
        prev = sp.csr_matrix((np.ones(before.size), (before, local[lay.prev[rows[before]]])), shape=(m, m))
        # e_j - e_{j-1} - a pc_j + b pd_j = e0 at an EV's first step, 0 after; pc/Pc + pd/Pd <= 1
        balance = sp.hstack([-sp.diags(self.a[rows]), sp.diags(self.b[rows]), eye - prev]).tocsr()
        hull = sp.hstack([sp.diags(self.ic[rows]), sp.diags(self.id[rows]), sp.csr_matrix((m, m))]).tocsr()
        bounds = np.concatenate([np.c_[np.zeros(m), self.Pc[rows] * self.hc[rows]],
                                 np.c_[np.zeros(m), self.Pd[rows] * self.hd[rows]],
                                 np.c_[self.lo[rows], self.hi[rows]]])
        cost = np.concatenate([price[rows] * self.hc[rows], -price[rows] * self.hd[rows], np.zeros(m)])
        try:
            res = linprog(cost, A_ub=hull, b_ub=np.ones(m), A_eq=balance, b_eq=np.where(first, self.e0[rows], 0.0),
                          bounds=bounds, method="highs")
        except ValueError:
            return []
        if res.status != 0 or res.eqlin is None:
            return []
        out = []
        for sign in (1.0, -1.0):
            w_lp = w.copy()
            w_lp[rows] = sign * np.asarray(res.eqlin.marginals)
            out.append(w_lp)
        return out


def solve_dcls(problem: Problem, p_ref_kw: np.ndarray, *, time_limit_s: float | None = None,
               start: RelaxedSolution | None = None, applied_steps: int | None = None):
    """DC-LS dispatch: the decomposed relaxation, then disjunctive cuts until integer-feasible. `start`: a relaxed
    answer on this problem's grid to warm-start from (see `shifted`); `applied_steps`: see integer.cut_and_fix."""
    # In a receding horizon (applied_steps) the plan's bound is not what the plan is judged on: not polished.
    relaxation = RelaxedQP(problem, p_ref_kw, polish_bound=applied_steps is None)
    return dispatch_by_cuts(problem, p_ref_kw, relaxation, time_limit_s, start=start, applied_steps=applied_steps)


def shifted(solution: RelaxedSolution, k: int, n_steps: int) -> RelaxedSolution:
    """`solution` seen from k steps later on a grid of n_steps: the start for re-planning a receding horizon
    (the previous plan's remaining steps, nothing planned beyond them)."""

    def shift(a):
        out = np.zeros(a.shape[:-1] + (n_steps,))
        rest = a[..., k:k + n_steps]
        out[..., :rest.shape[-1]] = rest
        return out

    rows = solution.limit_multipliers
    return RelaxedSolution(pc=shift(solution.pc), pd=shift(solution.pd), lower_bound=-np.inf, iterations=0,
                           converged=False, multipliers=shift(solution.multipliers),
                           limit_multipliers=None if rows is None else shift(rows))
