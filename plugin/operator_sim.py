"""OperatorSim: grid-aware services for EV aggregators (models `Operator` with children `BusLimit`, `PeakShaver`).

Thin by design: units (MW <-> kW), entities and time; the models are `evagg.simulators.operator.GridOperator` and
`evagg.simulators.peak_shaving.PeakShaver`. sim_config entry: ``{"python": "evagg.plugin:OperatorSim"}``.

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

PeakShaver: ``target`` (MW, or "auto" with ``initial`` MW for the first day), ``share``, ``forecast_steps``,
``forecast`` ("persistence" / "daily"); inputs ``P_feeder[MW]`` (a Transformer's P_hv[MW] or the ExternalGrid's
P[MW]) and ``P_fleet[MW]`` (the aggregators' P[MW], summed); outputs ``P_ref[MW]``, ``P_forecast[MW]``, ``P_base[MW]``,
``target[MW]``; `connect_peak_shaver` wires it (reference time-shifted into the aggregator, in both couplings: the
aggregator's P_ref[MW] is no trigger; in an iterative OperatorSim a shaver stepped again at the same time rolls
back and steps again, so that it takes the feeder's settled state).
"""
from __future__ import annotations

import copy
import logging
import math
from typing import Any, Iterable

import mosaik_api_v3
from mosaik_api_v3.types import CreateResult, InputData, OutputData, OutputRequest, SimId, Time

from evagg.simulators.operator import GridOperator, GroupLimit
from evagg.simulators.peak_shaving import PeakShaver

from .common import TimeGrid, check_params
from .meta import KW_PER_MW, OPERATOR_MODELS, build_meta, same_step_meta

log = logging.getLogger("evagg.plugin")

META = build_meta(OPERATOR_MODELS, "time-based")
_OP = OPERATOR_MODELS["Operator"]
_LIMIT = OPERATOR_MODELS["BusLimit"]
_SHAVER = OPERATOR_MODELS["PeakShaver"]
_LIMIT_OUT = _LIMIT.output_attrs
_SHAVER_IN = _SHAVER.input_attrs
_SHAVER_OUT = _SHAVER.output_attrs
_P_EV = _LIMIT.input_attrs["P_ev[MW]"]
_OP_KW = ("v_min", "v_max", "v_margin", "loading_max", "loading_margin", "gain", "min_share", "release_kw",
          "room_share", "idle_kw", "capability", "memory", "rated_kw")
# which grid models may feed which Operator input
_SOURCES = {"Vm[pu]": ("Bus",), "P[MW]": ("Bus",), "loading[%]": ("Line", "Transformer")}
# a group's EV power rated per session by operator_groups, kW (a generous charger: a limit above it is no limit)
P_SESSION_KW = 22.0
COUPLINGS = ("delayed", "iterative")
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


