"""`evagg sweep`: a grid of feeder runs (EVs or penetration x seeds x policies x grids) run in parallel, one results
folder each, a table of their headline figures and hosting-capacity plots.

    evagg sweep --evs 20,60,100 --seeds 1,2,3 --policies uncontrolled,dcls+grid --workers 2 --out D
    evagg sweep --penetration 10,30,50 --scheduler tcp://10.0.0.5:8786 --out /shared/D     (a Dask cluster)

Each run is one self-contained task (`run_one`: the run's options in, its row out) that writes its folder
D/runs/<grid>_<policy>_evs<N>_seed<K>/ as `evagg run feeder_day` does; it goes to an executor: local processes
(concurrent.futures.ProcessPoolExecutor, `--workers`) or a Dask cluster (`--scheduler`: distributed's
`Client.get_executor()`, the same interface), so a cluster whose workers see D (a shared file system) needs
nothing else. D/sweep.csv has one row per run: its parameters, status (done, skipped: complete from before, failed)
and error, and every headline figure of its summary.json; D/hosting-<grid>.png plots the hosting-capacity figures
against EVs or penetration, per policy, the line the median over the seeds and the band their range.

Resume: the same command on the same D skips the runs whose folders are complete (summary.json "complete": true)
and re-runs the others; D/sweep.json keeps the options common to the runs and a resume with other ones is refused.
A failing run is a row with its error and the others go on; the exit status is then 1.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import importlib
import multiprocessing
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from evagg.simulators.grids import GridError, grid_file, load_grid

from . import report
from .errors import Interrupted, RunFailed, ScenarioError
from .folder import SUMMARY, read_json, write_json
from .options import DEFAULT_GRID, DEFAULT_METHOD, OPTIONS, Options, Policy, add_arguments, from_arguments

# options of `evagg run` that the sweep gives itself: its axes (lists), its folder, and what is per run by design
AXES = ("evs", "seed", "grid", "method")
OWN = (*AXES, "scenario", "policies", "out", "overwrite", "progress", "connect", "answer_timeout")
RUNS = "runs"
TABLE = "sweep.csv"
STATE = "sweep.json"
PARAMETERS = ("grid", "policy", "evs", "penetration_pct", "seed")
# the hosting-capacity panels: figure key, axis label, reference line (or None)
HOSTING = (
    ("trafo_loading_max_pct", "max transformer loading [%]", 100.0),
    ("line_loading_max_pct", "max line loading [%]", 100.0),
    ("v_min_pu", "min bus voltage [pu]", "v_lo"),
    ("voltage_violations", "bus-steps outside the band", None),
    ("trafo_overload_steps", "steps with the transformer > 100 %", None),
    ("line_overload_steps", "steps with a line > 100 %", None),
    ("need_unmet_kwh", "need unmet [kWh]", None),
    ("tracking_rmse_kw", "tracking RMSE [kW]", None),
)


# ----------------------------------------------------------------------------------------------- command line


def setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--evs", metavar="LIST", default=None,
                   help="numbers of EVs, comma-separated (e.g. 20,60,100); or give --penetration")
    p.add_argument("--penetration", metavar="LIST", default=None,
                   help="EV penetration in %% of the feeder's load buses (EVs = round(p/100 x load buses)), "
                        "comma-separated (e.g. 10,30,50)")
    p.add_argument("--seeds", metavar="LIST", default="1", help="random seeds of the fleets and signals; default: 1")
    p.add_argument("--policies", metavar="LIST", default=DEFAULT_METHOD,
                   help="policies (a method, <method>+grid, peak_shaving[+grid], no_evs); default: " + DEFAULT_METHOD)
    p.add_argument("--grids", metavar="LIST", default=DEFAULT_GRID,
                   help="simbench codes or pandapower JSON files; default: " + DEFAULT_GRID)
    p.add_argument("--out", metavar="D", type=Path, required=True,
                   help="the sweep's folder (runs/, sweep.csv, sweep.json, plots); an existing sweep's is resumed")
    run = p.add_mutually_exclusive_group()
    run.add_argument("--workers", metavar="N", type=int, default=None,
                     help="local worker processes; default: the CPUs (at most the runs)")
    run.add_argument("--scheduler", metavar="ADDRESS", default=None,
                     help="a Dask distributed scheduler (e.g. tcp://10.0.0.5:8786) to send the runs to; its workers "
                          "must have evagg installed and see --out")
    g = p.add_argument_group("options of each run (as evagg run feeder_day)")
    add_arguments(g, exclude=OWN)


def parse_list(text: str, what: str, kind=str) -> list:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ScenarioError(f"{what}: no value given")
    try:
        values = [kind(t) for t in items]
    except ValueError:
        raise ScenarioError(f"{what} {text!r} is not a comma-separated list of numbers") from None
    if len(set(values)) < len(values):
        raise ScenarioError(f"{what} {text!r} lists a value twice")
    return values


# ----------------------------------------------------------------------------------------------- the grid of runs


def label(grid: str) -> str:
    """A folder-safe name of a grid (a JSON file by its stem)."""
    stem = Path(grid).stem if grid.lower().endswith(".json") else grid
    return re.sub(r"[^A-Za-z0-9._+-]", "_", stem)


def plan(args) -> tuple[dict, list[dict]]:
    """(the options common to the runs, one spec per run: its parameters and options); ScenarioError for bad
    options (checked here for every run, before any runs)."""
    if (args.evs is None) == (args.penetration is None):
        raise ScenarioError("give either --evs LIST or --penetration LIST")
    common = from_arguments(args, exclude=OWN)
    seeds = parse_list(args.seeds, "--seeds", int)
    policies = [Policy(p) for p in parse_list(args.policies, "--policies")]
    grids = parse_list(args.grids, "--grids")
    if len({label(g) for g in grids}) < len(grids):
        raise ScenarioError(f"--grids {args.grids}: two grids have the same name")
    for grid in grids:  # a missing grid file is a usage error, before any runs (a simbench code is checked by each run)
        try:
            grid_file(grid)
        except GridError as exc:
            raise ScenarioError(f"--grids: {exc}") from None
    specs = []
    for grid in grids:
        if args.evs is not None:
            sizes = [(int(n), None) for n in parse_list(args.evs, "--evs", _whole)]
        else:
            sizes = [(_evs_of(grid, p), p) for p in parse_list(args.penetration, "--penetration", float)]
        for policy in policies:
            for evs, pct in sizes:
                for seed in seeds:
                    name = f"{label(grid)}_{policy.name}_evs{evs}_seed{seed}"
                    options = dict(common, evs=evs, seed=seed, grid=grid, method=policy.name)
                    Options.make("feeder_day", **options)  # every run's options checked before any runs
                    specs.append({"grid": grid, "policy": policy.name, "evs": evs, "penetration_pct": pct,
                                  "seed": seed, "folder": f"{RUNS}/{name}", "options": options})
    names = [s["folder"] for s in specs]
    if len(set(names)) < len(names):
        raise ScenarioError("two runs of the sweep are the same (e.g. penetrations giving the same number of EVs)")
    state = {k: v for k, v in Options.make("feeder_day", **dict(common, evs=1)).as_dict().items()
             if k not in (*AXES, "scenario", "policies", "aggregators", "remote", "connect", "answer_timeout")}
    state["aggregators"] = common.get("aggregators", OPTIONS["aggregators"].default)
    return state, specs


def _whole(text: str) -> int:
    v = float(text)
    if v != int(v):
        raise ValueError(text)
    return int(v)


def _evs_of(grid: str, pct: float) -> int:
    if not 0 < pct <= 1000:
        raise ScenarioError(f"--penetration {pct:g} must be a percentage above 0 (of the load buses)")
    try:
        buses = len(load_grid(grid).load_buses)
    except GridError as exc:
        raise ScenarioError(f"--penetration needs the grid's load buses: {exc}") from None
    evs = int(round(pct / 100.0 * buses))
    if evs < 1:
        raise ScenarioError(f"--penetration {pct:g} % of the {buses} load buses of {grid} is no EV")
    return evs


# ----------------------------------------------------------------------------------------------- one run


def run_one(spec: dict, root: str) -> dict:
    """One run of the sweep, self-contained (a task for any executor): feeder_day with `spec["options"]` into
    `root`/`spec["folder"]`; returns its row (parameters, status, error, figures). Never raises for a failed
    run: the error is in the row."""
    out = Path(root) / spec["folder"]
    row = {k: spec[k] for k in PARAMETERS}
    row["folder"] = spec["folder"]
    t0 = time.perf_counter()
    try:
        opts = Options.make("feeder_day", **spec["options"], out=str(out), overwrite=True, progress=False)
        # imported here (not at the top): the module that runs mosaik, in the worker only
        importlib.import_module("evagg.scenarios.feeder_day").run(opts)
        row["status"], row["error"] = "done", ""
    except (ScenarioError, RunFailed) as exc:
        row["status"], row["error"] = "failed", " ".join(str(exc).split())
    except Interrupted as exc:
        row["status"], row["error"] = "failed", f"interrupted after {exc.steps_done} of {exc.n_steps} steps"
    except Exception as exc:  # noqa: BLE001 - any failure of one run is its row; the others go on
        row["status"], row["error"] = "failed", f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    row["wall_s"] = round(time.perf_counter() - t0, 3)
    return _with_figures(row, out)


def complete(out: Path) -> bool:
    try:
        summary = read_json(out / SUMMARY)
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and summary.get("complete") is True


def _with_figures(row: dict, out: Path) -> dict:
    """`row` with every headline figure of the run's summary.json (the figure's place, e.g. v_min_at, as text)."""
    try:
        summary = read_json(out / SUMMARY)
    except (OSError, ValueError):
        return row
    if not isinstance(summary, dict):  # damaged by hand: the row keeps its status and error
        return row
    row["complete"] = bool(summary.get("complete"))
    if row.get("status") == "done" and not row["complete"]:
        row["status"] = "failed"
    if not row.get("error") and summary.get("error"):
        row["error"] = summary["error"]
    for key, value in (summary.get("figures") or {}).items():
        row[key] = " ".join(str(v) for v in value) if isinstance(value, list) else value
    tm = summary.get("timing") or {}
    row["solve_time_s"] = tm.get("solve_time_s")
    return row


# ----------------------------------------------------------------------------------------------- executors


def executor(workers: int | None, scheduler: str | None, n_runs: int):
    """(executor, what it is) for the runs: local processes, or a Dask cluster's (the same interface)."""
    if scheduler is not None:
        try:
            from distributed import Client  # dask: only a sweep on a cluster needs it
        except ImportError as exc:  # pragma: no cover
            raise ScenarioError(f"--scheduler needs dask's distributed package ({exc})") from None
        try:
            client = Client(scheduler, timeout=30)
        except (OSError, TimeoutError) as exc:
            raise ScenarioError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
        return _DaskExecutor(client), f"Dask scheduler {scheduler}"
    n = workers if workers is not None else min(n_runs, multiprocessing.cpu_count())
    if n < 1:
        raise ScenarioError(f"--workers {workers} must be at least 1")
    n = max(1, min(n, n_runs))
    # spawn: each worker a fresh interpreter, as on a cluster (nothing of the parent's state, no fork with threads)
    return cf.ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn")), \
        f"{n} local worker process(es)"


