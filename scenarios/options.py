"""A scenario's options: one table (the fields of `Options`, each with its `Option`: type, range, default, help,
command-line flag), from which `Options.make` checks them (one-line errors naming the flag) and `evagg run`
builds its arguments and help (`add_arguments`). Adding an option is adding a field here.

Policies (`Policy`) are parsed once, here, into objects that the scenario code passes on.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from evagg.plugin.meta import COUPLINGS
from evagg.simulators.aggregator import ARRIVALS, DEFAULT_HORIZON
from evagg.simulators.dispatch import METHODS
from evagg.simulators.reference import FORECASTS

from .errors import ScenarioError

SCENARIOS = ("feeder_day", "grid_impact", "remote")
DEFAULT_GRID = "1-LV-rural2--0-sw"  # simbench's rural LV feeder: 97 buses, 99 loads, 8 PV units, a 250 kVA transformer
# the start of a study (not the synthetic fleets' own default date): a winter weekday from noon, so that a day
# holds the evening peak, the night and the morning
DEFAULT_STUDY_START = "2026-01-14T12:00:00"
DEFAULT_METHOD = "dcls"
DEFAULT_POLICIES = ("uncontrolled", "edf", "dcls", "dcls+grid", "peak_shaving")


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

    kind: str  # int | number | text | choice | policy | policies | band | time | flag
    help: str
    label: str = ""  # what an error calls it (default: the name with spaces)
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()
    metavar: str | None = None
    flag: str | None = ""  # "": --<name with dashes>; None: not on the command line (a positional: "scenario")
    default_text: str | None = None  # the default as the help says it (default: the value)
    cli_absent: Any = None  # flag options: the value `evagg run` passes when the flag is absent (None: nothing)
    show_range: bool = True  # the help says lo-hi
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
        if self.kind == "flag":
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
            return _int(value, self.what(), int(self.lo), int(hi))
        if self.kind == "number":
            return _number(value, self.what(), self.lo, hi)
        if self.kind == "choice":
            if str(value) not in self.choices:
                raise ScenarioError(f"{self.label or self.name} must be {' or '.join(self.choices)}, got {value!r}")
            return str(value)
        if self.kind == "text":
            return None if value is None else str(value)
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
        if self.kind == "time":
            return _time(value)
        if self.kind == "flag":
            return sys.stderr.isatty() if value == "auto" else bool(value)
        raise AssertionError(self.kind)


def option(default, kind: str, help: str, **spec) -> Any:
    """A field of `Options` with its `Option`."""
    return dataclasses.field(default=default, metadata={"option": Option(kind, help, **spec)})


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
                       "1-MV-rural--0-sw) or a pandapower JSON file", metavar="CODE|path.json")
    method: Policy = option(Policy(DEFAULT_METHOD), "policy", f"dispatch method of the aggregators "
                            f"({', '.join(METHODS)}), or a policy: <method>+grid (under a grid operator's limits), "
                            "peak_shaving[+grid], no_evs; for grid_impact the policy compared with uncontrolled, "
                            "edf, <method>+grid and peak_shaving", metavar="M")
    out: str | None = option(None, "text", "results folder; must not exist or be empty", metavar="DIR",
                             default_text="results/<scenario>-<timestamp>/")
    overwrite: bool = option(False, "flag", "replace the results folder --out if it holds results")
    seed: int = option(1, "int", "random seed of the fleet and signal", lo=0, hi=2**32 - 1, metavar="K",
                    show_range=False)
    v2g_share: float = option(0.5, "number", "share of EVs that can discharge", label="V2G share", lo=0.0, hi=1.0,
                              metavar="F")
    aggregators: int = option(2, "int", "aggregators sharing the EVs, each its own simulator",
                              label="number of aggregators", lo=1, hi=16, metavar="A")
    signal: str | None = option(None, "text", "reference signal for the whole fleet (CSV: time, p_ref_kw), shared "
                                "by the aggregators in proportion to their EVs", metavar="R.csv",
                                default_text="synthetic regulation around each fleet's charging need")
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
                             "M: uncontrolled,edf,M,M+grid,peak_shaving)")
    coupling: str = option(COUPLINGS[0], "choice", "grid-aware policies: the operator's limits act one step late "
                           "(delayed: mosaik time-shifted connections) or are settled within each step (iterative: "
                           "a same-step loop of grid, aggregators and operator)", choices=COUPLINGS,
                           metavar="|".join(COUPLINGS))
    peak_target_kw: float | None = option(None, "number", "peak_shaving: the feeder level (kW, at the "
                                          "transformer) to keep the load below", label="peak-shaving target",
                                          lo=-1e6, hi=1e6, metavar="KW", flag="--peak-target", show_range=False,
                                          default_text="the flat level the day's base load plus the EVs' energy "
                                                       "would fill")
    progress: bool = option(False, "flag", "no progress bar (it is shown on a terminal only)", flag="--no-progress",
                            cli_absent="auto")
    plots: bool = option(True, "flag", "skip the PNG plots (evagg report DIR makes them later)", flag="--no-plots")
    remote: bool = option(False, "flag", "each aggregator in its own process (the remote scenario)", flag=None)

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
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for k in ("out", "overwrite", "progress", "plots"):
            d.pop(k)
        d["method"] = self.method.name
        d["policies"] = [p.name for p in self.policies]
        d["v_band"] = list(self.v_band)
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
        v["aggregators"] = min(v["aggregators"], v["evs"])  # every aggregator has at least one EV
        if "policies" not in given and "method" in given:
            v["policies"] = tuple(dict.fromkeys(Policy(p) for p in (
                "uncontrolled", "edf", v["method"], f"{v['method'].method}+grid", "peak_shaving")))
        ts = pd.Timestamp(v["start"])
        if (ts - ts.normalize()).total_seconds() % round(step_s):
            raise ScenarioError(f"start {v['start']} must fall on a boundary of the {v['step_min']:g}-minute steps")
        if "remote" not in given:
            v["remote"] = scenario == "remote"
        return cls(**v)


OPTIONS: dict[str, Option] = {
    f.name: dataclasses.replace(f.metadata["option"], name=f.name, default=f.default)
    for f in dataclasses.fields(Options)
}


def add_arguments(parser) -> None:
    """The options as arguments of an argparse parser (`evagg run`): the scenario as the positional, every other
    option with a flag as --<flag> read as text (checked by `Options.make`, so that its errors name the flag)."""
    for opt in OPTIONS.values():
        if opt.name == "scenario":
            parser.add_argument("scenario", nargs="?", default=opt.default, metavar=opt.metavar,
                                help=opt.help_text())
        elif opt.cli_flag is None:
            continue
        elif opt.kind == "flag":
            parser.add_argument(opt.cli_flag, dest=opt.name, action="store_true", help=opt.help_text())
        else:
            parser.add_argument(opt.cli_flag, dest=opt.name, default=None, metavar=opt.metavar, help=opt.help_text())


def from_arguments(args) -> dict:
    """The options given on the command line (`add_arguments`'s parser), for `Options.make`."""
    given = {}
    for opt in OPTIONS.values():
        if opt.cli_flag is None:
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


def _time(start) -> str:
    """An ISO 8601 time of whole seconds (UTC, without offset)."""
    try:
        ts = pd.Timestamp(str(start))
    except (TypeError, ValueError):
        raise ScenarioError(f"start {start!r} is not an ISO 8601 time like {DEFAULT_STUDY_START}") from None
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    if ts != ts.floor("s"):
        raise ScenarioError(f"start {start} must fall on a whole second")
    return ts.strftime("%Y-%m-%dT%H:%M:%S")
