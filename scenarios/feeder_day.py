"""feeder_day: a day (or a few) of a simbench feeder with EV aggregators, in mosaik.

    evagg run feeder_day [--evs N] [--days D] [--step-min M] [--grid CODE|path.json] ...
    python -m evagg.scenarios feeder_day ...       (the same)
    from evagg.scenarios import feeder_day; feeder_day.main(evs=60, days=1, out="results/day")

The world:

- ``Grid``: the feeder (default the rural simbench LV grid 1-LV-rural2--0-sw: 97 buses, 99 loads, 8 PV units, a
  250 kVA transformer; shipped with simbench, no download) in mosaik-pandapower-2, with its load and generation
  profiles at the simulated time (`evagg.plugin.SimbenchGridSim`); default period: a winter weekday from
  noon (2026-01-14 12:00, profiles of 2016-01-14) to the next noon;
- ``EVAgg``: one simulator per aggregator (default 2, sharing 60 EVs), each an evagg ``Aggregator`` whose EVs
  sit at the feeder's load buses (`evagg.scenarios.inputs.build_fleet`: each EV at a fixed bus, one plug-in
  session a day; sessions plugged in before the start join at the start, as charged as an uncontrolled charger
  would have left them); each ``EVBus`` child feeds its bus's ``P_load[MW]``;
- ``Ref``: a reference signal per aggregator (synthetic regulation around its fleet's spread-out charging need,
  or a CSV for the whole fleet, shared in proportion to the aggregators' EVs), with its next steps as the
  forecast (``forecast="perfect"``), with seeded errors (``"noisy"``, ``forecast_error``) or held (``"hold"``);
  what the aggregators know of their sessions is ``arrivals`` (default ``on_plug``: an EV is planned once
  plugged in; see `evagg.simulators.aggregator`); summary.json's ``information`` records both;
- ``Results``: the tidy results table (`evagg.plugin.CollectorSim`): every aggregator's outputs, each EVBus's
  power, each signal, every bus's voltage and power, every line's and transformer's loading, the external
  grid's power.

`main(**options)` runs it into a results folder (see `evagg.scenarios.folder`) and returns the summary;
the options are those of `evagg.scenarios.options.Options` (days, step_min, evs, aggregators, v2g_share, method,
seed, grid, start, signal, horizon, forecast, forecast_error, arrivals, v_band, out, overwrite, progress, plots);
`run(opts)` takes them
checked.
"""
from __future__ import annotations

import asyncio
import contextlib
import shlex
import shutil
import sys
import time
from pathlib import Path

import mosaik
import numpy as np

from evagg.plugin import connect_buses, connect_operator, connect_peak_shaver, operator_groups, supervised_run
from evagg.simulators.peak_shaving import flat_level_kw
from evagg.simulators.reference import Reference
from evagg.simulators.synthetic import synthetic_reference
from evagg.simulators.tables import read_sessions, write_reference, write_sessions

from . import report
from .bookkeeping import CtrlC, Progress, elapsed, quiet_mosaik
from .errors import Interrupted, RunFailed
from .folder import INPUTS, SUMMARY, TIMING, check_out, make_out, write_json
from .inputs import build_fleet, check_inputs, derived_seed
from .options import Options, Policy

SIM_CONFIG = {
    "Grid": {"python": "evagg.plugin:SimbenchGridSim"},
    "EVAgg": {"python": "evagg.plugin:AggregatorSim"},
    "Ref": {"python": "evagg.plugin:ReferenceSim"},
    "Results": {"python": "evagg.plugin:CollectorSim"},
    "Operator": {"python": "evagg.plugin:OperatorSim"},
    "PeakShaver": {"python": "evagg.plugin:PeakShaverSim"},
}

AGGREGATOR_OUTPUTS = ("P[MW]", "P_ref[MW]", "tracking_error[MW]", "n_plugged", "energy[MWh]", "shortfall[MWh]",
                      "need_unmet[MWh]", "limited", "plugged_at_end", "certain_shortfall[MWh]")