class _DaskExecutor:
    """distributed's concurrent.futures executor, which closes its client with it."""

    def __init__(self, client):
        self.client = client
        self.executor = client.get_executor(pure=False)  # every run is a task of its own, never deduplicated

    def submit(self, fn, *args):
        return self.executor.submit(fn, *args)

    def shutdown(self, wait=True, cancel_futures=False):
        try:
            self.executor.shutdown(wait=wait and not cancel_futures)
        finally:
            self.client.close()


# ----------------------------------------------------------------------------------------------- the sweep


def run(args, say=print) -> tuple[pd.DataFrame, int]:
    """Run (or resume) the sweep of the parsed command line; returns (sweep.csv's frame, failed runs)."""
    state, specs = plan(args)
    root = Path(args.out)
    _check_state(root, state)
    (root / RUNS).mkdir(parents=True, exist_ok=True)
    write_json(root / STATE, state)
    rows: dict[str, dict] = {}
    todo = []
    for spec in specs:
        out = root / spec["folder"]
        if complete(out):
            rows[spec["folder"]] = _with_figures(dict({k: spec[k] for k in PARAMETERS}, folder=spec["folder"],
                                                      status="skipped", error=""), out)
        else:
            todo.append(spec)
    say(f"sweep: {len(specs)} runs, {len(specs) - len(todo)} complete from before, {len(todo)} to run")
    interrupted = False
    if todo:
        pool, what = executor(args.workers, args.scheduler, len(todo))
        say(f"sweep: running on {what}")
        futures = {}
        try:
            futures = {pool.submit(run_one, spec, str(root.resolve())): spec for spec in todo}
            for k, future in enumerate(cf.as_completed(futures), 1):
                spec = futures[future]
                try:
                    row = future.result()
                except Exception as exc:  # noqa: BLE001 - the worker itself died (not the run): the run's row
                    row = _with_figures(dict({p: spec[p] for p in PARAMETERS}, folder=spec["folder"],
                                             status="failed", error=f"{type(exc).__name__}: {exc}"),
                                        root / spec["folder"])
                rows[spec["folder"]] = row
                say(f"sweep: [{k}/{len(todo)}] {spec['folder']}: {row['status']}"
                    + (f" ({row['error']})" if row["error"] else ""))
                _write(root, specs, rows)  # as it goes: a stopped sweep keeps its table
        except KeyboardInterrupt:
            interrupted = True
        finally:
            pool.shutdown(wait=not interrupted, cancel_futures=True)
    frame = _write(root, specs, rows)
    plot(root, frame)
    if interrupted:
        raise KeyboardInterrupt
    return frame, int((frame["status"] == "failed").sum())


