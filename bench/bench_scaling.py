"""What scales how on this machine: (1) several aggregators in their own processes (`evagg run remote`: mosaik
steps them concurrently) against the same aggregators in mosaik's process (`evagg run feeder_day`); (2) a sweep
of runs on 1 against 2 local worker processes (`evagg sweep --workers N`).

    flock /work/bench.lock python bench/bench_scaling.py --repeats 3

(1) is timed from summary.json: the stepping (timing.wall_s - timing.setup_s: world.run) and the whole run; the
remote set-up includes starting the aggregator processes. (2) is the wall time of the whole `evagg sweep` command
(worker start-up included, as a user sees it). Prints one JSON line per case and a last one with the medians and
the ratios (in-process / remote, 1 worker / 2 workers: above 1, the second is faster). Loopback only.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def evagg(*args) -> list[str]:
    exe = BIN / "evagg"
    return [str(exe), *map(str, args)] if exe.exists() else [sys.executable, "-m", "evagg.scenarios", *map(str, args)]


def one_run(scenario: str, a, where: Path) -> dict:
    out = where / f"{scenario}-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    subprocess.run(evagg("run", scenario, "--evs", a.evs, "--aggregators", a.aggregators, "--steps", a.steps,
                         "--method", a.method, "--grid", a.grid, "--no-plots", "--no-progress", "--out", out),
                   check=True, stdout=subprocess.DEVNULL)
    command_s = time.perf_counter() - t0
    tm = json.loads((out / "summary.json").read_text())["timing"]
    shutil.rmtree(out)
    return {"case": scenario, "stepping_s": round(tm["wall_s"] - tm["setup_s"], 3), "setup_s": tm["setup_s"],
            "solve_s": tm["solve_time_s"], "command_s": round(command_s, 3)}


def one_sweep(workers: int, a, where: Path) -> dict:
    out = where / f"sweep-{workers}-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    subprocess.run(evagg("sweep", "--evs", a.sweep_evs, "--seeds", "1,2", "--steps", a.sweep_steps, "--grids",
                         a.grid, "--workers", workers, "--no-plots", "--out", out),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    command_s = time.perf_counter() - t0
    shutil.rmtree(out)
    return {"case": f"sweep_{workers}_workers", "command_s": round(command_s, 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # (the MV feeder: 400 EVs overload the default LV feeder's 250 kVA transformer until its power flow diverges
    # in the evening)
    ap.add_argument("--grid", default="1-MV-rural--0-sw")
    ap.add_argument("--evs", type=int, default=1000)
    ap.add_argument("--aggregators", type=int, default=2)
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--method", default="dcls")
    ap.add_argument("--sweep-evs", default="20,60", help="the sweep's --evs (x 2 seeds)")
    ap.add_argument("--sweep-steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    where = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    results: dict[str, list[dict]] = {}
    try:
        for _ in range(a.repeats):  # interleaved: a drift of the machine's load hits both cases alike
            for case in (lambda: one_run("feeder_day", a, where), lambda: one_run("remote", a, where),
                         lambda: one_sweep(1, a, where), lambda: one_sweep(2, a, where)):
                r = case()
                results.setdefault(r["case"], []).append(r)
                print(json.dumps(r), flush=True)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    med = {case: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "case"}
           for case, rs in results.items()}
    print(json.dumps({
        "grid": a.grid, "evs": a.evs, "aggregators": a.aggregators, "steps": a.steps, "method": a.method,
        "sweep": {"evs": a.sweep_evs, "seeds": "1,2", "steps": a.sweep_steps}, "repeats": a.repeats,
        "cpus": os.cpu_count(), "medians": med,
        "stepping_in_process_over_remote": round(med["feeder_day"]["stepping_s"] / med["remote"]["stepping_s"], 3),
        "command_in_process_over_remote": round(med["feeder_day"]["command_s"] / med["remote"]["command_s"], 3),
        "sweep_1_over_2_workers": round(med["sweep_1_workers"]["command_s"] / med["sweep_2_workers"]["command_s"], 3),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