class OperatorSim(mosaik_api_v3.Simulator):
    """Grid operators and peak shavers for mosaik. Simulator params: step_size (default 900), start_date (not
    used; accepted like the other evagg simulators), coupling ("delayed", the default: time-based; "iterative":
    hybrid, for a same-step loop, see the module doc), tol_mw (MW, default 1e-4), max_iterations (power flows
    per step, default 20; >= 1; 1 never sends within the loop) and later_rounds ("cuts" / "all") of the
    iterative coupling."""

    def __init__(self):
        super().__init__(META)
        self.grid: TimeGrid | None = None
        self.operators: dict[str, _OperatorEntity] = {}
        self.limits: dict[str, tuple[str, str]] = {}  # BusLimit eid -> (Operator eid, group id)
        self.shavers: dict[str, PeakShaver] = {}
        self._stepped = False
        self.coupling = "delayed"
        self.tol_mw = DEFAULT_TOL_MW
        self.max_iterations = DEFAULT_MAX_ITERATIONS
        self.later_rounds = "cuts"
        self._time: Time | None = None  # the mosaik time of the last step
        self._shavers_before: dict[str, PeakShaver] = {}  # iterative: each shaver as it was before this time

    def init(self, sid: SimId, time_resolution: float = 1.0, step_size: int = 900, start_date: str | None = None,
             coupling: str = "delayed", tol_mw: float = DEFAULT_TOL_MW,
             max_iterations: int = DEFAULT_MAX_ITERATIONS, later_rounds: str = "cuts", **sim_params):
        if sim_params:
            raise ValueError(f"OperatorSim: unknown simulator parameter(s) {', '.join(sorted(sim_params))}; "
                             "known: step_size, start_date, coupling, tol_mw, max_iterations, later_rounds")
        self.grid = TimeGrid("OperatorSim", time_resolution, step_size, start_date)
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
        if model == "Operator":
            check_params("OperatorSim", model, params, _OP.params)
            return [self._create_operator(params) for _ in range(num)]
        if model == "PeakShaver":
            check_params("OperatorSim", model, params, _SHAVER.params)
            return [self._create_shaver(params) for _ in range(num)]
        raise ValueError(f"OperatorSim: cannot create {model!r}; only 'Operator' (BusLimit entities are its "
                         "children) or 'PeakShaver'")

    def _create_operator(self, p: dict) -> CreateResult:
        n = len(self.operators)
        eid = f"Operator-{n}"
        if p.get("grid") is None:
            raise ValueError(f"OperatorSim {eid}: grid is required (the simbench code or pandapower JSON file the "
                             "Grid simulator runs)")
        groups, buses = p.get("groups"), p.get("buses")
        if (groups is None) == (buses is None):
            raise ValueError(f"OperatorSim {eid}: give groups (e.g. operator_groups(aggregators)) or buses, not "
                             f"{'both' if groups is not None else 'neither'}")
        specs = list(groups) if groups is not None else list(buses)
        if not specs:
            raise ValueError(f"OperatorSim {eid}: {'groups' if groups is not None else 'buses'} is empty")
        if buses is not None and not all(isinstance(b, int) and not isinstance(b, bool) for b in specs):
            raise ValueError(f"OperatorSim {eid}: buses must be bus indices (int), got {buses!r}")
        kw = {k: p[k] for k in _OP_KW if p.get(k) is not None}
        if "v_max" in p and p["v_max"] is None:
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

    def _create_shaver(self, p: dict) -> CreateResult:
        eid = f"PeakShaver-{len(self.shavers)}"
        if p.get("target") is None:
            raise ValueError(f"OperatorSim {eid}: target is required (MW, or 'auto')")
        target = p["target"]
        if not isinstance(target, str):
            try:
                target = float(target) * KW_PER_MW
            except (TypeError, ValueError):
                raise ValueError(f"OperatorSim {eid}: target must be a number (MW) or 'auto', got {target!r}") from None
        initial = p.get("initial")
        if initial is not None:
            try:
                initial = float(initial) * KW_PER_MW
            except (TypeError, ValueError):
                raise ValueError(f"OperatorSim {eid}: initial must be a number (MW), got {initial!r}") from None
        try:
            shaver = PeakShaver(target, share=1.0 if p.get("share") is None else p["share"],
                                forecast_steps=p.get("forecast_steps") or 0,
                                forecast=p.get("forecast") or "persistence", step_s=self.grid.step_s,
                                initial_kw=initial)
        except ValueError as exc:
            raise ValueError(f"OperatorSim {eid}: {exc}") from None
        self.shavers[eid] = shaver
        return {"eid": eid, "type": "PeakShaver", "rel": [],
                "extra_info": {"target": p["target"], "share": shaver.share, "forecast_steps": shaver.forecast_steps,
                               "forecast": shaver.forecast}}

    # ------------------------------------------------------------------------------------------------ stepping

    def step(self, time: Time, inputs: InputData, max_advance: Time) -> Time:
        k = self.grid.step_index(time)  # an error for a time off the steps
        for eid, data in inputs.items():
            if eid not in self.operators and eid not in self.limits and eid not in self.shavers:
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
        if self.iterative:  # a shaver steps once per time: again, from where it was before this time
            for eid in self.shavers:
                if again:
                    self.shavers[eid] = copy.deepcopy(self._shavers_before[eid])
                else:
                    self._shavers_before[eid] = copy.deepcopy(self.shavers[eid])
        for eid, shaver in self.shavers.items():
            data = inputs.get(eid, {})
            unknown = set(data) - set(_SHAVER_IN)
            if unknown:
                raise ValueError(f"OperatorSim {eid}: unexpected input(s) {sorted(unknown)}")
            v = {name: attr.from_mosaik(data.get(name, {}).values()) for name, attr in _SHAVER_IN.items()}
            shaver.step(v["P_feeder[MW]"], v["P_fleet[MW]"])
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
                op = self.operators[eid]
                values = {}
                for a in attrs:
                    if a == "n_limited":
                        values[a] = None if op.result is None else sum(
                            1 for r in op.result.values() if r.p_max_kw is not None or r.p_min_kw is not None)
                    elif a == "Vm_min[pu]":
                        values[a] = op.vm_min
                    elif a == "loading_max[%]":
                        values[a] = op.loading_max
                    elif a == "iterations":
                        values[a] = None if op.result is None else op.iterations
                    elif a == "capped":
                        values[a] = None if op.result is None else op.capped
                    elif a == "capped_steps":
                        values[a] = op.capped_steps
                    else:
                        raise ValueError(f"OperatorSim: {eid} has no output {a!r}")
                data[eid] = values
            elif eid in self.shavers:
                last = self.shavers[eid].last
                values = {}
                for a in attrs:
                    spec = _SHAVER_OUT.get(a)
                    if spec is None:
                        raise ValueError(f"OperatorSim: {eid} has no output {a!r}")
                    values[a] = None if last is None else spec.to_mosaik(getattr(last, spec.source))
                data[eid] = values
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


