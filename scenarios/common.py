"""What the scenarios share: their options (checked, with one-line errors), the fleets, the results folder and
the bookkeeping of a run (progress, Ctrl-C, an incomplete run).

A results folder holds:

- ``results.csv``: the tidy results table (time, entity, attribute, value), one row per recorded value and step;
  MW, MWh, pu, % as in the attribute names (see `evagg.scenarios.feeder_day` for what is recorded);
- ``timing.csv``: the aggregators' wall time per step (``solve_time[s]``), kept apart because it differs from run
  to run while everything else is the same, byte for byte, for the same options and seed;
- ``summary.json``: ``complete`` (false while running and after an interrupted or failed run), the options, the
  grid, ``figures`` (the headline figures, recomputed from results.csv by `evagg.scenarios.report`) and
  ``timing`` (solve and wall times: the only fields that differ between identical runs);
- ``inputs/``: the sessions (and signal) tables the aggregators were given;
- the PNG plots (`evagg.scenarios.report`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal as _signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from evagg.simulators.dispatch import METHODS
from evagg.simulators.grids import GridError, load_grid

SCENARIOS = ("feeder_day", "grid_impact", "remote")
DEFAULT_GRID = "1-LV-rural2--0-sw"  # simbench's rural LV feeder: 97 buses, 99 loads, 8 PV units, a 250 kVA transformer
DEFAULT_START = "2026-01-14T12:00:00"  # a winter weekday from noon: the evening peak, the night, the morning
DEFAULT_EVS = 60
DEFAULT_AGGREGATORS = 2
DEFAULT_METHOD = "dcls"
DEFAULT_POLICIES = ("uncontrolled", "edf", "dcls", "dcls+grid", "peak_shaving")
COUPLINGS = ("delayed", "iterative")
DEFAULT_HORIZON = 16  # steps planned ahead (4 h at 15 min): with the signal's next steps known, tracks better than 8
SUMMARY = "summary.json"
RESULTS = "results.csv"
TIMING = "timing.csv"
INPUTS = "inputs"


@dataclass(frozen=True)
class Policy:
    """How the aggregators run in one world: their dispatch `method`, what they follow (`reference`: the signal,
    the feeder's peak-shaving reference, or nothing for a world without EVs) and whether a grid operator sends them
    limits (`grid_aware`). Names: a method (``dcls``, ``edf``, ...), ``<method>+grid`` (the same under the grid
    operator's limits), ``peak_shaving`` (dcls following the room below a target on the feeder, see
    simulators/peak_shaving.py; ``peak_shaving+grid`` adds the operator), ``no_evs`` (the feeder alone)."""

    name: str
    method: str
    reference: str  # signal | peak_shaving | none
    grid_aware: bool

    @classmethod
    def parse(cls, name: str) -> "Policy":
        base, plus, suffix = str(name).strip().partition("+")
        if plus and suffix != "grid":
            raise ScenarioError(f"unknown policy {name!r}: the only suffix is +grid (e.g. dcls+grid)")
        grid_aware = bool(plus)
        if base == "no_evs":
            if grid_aware:
                raise ScenarioError("no_evs+grid: without EVs there is nothing to limit")
            return cls(name, "uncontrolled", "none", False)
        if base == "peak_shaving":
            return cls(name, DEFAULT_METHOD, "peak_shaving", grid_aware)
        if base not in METHODS:
            raise ScenarioError(f"unknown policy {name!r}; choose a method ({', '.join(METHODS)}), <method>+grid, "
                                "peak_shaving[+grid] or no_evs")
        return cls(name, base, "signal", grid_aware)


class ScenarioError(ValueError):
    """Bad input to a scenario (an option out of range, a grid that does not load, an output folder in the way):
    a one-line message; nothing has been written."""


class RunFailed(RuntimeError):
    """The simulation stopped before its end (a simulator failed); the results folder says so."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C: the results folder holds the steps done and says it is incomplete."""

    def __init__(self, out: Path, steps_done: int, n_steps: int):
        super().__init__(f"interrupted after {steps_done} of {n_steps} steps")
        self.out, self.steps_done, self.n_steps = out, steps_done, n_steps


# ----------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Options:
    """A scenario's options, checked (`Options.make`)."""

    scenario: str = "feeder_day"
    days: int = 1
    step_min: float = 15.0
    steps: int | None = None  # run only the first `steps` steps of the days (trials, tests)
    evs: int = DEFAULT_EVS
    aggregators: int = DEFAULT_AGGREGATORS
    v2g_share: float = 0.5
    method: str = DEFAULT_METHOD
    policies: tuple = DEFAULT_POLICIES
    seed: int = 1
    grid: str = DEFAULT_GRID
    start: str = DEFAULT_START
    signal: str | None = None  # a signal CSV (time, p_ref_kw) for the whole fleet, else synthetic regulation
    horizon: int = DEFAULT_HORIZON
    forecast: str = "perfect"  # perfect: the signal's next steps are known; hold: the current value is held
    v_band: tuple = (0.95, 1.05)
    coupling: str = "delayed"  # grid-aware policies: operator limits one step late, or settled within the step
    peak_target_kw: float | None = None  # peak_shaving: the feeder level to keep below (None: the flat level)
    out: str | None = None
    overwrite: bool = False
    progress: bool = False
    remote: bool = False
    plots: bool = True

    @property
    def step_s(self) -> int:
        return int(round(self.step_min * 60))

    @property
    def n_steps(self) -> int:
        full = self.days * 86400 // self.step_s
        return full if self.steps is None else min(self.steps, full)

    @property
    def until(self) -> int:
        return self.n_steps * self.step_s

    @property
    def start64(self) -> np.datetime64:
        return np.datetime64(self.start, "s")

    def fleet_sizes(self) -> list[int]:
        base, extra = divmod(self.evs, self.aggregators)
        return [base + (1 if i < extra else 0) for i in range(self.aggregators)]

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("out", "overwrite", "progress", "plots"):
            d.pop(k)
        d["policies"] = list(self.policies)
        d["v_band"] = list(self.v_band)
        d["step_s"] = self.step_s
        d["n_steps"] = self.n_steps
        return d

    @classmethod
    def make(cls, scenario: str = "feeder_day", **options) -> "Options":
        """Checked options; ScenarioError (one line) for an unknown or out-of-range one."""
        if scenario not in SCENARIOS:
            raise ScenarioError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
        names = {f.name for f in dataclasses.fields(cls)} - {"scenario"}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ScenarioError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        o = {k: v for k, v in options.items() if v is not None or k in ("out", "signal")}
        days = _int(o.get("days", 1), "days (--days)", 1, 366)
        step_min = _number(o.get("step_min", 15.0), "step minutes (--step-min)", 1.0, 240.0)
        step_s = step_min * 60
        if abs(step_s - round(step_s)) > 1e-9:
            raise ScenarioError(f"step {step_min:g} min is not a whole number of seconds")
        if 86400 % round(step_s):
            raise ScenarioError(f"step {step_min:g} min does not divide a day (e.g. 5, 10, 15, 30, 60 min)")
        steps = o.get("steps")
        if steps is not None:
            steps = _int(steps, "steps (--steps)", 1, days * 86400 // round(step_s))
        evs = _int(o.get("evs", DEFAULT_EVS), "number of EVs (--evs)", 1, 100_000)
        aggregators = _int(o.get("aggregators", DEFAULT_AGGREGATORS), "number of aggregators (--aggregators)", 1, 16)
        if aggregators > evs:
            aggregators = evs  # every aggregator has at least one EV
        v2g = _number(o.get("v2g_share", 0.5), "V2G share (--v2g-share)", 0.0, 1.0)
        method = str(o.get("method", DEFAULT_METHOD))
        Policy.parse(method)  # a method, or a policy such as dcls+grid for a single run
        policies = o.get("policies")
        if policies is None:
            policies = DEFAULT_POLICIES if "method" not in o else tuple(
                dict.fromkeys(["uncontrolled", "edf", method, f"{Policy.parse(method).method}+grid", "peak_shaving"]))
        elif isinstance(policies, str):
            policies = tuple(p.strip() for p in policies.split(",") if p.strip())
        policies = tuple(dict.fromkeys(policies))
        if not policies:
            raise ScenarioError("no policy given (--policies); e.g. uncontrolled,dcls,dcls+grid")
        for p in policies:
            Policy.parse(p)
        coupling = str(o.get("coupling", "delayed"))
        if coupling not in COUPLINGS:
            raise ScenarioError(f"coupling must be {' or '.join(COUPLINGS)}, got {coupling!r}")
        peak_target = o.get("peak_target_kw")
        if peak_target is not None:
            peak_target = _number(peak_target, "peak-shaving target (--peak-target, kW)", -1e6, 1e6)
        seed = _int(o.get("seed", 1), "seed (--seed)", 0, 2**32 - 1)
        start = o.get("start", DEFAULT_START)
        try:
            ts = pd.Timestamp(str(start))
        except (TypeError, ValueError):
            raise ScenarioError(f"start {start!r} is not an ISO 8601 time like {DEFAULT_START}") from None
        if ts.tzinfo is not None:
            ts = ts.tz_convert("UTC").tz_localize(None)
        if ts != ts.floor("s") or (ts - ts.normalize()).total_seconds() % round(step_s):
            raise ScenarioError(f"start {start} must fall on a boundary of the {step_min:g}-minute steps")
        horizon = _int(o.get("horizon", DEFAULT_HORIZON), "horizon (--horizon, steps)", 1, 192)
        forecast = str(o.get("forecast", "perfect"))
        if forecast not in ("perfect", "hold"):
            raise ScenarioError(f"forecast must be perfect or hold, got {forecast!r}")
        band = o.get("v_band", (0.95, 1.05))
        if isinstance(band, str):
            try:
                band = tuple(float(x) for x in band.split(","))
            except ValueError:
                raise ScenarioError(f"voltage band {band!r} is not two numbers LO,HI in pu") from None
        band = tuple(float(x) for x in band)
        if len(band) != 2 or not all(math.isfinite(x) for x in band) or not 0 < band[0] < band[1]:
            raise ScenarioError(f"voltage band {band} must be two numbers 0 < LO < HI in pu")
        signal = o.get("signal")
        grid = str(o.get("grid", DEFAULT_GRID))
        return cls(scenario=scenario, days=days, step_min=step_min, steps=steps, evs=evs, aggregators=aggregators,
                   v2g_share=v2g, method=method, policies=policies, seed=seed, grid=grid,
                   start=ts.strftime("%Y-%m-%dT%H:%M:%S"), signal=None if signal is None else str(signal),
                   horizon=horizon, forecast=forecast, v_band=band, coupling=coupling, peak_target_kw=peak_target,
                   out=None if o.get("out") is None else str(o["out"]), overwrite=bool(o.get("overwrite", False)),
                   progress=bool(o.get("progress", False)), remote=bool(o.get("remote", scenario == "remote")),
                   plots=bool(o.get("plots", True)))


def _int(value, what: str, lo: int, hi: int) -> int:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ScenarioError(f"{what} must be a whole number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(v) or v != int(v):
        raise ScenarioError(f"{what} must be a whole number, got {value!r}")
    if not lo <= v <= hi:
        raise ScenarioError(f"{what} must be between {lo} and {hi}, got {int(v)}")
    return int(v)


def _number(value, what: str, lo: float, hi: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ScenarioError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise ScenarioError(f"{what} must be between {lo:g} and {hi:g}, got {value!r}")
    return v


def check_inputs(opts: Options):
    """Load the grid and read the signal (if any) before anything is written: ScenarioError if they do not work."""
    if not opts.grid.strip():
        raise ScenarioError("--grid is empty: give a simbench code (e.g. 1-LV-semiurb4--0-sw) or a pandapower .json "
                            "file")
    try:
        feeder = load_grid(opts.grid)
    except GridError as exc:
        raise ScenarioError(str(exc)) from None
    if not len(feeder.load_buses):
        raise ScenarioError(f"grid {feeder.spec} has no load in service: there is no bus to spread the EVs over")
    reference = None
    if opts.signal is not None:
        from evagg.simulators.aggregator import SignalSource
        from evagg.simulators.tables import InputError, read_reference

        try:
            reference = read_reference(opts.signal)
            # the run's steps must be covered; the forecast's look-ahead is cut at the signal's end
            SignalSource(reference, opts.start64, opts.step_s, source=f"signal {opts.signal}").check_covers(
                opts.n_steps)
        except FileNotFoundError:
            raise ScenarioError(f"signal {opts.signal}: no such file") from None
        except (InputError, ValueError) as exc:
            raise ScenarioError(str(exc)) from None
    return feeder, reference


# ----------------------------------------------------------------------------------------------- fleets


def derived_seed(*parts: int) -> int:
    """A seed for one part of a scenario (aggregator, day), from the scenario's seed: independent streams."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def build_fleet(opts: Options, i: int, n: int, buses: np.ndarray):
    """Aggregator i's fleet: `n` EVs, each at a fixed load bus (drawn from `buses`) with or without V2G, plugging in
    once a day (synthetic sessions: home, workplace, depot) on every date from the day before the start to the
    end, keeping the sessions plugged in at some time of the simulated period.

    A session already plugged in at the start counts as arriving then, with the energy it would have if it had
    charged flat out since its real arrival (up to its target), as an uncontrolled charger does: every policy
    starts from the same state, the uncontrolled one without a jump, and the reference's baseline and the
    dispatch see what is left of its need over the time that is left."""
    from evagg.simulators.fleet import Fleet
    from evagg.simulators.synthetic import synthetic_fleet

    rng = np.random.default_rng(derived_seed(opts.seed, i, 0))
    ev_bus = np.asarray(buses, dtype=np.int64)[rng.integers(0, len(buses), size=n)]
    ev_v2g = rng.random(n) < opts.v2g_share
    width = max(5, len(str(max(n - 1, 0))))
    start = opts.start64
    end = start + np.timedelta64(opts.until, "s")
    first_date = start.astype("datetime64[D]") - np.timedelta64(1, "D")
    n_dates = int((end.astype("datetime64[D]") - first_date) / np.timedelta64(1, "D")) + 1
    parts = []
    for d in range(n_dates):
        f = synthetic_fleet(n, seed=derived_seed(opts.seed, i, d + 1), start=str(first_date + np.timedelta64(d, "D")),
                            days=1, v2g_share=1.0)
        parts.append(dataclasses.replace(
            f, ev_id=np.array([f"ev{j:0{width}d}-d{d}" for j in range(n)], dtype=object), bus=ev_bus,
            p_discharge_max_kw=np.where(ev_v2g, f.p_discharge_max_kw, 0.0)))
    values = {}
    for fld in dataclasses.fields(Fleet):
        vs = [getattr(p, fld.name) for p in parts]
        values[fld.name] = (pd.concat(vs, ignore_index=True) if isinstance(vs[0], pd.DataFrame)
                            else np.concatenate(vs))
    keep = (values["departure"] > start) & (values["arrival"] < end)
    values = {k: (v[keep] if isinstance(v, np.ndarray) else v[keep].reset_index(drop=True)) for k, v in values.items()}
    early = values["arrival"] < start
    if early.any():
        before_h = (start - values["arrival"][early]) / np.timedelta64(1, "h")
        e0, cap = values["energy_initial_kwh"][early], values["capacity_kwh"][early]
        eta, pmax = values["eta_charge"][early], values["p_charge_max_kw"][early]
        full = np.maximum(np.minimum(values["energy_target_kwh"][early], cap), e0)
        e_start = np.minimum(e0 + eta * pmax * before_h, full)
        values["energy_initial_kwh"] = values["energy_initial_kwh"].copy()
        values["energy_initial_kwh"][early] = np.round(e_start, 3)
        values["arrival"] = np.maximum(values["arrival"], start)
    return Fleet(**values)


# ----------------------------------------------------------------------------------------------- results folder


def default_out(scenario: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("results") / f"{scenario}-{stamp}"
    out, k = base, 1
    while out.exists():
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    return out


def check_out(out, scenario: str, overwrite: bool) -> Path:
    """The results folder to use; ScenarioError if it is in the way (nothing is created here)."""
    out = default_out(scenario) if out is None else Path(out)
    if out.exists() and not out.is_dir():
        raise ScenarioError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ScenarioError(f"{out}: the folder exists and is not empty (use --overwrite to replace it)")
        if not (out / SUMMARY).is_file():
            raise ScenarioError(f"{out}: the folder is not empty and holds no {SUMMARY}: it is not an evagg results "
                                "folder, so --overwrite will not empty it")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ScenarioError(f"{out}: cannot write in {parent}")
    return out


def make_out(out: Path) -> None:
    """Create (or empty, if it is a results folder being overwritten) the results folder."""
    if out.is_dir() and any(out.iterdir()):
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)


def write_json(path: Path, data: dict) -> None:
    """Write `data` as JSON at `path`, atomically (a reader never sees half a file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False, allow_nan=False)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------------- run bookkeeping


class Progress:
    """A tqdm bar over all steps of a scenario's runs (on stderr; off when not asked for), counting steps done."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.done = 0
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True, leave=True)

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)

    def __call__(self, time_) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class CtrlC:
    """While active: Ctrl-C sets `pressed` and raises KeyboardInterrupt (mosaik may swallow the exception and end
    its run early; `pressed` still says what happened)."""

    def __init__(self):
        self.pressed = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = _signal.getsignal(_signal.SIGINT)

            def handler(signum, frame):
                self.pressed = True
                raise KeyboardInterrupt

            _signal.signal(_signal.SIGINT, handler)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            _signal.signal(_signal.SIGINT, self._old)
        return False


def quiet_mosaik() -> None:
    """mosaik logs every start and connection through loguru at INFO: keep its warnings and errors only (and not
    mosaik-pandapower-2's advice to install numba, which the power flows of a feeder do not need)."""
    try:
        from loguru import logger
    except ImportError:  # pragma: no cover
        return
    logger.remove()
    logger.add(sys.stderr, level="WARNING", format="{level}: {message}",
               filter=lambda record: "numba" not in record["message"])


def elapsed(t0: float) -> float:
    return round(time.perf_counter() - t0, 3)
