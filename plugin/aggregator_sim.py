"""AggregatorSim: the mosaik simulator of EV aggregators (model `Aggregator`, children `EVBus`).

Thin by design: it translates units (MW <-> kW), entities and time; the model is
`evagg.simulators.aggregator.Aggregator`. sim_config entry: ``{"python": "evagg.plugin:AggregatorSim"}``, or as its
own process ``{"cmd": "evagg-mosaik %(addr)s"}`` / ``{"connect": "HOST:PORT"}`` (``evagg-mosaik -r HOST:PORT``).

    sim = world.start("EVAgg", step_size=900, start_date="2026-06-01T00:00:00")
    agg = sim.Aggregator(n_evs=1000, seed=1, buses=[3, 5, 8], horizon=8)
    connect_buses(world, agg, grid)          # each EVBus child -> the grid's Bus-<index>.P_load[MW]
    world.connect(signal, agg, "P_ref[MW]")
"""
from __future__ import annotations

import logging
from typing import Any

import mosaik_api_v3
import numpy as np
from mosaik_api_v3.types import CreateResult, InputData, OutputData, OutputRequest, SimId, Time

from evagg.simulators.aggregator import DEFAULT_HORIZON, Aggregator, SignalSource
from evagg.simulators.synthetic import synthetic_fleet
from evagg.simulators.tables import read_reference, read_sessions

from .common import DEFAULT_START, TimeGrid, check_params
from .meta import AGGREGATOR_MODELS, AGGREGATOR_PARAMS, SOC_PERCENTILES, SOC_SPREAD, build_meta

log = logging.getLogger("evagg.plugin")

META = build_meta(AGGREGATOR_MODELS, "time-based")
_INPUTS = AGGREGATOR_MODELS["Aggregator"].input_attrs
_OUTPUTS = AGGREGATOR_MODELS["Aggregator"].output_attrs
_BUS_P = AGGREGATOR_MODELS["EVBus"].output_attrs["P[MW]"]
_BUS_INPUTS = AGGREGATOR_MODELS["EVBus"].input_attrs


