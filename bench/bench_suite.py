"""The case suite benchmark: the engine on fleets of a generator of our own (bench/cases.py), against the time
it takes on the project's own synthetic fleet of the same size, V2G share and regime.

    python bench/bench_suite.py                                   # all cases, 200 / 2,000 / 10,000 / 100,000 EVs
    python bench/bench_suite.py --sizes 200 --repeats 1 --cases v2g0,surplus,other_generator --markdown
    python bench/bench_suite.py --sizes 2000 --seeds 1,2,3 --json suite.json --max-time 120

Each (case, size, seed, repeat) runs in a fresh process, so that its peak resident memory (ru_maxrss of that
process, including the Python interpreter with numpy/scipy/pandas, about 110 MB) is its own. The baseline runs the
same way, once per (size, seed, repeat) for each distinct (V2G share, regime) among the cases. The table shows, per
(case, size, method), medians over seeds x repeats of what finished: relaxed solves ("-" while the engine does not
report them), interior-point iterations, dispatch time (fleet and problem built, solved, checked), the time ratio
case / baseline (of the medians), SSE, the lower bound, the gap to it (absolute, kW^2, and relative to the bound),
the peak RSS (largest of the runs) and violations (largest). A run over --max-time seconds is stopped and counted
as a timeout (its later repeats are skipped); a crashed run is counted as a crash; neither enters the medians.
With --json every run is written to the file as soon as it finishes; Ctrl-C prints the table of what finished.

Gap: a bound below zero proves nothing more than zero does (SSE >= 0), so it is taken as 0; the relative gap is
(SSE - bound) / bound and is left out ("n/a") where the bound is 0 or the SSE is one the engine counts as exact
tracking (at most 1e-6 of the reference's square sum; the absolute gap is still shown). A negative gap means the SSE is below the bound
by the solvers' tolerance.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script it is there; imported (by the tests) it is not
    sys.path.insert(0, str(HERE))

import cases  # noqa: E402  (bench/cases.py, the generator)
from evagg.simulators.integer import NEGLIGIBLE_SSE  # noqa: E402

# The time targets for dcls, seconds per fleet size.
TIME_TARGET_S = {200: 0.5, 2000: 2.0, 10000: 10.0, 100000: 300.0}
RSS_TARGET_MB = 8 * 1024
GAP_TARGET = 0.01


# ------------------------------------------------------------------------------------------ one run (child)


def one(kind: str, name: str, n: int, seed: int, method: str) -> dict:
    """One dispatch of a case (kind "case", name in cases.CASES) or of the baseline (kind "baseline", name
    "<v2g share>:<regime>"), in this process; returns its record."""
    import resource

    import numpy as np

    from evagg.simulators.dispatch import dispatch

    t0 = time.perf_counter()
    if kind == "case":
        fleet, ref = cases.make_case(name, n, seed=seed)
    elif kind == "baseline":
        v2g, regime = name.split(":")
        fleet, ref = cases.baseline_case(n, seed, float(v2g), regime)
    else:
        raise ValueError(f"kind must be case or baseline, got {kind!r}")
    gen_time = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = dispatch(fleet, ref, method)
    elapsed = time.perf_counter() - t0
    relaxed = getattr(res, "relaxed_solves", None)  # being added to DispatchResult by the engine's engineer
    return {
        "kind": kind, "name": name, "n": n, "seed": seed, "method": method,
        "gen_time_s": gen_time, "time_s": elapsed, "solve_time_s": res.solve_time_s,
        "relaxed_solves": None if relaxed is None else int(relaxed), "iterations": int(res.iterations),
        "sse": res.sse, "lower_bound": res.lower_bound, "ref_square_sum": float(ref.p_ref_kw @ ref.p_ref_kw),
        "status": res.status, "message": res.message[:300],
        "violations": int(sum(res.violations.values())),
        "conflict_free": bool(np.all((res.pc <= 1e-9) | (res.pd <= 1e-9))),
        "self_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# ------------------------------------------------------------------------------------ running runs (parent)


def run_child(kind: str, name: str, n: int, seed: int, method: str, max_time: float | None) -> dict:
    """`one(...)` in a fresh process; its peak RSS from the kernel's accounting of that process alone (wait4),
    so that a timeout still reports how much memory it had reached."""
    base = {"kind": kind, "name": name, "n": n, "seed": seed, "method": method}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", kind, name, str(n), str(seed), method]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True)
        outcome, status, usage = "ok", None, None
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if max_time is not None and time.perf_counter() - t0 > max_time:
                    outcome = "timeout"
                    os.killpg(proc.pid, signal.SIGKILL)  # the child's own session: it and nothing else
                    _, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.02)
        except BaseException:  # Ctrl-C: do not leave the child running
            os.killpg(proc.pid, signal.SIGKILL)
            os.wait4(proc.pid, 0)
            raise
        finally:
            proc.returncode = 0  # reaped by wait4 above; keeps Popen from waiting on it again
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    record = dict(base, wall_s=wall, peak_rss_mb=usage.ru_maxrss / 1024)
    if outcome == "timeout":
        return dict(record, outcome="timeout", max_time_s=max_time)
    if os.waitstatus_to_exitcode(status) != 0 or not stdout.strip():
        tail = stderr.strip().splitlines()[-3:]
        return dict(record, outcome="crash", exit_code=os.waitstatus_to_exitcode(status), error=" | ".join(tail))
    record.update(json.loads(stdout.strip().splitlines()[-1]))
    record.update(outcome="ok", **gap_of(record["sse"], record["lower_bound"], record.get("ref_square_sum", 0.0)))
    return record


def gap_of(sse: float, lower_bound: float | None, ref_square_sum: float = 0.0) -> dict:
    """Absolute and relative gap of an SSE to a lower bound, with a negative bound taken as 0 (see the doc). Where
    the SSE is one the dispatch counts as following the reference exactly (integer.NEGLIGIBLE_SSE of the
    reference's square sum), the relative gap is left out too: a ratio of two round-off figures says nothing."""
    if lower_bound is None:
        return {"bound": None, "gap_abs": None, "gap_rel": None}
    bound = max(float(lower_bound), 0.0)
    gap_abs = float(sse) - bound
    exact = float(sse) <= NEGLIGIBLE_SSE * ref_square_sum
    return {"bound": bound, "gap_abs": gap_abs, "gap_rel": gap_abs / bound if bound > 0 and not exact else None}


def baseline_name(params: cases.CaseParams) -> str:
    return f"{params.v2g_share:g}:{params.regime}"


# ------------------------------------------------------------------------------------------------ the table


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(runs: list[dict], case_names, sizes, methods) -> list[dict]:
    """One row per (case, size, method) that has runs: medians of the finished ones, counts of the others."""
    rows = []
    for n in sizes:
        for name in case_names:
            for method in methods:
                mine = [r for r in runs if r["kind"] == "case" and r["name"] == name and r["n"] == n
                        and r["method"] == method]
                if not mine:
                    continue
                ok = [r for r in mine if r["outcome"] == "ok"]
                base = [r for r in runs if r["kind"] == "baseline" and r["outcome"] == "ok" and r["n"] == n
                        and r["method"] == method and r["name"] == baseline_name(cases.params_of(name))]
                t, t_base = _median(r["time_s"] for r in ok), _median(r["time_s"] for r in base)
                rows.append({
                    "case": name, "n": n, "method": method, "runs": len(mine), "ok": len(ok),
                    "timeouts": sum(r["outcome"] == "timeout" for r in mine),
                    "crashes": sum(r["outcome"] == "crash" for r in mine),
                    "relaxed_solves": _median(r.get("relaxed_solves") for r in ok),
                    "iterations": _median(r["iterations"] for r in ok),
                    "time_s": t, "baseline_time_s": t_base,
                    "time_ratio": t / t_base if t is not None and t_base else None,
                    "sse": _median(r["sse"] for r in ok), "bound": _median(r["bound"] for r in ok),
                    "gap_abs": _median(r["gap_abs"] for r in ok), "gap_rel": _median(r["gap_rel"] for r in ok),
                    "peak_rss_mb": max((r["peak_rss_mb"] for r in mine), default=None),
                    "violations": max((r["violations"] for r in ok), default=None),
                    "status": ",".join(sorted({r["status"] for r in ok} | {r["outcome"] for r in mine} - {"ok"})),
                })
    return rows


COLUMNS = (
    ("case", "case", "l"), ("EVs", "n", "r"), ("method", "method", "l"), ("runs ok", "runs", "r"),
    ("relaxed solves", "relaxed_solves", "r"), ("iterations", "iterations", "r"), ("time [s]", "time_s", "r"),
    ("own fleet [s]", "baseline_time_s", "r"), ("ratio", "time_ratio", "r"), ("SSE [kW^2]", "sse", "r"),
    ("bound [kW^2]", "bound", "r"), ("gap [kW^2]", "gap_abs", "r"), ("gap", "gap_rel", "r"),
    ("peak RSS [MB]", "peak_rss_mb", "r"), ("violations", "violations", "r"), ("status", "status", "l"),
)


def _cell(row: dict, key: str) -> str:
    v = row[key]
    if key == "runs":
        bad = [f"{row['timeouts']} timeout" * bool(row["timeouts"]), f"{row['crashes']} crash" * bool(row["crashes"])]
        return f"{row['ok']}/{row['runs']}" + "".join(f" ({b})" for b in bad if b)
    if v is None:
        return "-" if key == "relaxed_solves" else ("n/a" if key == "gap_rel" else "")
    if key == "gap_rel":
        return f"{v:+.3%}"
    if key == "time_ratio":
        return f"{v:.2f}x"
    if key in ("time_s", "baseline_time_s"):
        return f"{v:.2f}"
    if key in ("sse", "bound", "gap_abs"):
        return f"{v:.6g}"
    if key in ("peak_rss_mb",):
        return f"{v:.0f}"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def format_table(rows: list[dict], markdown: bool) -> str:
    head = [c[0] for c in COLUMNS]
    body = [[_cell(r, c[1]) for c in COLUMNS] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |",
                 "|" + "|".join("---:" if c[2] == "r" else "---" for c in COLUMNS) + "|"]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)
    width = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = lambda cells: "  ".join(x.rjust(w) if c[2] == "r" else x.ljust(w)  # noqa: E731
                                  for x, w, c in zip(cells, width, COLUMNS))
    return "\n".join([fmt(head), fmt(["-" * w for w in width])] + [fmt(b) for b in body])


