"""Declarative description of the plugin's models and attributes, from which each simulator's mosaik META is
built (the habit of mosaik-pandapower-2: one table, units in the attribute names).

Units: the models (evagg.simulators) work in kW / kWh; mosaik attributes are in MW / MWh (+ = load, as the Bus
input P_load[MW] of mosaik-pandapower-2). `Attr.factor` is the number of model units per mosaik unit
(1000 kW per MW); an output is `model_value / factor`, an input `mosaik_value * factor`. An output's `source`
names what it is read from (`read_outputs`).

Model parameters are `Param`s: name, doc, default and check (`read_params` applies them; relations between
parameters, such as "sessions or n_evs", stay with the simulator).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from mosaik_api_v3.types import Meta, ModelDescription

from evagg.simulators.aggregator import ARRIVALS
from evagg.simulators.synthetic import DEFAULT_V2G_SHARE, REFERENCE_KINDS

KW_PER_MW = 1000.0


@dataclass(frozen=True)
class Attr:
    """One mosaik attribute (input or output) of a model."""

    name: str  # the mosaik name, unit in brackets, e.g. "P[MW]"
    doc: str
    source: str | None = None  # output: the model's field it is read from
    factor: float = 1.0  # model units per mosaik unit
    kind: type = float  # the Python type handed to mosaik (outputs) or expected (inputs)
    combine: Callable[[list], Any] | None = None  # input: how values from several sources are combined

    def to_mosaik(self, value):
        if value is None:
            return None
        if self.kind is int:
            return int(value)
        if self.kind is list:
            return [float(v) / self.factor for v in value]
        return float(value) / self.factor if self.factor != 1.0 else float(value)

    def from_mosaik(self, values: Iterable):
        """The model value of one input from the values its sources sent (None for none or only None)."""
        vals = [v for v in values if v is not None]
        if not vals:
            return None
        value = self.combine(vals) if self.combine is not None else sum(vals)
        if self.kind is list:
            return [float(v) * self.factor for v in value]
        if self.kind is str:
            return str(value)
        return float(value) * self.factor


@dataclass(frozen=True)
class Param:
    """One parameter of a model: its default (None: none, or the model's own) and its check."""

    name: str
    doc: str
    default: Any = None
    check: Callable[[Any], bool] | None = None  # True for a good value (None always passes: the default)
    expects: str = ""  # what a good value is, for the error


@dataclass(frozen=True)
class ModelSpec:
    """A mosaik model: its parameters, inputs and outputs."""

    doc: str
    public: bool = True
    params: tuple[Param, ...] = ()
    inputs: tuple[Attr, ...] = ()
    outputs: tuple[Attr, ...] = ()
    any_inputs: bool = False
    extra: dict = field(default_factory=dict)  # further keys of the model description

    @property
    def input_attrs(self) -> dict[str, Attr]:
        return {a.name: a for a in self.inputs}

    @property
    def output_attrs(self) -> dict[str, Attr]:
        return {a.name: a for a in self.outputs}

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    def description(self) -> ModelDescription:
        names = [a.name for a in self.inputs] + [a.name for a in self.outputs if a.name not in self.input_attrs]
        return {"public": self.public, "params": self.param_names, "attrs": names,
                "any_inputs": self.any_inputs, **self.extra}


def read_params(sim: str, model: str, spec: ModelSpec, given: Mapping[str, Any], eid: str | None = None) -> dict:
    """Every parameter of `spec`: the given value (None: the default), checked; ValueError for an unknown one or a
    bad value, naming the simulator, the model (or entity `eid`) and the parameter."""
    known = spec.param_names
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"{sim}: unknown parameter(s) {', '.join(unknown)} for model {model}; "
                         f"known: {', '.join(known)}")
    out = {}
    for p in spec.params:
        value = given.get(p.name)
        if value is None:
            value = p.default
        elif p.check is not None and not p.check(value):
            raise ValueError(f"{sim} {eid or model}: {p.name} must be {p.expects}, got {value!r}")
        out[p.name] = value
    return out


