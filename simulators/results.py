"""What the dispatch methods return, on the engine's bottom floor: every method module imports these, and none
of them imports the orchestrator (`dispatch.py`) back.

Arrays are (N, T): N sessions, T steps; powers in kW, SSE and bounds in kW^2 (see docs/model.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RelaxedSolution:
    """An answer of the hull relaxation (dcls's interior point or dchr's PIQP) for some mode restrictions."""

    pc: np.ndarray  # (N, T) charge power, kW
    pd: np.ndarray  # (N, T) discharge power, kW
    lower_bound: float  # kW^2, proven for the relaxation with these mode restrictions
    iterations: int
    converged: bool
    message: str = ""
    multipliers: np.ndarray | None = None  # (5, N, T) of dcls's five row kinds, for warm starts
    limit_multipliers: np.ndarray | None = None  # (2, R, T) of the grid limit rows (lower, upper), if any


def idle_solution(n_evs: int, p_ref: np.ndarray) -> RelaxedSolution:
    """No EV can draw or inject power in this horizon: the dispatch is all zeros and its SSE is optimal."""
    p_ref = np.asarray(p_ref, dtype=float)
    zeros = np.zeros((n_evs, len(p_ref)))
    return RelaxedSolution(pc=zeros, pd=zeros.copy(), lower_bound=float(p_ref @ p_ref), iterations=0, converged=True)


@dataclass
class MethodOutput:
    """What a method returns: (N, T) charge and discharge powers in kW, and how it got there."""

    pc: np.ndarray
    pd: np.ndarray
    status: str = "optimal"  # optimal | feasible | time_limit | fallback | failed
    message: str = ""
    iterations: int = 0  # interior-point (or solver) iterations, summed over the relaxed solves
    lower_bound: float | None = None  # kW^2, a proven lower bound on the tracking SSE of any feasible dispatch
    mip_gap: float | None = None  # relative gap proven by the exact solver
    relaxed: RelaxedSolution | None = None  # the relaxation's answer, to warm-start a re-plan (see dcls.shifted)
    relaxed_solves: int = 0  # how many times the relaxation was solved (first solve and mode-fixing rounds)


def tracking_sse(pc: np.ndarray, pd: np.ndarray, p_ref: np.ndarray) -> float:
    """sum_t (sum_i (pc - pd) - p_ref)^2, kW^2."""
    return float(np.sum(((pc - pd).sum(axis=0) - p_ref) ** 2))
