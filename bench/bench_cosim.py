"""Co-simulation cost with and without EVs: a simbench grid (SimbenchGridSim, profiles at the simulated time) for
one day of 15-minute steps, alone and with an aggregator of N synthetic EVs spread over the grid's load buses,
following a synthetic regulation signal (ReferenceSim), each EVBus feeding its grid bus.

    python bench/bench_cosim.py --n-evs 1000 --method dchr

Prints one JSON line: wall times of the two runs (world.run only, set-up apart) and their ratio, the aggregator's
re-dispatch time per step, and the tracking RMSE. All in one process (python starters); loopback only.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from evagg.simulators.aggregator import DEFAULT_HORIZON

SIM_CONFIG = {
    "Grid": {"python": "evagg.plugin:SimbenchGridSim"},
    "EVAgg": {"python": "evagg.plugin:AggregatorSim"},
    "Ref": {"python": "evagg.plugin:ReferenceSim"},
    "Out": {"python": "mosaik.basic_simulators.output_simulator:OutputSimulator"},
}


def run(grid_code: str, start: str, steps: int, step_s: int, n_evs: int, method: str, horizon: int, seed: int):
    import mosaik

    from evagg.plugin import connect_buses

    t_setup = time.perf_counter()
    world = mosaik.World(SIM_CONFIG, debug=False, mosaik_config={"start_timeout": 120})
    try:
        grid = world.start("Grid", step_size=step_s, start_date=start).Grid(simbench=grid_code)
        outsim = world.start("Out")
        out = outsim.Dict()
        load_buses = sorted({int(c.extra_info["bus"]) for c in grid.children if c.type == "Load"})
        agg = None
        if n_evs:
            agg = world.start("EVAgg", step_size=step_s, start_date=start).Aggregator(
                n_evs=n_evs, seed=seed, buses=load_buses, method=method, horizon=horizon)
            connect_buses(world, agg, grid)
            ref = world.start("Ref", step_size=step_s, start_date=start).Signal(
                kind="regulation", n_evs=n_evs, seed=seed, until=steps * step_s)
            world.connect(ref, agg, "P_ref[MW]")
            world.connect(agg, out, "P[MW]", "tracking_error[MW]", "solve_time[s]")
        ext = [c for c in grid.children if c.type == "ExternalGrid"][0]
        world.connect(ext, out, "P[MW]")
        t_setup = time.perf_counter() - t_setup
        t0 = time.perf_counter()
        world.run(until=steps * step_s, print_progress=False, shutdown=False)
        elapsed = time.perf_counter() - t0
        data = outsim.get_dict(out.eid)
    finally:
        world.shutdown()
    result = {"run_s": elapsed, "setup_s": t_setup}
    if agg is not None:
        full = agg.full_id
        solve = np.array([data[t]["solve_time[s]"][full] for t in sorted(data)])
        err = np.array([data[t]["tracking_error[MW]"][full] for t in sorted(data)], dtype=float)
        result.update(solve_mean_s=float(solve.mean()), solve_max_s=float(solve.max()),
                      solve_total_s=float(solve.sum()), rmse_kw=float(np.sqrt(np.mean(err ** 2)) * 1000))
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="1-MV-rural--0-sw")
    ap.add_argument("--start", default="2026-06-01T00:00:00")
    ap.add_argument("--steps", type=int, default=96)
    ap.add_argument("--step", type=int, default=900, help="seconds")
    ap.add_argument("--n-evs", type=int, default=1000)
    ap.add_argument("--method", default="dcls")
    ap.add_argument("--horizon", type=int, default=DEFAULT_HORIZON,
                    help=f"steps planned ahead (default: the aggregator's, {DEFAULT_HORIZON})")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    base = run(a.grid, a.start, a.steps, a.step, 0, a.method, a.horizon, a.seed)
    with_evs = run(a.grid, a.start, a.steps, a.step, a.n_evs, a.method, a.horizon, a.seed)
    print(json.dumps({"grid": a.grid, "steps": a.steps, "step_s": a.step, "n_evs": a.n_evs, "method": a.method,
                      "horizon": a.horizon, "without_evs": base, "with_evs": with_evs,
                      "ratio": with_evs["run_s"] / base["run_s"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
