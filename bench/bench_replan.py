"""Receding-horizon re-plan: cost of re-solving the same problem from step k on, warm-started from the previous
plan (dcls.shifted), against a cold solve of the same problem, in the same process.

    python bench/bench_replan.py --sizes 200,2000 --steps 1,8,32
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from evagg.simulators.dcls import shifted
from evagg.simulators.dispatch import dispatch
from evagg.simulators.problem import Problem
from evagg.simulators.reference import Reference
from evagg.simulators.synthetic import synthetic_fleet, synthetic_reference


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="200,2000")
    ap.add_argument("--kinds", default="regulation,surplus")
    ap.add_argument("--steps", default="1,8,32", help="re-plan k steps after the first plan")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    print("| EVs | regime | k | cold [s] | warm [s] | warm / cold | SSE warm / cold |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n in map(int, args.sizes.split(",")):
        for kind in args.kinds.split(","):
            fleet = synthetic_fleet(n, seed=1)
            ref = synthetic_reference(fleet, seed=1, kind=kind)
            first = dispatch(fleet, ref, "dcls")
            for k in map(int, args.steps.split(",")):
                T = ref.n_steps - k
                e_k = np.where(first.problem.first < k, first.energy[:, k - 1], fleet.energy_initial_kwh)
                later = Reference(ref.start + ref.step * k, ref.step, ref.p_ref_kw[k:])
                problem = Problem.build(fleet, later.start, later.step, T, energy_initial_kwh=e_k)
                cold_t, warm_t = [], []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    cold = dispatch(fleet, later, "dcls", problem=problem)
                    cold_t.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    warm = dispatch(fleet, later, "dcls", problem=problem, warm_start=shifted(first.relaxed, k, T))
                    warm_t.append(time.perf_counter() - t0)
                c, w = statistics.median(cold_t), statistics.median(warm_t)
                print(f"| {n} | {kind} | {k} | {c:.2f} | {w:.2f} | {w / c:.2f} | {warm.sse / cold.sse:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