def params_markdown(spec: ModelSpec) -> str:
    """The parameters of `spec` as the Markdown table of plugin/README.md (tests/test_readme.py checks that the
    README shows exactly this): name, default ("-": none, or the model's own as the text says), what it is (units
    as its text gives them) and the check `read_params` applies ("-": none here; the model checks it)."""
    lines = ["| parameter | default | what it is | checked at creation |", "|---|---|---|---|"]
    for p in spec.params:
        default = "-" if p.default is None else f"`{p.default}`"
        doc = p.doc.replace("|", "\\|")  # a bar would end the cell
        lines.append(f"| `{p.name}` | {default} | {doc} | {p.expects or '-'} |")
    return "\n".join(lines)


def read_outputs(sim: str, eid: str, spec: ModelSpec, attrs: Iterable[str], source: Any) -> dict:
    """The mosaik values of the outputs `attrs` of entity `eid` (model `spec`), each read from `source` by its
    Attr's source name (None, all of them, while `source` is None: nothing stepped yet)."""
    table = spec.output_attrs
    values = {}
    for a in attrs:
        attr = table.get(a)
        if attr is None:
            raise ValueError(f"{sim}: {eid} has no output {a!r}")
        values[a] = None if source is None else attr.to_mosaik(getattr(source, attr.source))
    return values


def whole(lo: int = 0) -> Callable[[Any], bool]:
    """A check: a whole number >= lo (not a bool)."""
    return lambda v: not isinstance(v, bool) and isinstance(v, (int, float)) and v == int(v) and v >= lo


def number(lo: float = -math.inf, hi: float = math.inf) -> Callable[[Any], bool]:
    """A check: a finite number in [lo, hi] (not a bool)."""
    return lambda v: (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
                      and lo <= v <= hi)


def build_meta(models: dict[str, ModelSpec], sim_type: str = "time-based", extra_methods=()) -> Meta:
    meta: Meta = {
        "api_version": "3.0",
        "type": sim_type,  # type: ignore[typeddict-item]
        "models": {name: spec.description() for name, spec in models.items()},
    }
    if extra_methods:
        meta["extra_methods"] = list(extra_methods)
    return meta


def same_step_meta(meta: Meta, triggers: dict[str, Iterable[str]],
                   events: dict[str, Iterable[str]] | None = None) -> Meta:
    """A copy of `meta` as a mosaik "hybrid" simulator for a same-step loop (a `world.group()` closed by a weak
    connection): `triggers` {model: input attrs whose new data steps the simulator again, even at the same time};
    `events` {model: output attrs sent only when get_data returns them (non-persistent)}. Every other input is a
    non-trigger, every other output persistent; the simulator still steps on its own schedule too."""
    out = copy.deepcopy(meta)
    out["type"] = "hybrid"  # type: ignore[typeddict-item]
    for model, desc in out["models"].items():
        attrs = set(desc.get("attrs", []))
        for key, table in (("trigger", triggers), ("non-persistent", events or {})):
            names = list(table.get(model, ()))
            unknown = sorted(set(names) - attrs)
            if unknown:
                raise ValueError(f"same_step_meta: model {model} has no attribute(s) {unknown}")
            desc[key] = names
    return out


def _sum_lists(values: list) -> list:
    """Several forecasts: summed step by step (as the references are), as long as the shortest."""
    n = min(len(v) for v in values)
    return [sum(float(v[i]) for v in values) for i in range(n)]