def format_summary(rows: list[dict]) -> str:
    """The worst case and the median over all (case, size) rows, for the gap and the time ratio; what missed the
    issue's targets."""
    lines = []
    for key, label, show in (("gap_rel", "gap to bound", lambda v: f"{v:+.3%}"),
                             ("time_ratio", "time / own fleet's", lambda v: f"{v:.2f}x")):
        have = [r for r in rows if r[key] is not None]
        if not have:
            lines.append(f"{label}: no finished run with a value")
            continue
        worst = max(have, key=lambda r: r[key])
        lines.append(f"{label}: worst {show(worst[key])} ({worst['case']}, {worst['n']} EVs, {worst['method']}), "
                     f"median {show(statistics.median(r[key] for r in have))} over {len(have)} (case, size) rows")
    missed = []
    for r in rows:
        if r["violations"]:
            missed.append(f"{r['case']}@{r['n']}: {r['violations']} violations")
        if r["gap_rel"] is not None and r["gap_rel"] > GAP_TARGET:
            missed.append(f"{r['case']}@{r['n']}: gap {r['gap_rel']:+.2%} > {GAP_TARGET:.0%}")
        if r["time_ratio"] is not None and r["time_ratio"] > 2.0:
            missed.append(f"{r['case']}@{r['n']}: {r['time_ratio']:.2f}x the own fleet's time > 2x")
        target = TIME_TARGET_S.get(r["n"])
        if target is not None and r["time_s"] is not None and r["time_s"] > target:
            missed.append(f"{r['case']}@{r['n']}: {r['time_s']:.2f} s > {target:g} s")
        if r["peak_rss_mb"] is not None and r["peak_rss_mb"] > RSS_TARGET_MB:
            missed.append(f"{r['case']}@{r['n']}: peak RSS {r['peak_rss_mb']:.0f} MB > 8 GB")
        if r["timeouts"] or r["crashes"]:
            missed.append(f"{r['case']}@{r['n']}: {r['timeouts']} timeout(s), {r['crashes']} crash(es)")
    lines.append("targets missed (0 violations, gap <= 1%, <= 2x own fleet, time per size, 8 GB): "
                 + ("none" if not missed else "; ".join(missed)))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ main


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="200,2000,10000,100000", help="fleet sizes, comma-separated")
    ap.add_argument("--cases", default=",".join(cases.CASES), help="case names of bench/cases.py, comma-separated")
    ap.add_argument("--methods", default="dcls", help="dispatch methods, comma-separated")
    ap.add_argument("--repeats", type=int, default=3, help="runs per (case, size, seed)")
    ap.add_argument("--seeds", default="1", help="generator seeds, comma-separated (e.g. 1,2,3)")
    ap.add_argument("--max-time", type=float, default=900.0, help="seconds per run before it counts as a timeout")
    ap.add_argument("--no-baseline", action="store_true", help="skip the own-fleet runs (no time ratio)")
    ap.add_argument("--json", help="write every run to this JSON file (rewritten after each run)")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown (for the README)")
    ap.add_argument("--one", nargs=5, metavar=("KIND", "NAME", "N", "SEED", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        kind, name, n, seed, method = args.one
        print(json.dumps(one(kind, name, int(n), int(seed), method)))
        return 0

    sizes = [int(x) for x in _csv(args.sizes)]
    case_names = _csv(args.cases)
    for name in case_names:
        cases.params_of(name)  # an unknown name stops here, before any run
    methods, seeds = _csv(args.methods), [int(x) for x in _csv(args.seeds)]
    baselines = [] if args.no_baseline else sorted({baseline_name(cases.params_of(c)) for c in case_names})

    runs: list[dict] = []
    timed_out: set = set()  # (kind, name, n, seed, method) that hit --max-time: their later repeats are skipped
    started = datetime.datetime.now().isoformat(timespec="seconds")
    try:
        for n in sizes:  # the small sizes first, so that a long run at the end leaves them reported
            for repeat in range(args.repeats):  # case by case within a repeat: machine drift spreads evenly
                for seed in seeds:
                    for method in methods:
                        todo = [("baseline", b) for b in baselines] + [("case", c) for c in case_names]
                        for kind, name in todo:
                            key = (kind, name, n, seed, method)
                            if key in timed_out:
                                continue
                            r = run_child(kind, name, n, seed, method, args.max_time)
                            r["repeat"] = repeat
                            runs.append(r)
                            if r["outcome"] == "timeout":
                                timed_out.add(key)
                            _progress(r)
                            if args.json:
                                _write_json(args.json, runs, vars(args), started)
    except KeyboardInterrupt:
        print("interrupted: the table shows the runs that finished", file=sys.stderr)

    rows = summarise(runs, case_names, sizes, methods)
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}, "
          f"{os.cpu_count()} cores; started {started}; seeds {','.join(map(str, seeds))}, "
          f"{args.repeats} repeat(s), max {args.max_time:g} s per run")
    print(format_table(rows, args.markdown))
    print()
    print(format_summary(rows))
    return 0


def _progress(r: dict) -> None:
    what = f"{r['kind']:8s} {r['name']:16s} n={r['n']:6d} seed={r['seed']} {r['method']}"
    if r["outcome"] != "ok":
        print(f"  {what}: {r['outcome']} after {r['wall_s']:.1f} s {r.get('error', '')}", file=sys.stderr)
        return
    gap = "n/a" if r["gap_rel"] is None else f"{r['gap_rel']:+.3%}"
    print(f"  {what}: {r['time_s']:7.2f} s, {r['iterations']} it, gap {gap}, {r['peak_rss_mb']:.0f} MB, "
          f"{r['violations']} violations, {r['status']}", file=sys.stderr)


def _write_json(path: str, runs: list[dict], options: dict, started: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"started": started, "options": options, "python": platform.python_version(),
                   "cases": {c: p.as_dict() for c, p in cases.CASES.items()}, "runs": runs}, f, indent=1)
    os.replace(tmp, path)  # all or nothing: an interrupted write never leaves half a file


if __name__ == "__main__":
    sys.exit(main())
