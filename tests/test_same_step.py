"""The same-step loop of grid, aggregators and operator (connect_operator(..., coupling="iterative")) against the
one-step-delayed default, in mosaik worlds on simbench 1-LV-rural2 (shipped with simbench, offline): 120 EVs
charging uncontrolled from 16:00 on a winter day pull the feeder well below 0.95 pu without an operator. Plus the
simulators' parts of the loop without mosaik (metas, held limits, re-plans, the operator's rounds and cap) on a tiny
radial grid built here. Loopback only.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time

import mosaik
import mosaik_api_v3
import numpy as np
import pytest
from mosaik.starters import PythonStarter

from evagg.plugin import AggregatorSim, OperatorSim, PeakShaverSim, connect_buses
from evagg.plugin import connect_operator, operator_groups

pp = pytest.importorskip("pandapower")
pytest.importorskip("simbench")

CODE = "1-LV-rural2--0-sw"
START = "2026-01-14 16:00:00"  # a winter weekday: the evening peak
STEP = 900
N_EVS = 120
N_STEPS = 6
V_MIN = 0.95  # the operator's v_min (default)
CONFIG = {"Grid": {"python": "evagg.plugin:SimbenchGridSim"}, "EVAgg": {"python": "evagg.plugin:AggregatorSim"},
          "Op": {"python": "evagg.plugin:OperatorSim"}}


class Recorder(mosaik_api_v3.Simulator):
    """Event-based: records what it gets, once per mosaik time (outside the loop's group: the settled values)."""

    records: dict = {}

    def __init__(self):
        super().__init__({"api_version": "3.0", "type": "event-based",
                          "models": {"Rec": {"public": True, "any_inputs": True, "params": [], "attrs": []}}})

    def init(self, sid, time_resolution=1.0):
        Recorder.records = {}
        return self.meta

    def create(self, num, model):
        return [{"eid": f"Rec-{i}", "type": "Rec"} for i in range(num)]

    def step(self, time, inputs, max_advance):
        Recorder.records[time] = {a: dict(v) for a, v in inputs["Rec-0"].items()}

    def get_data(self, outputs):
        return {}


def run_world(coupling: str | None, n_steps: int = N_STEPS, **op_sim):
    """rural2, one aggregator of N_EVS uncontrolled EVs spread over the load buses; coupling None: no operator.
    Returns ({step: {"vm": {bus: Vm}, "ev": {bus: kW}, "op": {attr: value}}}, wall time of world.run)."""
    from evagg.simulators.grids import load_grid

    buses = [int(b) for b in load_grid(CODE).load_buses]
    iterative = coupling == "iterative"
    same = {"same_step": True} if iterative else {}
    world = mosaik.World({**CONFIG, "Rec": PythonStarter(Recorder)}, debug=False, skip_greetings=True)
    try:
        with world.group() if iterative else contextlib.nullcontext():
            grid = world.start("Grid", step_size=STEP, start_date=START, **same).Grid(grid=CODE)
            agg = world.start("EVAgg", step_size=STEP, start_date=START, **same).Aggregator(
                n_evs=N_EVS, seed=3, buses=buses, method="uncontrolled")
            connect_buses(world, agg, grid)
            if coupling is not None:
                op = world.start("Op", step_size=STEP, **({"coupling": "iterative", **op_sim} if iterative else {}))
                op = op.Operator(grid=CODE, groups=operator_groups([agg]))
                connect_operator(world, op, grid, [agg], coupling=coupling)
        rec = world.start("Rec").Rec()
        for c in grid.children:
            if c.type == "Bus":
                world.connect(c, rec, "Vm[pu]")
        for c in agg.children:
            world.connect(c, rec, "P[MW]")
        if coupling is not None:
            world.connect(op, rec, "Vm_min[pu]", "iterations", "capped", "capped_steps", "n_limited")
        t0 = time.perf_counter()
        world.run(until=n_steps * STEP, print_progress=False)
        wall = time.perf_counter() - t0
    finally:
        with contextlib.suppress(Exception):
            world.shutdown()
    out = {}
    for t, d in Recorder.records.items():
        out[t // STEP] = {
            "vm": {int(src.rsplit("-", 1)[1]): v for src, v in d["Vm[pu]"].items()},
            "ev": {int(src.rsplit("-", 1)[1]): 1000 * v for src, v in d["P[MW]"].items()},
            "op": {a: next(iter(d[a].values())) for a in ("Vm_min[pu]", "iterations", "capped", "capped_steps",
                                                          "n_limited") if a in d},
        }
    return out, wall


@pytest.fixture(scope="module")
def uncontrolled():
    return run_world(None)[0]


@pytest.fixture(scope="module")
def iterative():
    return run_world("iterative")


@pytest.fixture(scope="module")
def delayed():
    return run_world("delayed")[0]


# ------------------------------------------------------------------------------------------ mosaik worlds


def test_without_an_operator_the_evening_pulls_the_feeder_below_v_min(uncontrolled):
    assert min(uncontrolled[0]["vm"].values()) < 0.90
    assert all(min(s["vm"].values()) < V_MIN for s in list(uncontrolled.values())[:4])


def test_iterative_limits_act_in_the_same_step(uncontrolled, iterative):
    got, _ = iterative
    low = [b for b, v in uncontrolled[0]["vm"].items() if v < V_MIN and uncontrolled[0]["ev"].get(b, 0) > 0]
    assert low, "some EVs at buses below v_min in the first step"
    # already in the first step: less EV load at the low buses (never more anywhere), the voltage back within v_min
    assert sum(got[0]["ev"][b] for b in low) < 0.6 * sum(uncontrolled[0]["ev"][b] for b in low)
    assert any(got[0]["ev"][b] < uncontrolled[0]["ev"][b] - 1.0 for b in low)
    assert all(got[0]["ev"][b] <= uncontrolled[0]["ev"][b] + 1e-6 for b in got[0]["ev"])
    for k, s in got.items():
        assert min(s["vm"].values()) >= V_MIN, k
        assert s["op"]["Vm_min[pu]"] == pytest.approx(min(s["vm"].values()), abs=1e-9)  # measured after the loop


def test_iterative_loop_settles_in_few_rounds_and_reports_them(iterative):
    got, _ = iterative
    its = [s["op"]["iterations"] for s in got.values()]
    assert len(its) == N_STEPS and all(isinstance(i, int) and 1 <= i < 10 for i in its), its
    assert max(its) >= 2  # the loop did go round
    assert all(s["op"]["capped"] == 0 for s in got.values()) and got[N_STEPS - 1]["op"]["capped_steps"] == 0


def test_a_cap_that_is_hit_is_reported_and_said_once(caplog):
    caplog.set_level(logging.WARNING, logger="evagg.plugin")
    # every round sends what moved (later_rounds="all": more rounds than only cuts), at most 2 power flows a step
    got, _ = run_world("iterative", n_steps=4, max_iterations=2, later_rounds="all")
    capped = [k for k, s in got.items() if s["op"]["capped"]]
    assert len(capped) >= 2
    assert all(got[k]["op"]["iterations"] == 2 for k in capped)  # stopped at the cap
    assert [s["op"]["capped_steps"] for s in got.values()] == list(np.cumsum([s["op"]["capped"] for s in got.values()]))
    said = [r for r in caplog.records if "max_iterations=2" in r.getMessage()]
    assert len(said) == 1


def test_delayed_coupling_still_lags_one_step(uncontrolled, delayed):
    # step 0: no limits yet (the EVs draw as without an operator, the voltage too low); step 1: limited
    assert delayed[0]["ev"] == pytest.approx(uncontrolled[0]["ev"])
    assert min(delayed[0]["vm"].values()) < V_MIN and delayed[0]["op"]["iterations"] == 1
    assert sum(delayed[1]["ev"].values()) < 0.6 * sum(uncontrolled[1]["ev"].values())
    assert min(delayed[1]["vm"].values()) >= V_MIN
    assert all(s["op"]["iterations"] == 1 and s["op"]["capped"] == 0 for s in delayed.values())


def test_connect_operator_iterative_says_what_is_missing(tmp_path):
    path = tmp_path / "tiny.json"
    pp.to_json(radial_net(), str(path))
    start = "2026-01-14 18:00:00"
    for grouped, same, op_coupling, expect in (
        (False, True, "iterative", r"with world.group\(\)"),
        (True, False, "iterative", "same_step=True"),
        (True, True, "delayed", "coupling='iterative'"),
    ):
        world = mosaik.World(CONFIG, debug=False, skip_greetings=True)
        try:
            with world.group() if grouped else contextlib.nullcontext():
                kw = {"same_step": True} if same else {}
                grid = world.start("Grid", step_size=STEP, **kw).Grid(grid=str(path))
                agg = world.start("EVAgg", step_size=STEP, start_date=start, **kw).Aggregator(
                    n_evs=4, seed=1, buses=[A2, C2], method="uncontrolled")
                op = world.start("Op", step_size=STEP, coupling=op_coupling).Operator(
                    grid=str(path), groups=operator_groups([agg]))
            with pytest.raises(ValueError, match=expect):
                connect_operator(world, op, grid, [agg], coupling="iterative")
            if same:  # an aggregator made for the loop is refused by the delayed coupling
                with pytest.raises(ValueError, match="same_step=True"):
                    connect_operator(world, op, grid, [agg])
        finally:
            world.shutdown()


# ------------------------------------------------------------------------------------------ without mosaik

import nets  # noqa: E402
from nets import A2, C2  # noqa: E402


def radial_net():
    """The tiny grid of the operator tests, with the weaker (0.32 ohm/km, 270 A) feeder C."""
    return nets.radial_net(c_max_i_ka=0.27, c_r_ohm_per_km=0.32)


def measured(ev_kw: dict) -> dict:
    """The Operator's inputs from the tiny grid solved with EV load {bus: kW}."""
    net = radial_net()
    for b, kw in ev_kw.items():
        pp.create_load(net, b, p_mw=kw / 1000.0)
    pp.runpp(net, numba=False)
    return {"Vm[pu]": {f"Grid-0.Bus-{b}": v for b, v in net.res_bus.vm_pu.items()},
            "P[MW]": {f"Grid-0.Bus-{b}": v for b, v in net.res_bus.p_mw.items()},
            "loading[%]": {**{f"Grid-0.Line-{i}": v for i, v in net.res_line.loading_percent.items()},
                           "Grid-0.Transformer-0": net.res_trafo.loading_percent[0]}}


def test_metas_are_time_based_unless_made_for_the_loop():
    from evagg.plugin.pandapower_grid import SimbenchGridSim

    assert SimbenchGridSim().init("G", step_size=STEP)["type"] == "time-based"
    grid = SimbenchGridSim().init("G", step_size=STEP, same_step=True)
    assert grid["type"] == "hybrid" and "P_load[MW]" in grid["models"]["Bus"]["trigger"]
    assert AggregatorSim().init("A")["type"] == "time-based"
    agg = AggregatorSim().init("A", same_step=True)
    assert agg["type"] == "hybrid"
    assert set(agg["models"]["EVBus"]["trigger"]) == set(agg["models"]["Aggregator"]["trigger"]) == {
        "P_max[MW]", "P_min[MW]"}
    assert OperatorSim().init("O")["type"] == "time-based"
    op = OperatorSim().init("O", coupling="iterative")
    assert op["type"] == "hybrid" and set(op["models"]["Operator"]["trigger"]) == {"Vm[pu]", "P[MW]", "loading[%]"}
    assert set(op["models"]["BusLimit"]["non-persistent"]) == {"P_max[MW]", "P_min[MW]"}
    for bad in ({"coupling": "loop"}, {"tol_mw": -1}, {"max_iterations": 0}, {"later_rounds": "never"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            OperatorSim().init("O", **bad)


def test_operator_rounds_send_only_moved_limits_and_stop_at_the_cap(tmp_path):
    path = tmp_path / "tiny.json"
    pp.to_json(radial_net(), str(path))
    ev = {A2: 60.0, C2: 5.0}  # far too much at the end of feeder A
    p_ev = {"BusLimit-0-0": {"P_ev[MW]": {"A-0.EVBus-0-3": ev[A2] / 1000}},
            "BusLimit-0-1": {"P_ev[MW]": {"A-0.EVBus-0-5": ev[C2] / 1000}}}
    want = ["P_max[MW]", "P_min[MW]", "binding"]
    out_op = ["iterations", "capped", "capped_steps"]

    sim = OperatorSim()
    sim.init("Op-0", step_size=STEP, coupling="iterative")
    sim.create(1, "Operator", grid=str(path), buses=[A2, C2])
    assert sim.step(0, {"Operator-0": measured(ev), **p_ev}, 10**9) == STEP
    first = sim.get_data({"BusLimit-0-0": want, "Operator-0": out_op})
    p_max = first["BusLimit-0-0"]["P_max[MW]"]
    assert 0 <= p_max < ev[A2] / 1000 and first["BusLimit-0-0"]["binding"].startswith(f"Vm Bus-{A2} low")
    assert first["Operator-0"] == {"iterations": 1, "capped": 0, "capped_steps": 0}
    # further rounds at the same time, the EVs at the limit sent: limits only tighten (later_rounds="cuts"), and once
    # they move by less than tol_mw nothing is sent: the loop has settled
    sent = [p_max]
    for rounds in range(2, 6):
        p_ev["BusLimit-0-0"]["P_ev[MW]"]["A-0.EVBus-0-3"] = sent[-1]
        sim.step(0, {"Operator-0": measured({A2: sent[-1] * 1000, C2: 5.0}), **p_ev}, 10**9)
        got = sim.get_data({"BusLimit-0-0": want, "Operator-0": out_op})
        assert got["Operator-0"]["iterations"] == rounds and got["Operator-0"]["capped"] == 0
        assert "binding" in got["BusLimit-0-0"]
        if "P_max[MW]" not in got["BusLimit-0-0"]:
            break
        assert got["BusLimit-0-0"]["P_max[MW]"] < sent[-1] - sim.tol_mw
        sent.append(got["BusLimit-0-0"]["P_max[MW]"])
    else:
        pytest.fail(f"the limits did not settle: {sent}")
    vm = measured({A2: sent[-1] * 1000, C2: 5.0})["Vm[pu]"][f"Grid-0.Bus-{A2}"]
    assert vm >= V_MIN
    # a new time: the rounds count again
    sim.step(STEP, {"Operator-0": measured({A2: sent[-1] * 1000, C2: 5.0}), **p_ev}, 10**9)
    assert sim.get_data({"Operator-0": out_op})["Operator-0"]["iterations"] == 1

    capped = OperatorSim()
    capped.init("Op-1", step_size=STEP, coupling="iterative", max_iterations=1)
    capped.create(1, "Operator", grid=str(path), buses=[A2, C2])
    p_ev["BusLimit-0-0"]["P_ev[MW]"]["A-0.EVBus-0-3"] = ev[A2] / 1000
    capped.step(0, {"Operator-0": measured(ev), **p_ev}, 10**9)
    got = capped.get_data({"BusLimit-0-0": want, "Operator-0": out_op})
    assert "P_max[MW]" not in got["BusLimit-0-0"]  # the cap: nothing sent, the EVs keep what they have
    assert got["Operator-0"] == {"iterations": 1, "capped": 1, "capped_steps": 1}


def test_a_peak_shaver_stepped_again_at_the_same_time_steps_once():
    sim = PeakShaverSim()
    sim.init("Shaver-0", step_size=STEP)
    sim.create(1, "PeakShaver", target=0.1, forecast_steps=2)
    for p_feeder in (0.30, 0.25, 0.20):  # the same time, three rounds: the last one counts
        sim.step(0, {"PeakShaver-0": {"P_feeder[MW]": {"G.T": p_feeder}, "P_fleet[MW]": {"A.A": 0.05}}}, 10**9)
    once = PeakShaverSim()
    once.init("Shaver-1", step_size=STEP)
    once.create(1, "PeakShaver", target=0.1, forecast_steps=2)
    once.step(0, {"PeakShaver-0": {"P_feeder[MW]": {"G.T": 0.20}, "P_fleet[MW]": {"A.A": 0.05}}}, 10**9)
    attrs = ["P_ref[MW]", "P_forecast[MW]", "P_base[MW]"]
    assert sim.get_data({"PeakShaver-0": attrs}) == once.get_data({"PeakShaver-0": attrs})


@pytest.mark.parametrize("same_step", [False, True])
def test_aggregator_holds_limits_until_changed_and_replans_only_on_news(same_step):
    sim = AggregatorSim()
    sim.init("A-0", step_size=STEP, start_date="2026-01-14 18:00:00", same_step=same_step)
    [agg] = sim.create(1, "Aggregator", n_evs=30, seed=2, buses=[A2, C2], method="uncontrolled")
    bus = f"EVBus-0-{A2}"
    src = "Op-0.BusLimit-0-0"

    def p_bus(t, inputs):
        sim.step(t, inputs, 10**9)
        return 1000 * sim.get_data({bus: ["P[MW]"]})[bus]["P[MW]"]

    free = p_bus(0, {})
    assert free > 5.0
    assert p_bus(STEP, {bus: {"P_max[MW]": {src: 0.002}}}) <= 2.0 + 1e-6
    assert p_bus(2 * STEP, {}) <= 2.0 + 1e-6  # no input: held
    assert p_bus(3 * STEP, {bus: {"P_max[MW]": {src: None}}}) > 5.0  # None: no limit
    assert p_bus(4 * STEP, {bus: {"P_max[MW]": {src: 0.003}}}) <= 3.0 + 1e-6
    if same_step:  # the same time again: re-planned only when something changed
        assert p_bus(4 * STEP, {}) <= 3.0 + 1e-6 and sim.n_replans == 0
        assert p_bus(4 * STEP, {bus: {"P_max[MW]": {src: math.inf}}}) > 5.0 and sim.n_replans == 1
        assert p_bus(4 * STEP, {bus: {"P_max[MW]": {src: math.inf}}}) > 5.0 and sim.n_replans == 1
