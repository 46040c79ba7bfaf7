"""Declarative description of the plugin's models and attributes, from which each simulator's mosaik META is
built (the habit of mosaik-pandapower-2: one table, units in the attribute names).

Units: the models (evagg.simulators) work in kW / kWh; mosaik attributes are in MW / MWh (+ = load, as the Bus
input P_load[MW] of mosaik-pandapower-2). `Attr.factor` is the number of model units per mosaik unit
(1000 kW per MW); an output is `model_value / factor`, an input `mosaik_value * factor`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from mosaik_api_v3.types import Meta, ModelDescription

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
class ModelSpec:
    """A mosaik model: its parameters, inputs and outputs."""

    doc: str
    public: bool = True
    params: tuple[str, ...] = ()
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

    def description(self) -> ModelDescription:
        names = [a.name for a in self.inputs] + [a.name for a in self.outputs if a.name not in self.input_attrs]
        return {"public": self.public, "params": list(self.params), "attrs": names,
                "any_inputs": self.any_inputs, **self.extra}


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


MW = KW_PER_MW

AGGREGATOR_PARAMS = (
    "sessions",  # a sessions CSV (the spec's table), or:
    "n_evs", "seed", "days", "v2g_share", "buses",  # a synthetic fleet spread over `buses`
    "bus_map",  # {ev_id: bus}: where each session plugs in (else the sessions' bus column)
    "grid_buses",  # the grid's bus indices: a session at another bus is an error at creation
    "method", "horizon", "time_limit",  # the engine: method, steps planned ahead, solver time limit (s)
    "forecast",  # a signal CSV giving the reference's future (else the current reference is held)
    "start",  # the time of mosaik time 0 (ISO 8601), if not the simulator's start_date
    "end",  # optional end of the study period (ISO 8601): plans never reach past it (a shrinking horizon)
)

# The state of charge spread outputs: read from `Aggregator.soc_spread()` at these percentiles, not from a field.
SOC_SPREAD = "soc_spread"
SOC_PERCENTILES = {"soc_min[%]": 0, "soc_p10[%]": 10, "soc_p50[%]": 50, "soc_p90[%]": 90, "soc_max[%]": 100}

AGGREGATOR_MODELS: dict[str, ModelSpec] = {
    "Aggregator": ModelSpec(
        doc="An EV aggregator: one fleet re-dispatched each step over a receding horizon.",
        params=AGGREGATOR_PARAMS,
        inputs=(
            Attr("P_ref[MW]", "reference for the whole fleet (+ = draw); several sources are summed", factor=MW),
            Attr("P_forecast[MW]", "the reference for the next steps (a list), else the reference is held",
                 factor=MW, kind=list, combine=_sum_lists),
            Attr("P_max[MW]", "upper limit on the fleet's net power (the lowest of several); hard: where it leaves "
                              "departure needs out of reach, they give way", factor=MW, combine=min),
            Attr("P_min[MW]", "lower limit on the fleet's net power (the highest of several)", factor=MW,
                 combine=max),
        ),
        outputs=(
            Attr("P[MW]", "the fleet's net power (load convention); the sum of its EVBus children",
                 source="p_kw", factor=MW),
            Attr("P_ref[MW]", "the reference it followed (None while uncontrolled)", source="p_ref_kw", factor=MW),
            Attr("tracking_error[MW]", "P - P_ref (None while uncontrolled)", source="tracking_error_kw",
                 factor=MW),
            Attr("n_plugged", "EVs plugged in in this step", source="n_plugged", kind=int),
            Attr("energy[MWh]", "energy stored in the plugged EVs at the end of the step", source="energy_kwh",
                 factor=MW),
            Attr("shortfall[MWh]", "cumulative target energy not delivered at departure", source="shortfall_kwh",
                 factor=MW),
            Attr("need_unmet[MWh]", "cumulative departure need (the spec's: what charging flat out would give) not "
                                    "delivered; only grid limits can cause it", source="need_unmet_kwh", factor=MW),
            Attr("solve_time[s]", "wall time of this step's re-dispatch", source="solve_time_s"),
            Attr("limited", "1 when a grid limit (on the fleet or one of its buses) was binding in this step",
                 source="limited", kind=int),
            Attr("needs_lowered[MWh]", "departure needs this step's plan gave up because the grid limits left "
                                       "them out of reach", source="needs_lowered_kwh", factor=MW),
            *(Attr(name, f"state of charge of the EVs plugged in in the step, at its end: {what} (None if none)",
                   source=SOC_SPREAD) for name, what in (
                ("soc_min[%]", "lowest"), ("soc_p10[%]", "10th percentile"), ("soc_p50[%]", "median"),
                ("soc_p90[%]", "90th percentile"), ("soc_max[%]", "highest"))),
        ),
    ),
    "EVBus": ModelSpec(
        doc="The EVs of one aggregator at one grid bus (extra_info: {'bus': index}); connect P[MW] to the "
            "pandapower Bus input P_load[MW]. Grid limits on these EVs' net power arrive as P_max/P_min.",
        public=False,
        inputs=(
            Attr("P_max[MW]", "upper limit on these EVs' net power (the lowest of several); hard, held until "
                              "changed", factor=MW, combine=min),
            Attr("P_min[MW]", "lower limit on these EVs' net power (the highest of several)", factor=MW,
                 combine=max),
            Attr("limit_by", "what set P_max (the operator's BusLimit binding, e.g. 'Transformer-0'): the upper "
                             "limits an aggregator's buses get from the same line or transformer are pooled into "
                             "one limit on their sum", kind=str, combine=lambda v: v[0]),
        ),
        outputs=(Attr("P[MW]", "net power of these EVs (load convention)", factor=MW),),
    ),
}

REFERENCE_MODELS: dict[str, ModelSpec] = {
    "Signal": ModelSpec(
        doc="A reference signal: from a signal CSV (time, p_ref_kw) or synthetic (seeded).",
        params=("path", "kind", "seed", "sessions", "n_evs", "days", "v2g_share", "scale_kw", "n_steps",
                "forecast_steps", "until", "start"),
        outputs=(
            Attr("P_ref[MW]", "the reference for this step", factor=MW),
            Attr("P_forecast[MW]", "the signal's next forecast_steps values (perfect foresight)", factor=MW,
                 kind=list),
        ),
    ),
}

COLLECTOR_MODELS: dict[str, ModelSpec] = {
    "Table": ModelSpec(
        doc="Writes every attribute connected to it, each step, to a tidy table (time, entity, attribute, value)",
        params=("path", "flush_every"),
        any_inputs=True,
    ),
}

# SimbenchGridSim: mosaik-pandapower-2's Grid params plus these, and its models plus these (outputs read from
# pandapower's result table of the element, `source` naming the column).
GRID_PARAMS = (
    "grid",  # a simbench code or a pandapower JSON file: loaded once per process, checked, with its profiles
    "start",  # the time of mosaik time 0 (ISO 8601), if not the simulator's start_date (where profiles are read)
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

# OperatorSim (evagg.plugin.operator_sim): a grid operator limiting the EVs per bus group, and a peak shaver.
OPERATOR_PARAMS = (
    "grid",  # the operator's grid: a simbench code or a pandapower JSON file (the same as the Grid's)
    "groups",  # [{"id", "bus", "weight"?, "p_rated_kw"?}]: one BusLimit child each (see operator_groups), or:
    "buses",  # [bus, ...]: one BusLimit child per bus (group id "bus-<b>"; one aggregator only)
    "v_min", "v_max", "v_margin", "loading_max", "loading_margin", "gain", "min_share", "release_kw",
    "room_share", "idle_kw", "capability", "memory", "rated_kw",  # see evagg.simulators.operator
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
            Attr("n_limited", "groups with a limit for the next step", kind=int),
            Attr("Vm_min[pu]", "the lowest voltage measured in the step (None if none)"),
            Attr("loading_max[%]", "the highest branch loading measured in the step (None if none)"),
            Attr("iterations", "power flows the operator saw in the step: 1 in the delayed coupling; in the "
                               "iterative one, the rounds of the same-step loop (the last one: limits settled)",
                 kind=int),
            Attr("capped", "1 when the same-step loop hit max_iterations in the step (the limits were not settled "
                           "to tol_mw; the last ones sent are kept), else 0", kind=int),
            Attr("capped_steps", "steps so far in which the same-step loop hit max_iterations", kind=int),
        ),
    ),
    "BusLimit": ModelSpec(
        doc="The limits of one group (the EVs of one aggregator at one bus; extra_info: group, bus, operator).",
        public=False,
        inputs=(Attr("P_ev[MW]", "the group's present EV power (the EVBus's P[MW]); several sources are summed",
                     factor=MW),),
        outputs=(
            Attr("P_max[MW]", "upper limit on the group's EV power for the next step (None: none); in the iterative "
                              "coupling for this step, sent only when it moved (+inf: none)", factor=MW),
            Attr("P_min[MW]", "lower limit on the group's EV power for the next step (None: none); in the iterative "
                              "coupling for this step, sent only when it moved (-inf: none)", factor=MW),
            Attr("binding", "what set the limits, e.g. 'Vm Bus-12 low', 'loading Line-3' ('' if none)", kind=str),
        ),
    ),
    "PeakShaver": ModelSpec(
        doc="A reference for a fleet from the feeder's measured net load: share * (target - (P_feeder - "
            "P_fleet)) (evagg.simulators.peak_shaving.PeakShaver).",
        params=("target", "share", "forecast_steps", "forecast", "initial"),
        inputs=(
            Attr("P_feeder[MW]", "the feeder's net load (load +): a Transformer's P_hv[MW] or the ExternalGrid's "
                                 "P[MW]; summed", factor=MW),
            Attr("P_fleet[MW]", "the fleet's power in the same step: the aggregators' P[MW], summed", factor=MW),
        ),
        outputs=(
            Attr("P_ref[MW]", "the fleet's reference (None before the first measurement)", source="p_ref_kw",
                 factor=MW),
            Attr("P_forecast[MW]", "the references of the next forecast_steps steps", source="forecast_kw",
                 factor=MW, kind=list),
            Attr("P_base[MW]", "the estimated non-EV load of the feeder", source="base_kw", factor=MW),
            Attr("target[MW]", "the target used", source="target_kw", factor=MW),
        ),
    ),
}