OPERATOR_OUTPUTS = ("n_limited", "Vm_min[pu]", "loading_max[%]")
SOC_OUTPUTS = ("soc_min[%]", "soc_p10[%]", "soc_p50[%]", "soc_p90[%]", "soc_max[%]")
GRID_OUTPUTS = {"Bus": ("Vm[pu]", "P[MW]"), "Line": ("loading[%]",), "Transformer": ("loading[%]",),
                "ExternalGrid": ("P[MW]",)}


def remote_aggregator_config(address: str | None = None) -> dict:
    """sim_config entry of an aggregator in its own process: the evagg-mosaik console script started by mosaik, or
    (`address`) one already waiting there (``evagg-mosaik -r HOST:PORT``)."""
    if address is not None:
        return {"connect": address}
    beside = Path(sys.executable).parent / "evagg-mosaik"  # the same installation as this process's evagg
    script = str(beside) if beside.exists() else shutil.which("evagg-mosaik")
    exe = shlex.quote(script) if script else f"{shlex.quote(sys.executable)} -m evagg.plugin"
    # -l warning: the aggregator processes say what goes wrong, not that they connect (as mosaik in scenarios)
    return {"cmd": f"{exe} -l warning %(addr)s", "posix": True}


def write_inputs(opts: Options, feeder, reference, out: Path) -> list[dict]:
    """The aggregators' sessions (and signal) tables in out/inputs/; one dict per aggregator (paths relative to
    `out`, so that summary.json does not depend on where the folder is)."""
    (out / INPUTS).mkdir(exist_ok=True)
    sizes = opts.fleet_sizes()
    aggs = []
    for i, n in enumerate(sizes):
        fleet = build_fleet(opts, i, n, feeder.load_buses)
        sessions = out / INPUTS / f"sessions-{i}.csv"
        write_sessions(fleet, sessions)
        agg = {"index": i, "evs": n, "sessions": f"{INPUTS}/{sessions.name}", "n_sessions": len(fleet),
               "seed": derived_seed(opts.seed, i, 0), "signal": None,
               # the seeds of the forecast's errors (--forecast noisy) and of the expected arrivals (forecast)
               "forecast_seed": derived_seed(opts.seed, i, 0, 1), "arrivals_seed": derived_seed(opts.seed, i, 0, 2)}
        path = out / INPUTS / f"signal-{i}.csv"
        if reference is not None:
            share = n / opts.evs
            write_reference(Reference(reference.start, reference.step, np.round(reference.p_ref_kw * share, 6)), path)
            agg["signal"], agg["signal_source"] = f"{INPUTS}/{path.name}", "the signal given (--signal), shared"
        elif len(fleet):
            # the synthetic signal is made here, from the sessions table as the aggregator reads it, and saved, so
            # that inputs/ holds everything the run was given; it covers the last step's look-ahead too
            synthetic = synthetic_reference(read_sessions(sessions), start=opts.start, step_s=opts.step_s,
                                            n_steps=opts.n_steps + opts.horizon - 1, seed=agg["seed"],
                                            kind="regulation")
            write_reference(synthetic, path)
            agg["signal"], agg["signal_source"] = f"{INPUTS}/{path.name}", "synthetic regulation (seeded)"
        aggs.append(agg)
    return aggs