_BUSES = "a list of bus indices"
AGGREGATOR_PARAMS = (
    Param("sessions", "a sessions CSV (the spec's table), or a synthetic fleet from n_evs (seed, days, v2g_share, "
                      "spread over buses)"),
    Param("n_evs", "EVs of a synthetic fleet", check=whole(0), expects="a whole number >= 0"),
    Param("seed", "seed of the synthetic fleet (None: random; several aggregators created at once: seed + i)",
          default=0),
    Param("days", "days of the synthetic fleet's sessions", default=1, check=whole(1), expects="a whole number >= 1"),
    Param("v2g_share", "share of the synthetic fleet that can discharge", default=DEFAULT_V2G_SHARE,
          check=number(0.0, 1.0), expects="a number in [0, 1]"),
    Param("buses", "bus indices to spread the synthetic fleet over", check=lambda v: all(whole(0)(b) for b in v),
          expects=_BUSES),
    Param("bus_map", "{ev_id: bus}: where each session plugs in (else the sessions' bus column)",
          check=lambda v: isinstance(v, Mapping), expects="a mapping {ev_id: bus}"),
    Param("grid_buses", "the grid's bus indices: a session at another bus is an error at creation",
          check=lambda v: all(whole(0)(b) for b in v), expects=_BUSES),
    Param("method", "the dispatch method (None: the engine's default)"),
    Param("horizon", "steps planned ahead, the current one included (None: the engine's DEFAULT_HORIZON, 16)"),
    Param("time_limit", "solver time limit per re-dispatch, s", check=number(0.0), expects="a number of seconds >= 0"),
    Param("forecast", "a signal CSV giving the reference's future where no P_forecast[MW] arrives (None or "
                      "'hold': the current reference is held; a noisy forecast comes from the Signal's "
                      "forecast_error)"),
    Param("start", "the time of mosaik time 0 (ISO 8601), if not the simulator's start_date"),
    Param("end", "end of the study period (ISO 8601): plans never reach past it (a shrinking horizon)"),
    Param("arrivals", "what the aggregator knows of its sessions: on_plug (an EV is planned once plugged in, with "
                      "its declared departure, the sessions' departure_declared), known (arrivals and actual "
                      "departures known ahead: foresight) or forecast (on_plug plus expected arrivals drawn from "
                      "the fleet's arrival profile by hour of day); see evagg.simulators.aggregator",
          default=ARRIVALS[0], check=lambda v: v in ARRIVALS, expects=f"one of {', '.join(ARRIVALS)}"),
    Param("arrivals_seed", "seed of the expected arrivals (arrivals='forecast'; ignored otherwise)", default=0,
          check=whole(0),
          expects="a whole number >= 0"),
)

# The state of charge spread outputs: (attribute, source, percentile, what) read from `Aggregator.soc_spread()`.
SOC_SPREAD = (("soc_min[%]", "soc_min_pct", 0, "lowest"), ("soc_p10[%]", "soc_p10_pct", 10, "10th percentile"),
              ("soc_p50[%]", "soc_p50_pct", 50, "median"), ("soc_p90[%]", "soc_p90_pct", 90, "90th percentile"),
              ("soc_max[%]", "soc_max_pct", 100, "highest"))

