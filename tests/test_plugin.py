"""The mosaik plugin (evagg.plugin) in real mosaik worlds, with mosaik-pandapower-2 on a tiny pandapower network.

Only loopback is used. Worlds run a few hours of 15-minute steps; each test takes a few seconds.
"""
from __future__ import annotations

import logging
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import mosaik
import numpy as np
import pytest

from evagg.plugin import AggregatorSim, CollectorSim, ReferenceSim, connect_buses
from evagg.plugin.meta import AGGREGATOR_MODELS, KW_PER_MW
from evagg.simulators.aggregator import Aggregator, SignalSource
from evagg.simulators.collector import read_table
from evagg.simulators.fleet import Fleet
from evagg.simulators.synthetic import synthetic_fleet, synthetic_reference
from evagg.simulators.tables import read_reference, read_sessions, write_reference, write_sessions

pp = pytest.importorskip("pandapower")

START = "2026-06-01T00:00:00"
T0 = np.datetime64(START, "s")
STEP = 900
N_STEPS = 20  # 5 h: every session of the test fleet has come and gone
EV_BUSES = (3, 4, 5)
AGG = "EVAgg-0.Aggregator-0"

PY = {
    "Grid": {"python": "mosaik_components.pandapower:Simulator"},
    "EVAgg": {"python": "evagg.plugin:AggregatorSim"},
    "Ref": {"python": "evagg.plugin:ReferenceSim"},
    "Col": {"python": "evagg.plugin:CollectorSim"},
    "Out": {"python": "mosaik.basic_simulators.output_simulator:OutputSimulator"},
    "In": {"python": "mosaik.basic_simulators.input_simulator:InputSimulator"},
}


# ----------------------------------------------------------------------------------------------- fixtures