def build_world(opts: Options, pol: Policy, out: Path, aggs: list[dict], on_step=None, peak_target_kw=None):
    """The mosaik world of one run under `policy` (see `Policy`; not yet run): returns (world, entities).

    Grid-aware policies add an Operator (evagg.plugin.OperatorSim) that sends each aggregator's EVs at each bus
    limits from the grid's state: one step late (coupling "delayed", mosaik time-shifted connections) or settled
    within the step (coupling "iterative": the grid, the aggregators and the operator in one mosaik group, the
    limits going back over weak connections). peak_shaving replaces the signal by a PeakShaver per aggregator
    (target `peak_target_kw`, shared in proportion to the aggregators' EVs)."""
    config = dict(SIM_CONFIG)
    if opts.remote:
        config["EVAgg"] = remote_aggregator_config()
        # connect: one waiting process per aggregator, each its own sim_config entry (the ids stay EVAgg-<i>)
        config.update({f"EVAgg@{i}": remote_aggregator_config(a) for i, a in enumerate(opts.connect or ())})
    world = mosaik.World(config, time_resolution=1.0, mosaik_config={"start_timeout": 120, "stop_timeout": 30},
                         debug=False, skip_greetings=True)
    iterative = pol.grid_aware and opts.coupling == "iterative"
    same_step = {"same_step": True} if iterative else {}
    try:
        step, start = opts.step_s, opts.start.replace("T", " ")
        results = world.start("Results", start_date=start, on_step=on_step)
        table = results.Table(path=str(out / opts.results_name))
        timing = results.Table(path=str(out / TIMING))
        ref_sim = world.start("Ref", step_size=step, start_date=start)
        fsteps = opts.horizon - 1 if opts.forecast in ("perfect", "noisy") else 0
        entities = {"grid": None, "aggregators": [], "signals": [], "operator": None}
        # In the iterative coupling the simulators of the loop must form one mosaik group.
        with (world.group() if iterative else contextlib.nullcontext()):
            grid = world.start("Grid", step_size=step, **same_step).Grid(grid=opts.grid, start=opts.start)
            entities["grid"] = grid
            grid_buses = [int(c.eid.split("-", 1)[1]) for c in grid.children if c.type == "Bus"]
            for a in (aggs if pol.reference != "none" else []):
                sessions = str((out / a["sessions"]).resolve())  # absolute: an aggregator process may run elsewhere
                starter = f"EVAgg@{a['index']}" if opts.connect else "EVAgg"
                agg_sim = world.start(starter, sim_id=f"EVAgg-{a['index']}", step_size=step, start_date=start,
                                      **same_step)
                agg = agg_sim.Aggregator(sessions=sessions, method=pol.method, horizon=opts.horizon,
                                         grid_buses=grid_buses, arrivals=opts.arrivals,
                                         arrivals_seed=a["arrivals_seed"])
                connect_buses(world, agg, grid)
                world.connect(agg, table, *AGGREGATOR_OUTPUTS, *SOC_OUTPUTS)
                for child in agg.children:
                    world.connect(child, table, "P[MW]")
                world.connect(agg, timing, "solve_time[s]")
                entities["aggregators"].append(agg)
            if pol.grid_aware:
                op_sim = world.start("Operator", step_size=step, start_date=start,
                                     **({"coupling": "iterative"} if iterative else {}))
                lo, hi = opts.v_band  # the operator keeps the study's band, with a margin that fits inside it
                op = op_sim.Operator(grid=opts.grid, groups=operator_groups(entities["aggregators"]),
                                     v_min=lo, v_max=hi, v_margin=min(0.01, 0.25 * (hi - lo)))
                connect_operator(world, op, grid, entities["aggregators"],
                                 **({"coupling": "iterative"} if iterative else {}))
                world.connect(op, table, *OPERATOR_OUTPUTS, *(["iterations", "capped"] if iterative else []))
                entities["operator"] = op
        shaver_sim = None
        for a, agg in zip(aggs, entities["aggregators"]):
            sessions = str((out / a["sessions"]).resolve())
            noise = ({"forecast_error": opts.forecast_error, "forecast_seed": a["forecast_seed"]}
                     if opts.forecast == "noisy" else {})
            if pol.reference == "peak_shaving":
                if shaver_sim is None:  # one simulator for the aggregators' shavers
                    shaver_sim = world.start("PeakShaver", step_size=step, start_date=start)
                sig = _peak_shaver(world, shaver_sim, grid, agg, entities["aggregators"], a["evs"] / opts.evs,
                                   peak_target_kw, fsteps)
            elif a["signal"] is not None:
                sig = ref_sim.Signal(path=str((out / a["signal"]).resolve()), forecast_steps=fsteps,
                                     until=opts.until, **noise)
                world.connect(sig, agg, "P_ref[MW]", *(["P_forecast[MW]"] if fsteps else []))
            else:
                sig = ref_sim.Signal(kind="regulation", sessions=sessions, seed=a["seed"], forecast_steps=fsteps,
                                     until=opts.until, **noise)
                world.connect(sig, agg, "P_ref[MW]", *(["P_forecast[MW]"] if fsteps else []))
            world.connect(sig, table, "P_ref[MW]")
            entities["signals"].append(sig)
        for child in grid.children:
            attrs = GRID_OUTPUTS.get(child.type)
            if attrs:
                world.connect(child, table, *attrs)
    except BaseException:
        world.shutdown()
        raise
    return world, entities