AGGREGATOR_MODELS: dict[str, ModelSpec] = {
    "Aggregator": ModelSpec(
        doc="An EV aggregator: one fleet re-dispatched each step over a receding horizon.",
        params=AGGREGATOR_PARAMS,
        inputs=(
            Attr("P_ref[MW]", "reference for the whole fleet (+ = draw); several sources are summed", factor=KW_PER_MW),
            Attr("P_forecast[MW]", "the reference for the next steps (a list), else the reference is held",
                 factor=KW_PER_MW, kind=list, combine=_sum_lists),
            Attr("P_max[MW]", "upper limit on the fleet's net power (the lowest of several); hard: where it leaves "
                              "departure needs out of reach, they give way", factor=KW_PER_MW, combine=min),
            Attr("P_min[MW]", "lower limit on the fleet's net power (the highest of several)", factor=KW_PER_MW,
                 combine=max),
        ),
        outputs=(
            Attr("P[MW]", "the fleet's net power (load convention); the sum of its EVBus children",
                 source="p_kw", factor=KW_PER_MW),
            Attr("P_ref[MW]", "the reference it followed (None while uncontrolled)", source="p_ref_kw",
                 factor=KW_PER_MW),
            Attr("tracking_error[MW]", "P - P_ref (None while uncontrolled)", source="tracking_error_kw",
                 factor=KW_PER_MW),
            Attr("n_plugged", "EVs plugged in in this step", source="n_plugged", kind=int),
            Attr("energy[MWh]", "energy stored in the plugged EVs at the end of the step", source="energy_kwh",
                 factor=KW_PER_MW),
            Attr("shortfall[MWh]", "cumulative target energy not delivered at departure", source="shortfall_kwh",
                 factor=KW_PER_MW),
            Attr("need_unmet[MWh]", "cumulative departure need (the spec's: what charging flat out would give) not "
                                    "delivered; only grid limits, or a departure before the declared one, can "
                                    "cause it", source="need_unmet_kwh",
                 factor=KW_PER_MW),
            Attr("plugged_at_end", "EVs plugged in in this step that leave after it (if the run ended here: the EVs "
                                   "still plugged in at its end)", source="plugged_at_end", kind=int),
            Attr("certain_shortfall[MWh]", "target energy those EVs will miss whatever comes next: the target minus "
                                           "what charging flat out until departure can still add (apart from "
                                           "shortfall)", source="certain_shortfall_kwh", factor=KW_PER_MW),
            Attr("solve_time[s]", "wall time of this step's re-dispatch", source="solve_time_s"),
            Attr("limited", "1 when a grid limit (on the fleet or one of its buses) was binding in this step",
                 source="limited", kind=int),
            Attr("idle_plugged[h]", "cumulative hours its EVs stayed plugged in after their declared departure "
                                    "(no longer planned, drawing nothing)", source="idle_plugged_h"),
            Attr("needs_lowered[MWh]", "departure needs this step's plan gave up because the grid limits left "
                                       "them out of reach", source="needs_lowered_kwh", factor=KW_PER_MW),
            *(Attr(name, f"state of charge of the EVs plugged in in the step, at its end: {what} (None if none)",
                   source=source) for name, source, _, what in SOC_SPREAD),
        ),
    ),
    "EVBus": ModelSpec(
        doc="The EVs of one aggregator at one grid bus (extra_info: {'bus': index}); connect P[MW] to the "
            "pandapower Bus input P_load[MW]. Grid limits on these EVs' net power arrive as P_max/P_min.",
        public=False,
        inputs=(
            Attr("P_max[MW]", "upper limit on these EVs' net power (the lowest of several); hard, held until "
                              "changed", factor=KW_PER_MW, combine=min),
            Attr("P_min[MW]", "lower limit on these EVs' net power (the highest of several)", factor=KW_PER_MW,
                 combine=max),
            Attr("limit_by", "what set P_max (the operator's BusLimit binding, e.g. 'Transformer-0'): the upper "
                             "limits an aggregator's buses get from the same line or transformer are pooled into "
                             "one limit on their sum", kind=str, combine=lambda v: v[0]),
        ),
        outputs=(Attr("P[MW]", "net power of these EVs (load convention)", source="p_kw", factor=KW_PER_MW),),
    ),
}

REFERENCE_MODELS: dict[str, ModelSpec] = {
    "Signal": ModelSpec(
        doc="A reference signal: from a signal CSV (time, p_ref_kw) or synthetic (seeded).",
        params=(
            Param("path", "a signal CSV (time, p_ref_kw), or a synthetic signal (kind, seed, around a fleet's "
                          "baseline: sessions or n_evs/days/v2g_share; without one a diurnal shape of scale_kw)"),
            Param("kind", "the synthetic signal's kind", default=REFERENCE_KINDS[0],
                  check=lambda v: v in REFERENCE_KINDS, expects=f"one of {', '.join(REFERENCE_KINDS)}"),
            Param("seed", "seed of the synthetic signal (and fleet)", default=0),
            Param("sessions", "a sessions CSV: the fleet whose baseline the synthetic signal goes around"),
            Param("n_evs", "or a synthetic fleet of n_evs", check=whole(0), expects="a whole number >= 0"),
            Param("days", "the synthetic fleet's days", default=1, check=whole(1), expects="a whole number >= 1"),
            Param("v2g_share", "the synthetic fleet's V2G share", default=DEFAULT_V2G_SHARE, check=number(0.0, 1.0),
                  expects="a number in [0, 1]"),
            Param("scale_kw", "scale of the diurnal shape (no fleet), kW"),
            Param("n_steps", "steps of the synthetic signal (default: to until, else a day)", check=whole(1),
                  expects="a whole number >= 1"),
            Param("forecast_steps", "the next steps sent as P_forecast[MW] (steps; 0: none, the aggregator holds "
                                    "the current reference)", default=0, check=whole(0),
                  expects="a whole number >= 0"),
            Param("forecast_error", "P_forecast[MW] with seeded errors growing with the lead time: their standard "
                                    "deviation at a lead of 1 h, in % of the signal's spread (its standard "
                                    "deviation); 0: the signal's own values (evagg.simulators.reference)",
                  default=0.0, check=number(0.0, 1000.0), expects="a number in [0, 1000] (%)"),
            Param("forecast_seed", "seed of the forecast errors (each step's forecast its own draw, the same "
                                   "for a re-planned step)", default=0, check=whole(0),
                  expects="a whole number >= 0"),
            Param("until", "the mosaik time the run ends (mosaik time units): a signal that does not cover it is "
                           "an error at creation"),
            Param("start", "the time of mosaik time 0 (ISO 8601), if not the simulator's start_date"),
        ),
        outputs=(
            Attr("P_ref[MW]", "the reference for this step", source="p_ref_kw", factor=KW_PER_MW),
            Attr("P_forecast[MW]", "the signal's next forecast_steps values (perfect foresight, or with the "
                                   "errors of forecast_error)",
                 source="forecast_kw", factor=KW_PER_MW, kind=list),
        ),
    ),
}