def make_fleet(n: int = 12, seed: int = 4) -> Fleet:
    """n sessions within 00:00-04:00 at the buses 3, 4, 5; half V2G; one arrives at 00:10 and leaves at 01:10."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 90, n)
    dep = arr + rng.integers(60, 150, n)
    arr[0], dep[0] = 10, 70
    cap = rng.uniform(40, 80, n).round(1)
    pc_max = rng.choice([7.4, 11.0, 22.0], n)
    return Fleet(
        ev_id=np.array([f"ev{i:02d}" for i in range(n)], dtype=object),
        arrival=T0 + arr.astype("timedelta64[m]").astype("timedelta64[s]"),
        departure=T0 + dep.astype("timedelta64[m]").astype("timedelta64[s]"),
        energy_initial_kwh=(cap * rng.uniform(0.2, 0.5, n)).round(3),
        energy_target_kwh=(cap * rng.uniform(0.6, 0.9, n)).round(3), capacity_kwh=cap, p_charge_max_kw=pc_max,
        p_discharge_max_kw=np.where(np.arange(n) % 2 == 0, pc_max, 0.0),
        eta_charge=np.full(n, 0.95), eta_discharge=np.full(n, 0.93), energy_min_kwh=(0.1 * cap).round(3),
        bus=np.array(EV_BUSES)[np.arange(n) % 3].astype(np.int64),
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny grid (20 kV slack, a 0.4 kV transformer bus 1, a feeder 2-3-4-5), sessions and a signal."""
    d = tmp_path_factory.mktemp("plugin")
    net = pp.create_empty_network()
    b0, b1 = pp.create_bus(net, 20.0), pp.create_bus(net, 0.4)
    pp.create_ext_grid(net, b0)
    pp.create_transformer(net, b0, b1, "0.4 MVA 20/0.4 kV")
    prev = b1
    for _ in range(4):
        b = pp.create_bus(net, 0.4)
        pp.create_line(net, prev, b, 0.3, "NAYY 4x150 SE")
        prev = b
    pp.to_json(net, str(d / "net.json"))
    fleet = make_fleet()
    write_sessions(fleet, d / "sessions.csv")
    ref = synthetic_reference(fleet, start=START, step_s=STEP, n_steps=N_STEPS + 8, seed=4)
    write_reference(ref, d / "signal.csv")
    return {"dir": d, "net": str(d / "net.json"), "sessions": str(d / "sessions.csv"),
            "signal": str(d / "signal.csv")}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (read from /proc, so that no probe takes the connection)."""
    want = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(line.split()[1] == want and line.split()[3] == "0A" for line in lines)


def run_world(files, agg_config=None, until_steps=N_STEPS, grid=True, reference=True, agg_params=None,
              sim_params=None, extra=None, time_resolution=1.0):
    """Run a scenario: [grid] + aggregator + [reference] -> OutputSimulator; returns the output dict by time."""
    config = dict(PY)
    if agg_config is not None:
        config["EVAgg"] = agg_config
    world = mosaik.World(config, time_resolution=time_resolution, mosaik_config={"start_timeout": 60},
                         debug=False)
    try:
        sim_params = {"step_size": STEP, "start_date": START, **(sim_params or {})}
        step_size = sim_params["step_size"]
        agg = world.start("EVAgg", **sim_params).Aggregator(
            **{"sessions": files["sessions"], "horizon": 6, "method": "dchr", **(agg_params or {})})
        outsim = world.start("Out")
        out = outsim.Dict()
        world.connect(agg, out, "P[MW]", "P_ref[MW]", "tracking_error[MW]", "n_plugged", "energy[MWh]",
                      "shortfall[MWh]", "solve_time[s]")
        for child in agg.children:
            world.connect(child, out, "P[MW]")
        if grid:
            g = world.start("Grid", step_size=step_size).Grid(json=files["net"])
            connect_buses(world, agg, g)
            for bus in g.children:
                if bus.type == "Bus":
                    world.connect(bus, out, "P[MW]", "Vm[pu]")
        if reference:
            ref = world.start("Ref", **sim_params).Signal(path=files["signal"], until=until_steps * step_size)
            world.connect(ref, agg, "P_ref[MW]")
        if extra is not None:
            extra(world, agg, out)
        world.run(until=until_steps * step_size, print_progress=False, shutdown=False)
        return outsim.get_dict(out.eid), agg
    finally:
        world.shutdown()


def series(data, attr, entity):
    return np.array([data[t][attr][entity] for t in sorted(data)], dtype=float)


def without_timing(data):
    return {t: {a: v for a, v in d.items() if a != "solve_time[s]"} for t, d in data.items()}


@pytest.fixture(scope="module")
def in_process(files):
    return run_world(files)


# ----------------------------------------------------------------------------------------------- tests


def test_meta_is_built_from_the_table():
    meta = AggregatorSim().meta
    assert meta["type"] == "time-based"
    for name, spec in AGGREGATOR_MODELS.items():
        attrs = meta["models"][name]["attrs"]
        assert set(attrs) == {a.name for a in spec.inputs + spec.outputs}
        assert meta["models"][name]["public"] == spec.public
    agg = meta["models"]["Aggregator"]
    assert {"P_ref[MW]", "P_max[MW]", "P_min[MW]", "P[MW]", "tracking_error[MW]", "n_plugged", "energy[MWh]",
            "shortfall[MWh]", "solve_time[s]"} <= set(agg["attrs"])
    assert {"sessions", "n_evs", "seed", "buses", "method", "horizon", "time_limit"} <= set(agg["params"])
    assert ReferenceSim().meta["models"]["Signal"]["attrs"] == ["P_ref[MW]", "P_forecast[MW]"]
    assert CollectorSim().meta["models"]["Table"]["any_inputs"] is True


def test_grid_sees_the_dispatch_bus_by_bus(in_process, files):
    data, agg = in_process
    times = sorted(data)
    assert times == [k * STEP for k in range(N_STEPS)]
    assert [c.extra_info["bus"] for c in agg.children] == list(EV_BUSES)
    total = series(data, "P[MW]", AGG)
    children = sum(series(data, "P[MW]", f"EVAgg-0.EVBus-0-{b}") for b in EV_BUSES)
    np.testing.assert_allclose(total, children, rtol=0, atol=1e-15)
    assert total.max() > 0.01  # the EVs draw tens of kW
    for b in EV_BUSES:
        np.testing.assert_allclose(series(data, "P[MW]", f"Grid-0.Bus-{b}"),
                                   series(data, "P[MW]", f"EVAgg-0.EVBus-0-{b}"), rtol=1e-12, atol=1e-15)
    # Voltages respond: lower at the feeder's end the more the EVs draw; back to no-load when none does.
    vm = series(data, "Vm[pu]", "Grid-0.Bus-5")
    idle = np.abs(total) < 1e-12
    assert idle.any() and (~idle).any()
    vm_idle = vm[idle][0]
    np.testing.assert_allclose(vm[idle], vm_idle, atol=1e-12)
    drawing = total > 0.005
    assert np.all(vm[drawing] < vm_idle - 1e-4)
    injecting = total < -0.005
    assert np.all(vm[injecting] > vm_idle + 1e-4)
    # The feeder's voltage drop follows the EV load (the load moves between buses, so not strictly).
    assert np.corrcoef(total, vm_idle - vm)[0, 1] > 0.9


def test_outputs_are_the_models_and_needs_are_met(in_process, files):
    """The mosaik layer is thin: the same model fed the same references gives the same outputs, bit for bit;
    energies are carried exactly and every departure need is met."""
    data, _ = in_process
    fleet = read_sessions(files["sessions"])
    source = SignalSource(read_reference(files["signal"]), T0, STEP)
    model = Aggregator(fleet, T0, STEP, horizon=6, method="dchr")
    for k in range(N_STEPS):
        p_ref_kw = (source.value(k) / KW_PER_MW) * KW_PER_MW  # what crosses the boundary in MW
        before = model.energy_kwh.copy()
        res = model.step(k, p_ref_kw)
        d = data[k * STEP]
        assert d["P[MW]"][AGG] == res.p_kw / KW_PER_MW
        assert d["P_ref[MW]"][AGG] == res.p_ref_kw / KW_PER_MW
        assert d["energy[MWh]"][AGG] == res.energy_kwh / KW_PER_MW
        assert d["n_plugged"][AGG] == res.n_plugged
        assert d["shortfall[MWh]"][AGG] == res.shortfall_kwh / KW_PER_MW
        assert d["tracking_error[MW]"][AGG] == pytest.approx((res.p_kw - res.p_ref_kw) / KW_PER_MW, abs=1e-15)
        idx = res.sessions
        dt_h = STEP / 3600
        delta = fleet.eta_charge[idx] * dt_h * res.pc_kw - dt_h / fleet.eta_discharge[idx] * res.pd_kw
        np.testing.assert_array_equal(model.energy_kwh[idx], before[idx] + delta)
    assert model.n_departed == len(fleet)
    assert model.need_unmet_kwh == 0.0
    assert np.all(model.final_energy_kwh >= model.need_kwh - 1e-6)


@pytest.mark.parametrize("how", ["cmd", "evagg-mosaik", "connect"])
def test_own_process_gives_identical_results(in_process, files, how):
    exe = shlex.quote(sys.executable)
    proc = None
    if how == "cmd":
        config = {"cmd": f"{exe} -m evagg.plugin %(addr)s", "posix": True}
    elif how == "evagg-mosaik":
        # the script of the installation under test (beside this Python), not another one found on PATH
        beside = Path(sys.executable).parent / "evagg-mosaik"
        script = str(beside) if beside.exists() else shutil.which("evagg-mosaik")
        if script is None:
            pytest.skip("the evagg-mosaik console script is not installed (pip install -e . after setup.cfg)")
        config = {"cmd": f"{shlex.quote(script)} %(addr)s", "posix": True}
    else:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "evagg.plugin", "-r", f"127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not listening(port):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "evagg-mosaik -r did not listen in time"
            time.sleep(0.1)
        config = {"connect": f"127.0.0.1:{port}"}
    try:
        data, agg = run_world(files, agg_config=config)
        assert without_timing(data) == without_timing(in_process[0])
        assert [c.extra_info for c in agg.children] == [c.extra_info for c in in_process[1].children]
        if proc is not None:
            assert proc.wait(timeout=30) == 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("time_resolution, step_size", [(1.0, 60), (1.0, 300), (1.0, 900), (1.0, 3600),
                                                        (60.0, 15), (0.001, 900_000)])
def test_time_comes_from_mosaik(files, time_resolution, step_size):
    step_s = round(time_resolution * step_size)
    n = max(3, int(np.ceil(3600 / step_s)))
    data, _ = run_world(files, grid=False, reference=False, until_steps=n, time_resolution=time_resolution,
                        sim_params={"step_size": step_size}, agg_params={"method": "uncontrolled"})
    model = Aggregator(read_sessions(files["sessions"]), T0, step_s, horizon=6, method="uncontrolled")
    expected = [model.step().energy_kwh / KW_PER_MW for _ in range(n)]
    got = [data[t]["energy[MWh]"][AGG] for t in sorted(data)]
    assert sorted(data) == [k * step_size for k in range(n)]
    assert got == expected


def test_step_must_be_whole_seconds():
    world = mosaik.World(PY, time_resolution=0.5, debug=False)
    try:
        with pytest.raises(Exception, match="whole number of seconds"):
            world.start("EVAgg", step_size=1, start_date=START)
    finally:
        world.shutdown()


def test_a_bus_the_grid_lacks(files, tmp_path):
    fleet = make_fleet()
    bad = Fleet(**{**fleet.__dict__, "bus": np.where(fleet.bus == 5, 9, fleet.bus)})
    write_sessions(bad, tmp_path / "bad.csv")
    world = mosaik.World(PY, debug=False)
    try:
        agg = world.start("EVAgg", step_size=STEP, start_date=START).Aggregator(sessions=str(tmp_path / "bad.csv"))
        grid = world.start("Grid", step_size=STEP).Grid(json=files["net"])
        with pytest.raises(ValueError, match=r"bus\(es\) \[9\], which the grid .* does not have"):
            connect_buses(world, agg, grid)
        with pytest.raises(Exception, match=r"bus\(es\) \[9\] which the grid does not have"):
            world.start("EVAgg", step_size=STEP, start_date=START).Aggregator(
                sessions=str(tmp_path / "bad.csv"), grid_buses=[0, 1, 2, 3, 4, 5])
    finally:
        world.shutdown()


@pytest.mark.parametrize("wiring", ["wrong bus", "some missing"])
def test_grid_connections_are_checked_at_set_up(files, wiring):
    def wire(world, agg, out):
        grid = world.start("Grid", step_size=STEP).Grid(json=files["net"])
        buses = {c.eid: c for c in grid.children}
        kids = {c.extra_info["bus"]: c for c in agg.children}
        world.connect(kids[3], buses["Bus-3"], ("P[MW]", "P_load[MW]"))
        if wiring == "wrong bus":
            world.connect(kids[4], buses["Bus-5"], ("P[MW]", "P_load[MW]"))
            world.connect(kids[5], buses["Bus-4"], ("P[MW]", "P_load[MW]"))
    match = "connected to the grid's Grid-0.Bus-5" if wiring == "wrong bus" else r"bus\(es\) \[4, 5\] that are connected to no grid bus"
    with pytest.raises(Exception, match=match):
        run_world(files, grid=False, until_steps=2, extra=wire)


def test_a_signal_that_does_not_cover_the_run(files):
    world = mosaik.World(PY, debug=False)
    try:
        ref = world.start("Ref", step_size=STEP, start_date=START)
        with pytest.raises(Exception, match="does not cover the simulated period"):
            ref.Signal(path=files["signal"], until=40 * STEP)
        with pytest.raises(Exception, match="needs the time of mosaik time 0"):
            world.start("Ref", step_size=STEP).Signal(path=files["signal"])
    finally:
        world.shutdown()
    # Without `until` the error comes at the first step it does not cover: never a silent zero.
    with pytest.raises(Exception, match="has no value for"):
        run_world(files, grid=False, until_steps=N_STEPS + 10, reference=False,
                  extra=lambda w, agg, out: w.connect(
                      w.start("Ref", step_size=STEP, start_date=START).Signal(path=files["signal"]), agg,
                      "P_ref[MW]"))


def test_no_reference_charges_uncontrolled_and_says_so_once(files, caplog):
    caplog.set_level(logging.INFO, logger="evagg")
    data, _ = run_world(files, grid=False, reference=False, until_steps=8)
    assert all(data[t]["P_ref[MW]"][AGG] is None for t in data)
    assert max(data[t]["P[MW]"][AGG] for t in data) > 0
    assert len([r for r in caplog.records if "uncontrolled" in r.getMessage()]) == 1


def test_limits_from_another_simulator(files):
    """P_max from another simulator is a hard bound on the aggregate (a flexible evening fleet, uncontrolled)."""
    evening = {"sim_params": {"start_date": "2026-06-01T16:00:00"}, "grid": False, "reference": False,
               "until_steps": 12,
               "agg_params": {"sessions": None, "n_evs": 40, "seed": 2, "buses": [3], "method": "uncontrolled"}}

    def limit(world, agg, out):
        cap = world.start("In", step_size=STEP).Constant(constant=0.1)  # 100 kW
        world.connect(cap, agg, ("value", "P_max[MW]"))
    data, _ = run_world(files, extra=limit, **evening)
    free, _ = run_world(files, **evening)
    assert series(free, "P[MW]", AGG).max() > 0.15  # the limit binds
    p = series(data, "P[MW]", AGG)
    assert np.all(p <= 0.1 + 1e-12) and p.max() > 0.099
    # The energy not drawn in the peak is drawn later: the fleet holds less in the limited run.
    assert series(data, "energy[MWh]", AGG)[-1] < series(free, "energy[MWh]", AGG)[-1]


def test_bus_limits_reach_the_evs_at_that_bus(files):
    """P_max on one EVBus child bounds the EVs at that bus only; the aggregator says when a limit binds."""
    evening = {"sim_params": {"start_date": "2026-06-01T16:00:00"}, "grid": False, "reference": False,
               "until_steps": 12,
               "agg_params": {"sessions": None, "n_evs": 40, "seed": 2, "buses": [3, 4], "method": "uncontrolled"}}

    def limit(world, agg, out):
        cap = world.start("In", step_size=STEP).Constant(constant=0.03)  # 30 kW at bus 3
        bus3 = next(c for c in agg.children if c.extra_info["bus"] == 3)
        world.connect(cap, bus3, ("value", "P_max[MW]"))
        world.connect(agg, out, "limited")
    data, _ = run_world(files, extra=limit, **evening)
    free, _ = run_world(files, **evening)
    at3, at4 = "EVAgg-0.EVBus-0-3", "EVAgg-0.EVBus-0-4"
    assert series(free, "P[MW]", at3).max() > 0.05  # the limit binds
    assert np.all(series(data, "P[MW]", at3) <= 0.03 + 1e-9) and series(data, "P[MW]", at3).max() > 0.029
    np.testing.assert_allclose(series(data, "P[MW]", at4), series(free, "P[MW]", at4), atol=1e-9)
    assert series(data, "limited", AGG).max() == 1


def test_forecast_from_the_signal_and_synthetic_fleet(files):
    """A synthetic fleet spread over buses, a synthetic signal around its baseline with its future given."""
    def wire(world, agg, out):
        ref = world.start("Ref", step_size=STEP, start_date="2026-06-01T16:00:00").Signal(
            kind="regulation", n_evs=60, seed=2, forecast_steps=5, until=12 * STEP)
        world.connect(ref, agg, "P_ref[MW]", "P_forecast[MW]")
        world.connect(ref, out, "P_ref[MW]")
    data, agg = run_world(files, grid=False, reference=False, until_steps=12, extra=wire,
                          sim_params={"start_date": "2026-06-01T16:00:00"},
                          agg_params={"sessions": None, "n_evs": 60, "seed": 2, "buses": [3, 4, 5]})
    assert {c.extra_info["bus"] for c in agg.children} == {3, 4, 5}
    assert series(data, "P_ref[MW]", AGG).tolist() == series(data, "P_ref[MW]", "Ref-0.Signal-0").tolist()
    assert series(data, "n_plugged", AGG).max() > 10
    # The aggregator planned with the signal's future: the model fed the same values gives the same run.
    t16 = np.datetime64("2026-06-01T16:00:00", "s")
    fleet = synthetic_fleet(60, seed=2, start=str(t16), buses=[3, 4, 5])
    signal = SignalSource(synthetic_reference(fleet, start=str(t16), step_s=STEP, n_steps=17, seed=2), t16, STEP)
    model = Aggregator(fleet, t16, STEP, horizon=6, method="dchr")
    held = Aggregator(fleet, t16, STEP, horizon=6, method="dchr")
    p_model, p_held = [], []
    for k in range(12):
        mw = lambda v: (np.asarray(v) / KW_PER_MW) * KW_PER_MW  # noqa: E731  (through the MW boundary)
        p_model.append(model.step(k, mw(signal.value(k)), forecast_kw=mw(signal.values(k + 1, 5))).p_kw)
        p_held.append(held.step(k, mw(signal.value(k))).p_kw)
    np.testing.assert_array_equal(series(data, "P[MW]", AGG), np.array(p_model) / KW_PER_MW)
    assert not np.allclose(p_model, p_held)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_collector_writes_a_tidy_table(files, tmp_path, suffix):
    path = tmp_path / f"results.{suffix}"

    def collect(world, agg, out):
        col = world.start("Col", start_date=START).Table(path=str(path))
        world.connect(agg, col, "P[MW]", "n_plugged", "energy[MWh]")
        for child in agg.children:
            world.connect(child, col, "P[MW]")
    data, _ = run_world(files, grid=False, until_steps=6, extra=collect)
    table = read_table(path)
    assert list(table.columns) == ["time", "entity", "attribute", "value"]
    assert len(table) == 6 * (3 + len(EV_BUSES))
    first = table[table["time"] == "2026-06-01T00:15:00"].set_index(["entity", "attribute"])["value"]
    assert first[(AGG, "P[MW]")] == data[STEP]["P[MW]"][AGG]
    assert first[("EVAgg-0.EVBus-0-4", "P[MW]")] == data[STEP]["P[MW]"]["EVAgg-0.EVBus-0-4"]
    assert not Path(str(path) + ".partial.csv").exists()


@pytest.mark.parametrize("start, time_resolution, step_size, times, rows", [
    (None, 1.0, 900, [0, 900, 1800], [[0], [1], [2]]),  # as mosaik-pandapower-2 itself
    ("2026-06-01 06:00:00", 60.0, 5, [0, 15, 20], [[14616], [14617], [14617]]),  # 1 June 06:00 in 2016; 5-min hold
    ("2026-12-31 23:45:00", 1.0, 900, [0, 900], [[35135], [0]]),  # across New Year: back to the first row
    ("2026-06-01 06:00:00", 1.0, 3600, [0, 3600], [[14616, 14617, 14618, 14619], [14620, 14621, 14622, 14623]]),
])
def test_simbench_profiles_follow_the_simulated_time(files, start, time_resolution, step_size, times, rows):
    from evagg.plugin import SimbenchGridSim
    from evagg.simulators.grids import Feeder

    net = pp.from_json(files["net"])
    pp.create_load(net, 5, p_mw=0.0)
    path = files["dir"] / "net_with_load.json"
    pp.to_json(net, str(path))
    sim = SimbenchGridSim()
    sim.init("Grid-0", time_resolution=time_resolution, step_size=step_size, start_date=start)
    sim.create(1, "Grid", json=str(path))
    # A stand-in for simbench's profiles: row r holds r/10 W for the one load.
    profile = np.arange(35136) * 1e-7
    sim.feeder = Feeder(spec="stand-in", kind="json", net=net, profiles={("load", "p_mw"): (np.array([0]),
                                                                                           profile[:, None])})
    sim.setup_done()
    for t, r in zip(times, rows):
        sim.step(t, {}, t)
        assert sim.get_net().load.at[0, "p_mw"] == pytest.approx(profile[r].mean(), rel=1e-12)


def test_grid_from_a_file_with_transformer_results(files):
    """Grid(grid=path.json, start=...) in a mosaik world: Transformer children with pandapower's res_trafo."""
    world = mosaik.World({**PY, "Grid": {"python": "evagg.plugin:SimbenchGridSim"}}, debug=False)
    try:
        grid = world.start("Grid", step_size=STEP).Grid(grid=files["net"], start=START)
        trafos = [c for c in grid.children if c.type == "Transformer"]
        assert [t.eid for t in trafos] == ["Transformer-0"] and trafos[0].extra_info["sn_mva"] == 0.4
        inp = world.start("In", step_size=STEP).Function(function=lambda t: 0.05)
        world.connect(inp, [c for c in grid.children if c.eid == "Bus-5"][0], ("value", "P_load[MW]"))
        outsim = world.start("Out")
        out = outsim.Dict()
        world.connect(trafos[0], out, "loading[%]", "P_hv[MW]")
        world.run(until=2 * STEP, print_progress=False, shutdown=False)
        data = outsim.get_dict(out.eid)
    finally:
        world.shutdown()
    net = pp.from_json(files["net"])  # the same power flow, in pandapower directly
    pp.create_load(net, 5, p_mw=0.05)
    pp.runpp(net, numba=False)
    got = data[STEP]
    assert got["P_hv[MW]"]["Grid-0.Transformer-0"] == pytest.approx(float(net.res_trafo.p_hv_mw[0]))
    assert got["P_hv[MW]"]["Grid-0.Transformer-0"] > 0.05  # the load plus the losses
    assert got["loading[%]"]["Grid-0.Transformer-0"] == pytest.approx(float(net.res_trafo.loading_percent[0]))


