"""OperatorSim: a grid operator for EV aggregators (model `Operator` with children `BusLimit`).

Thin by design: units (MW <-> kW), entities and time; the model is `evagg.simulators.operator.GridOperator`.
sim_config entry: ``{"python": "evagg.plugin:OperatorSim"}``. The wiring (`connect_operator`, `operator_groups`)
is in `evagg.plugin.wiring`; the peak shaver is its own simulator (`evagg.plugin.peak_shaver_sim.PeakShaverSim`).

Operator: built from the grid (``grid=``: the simbench code or pandapower JSON file the Grid simulator runs) and the
controlled groups (``groups=operator_groups(aggregators)``: one per EVBus child of the aggregators, or
``buses=[...]`` for one aggregator). Its inputs, on the Operator entity, come from the grid's children and are
told apart by their source's entity id (``<grid sid>.Bus-<index>``, ``.Line-<index>``, ``.Transformer-<index>``):
``Vm[pu]`` and ``P[MW]`` from each Bus, ``loading[%]`` from each Line and Transformer (evagg's SimbenchGridSim has
Transformer children). Each `BusLimit` child takes its group's ``P_ev[MW]`` (the EVBus's P[MW]) and gives
``P_max[MW]`` / ``P_min[MW]`` (None: no limit) and ``binding``, to connect to the EVBus. `connect_operator` wires
it all, in one of two couplings:

- "delayed" (the default): the limits go back time-shifted (the grid is solved with the EVs' power of the step:
  the limits hold from the next step).

      op = world.start("Operator", step_size=900).Operator(grid="1-LV-rural2--0-sw", groups=operator_groups([agg]))
      connect_operator(world, op, grid, [agg])

- "iterative": a same-step loop. The grid, the aggregators and the operator are started inside one
  ``with world.group():`` (grid and aggregators with ``same_step=True``, the OperatorSim with
  ``coupling="iterative"``), and the limits go back over weak connections: within one mosaik time the aggregators
  plan, the grid runs its power flow, the operator computes limits and, where they moved by more than ``tol_mw``
  (MW, default 1e-4) from those it last sent, sends them (as events, +inf / -inf for no limit); the aggregators
  re-plan the same step with them, the grid runs again, ... until the limits settle or ``max_iterations`` power
  flows (default 20) were seen in the step: then the operator sends nothing more (the last limits sent stay),
  counts the step (outputs ``capped``, ``capped_steps``) and logs a warning once. Output ``iterations``: the power
  flows of the step. ``later_rounds`` says what the rounds after a step's first one send: "cuts" (the default:
  only limits below a group's present EV power, i.e. where the rule finds the grid's margins violated; the
  room the rule shares out, up or down, is sent in the first round of each step only, so a violation is cured
  within the step in a few rounds, and room moves from step to step as in the delayed coupling) or "all" (every
  limit that moved: the rule's own fixed point within the step; slow where a feeder-wide row's room is shared by
  many groups that do not use it, as the rule gives each binding group only its share, round after round).

      with world.group():
          grid = world.start("Grid", step_size=900, same_step=True).Grid(grid="1-LV-rural2--0-sw")
          agg = world.start("EVAgg", step_size=900, start_date=start, same_step=True).Aggregator(...)
          connect_buses(world, agg, grid)
          op = world.start("Operator", step_size=900, coupling="iterative").Operator(
              grid="1-LV-rural2--0-sw", groups=operator_groups([agg]))
          connect_operator(world, op, grid, [agg], coupling="iterative")

"""
from __future__ import annotations

import copy
import logging
import math
from typing import Any

import mosaik_api_v3
from mosaik_api_v3.types import CreateResult, InputData, OutputData, OutputRequest, SimId, Time

from evagg.simulators.operator import GridOperator, GroupLimit

from .common import TimeGrid, time_grid
from .meta import (
    COUPLINGS,
    KW_PER_MW,
    OPERATOR_MODEL_PARAMS,
    OPERATOR_MODELS,
    build_meta,
    read_outputs,
    read_params,
    same_step_meta,
)

log = logging.getLogger("evagg.plugin")

META = build_meta(OPERATOR_MODELS, "time-based")
_OP = OPERATOR_MODELS["Operator"]
_LIMIT = OPERATOR_MODELS["BusLimit"]
_LIMIT_OUT = _LIMIT.output_attrs
_P_EV = _LIMIT.input_attrs["P_ev[MW]"]
# which grid models may feed which Operator input
_SOURCES = {"Vm[pu]": ("Bus",), "P[MW]": ("Bus",), "loading[%]": ("Line", "Transformer")}
DEFAULT_TOL_MW = 1e-4
DEFAULT_MAX_ITERATIONS = 20
LATER_ROUNDS = ("cuts", "all")  # what the rounds after the first of a step send
_LIMIT_ATTRS = ("P_max[MW]", "P_min[MW]")
# coupling="iterative": the grid's measurements step the operator again at the same time; the limits are events
SAME_STEP_TRIGGERS = {"Operator": list(_SOURCES)}
SAME_STEP_EVENTS = {"BusLimit": list(_LIMIT_ATTRS)}