COLLECTOR_MODELS: dict[str, ModelSpec] = {
    "Table": ModelSpec(
        doc="Writes every attribute connected to it, each step, to a tidy table (time, entity, attribute, value)",
        params=(Param("path", "the table's file (.csv or .parquet)"),
                Param("flush_every", "steps between writes", default=1, check=whole(1),
                      expects="a whole number >= 1")),
        any_inputs=True,
    ),
}

# SimbenchGridSim: mosaik-pandapower-2's Grid params plus these, and its models plus these (outputs read from
# pandapower's result table of the element, `source` naming the column).
GRID_PARAMS = (
    Param("grid", "a simbench code or a pandapower JSON file: loaded once per process, checked, with its profiles"),
    Param("start", "the time of mosaik time 0 (ISO 8601), if not the simulator's start_date (where profiles are "
                   "read)"),
)

GRID_MODELS: dict[str, ModelSpec] = {
    "Transformer": ModelSpec(
        doc="A transformer of the grid (extra_info: name, index, sn_mva, hv_bus, lv_bus); pandapower's res_trafo.",
        public=False,
        outputs=(
            Attr("loading[%]", "loading of the transformer", source="loading_percent"),
            Attr("P_hv[MW]", "active power into the high-voltage side", source="p_hv_mw"),
        ),
    ),
}

# How an Operator's limits reach the aggregators (OperatorSim's `coupling`, connect_operator's): one step late
# over time-shifted connections, or settled within the step in a same-step loop.
COUPLINGS = ("delayed", "iterative")

# OperatorSim (evagg.plugin.operator_sim): a grid operator limiting the EVs per bus group.
# the GridOperator's own parameters (defaults and checks in evagg.simulators.operator; None: its default)
OPERATOR_MODEL_PARAMS = ("v_min", "v_max", "v_margin", "loading_max", "loading_margin", "gain", "min_share",
                         "release_kw", "room_share", "idle_kw", "capability", "memory", "rated_kw")
OPERATOR_PARAMS = (
    Param("grid", "the operator's grid: a simbench code or a pandapower JSON file (the same as the Grid's)"),
    Param("groups", '[{"id", "bus", "weight"?, "p_rated_kw"?}]: one BusLimit child each (see operator_groups)'),
    Param("buses", '[bus, ...]: one BusLimit child per bus (group id "bus-<b>"; one aggregator only)',
          check=lambda v: all(isinstance(b, int) and not isinstance(b, bool) for b in v), expects="bus indices (int)"),
    *(Param(name, "see evagg.simulators.operator.GridOperator") for name in OPERATOR_MODEL_PARAMS),
)