def test_soc_spread_through_mosaik(files):
    """soc_min/p10/p50/p90/max[%]: the percentiles of the plugged EVs' state of charge at the end of each step, the
    aggregator model's `soc_spread()`, and None while no EV is plugged in."""
    soc = ("soc_min[%]", "soc_p10[%]", "soc_p50[%]", "soc_p90[%]", "soc_max[%]")
    data, _ = run_world(files, grid=False, extra=lambda world, agg, out: world.connect(agg, out, *soc))
    fleet = read_sessions(files["sessions"])
    model = Aggregator(fleet, T0, STEP, horizon=6, method="dchr")
    source = SignalSource(read_reference(files["signal"]), T0, STEP)
    seen = 0
    for k, t in enumerate(sorted(data)):
        res = model.step(k, p_ref_kw=source.value(k))
        q = model.soc_spread()
        got = [data[t][a][AGG] for a in soc]
        if res.n_plugged == 0:
            assert q is None and got == [None] * 5
            continue
        seen += 1
        assert got == pytest.approx(q.tolist(), abs=1e-9) and got == sorted(got) and 0 <= got[0] <= got[-1] <= 100
    assert seen >= 5


def test_evagg_mosaik_picks_the_simulator(capsys):
    from evagg.plugin.__main__ import _sim_name, main

    assert _sim_name(["127.0.0.1:5555"]) == "aggregator"
    assert _sim_name(["--sim", "reference", "127.0.0.1:5555"]) == "reference"
    assert _sim_name(["-r", "--sim=collector", "127.0.0.1:5555"]) == "collector"
    assert _sim_name(["-scollector", "127.0.0.1:5555"]) == "collector"
    argv = sys.argv[:]
    try:
        assert main(["--sim", "grid", "127.0.0.1:5555"]) == 2
    finally:
        sys.argv = argv
    assert "unknown simulator 'grid'" in capsys.readouterr().err