class AggregatorSim(mosaik_api_v3.Simulator):
    """EV aggregators for mosaik. Simulator params (world.start): step_size (mosaik time units per step,
    default 900; step_size * time_resolution must be whole seconds), start_date (ISO 8601: the time of mosaik
    time 0). Model params: see `evagg.plugin.meta.AGGREGATOR_PARAMS`."""

    def __init__(self):
        super().__init__(META)
        self.sid: SimId | None = None
        self.grid: TimeGrid | None = None
        self.aggregators: dict[str, Aggregator] = {}
        self.bus_entities: dict[str, tuple[str, int]] = {}  # EVBus eid -> (aggregator eid, position in its buses)

    def init(self, sid: SimId, time_resolution: float = 1.0, step_size: int = 900, start_date: str | None = None,
             **sim_params):
        if sim_params:
            raise ValueError(f"AggregatorSim: unknown simulator parameter(s) {', '.join(sorted(sim_params))}; "
                             "known: step_size, start_date")
        self.sid = sid
        self.grid = TimeGrid("AggregatorSim", time_resolution, step_size, start_date)
        return self.meta

    # --------------------------------------------------------------------------------------------- creation

    def create(self, num: int, model: str, **params: Any) -> list[CreateResult]:
        if model != "Aggregator":
            raise ValueError(f"AggregatorSim: cannot create {model!r}; only 'Aggregator' (EVBus entities are its "
                             "children)")
        check_params("AggregatorSim", model, params, AGGREGATOR_PARAMS)
        out = []
        for i in range(num):
            n = len(self.aggregators)
            eid = f"Aggregator-{n}"
            agg = self._build(eid, i, num, params)
            self.aggregators[eid] = agg
            counts = np.bincount(agg._bus_pos, minlength=len(agg.buses)) if agg._bus_pos is not None else []
            children = []
            for pos, bus in enumerate(agg.buses):
                ceid = f"EVBus-{n}-{int(bus)}"
                self.bus_entities[ceid] = (eid, pos)
                children.append({"eid": ceid, "type": "EVBus",
                                 "extra_info": {"bus": int(bus), "aggregator": eid, "n_sessions": int(counts[pos])}})
            out.append({
                "eid": eid, "type": "Aggregator", "children": children, "rel": [],
                "extra_info": {"n_evs": len(agg.fleet), "buses": [int(b) for b in agg.buses], "method": agg.method,
                               "horizon": agg.horizon, "step_s": agg.step_s, "start": str(agg.start)},
            })
        return out

    def _build(self, eid: str, i: int, num: int, p: dict) -> Aggregator:
        sessions, n_evs = p.get("sessions"), p.get("n_evs")
        if (sessions is None) == (n_evs is None):
            raise ValueError(f"AggregatorSim {eid}: give either sessions (a sessions CSV) or n_evs (a synthetic "
                             "fleet), not both or neither")
        if sessions is not None:
            start = self.grid.start_for("AggregatorSim", p.get("start"), required_for="a sessions table")
            if p.get("buses") is not None:
                raise ValueError(f"AggregatorSim {eid}: buses spreads a synthetic fleet over buses; a sessions "
                                 "table gives its own bus column, or pass bus_map={ev_id: bus}")
            for k in ("seed", "days", "v2g_share"):
                if p.get(k) is not None:
                    raise ValueError(f"AggregatorSim {eid}: {k} is for a synthetic fleet (n_evs), not sessions")
            fleet = read_sessions(sessions)
        else:
            start = self.grid.start_for("AggregatorSim", p.get("start"))
            if start is None:
                start = DEFAULT_START
                log.info("AggregatorSim %s: no start_date given: mosaik time 0 is %s", eid, start)
            if isinstance(n_evs, bool) or int(n_evs) != n_evs or n_evs < 0:
                raise ValueError(f"AggregatorSim {eid}: n_evs must be a whole number >= 0, got {n_evs!r}")
            seed = p.get("seed", 0)
            if num > 1 and seed is not None:
                seed = int(seed) + i  # several aggregators created at once: one fleet each
            fleet = synthetic_fleet(int(n_evs), seed=seed, start=str(start), days=int(p.get("days", 1) or 1),
                                    v2g_share=float(p.get("v2g_share", 0.5)), buses=p.get("buses"))
        forecast = None
        if p.get("forecast") not in (None, "hold"):
            forecast = SignalSource(read_reference(p["forecast"]), start, self.grid.step_s,
                                    source=f"forecast {p['forecast']}")
        horizon = p.get("horizon", DEFAULT_HORIZON)
        return Aggregator(
            fleet, start, self.grid.step_s, horizon=DEFAULT_HORIZON if horizon is None else horizon,
            method=p.get("method") or "dcls", time_limit_s=p.get("time_limit"), bus=p.get("bus_map"),
            grid_buses=p.get("grid_buses"), forecast=forecast, name=eid, end=p.get("end"),
        )

    def setup_done(self):
        """Check the grid connections: every EVBus connected to a pandapower Bus must be connected to the bus of its
        own index, and an aggregator with some EVBus children connected to a grid must have all of them connected
        (else the grid lacks those buses, or the scenario forgot them: their power would go nowhere)."""
        if not self.bus_entities:
            return
        full = [f"{self.sid}.{ceid}" for ceid in self.bus_entities]
        related = yield self.mosaik.get_related_entities(full)
        problems = []
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
        bus_limits: dict[str, dict[int, tuple]] = {}
        for eid, data in inputs.items():
            if eid in self.bus_entities:
                unknown = set(data) - set(_BUS_INPUTS)
                if unknown:
                    raise ValueError(f"AggregatorSim {eid}: unexpected input(s) {sorted(unknown)}")
                agg_eid, pos = self.bus_entities[eid]
                v = {name: attr.from_mosaik(data.get(name, {}).values()) for name, attr in _BUS_INPUTS.items()}
                bus = int(self.aggregators[agg_eid].buses[pos])
                bus_limits.setdefault(agg_eid, {})[bus] = (v["P_min[MW]"], v["P_max[MW]"])
        for eid, agg in self.aggregators.items():
            data = inputs.get(eid, {})
            unknown = set(data) - set(_INPUTS)
            if unknown:
                raise ValueError(f"AggregatorSim {eid}: unexpected input(s) {sorted(unknown)}")
            v = {name: attr.from_mosaik(data.get(name, {}).values()) for name, attr in _INPUTS.items()}
            agg.step(k, p_ref_kw=v["P_ref[MW]"], forecast_kw=v["P_forecast[MW]"], p_min_kw=v["P_min[MW]"],
                     p_max_kw=v["P_max[MW]"], bus_limits=bus_limits.get(eid))
        return time + self.grid.step_size

    def get_data(self, outputs: OutputRequest) -> OutputData:
        data: OutputData = {}
        for eid, attrs in outputs.items():
            if eid in self.aggregators:
                agg = self.aggregators[eid]
                res = agg.last
                values = {}
                spread = None
                for a in attrs:
                    spec = _OUTPUTS.get(a)
                    if spec is None:
                        raise ValueError(f"AggregatorSim: {eid} has no output {a!r}")
                    if res is None:
                        values[a] = None
                    elif spec.source == SOC_SPREAD:
                        if spread is None:
                            q = agg.soc_spread(list(SOC_PERCENTILES.values()))
                            spread = dict(zip(SOC_PERCENTILES, [None] * len(SOC_PERCENTILES) if q is None else q))
                        values[a] = spec.to_mosaik(spread[a])
                    else:
                        values[a] = spec.to_mosaik(getattr(res, spec.source))
                data[eid] = values
            elif eid in self.bus_entities:
                agg_eid, pos = self.bus_entities[eid]
                res = self.aggregators[agg_eid].last
                for a in attrs:
                    if a != "P[MW]":
                        raise ValueError(f"AggregatorSim: {eid} has no output {a!r}")
                data[eid] = {"P[MW]": None if res is None else _BUS_P.to_mosaik(res.bus_kw[pos])}
            else:
                raise ValueError(f"AggregatorSim: no entity {eid!r}")
        return data
