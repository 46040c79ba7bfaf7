"""Connecting aggregators to a mosaik-pandapower-2 grid, bus by bus, with a clear error for a bus it lacks."""
from __future__ import annotations

from typing import Any


def connect_buses(world: Any, aggregator: Any, grid: Any, attr: str = "P_load[MW]") -> dict[int, Any]:
    """Connect each EVBus child of `aggregator` (P[MW]) to the `attr` input of the grid's Bus child of the same
    index (`grid`: the Grid entity of mosaik-pandapower-2, whose children are Bus-<index>). Nothing is connected
    if a bus is missing: a ValueError names the missing buses. Returns {bus index: grid Bus entity}."""
    grid_buses = {child.eid: child for child in grid.children if child.type == "Bus"}
    ev_buses = [child for child in aggregator.children if child.type == "EVBus"]
    missing = sorted({int(c.extra_info["bus"]) for c in ev_buses} - {int(e.split("-", 1)[1]) for e in grid_buses})
    if missing:
        raise ValueError(f"{aggregator.full_id} has EVs at bus(es) {missing}, which the grid {grid.full_id} does not "
                         f"have (it has {len(grid_buses)} buses)")
    out = {}
    for child in ev_buses:
        bus = int(child.extra_info["bus"])
        target = grid_buses[f"Bus-{bus}"]
        world.connect(child, target, ("P[MW]", attr))
        out[bus] = target
    return out
