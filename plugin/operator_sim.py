"""OperatorSim: grid-aware services for EV aggregators (models `Operator` with children `BusLimit`, `PeakShaver`).

Thin by design: units (MW <-> kW), entities and time; the models are `evagg.simulators.operator.GridOperator` and
`evagg.simulators.peak_shaving.PeakShaver`. sim_config entry: ``{"python": "evagg.plugin:OperatorSim"}``.

Operator: built from the grid (``grid=``: the simbench code or pandapower JSON file the Grid simulator runs) and the
controlled groups (``groups=operator_groups(aggregators)``: one per EVBus child of the aggregators, or
``buses=[...]`` for one aggregator). Its inputs, on the Operator entity, come from the grid's children and are
told apart by their source's entity id (``<grid sid>.Bus-<index>``, ``.Line-<index>``, ``.Transformer-<index>``):
``Vm[pu]`` and ``P[MW]`` from each Bus, ``loading[%]`` from each Line and Transformer (evagg's SimbenchGridSim has
Transformer children). Each `BusLimit` child takes its group's ``P_ev[MW]`` (the EVBus's P[MW]) and gives
``P_max[MW]`` / ``P_min[MW]`` (None: no limit) and ``binding``, to connect to the EVBus, time-shifted (the grid is
solved with the EVs' power of the step: the limits hold from the next step). `connect_operator` wires it all:

    op = world.start("Operator", step_size=900).Operator(grid="1-LV-rural2--0-sw", groups=operator_groups([agg]))
    connect_operator(world, op, grid, [agg])

PeakShaver: ``target`` (MW, or "auto" with ``initial`` MW for the first day), ``share``, ``forecast_steps``,
``forecast`` ("persistence" / "daily"); inputs ``P_feeder[MW]`` (a Transformer's P_hv[MW] or the ExternalGrid's
P[MW]) and ``P_fleet[MW]`` (the aggregators' P[MW], summed); outputs ``P_ref[MW]``, ``P_forecast[MW]``, ``P_base[MW]``,
``target[MW]``; `connect_peak_shaver` wires it (reference time-shifted into the aggregator).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Iterable

import mosaik_api_v3
from mosaik_api_v3.types import CreateResult, InputData, OutputData, OutputRequest, SimId, Time

from evagg.simulators.operator import GridOperator, GroupLimit
from evagg.simulators.peak_shaving import PeakShaver

from .common import TimeGrid, check_params
from .meta import KW_PER_MW, OPERATOR_MODELS, build_meta

log = logging.getLogger("evagg.plugin")

META = build_meta(OPERATOR_MODELS, "time-based")
_OP = OPERATOR_MODELS["Operator"]
_LIMIT = OPERATOR_MODELS["BusLimit"]
_SHAVER = OPERATOR_MODELS["PeakShaver"]
_LIMIT_OUT = _LIMIT.output_attrs
_SHAVER_IN = _SHAVER.input_attrs
_SHAVER_OUT = _SHAVER.output_attrs
_P_EV = _LIMIT.input_attrs["P_ev[MW]"]
_OP_KW = ("v_min", "v_max", "v_margin", "loading_max", "loading_margin", "gain", "coupling", "release_kw",
          "room_share", "idle_kw")
# which grid models may feed which Operator input
_SOURCES = {"Vm[pu]": ("Bus",), "P[MW]": ("Bus",), "loading[%]": ("Line", "Transformer")}
# a group's EV power rated per session by operator_groups, kW (a generous charger: a limit above it is no limit)
P_SESSION_KW = 22.0


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


class OperatorSim(mosaik_api_v3.Simulator):
    """Grid operators and peak shavers for mosaik. Simulator params: step_size (default 900), start_date (not
    used; accepted like the other evagg simulators)."""

    def __init__(self):
        super().__init__(META)
        self.grid: TimeGrid | None = None
        self.operators: dict[str, _OperatorEntity] = {}
        self.limits: dict[str, tuple[str, str]] = {}  # BusLimit eid -> (Operator eid, group id)
        self.shavers: dict[str, PeakShaver] = {}
        self._stepped = False

    def init(self, sid: SimId, time_resolution: float = 1.0, step_size: int = 900, start_date: str | None = None,
             **sim_params):
        if sim_params:
            raise ValueError(f"OperatorSim: unknown simulator parameter(s) {', '.join(sorted(sim_params))}; "
                             "known: step_size, start_date")
        self.grid = TimeGrid("OperatorSim", time_resolution, step_size, start_date)
        return self.meta

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
                "monitored_branches": len(model.branch_names), "unmonitored_branches": list(model.unmonitored)}
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
        self.grid.step_index(time)  # an error for a time off the steps
        for eid, data in inputs.items():
            if eid not in self.operators and eid not in self.limits and eid not in self.shavers:
                raise ValueError(f"OperatorSim: inputs for an unknown entity {eid!r}")
        for op in self.operators.values():
            self._step_operator(op, inputs)
        for eid, shaver in self.shavers.items():
            data = inputs.get(eid, {})
            unknown = set(data) - set(_SHAVER_IN)
            if unknown:
                raise ValueError(f"OperatorSim {eid}: unexpected input(s) {sorted(unknown)}")
            v = {name: attr.from_mosaik(data.get(name, {}).values()) for name, attr in _SHAVER_IN.items()}
            shaver.step(v["P_feeder[MW]"], v["P_fleet[MW]"])
        self._stepped = True
        return time + self.grid.step_size

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
                for a in attrs:
                    if a not in _LIMIT_OUT:
                        raise ValueError(f"OperatorSim: {eid} has no output {a!r}")
                    if a == "binding":
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


def connect_operator(world: Any, operator: Any, grid: Any, aggregators: Iterable, *, time_shifted=True,
                     measure_p: bool = True) -> dict[str, Any]:
    """Wire an Operator: the grid's buses (Vm[pu], and P[MW] if measure_p), lines and transformers (loading[%])
    -> the Operator; each EVBus child of `aggregators` P[MW] -> its BusLimit's P_ev[MW]; each BusLimit's P_max[MW]
    and P_min[MW] -> its EVBus, time-shifted by default (initial data +inf / -inf: no limit in the first step; the
    BusLimit's own "no limit" is None).

    A BusLimit is matched to an EVBus by its group id (the EVBus's full id, as operator_groups makes them) or, for
    an Operator made from buses, by bus. ValueError (nothing connected) for an EVBus without a BusLimit, a BusLimit
    fed by two EVBus or by none, or a grid that is not the Operator's. Returns {EVBus full id: BusLimit entity}."""
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
    if problems:
        raise ValueError("connect_operator: " + "; ".join(problems))

    for c in grid.children:
        if c.type == "Bus":
            world.connect(c, operator, "Vm[pu]", *(["P[MW]"] if measure_p else []))
        elif c.type in ("Line", "Transformer"):
            world.connect(c, operator, "loading[%]")
    shift = {"time_shifted": time_shifted}
    if time_shifted:  # no limit in the first step (None would leave mosaik without a value to pull, and warn)
        shift["initial_data"] = {"P_max[MW]": math.inf, "P_min[MW]": -math.inf}
    out = {}
    for ev, lim in pairs:
        world.connect(ev, lim, ("P[MW]", "P_ev[MW]"))
        world.connect(lim, ev, "P_max[MW]", "P_min[MW]", **shift)
        out[ev.full_id] = lim
    return out


def connect_peak_shaver(world: Any, shaver: Any, feeder: Any, aggregator: Any, fleet: Iterable | None = None, *,
                        time_shifted=True, initial_ref: float | None = 0.0) -> None:
    """Wire a PeakShaver: `feeder` (a Transformer: P_hv[MW]; an ExternalGrid: P[MW]) -> P_feeder[MW]; the P[MW]
    of `fleet` (the aggregators on the feeder; default [aggregator]) -> P_fleet[MW]; P_ref[MW] (and P_forecast[MW]
    if forecast_steps > 0) -> `aggregator`, time-shifted by default. In the first step, before any measurement,
    the aggregator gets `initial_ref` (MW; default 0: the fleet idles) and an empty forecast; None sends no
    reference (mosaik 3.6 then warns that it supplies None)."""
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
