"""Wiring checks of the mosaik layer (rows of the bad-input issue): an EV power reaching a grid bus twice,
simulators on different calendars, and a power flow that does not converge at run time, each one clear error
instead of a silent double count, EVs drawing nothing, or pandapower's raw traceback. Small in-process worlds."""
from __future__ import annotations

import warnings

import mosaik
import pandapower as pp
import pytest

from evagg.plugin import connect_buses
from evagg.simulators.synthetic import synthetic_fleet
from evagg.simulators.tables import write_sessions

from nets import A1, A2, C1, C2, radial_net

START = "2026-06-01T00:00:00"
STEP = 900
CONFIG = {
    "Grid": {"python": "evagg.plugin:SimbenchGridSim"},
    "EVAgg": {"python": "evagg.plugin:AggregatorSim"},
    "In": {"python": "mosaik.basic_simulators.input_simulator:InputSimulator"},
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("wiring")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pp.to_json(radial_net(), str(d / "net.json"))
    write_sessions(synthetic_fleet(6, seed=3, start=START, buses=[A1, A2, C1, C2]), d / "sessions.csv")
    return {"net": str(d / "net.json"), "sessions": str(d / "sessions.csv")}


def world_with(files, wire, grid_start=START, steps=2):
    world = mosaik.World(CONFIG, mosaik_config={"start_timeout": 60}, debug=False)
    try:
        agg = world.start("EVAgg", step_size=STEP, start_date=START).Aggregator(
            sessions=files["sessions"], horizon=4, method="edf")
        grid = world.start("Grid", step_size=STEP, start_date=grid_start).Grid(json=files["net"])
        wire(world, agg, grid)
        world.run(until=steps * STEP, print_progress=False)
    finally:
        world.shutdown()


def test_the_fleet_power_wired_twice_is_an_error_naming_both_paths(files):
    def wire(world, agg, grid):
        connect_buses(world, agg, grid)
        bus = next(c for c in grid.children if c.eid == f"Bus-{C1}")
        world.connect(agg, bus, ("P[MW]", "P_load[MW]"))

    with pytest.raises(Exception, match="reaches the grid twice") as info:
        world_with(files, wire)
    text = str(info.value)
    assert f"EVAgg-0.Aggregator-0 -> Grid-0.Bus-{C1}" in text and "EVBus" in text


def test_either_path_alone_is_accepted(files):
    world_with(files, lambda world, agg, grid: connect_buses(world, agg, grid))


def test_simulators_on_different_calendars_are_an_error_naming_both_dates(files):
    with pytest.raises(ValueError, match=r"starts at 2026-06-01T00:00:00, the grid Grid-0.Grid at "
                                         r"2026-01-14T00:00:00"):
        world_with(files, lambda world, agg, grid: connect_buses(world, agg, grid), grid_start="2026-01-14 00:00:00")


def test_a_power_flow_that_does_not_converge_names_the_step_and_the_sender(files):
    """A third-party load sent in W where the bus takes MW: the grid cannot carry it."""
    def wire(world, agg, grid):
        connect_buses(world, agg, grid)
        load = world.start("In", step_size=STEP).Constant(constant=5000.0)  # 5 kW written as 5000 "MW"
        world.connect(load, next(c for c in grid.children if c.eid == f"Bus-{A2}"), ("value", "P_load[MW]"))

    with pytest.raises(Exception) as info:
        world_with(files, wire)
    text = str(info.value)
    assert "the power flow does not converge at time 0 (2026-06-01T00:00:00)" in text
    assert f"Grid-0.Bus-{A2} P_load[MW] 5000 from In-0.Constant-0" in text
    assert "LoadflowNotConverged" not in text