OPERATOR_MODELS: dict[str, ModelSpec] = {
    "Operator": ModelSpec(
        doc="A grid operator: each step, limits on the EVs of each group from the grid's measured state "
            "(evagg.simulators.operator.GridOperator); connect with connect_operator.",
        params=OPERATOR_PARAMS,
        inputs=(
            Attr("Vm[pu]", "bus voltages: connect each grid Bus's Vm[pu] (keyed by the source's entity id)"),
            Attr("loading[%]", "branch loadings: each grid Line's and Transformer's loading[%]"),
            Attr("P[MW]", "bus net powers (load +): each grid Bus's P[MW], for the direction of the flows"),
        ),
        outputs=(
            Attr("n_limited", "groups with a limit for the next step", source="n_limited", kind=int),
            Attr("Vm_min[pu]", "the lowest voltage measured in the step (None if none)", source="vm_min"),
            Attr("loading_max[%]", "the highest branch loading measured in the step (None if none)",
                 source="loading_max"),
            Attr("iterations", "power flows the operator saw in the step: 1 in the delayed coupling; in the "
                               "iterative one, the rounds of the same-step loop (the last one: limits settled)",
                 source="step_iterations", kind=int),
            Attr("capped", "1 when the same-step loop hit max_iterations in the step (the limits were not settled "
                           "to tol_mw; the last ones sent are kept), else 0", source="step_capped", kind=int),
            Attr("capped_steps", "steps so far in which the same-step loop hit max_iterations", source="capped_steps",
                 kind=int),
        ),
    ),
    "BusLimit": ModelSpec(
        doc="The limits of one group (the EVs of one aggregator at one bus; extra_info: group, bus, operator).",
        public=False,
        inputs=(Attr("P_ev[MW]", "the group's present EV power (the EVBus's P[MW]); several sources are summed",
                     factor=KW_PER_MW),),
        outputs=(
            Attr("P_max[MW]", "upper limit on the group's EV power for the next step (None: none); in the iterative "
                              "coupling for this step, sent only when it moved (+inf: none)", factor=KW_PER_MW),
            Attr("P_min[MW]", "lower limit on the group's EV power for the next step (None: none); in the iterative "
                              "coupling for this step, sent only when it moved (-inf: none)", factor=KW_PER_MW),
            Attr("binding", "what set the limits, e.g. 'Vm Bus-12 low', 'loading Line-3' ('' if none)", kind=str),
        ),
    ),
}

# PeakShaverSim (evagg.plugin.peak_shaver_sim): a fleet's reference from the feeder's measured net load.
PEAK_SHAVER_MODELS: dict[str, ModelSpec] = {
    "PeakShaver": ModelSpec(
        doc="A reference for a fleet from the feeder's measured net load: share * (target - (P_feeder - "
            "P_fleet)) (evagg.simulators.peak_shaving.PeakShaver).",
        params=(
            Param("target", "the feeder level to keep below, MW, or 'auto' (with initial for the first day)"),
            Param("share", "this fleet's share of the room", default=1.0),
            Param("forecast_steps", "the next steps sent as P_forecast[MW]", default=0),
            Param("forecast", "persistence or daily", default="persistence"),
            Param("initial", "target='auto': the first day's target, MW"),
        ),
        inputs=(
            Attr("P_feeder[MW]", "the feeder's net load (load +): a Transformer's P_hv[MW] or the ExternalGrid's "
                                 "P[MW]; summed", factor=KW_PER_MW),
            Attr("P_fleet[MW]", "the fleet's power in the same step: the aggregators' P[MW], summed", factor=KW_PER_MW),
        ),
        outputs=(
            Attr("P_ref[MW]", "the fleet's reference (None before the first measurement)", source="p_ref_kw",
                 factor=KW_PER_MW),
            Attr("P_forecast[MW]", "the references of the next forecast_steps steps", source="forecast_kw",
                 factor=KW_PER_MW, kind=list),
            Attr("P_base[MW]", "the estimated non-EV load of the feeder", source="base_kw", factor=KW_PER_MW),
            Attr("target[MW]", "the target used", source="target_kw", factor=KW_PER_MW),
        ),
    ),
}
