"""Wiring evagg's simulators into a mosaik world: aggregators to a mosaik-pandapower-2 grid, bus by bus
(`connect_buses`); a grid operator between the grid and the aggregators (`operator_groups`, `connect_operator`,
delayed or iterative); a peak shaver between the feeder and an aggregator (`connect_peak_shaver`). Each checks
what it is given and connects nothing on an error (a ValueError naming the remedy).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from evagg.simulators.times import to_datetime64

from .meta import COUPLINGS

# a group's EV power rated per session by operator_groups, kW (a generous charger: a limit above it is no limit)
P_SESSION_KW = 22.0


def connect_buses(world: Any, aggregator: Any, grid: Any, attr: str = "P_load[MW]") -> dict[int, Any]:
    """Connect each EVBus child of `aggregator` (P[MW]) to the `attr` input of the grid's Bus child of the same
    index (`grid`: the Grid entity of mosaik-pandapower-2, whose children are Bus-<index>). Nothing is connected
    if a bus is missing (a ValueError names the missing buses) or if the two start at different times (the
    aggregator's extra_info "start", and the grid's where it gives one: SimbenchGridSim). Returns {bus index: grid Bus entity}."""
    grid_buses = {child.eid: child for child in grid.children if child.type == "Bus"}
    ev_buses = [child for child in aggregator.children if child.type == "EVBus"]
    missing = sorted({int(c.extra_info["bus"]) for c in ev_buses} - {int(e.split("-", 1)[1]) for e in grid_buses})
    if missing:
        raise ValueError(f"{aggregator.full_id} has EVs at bus(es) {missing}, which the grid {grid.full_id} does not "
                         f"have (it has {len(grid_buses)} buses)")
    agg_start, grid_start = (aggregator.extra_info or {}).get("start"), (grid.extra_info or {}).get("start")
    if agg_start is not None and grid_start is not None and to_datetime64(agg_start) != to_datetime64(grid_start):
        raise ValueError(f"{aggregator.full_id} starts at {agg_start}, the grid {grid.full_id} at {grid_start}: "
                         "mosaik time 0 must be the same time for both (give both simulators the same start_date), "
                         "else the EVs and the grid's profiles are at different dates")
    out = {}
    for child in ev_buses:
        bus = int(child.extra_info["bus"])
        target = grid_buses[f"Bus-{bus}"]
        world.connect(child, target, ("P[MW]", attr))
        out[bus] = target
    return out


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