def _check_state(root: Path, state: dict) -> None:
    path = root / STATE
    if root.exists() and not root.is_dir():
        raise ScenarioError(f"{root}: exists and is not a folder")
    if path.is_file():
        try:
            before = read_json(path)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ScenarioError(f"{path}: not valid JSON ({exc}): the sweep's options are lost; use another "
                                "--out") from None
        if not isinstance(before, dict):
            raise ScenarioError(f"{path}: holds a {type(before).__name__}, not a sweep's options; use another --out")
        diff = sorted(k for k in set(state) | set(before) if before.get(k) != _jsonable(state.get(k)))
        if diff:
            shown = ", ".join(f"{k} {before.get(k)!r} -> {_jsonable(state.get(k))!r}" for k in diff)
            raise ScenarioError(f"{root} holds a sweep of other options ({shown}); use another --out")
    elif root.is_dir() and any(root.iterdir()):
        raise ScenarioError(f"{root}: the folder is not empty and holds no {STATE}: it is not a sweep's folder")


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def _write(root: Path, specs: list[dict], rows: dict) -> pd.DataFrame:
    """sweep.csv: the rows so far, in the order of the sweep's grid (not of completion)."""
    ordered = [rows[s["folder"]] for s in specs if s["folder"] in rows]
    frame = pd.DataFrame(ordered)
    first = [c for c in (*PARAMETERS, "status", "error", "folder", "complete") if c in frame.columns]
    frame = frame[first + [c for c in frame.columns if c not in first]]
    tmp = root / f".{TABLE}.tmp"
    frame.to_csv(tmp, index=False, lineterminator="\n")
    tmp.replace(root / TABLE)
    return frame