def _peak_shaver(world, sim, grid, agg, fleet: list, share: float, target_kw: float, fsteps: int):
    """A PeakShaver for `agg`: its share of the room below `target_kw` on the feeder (the transformer's P_hv, or the
    external grid's P), measured one step before."""
    feeder = next((c for c in grid.children if c.type == "Transformer"), None) or next(
        c for c in grid.children if c.type == "ExternalGrid")
    shaver = sim.PeakShaver(target=target_kw / 1000.0, share=share, forecast_steps=fsteps)
    connect_peak_shaver(world, shaver, feeder, agg, fleet)
    return shaver


def feeder_base_kw(feeder, opts: Options) -> np.ndarray:
    """(steps,) the feeder's net load without EVs (loads minus generation, kW) from its profiles, per step."""
    out = np.zeros(opts.n_steps)
    net = feeder.net
    for k in range(opts.n_steps):
        values = feeder.profile_values(opts.start64, k * opts.step_s, opts.step_s)
        load = values.get(("load", "p_mw"), (None, net.load.p_mw.to_numpy()))[1]
        gen = values.get(("sgen", "p_mw"), (None, net.sgen.p_mw.to_numpy()))[1]
        out[k] = 1000.0 * (float(np.sum(load)) - float(np.sum(gen)))
    return out


def information(opts: Options, out: Path, aggs: list[dict]) -> dict:
    """What the aggregators of a run know (summary.json's "information"): arrivals, the reference's forecast (and
    its error level), which departures the plans use and how many sessions declared another one than they kept."""
    fleets = [read_sessions(out / a["sessions"]) for a in aggs]
    declared = [f for f in fleets if f.departure_declared is not None]
    earlier = sum(int(np.sum(f.departure < f.departure_declared)) for f in declared)
    later = sum(int(np.sum(f.departure > f.departure_declared)) for f in declared)
    return {"arrivals": opts.arrivals, "forecast": opts.forecast,
            "forecast_error_pct": opts.forecast_error if opts.forecast == "noisy" else None,
            "departures": "actual" if opts.arrivals == "known" or not declared else "declared",
            "sessions_leaving_before_declared": earlier, "sessions_leaving_after_declared": later}


def peak_target_kw(opts: Options, feeder, out: Path, aggs: list[dict]) -> float:
    """The peak-shaving target: `opts.peak_target_kw`, else the flat level that the feeder's base load plus the
    energy the EVs need over the run would fill (valley filling known a day ahead from the load profiles)."""
    if opts.peak_target_kw is not None:
        return float(opts.peak_target_kw)

    need = 0.0
    for a in aggs:
        f = read_sessions(out / a["sessions"])
        need += float(np.sum(np.maximum(np.minimum(f.energy_target_kwh, f.capacity_kwh) - f.energy_initial_kwh,
                                        0.0) / f.eta_charge))
    return flat_level_kw(feeder_base_kw(feeder, opts), need, opts.step_s)


