"""AggregatorSim: the mosaik simulator of EV aggregators (model `Aggregator`, children `EVBus`).

Thin by design: it translates units (MW <-> kW), entities and time; the model is
`evagg.simulators.aggregator.Aggregator`. sim_config entry: ``{"python": "evagg.plugin:AggregatorSim"}``, or as its
own process ``{"cmd": "evagg-mosaik %(addr)s"}`` / ``{"connect": "HOST:PORT"}`` (``evagg-mosaik -r HOST:PORT``).

    sim = world.start("EVAgg", step_size=900, start_date="2026-06-01T00:00:00")
    agg = sim.Aggregator(n_evs=1000, seed=1, buses=[3, 5, 8], horizon=8)
    connect_buses(world, agg, grid)          # each EVBus child -> the grid's Bus-<index>.P_load[MW]
    world.connect(signal, agg, "P_ref[MW]")

Limits (``P_max[MW]`` / ``P_min[MW]``, on the Aggregator and on its EVBus children) are held until changed: the
last value from each source is kept, a step without one (an event-based source that sent nothing) keeps it, and
None, +inf / -inf mean no limit. ``world.start(..., same_step=True)`` makes the simulator "hybrid" with those limits
as triggers: new limits at the same mosaik time step it again and the model re-plans the same step with them (the
same-step loop with a grid operator, see `evagg.plugin.operator_sim`); only the aggregators whose inputs changed
re-plan. Default: time-based.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import mosaik_api_v3
import numpy as np
from mosaik_api_v3.types import CreateResult, InputData, OutputData, OutputRequest, SimId, Time

from evagg.simulators.aggregator import Aggregator, SignalSource
from evagg.simulators.synthetic import synthetic_fleet
from evagg.simulators.tables import read_reference, read_sessions

from .common import DEFAULT_TIME_ZERO, TimeGrid, time_grid
from .meta import AGGREGATOR_MODELS, SOC_SPREAD, build_meta, read_outputs, read_params, same_step_meta

log = logging.getLogger("evagg.plugin")

META = build_meta(AGGREGATOR_MODELS, "time-based")
_AGG = AGGREGATOR_MODELS["Aggregator"]
_BUS = AGGREGATOR_MODELS["EVBus"]
_INPUTS = _AGG.input_attrs
_BUS_INPUTS = AGGREGATOR_MODELS["EVBus"].input_attrs
_LIMITS = ("P_max[MW]", "P_min[MW]")
# same_step=True: the inputs that step the simulator again at the same time (the model re-plans the step)
SAME_STEP_TRIGGERS = {"Aggregator": list(_LIMITS), "EVBus": list(_LIMITS)}


class AggregatorSim(mosaik_api_v3.Simulator):
    """EV aggregators for mosaik. Simulator params (world.start): step_size (mosaik time units per step,
    default 900; step_size * time_resolution must be whole seconds), start_date (ISO 8601: the time of mosaik
    time 0), same_step (default False: time-based; True: hybrid, limits as triggers, for a same-step loop).
    Model params: see `evagg.plugin.meta.AGGREGATOR_PARAMS` (defaults and checks there)."""

    def __init__(self):
        super().__init__(META)
        self.sid: SimId | None = None
        self.grid: TimeGrid | None = None
        self.same_step = False
        self.aggregators: dict[str, Aggregator] = {}
        self.bus_entities: dict[str, tuple[str, int]] = {}  # EVBus eid -> (aggregator eid, position in its buses)
        # limits held until changed: (eid, attr) -> {source full id: value as received}
        self._held: dict[tuple[str, str], dict[str, Any]] = {}
        self._k: int | None = None  # the step last stepped
        self._args: dict[str, dict] = {}  # aggregator eid -> the arguments of its last model step (in step _k)
        self.n_replans = 0  # same-time steps that re-planned an aggregator (same_step only)

    def init(self, sid: SimId, time_resolution: float = 1.0, step_size: int = 900, start_date: str | None = None,
             same_step: bool = False, **sim_params):
        self.sid = sid
        self.grid = time_grid("AggregatorSim", time_resolution, step_size, start_date, sim_params,
                              known=("same_step",))
        self.same_step = bool(same_step)
        if self.same_step:
            self.meta = same_step_meta(self.meta, SAME_STEP_TRIGGERS)
        return self.meta

    # --------------------------------------------------------------------------------------------- creation

    def create(self, num: int, model: str, **params: Any) -> list[CreateResult]:
        if model != "Aggregator":
            raise ValueError(f"AggregatorSim: cannot create {model!r}; only 'Aggregator' (EVBus entities are its "
                             "children)")
        checked = read_params("AggregatorSim", model, _AGG, params)
        out = []
        for i in range(num):
            n = len(self.aggregators)
            eid = f"Aggregator-{n}"
            agg = self._build(eid, i, num, checked, params)
            self.aggregators[eid] = agg
            counts = agg.sessions_per_bus
            children = []
            for pos, bus in enumerate(agg.buses):
                ceid = f"EVBus-{n}-{int(bus)}"
                self.bus_entities[ceid] = (eid, pos)
                children.append({"eid": ceid, "type": "EVBus",
                                 "extra_info": {"bus": int(bus), "aggregator": eid, "n_sessions": int(counts[pos])}})
            out.append({
                "eid": eid, "type": "Aggregator", "children": children, "rel": [],
                "extra_info": {"n_evs": len(agg.fleet), "buses": [int(b) for b in agg.buses], "method": agg.method,
                               "horizon": agg.horizon, "step_s": agg.step_s, "start": str(agg.start),
                               "arrivals": agg.arrivals},
            })
        return out

    def _build(self, eid: str, i: int, num: int, p: dict, given: dict) -> Aggregator:
        sessions, n_evs = p["sessions"], p["n_evs"]
        if (sessions is None) == (n_evs is None):
            raise ValueError(f"AggregatorSim {eid}: give either sessions (a sessions CSV) or n_evs (a synthetic "
                             "fleet), not both or neither")
        if sessions is not None:
            start = self.grid.start_for("AggregatorSim", p["start"], required_for="a sessions table")
            if p["buses"] is not None:
                raise ValueError(f"AggregatorSim {eid}: buses spreads a synthetic fleet over buses; a sessions "
                                 "table gives its own bus column, or pass bus_map={ev_id: bus}")
            for k in ("seed", "days", "v2g_share"):
                if given.get(k) is not None:
                    raise ValueError(f"AggregatorSim {eid}: {k} is for a synthetic fleet (n_evs), not sessions")
            fleet = read_sessions(sessions)
        else:
            start = self.grid.start_for("AggregatorSim", p["start"])
            if start is None:
                start = DEFAULT_TIME_ZERO
                log.info("AggregatorSim %s: no start_date given: mosaik time 0 is %s", eid, start)
            seed = p["seed"]
            if num > 1 and seed is not None:
                seed = int(seed) + i  # several aggregators created at once: one fleet each
            fleet = synthetic_fleet(int(n_evs), seed=seed, start=str(start), days=int(p["days"]),
                                    v2g_share=float(p["v2g_share"]), buses=p["buses"])
        forecast = None
        if p["forecast"] not in (None, "hold"):
            forecast = SignalSource(read_reference(p["forecast"]), start, self.grid.step_s,
                                    source=f"forecast {p['forecast']}")
        engine = {k: v for k, v in (("method", p["method"]), ("horizon", p["horizon"])) if v is not None}
        return Aggregator(fleet, start, self.grid.step_s, time_limit_s=p["time_limit"], bus=p["bus_map"],
                          grid_buses=p["grid_buses"], forecast=forecast, name=eid, end=p["end"],
                          arrivals=p["arrivals"], arrivals_seed=int(p["arrivals_seed"]), **engine)

    def setup_done(self):
        """Check the grid connections: an aggregator's power reaches the grid once (the aggregator or its EVBus
        children, not both), every EVBus connected to a pandapower Bus must be connected to the bus of its
        own index, and an aggregator with some EVBus children connected to a grid must have all of them connected
        (else the grid lacks those buses, or the scenario forgot them: their power would go nowhere)."""
        if not self.bus_entities:
            return
        full = [f"{self.sid}.{ceid}" for ceid in self.bus_entities]
        aggs = [f"{self.sid}.{eid}" for eid in self.aggregators]
        related = yield self.mosaik.get_related_entities(full + aggs)
        problems = []
        # An aggregator wired to a grid bus itself (its P[MW]) while its EVBus children are too: the fleet's power
        # would reach the grid twice.
        for agg_fid in aggs:
            direct = sorted(rid for rid, info in (related.get(agg_fid) or {}).items() if info.get("type") == "Bus")
            via = sorted(f"{fid} -> {rid}" for fid in full
                         if self.bus_entities[fid.split(".", 1)[1]][0] == agg_fid.split(".", 1)[1]
                         for rid, info in (related.get(fid) or {}).items() if info.get("type") == "Bus")
            if direct and via:
                problems.append(f"the power of {agg_fid} reaches the grid twice: {agg_fid} -> {', '.join(direct)} "
                                f"and its EVBus children {', '.join(via[:3])}{' ...' if len(via) > 3 else ''}; "
                                "connect one of them (connect_buses wires the EVBus children)")
        connected: dict[str, list[int]] = {}
        unconnected: dict[str, list[int]] = {}
        for fid in full:
            ceid = fid.split(".", 1)[1]
            agg_eid, pos = self.bus_entities[ceid]
            bus = int(self.aggregators[agg_eid].buses[pos])
            grid_buses = [rid for rid, info in (related.get(fid) or {}).items() if info.get("type") == "Bus"]
            (connected if grid_buses else unconnected).setdefault(agg_eid, []).append(bus)
            for rid in grid_buses:
                tail = rid.rsplit(".", 1)[-1]
                if tail != f"Bus-{bus}":
                    problems.append(f"{ceid} (the EVs of {agg_eid} at bus {bus}) is connected to the grid's {rid}")
        for agg_eid, buses in unconnected.items():
            if agg_eid in connected:
                problems.append(f"{agg_eid} has EVs at bus(es) {buses} that are connected to no grid bus (does the "
                                f"grid have them?) while its buses {connected[agg_eid]} are")
        if problems:
            raise ValueError("AggregatorSim: " + "; ".join(problems))

    # ------------------------------------------------------------------------------------------------ stepping

    def step(self, time: Time, inputs: InputData, max_advance: Time) -> Time:
        k = self.grid.step_index(time)
        again = k == self._k  # the same mosaik time again (same_step: new limits within the step)
        for eid, data in inputs.items():
            if eid in self.bus_entities:
                allowed = _BUS_INPUTS
            elif eid in self.aggregators:
                allowed = _INPUTS
            else:
                raise ValueError(f"AggregatorSim: inputs for an unknown entity {eid!r}")
            unknown = set(data) - set(allowed)
            if unknown:
                raise ValueError(f"AggregatorSim {eid}: unexpected input(s) {sorted(unknown)}")
            for attr in (*_LIMITS, "limit_by"):
                if attr in data:  # held until changed, source by source
                    self._held.setdefault((eid, attr), {}).update(data[attr])
        bus_limits: dict[str, dict[int, tuple]] = {}
        limit_by: dict[str, dict[int, str]] = {}
        for eid, (agg_eid, pos) in self.bus_entities.items():
            lo, hi = self._limit(eid, "P_min[MW]", _BUS_INPUTS), self._limit(eid, "P_max[MW]", _BUS_INPUTS)
            if lo is not None or hi is not None:
                bus = int(self.aggregators[agg_eid].buses[pos])
                bus_limits.setdefault(agg_eid, {})[bus] = (lo, hi)
                by = [v for v in self._held.get((eid, "limit_by"), {}).values() if v]
                if by:
                    limit_by.setdefault(agg_eid, {})[bus] = str(by[0])
        for eid, agg in self.aggregators.items():
            data = inputs.get(eid, {})
            args = {"p_ref_kw": _INPUTS["P_ref[MW]"].from_mosaik(data.get("P_ref[MW]", {}).values()),
                    "forecast_kw": _INPUTS["P_forecast[MW]"].from_mosaik(data.get("P_forecast[MW]", {}).values()),
                    "p_min_kw": self._limit(eid, "P_min[MW]", _INPUTS),
                    "p_max_kw": self._limit(eid, "P_max[MW]", _INPUTS),
                    "bus_limits": bus_limits.get(eid), "limit_by": limit_by.get(eid)}
            if again and eid in self._args:
                last = self._args[eid]
                for a in ("p_ref_kw", "forecast_kw"):  # the step's reference, if not sent again
                    if args[a] is None:
                        args[a] = last[a]
                if _same_args(args, last):
                    continue  # nothing new for this aggregator: its plan of the step stands
                self.n_replans += 1
            agg.step(k, **args)
            self._args[eid] = args
        self._k = k
        return time + self.grid.step_size

    def _limit(self, eid: str, attr: str, table) -> float | None:
        """The held limit (kW) of `eid`: the sources' last values combined; None (no limit) when none has one
        (+inf / -inf or None)."""
        values = [v for v in self._held.get((eid, attr), {}).values() if v is not None and math.isfinite(v)]
        return table[attr].from_mosaik(values)

    def get_data(self, outputs: OutputRequest) -> OutputData:
        data: OutputData = {}
        for eid, attrs in outputs.items():
            if eid in self.aggregators:
                agg = self.aggregators[eid]
                data[eid] = read_outputs("AggregatorSim", eid, _AGG, attrs, None if agg.last is None else _Outputs(agg))
            elif eid in self.bus_entities:
                agg_eid, pos = self.bus_entities[eid]
                res = self.aggregators[agg_eid].last
                source = None if res is None else _BusOutputs(res, pos)
                data[eid] = read_outputs("AggregatorSim", eid, _BUS, attrs, source)
            else:
                raise ValueError(f"AggregatorSim: no entity {eid!r}")
        return data


class _Outputs:
    """What an Aggregator's outputs are read from (their `source` in the META table): its last step's result, and
    the state of charge spread of its plugged EVs (computed once, on the first SOC output asked for)."""

    _PERCENTILES = {source: q for _, source, q, _ in SOC_SPREAD}

    def __init__(self, agg: Aggregator):
        self._agg = agg
        self._spread: dict | None = None
        self._at_end: tuple | None = None

    def __getattr__(self, name: str):
        if name in ("plugged_at_end", "certain_shortfall_kwh"):
            if self._at_end is None:  # both outputs from one computation per step
                self._at_end = self._agg.plugged_at_end()
            return self._at_end[0] if name == "plugged_at_end" else self._at_end[1]
        if name not in self._PERCENTILES:
            return getattr(self._agg.last, name)
        if self._spread is None:
            q = self._agg.soc_spread(list(self._PERCENTILES.values()))
            self._spread = dict(zip(self._PERCENTILES, [None] * len(self._PERCENTILES) if q is None else q))
        return self._spread[name]


class _BusOutputs:
    """What an EVBus's outputs are read from: its bus's share of the aggregator's last step."""

    def __init__(self, res, pos: int):
        self.p_kw = res.bus_kw[pos]


def _same_args(a: dict, b: dict) -> bool:
    """Two model steps' arguments alike (limits, references, forecasts)."""
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, (list, tuple, np.ndarray)) or isinstance(y, (list, tuple, np.ndarray)):
            if x is None or y is None or len(x) != len(y) or any(u != v for u, v in zip(x, y)):
                return False
        elif x != y:
            return False
    return True
