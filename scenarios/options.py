"""A scenario's options: one table (the fields of `Options`, each with its `Option`: type, range, default, help,
command-line flag), from which `Options.make` checks them (one-line errors naming the flag) and `evagg run`
builds its arguments and help (`add_arguments`). Adding an option is adding a field here.

The other commands' options are tables of `Option`s too (`table`; e.g. `evagg fleet`'s in scenarios/cli.py):
the same `add_arguments` builds their arguments and `checked` reads and checks their values.

Policies (`Policy`) are parsed once, here, into objects that the scenario code passes on.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evagg.plugin.meta import COUPLINGS
from evagg.simulators.aggregator import ARRIVALS, DEFAULT_HORIZON
from evagg.simulators.dispatch import DEFAULT_METHOD, METHODS
from evagg.simulators.fleet import Fleet
from evagg.simulators.tables import InputError, read_sessions
from evagg.simulators.reference import FORECASTS
from evagg.simulators.synthetic import DEFAULT_V2G_SHARE

from .errors import ScenarioError
from .folder import RESULTS, RESULTS_PARQUET

log = logging.getLogger("evagg.scenarios")

SCENARIOS = ("feeder_day", "grid_impact", "remote")
DEFAULT_GRID = "1-LV-rural2--0-sw"  # simbench's rural LV feeder: 97 buses, 99 loads, 8 PV units, a 250 kVA transformer
# the start of a study (not the synthetic fleets' own default date): a winter weekday from noon, so that a day
# holds the evening peak, the night and the morning
DEFAULT_STUDY_START = "2026-01-14T12:00:00"
DEFAULT_POLICIES = ("uncontrolled", "edf", "dcls", "dcls+grid", "peak_shaving", "dcls@known", "dcls@noisy")
RESULTS_FORMATS = ("auto", "csv", "parquet")
LONG_RUN_DAYS = 7  # results_format auto: runs longer than this write Parquet


class Policy(str):
    """How the aggregators run in one world, parsed from its name (it compares and prints as the name): their
    dispatch `method`, what they follow (`reference`: "signal", the feeder's "peak_shaving" reference, or "none"
    for a world without EVs) and whether a grid operator sends them limits (`grid_aware`). Names: a method
    (``dcls``, ``edf``, ...), ``<method>+grid`` (the same under the grid operator's limits), ``peak_shaving`` (dcls
    following the room below a target on the feeder, see simulators/peak_shaving.py; ``peak_shaving+grid`` adds
    the operator), ``no_evs`` (the feeder alone). A suffix ``@<setting>`` (one or two) runs it with other
    information than the run's options: an arrivals setting (``@on_plug``, ``@known``, ``@forecast``) or a
    reference forecast (``@perfect``, ``@hold``, ``@noisy``), e.g. ``dcls@known`` or ``dcls+grid@known@noisy``:
    grid_impact then shows the cost of not knowing side by side."""

    method: str
    reference: str  # signal | peak_shaving | none
    grid_aware: bool
    arrivals: str | None  # the @ setting of what the aggregators know of their sessions (None: the run's option)
    forecast: str | None  # the @ setting of the reference's forecast (None: the run's option)

    def __new__(cls, name) -> "Policy":
        if isinstance(name, Policy):
            return name
        text = str(name).strip()
        policy, *settings = text.split("@")
        arrivals = forecast = None
        for setting in settings:
            if setting in ARRIVALS and arrivals is None:
                arrivals = setting
            elif setting in FORECASTS and forecast is None:
                forecast = setting
            else:
                raise ScenarioError(f"policy {text!r}: {setting!r} is not an information setting (one arrivals "
                                    f"setting: {', '.join(ARRIVALS)}; one forecast: {', '.join(FORECASTS)})")
        base, plus, suffix = policy.partition("+")
        if plus and suffix != "grid":
            raise ScenarioError(f"unknown policy {text!r}: the only suffix is +grid (e.g. dcls+grid)")
        if base == "no_evs":
            if plus:
                raise ScenarioError("no_evs+grid: without EVs there is nothing to limit")
            method, reference = "uncontrolled", "none"
        elif base == "peak_shaving":
            method, reference = DEFAULT_METHOD, "peak_shaving"
        elif base in METHODS:
            method, reference = base, "signal"
        else:
            raise ScenarioError(f"unknown policy {text!r}; choose a method ({', '.join(METHODS)}), <method>+grid, "
                                "peak_shaving[+grid] or no_evs")
        if settings and reference == "none":
            raise ScenarioError(f"{text}: without EVs there is nothing to know")
        if forecast is not None and reference == "peak_shaving":
            raise ScenarioError(f"{text}: peak_shaving makes its own forecast of the room on the feeder")
        self = super().__new__(cls, text)
        self.method, self.reference, self.grid_aware = method, reference, bool(plus)
        self.arrivals, self.forecast = arrivals, forecast
        return self

    @property
    def base(self) -> str:
        """The name without its @ settings (the same policy with the run's information)."""
        return self.name.split("@", 1)[0]

    def informed(self, opts: "Options") -> "Options":
        """`opts` with this policy's @ settings (the options a run of it uses)."""
        changes = {k: v for k, v in (("arrivals", self.arrivals), ("forecast", self.forecast)) if v is not None}
        return dataclasses.replace(opts, **changes) if changes else opts

    @property
    def name(self) -> str:
        return str.__str__(self)


# ----------------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Option:
    """One option: how it is read and checked, its range, its help and its flag on `evagg run`."""

    kind: str  # int | number | text | path | choice | policy | policies | band | time | flag | addresses | shares
    # | indices | range (a number F or a range LO,HI, within lo-hi)
    help: str
    label: str = ""  # what an error calls it (default: the name with spaces)
    lo: float | None = None
    hi: float | None = None  # None: no upper bound
    lo_open: bool = False  # lo itself is out of range (a positive number: lo=0, lo_open=True)
    hi_open: bool = False  # hi itself is out of range (a share below 1: hi=1, hi_open=True)
    count: int | None = None  # shares: how many
    choices: tuple = ()
    metavar: str | None = None
    flag: str | None = ""  # "": --<name with dashes>; None: not on the command line (a positional: "scenario")
    default_text: str | None = None  # the default as the help says it (default: the value)
    cli_absent: Any = None  # flag options: the value `evagg run` passes when the flag is absent (None: nothing)
    show_range: bool = True  # the help says lo-hi
    input_file: bool = False  # a file the run reads (text options): the results folder must never hold it
    required: bool = False  # must be given (no default)
    name: str = ""
    default: Any = None

    @property
    def cli_flag(self) -> str | None:
        if self.flag is None or self.name == "scenario":
            return None
        return self.flag or "--" + self.name.replace("_", "-")

    def what(self) -> str:
        label = self.label or self.name.replace("_", " ")
        flag = self.cli_flag
        return f"{label} ({flag})" if flag else label

    def help_text(self) -> str:
        if self.kind == "flag" or self.required:
            return self.help
        text = self.help
        if self.kind in ("int", "number") and self.show_range and self.lo is not None and self.hi is not None:
            text += f" ({_num(self.lo)}-{_num(self.hi)})"
        if self.default_text is not None:
            shown = self.default_text
        elif isinstance(self.default, (tuple, list)):
            shown = ",".join(_num(v) for v in self.default)
        else:
            shown = _num(self.default)
        return f"{text}; default: {shown}"

    def check(self, value, hi=None):
        """The checked value (ScenarioError naming the option otherwise); `hi` overrides the upper bound."""
        hi = self.hi if hi is None else hi
        if self.kind == "int":
            return _int(value, self.what(), int(self.lo), None if hi is None else int(hi))
        if self.kind == "number":
            return _number(value, self.what(), self.lo, hi, self.lo_open)
        if self.kind == "choice":
            if str(value) not in self.choices:
                flag = f" ({self.cli_flag})" if self.cli_flag else ""
                raise ScenarioError(f"{self.label or self.name} must be {' or '.join(self.choices)}{flag}, got "
                                    f"{value!r}")
            return str(value)
        if self.kind == "text":
            return None if value is None else str(value)
        if self.kind == "path":
            return None if value is None else Path(value)
        if self.kind == "shares":
            return _shares(value, self.what(), self.count, self.metavar)
        if self.kind == "indices":
            return _indices(value, self.what())
        if self.kind == "range":
            return _range(value, self.what(), self.lo, hi, self.hi_open)
        if self.kind == "policy":
            return Policy(value)
        if self.kind == "policies":
            if isinstance(value, str):
                value = [p.strip() for p in value.split(",") if p.strip()]
            policies = tuple(dict.fromkeys(Policy(p) for p in value))
            if not policies:
                raise ScenarioError(f"no policy given ({self.cli_flag}); e.g. uncontrolled,dcls,dcls+grid")
            return policies
        if self.kind == "band":
            return _band(value)
        if self.kind == "addresses":
            return _addresses(value, self.what())
        if self.kind == "time":
            return _time(value, self.what(), self.default or DEFAULT_STUDY_START)
        if self.kind == "flag":
            return sys.stderr.isatty() if value == "auto" else bool(value)
        raise AssertionError(self.kind)


def option(default, kind: str, help: str, **spec) -> Any:
    """A field of `Options` with its `Option`."""
    return dataclasses.field(default=default, metadata={"option": Option(kind, help, **spec)})


def table(**options: Option) -> dict[str, Option]:
    """A command's table of options: name -> `Option` (named here; the order is the help's)."""
    return {name: dataclasses.replace(opt, name=name) for name, opt in options.items()}


def checked(options: dict[str, Option], args) -> dict:
    """name -> value of each option of `options` from an argparse namespace of `add_arguments(parser, options)`:
    the value given, checked (ScenarioError naming the flag), or the default."""
    values = {}
    for name, opt in options.items():
        value = getattr(args, name)
        values[name] = opt.default if value is None else opt.check(value)
    return values


@dataclass(frozen=True)
class Options:
    """A scenario's options, checked (`Options.make`); each field is one option of the table."""

    scenario: str = option("feeder_day", "choice", f"one of {', '.join(SCENARIOS)}", choices=SCENARIOS,
                           metavar="SCENARIO")
    evs: int = option(60, "int", "number of EVs", label="number of EVs", lo=1, hi=100_000, metavar="N")
    days: int = option(1, "int", "simulated days", lo=1, hi=366, metavar="D")
    step_min: float = option(15.0, "number", "step in minutes, dividing a day", label="step minutes", lo=1.0,
                             hi=240.0, metavar="M")
    steps: int | None = option(None, "int", "run only the first S steps of the days (a quick trial)", lo=1,
                               metavar="S", default_text="all")
    grid: str = option(DEFAULT_GRID, "text", "a simbench code (shipped with simbench, e.g. 1-LV-rural1--0-sw, "
                       "1-MV-rural--0-sw) or a pandapower JSON file", metavar="CODE|path.json", input_file=True)
    method: Policy = option(Policy(DEFAULT_METHOD), "policy", f"dispatch method of the aggregators "
                            f"({', '.join(METHODS)}), or a policy: <method>+grid (under a grid operator's limits), "
                            "peak_shaving[+grid], no_evs; for grid_impact the policy compared with uncontrolled, "
                            "edf, <method>+grid and peak_shaving", metavar="M")
    out: str | None = option(None, "text", "results folder; must not exist or be empty", metavar="DIR",
                             default_text="results/<scenario>-<timestamp>/")
    overwrite: bool = option(False, "flag", "replace the results folder --out if it holds results")
    seed: int = option(1, "int", "random seed of the fleet and signal", lo=0, hi=2**32 - 1, metavar="K",
                    show_range=False)
    v2g_share: float = option(DEFAULT_V2G_SHARE, "number", "share of EVs that can discharge", label="V2G share",
                              lo=0.0, hi=1.0, metavar="F")
    aggregators: int = option(2, "int", "aggregators sharing the EVs, each its own simulator (at most one per "
                              "EV: more is an error; the default is lowered to the number of EVs)",
                              label="number of aggregators", lo=1, hi=16, metavar="A")
    signal: str | None = option(None, "text", "reference signal for the whole fleet (CSV: time, p_ref_kw), shared "
                                "by the aggregators in proportion to their EVs", metavar="R.csv", input_file=True,
                                default_text="synthetic regulation around each fleet's charging need")
    sessions: str | None = option(None, "text", "your own sessions table (CSV, e.g. from evagg import) instead of "
                                  "the synthetic fleet: the sessions plugged in within the study window, shared by "
                                  "the aggregators, each at its bus column or else spread over the feeder's load "
                                  "buses (seeded, the sessions of one station at one bus); the study starts at the "
                                  "first arrival unless --start is given", metavar="S.csv", input_file=True,
                                  default_text="synthetic sessions (--evs, --v2g-share)")
    start: str = option(DEFAULT_STUDY_START, "time", "start of the simulated period (profiles are read at the same "
                        "date in 2016)", metavar="ISO")
    horizon: int = option(DEFAULT_HORIZON, "int", "steps each re-dispatch plans ahead", label="horizon", lo=1,
                          hi=192, metavar="H")
    forecast: str = option("perfect", "choice", "what the aggregators know of the reference's next steps: perfect "
                           "(the signal's values), hold (the current value held) or noisy (the signal's values plus "
                           "seeded errors growing with the lead time, --forecast-error)", choices=FORECASTS,
                           metavar="|".join(FORECASTS))
    forecast_error: float = option(10.0, "number", "--forecast noisy: the errors' standard deviation at a lead of "
                                   "1 h, in %% of the signal's spread (its standard deviation); it grows as the "
                                   "square root of the lead", label="forecast error", lo=0.0, hi=1000.0,
                                   metavar="PCT")
    arrivals: str = option(ARRIVALS[0], "choice", "what the aggregators know of their sessions: on_plug (an EV is "
                           "planned once plugged in, with its declared departure: what a study should quote), known "
                           "(arrivals and departures known ahead: the foresight of earlier studies) or forecast "
                           "(on_plug plus expected arrivals drawn from the fleet's arrival profile by hour of day, "
                           "seeded)", choices=ARRIVALS,
                           metavar="|".join(ARRIVALS))
    v_band: tuple = option((0.95, 1.05), "band", "voltage band in pu", metavar="LO,HI")
    policies: tuple = option(tuple(Policy(p) for p in DEFAULT_POLICIES), "policies", "grid_impact: "
                             "comma-separated policies to compare (methods, <method>+grid, peak_shaving[+grid], "
                             "no_evs; @<setting> runs one with other information, e.g. dcls@known, dcls@noisy)",
                             metavar="LIST", default_text=",".join(DEFAULT_POLICIES) + " (with --method "
                             "M: uncontrolled,edf,M,M+grid,peak_shaving,M@known,M@noisy; the last two give the "
                             "cost of information)")
    coupling: str = option(COUPLINGS[0], "choice", "grid-aware policies: the operator's limits act one step late "
                           "(delayed: mosaik time-shifted connections) or are settled within each step (iterative: "
                           "a same-step loop of grid, aggregators and operator)", choices=COUPLINGS,
                           metavar="|".join(COUPLINGS))
    peak_target_kw: float | None = option(None, "number", "peak_shaving: the feeder level (kW, at the "
                                          "transformer) to keep the load below", label="peak-shaving target",
                                          lo=-1e6, hi=1e6, metavar="KW", flag="--peak-target", show_range=False,
                                          default_text="the flat level the day's base load plus the EVs' energy "
                                                       "would fill")
    results_format: str = option("auto", "choice", f"the results table's format: csv (results.csv), parquet "
                                 f"(results.parquet, written in row groups as the run goes) or auto (parquet for "
                                 f"runs longer than {LONG_RUN_DAYS} days)", choices=RESULTS_FORMATS,
                                 metavar="|".join(RESULTS_FORMATS))
    progress: bool = option(False, "flag", "no progress bar (it is shown on a terminal only)", flag="--no-progress",
                            cli_absent="auto")
    plots: bool = option(True, "flag", "skip the PNG plots (evagg report DIR makes them later)", flag="--no-plots")
    remote: bool = option(False, "flag", "each aggregator in its own process (the remote scenario)", flag=None)
    connect: tuple | None = option(None, "addresses", "remote: the aggregators already wait for mosaik at these "
                                   "addresses, one each (started with evagg-mosaik -r HOST:PORT), instead of "
                                   "processes that mosaik starts", metavar="HOST:PORT,...",
                                   default_text="mosaik starts them (cmd)")
    answer_timeout: float = option(120.0, "number", "remote: seconds an aggregator process may leave a call "
                                   "unanswered before the run ends as failed (one that dies, or is stopped, ends "
                                   "it at once)", lo=1.0, hi=86400.0, metavar="SECONDS")

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
    def results_name(self) -> str:
        """The results table's file name in the results folder (see results_format)."""
        parquet = self.results_format == "parquet" or (self.results_format == "auto"
                                                        and self.until > LONG_RUN_DAYS * 86400)
        return RESULTS_PARQUET if parquet else RESULTS

    @property
    def start64(self) -> np.datetime64:
        return np.datetime64(self.start, "s")

    def fleet_sizes(self) -> list[int]:
        base, extra = divmod(self.evs, self.aggregators)
        return [base + (1 if i < extra else 0) for i in range(self.aggregators)]

    def input_files(self) -> list[Path]:
        """The files this run reads (the options marked `input_file` that name an existing file)."""
        paths = (getattr(self, name) for name, opt in OPTIONS.items() if opt.input_file)
        return [Path(p) for p in paths if p is not None and Path(p).is_file()]

    def as_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for k in ("out", "overwrite", "progress", "plots"):
            d.pop(k)
        d["method"] = self.method.name
        d["policies"] = [p.name for p in self.policies]
        d["v_band"] = list(self.v_band)
        d["connect"] = None if self.connect is None else list(self.connect)
        d["step_s"] = self.step_s
        d["n_steps"] = self.n_steps
        return d

    @classmethod
    def make(cls, scenario: str = "feeder_day", **options) -> "Options":
        """Checked options (each by its Option, then how they go together); ScenarioError (one line) for an
        unknown or out-of-range one. None means the default (except for out and signal, where it is the
        default)."""
        if scenario not in SCENARIOS:
            raise ScenarioError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
        unknown = sorted(set(options) - set(OPTIONS) - {"scenario"})
        if unknown:
            raise ScenarioError(f"unknown option(s) {', '.join(unknown)}; known: "
                                f"{', '.join(sorted(set(OPTIONS) - {'scenario'}))}")
        given = {k: v for k, v in options.items() if v is not None and k != "scenario"}
        if "policies" in given and scenario != "grid_impact":
            raise ScenarioError(f"{OPTIONS['policies'].cli_flag} is for the grid_impact scenario")
        v = {name: (opt.check(given[name]) if name in given and name != "steps" else opt.default)
             for name, opt in OPTIONS.items()}
        v["scenario"] = scenario
        step_s = v["step_min"] * 60
        if abs(step_s - round(step_s)) > 1e-9:
            raise ScenarioError(f"step {v['step_min']:g} min is not a whole number of seconds")
        if 86400 % round(step_s):
            raise ScenarioError(f"step {v['step_min']:g} min does not divide a day (e.g. 5, 10, 15, 30, 60 min)")
        if "steps" in given:
            v["steps"] = OPTIONS["steps"].check(given["steps"], hi=v["days"] * 86400 // round(step_s))
        if v["sessions"] is not None:
            _with_own_sessions(v, given, round(step_s))
        if v["connect"] is not None:  # one waiting aggregator process per address
            if scenario != "remote":
                raise ScenarioError(f"{OPTIONS['connect'].cli_flag} is for the remote scenario")
            if "aggregators" in given and v["aggregators"] != len(v["connect"]):
                raise ScenarioError(f"{OPTIONS['connect'].cli_flag} gives {len(v['connect'])} address(es) for "
                                    f"{v['aggregators']} aggregators ({OPTIONS['aggregators'].cli_flag})")
            v["aggregators"] = len(v["connect"])
            if v["evs"] < v["aggregators"]:
                raise ScenarioError(f"{OPTIONS['connect'].cli_flag}: {len(v['connect'])} aggregators need at "
                                    f"least as many EVs, got {v['evs']}")
        if v["aggregators"] > v["evs"]:  # every aggregator has at least one EV
            if "aggregators" in given:  # asked for: an aggregator with no EV would follow a signal with nothing
                raise ScenarioError(f"{OPTIONS['aggregators'].cli_flag} {v['aggregators']} is more than the "
                                    f"{v['evs']} EV(s) of {OPTIONS['evs'].cli_flag}: every aggregator needs at "
                                    "least one EV")
            v["aggregators"] = v["evs"]
        if "policies" not in given:
            v["policies"] = default_policies(v["method"], v["arrivals"], v["forecast"])
        ts = pd.Timestamp(v["start"])
        if (ts - ts.normalize()).total_seconds() % round(step_s):
            raise ScenarioError(f"start {v['start']} must fall on a boundary of the {v['step_min']:g}-minute steps")
        if "remote" not in given:
            v["remote"] = scenario == "remote"
        return cls(**v)


def default_policies(method: Policy, arrivals: str, forecast: str) -> tuple:
    """grid_impact's policies without --policies: uncontrolled, edf, the method, the method under the grid
    operator's limits, peak_shaving, then the method with other information, so that the cost of information is
    in every comparison: ``@known`` (the arrivals known ahead; ``@on_plug`` where the run already knows them) and
    ``@noisy`` (a noisy forecast of the reference; ``@perfect`` where the run's is noisy). A setting that the
    method fixes itself, or that changes nothing (uncontrolled plans nothing; peak_shaving makes its own
    forecast; no_evs has no EVs), has no variant. With the default method: DEFAULT_POLICIES."""
    names = ["uncontrolled", "edf", method, f"{method.method}+grid", "peak_shaving"]
    if method.reference != "none" and method.method != "uncontrolled":
        if method.arrivals is None:
            names.append(f"{method}@{'on_plug' if arrivals == 'known' else 'known'}")
        if method.forecast is None and method.reference == "signal":
            names.append(f"{method}@{'perfect' if forecast == 'noisy' else 'noisy'}")
    return tuple(dict.fromkeys(Policy(p) for p in names))


def own_sessions(path) -> Fleet:
    """The fleet of --sessions, read once per process while the file is unchanged (so that its notes are said
    once); ScenarioError for a missing or bad file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ScenarioError(f"sessions {path}: no such file") from None
    try:
        return _read_sessions_once(str(path), st.st_mtime_ns, st.st_size)
    except InputError as exc:
        raise ScenarioError(str(exc)) from None


@functools.lru_cache(maxsize=4)
def _read_sessions_once(path: str, mtime_ns: int, size: int) -> Fleet:
    return read_sessions(path)


def _with_own_sessions(v: dict, given: dict, step_s: int) -> None:
    """--sessions: the EVs are the file's sessions plugged in within the study window (``evs`` is their number);
    without --start the study starts at the step of the first arrival. ScenarioError when no session is plugged
    in within the window; a warning for those left out."""
    for name in ("evs", "v2g_share"):
        if name in given:
            raise ScenarioError(f"{OPTIONS[name].cli_flag} is for the synthetic fleet: with --sessions the EVs are the "
                                "file's sessions")
    fleet = own_sessions(v["sessions"])
    if not len(fleet):
        raise ScenarioError(f"sessions {v['sessions']}: no sessions (a header only)")
    first, last = fleet.arrival.min(), fleet.departure.max()
    step = np.timedelta64(step_s, "s")
    if "start" not in given:
        day = first.astype("datetime64[D]").astype("datetime64[s]")
        v["start"] = str(day + (first - day) // step * step)
        log.warning("sessions %s: the study starts at the step of the first arrival, %s (--start moves it)",
                    v["sessions"], v["start"])
    start = np.datetime64(v["start"], "s")
    full = v["days"] * 86400 // step_s
    end = start + step * (full if v["steps"] is None else min(v["steps"], full))
    inside = (fleet.departure > start) & (fleet.arrival < end)
    window = f"the study window {start} to {end}"
    if not inside.any():
        raise ScenarioError(f"sessions {v['sessions']}: no session is plugged in within {window} (the sessions "
                            f"span {first} to {last}): choose --start (and --days) within them")
    if not inside.all():
        log.warning("sessions %s: %d of %d sessions lie outside %s (the sessions span %s to %s) and are left out; "
                    "--start and --days choose the window", v["sessions"], int((~inside).sum()), len(fleet), window,
                    first, last)
    v["evs"] = int(inside.sum())


OPTIONS: dict[str, Option] = {
    f.name: dataclasses.replace(f.metadata["option"], name=f.name, default=f.default)
    for f in dataclasses.fields(Options)
}


def add_arguments(parser, exclude=(), options: dict[str, Option] | None = None) -> None:
    """The options as arguments of an argparse parser (`evagg run`): the scenario as the positional, every other
    option with a flag as --<flag> read as text (checked by `Options.make`, so that its errors name the flag).
    `exclude`: names of options the parser gives otherwise (`evagg sweep`: its lists of EVs, seeds, ...).
    `options`: another command's table (default: the scenarios' `OPTIONS`), its values read by `checked`."""
    for opt in (OPTIONS if options is None else options).values():
        if opt.name in exclude:
            continue
        if opt.name == "scenario":
            parser.add_argument("scenario", nargs="?", default=opt.default, metavar=opt.metavar,
                                help=opt.help_text())
        elif opt.cli_flag is None:
            continue
        elif opt.kind == "flag":
            parser.add_argument(opt.cli_flag, dest=opt.name, action="store_true", help=opt.help_text())
        else:
            parser.add_argument(opt.cli_flag, dest=opt.name, default=None, metavar=opt.metavar, help=opt.help_text(),
                                required=opt.required)


def from_arguments(args, exclude=()) -> dict:
    """The options given on the command line (`add_arguments`'s parser, the same `exclude`), for `Options.make`."""
    given = {}
    for opt in OPTIONS.values():
        if opt.cli_flag is None or opt.name in exclude:
            continue
        value = getattr(args, opt.name)
        if opt.kind == "flag":
            on = value != opt.cli_flag.startswith("--no-")  # --no-X given: X is off
            if value:
                given[opt.name] = on
            elif opt.cli_absent is not None:
                given[opt.name] = opt.cli_absent
        elif value is not None:
            given[opt.name] = value
    return given


def _num(value) -> str:
    """A default or bound as the help writes it: 15.0 -> 15, 0.95 -> 0.95, 4294967295 as is."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _int(value, what: str, lo: int, hi: int | None) -> int:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ScenarioError(f"{what} must be a whole number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(v) or v != int(v):
        raise ScenarioError(f"{what} must be a whole number, got {value!r}")
    if hi is None and v < lo:
        raise ScenarioError(f"{what} must be {lo} or more, got {int(v)}")
    if hi is not None and not lo <= v <= hi:
        raise ScenarioError(f"{what} must be between {lo} and {hi}, got {int(v)}")
    return int(v)


def _number(value, what: str, lo: float, hi: float | None, lo_open: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ScenarioError(f"{what} must be a number, got {value!r}") from None
    if hi is None:
        if not math.isfinite(v) or (v <= lo if lo_open else v < lo):
            raise ScenarioError(f"{what} must be a number {'above' if lo_open else 'of at least'} {lo:g}, "
                                f"got {value!r}")
    elif not math.isfinite(v) or not lo <= v <= hi or (lo_open and v == lo):
        raise ScenarioError(f"{what} must be between {lo:g} and {hi:g}{' (not ' + _num(lo) + ')' if lo_open else ''}"
                            f", got {value!r}")
    return v


def _shares(value, what: str, count: int | None, metavar: str | None) -> tuple:
    """Non-negative shares, not all 0 (text "a,b,c" or a sequence), `count` of them where given."""
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value)
    expected = f"{count or 'some'} non-negative shares{' ' + metavar if metavar else ''}, not all 0"
    try:
        shares = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise ScenarioError(f"{what} must be {expected}, got {value!r}") from None
    if (count is not None and len(shares) != count) or not all(math.isfinite(x) and x >= 0 for x in shares) \
            or sum(shares) <= 0:
        raise ScenarioError(f"{what} must be {expected}, got {value!r}")
    return shares


def _range(value, what: str, lo: float, hi: float, hi_open: bool) -> tuple[float, float]:
    """(LO, HI) from a number F (LO = HI = F) or a range "LO,HI" (text or a sequence), lo <= LO <= HI <= hi (< hi
    where `hi_open`)."""
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else list(np.atleast_1d(value))
    expected = (f"a number F or a range LO,HI with {lo:g} <= LO <= HI {'<' if hi_open else '<='} {hi:g}")
    try:
        bounds = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise ScenarioError(f"{what} must be {expected}, got {value!r}") from None
    bounds = bounds * 2 if len(bounds) == 1 else bounds
    if len(bounds) != 2 or not all(math.isfinite(x) for x in bounds) or not lo <= bounds[0] <= bounds[1] \
            or bounds[1] > hi or (hi_open and bounds[1] == hi):
        raise ScenarioError(f"{what} must be {expected}, got {value!r}")
    return bounds


def _indices(value, what: str) -> list[int]:
    """Non-negative whole numbers: text "1,4,7" or "1-10" (ranges, both ends in) or a sequence."""
    out: list[int] = []
    try:
        for part in (value.split(",") if isinstance(value, str) else value):
            text = str(part).strip()
            lo, dash, hi = text.partition("-")
            if dash:
                if int(hi) < int(lo):
                    raise ValueError
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(text))
    except ValueError:
        raise ScenarioError(f"{what} {value!r} is not a list of indices like 1,4,7 or 1-10") from None
    if not out or min(out) < 0:
        raise ScenarioError(f"{what} {value!r} must list non-negative indices")
    return out


def _band(band) -> tuple:
    if isinstance(band, str):
        try:
            band = tuple(float(x) for x in band.split(","))
        except ValueError:
            raise ScenarioError(f"voltage band {band!r} is not two numbers LO,HI in pu") from None
    band = tuple(float(x) for x in band)
    if len(band) != 2 or not all(math.isfinite(x) for x in band) or not 0 < band[0] < band[1]:
        raise ScenarioError(f"voltage band {band} must be two numbers 0 < LO < HI in pu")
    return band


def _addresses(value, what: str) -> tuple:
    """HOST:PORT,... (text or a sequence) as a tuple of "HOST:PORT" strings."""
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else [str(p).strip() for p in value]
    for part in parts:
        host, colon, port = part.rpartition(":")
        if not (colon and host and port.isdigit() and 0 < int(port) < 65536):
            raise ScenarioError(f"{what}: {part!r} is not an address HOST:PORT (e.g. 127.0.0.1:5678)")
    if not parts:
        raise ScenarioError(f"{what}: no address given")
    if len(set(parts)) < len(parts):
        raise ScenarioError(f"{what}: an address is given twice (each aggregator waits at its own)")
    return tuple(parts)


def _time(start, what: str = "start", example: str = DEFAULT_STUDY_START) -> str:
    """An ISO 8601 time of whole seconds (UTC, without offset)."""
    try:
        ts = pd.Timestamp(str(start))
    except (TypeError, ValueError):
        raise ScenarioError(f"{what} {start!r} is not an ISO 8601 time like {example}") from None
    if ts.tzinfo is not None:  # converted as the tables' times are, and said so once
        utc = ts.tz_convert("UTC").tz_localize(None)
        log.warning("start %s: a time with a UTC offset (%s) converted to UTC: %s", start,
                    ts.strftime("%z")[:3] + ":" + ts.strftime("%z")[3:], utc.strftime("%Y-%m-%dT%H:%M:%S"))
        ts = utc
    if ts != ts.floor("s"):
        raise ScenarioError(f"{what} {start} must fall on a whole second")
    return ts.strftime("%Y-%m-%dT%H:%M:%S")
