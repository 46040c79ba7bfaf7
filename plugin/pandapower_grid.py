"""SimbenchGridSim: mosaik-pandapower-2's grid simulator with the grid's profiles read at the simulated time and
transformer results.

What it adds to mosaik-pandapower-2 (everything else is the adapter as it is):

- ``Grid(grid=...)``: a simbench code (e.g. ``1-LV-rural2--0-sw``) or a pandapower JSON file (a simbench net saved
  with ``pandapower.to_json`` keeps its profiles), loaded once per process and checked (`evagg.simulators.grids`).
  ``Grid(simbench=CODE)`` is the same as ``Grid(grid=CODE)``; the adapter's other sources (``json``, ``xlsx``,
  ``net``, ``network_function``) load as in the adapter, without profiles.
- Profiles at the simulated time: the adapter applies a simbench grid's load/generation profiles at row
  ``time // 900``, i.e. as if mosaik time 0 were 2016-01-01 00:00 and one mosaik time unit one second. Here the
  time of a step is ``start`` (model param) or else ``start_date`` (simulator param; default 2016-01-01) + time *
  time_resolution, mapped onto the profiles' year 2016 (same month, day and clock time; a run crossing New Year
  continues at the start of the profiles). A step longer than the profiles' 15 minutes gets the mean of the rows
  it covers; a shorter one holds its row.
- ``Transformer`` children (``Transformer-<index>``, related to their two buses) with ``loading[%]`` and
  ``P_hv[MW]`` (pandapower's ``res_trafo``), declared in `evagg.plugin.meta.GRID_MODELS`.
- The power flow reuses pandapower's set-up between steps (``runpp(..., recycle=dict(bus_pq=True, trafo=False,
  gen=False))``: the admittance matrix and the bus lookups of the first step, only the buses' P and Q renewed,
  warm-started from the last results), since the topology does not change between steps; switching an element on
  or off (``disable_elements`` / ``enable_elements``) makes the next step set up afresh, and so does a recycled
  power flow that does not converge (it is run once more from scratch before failing). Profiles and bus inputs are
  written column by column (one pandas write per column and step, not one per element).
- ``same_step=True`` (simulator param): a mosaik "hybrid" simulator whose Bus inputs (``P_load[MW]``,
  ``P_gen[MW]``, ``Q_load[MVar]``, ``Q_gen[MVar]``) are triggers, so that new power from a simulator in the same
  ``world.group()`` (an AggregatorSim with ``same_step=True`` re-planning the step) runs the power flow again at
  the same time; it still steps on its own schedule. Default: time-based, as the adapter.

sim_config entry: ``{"python": "evagg.plugin:SimbenchGridSim"}``;
``world.start("Grid", step_size=900, start_date="2026-06-01 00:00:00").Grid(simbench="1-MV-rural--0-sw")`` or
``world.start("Grid", step_size=900).Grid(grid="net.json", start="2026-01-14 00:00:00")``.
"""
from __future__ import annotations

import copy

import numpy as np
import pandapower as pp
from mosaik_components.pandapower.simulator import MODEL_TO_ELEMENT_SPECS, META as _PP_META
from mosaik_components.pandapower.simulator import Simulator

from evagg.simulators.times import to_datetime64
from evagg.simulators.grids import Feeder, load_grid

from .meta import GRID_MODELS, GRID_PARAMS, same_step_meta

PROFILE_YEAR = 2016

META = copy.deepcopy(_PP_META)
META["models"]["Grid"]["params"] = list(META["models"]["Grid"]["params"]) + [p.name for p in GRID_PARAMS]
META["models"].update({name: spec.description() for name, spec in GRID_MODELS.items()})
_OUTPUTS = {model: spec.output_attrs for model, spec in GRID_MODELS.items()}
_RESULTS = {"Transformer": "res_trafo"}
# same_step=True: the inputs that run the power flow again at the same time
SAME_STEP_TRIGGERS = {"Bus": ["P_load[MW]", "P_gen[MW]", "Q_load[MVar]", "Q_gen[MVar]"]}
# Only the buses' P and Q change between steps (profiles, bus inputs): pandapower keeps the rest of its set-up.
RECYCLE = {"bus_pq": True, "trafo": False, "gen": False}


