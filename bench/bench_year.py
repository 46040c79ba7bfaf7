"""A year on a feeder: `evagg run` on simbench 1-MV-rural--0-sw with 1,000 EVs (dcls) and the feeder alone
(no_evs), 15-minute steps, its results in Parquet (written as the run goes) and its summary and plots made
streaming, as a user runs it.

    flock /work/bench.lock python bench/bench_year.py --days 365 --method no_evs
    flock /work/bench.lock python bench/bench_year.py --days 365 --steps 672 --method dcls   # a week, extrapolated

Each run is a child process (so that its peak RSS is its own). Prints one JSON line per run: wall time of the
whole run (inputs, simulation, summary, plots), peak RSS, the steps simulated, the wall time per step and the
per-step costs measured inside the run: the grid's power flow (SimbenchGridSim.run_power_flow), the
aggregators' steps (dispatch), the results collector, and what is left of world.run (mosaik's own overhead),
plus the year extrapolated linearly from the measured steps when fewer than a year's were run (`--steps`), the first
power flow's one-off set-up (and numba's compilation, if installed) counted once.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

YEAR_STEPS = 365 * 96

CHILD = r"""
import json, sys, time
from collections import defaultdict
from evagg.plugin import aggregator_sim, collector_sim, pandapower_grid
from evagg.scenarios import feeder_day

cost = defaultdict(list)

def timed(cls, name, key):
    orig = getattr(cls, name)
    def wrapper(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return orig(self, *a, **k)
        finally:
            cost[key].append(time.perf_counter() - t0)
    setattr(cls, name, wrapper)

timed(pandapower_grid.SimbenchGridSim, "run_power_flow", "power_flow")
timed(pandapower_grid.SimbenchGridSim, "step", "grid_step")
timed(aggregator_sim.AggregatorSim, "step", "dispatch")
timed(collector_sim.CollectorSim, "step", "collector")
# the stepping: the scenario runs its world under supervised_run (mosaik's World.run is not called)
_run = feeder_day.supervised_run
def supervised_run(*a, **k):
    t0 = time.perf_counter()
    try:
        return _run(*a, **k)
    finally:
        cost["world_run"].append(time.perf_counter() - t0)
feeder_day.supervised_run = supervised_run
opts = json.loads(sys.argv[1])
t0 = time.perf_counter()
summary = feeder_day.main(**opts)
wall = time.perf_counter() - t0
steps = summary["figures"]["steps"]
ms = lambda key: 1000 * sum(cost[key]) / steps
grid_other = sum(cost["grid_step"]) - sum(cost["power_flow"])
own = sum(cost["grid_step"]) + sum(cost["dispatch"]) + sum(cost["collector"])
print(json.dumps({"wall_s": wall, "steps": steps, "world_run_s": sum(cost["world_run"]),
                  "power_flow_ms": ms("power_flow"), "grid_other_ms": 1000 * grid_other / steps,
                  # a step's power flow once set up (the first one builds pandapower's set-up, and JIT-compiles
                  # with numba installed: seconds that a year amortises and a day does not)
                  "power_flow_median_ms": 1000 * sorted(cost["power_flow"])[len(cost["power_flow"]) // 2],
                  "power_flow_first_ms": 1000 * cost["power_flow"][0],
                  "dispatch_ms": ms("dispatch"), "collector_ms": ms("collector"),
                  "mosaik_ms": 1000 * (sum(cost["world_run"]) - own) / steps,
                  "after_run_s": wall - sum(cost["world_run"]), "results": summary["options"]["results_format"]}))
"""


def run_child(opts: dict) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(opts)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"the run failed:\n{proc.stderr[-3000:]}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # ru_maxrss of the children is the largest child so far: runs go from small to large in one call, or one each
    result["peak_rss_mb"] = round(max(rss, before) / 1024, 1)
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--steps", type=int, default=None, help="simulate only the first S steps (then extrapolated)")
    ap.add_argument("--method", default="dcls", help="dcls, no_evs, ... (evagg run --method)")
    ap.add_argument("--evs", type=int, default=1000)
    ap.add_argument("--grid", default="1-MV-rural--0-sw")
    ap.add_argument("--start", default="2026-01-01T00:00:00")
    ap.add_argument("--results-format", default="parquet")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-year-") as tmp:
        opts = {"grid": args.grid, "evs": args.evs, "method": args.method, "days": args.days, "steps": args.steps,
                "start": args.start, "results_format": args.results_format, "plots": not args.no_plots,
                "progress": False, "out": f"{tmp}/run"}
        t0 = time.perf_counter()
        result = run_child(opts)
        result["total_s"] = time.perf_counter() - t0
    result.update(method=args.method, evs=args.evs, grid=args.grid, days=args.days)
    per_step_s = result["world_run_s"] / result["steps"]
    result["wall_per_step_ms"] = 1000 * per_step_s
    if result["steps"] < YEAR_STEPS:
        # the first power flow's set-up (and numba's compilation) happens once a run, not once a step
        once_s = (result["power_flow_first_ms"] - result["power_flow_median_ms"]) / 1000
        steady_s = (result["world_run_s"] - once_s) / result["steps"]
        result["year_extrapolated_h"] = (steady_s * YEAR_STEPS + once_s + result["after_run_s"]) / 3600
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()}))


if __name__ == "__main__":
    main()