class _OperatorEntity:
    """One Operator: its model, its BusLimit children and what it measured and decided in the last step."""

    def __init__(self, eid: str, model: GridOperator, children: dict[str, str]):
        self.eid = eid
        self.model = model
        self.children = children  # BusLimit eid -> group id
        self.grid_sid: str | None = None
        self.result: dict[str, GroupLimit] | None = None
        self.vm_min: float | None = None
        self.loading_max: float | None = None
        self.warned_missing = False
        # the same-step loop (coupling "iterative")
        self.sent: dict[str, tuple[float, float]] = {c: (math.inf, -math.inf) for c in children}  # MW, last sent
        self.send: dict[str, tuple[float, float]] = {}  # what get_data sends after this evaluation
        self.iterations = 0  # power flows seen in the current step
        self.capped = 0  # 1 if the loop hit the cap in the current step
        self.capped_steps = 0
        self.model_before: GridOperator | None = None  # the model as it was before the rounds of this time
        self.p_ev_kw: dict[str, float] = {}  # each group's EV power in the last evaluation (kW)

    # the Operator's outputs (their `source` in the META table; None before the first step where so said)
    @property
    def n_limited(self) -> int | None:
        if self.result is None:
            return None
        return sum(1 for r in self.result.values() if r.p_max_kw is not None or r.p_min_kw is not None)

    @property
    def step_iterations(self) -> int | None:
        return None if self.result is None else self.iterations

    @property
    def step_capped(self) -> int | None:
        return None if self.result is None else self.capped


