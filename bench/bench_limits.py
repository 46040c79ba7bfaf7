"""What grid limits cost the engine: dcls with and without hard limits on the fleet and on bus groups.

    python bench/bench_limits.py [--sizes 200 2000] [--repeats 3]

One day at 15-minute steps, synthetic fleets (half V2G, seed 1), regulation signal. The EVs are spread over
`--groups` buses; the limits are the unlimited dispatch's peaks cut to 70 % (fleet) and 60 % (each bus group),
so they bind. Each size runs unlimited and limited `--repeats` times in this process, alternating, and reports
medians and the ratio limited / unlimited, the gap to the limited problem's proven bound, and the departure
need the limits took away (needs_lowered_kwh: 0 when the limits and needs fit together).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from evagg.simulators.dispatch import dispatch
from evagg.simulators.limits import Limits, solver_limits
from evagg.simulators.synthetic import synthetic_fleet, synthetic_reference

START = "2026-06-01T00:00:00"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    ap.add_argument("--groups", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    print("| EVs | bus groups | unlimited [s] | limited [s] | ratio | gap to bound (limited) | limit rows binding "
          "| needs lowered [kWh] | violations |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in a.sizes:
        fleet = synthetic_fleet(n, seed=1, start=START)
        ref = synthetic_reference(fleet, start=START, step_s=900, n_steps=96, seed=1)
        free = dispatch(fleet, ref, "dcls")
        bus = np.arange(n) % a.groups
        net = free.pc - free.pd
        groups = {f"bus {g}": (bus == g, None, 0.6 * net[bus == g].sum(axis=0).max()) for g in range(a.groups)}
        limits = Limits.build(n, 96, p_max_kw=0.7 * free.aggregate_kw.max(), groups=groups)
        t_free, t_lim, res = [], [], None
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            dispatch(fleet, ref, "dcls")
            t_free.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            res = dispatch(fleet, ref, "dcls", limits=limits)
            t_lim.append(time.perf_counter() - t0)
        mf, ml = statistics.median(t_free), statistics.median(t_lim)
        net_l = limits.net_kw(res.pc, res.pd)
        aimed = solver_limits(limits, res.problem)  # the solvers stay a hair inside each bound
        binding = int(np.sum(np.any(net_l >= aimed.p_max_kw - 1e-2, axis=1)))
        print(f"| {n} | {a.groups} | {mf:.2f} | {ml:.2f} | {ml / mf:.1f}x | {100 * res.gap_to_bound:+.3f}% | "
              f"{binding} of {limits.n_rows} | {res.needs_lowered_kwh:.3f} | {sum(res.violations.values())} |",
              flush=True)


if __name__ == "__main__":
    main()