OUTSTANDING = 3  # bus inputs named in the error of a power flow that does not converge


class PowerFlowFailed(RuntimeError):
    """The power flow of a step did not converge: one line with the step, the bus inputs that stand out and the
    simulators that sent them."""


class SimbenchGridSim(Simulator):
    """mosaik-pandapower-2 with profiles at the simulated time and transformer results (see the module doc)."""

    def __init__(self):
        super().__init__()
        self.meta = copy.deepcopy(META)
        self.time_resolution = 1.0
        self.start_date = to_datetime64(f"{PROFILE_YEAR}-01-01")
        self.start = self.start_date  # the time of mosaik time 0 (where the profiles are read)
        self.feeder: Feeder | None = None  # the grid loaded by grid= / simbench=, with its profiles
        self.recycle = True  # reuse pandapower's set-up between steps (see the module doc)
        self._positions: dict = {}  # (element, index key) -> row positions in the element's table
        self._start_given = False  # start_date or start= given: the Grid entity says its start (extra_info)

    def init(self, sid, time_resolution: float = 1.0, step_size: int | None = 900, start_date: str | None = None,
             same_step: bool = False):
        self.time_resolution = float(time_resolution)
        if start_date is not None:
            self.start_date = self.start = to_datetime64(start_date)
            self._start_given = True
        if same_step:
            if not step_size:
                raise ValueError("SimbenchGridSim: same_step=True needs a step_size (it steps on its own schedule "
                                 "and again whenever its bus inputs change at the same time)")
            self.meta = same_step_meta(self.meta, SAME_STEP_TRIGGERS)
        return super().init(sid, time_resolution=time_resolution, step_size=step_size)

    def create_grid(self, **params):
        start = params.pop("start", None)
        if start is not None:
            self.start = to_datetime64(start)
            self._start_given = True
        if "grid" in params or "simbench" in params:
            spec = params.pop("grid", None)
            code = params.pop("simbench", None)
            if spec is not None and code is not None:
                raise ValueError("SimbenchGridSim: give grid= or simbench=, not both")
            if params:
                raise ValueError(f"SimbenchGridSim: grid= / simbench= cannot be combined with "
                                 f"{', '.join(sorted(params))}")
            self.feeder = load_grid(spec if spec is not None else code)
            result = super().create_grid(net=self.feeder.copy_net())
        else:
            result = super().create_grid(**params)  # no profiles: the adapter loads them for simbench= only
        for row in self._net.trafo.itertuples():
            eid = f"Transformer-{row.Index}"
            info = {"name": row.name, "index": row.Index, "sn_mva": float(row.sn_mva), "hv_bus": int(row.hv_bus),
                    "lv_bus": int(row.lv_bus)}
            result["children"].append({"type": "Transformer", "eid": eid, "rel": [f"Bus-{row.hv_bus}",
                                                                                   f"Bus-{row.lv_bus}"],
                                       "extra_info": info})
            self._extra_info[eid] = info
        if self._start_given or (self.feeder is not None and self.feeder.profiles):
            # the time of mosaik time 0 where it matters (profiles read at it, or given): connect_buses checks
            # that the aggregators it wires to this grid start at the same time (mosaik relates types only)
            result["extra_info"] = {**(result.get("extra_info") or {}), "start": str(self.start)}
        return result

    def step(self, time, inputs, max_advance):
        if self.feeder is not None and self.feeder.profiles:
            step_s = (self._step_size or 0) * self.time_resolution
            values = self.feeder.profile_values(self.start, time * self.time_resolution, step_s)
            for (elm, col), (idx, row) in values.items():
                self._write(elm, col, idx, row)
        own_mw = self._own_power_mw()  # before the inputs, for the error of a power flow that does not converge
        # the adapter's inputs (sum of the sources per bus), one write per element column
        columns: dict = {}
        for eid, data in inputs.items():
            model, idx = self.get_model_and_idx(eid)
            spec = MODEL_TO_ELEMENT_SPECS[model]
            for attr, values in data.items():
                a = spec.input_attr_specs[attr]
                rows = columns.setdefault((a.target_elem or spec.elem, a.column), ([], []))
                rows[0].append(a.idx_fn(idx, self))
                rows[1].append(a.aggregator(values.values()))
        for (elm, col), (idx, vals) in columns.items():
            self._write(elm, col, np.asarray(idx), np.asarray(vals, dtype=float))
        try:
            self.run_power_flow()
        except pp.LoadflowNotConverged:
            raise PowerFlowFailed(self._not_converged(time, inputs, own_mw)) from None
        if self._step_size:
            return time + self._step_size
        return None

    def run_power_flow(self) -> None:
        """pandapower's power flow, recycling its set-up from the step before (see the module doc)."""
        numba = pp.NUMBA_INSTALLED
        if not self.recycle:
            pp.runpp(self._net, numba=numba)
            return
        try:
            pp.runpp(self._net, numba=numba, recycle=RECYCLE)
        except pp.LoadflowNotConverged:
            if self._net["_ppc"] is None:
                raise
            self._net["_ppc"] = None  # warm start or stale set-up: once more from scratch
            pp.runpp(self._net, numba=numba, recycle=RECYCLE)

    def _own_power_mw(self) -> float:
        """The magnitudes of the grid's own loads and generation summed (MW)."""
        return float(np.nansum(np.abs(self._net.load["p_mw"].to_numpy(dtype=float)))
                     + np.nansum(np.abs(self._net.sgen["p_mw"].to_numpy(dtype=float))))

    def _not_converged(self, time, inputs, own: float) -> str:
        """The message of a power flow that does not converge at `time`: the step, the largest bus inputs (by
        magnitude, with the simulators that sent them) against the grid's own loads and generation."""
        when = self.start + np.timedelta64(int(round(time * self.time_resolution)), "s")
        sent = [(abs(float(v)), f"{getattr(self, '_sid', '')}.{eid} {attr} {float(v):.6g} from {src}")
                for eid, data in inputs.items() for attr, sources in data.items()
                for src, v in sources.items() if v is not None and np.isfinite(float(v))]
        sent.sort(key=lambda x: -x[0])
        shown = "; ".join(text for _, text in sent[:OUTSTANDING]) or "no bus inputs"
        return (f"SimbenchGridSim {getattr(self, '_sid', '')}: the power flow does not converge at "
                f"time {time} ({when}); the largest bus inputs (MW): {shown}; the grid's loads and generation before "
                f"this step's inputs "
                f"sum to {own:.6g} MW in magnitude. Is a power in W or kW sent as MW, or a bus overloaded?")

    def _write(self, elm: str, col: str, idx, values) -> None:
        """Set `col` of the rows `idx` of the element table `elm` to `values` (one pandas write)."""
        table = self._net[elm]
        key = (elm, tuple(np.ravel(idx).tolist()))
        pos = self._positions.get(key)
        if pos is None:
            pos = table.index.get_indexer(np.ravel(idx))
            if (pos < 0).any():
                raise KeyError(f"SimbenchGridSim: {elm} has no element(s) {np.ravel(idx)[pos < 0][:5].tolist()}")
            self._positions[key] = pos
        column = table[col].to_numpy(dtype=float, copy=True)
        column[pos] = values
        table[col] = column

    def disable_elements(self, elements: list[str]) -> None:
        super().disable_elements(elements)
        self._net["_ppc"] = None  # the topology changed: the next power flow sets up afresh

    def enable_elements(self, elements: list[str]) -> None:
        super().enable_elements(elements)
        self._net["_ppc"] = None

    def get_entity_data(self, eid, attrs):
        model, idx = self.get_model_and_idx(eid)
        if model in _OUTPUTS:
            res = self._net[_RESULTS[model]]
            return {a: float(res.at[idx, _OUTPUTS[model][a].source]) for a in attrs}
        return super().get_entity_data(eid, attrs)