class OperatorSim(mosaik_api_v3.Simulator):
    """Grid operators for mosaik. Simulator params: step_size (default 900), start_date (not
    used; accepted like the other evagg simulators), coupling ("delayed", the default: time-based; "iterative":
    hybrid, for a same-step loop, see the module doc), tol_mw (MW, default 1e-4), max_iterations (power flows
    per step, default 20; >= 1; 1 never sends within the loop) and later_rounds ("cuts" / "all") of the
    iterative coupling."""

    def __init__(self):
        super().__init__(META)
        self.grid: TimeGrid | None = None
        self.operators: dict[str, _OperatorEntity] = {}
        self.limits: dict[str, tuple[str, str]] = {}  # BusLimit eid -> (Operator eid, group id)
        self._stepped = False
        self.coupling = "delayed"
        self.tol_mw = DEFAULT_TOL_MW
        self.max_iterations = DEFAULT_MAX_ITERATIONS
        self.later_rounds = "cuts"
        self._time: Time | None = None  # the mosaik time of the last step

    def init(self, sid: SimId, time_resolution: float = 1.0, step_size: int = 900, start_date: str | None = None,
             coupling: str = "delayed", tol_mw: float = DEFAULT_TOL_MW,
             max_iterations: int = DEFAULT_MAX_ITERATIONS, later_rounds: str = "cuts", **sim_params):
        self.grid = time_grid("OperatorSim", time_resolution, step_size, start_date, sim_params,
                              known=("coupling", "tol_mw", "max_iterations", "later_rounds"))
        if coupling not in COUPLINGS:
            raise ValueError(f"OperatorSim: coupling must be one of {', '.join(COUPLINGS)}, got {coupling!r}")
        try:
            tol = float(tol_mw)
        except (TypeError, ValueError):
            tol = math.nan
        if not (tol >= 0 and math.isfinite(tol)):
            raise ValueError(f"OperatorSim: tol_mw must be a number >= 0 (MW), got {tol_mw!r}")
        if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 1:
            raise ValueError(f"OperatorSim: max_iterations must be a whole number >= 1, got {max_iterations!r}")
        if later_rounds not in LATER_ROUNDS:
            raise ValueError(f"OperatorSim: later_rounds must be one of {', '.join(LATER_ROUNDS)}, got "
                             f"{later_rounds!r}")
        self.coupling, self.tol_mw, self.max_iterations = coupling, tol, max_iterations
        self.later_rounds = later_rounds
        if self.iterative:
            self.meta = same_step_meta(self.meta, SAME_STEP_TRIGGERS, SAME_STEP_EVENTS)
        return self.meta

    @property
    def iterative(self) -> bool:
        return self.coupling == "iterative"

    # --------------------------------------------------------------------------------------------- creation

    def create(self, num: int, model: str, **params: Any) -> list[CreateResult]:
        if model != "Operator":
            raise ValueError(f"OperatorSim: cannot create {model!r}; only 'Operator' (BusLimit entities are its "
                             "children; a PeakShaver is made by evagg.plugin:PeakShaverSim)")
        p = read_params("OperatorSim", model, _OP, params)
        return [self._create_operator(p, params) for _ in range(num)]

    def _create_operator(self, p: dict, given: dict) -> CreateResult:
        n = len(self.operators)
        eid = f"Operator-{n}"
        if p["grid"] is None:
            raise ValueError(f"OperatorSim {eid}: grid is required (the simbench code or pandapower JSON file the "
                             "Grid simulator runs)")
        groups, buses = p["groups"], p["buses"]
        if (groups is None) == (buses is None):
            raise ValueError(f"OperatorSim {eid}: give groups (e.g. operator_groups(aggregators)) or buses, not "
                             f"{'both' if groups is not None else 'neither'}")
        specs = list(groups) if groups is not None else list(buses)
        if not specs:
            raise ValueError(f"OperatorSim {eid}: {'groups' if groups is not None else 'buses'} is empty")
        kw = {k: p[k] for k in OPERATOR_MODEL_PARAMS if p[k] is not None}
        if "v_max" in given and given["v_max"] is None:  # no upper voltage limit (the model's default has one)
            kw["v_max"] = None
        model = GridOperator(p["grid"], specs, **kw)
        children, out_children = {}, []
        for i, g in enumerate(model.groups):
            ceid = f"BusLimit-{n}-{i}"
            children[ceid] = g.id
            self.limits[ceid] = (eid, g.id)
            out_children.append({"eid": ceid, "type": "BusLimit", "rel": [],
                                 "extra_info": {"group": g.id, "bus": g.bus, "operator": eid}})
        self.operators[eid] = _OperatorEntity(eid, model, children)
        info = {"grid": str(p["grid"]), "n_buses": int(model.n_buses), "n_groups": len(model.groups),
                "monitored_branches": len(model.branch_names), "unmonitored_branches": list(model.unmonitored),
                "coupling": self.coupling}
        if self.iterative:
            info.update(tol_mw=self.tol_mw, max_iterations=self.max_iterations, later_rounds=self.later_rounds)
        return {"eid": eid, "type": "Operator", "children": out_children, "rel": [], "extra_info": info}

    # ------------------------------------------------------------------------------------------------ stepping

    def step(self, time: Time, inputs: InputData, max_advance: Time) -> Time:
        k = self.grid.step_index(time)  # an error for a time off the steps
        for eid, data in inputs.items():
            if eid not in self.operators and eid not in self.limits:
                raise ValueError(f"OperatorSim: inputs for an unknown entity {eid!r}")
        again = time == self._time  # iterative: the same time again (the loop's next round)
        self._time = time
        for op in self.operators.values():
            if not again:
                op.iterations, op.capped = 0, 0
            if self.iterative:  # the model's memory (if any) advances once per time: later rounds redo the first
                if again:
                    op.model = copy.deepcopy(op.model_before)
                else:
                    op.model_before = copy.deepcopy(op.model)
            self._step_operator(op, inputs)
            op.iterations += 1
            if self.iterative:
                self._decide(op, time, k)
        self._stepped = True
        return time + self.grid.step_size

    def _decide(self, op: _OperatorEntity, time: Time, k: int) -> None:
        """The iterative coupling: what to send after this evaluation. In the step's first round (every round with
        later_rounds="all") each group's limits as the rule gives them; in later rounds only cuts: a limit below
        the group's present EV power (P_min: above it), the others held. Sent where they moved by more than tol_mw
        from those last sent (what the EVs hold), unless the step has seen max_iterations power flows: then
        nothing (the loop ends; the step is counted as capped)."""
        every = op.iterations == 1 or self.later_rounds == "all"
        changed = {}
        for ceid, gid in op.children.items():
            lim = op.result[gid]
            old = op.sent[ceid]
            new = (math.inf if lim.p_max_kw is None else lim.p_max_kw / KW_PER_MW,
                   -math.inf if lim.p_min_kw is None else lim.p_min_kw / KW_PER_MW)
            if not every:
                p = op.p_ev_kw[gid] / KW_PER_MW
                new = (new[0] if new[0] < min(old[0], p - self.tol_mw) else old[0],
                       new[1] if new[1] > max(old[1], p + self.tol_mw) else old[1])
            if _moved(new[0], old[0], self.tol_mw) or _moved(new[1], old[1], self.tol_mw):
                changed[ceid] = new
        op.send = {}
        if not changed:
            return
        if op.iterations >= self.max_iterations:
            if not op.capped:
                op.capped = 1
                op.capped_steps += 1
                if op.capped_steps == 1:
                    worst = max(abs(a - b) if math.isfinite(a - b) else math.inf
                                for c, v in changed.items() for a, b in zip(v, op.sent[c]) if a != b)
                    log.warning("OperatorSim %s: the same-step loop hit max_iterations=%d at time %s (step %d) with "
                                "%d group limit(s) still moving (by up to %.3g MW > tol_mw %.3g): the last limits "
                                "sent are kept (capped steps are counted in the output capped_steps; logged once)",
                                op.eid, self.max_iterations, time, k, len(changed), worst, self.tol_mw)
            return
        op.send = changed
        op.sent.update(changed)

    def _step_operator(self, op: _OperatorEntity, inputs: InputData) -> None:
        data = inputs.get(op.eid, {})
        unknown = set(data) - set(_SOURCES)
        if unknown:
            raise ValueError(f"OperatorSim {op.eid}: unexpected input(s) {sorted(unknown)}")
        meas: dict[str, dict[int, float]] = {"vm_pu": {}, "p_bus_mw": {}, "line_loading_pct": {},
                                             "trafo_loading_pct": {}}
        for attr, by_source in data.items():
            for src, value in by_source.items():
                sid, model, idx = _split_source(op.eid, src)
                if model not in _SOURCES[attr]:
                    raise ValueError(f"OperatorSim {op.eid}: {attr} from {src}: expected it from a grid "
                                     f"{' or '.join(_SOURCES[attr])}, not a {model}")
                if op.grid_sid is None:
                    op.grid_sid = sid
                elif sid != op.grid_sid:
                    raise ValueError(f"OperatorSim {op.eid}: measurements from two simulators ({op.grid_sid} and "
                                     f"{sid}); an Operator watches one grid")
                if value is None:
                    continue
                key = ("vm_pu" if attr == "Vm[pu]" else "p_bus_mw" if attr == "P[MW]" else
                       "line_loading_pct" if model == "Line" else "trafo_loading_pct")
                meas[key][idx] = float(value)
        p_ev: dict[str, float] = {}
        missing = []
        for ceid, gid in op.children.items():
            kw = _P_EV.from_mosaik(inputs.get(ceid, {}).get("P_ev[MW]", {}).values())
            if kw is None:
                missing.append(gid)
                kw = 0.0
            p_ev[gid] = kw
        if missing and not op.warned_missing:
            log.warning("OperatorSim %s: no EV power (P_ev[MW]) for group(s) %s: taken as 0 (logged once)", op.eid,
                        ", ".join(missing[:5]))
            op.warned_missing = True
        op.p_ev_kw = p_ev
        try:
            op.result = op.model.limits(p_ev, **meas)
        except ValueError as exc:
            raise ValueError(f"OperatorSim {op.eid}: {exc}") from None
        op.vm_min = min(meas["vm_pu"].values()) if meas["vm_pu"] else None
        loads = list(meas["line_loading_pct"].values()) + list(meas["trafo_loading_pct"].values())
        op.loading_max = max(loads) if loads else None

    def get_data(self, outputs: OutputRequest) -> OutputData:
        data: OutputData = {}
        for eid, attrs in outputs.items():
            if eid in self.limits:
                op_eid, gid = self.limits[eid]
                res = self.operators[op_eid].result
                lim = None if res is None else res[gid]
                values = {}
                op = self.operators[op_eid]
                for a in attrs:
                    if a not in _LIMIT_OUT:
                        raise ValueError(f"OperatorSim: {eid} has no output {a!r}")
                    if self.iterative and a in _LIMIT_ATTRS:  # events: only limits that moved, +-inf for none
                        if eid in op.send:
                            values[a] = op.send[eid][_LIMIT_ATTRS.index(a)]
                    elif a == "binding":
                        values[a] = None if lim is None else lim.binding
                    elif lim is None:
                        values[a] = None
                    else:
                        values[a] = _LIMIT_OUT[a].to_mosaik(lim.p_max_kw if a == "P_max[MW]" else lim.p_min_kw)
                data[eid] = values
            elif eid in self.operators:
                data[eid] = read_outputs("OperatorSim", eid, _OP, attrs, self.operators[eid])
            else:
                raise ValueError(f"OperatorSim: no entity {eid!r}")
        return data


def _moved(new: float, old: float, tol: float) -> bool:
    """A limit (MW; +-inf: none) moved by more than tol."""
    if new == old:
        return False
    return not abs(new - old) <= tol  # inf - finite, or inf - (-inf): moved


def _split_source(eid: str, src: str) -> tuple[str, str, int]:
    """'Grid-0.Bus-12' -> ('Grid-0', 'Bus', 12)."""
    sid, _, tail = src.rpartition(".")
    model, _, idx = tail.rpartition("-")
    try:
        return sid, model, int(idx)
    except ValueError:
        raise ValueError(f"OperatorSim {eid}: an input from {src!r}, which is not a grid element "
                         "(<sid>.Bus-<index>, .Line-<index> or .Transformer-<index>)") from None
