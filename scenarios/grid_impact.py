"""grid_impact: the same feeder, fleet and reference under several dispatch policies, side by side.

    evagg run grid_impact [--evs N] [--days D] [--grid CODE|path.json] [--method M] ...
    from evagg.scenarios import grid_impact; grid_impact.main(evs=40, out="results/impact")

The policies are ``uncontrolled`` (every EV charges flat out from its arrival), ``edf`` (earliest departure first,
following the reference), the method given (default ``dcls``: tracking only), the same under a grid operator's
limits (``dcls+grid``: grid-aware), ``peak_shaving`` (dcls following the room below a flat target on the
feeder instead of the signal) and the method with other information, ``dcls@known`` and ``dcls@noisy`` (below;
`evagg.scenarios.options.default_policies`), or the list ``policies=(...)`` (see
`evagg.scenarios.options.Policy`; ``no_evs`` runs the feeder alone). Each runs the
world of `evagg.scenarios.feeder_day` into its own subfolder (``<out>/<policy>/``: results.csv, summary.json,
plots); the folder itself gets ``comparison.csv`` (figures x policies), ``summary.json`` (every policy's figures)
and ``policies.png`` (EV power, lowest bus voltage, most loaded line and transformer over time, per policy).

Information settings side by side: a policy with ``@`` settings runs with other information than the options
(``dcls@known``: the arrivals known ahead; ``dcls@noisy``: a noisy reference forecast; see `Policy`). Where its
policy without them ran too, ``information_costs`` in summary.json (and the printed table's last lines) give the
difference of the tracking RMSE, shortfall, EV peak, transformer peak and lowest voltage, variant minus the
policy as run: the cost of not knowing (``dcls`` - ``dcls@known`` with the default on_plug) or of a worse forecast
(``dcls@noisy`` - ``dcls``); `evagg.scenarios.report.information_costs` computes them (also for ``evagg report``).
"""
from __future__ import annotations

import time

from . import report
from .bookkeeping import Progress, elapsed, quiet_mosaik
from .errors import Interrupted, RunFailed
from .folder import SUMMARY, check_out, make_out, read_json, write_json
from .feeder_day import run_into
from .inputs import check_inputs
from .options import Options


def main(**options) -> dict:
    """Run every policy (options: see `evagg.scenarios.options.Options`, plus ``policies``); returns the folder's
    summary (``figures`` and ``timing`` per policy) with ``out`` and ``table`` (the printed comparison)."""
    options.pop("scenario", None)
    return run(Options.make("grid_impact", **options))


def run(opts: Options) -> dict:
    """Run every policy with checked options (`Options.make`); see `main`."""
    feeder, reference = check_inputs(opts)
    out = check_out(opts.out, opts.scenario, opts.overwrite, opts.input_files())
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
                report.finish(out, top, runs, plots=False)  # quickly: `evagg report DIR` makes the plots
                if isinstance(exc, Interrupted):  # counted over all the policies' steps, as the progress bar
                    raise Interrupted(out, progress.done, opts.n_steps * len(opts.policies)) from None
                raise
    finally:
        progress.close()
    top = report.finish(out, top, runs, plots=opts.plots)
    top["timing"]["total_s"] = elapsed(t0)
    write_json(out / SUMMARY, top)
    top["out"] = str(out)
    top["table"] = report.comparison_text(runs)
    return top