# ----------------------------------------------------------------------------------------------- plots


def plot(root: Path, frame: pd.DataFrame) -> list[Path]:
    """hosting-<grid>.png: each hosting-capacity figure against EVs (or penetration), one line per policy (the
    median over the seeds) with the seeds' range as a band."""
    done = frame[frame["status"] != "failed"] if "status" in frame else frame
    if done.empty:
        return []
    plt = report._pyplot()
    paths = []
    by_pct = done["penetration_pct"].notna().all()
    xcol, xlabel = ("penetration_pct", "EV penetration [% of load buses]") if by_pct else ("evs", "EVs")
    for grid, runs in done.groupby("grid", sort=False):
        fig, axes = plt.subplots(2, 4, figsize=(15, 6.5), sharex=True)
        for ax, (key, ylabel, ref) in zip(axes.flat, HOSTING):
            for policy, sel in runs.groupby("policy", sort=False):
                if key not in sel or sel[key].isna().all():
                    continue
                g = sel.groupby(xcol)[key]
                x = np.asarray(g.median().index, dtype=float)
                line, = ax.plot(x, g.median().to_numpy(dtype=float), marker="o", ms=3, label=policy)
                if (g.size() > 1).any():
                    ax.fill_between(x, g.min().to_numpy(dtype=float), g.max().to_numpy(dtype=float),
                                    color=line.get_color(), alpha=0.2, lw=0)
            if ref == "v_lo" and "v_band_pu" in runs:
                ref = _band_lo(runs)
            if isinstance(ref, float):
                ax.axhline(ref, color="0.4", lw=0.8, ls="--")
            ax.set_ylabel(ylabel)
        for ax in axes[-1]:
            ax.set_xlabel(xlabel)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        seeds = runs["seed"].nunique()
        fig.legend(handles, labels, loc="upper right", ncol=min(len(labels), 6), frameon=False)
        fig.suptitle(f"{grid}: hosting capacity (lines: median over {seeds} seed(s); bands: their range)",
                     x=0.01, ha="left")
        fig.tight_layout(rect=(0, 0, 1, 0.93))
        path = root / f"hosting-{label(grid)}.png"
        report._save(fig, path)
        paths.append(path)
    return paths


def _band_lo(runs: pd.DataFrame):
    lows = {str(v).split()[0] for v in runs["v_band_pu"].dropna()}
    return float(lows.pop()) if len(lows) == 1 else None


def table_text(frame: pd.DataFrame) -> str:
    """The sweep's rows as plain text: parameters, status and a few figures."""
    cols = [c for c in (*PARAMETERS, "status", "trafo_loading_max_pct", "line_loading_max_pct", "v_min_pu",
                        "need_unmet_kwh", "tracking_rmse_kw") if c in frame.columns]
    shown = frame[cols].copy()
    if "penetration_pct" in shown and shown["penetration_pct"].isna().all():
        shown = shown.drop(columns="penetration_pct")
    return shown.to_string(index=False, na_rep="-")
