"""grid_impact: the same feeder, fleet and reference under several dispatch policies, side by side.

    evagg run grid_impact [--evs N] [--days D] [--grid CODE|path.json] [--method M] ...
    from evagg.scenarios import grid_impact; grid_impact.main(evs=40, out="results/impact")

The policies are ``uncontrolled`` (every EV charges flat out from its arrival), ``edf`` (earliest departure first,
following the reference), the method given (default ``dcls``: tracking only), the same under a grid operator's
limits (``dcls+grid``: grid-aware) and ``peak_shaving`` (dcls following the room below a flat target on the
feeder instead of the signal), or the list ``policies=(...)`` (see `evagg.scenarios.common.Policy`; ``no_evs``
runs the feeder alone). Each runs the
world of `evagg.scenarios.feeder_day` into its own subfolder (``<out>/<policy>/``: results.csv, summary.json,
plots); the folder itself gets ``comparison.csv`` (figures x policies), ``summary.json`` (every policy's figures)
and ``policies.png`` (EV power, lowest bus voltage, most loaded line and transformer over time, per policy).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from . import report
from .common import (
    SUMMARY,
    Interrupted,
    Options,
    Progress,
    RunFailed,
    check_inputs,
    check_out,
    elapsed,
    make_out,
    quiet_mosaik,
    read_json,
    write_json,
)
from .feeder_day import run_into


def finish(out: Path, top: dict, runs: dict, plots: bool = True) -> dict:
    """The folder's summary.json, comparison.csv and policies.png from the policies' summaries `runs`."""
    out = Path(out)
    top = dict(top)
    runs = with_penalties(runs)
    top["policies_run"] = list(runs)
    top["figures"] = {name: s.get("figures", {}) for name, s in runs.items()}
    total = (top.get("timing") or {}).get("total_s")
    top["timing"] = {name: s.get("timing", {}) for name, s in runs.items()}
    if total is not None:
        top["timing"]["total_s"] = total
    top["complete"] = (bool(runs) and all(s.get("complete") for s in runs.values())
                       and list(runs) == list(top["options"]["policies"]))
    frame = report.comparison_frame(runs)
    frame.index.name = "figure"
    frame.to_csv(out / "comparison.csv", lineterminator="\n")
    write_json(out / SUMMARY, top)
    with_steps = {n: s for n, s in runs.items() if (s.get("figures") or {}).get("steps")}
    if plots and with_steps:
        report.plot_policies(out, with_steps)
    return top


def with_penalties(runs: dict) -> dict:
    """`runs` with, for each grid-aware policy "<p>+grid" whose "<p>" ran too, the tracking RMSE it gave up to the
    grid limits (kW; figure tracking_rmse_penalty_kw): the same feeder, fleet and reference with and without the
    operator."""
    out = {}
    for name, s in runs.items():
        base = runs.get(name[:-len("+grid")]) if name.endswith("+grid") else None
        f, fb = (s.get("figures") or {}), ((base or {}).get("figures") or {})
        if f.get("tracking_rmse_kw") is not None and fb.get("tracking_rmse_kw") is not None:
            s = dict(s, figures=dict(f, tracking_rmse_penalty_kw=round(f["tracking_rmse_kw"]
                                                                        - fb["tracking_rmse_kw"], 4)))
        out[name] = s
    return out


def main(**options) -> dict:
    """Run every policy (options: see `evagg.scenarios.common.Options`, plus ``policies``); returns the folder's
    summary (``figures`` and ``timing`` per policy) with ``out`` and ``table`` (the printed comparison)."""
    options.pop("scenario", None)
    opts = Options.make("grid_impact", **options)
    feeder, reference = check_inputs(opts)
    out = check_out(opts.out, opts.scenario, opts.overwrite)
    quiet_mosaik()
    make_out(out)
    t0 = time.perf_counter()
    top = {"complete": False, "scenario": "grid_impact", "options": opts.as_dict(), "grid": feeder.describe(),
           "policies_run": []}
    write_json(out / SUMMARY, top)
    runs: dict = {}
    progress = Progress(opts.n_steps * len(opts.policies), opts.progress, desc="grid_impact")
    try:
        for policy in opts.policies:
            progress.describe(f"grid_impact: {policy}")
            sub = out / policy
            sub.mkdir()
            try:
                runs[policy] = run_into(opts, sub, feeder, reference, policy, progress)
            except (Interrupted, RunFailed) as exc:
                runs[policy] = read_json(sub / SUMMARY)
                finish(out, top, runs, plots=False)  # quickly: `evagg report DIR` makes the plots
                if isinstance(exc, Interrupted):  # counted over all the policies' steps, as the progress bar
                    raise Interrupted(out, progress.done, opts.n_steps * len(opts.policies)) from None
                raise
    finally:
        progress.close()
    top = finish(out, top, runs, plots=opts.plots)
    top["timing"]["total_s"] = elapsed(t0)
    write_json(out / SUMMARY, top)
    top["out"] = str(out)
    top["table"] = report.table_text(with_penalties(runs))
    return top


if __name__ == "__main__":
    from .cli import main as cli_main

    sys.exit(cli_main(["run", "grid_impact", *sys.argv[1:]]))