# ------------------------------------------------------------------------------------------------- wiring


def _as_list(entities) -> list:
    if entities is None:
        return []
    if hasattr(entities, "children") and hasattr(entities, "eid"):
        return [entities]
    return list(entities)


def operator_groups(aggregators: Iterable, p_session_kw: float = P_SESSION_KW) -> list[dict]:
    """The Operator's `groups` for the EVBus children of `aggregators` (Aggregator entities): id = the EVBus's full
    id, its bus, weight = its sessions (at least 1: the room is shared by sessions), p_rated_kw = sessions x
    `p_session_kw` (a limit above what its EVs could draw is no limit)."""
    out = []
    for agg in _as_list(aggregators):
        for child in agg.children:
            if child.type != "EVBus":
                continue
            info = child.extra_info or {}
            n = int(info.get("n_sessions", 0) or 0)
            out.append({"id": child.full_id, "bus": int(info["bus"]), "weight": float(max(n, 1)),
                        "p_rated_kw": n * float(p_session_kw) if "n_sessions" in info else None})
    if not out:
        raise ValueError("operator_groups: the aggregators have no EVBus children")
    return out


def connect_operator(world: Any, operator: Any, grid: Any, aggregators: Iterable, *, coupling: str = "delayed",
                     time_shifted: bool | None = None, measure_p: bool = True) -> dict[str, Any]:
    """Wire an Operator: the grid's buses (Vm[pu], and P[MW] if measure_p), lines and transformers (loading[%])
    -> the Operator; each EVBus child of `aggregators` P[MW] -> its BusLimit's P_ev[MW]; each BusLimit's P_max[MW]
    and P_min[MW] -> its EVBus:

    - coupling="delayed" (default): time-shifted (`time_shifted`, default True; initial data +inf / -inf: no limit
      in the first step; the BusLimit's own "no limit" is None): the limits hold from the next step.
    - coupling="iterative": weak connections closing a same-step loop. The grid, the aggregators and the operator
      must have been started inside one ``with world.group():``, the grid and the aggregators with
      ``same_step=True``, the OperatorSim with ``coupling="iterative"`` (each is checked: ValueError otherwise).

    A BusLimit is matched to an EVBus by its group id (the EVBus's full id, as operator_groups makes them) or, for
    an Operator made from buses, by bus. ValueError (nothing connected) for an EVBus without a BusLimit, a BusLimit
    fed by two EVBus or by none, or a grid that is not the Operator's. Returns {EVBus full id: BusLimit entity}."""
    if coupling not in COUPLINGS:
        raise ValueError(f"connect_operator: coupling must be one of {', '.join(COUPLINGS)}, got {coupling!r}")
    if coupling == "iterative" and time_shifted:
        raise ValueError("connect_operator: coupling='iterative' closes the loop within the step (weak "
                         "connections); time_shifted is for coupling='delayed'")
    limits = [c for c in operator.children if c.type == "BusLimit"]
    if operator.type != "Operator" or not limits:
        raise ValueError(f"connect_operator: {operator.full_id} is not an Operator with BusLimit children")
    by_id = {c.extra_info["group"]: c for c in limits}
    evbuses = [c for agg in _as_list(aggregators) for c in agg.children if c.type == "EVBus"]
    if not evbuses:
        raise ValueError("connect_operator: the aggregators have no EVBus children")
    pairs, problems, used = [], [], {}
    for ev in evbuses:
        lim = by_id.get(ev.full_id) or by_id.get(f"bus-{int(ev.extra_info['bus'])}")
        if lim is None:
            problems.append(f"{ev.full_id} (bus {ev.extra_info['bus']}) has no BusLimit (create the Operator with "
                            f"groups=operator_groups(aggregators))")
            continue
        if lim.eid in used:
            problems.append(f"{lim.full_id} (group {lim.extra_info['group']}) would limit both {used[lim.eid]} and "
                            f"{ev.full_id}: give each its own group (operator_groups)")
            continue
        used[lim.eid] = ev.full_id
        pairs.append((ev, lim))
    unfed = [c.extra_info["group"] for c in limits if c.eid not in used]
    if unfed:
        problems.append(f"BusLimit group(s) {unfed[:5]} of {operator.full_id} match no EVBus of the aggregators")
    grid_children = {c.eid: c for c in grid.children}
    buses = [c for c in grid.children if c.type == "Bus"]
    n_buses = (operator.extra_info or {}).get("n_buses")
    if n_buses is not None and n_buses != len(buses):
        problems.append(f"the grid {grid.full_id} has {len(buses)} buses, the Operator's grid "
                        f"{operator.extra_info.get('grid')} {n_buses}: the Operator must be made from the same grid")
    for ev, lim in pairs:
        if int(lim.extra_info["bus"]) != int(ev.extra_info["bus"]):
            problems.append(f"{lim.full_id} is for bus {lim.extra_info['bus']}, {ev.full_id} at bus "
                            f"{ev.extra_info['bus']}")
        if f"Bus-{int(ev.extra_info['bus'])}" not in grid_children:
            problems.append(f"{ev.full_id} is at bus {ev.extra_info['bus']}, which the grid {grid.full_id} lacks")
    for ev, _ in pairs[:1]:
        if "P_max[MW]" not in ev.model_mock.input_attrs:
            problems.append(f"the EVBus model of {ev.sid} takes no P_max[MW] input: its AggregatorSim does not "
                            "accept bus limits")
    if not problems:
        problems += _coupling_problems(world, coupling, operator, grid, [ev for ev, _ in pairs])
    if problems:
        raise ValueError("connect_operator: " + "; ".join(problems))

    for c in grid.children:
        if c.type == "Bus":
            world.connect(c, operator, "Vm[pu]", *(["P[MW]"] if measure_p else []))
        elif c.type in ("Line", "Transformer"):
            world.connect(c, operator, "loading[%]")
    if coupling == "iterative":
        # trigger inputs: no initial data (no limit until the first ones are sent); limit_by is not a trigger
        shift = {"weak": True, "initial_data": {"binding": ""}}
    else:
        time_shifted = True if time_shifted is None else time_shifted
        shift = {"time_shifted": time_shifted}
        if time_shifted:  # no limit in the first step (None would leave mosaik without a value to pull, and warn)
            shift["initial_data"] = {"P_max[MW]": math.inf, "P_min[MW]": -math.inf, "binding": ""}
    out = {}
    for ev, lim in pairs:
        world.connect(ev, lim, ("P[MW]", "P_ev[MW]"))
        # with what set the limit, so that the aggregator pools the limits one branch set (see the EVBus model),
        # where its EVBus model takes it
        by = [("binding", "limit_by")] if "limit_by" in ev.model_mock.input_attrs else []
        kw = dict(shift, initial_data={k: v for k, v in shift.get("initial_data", {}).items()
                                       if k != "binding" or by})
        if not kw["initial_data"]:
            kw.pop("initial_data")
        world.connect(lim, ev, "P_max[MW]", "P_min[MW]", *by, **kw)
        out[ev.full_id] = lim
    return out