def simulate(opts: Options, policy: Policy, out: Path, aggs: list[dict], progress: Progress,
             peak_target=None) -> dict:
    """Run one world into `out` (which exists). Returns the run's bookkeeping; raises Interrupted (Ctrl-C) or
    RunFailed after writing an incomplete summary.json; the caller writes the complete one."""
    t0 = time.perf_counter()
    done_before = progress.done
    record = {"complete": False, "method": policy.name, "steps_done": 0, "n_steps": opts.n_steps}
    world = None
    with CtrlC() as ctrl_c:
        try:
            world, _ = build_world(opts, policy, out, aggs, on_step=progress, peak_target_kw=peak_target)
            record["setup_s"] = elapsed(t0)
            # supervised: a remote aggregator that dies or stops answering ends the run (mosaik alone may hang)
            supervised_run(world, opts.until, answer_timeout=opts.answer_timeout if opts.remote else None,
                           print_progress=False, shutdown=False)
        except KeyboardInterrupt:
            ctrl_c.pressed = True
        except Exception as exc:
            record["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        finally:
            if world is not None:
                _stop(world)
    record["steps_done"] = progress.done - done_before
    record["wall_s"] = elapsed(t0)
    if record["steps_done"] >= opts.n_steps and not ctrl_c.pressed and "error" not in record:
        record["complete"] = True
        return record
    if ctrl_c.pressed:
        record["interrupted"] = True
    elif "error" not in record:
        record["error"] = (f"the simulation stopped after {record['steps_done']} of {opts.n_steps} steps "
                           "(a simulator failed: see the messages above)")
    return record


def _stop(world) -> None:
    """Shut the world down, also after Ctrl-C or a failure left mosaik's tasks pending (cancelled first, so that
    nothing complains about them at exit)."""
    loop = world.loop
    if not loop.is_closed():
        # mosaik's per-simulator runners (its own tasks, e.g. the server's, are left to its shutdown)
        pending = [t for t in asyncio.all_tasks(loop) if not t.done() and t.get_name().startswith("Runner for ")]
        for task in pending:
            task.cancel()
        if pending:
            try:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            except BaseException:  # a second Ctrl-C: go on shutting down
                pass
    try:
        world.shutdown()
    except BaseException:  # a simulator that died is already gone
        pass


def run_into(opts: Options, out: Path, feeder, reference, policy: Policy, progress: Progress) -> dict:
    """One run of the feeder day under `policy` into the (existing, empty) folder `out`; returns its summary (also
    written). Raises Interrupted / RunFailed (after writing an incomplete summary) if it did not finish."""
    t0 = time.perf_counter()
    opts = policy.informed(opts)  # a policy's @ settings (e.g. dcls@known) override the run's information
    aggs = write_inputs(opts, feeder, reference, out)
    base = {"complete": False, "scenario": opts.scenario, "method": policy.name, "options": opts.as_dict(),
            "information": information(opts, out, aggs), "grid": feeder.describe(), "aggregators": aggs}
    target = None
    if policy.reference == "peak_shaving":
        target = base["peak_target_kw"] = round(peak_target_kw(opts, feeder, out, aggs), 6)
    write_json(out / SUMMARY, base)  # says "incomplete" from the start: a killed run leaves it so
    record = simulate(opts, policy, out, aggs, progress, peak_target=target)
    summary = report.summarize(out, base, record)
    summary["timing"]["total_s"] = elapsed(t0)
    write_json(out / SUMMARY, summary)
    if not record["complete"]:
        if record.get("interrupted"):
            raise Interrupted(out, record["steps_done"], opts.n_steps)
        raise RunFailed(record["error"])
    if opts.plots:
        report.plot_run(out, summary)
    return summary


def main(**options) -> dict:
    """Run the feeder day (options: see `evagg.scenarios.options.Options`); returns summary.json's content.
    ScenarioError (nothing written) for bad options; Interrupted / RunFailed leave an incomplete results folder."""
    return run(Options.make(options.pop("scenario", "feeder_day"), **options))


def run(opts: Options) -> dict:
    """Run the feeder day with checked options (`Options.make`); see `main`."""
    feeder, reference = check_inputs(opts)
    out = check_out(opts.out, opts.scenario, opts.overwrite, opts.input_files())
    quiet_mosaik()
    make_out(out)
    progress = Progress(opts.n_steps, opts.progress, desc=f"{opts.scenario} ({opts.method})")
    try:
        summary = run_into(opts, out, feeder, reference, opts.method, progress)
    finally:
        progress.close()
    summary["out"] = str(out)
    return summary
