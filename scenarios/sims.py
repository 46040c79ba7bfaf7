"""The scenarios' own mosaik simulators: thin subclasses of mosaik-pandapower-2's grid and of the plugin's
simulators, adding what a feeder study records (nothing here changes what the plugin computes).

- ``FeederGridSim``: mosaik-pandapower-2's ``Simulator`` whose ``Grid(grid=..., start=...)`` loads a simbench code
  or a pandapower JSON file once per process (`evagg.scenarios.grids`), applies the profiles at the simulated time
  (not at row ``time // 900`` from 2016-01-01) and has ``Transformer`` children with ``loading[%]`` and
  ``P_hv[MW]`` (pandapower's ``res_trafo``), which the adapter lacks. The classic ``Grid(simbench=...)`` etc.
  still work as in the adapter.
- ``FleetAggregatorSim``: the plugin's ``AggregatorSim`` plus the plugged EVs' state of charge spread:
  ``soc_min[%]``, ``soc_p10[%]``, ``soc_p50[%]``, ``soc_p90[%]``, ``soc_max[%]`` (energy / capacity at the end
  of the step, over the EVs plugged in in it).
- ``ResultsSim``: the plugin's ``CollectorSim``, calling ``on_step(time)`` (a simulator parameter, in-process only)
  after each step it has written: the scenarios' progress bar and step count.
"""
from __future__ import annotations

import copy

import numpy as np
from mosaik_components.pandapower.simulator import META as _PP_META
from mosaik_components.pandapower.simulator import Simulator as _PandapowerSimulator

from evagg.plugin import AggregatorSim, CollectorSim

from .grids import load_grid

__all__ = ["FeederGridSim", "FleetAggregatorSim", "ResultsSim", "SOC_ATTRS"]

# ----------------------------------------------------------------------------------------------- grid

GRID_META = copy.deepcopy(_PP_META)
GRID_META["models"]["Grid"]["params"] = list(GRID_META["models"]["Grid"]["params"]) + ["grid", "start"]
GRID_META["models"]["Transformer"] = {"public": False, "params": [], "attrs": ["loading[%]", "P_hv[MW]"],
                                      "any_inputs": False}
_TRAFO_COLUMNS = {"loading[%]": "loading_percent", "P_hv[MW]": "p_hv_mw"}


class FeederGridSim(_PandapowerSimulator):
    """mosaik-pandapower-2 with profiles at the simulated time and transformer results (see the module doc).

    ``world.start("Grid", step_size=900).Grid(grid="1-LV-semiurb4--0-sw", start="2026-01-14 00:00:00")``
    """

    def __init__(self):
        super().__init__()
        self.meta = copy.deepcopy(GRID_META)
        self.time_resolution = 1.0
        self.feeder = None
        self.start = None

    def init(self, sid, time_resolution: float = 1.0, step_size: int | None = 900):
        self.time_resolution = float(time_resolution)
        return super().init(sid, time_resolution=time_resolution, step_size=step_size)

    def create_grid(self, **params):
        if "grid" not in params:
            if "start" in params:
                raise ValueError("FeederGridSim: start= goes with grid=")
            result = super().create_grid(**params)
        else:
            spec, start = params.pop("grid"), params.pop("start", None)
            if params:
                raise ValueError(f"FeederGridSim: grid= cannot be combined with {', '.join(sorted(params))}")
            if start is None:
                raise ValueError("FeederGridSim: grid= needs start= (the time of mosaik time 0, ISO 8601)")
            self.feeder = load_grid(spec)
            self.start = np.datetime64(str(start), "s")
            result = super().create_grid(net=self.feeder.copy_net())
        for row in self._net.trafo.itertuples():
            eid = f"Transformer-{row.Index}"
            info = {"name": row.name, "index": row.Index, "sn_mva": float(row.sn_mva), "hv_bus": int(row.hv_bus),
                    "lv_bus": int(row.lv_bus)}
            result["children"].append({"type": "Transformer", "eid": eid, "rel": [f"Bus-{row.hv_bus}",
                                                                                   f"Bus-{row.lv_bus}"],
                                       "extra_info": info})
            self._extra_info[eid] = info
        return result

    def step(self, time, inputs, max_advance):
        if self.feeder is not None and self.feeder.profiles:
            step_s = (self._step_size or 0) * self.time_resolution
            seconds = time * self.time_resolution
            for (elm, col), (idx, values) in self.feeder.profile_values(self.start, seconds, step_s).items():
                self._net[elm].loc[idx, col] = values
        return super().step(time, inputs, max_advance)

    def get_entity_data(self, eid, attrs):
        model, idx = self.get_model_and_idx(eid)
        if model == "Transformer":
            res = self._net.res_trafo
            return {a: float(res.at[idx, _TRAFO_COLUMNS[a]]) for a in attrs}
        return super().get_entity_data(eid, attrs)


# ----------------------------------------------------------------------------------------------- aggregator

SOC_ATTRS = {"soc_min[%]": 0, "soc_p10[%]": 10, "soc_p50[%]": 50, "soc_p90[%]": 90, "soc_max[%]": 100}


class FleetAggregatorSim(AggregatorSim):
    """The plugin's AggregatorSim, plus the state of charge spread of the plugged EVs (see the module doc)."""

    def __init__(self):
        super().__init__()
        self.meta = copy.deepcopy(self.meta)
        attrs = self.meta["models"]["Aggregator"]["attrs"]
        attrs.extend(a for a in SOC_ATTRS if a not in attrs)

    def get_data(self, outputs):
        mine = {}
        rest = {}
        for eid, attrs in outputs.items():
            extra = [a for a in attrs if a in SOC_ATTRS]
            if extra and eid in self.aggregators:
                mine[eid] = extra
            rest[eid] = [a for a in attrs if not (a in SOC_ATTRS and eid in self.aggregators)]
        data = super().get_data(rest)
        for eid, attrs in mine.items():
            data.setdefault(eid, {}).update(self._soc(eid, attrs))
        return data

    def _soc(self, eid, attrs) -> dict:
        agg = self.aggregators[eid]
        res = agg.last
        if res is None or res.sessions is None or not len(res.sessions):
            return {a: None for a in attrs}
        idx = res.sessions
        on = (agg.first_g[idx] <= res.k) & (agg.stop_g[idx] > res.k)
        if not on.any():
            return {a: None for a in attrs}
        soc = 100.0 * agg.energy_kwh[idx[on]] / agg.fleet.capacity_kwh[idx[on]]
        q = np.percentile(soc, [SOC_ATTRS[a] for a in attrs])
        return {a: float(v) for a, v in zip(attrs, q)}


# ----------------------------------------------------------------------------------------------- results


class ResultsSim(CollectorSim):
    """The plugin's CollectorSim with an ``on_step(time)`` callback (simulator parameter)."""

    def __init__(self):
        super().__init__()
        self.on_step = None

    def init(self, sid, time_resolution: float = 1.0, start_date=None, on_step=None, **sim_params):
        self.on_step = on_step
        return super().init(sid, time_resolution=time_resolution, start_date=start_date, **sim_params)

    def step(self, time, inputs, max_advance):
        out = super().step(time, inputs, max_advance)
        if self.on_step is not None:
            self.on_step(time)
        return out