def _group_of(entity: Any):
    """The mosaik group (SimGroup) `entity`'s simulator was started in; None if this mosaik does not tell."""
    mock = getattr(entity, "model_mock", None)
    mock = getattr(mock, "_async_model_mock", mock)
    return getattr(getattr(mock, "_factory", None), "_group", None)


def _coupling_problems(world: Any, coupling: str, operator: Any, grid: Any, evbuses: list) -> list[str]:
    """What keeps the simulators from the `coupling` (each named with the remedy)."""
    problems = []
    op_coupling = (operator.extra_info or {}).get("coupling", "delayed")
    bus = next((c for c in grid.children if c.type == "Bus"), None)
    ev_triggered = [ev for ev in evbuses if ev.triggered_by("P_max[MW]")]
    if coupling == "delayed":
        if op_coupling != "delayed":
            problems.append(f"the OperatorSim {operator.sid} was started with coupling={op_coupling!r}: start it "
                            "without (delayed) or connect with coupling='iterative'")
        if ev_triggered:
            problems.append(f"the AggregatorSim {ev_triggered[0].sid} was started with same_step=True (its limits "
                            "are triggers): start it without for coupling='delayed', or use coupling='iterative'")
        return problems
    if op_coupling != "iterative":
        problems.append(f"coupling='iterative' needs the OperatorSim started with coupling='iterative' "
                        f"(world.start(..., coupling='iterative')); {operator.sid} has {op_coupling!r}")
    if len(ev_triggered) != len(evbuses):
        sids = sorted({ev.sid for ev in evbuses if ev not in ev_triggered})
        problems.append(f"coupling='iterative' needs the AggregatorSim(s) {', '.join(sids)} started with "
                        "same_step=True (world.start(..., same_step=True))")
    if bus is None or not bus.triggered_by("P_load[MW]"):
        problems.append(f"coupling='iterative' needs the grid {grid.full_id} started with same_step=True "
                        "(world.start('Grid', ..., same_step=True); an evagg SimbenchGridSim)")
    groups = {ent.sid: _group_of(ent) for ent in (grid, operator, *evbuses)}
    if all(g is not None for g in groups.values()):
        first = groups[grid.sid]
        if any(g is not first for g in groups.values()) or getattr(first, "parent", None) is None:
            where = ", ".join(f"{sid} in {'the main group' if getattr(g, 'parent', None) is None else 'a group'}"
                              for sid, g in groups.items())
            problems.append("coupling='iterative' needs the grid, the aggregators and the operator started inside "
                            f"one `with world.group():` (mosaik closes same-step loops only within a group); {where}")
    cap = (operator.extra_info or {}).get("max_iterations")
    limit = getattr(world, "max_loop_iterations", None)
    if limit is None:
        limit = getattr(getattr(world, "_async_world", None), "max_loop_iterations", None)
    if cap is not None and isinstance(limit, int) and cap > limit:
        problems.append(f"the operator's max_iterations ({cap}) is above the world's max_loop_iterations ({limit}): "
                        "mosaik would stop the run first; give mosaik.World(..., max_loop_iterations=...) more")
    return problems


