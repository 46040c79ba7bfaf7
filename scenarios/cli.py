"""The `evagg` command: run a feeder study (`run`, `report`), dispatch a fleet to follow a reference signal, make
synthetic fleets and signals.

Each subcommand is an entry of SUBCOMMANDS: name -> (help line, setup(parser), handler(args) -> exit code).
Add one by writing those two functions and an entry.

Exit codes: 0 success; 1 failure of the engine or the output; 2 bad command line or bad input data; 130 a run
interrupted by Ctrl-C (its results folder holds the steps done and says it is incomplete).
Error messages go to stderr as one line ``evagg: error: ...``; stdout carries the result only.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from evagg.simulators import dispatch as dispatch_module  # looked up at the call (tests replace the function)
from evagg.simulators.dispatch import METHODS
from evagg.simulators.fleet import LIMITS, Fleet
from evagg.simulators.imports import ENERGY_CHOICES, Assumptions, read_acn, read_elaad
from evagg.simulators.synthetic import REFERENCE_KINDS, synthetic_fleet, synthetic_reference
from evagg.simulators.tables import (
    InputError,
    json_safe,
    read_reference,
    read_sessions,
    write_dispatch,
    write_reference,
    write_sessions,
)

from . import report, sweep
from .errors import Interrupted, RunFailed, ScenarioError
from .options import Option, Options, add_arguments, checked, from_arguments, table

PROG = "evagg"

SESSIONS_FORMAT = """\
sessions table (CSV, one row per plug-in session, header on line 1):
  ev_id                unique id of the session
  arrival, departure   ISO 8601 times (e.g. 2026-06-01T18:30:00; with an offset they are converted to UTC)
  energy_initial_kwh   battery energy at arrival, kWh
  energy_target_kwh    energy wanted at departure, kWh
  capacity_kwh         usable capacity, kWh (> 0)
  p_charge_max_kw      charger power, kW (>= 0)
  p_discharge_max_kw   V2G discharge power, kW (0 = no V2G)
  eta_charge, eta_discharge   efficiencies in (0, 1]
  optional: energy_min_kwh (floor, kWh, default 0), bus (grid bus index), departure_declared (what the
    driver declared: the plan uses it, the EV still leaves at departure; see the summary's "departures");
    other columns are kept"""

SIGNAL_FORMAT = """\
reference signal table (CSV): time (ISO 8601, a regular grid of whole seconds; step k covers
  [time_k, time_k + step)), p_ref_kw (kW the fleet is asked to draw, grid side, + = load, - = injection)"""

RESULT_FORMAT = """\
result table (CSV, one row per plugged EV and step): time, ev_id, p_charge_kw, p_discharge_kw (kW, constant
  over the step), energy_kwh (battery energy at the end of the step, kWh)"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the table descriptions as written (descriptions are wrapped by `_describe`)."""


def _describe(text: str) -> str:
    return textwrap.fill(" ".join(text.split()), width=100)


# ----------------------------------------------------------------------------------------------- dispatch


def _engine_defaults(function) -> dict:
    """The defaults of an engine function's parameters: what its command's options default to."""
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


_DISPATCH = _engine_defaults(dispatch_module.dispatch)
# evagg dispatch's options: flags, checks, defaults (the engine's) and help, read by `_options`.
DISPATCH_OPTIONS = table(
    sessions=Option("path", "sessions table (CSV, format below): the plug-in sessions to dispatch", metavar="S.csv",
                    required=True),
    signal=Option("path", "reference signal table (CSV, format below) in kW; its time grid is the dispatch horizon",
                  metavar="R.csv", required=True),
    method=Option("choice", "dispatch method: " + ", ".join(f"{name} ({m.description})" for name, m in
                                                            METHODS.items()),
                  choices=tuple(METHODS), metavar="|".join(METHODS), default=_DISPATCH["method"]),
    out=Option("path", "where to write the result table (CSV, format below); written only on success, atomically",
               metavar="RESULT.csv", required=True),
    time_limit=Option("number", "wall-clock limit for the solver in seconds; on hitting it the best feasible "
                      "dispatch found is returned and the summary's status says time_limit", label="time limit",
                      lo=0.0, lo_open=True, metavar="SECONDS", default=_DISPATCH["time_limit_s"], default_text="none"),
    signal_step=Option("int", "step of the signal in seconds; needed only for a signal of a single row, otherwise "
                       "checked against the spacing of its times", label="signal step", lo=1, metavar="SECONDS",
                       default_text="taken from the file"),
)


def _setup_dispatch(p: argparse.ArgumentParser) -> None:
    p.description = _describe(
        "Dispatch a fleet of EVs to follow a reference signal as closely as possible (least squares) while every "
        "EV's limits and departure needs are met. Prints the summary (method, status, tracking SSE in kW^2, RMSE "
        "in kW, energy shortfall in kWh, constraint violations, solve time in s) as one JSON line on stdout."
    )
    p.epilog = "\n\n".join([SESSIONS_FORMAT, SIGNAL_FORMAT, RESULT_FORMAT])
    add_arguments(p, options=DISPATCH_OPTIONS)


def _cmd_dispatch(args) -> int:
    _options(args, DISPATCH_OPTIONS)
    _check_out_dir(args.out, inputs=(args.sessions, args.signal))
    fleet = read_sessions(args.sessions)
    reference = read_reference(args.signal, step_s=args.signal_step, fleet=fleet)  # the fleet's bound: line
    result = dispatch_module.dispatch(fleet, reference, method=args.method, time_limit_s=args.time_limit)
    if not (np.all(np.isfinite(result.pc)) and np.all(np.isfinite(result.pd)) and np.all(np.isfinite(result.energy))):
        # A dispatch with NaN / inf powers passes no constraint check meaningfully: never write it as a result.
        return _error(f"the {args.method} method returned non-finite powers or energies ({result.status}: "
                      f"{result.message}); no result written", 1)
    # (a signal that meets no session's plugged time is said by read_reference's check against the fleet)
    certain = result.problem.certain_shortfall(result.energy)
    if np.any(certain > 1e-6):
        print(f"{PROG}: warning: {int(np.sum(certain > 1e-6))} session(s) still plugged in at the signal's end "
              f"({reference.end}) will miss {certain.sum():.3f} kWh of their targets even charging flat out until "
              "departure (certain_shortfall_kwh in the summary)", file=sys.stderr, flush=True)
    write_dispatch(result, args.out)
    print(result.summary_json(), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------- fleet


_FLEET, _SIGNAL = _engine_defaults(synthetic_fleet), _engine_defaults(synthetic_reference)
# evagg fleet's options: flags, checks, defaults (the engine's) and help, read by `_options`.
FLEET_OPTIONS = table(
    n=Option("int", "number of plug-in sessions (one per EV, ids ev00000, ev00001, ...)", label="number of sessions",
             lo=0, metavar="N", required=True),
    seed=Option("int", "random seed: same seed, same fleet", lo=0, metavar="K", required=True),
    out=Option("path", "where to write the sessions table", metavar="SESSIONS.csv", required=True),
    v2g_share=Option("number", "share of sessions that can discharge (V2G), at their charger power in kW",
                     label="V2G share", lo=0.0, hi=1.0, metavar="F", default=_FLEET["v2g_share"]),
    days=Option("int", "horizon in days; sessions arrive on one of these days (departures may fall after it)",
                lo=1, metavar="D", default=_FLEET["days"]),
    start=Option("time", "start of the horizon, ISO 8601 (arrival hours are clock hours of the days from its date)",
                 metavar="ISO", default=_FLEET["start"]),
    mix=Option("shares", "shares of the home, workplace and depot patterns (normalised to sum 1)", count=3,
               metavar="H,W,D", default=_FLEET["mix"]),
    buses=Option("indices", "grid bus indices to spread the sessions over, e.g. 1,4,7 or 1-10 (adds the column "
                 "bus)", metavar="LIST", default_text="none"),
)
# its reference signal (optional)
SIGNAL_OPTIONS = table(
    signal_out=Option("path", "also write a reference signal for this fleet over the horizon", metavar="R.csv",
                      default_text="none"),
    signal_kind=Option("choice", "regulation: the fleet's spread-out charging need plus AR(1) regulation noise, "
                       "within the plugged fleet's power range (kW); surplus: the same plus a midday PV-surplus "
                       "block (10-16 h) asking for more power and energy than the fleet can take",
                       label="signal kind", choices=REFERENCE_KINDS, metavar="|".join(REFERENCE_KINDS),
                       default=_SIGNAL["kind"]),
    step_min=Option("number", "step of the signal in minutes (a whole number of seconds; the horizon must be a "
                    "whole number of steps)", label="signal step", lo=0.0, lo_open=True, metavar="MINUTES",
                    default=_SIGNAL["step_s"] / 60),
)


def _setup_fleet(p: argparse.ArgumentParser) -> None:
    p.description = _describe(
        "Write a synthetic fleet of plug-in sessions (seeded, reproducible) and optionally a reference signal for "
        "it. Patterns: home (arrive 17-21 h, leave 6-9 h next day; 3.7/7.4/11 kW), workplace (7-10 h to "
        "15-19 h; 11/22 kW), depot vans (19-23 h to 5-7 h next day; 22 kW). Batteries 40-100 kWh, initial "
        "energy 20-60 %, target 70-100 %, floor 10 % of capacity, efficiencies 0.90-0.97. Prints a one-line "
        "JSON summary on stdout."
    )
    p.epilog = "\n\n".join([SESSIONS_FORMAT + "\n  (synthetic fleets add the column pattern)", SIGNAL_FORMAT])
    add_arguments(p, options=FLEET_OPTIONS)
    add_arguments(p.add_argument_group("reference signal (optional)"), options=SIGNAL_OPTIONS)


def _options(args, *tables) -> None:
    """The command's options in `args` checked, or their defaults (a usage error naming the flag otherwise)."""
    try:
        for options in tables:
            vars(args).update(checked(options, args))
    except ScenarioError as exc:
        raise _UsageError(str(exc)) from None


def _cmd_fleet(args) -> int:
    _options(args, FLEET_OPTIONS, SIGNAL_OPTIONS)
    _check_out_dir(args.out)
    step_s = n_steps = None
    if args.signal_out is not None:
        if args.n == 0:
            return _usage_error("--n 0 with --signal-out: a fleet of no sessions has no power to make a signal for")
        _check_out_dir(args.signal_out, inputs=(args.out,))
        step_s = args.step_min * 60.0
        if abs(step_s - round(step_s)) > 1e-9:
            return _usage_error(f"--step-min {args.step_min:g} is not a whole number of seconds")
        step_s = int(round(step_s))
        if (args.days * 86400) % step_s:
            return _usage_error(f"--step-min {args.step_min:g} does not divide the horizon of {args.days} day(s)")
        n_steps = args.days * 86400 // step_s
    fleet = synthetic_fleet(args.n, args.seed, start=args.start, days=args.days, v2g_share=args.v2g_share,
                            mix=args.mix, buses=args.buses)
    write_sessions(fleet, args.out)
    summary = {
        "sessions": str(args.out),
        "n_sessions": len(fleet),
        "v2g_sessions": int(np.sum(fleet.p_discharge_max_kw > 0)),
        "first_arrival": str(fleet.arrival.min()) if len(fleet) else None,
        "last_departure": str(fleet.departure.max()) if len(fleet) else None,
    }
    if args.signal_out is not None:
        reference = synthetic_reference(fleet, start=args.start, step_s=step_s, n_steps=n_steps, seed=args.seed,
                                        kind=args.signal_kind)
        write_reference(reference, args.signal_out)
        summary.update(signal=str(args.signal_out), signal_kind=args.signal_kind, step_s=step_s, n_steps=n_steps,
                       p_ref_kw_mean=float(np.mean(reference.p_ref_kw)))
    print(json.dumps(json_safe(summary), allow_nan=False), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------- import

IMPORT_FORMATS = {"acn": read_acn, "elaad": read_elaad}


_ASSUMED = Assumptions()  # the importers' documented defaults
# evagg import's options: flags, checks, defaults (the importers' own) and help, read by `_options`.
IMPORT_OPTIONS = table(
    out=Option("path", "where to write the sessions table (not over FILE)", metavar="SESSIONS.csv", required=True),
    energy=Option("choice", "acn: the energy a session needs: delivered (kWhDelivered, what it took: feasible) or "
                  "requested (the driver's kWhRequested, where given)", choices=ENERGY_CHOICES,
                  metavar="|".join(ENERGY_CHOICES), default_text=ENERGY_CHOICES[0]),
    capacity_kwh=Option("number", "battery capacity, kWh (raised where a session took more)",
                        label="battery capacity", lo=0.0, lo_open=True, hi=LIMITS["capacity_kwh"].high,
                        metavar="KWH", default=_ASSUMED.capacity_kwh),
    soc_initial=Option("range", "state of charge at arrival: a share in [0, 1), or a range drawn uniformly (seeded)",
                       label="state of charge at arrival", lo=0.0, hi=1.0, hi_open=True, metavar="F|LO,HI",
                       default=_ASSUMED.soc_initial),
    v2g_share=Option("number", "share of sessions (drawn, seeded) that can discharge at their charger power",
                     label="V2G share", lo=0.0, hi=1.0, metavar="F", default=_ASSUMED.v2g_share),
    charger_kw=Option("number", "charger power where the data has none (ACN; ElaadNL without MaxPower), kW; never "
                      "below the session's energy over its charging time", label="charger power", lo=0.0,
                      lo_open=True, hi=LIMITS["p_charge_max_kw"].high, metavar="KW", default=_ASSUMED.charger_kw),
    seed=Option("int", "random seed of the draws", lo=0, metavar="K", default=_ASSUMED.seed),
    strict=Option("flag", "a row that cannot be a session is an error (nothing written) instead of skipped"),
)


def _setup_import(p: argparse.ArgumentParser) -> None:
    p.description = _describe(
        "Turn session data in the formats users hold into a sessions table (times in UTC): acn = ACN-Data JSON "
        "(Caltech/JPL, as the API and the website export it: connectionTime, disconnectTime, kWhDelivered, "
        "userInputs' kWhRequested and requestedDeparture, which becomes the column departure_declared); elaad = "
        "ElaadNL open transactions CSV (';' or ','; UTCTransactionStart, UTCTransactionStop, TotalEnergy kWh, "
        "MaxPower kW, ChargeTime h). What the data lacks comes from the seeded assumptions below: a battery of "
        "--capacity-kwh (larger where the session took more), an energy at arrival of --soc-initial of it, a "
        f"target of that plus what the session took (times the efficiency {_ASSUMED.eta:g}), a charger never too "
        "weak for the energy. Rows that cannot be a session are skipped and said on stderr (line or item, id), with their "
        "count. Prints a one-line JSON summary on stdout; writes --out only on success."
    )
    p.epilog = SESSIONS_FORMAT + "\n  (imported tables add the column station, and for ACN departure_declared)"
    p.add_argument("format", choices=tuple(IMPORT_FORMATS), help="the file's format: acn (JSON) or elaad (CSV)")
    p.add_argument("file", type=Path, metavar="FILE", help="the session data to import")
    add_arguments(p, options=IMPORT_OPTIONS)


def _cmd_import(args) -> int:
    _options(args, IMPORT_OPTIONS)
    if args.energy is not None and args.format != "acn":
        return _usage_error(f"--energy is for ACN-Data (acn): {args.format} gives the energy taken only")
    if not args.file.is_file():
        return _usage_error(f"{args.file}: no such file")
    _check_out_dir(args.out, inputs=(args.file,))
    options = dict(capacity_kwh=args.capacity_kwh, soc_initial=args.soc_initial, v2g_share=args.v2g_share,
                   seed=args.seed, charger_kw=args.charger_kw, strict=args.strict)
    if args.format == "acn":
        options["energy"] = args.energy or ENERGY_CHOICES[0]
    frame = IMPORT_FORMATS[args.format](args.file, **options)
    fleet = Fleet.from_frame(frame)
    write_sessions(fleet, args.out)
    summary = {
        "sessions": str(args.out),
        "format": args.format,
        "n_sessions": len(fleet),
        "skipped": len(frame.attrs.get("skipped", ())),
        "energy_kwh": round(float(np.sum((fleet.energy_target_kwh - fleet.energy_initial_kwh) / fleet.eta_charge)), 6),
        "v2g_sessions": int(np.sum(fleet.p_discharge_max_kw > 0)),
        "first_arrival": str(fleet.arrival.min()),
        "last_departure": str(fleet.departure.max()),
        "departure_declared": "departure_declared" in frame.columns,
    }
    print(json.dumps(json_safe(summary), allow_nan=False), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------- run / report

RUN_DESCRIPTION = """\
Run a feeder study in mosaik: a simbench feeder (pandapower, with its load and generation profiles) with EV
aggregators whose EVs sit at its load buses, each following a reference signal, and a results table.
Scenarios: feeder_day (default: one day at 15-minute steps), grid_impact (the same under the policies
uncontrolled, edf, dcls (tracking only), dcls+grid (under a grid operator's limits) and peak_shaving, side by
side), remote (feeder_day with each aggregator in its own process).
Writes the tidy results table (results.csv), summary.json (every headline figure) and PNG plots into --out,
and prints the headline figures. Same options and seed: the same results, byte for byte (wall times, kept in
timing.csv and under summary.json's "timing", aside)."""

RUN_EPILOG = """\
results folder: results.csv (time, entity, attribute, value: MW, MWh, pu, % as in the attribute names),
  timing.csv (solve_time[s] per aggregator and step), summary.json ("complete", options, grid, "figures",
  "timing"), inputs/ (the sessions and signal tables given to the aggregators), power.png, energy.png,
  voltage.png, loading.png; grid_impact: one such folder per policy, comparison.csv and policies.png.
Ctrl-C: the folder keeps every step done and summary.json says "complete": false; exit status 130."""


def _setup_run(p: argparse.ArgumentParser) -> None:
    p.description = RUN_DESCRIPTION
    p.epilog = RUN_EPILOG
    add_arguments(p)  # from the options' table; the values are checked by Options.make (one-line errors)


def _cmd_run(args) -> int:
    try:
        opts = Options.make(args.scenario, **from_arguments(args))
        # the scenario's module by its name (imported here only: `evagg dispatch` and `fleet` need no mosaik)
        summary = importlib.import_module(f"evagg.scenarios.{opts.scenario}").run(opts)
    except ScenarioError as exc:
        return _usage_error(str(exc))
    except RunFailed as exc:
        return _error(f"the run failed: {exc}; the results folder says it is incomplete", 1)
    except Interrupted as exc:
        print(f"{PROG}: interrupted after {exc.steps_done} of {exc.n_steps} steps; the steps done are in "
              f"{exc.out} (summary.json says \"complete\": false; evagg report {exc.out} makes the plots)",
              file=sys.stderr, flush=True)
        return 130
    except KeyboardInterrupt:  # before the simulation started (loading the grid, writing the inputs)
        print(f"{PROG}: interrupted before the simulation started", file=sys.stderr, flush=True)
        return 130
    if args.scenario == "grid_impact":
        text = summary["table"]
    else:
        text = report.table_text({summary["method"]: summary})
    print(text)
    print(f"results: {summary['out']}", flush=True)
    return 0


def _setup_report(p: argparse.ArgumentParser) -> None:
    p.description = _describe(
        "Re-make the headline figures (summary.json), the plots and the printed table of a results folder of "
        "`evagg run` from its tables (results.csv, timing.csv); also for an interrupted run's folder."
    )
    p.add_argument("dir", metavar="DIR", type=Path, help="a results folder of evagg run")


def _cmd_report(args) -> int:
    try:
        text = report.remake(args.dir)
    except ScenarioError as exc:
        return _usage_error(str(exc))
    print(text)
    print(f"results: {args.dir}", flush=True)
    return 0


# ----------------------------------------------------------------------------------------------- sweep

SWEEP_EPILOG = """\
sweep folder D: runs/<grid>_<policy>_evs<N>_seed<K>/ (each a results folder of evagg run feeder_day),
  sweep.csv (one row per run: grid, policy, evs, penetration_pct, seed, status (done | skipped: complete from
  before | failed), error, folder, then every headline figure of its summary.json), sweep.json (the options
  common to the runs), hosting-<grid>.png (the hosting-capacity figures against EVs or penetration, per policy).
The same command again resumes: complete runs are skipped, the others run again.
Exit status: 0 every run complete; 1 some run failed (its error is in sweep.csv; the others ran); 2 bad options;
  130 Ctrl-C (sweep.csv holds the runs done)."""


def _setup_sweep(p: argparse.ArgumentParser) -> None:
    p.description = _describe(
        "Run a grid of feeder studies (numbers of EVs or penetrations x seeds x policies x grids) in parallel, "
        "on local worker processes or a Dask cluster, each into its own results folder; tabulate their headline "
        "figures and plot the hosting-capacity figures against EVs or penetration."
    )
    p.epilog = SWEEP_EPILOG
    sweep.setup(p)


def _cmd_sweep(args) -> int:
    try:
        frame, failed = sweep.run(args, say=lambda m: print(f"{PROG} {m}", file=sys.stderr, flush=True))
    except ScenarioError as exc:
        return _usage_error(str(exc))
    except KeyboardInterrupt:
        print(f"{PROG}: sweep interrupted; {args.out}/{sweep.TABLE} holds the runs done (the same command "
              "resumes)", file=sys.stderr, flush=True)
        return 130
    print(sweep.table_text(frame))
    print(f"results: {args.out}", flush=True)
    if failed:
        return _error(f"{failed} of {len(frame)} runs failed; their errors are in {args.out}/{sweep.TABLE}", 1)
    return 0


# ----------------------------------------------------------------------------------------------- plumbing

SUBCOMMANDS = {
    "run": ("run a feeder study in mosaik (feeder_day, grid_impact, remote): results, summary, plots", _setup_run,
            _cmd_run),
    "sweep": ("run a grid of feeder studies in parallel (local processes or Dask): sweep.csv, hosting plots",
              _setup_sweep, _cmd_sweep),
    "report": ("re-make the summary, plots and table of a results folder", _setup_report, _cmd_report),
    "dispatch": ("dispatch a fleet to follow a reference signal, write the result table", _setup_dispatch,
                 _cmd_dispatch),
    "fleet": ("write a synthetic fleet (and optionally a reference signal)", _setup_fleet, _cmd_fleet),
    "import": ("turn ACN-Data JSON or ElaadNL CSV session data into a sessions table", _setup_import, _cmd_import),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="EV aggregator battery dispatch: follow a reference signal (kW) with a fleet of EVs.",
        epilog="Run 'evagg COMMAND --help' for a command's options and table formats.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_line, setup, handler) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_line, formatter_class=_Formatter)
        setup(p)
        p.set_defaults(handler=handler)
    return parser


class _WarningsToStderr(logging.StreamHandler):
    """evagg's warnings as one line ``evagg: warning: ...`` on the current sys.stderr (looked up at each record,
    so that a caller who swaps sys.stderr, as pytest does, still gets them)."""

    def __init__(self):
        super().__init__()
        self.setLevel(logging.WARNING)
        self.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))

    def format(self, record) -> str:
        record.levelname = record.levelname.lower()
        return " ".join(super().format(record).split())

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ sets it; the property always answers sys.stderr
        pass


def _show_warnings() -> None:
    logger = logging.getLogger("evagg")
    if not any(isinstance(h, _WarningsToStderr) for h in logger.handlers):
        logger.addHandler(_WarningsToStderr())


def main(argv=None) -> int:
    """Run the `evagg` command with `argv` (default: sys.argv[1:]); returns the exit code."""
    _show_warnings()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed by argparse)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.handler(args)
    except InputError as exc:
        return _error(str(exc), 2)
    except _UsageError as exc:
        return _error(str(exc), 2)
    except FileNotFoundError as exc:
        return _error(f"{exc.filename}: no such file", 2)
    except IsADirectoryError as exc:
        return _error(f"{exc.filename}: is a directory", 2)
    except PermissionError as exc:
        return _error(f"{exc.filename}: permission denied", 1)
    except OSError as exc:
        return _error(f"{getattr(exc, 'filename', '') or ''} {exc.strerror or exc}".strip(), 1)
    except ImportError as exc:
        return _error(f"the {getattr(args, 'method', 'requested')} method is not available ({exc})", 1)


class _UsageError(Exception):
    pass


def _error(message: str, code: int) -> int:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    return code


def _usage_error(message: str) -> int:
    return _error(message, 2)


def _check_out_dir(path: Path, inputs=()) -> None:
    """Fail before any work when the output cannot be written where asked, or would replace one of `inputs`
    (the files the command reads, or another of its outputs): writing it would lose that file."""
    directory = path.parent if str(path.parent) else Path(".")
    for other in inputs:
        # the same path in any spelling, or another name of the same file (a hard link)
        if Path(other).resolve() == path.resolve() or (path.exists() and Path(other).exists()
                                                       and os.path.samefile(path, other)):
            raise _UsageError(f"{path}: is also {other}, which this command reads or writes; give another file name")
    if path.is_dir():
        raise _UsageError(f"{path}: is a directory, give a file name")
    if not directory.is_dir():
        raise _UsageError(f"{path}: the directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise _UsageError(f"{path}: cannot write in the directory {directory}")


if __name__ == "__main__":
    sys.exit(main())
