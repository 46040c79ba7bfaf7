"""From a relaxed optimum to an integer-feasible dispatch: disjunctive cuts by mode fixing.

An EV-step that charges and discharges at once in the relaxed optimum lies inside its disjunction's hull.
It is cut off by restricting it to one side of the disjunction (the side of its net power); the relaxation is
solved again with the restriction, so that other EVs and steps take up what it gave, until no EV-step is left
in two modes. Every round's answer is feasible for the relaxation of the restricted problem, and the last one
is integer-feasible; `make_feasible` then removes solver-tolerance dust only.
"""
from __future__ import annotations

import time

import numpy as np

from .problem import Problem, make_feasible

# A relaxed EV-step counts as "in both modes" above this (kW); below it, netting moves energy by < 1e-4 kWh.
CONFLICT_KW = 1e-4


def cut_and_fix(problem: Problem, solve_relaxed, max_rounds: int = 50, deadline: float | None = None):
    """Run `solve_relaxed(has_c, has_d) -> RelaxedSolution` in rounds of mode fixing.

    Returns (pc, pd, first_solution, rounds, message)."""
    plugged = problem.plugged
    has_c = plugged & (problem.pc_max[:, None] > 0)
    has_d = plugged & (problem.pd_max[:, None] > 0)
    first = None
    message = ""
    for rounds in range(1, max_rounds + 1):
        sol = solve_relaxed(has_c, has_d)
        first = first or sol
        conflict = (sol.pc > CONFLICT_KW) & (sol.pd > CONFLICT_KW)
        if not conflict.any():
            break
        net = sol.pc - sol.pd
        has_d = has_d & ~(conflict & (net >= 0))
        has_c = has_c & ~(conflict & (net < 0))
        if deadline is not None and time.perf_counter() > deadline:
            message = f"time limit in mode-fixing round {rounds}; the rest netted out"
            break
    else:
        message = f"{max_rounds} mode-fixing rounds left EV-steps in two modes; netted out"
    pc, pd = make_feasible(problem, sol.pc, sol.pd)
    return pc, pd, first, rounds, message
