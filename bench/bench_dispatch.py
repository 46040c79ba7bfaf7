"""Dispatch benchmark: every method's SSE, gap to the lower bound, time and peak memory, for 200 / 2,000 /
10,000 EVs, one day at 15-minute steps, in the normal (regulation) and the surplus regime.

    python bench/bench_dispatch.py                  # the README's table (several minutes)
    python bench/bench_dispatch.py --sizes 200 --repeats 1 --methods dcls,dchr

Each (method, size, regime, run) runs in a fresh process so that its peak resident memory is its own; the
table shows medians over --repeats runs. The lower bound is the best proven one any method reported (the
hull relaxation's dual, or SCIP's). `exact` (SCIP) runs only up to --exact-max EVs, with --exact-limit seconds.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

METHODS = ("dcls", "dchr", "exact", "uncontrolled", "edf", "round_robin")


def one(method: str, n: int, kind: str, seed: int, time_limit: float | None) -> dict:
    import numpy as np

    from evagg.simulators.dispatch import dispatch
    from evagg.simulators.synthetic import synthetic_fleet, synthetic_reference

    fleet = synthetic_fleet(n, seed=seed, v2g_share=0.5)
    ref = synthetic_reference(fleet, seed=seed, kind=kind)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    res = dispatch(fleet, ref, method, time_limit_s=time_limit)
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "method": method, "n": n, "kind": kind, "seed": seed, "time_s": elapsed, "sse": res.sse,
        "lower_bound": res.lower_bound, "status": res.status, "message": res.message,
        "violations": int(sum(res.violations.values())),
        "peak_rss_mb": peak / 1024, "rss_before_mb": base_rss / 1024,
        "conflict_free": bool(np.all((res.pc <= 1e-9) | (res.pd <= 1e-9))),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="200,2000,10000")
    ap.add_argument("--kinds", default="regulation,surplus")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--exact-max", type=int, default=200)
    ap.add_argument("--exact-limit", type=float, default=120.0)
    ap.add_argument("--json", help="also write all runs to this JSON file")
    ap.add_argument("--one", nargs=4, metavar=("METHOD", "N", "KIND", "SEED"), help=argparse.SUPPRESS)
    ap.add_argument("--time-limit", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        m, n, kind, seed = args.one
        print(json.dumps(one(m, int(n), kind, int(seed), args.time_limit)))
        return 0

    runs = []
    for n in map(int, args.sizes.split(",")):
        for kind in args.kinds.split(","):
            for method in args.methods.split(","):
                if method == "exact" and n > args.exact_max:
                    continue
                repeats = 1 if method == "exact" else args.repeats
                for _ in range(repeats):
                    cmd = [sys.executable, __file__, "--one", method, str(n), kind, str(args.seed)]
                    if method == "exact":
                        cmd += ["--time-limit", str(args.exact_limit)]
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                    runs.append(json.loads(out.strip().splitlines()[-1]))
                    r = runs[-1]
                    print(f"  {method:12s} n={n:6d} {kind:10s} {r['time_s']:8.2f} s  sse={r['sse']:.6g}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}, "
          f"{__import__('os').cpu_count()} cores")
    print("| EVs | regime | method | SSE [kW^2] | gap to bound | time [s] (median) | peak RSS [MB] | violations |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for n in sorted({r["n"] for r in runs}):
        for kind in args.kinds.split(","):
            group = [r for r in runs if r["n"] == n and r["kind"] == kind]
            bounds = [r["lower_bound"] for r in group if r["lower_bound"] is not None]
            bound = max(bounds) if bounds else None
            for method in args.methods.split(","):
                rs = [r for r in group if r["method"] == method]
                if not rs:
                    continue
                sse = statistics.median(r["sse"] for r in rs)
                gap = f"{(sse - bound) / bound:+.3%}" if bound else "n/a"
                t = statistics.median(r["time_s"] for r in rs)
                rss = max(r["peak_rss_mb"] for r in rs)
                viol = max(r["violations"] for r in rs)
                # a method that handed its problem to another says so in its row (the message follows the table)
                label = method + (" (fallback)" if any(r["status"] == "fallback" for r in rs) else "")
                print(f"| {n} | {kind} | {label} | {sse:.6g} | {gap} | {t:.2f} | {rss:.0f} | {viol} |")
            if bound:
                print(f"| {n} | {kind} | *lower bound* | {bound:.6g} | | | | |")
    said = set()
    for r in runs:
        key = (r["method"], r["n"], r["kind"])
        if r["status"] == "fallback" and key not in said:  # once per row: its repeats fail alike
            said.add(key)
            print(f"\n{r['method']}, {r['n']} EVs, {r['kind']}: {r.get('message', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