def connect_peak_shaver(world: Any, shaver: Any, feeder: Any, aggregator: Any, fleet: Iterable | None = None, *,
                        time_shifted=True, initial_ref: float | None = 0.0) -> None:
    """Wire a PeakShaver: `feeder` (a Transformer: P_hv[MW]; an ExternalGrid: P[MW]) -> P_feeder[MW]; the P[MW]
    of `fleet` (the aggregators on the feeder; default [aggregator]) -> P_fleet[MW]; P_ref[MW] (and P_forecast[MW]
    if forecast_steps > 0) -> `aggregator`, time-shifted by default. In the first step, before any measurement,
    the aggregator gets `initial_ref` (MW; default 0: the fleet idles) and an empty forecast; None sends no
    reference (mosaik 3.6 then warns that it supplies None). Always delayed, also next to an iterative operator
    (the aggregator's P_ref[MW] is no trigger: a reference acts from the next step)."""
    attr = {"Transformer": "P_hv[MW]", "ExternalGrid": "P[MW]"}.get(feeder.type)
    if attr is None:
        raise ValueError(f"connect_peak_shaver: the feeder must be a Transformer or an ExternalGrid, got a "
                         f"{feeder.type} ({feeder.full_id})")
    if shaver.type != "PeakShaver":
        raise ValueError(f"connect_peak_shaver: {shaver.full_id} is not a PeakShaver")
    world.connect(feeder, shaver, (attr, "P_feeder[MW]"))
    for agg in _as_list(fleet) or [aggregator]:
        world.connect(agg, shaver, ("P[MW]", "P_fleet[MW]"))
    attrs = ["P_ref[MW]"] + (["P_forecast[MW]"] if (shaver.extra_info or {}).get("forecast_steps") else [])
    kw = {"time_shifted": time_shifted}
    if time_shifted:
        kw["initial_data"] = {"P_ref[MW]": None if initial_ref is None else float(initial_ref), "P_forecast[MW]": []}
        kw["initial_data"] = {a: kw["initial_data"][a] for a in attrs}
    world.connect(shaver, aggregator, *attrs, **kw)
