"""The grid operator (evagg.simulators.operator), the peak shaver (evagg.simulators.peak_shaving) and their mosaik
simulator (evagg.plugin.operator_sim).

Unit tests on a tiny radial LV grid built here (20/0.4 kV transformer, feeder A: two long cable sections, feeder C:
two short weak ones), one realistic check on simbench 1-LV-rural2 (shipped with simbench, offline), and one small
mosaik world (loopback only).
"""
from __future__ import annotations

import copy
import math
import time
import warnings

import mosaik
import numpy as np
import pytest
from mosaik.starters import PythonStarter

import mosaik_api_v3

from evagg.plugin import OperatorSim, PeakShaverSim, connect_operator, connect_peak_shaver, operator_groups
from evagg.simulators.operator import Group, GridOperator, measurements_from_net
from evagg.simulators.peak_shaving import PeakShaver, flat_level_kw

pp = pytest.importorskip("pandapower")

from nets import A2, C1, C2, radial_net  # noqa: E402  (the tiny grid)

GROUPS = [{"id": "a2", "bus": A2}, {"id": "c1", "bus": C1}, {"id": "c2", "bus": C2}]
BUS = {"a2": A2, "c1": C1, "c2": C2}


def solved(ev_kw: dict, **net_kw):
    """The tiny grid with the EV load {group id: kW} added at the groups' buses, solved."""
    net = radial_net(**net_kw)
    for gid, kw in ev_kw.items():
        pp.create_load(net, BUS[gid], p_mw=kw / 1000.0)
    pp.runpp(net, numba=False)
    return net


def limits_at(op: GridOperator, ev_kw: dict, **net_kw):
    return op.limits(ev_kw, **measurements_from_net(solved(ev_kw, **net_kw)))


# ------------------------------------------------------------------------------------------- GridOperator


def test_low_voltage_limits_the_group_below_its_power_and_the_limit_cures_it():
    ev = {"a2": 60.0, "c1": 0.0, "c2": 0.0}
    before = solved(ev)
    assert before.res_bus.vm_pu[A2] < 0.90  # 60 kW at the end of feeder A: a deep violation
    op = GridOperator(radial_net(), GROUPS)
    res = op.limits(ev, **measurements_from_net(before))
    a2 = res["a2"]
    assert a2.binding_max == f"Vm Bus-{A2} low"
    assert 0.0 <= a2.p_max_kw < 60.0
    # applied (a power flow with the group's EVs at its limit), the voltage is back above v_min, not far above
    after = solved({**ev, "a2": a2.p_max_kw})
    assert 0.95 <= after.res_bus.vm_pu.min() < 0.97
    # feeder C is not near any limit: its groups are not cut below what they draw
    assert res["c1"].p_max_kw is None or res["c1"].p_max_kw > 0
    assert res["c1"].binding_max is None or not res["c1"].binding_max.startswith(f"Vm Bus-{A2}")


def test_a_mild_shortfall_is_cured_in_one_step_by_the_linearised_limit():
    """Within the documented reach (depth <= gain * margin / (1 - gain)), one step of the rule restores v_min."""
    for kw in (30.0, 35.0, 40.0):
        ev = {"a2": kw, "c1": 0.0, "c2": 0.0}
        net = solved(ev)
        vm = net.res_bus.vm_pu[A2]
        op = GridOperator(radial_net(), GROUPS)
        lim = op.limits(ev, **measurements_from_net(net))["a2"].p_max_kw
        after = solved({**ev, "a2": lim}).res_bus.vm_pu[A2]
        assert after >= 0.95 and after > vm, (kw, vm, lim, after)


def test_an_overloaded_line_limits_only_the_groups_downstream_of_it():
    ev = {"a2": 2.0, "c1": 10.0, "c2": 70.0}
    kw = {"a_km": 0.1}  # a strong feeder A: only the line is a problem
    net = solved(ev, **kw)
    assert net.res_line.loading_percent[2] > 105 and net.res_bus.vm_pu.min() > 0.97
    groups = [{**g, "p_rated_kw": 44.0} for g in GROUPS]
    op = GridOperator(radial_net(**kw), groups, room_share="weight")
    assert set(op.downstream_groups("Line-2")) == {"c1", "c2"}
    assert set(op.downstream_groups("Line-3")) == {"c2"}
    assert set(op.downstream_groups("Transformer-0")) == {"a2", "c1", "c2"}
    res = op.limits(ev, **measurements_from_net(net))
    assert res["a2"].p_max_kw is None and res["a2"].binding_max is None
    for gid in ("c1", "c2"):
        assert res[gid].binding_max == "Line-2"
        assert 0.0 <= res[gid].p_max_kw < ev[gid]
    # the room shared by load (the default): a2 gets less of the rows it shares with c2 (the voltages behind the
    # transformer), but the cut of the line is the same and falls on c1 and c2 only
    by_load = GridOperator(radial_net(**kw), groups).limits(ev, **measurements_from_net(net))
    assert not (by_load["a2"].binding_max or "").startswith("Line")
    assert by_load["a2"].p_max_kw is None or by_load["a2"].p_max_kw > ev["a2"]
    for gid in ("c1", "c2"):
        assert by_load[gid].binding_max == "Line-2" and by_load[gid].p_max_kw == pytest.approx(res[gid].p_max_kw)
    # the same fraction cut from both (the cut follows the present load)
    cut = [1 - res[g].p_max_kw / ev[g] for g in ("c1", "c2")]
    assert cut[0] == pytest.approx(cut[1], rel=1e-9)
    after = solved({"a2": 2.0, "c1": res["c1"].p_max_kw, "c2": res["c2"].p_max_kw}, **kw)
    assert after.res_line.loading_percent[2] <= 100.0


def test_a_trafo_overload_limits_every_group_behind_it():
    ev = {"a2": 10.0, "c1": 40.0, "c2": 40.0}
    kw = {"a_km": 0.05, "c_max_i_ka": 0.5}
    net = radial_net(**kw)
    net.trafo.loc[0, "sn_mva"] = 0.08  # a small transformer: 95 kW of load overloads it
    for gid, p in ev.items():
        pp.create_load(net, BUS[gid], p_mw=p / 1000.0)
    pp.runpp(net, numba=False)
    assert net.res_trafo.loading_percent[0] > 100
    base = radial_net(**kw)
    base.trafo.loc[0, "sn_mva"] = 0.08
    res = GridOperator(base, GROUPS).limits(ev, **measurements_from_net(net))
    for gid in ev:
        assert res[gid].binding_max == "Transformer-0"
        assert res[gid].p_max_kw < ev[gid]


def test_large_headroom_gives_no_limit():
    ev = {"a2": 1.0, "c1": 1.0, "c2": 1.0}
    groups = [{**g, "p_rated_kw": 11.0} for g in GROUPS]  # each group: one 11 kW charger
    res = GridOperator(radial_net(a_km=0.05, c_max_i_ka=0.3), groups).limits(
        ev, **measurements_from_net(solved(ev, a_km=0.05, c_max_i_ka=0.3)))
    assert all(r.p_max_kw is None and r.p_min_kw is None and r.binding == "" for r in res.values())
    # without a rating, release_kw releases a large room
    res = GridOperator(radial_net(a_km=0.05, c_max_i_ka=0.3), GROUPS, release_kw=20.0).limits(
        ev, **measurements_from_net(solved(ev, a_km=0.05, c_max_i_ka=0.3)))
    assert all(r.p_max_kw is None for r in res.values())


def test_ample_headroom_gives_no_limit_even_to_groups_idle_now():
    """Release: where every group at its rating (all at once) stays within every row, nobody gets a limit, idle
    or not; the power flow with all of them at their ratings agrees."""
    kw = {"a_km": 0.05, "c_max_i_ka": 0.3}
    groups = [{**g, "p_rated_kw": 11.0} for g in GROUPS]
    for ev in ({"a2": 0.0, "c1": 0.0, "c2": 0.0}, {"a2": 0.0, "c1": 6.0, "c2": 0.0}):
        for share in ("demand", "load", "weight"):
            res = GridOperator(radial_net(**kw), groups, room_share=share).limits(
                ev, **measurements_from_net(solved(ev, **kw)))
            assert all(r.p_max_kw is None and r.p_min_kw is None and r.binding == "" for r in res.values()), share
            assert all(r.room_kw == math.inf for r in res.values())
    flat_out = solved({g["id"]: 11.0 for g in groups}, **kw)
    assert flat_out.res_bus.vm_pu.min() >= 0.96 and flat_out.res_line.loading_percent.max() <= 90.0
    # the same idle groups with chargers too large for the weak feeder C (60 kW each) do get limits there
    weak = [{**g, "p_rated_kw": 60.0} for g in GROUPS]
    ev = {"a2": 0.0, "c1": 0.0, "c2": 0.0}
    res = GridOperator(radial_net(), weak).limits(ev, **measurements_from_net(solved(ev)))
    assert res["c1"].binding_max == res["c2"].binding_max == "Line-2"
    assert 0.0 < res["c1"].p_max_kw < 60.0


def _line2_room_kw(net, gain=0.8, limit=90.0):
    """gain * the headroom of Line-2 (kW) as the module doc defines it (LV-C1; downstream buses C1, C2)."""
    vm = net.res_bus.vm_pu[C1]
    k = 100.0 / (math.sqrt(3) * 0.4 * float(net.line.max_i_ka[2]) * vm)  # % per MW
    load = net.res_line.loading_percent[2]
    l_p = k * (net.res_bus.p_mw[C1] + net.res_bus.p_mw[C2])
    m = math.sqrt(limit ** 2 - max(load ** 2 - l_p ** 2, 0.0))
    return gain * (m - l_p) / k * 1000.0


def test_a_row_near_its_limit_is_held_when_every_group_uses_its_room():
    """Line-2 at 87 % (below the 90 % it is kept to): its room is shared by the groups behind it (one of them idle);
    used in full, the rooms exactly fill the row in the linear model, and the power flow stays within it, step after
    step (the groups pressing against their limits get more of the room, the row still holds)."""
    kw = {"a_km": 0.1}
    groups = [{**g, "p_rated_kw": 44.0} for g in GROUPS] + [{"id": "c2-idle", "bus": C2, "p_rated_kw": 44.0}]
    bus = {**BUS, "c2-idle": C2}
    op = GridOperator(radial_net(**kw), groups)
    p = {"a2": 2.0, "c1": 10.0, "c2": 40.0, "c2-idle": 0.0}

    def flow(p_kw):
        net = radial_net(**kw)
        for gid, v in p_kw.items():
            pp.create_load(net, bus[gid], p_mw=v / 1000.0)
        pp.runpp(net, numba=False)
        return net

    net = flow(p)
    assert 85.0 < net.res_line.loading_percent[2] < 90.0
    for step in range(3):
        res = op.limits(p, **measurements_from_net(net))
        behind = ("c1", "c2", "c2-idle")
        assert all(res[g].binding_max == "Line-2" for g in behind)
        assert res["c2-idle"].p_max_kw > 0.0  # the idle group is not starved
        rooms = sum(res[g].p_max_kw - p[g] for g in behind)
        assert rooms == pytest.approx(_line2_room_kw(net), rel=1e-6)  # sum_g a dP_g = gain * h, linearised
        p = {g: (44.0 if r.p_max_kw is None else r.p_max_kw) for g, r in res.items()}  # everyone at its limit
        net = flow(p)
        assert net.res_line.loading_percent[2] <= 90.0 + 0.05, step
        assert net.res_bus.vm_pu.min() >= 0.96


def test_demand_sharing_favours_groups_at_their_limit_and_remembers_paused_ones():
    kw = {"a_km": 0.1}
    groups = [{"id": "c1", "bus": C1, "p_rated_kw": 44.0}, {"id": "c2", "bus": C2, "p_rated_kw": 44.0},
              {"id": "c2b", "bus": C2, "p_rated_kw": 44.0}]
    bus = {"c1": C1, "c2": C2, "c2b": C2}

    def meas(p_kw):
        net = radial_net(**kw)
        for gid, v in p_kw.items():
            pp.create_load(net, bus[gid], p_mw=v / 1000.0)
        pp.runpp(net, numba=False)
        return measurements_from_net(net)

    op = GridOperator(radial_net(**kw), groups)
    ev = {"c1": 10.0, "c2": 20.0, "c2b": 20.0}
    first = op.limits(ev, **meas(ev))
    assert first["c2"].p_max_kw == pytest.approx(first["c2b"].p_max_kw)
    # c2 draws its limit (held back by it), c2b stays below its own: c2 gets most of the room next
    ev2 = {"c1": 10.0, "c2": first["c2"].p_max_kw, "c2b": 20.0}
    nxt = op.limits(ev2, **meas(ev2))
    assert nxt["c2"].room_kw > 1.5 * nxt["c2b"].room_kw > 0
    by_load = GridOperator(radial_net(**kw), groups, room_share="load")
    by_load.limits(ev, **meas(ev))
    plain = by_load.limits(ev2, **meas(ev2))
    assert plain["c2"].room_kw < 1.1 * plain["c2b"].room_kw

    # a group whose EVs paused (20 kW a step ago, idle now) keeps a larger share than one never active; a
    # same-step loop (the same `step`) does not age that memory
    op = GridOperator(radial_net(**kw), groups)
    ev = {"c1": 10.0, "c2": 20.0, "c2b": 0.0}
    op.limits(ev, step=0, **meas(ev))
    idle = {"c1": 10.0, "c2": 0.0, "c2b": 0.0}
    again = [op.limits(idle, step=1, **meas(idle)) for _ in range(3)]
    assert again[0]["c2"].room_kw > 3 * again[0]["c2b"].room_kw > 0
    assert [r["c2"].room_kw for r in again] == pytest.approx([again[0]["c2"].room_kw] * 3)
    op.reset()
    fresh = op.limits(idle, step=2, **meas(idle))
    assert fresh["c2"].room_kw == pytest.approx(fresh["c2b"].room_kw)


def test_limits_are_never_negative_and_unloaded_groups_add_nothing_behind_a_violation():
    ev = {"a2": 60.0, "c1": 0.0, "c2": -5.0}  # c2 exports
    op = GridOperator(radial_net(), [{"id": "a2", "bus": A2}, {"id": "a2-idle", "bus": A2}, *GROUPS[1:]])
    net = solved(ev)
    res = op.limits({**ev, "a2-idle": 0.0}, **measurements_from_net(net))
    assert res["a2-idle"].p_max_kw == 0.0  # behind a violated voltage: no extra load
    assert all(r.p_max_kw is None or r.p_max_kw >= 0 for r in res.values())
    assert all(r.p_min_kw is None or r.p_min_kw <= 0 for r in res.values())


def test_high_voltage_limits_the_export():
    net = radial_net()
    pp.create_sgen(net, A2, p_mw=0.05)  # PV at the end of feeder A
    ev = {"a2": -30.0, "c1": 0.0, "c2": 0.0}  # and V2G export there
    pp.create_load(net, A2, p_mw=ev["a2"] / 1000.0)
    pp.runpp(net, numba=False)
    assert net.res_bus.vm_pu[A2] > 1.05
    res = GridOperator(radial_net(), GROUPS).limits(ev, **measurements_from_net(net))
    assert res["a2"].binding_min == f"Vm Bus-{A2} high"
    assert ev["a2"] < res["a2"].p_min_kw <= 0.0
    # without the high-voltage rule only the reverse-flow rows bound the export, further away
    free = GridOperator(radial_net(), GROUPS, v_max=None).limits(ev, **measurements_from_net(net))["a2"]
    assert not (free.binding_min or "").startswith("Vm") and free.p_min_kw < res["a2"].p_min_kw


def test_without_bus_powers_the_loading_rule_gives_less_room():
    ev = {"a2": 2.0, "c1": 10.0, "c2": 40.0}
    net = solved(ev, a_km=0.1)
    assert 50 < net.res_line.loading_percent[2] < 90
    op = GridOperator(radial_net(a_km=0.1), GROUPS)
    m = measurements_from_net(net)
    full = op.limits(ev, **m)
    m["p_bus_mw"] = None  # the flow taken as all active and forward
    blind = op.limits(ev, **m)
    assert full["c2"].binding_max == blind["c2"].binding_max == "Line-2"
    assert ev["c2"] < blind["c2"].p_max_kw < full["c2"].p_max_kw
    # measured nothing at all: no limits
    none = op.limits(ev)
    assert all(r.p_max_kw is None and r.p_min_kw is None for r in none.values())


@pytest.mark.parametrize("kw, what", [
    ({"gain": 1.5}, "gain"), ({"gain": 0}, "gain"), ({"v_min": -1}, "v_min"), ({"min_share": 1.0}, "min_share"),
    ({"v_min": 1.0, "v_max": 1.01}, "band"), ({"loading_margin": 120.0}, "loading_margin"),
    ({"release_kw": "x"}, "release_kw"), ({"room_share": "fair"}, "room_share"), ({"idle_kw": -1}, "idle_kw"),
    ({"capability": "psychic"}, "capability"), ({"memory": 0}, "memory"), ({"rated_kw": -1.0}, "rated_kw"),
])
def test_bad_parameters_name_themselves(kw, what):
    with pytest.raises(ValueError, match=what):
        GridOperator(radial_net(), GROUPS, **kw)


def test_bad_groups_and_measurements():
    with pytest.raises(ValueError, match="not buses of the grid"):
        GridOperator(radial_net(), [{"id": "x", "bus": 99}])
    with pytest.raises(ValueError, match="unique"):
        GridOperator(radial_net(), [{"id": "x", "bus": A2}, {"id": "x", "bus": C1}])
    with pytest.raises(ValueError, match="weight"):
        GridOperator(radial_net(), [{"id": "x", "bus": A2, "weight": 0}])
    assert GridOperator(radial_net(), [A2]).groups[0] == Group("bus-3", A2)
    op = GridOperator(radial_net(), GROUPS)
    with pytest.raises(ValueError, match="no present EV power"):
        op.limits({"a2": 1.0})
    with pytest.raises(ValueError, match=r"bus\(es\) \[42\]"):
        op.limits({"a2": 0.0, "c1": 0.0, "c2": 0.0}, vm_pu={42: 1.0})


def test_simbench_rural2_setup_is_fast_and_the_closed_loop_settles_within_the_limits():
    sb = pytest.importorskip("simbench")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = sb.get_simbench_net("1-LV-rural2--0-sw")
    buses = sorted(set(int(b) for b in net.load.bus))
    t0 = time.perf_counter()
    op = GridOperator(net, buses)
    assert time.perf_counter() - t0 < 2.0
    assert len(op.branch_names) == len(net.line) + len(net.trafo) and not op.unmonitored
    want = {g.id: 3.0 for g in op.groups}  # 3 kW of EVs at every load bus: too much for this grid
    p = dict(want)
    for it in range(4):
        work = copy.deepcopy(net)
        pp.create_loads(work, [g.bus for g in op.groups], p_mw=np.array([p[g.id] for g in op.groups]) / 1000.0)
        pp.runpp(work, numba=False)
        vm_min, trafo = work.res_bus.vm_pu.min(), work.res_trafo.loading_percent.max()
        if it == 0:
            assert vm_min < 0.95 and trafo > 100
        else:  # the EVs at min(want, P_max): within the band from the first limited step on
            assert vm_min >= 0.95 and trafo <= 100.0 and work.res_line.loading_percent.max() <= 100.0
        res = op.limits(p, **measurements_from_net(work))
        p = {gid: min(want[gid], math.inf if r.p_max_kw is None else r.p_max_kw) for gid, r in res.items()}


# ---------------------------------------------------------------------------------------------- PeakShaver


def test_peak_shaver_reference_is_target_minus_base():
    ps = PeakShaver(100.0, forecast_steps=3)
    assert ps.step(None, None).p_ref_kw is None  # nothing measured yet
    s = ps.step(130.0, 50.0)  # base = 80: 20 kW of valley
    assert s.base_kw == 80.0 and s.p_ref_kw == 20.0 and s.forecast_kw == [20.0, 20.0, 20.0]
    s = ps.step(150.0, -10.0)  # base = 160: 60 kW above the target
    assert s.p_ref_kw == -60.0
    assert ps.step(None, 0.0).p_ref_kw == -60.0  # a missing measurement holds the base
    half = PeakShaver(100.0, share=0.5)
    assert half.step(130.0, 50.0).p_ref_kw == 10.0


def test_peak_shaver_daily_forecast_and_auto_target():
    day = [10.0, 20.0, 40.0, 30.0]  # a "day" of 4 steps of 6 h
    ps = PeakShaver("auto", forecast_steps=2, forecast="daily", step_s=6 * 3600, initial_kw=35.0)
    for base in day:
        s = ps.step(base + 5.0, 5.0)  # the fleet drew 5 kW every step: 4 x 6 h x 5 kW = 120 kWh
    assert s.target_kw == pytest.approx(flat_level_kw(day, 120.0, 6 * 3600))
    # the next steps one day earlier: 10 and 20
    assert s.forecast_kw == pytest.approx([s.target_kw - 10.0, s.target_kw - 20.0])
    assert flat_level_kw([1.0, 2.0, 3.0, 10.0], 3.0, 3600) == pytest.approx(3.0)  # fills 1 and 2 up to 3
    assert flat_level_kw([1.0, 2.0, 3.0, 10.0], -7.0, 3600) == pytest.approx(3.0)  # shaves 10 down to 3
    assert flat_level_kw([1.0, 2.0, 3.0, 10.0], 100.0, 3600) == pytest.approx(29.0)  # everything flat


@pytest.mark.parametrize("kw, what", [
    ({"target_kw": "high"}, "target"), ({"target_kw": 1.0, "share": 1.5}, "share"),
    ({"target_kw": 1.0, "forecast": "ml"}, "forecast"), ({"target_kw": "auto"}, "step_s"),
    ({"target_kw": 1.0, "forecast_steps": -1}, "forecast_steps"),
])
def test_peak_shaver_bad_parameters(kw, what):
    with pytest.raises(ValueError, match=what):
        PeakShaver(**kw)


# ------------------------------------------------------------------------------------------------ mosaik

STEP = 900
# MW per step for the fake aggregator's EVs: a deep shortfall at A2 in the first step, then moderate load
SCHEDULE = {A2: [0.060, 0.030, 0.030, 0.030], C2: [0.005, 0.005, 0.005, 0.005]}


class FakeAggregator(mosaik_api_v3.Simulator):
    """A stand-in for AggregatorSim: an Aggregator with EVBus children that draw a fixed schedule and record the
    limits and references they receive ({time: {eid: {attr: value}}})."""

    received: dict = {}

    def __init__(self):
        super().__init__({
            "api_version": "3.0", "type": "time-based",
            "models": {
                "Aggregator": {"public": True, "params": [], "any_inputs": False,
                               "attrs": ["P[MW]", "P_ref[MW]", "P_forecast[MW]", "P_max[MW]", "P_min[MW]"]},
                "EVBus": {"public": False, "params": [], "any_inputs": False,
                          "attrs": ["P[MW]", "P_max[MW]", "P_min[MW]"]},
            },
        })
        self.k = 0
        FakeAggregator.received = {}

    def init(self, sid, time_resolution=1.0, **kw):
        self.sid = sid
        return self.meta

    def create(self, num, model, **params):
        children = [{"eid": f"EVBus-0-{b}", "type": "EVBus", "extra_info": {"bus": b, "aggregator": "Aggregator-0",
                                                                            "n_sessions": 2}} for b in SCHEDULE]
        return [{"eid": "Aggregator-0", "type": "Aggregator", "children": children, "rel": []}]

    def step(self, time, inputs, max_advance):
        self.k = time // STEP
        FakeAggregator.received[time] = {eid: {a: list(v.values()) for a, v in d.items()} for eid, d in inputs.items()}
        return time + STEP

    def get_data(self, outputs):
        p = {f"EVBus-0-{b}": s[self.k] for b, s in SCHEDULE.items()}
        return {eid: {"P[MW]": sum(p.values()) if eid == "Aggregator-0" else p[eid]} for eid in outputs}


def tiny_world(tmp_path):
    """The tiny grid saved as pandapower JSON, and a world with it (SimbenchGridSim), the stand-in aggregator and
    the OperatorSim not yet started: (world, path, grid, agg)."""
    path = tmp_path / "tiny.json"
    pp.to_json(radial_net(), str(path))
    world = mosaik.World({"Grid": {"python": "evagg.plugin:SimbenchGridSim"},
                          "Op": {"python": "evagg.plugin:OperatorSim"}, "Fake": PythonStarter(FakeAggregator),
                          "Shaver": {"python": "evagg.plugin:PeakShaverSim"}},
                         debug=False)
    try:
        grid = world.start("Grid", step_size=STEP).Grid(grid=str(path))
        agg = world.start("Fake").Aggregator()
    except BaseException:
        world.shutdown()
        raise
    return world, path, grid, agg


def test_mosaik_world_limits_reach_the_evs_one_step_later(tmp_path):
    world, path, grid, agg = tiny_world(tmp_path)
    try:
        op_sim = world.start("Op", step_size=STEP)
        groups = operator_groups([agg])
        assert [g["id"] for g in groups] == [f"{agg.sid}.EVBus-0-{b}" for b in SCHEDULE]
        op = op_sim.Operator(grid=str(path), groups=groups)
        shaver = world.start("Shaver", step_size=STEP).PeakShaver(target=0.05, forecast_steps=2)
        buses = {c.eid: c for c in grid.children}
        for child in agg.children:
            world.connect(child, buses[f"Bus-{child.extra_info['bus']}"], ("P[MW]", "P_load[MW]"))
        pairs = connect_operator(world, op, grid, [agg])
        assert set(pairs) == {g["id"] for g in groups}
        trafo = next(c for c in grid.children if c.type == "Transformer")
        connect_peak_shaver(world, shaver, trafo, agg)
        world.run(until=len(SCHEDULE[A2]) * STEP, print_progress=False)
    finally:
        try:
            world.shutdown()
        except Exception:
            pass
    got = FakeAggregator.received
    ev_a2, ev_c2 = f"EVBus-0-{A2}", f"EVBus-0-{C2}"
    # step 0: the initial data (no limit: +-inf; the shaver's initial reference 0, no forecast)
    assert got[0][ev_a2] == {"P_max[MW]": [math.inf], "P_min[MW]": [-math.inf]}
    assert got[0]["Aggregator-0"] == {"P_ref[MW]": [0.0], "P_forecast[MW]": [[]]}
    # steps 1 and 2: the limits the operator computed from the grid of the step before, as GridOperator does
    groups = operator_groups([agg])
    ref = GridOperator(radial_net(), groups)
    for k in (0, 1):
        ev_kw = {g["id"]: SCHEDULE[g["bus"]][k] * 1000 for g in groups}
        net_k = solved({"a2": ev_kw[groups[0]["id"]], "c2": ev_kw[groups[1]["id"]]})
        expected = ref.limits(ev_kw, **measurements_from_net(net_k))
        for ev in (ev_a2, ev_c2):
            lim = expected[f"{agg.sid}.{ev}"]
            for attr, kw in (("P_max[MW]", lim.p_max_kw), ("P_min[MW]", lim.p_min_kw)):
                [value] = got[(k + 1) * STEP][ev][attr]
                assert (value is None) if kw is None else value == pytest.approx(kw / 1000, rel=1e-6), (k, ev, attr)
        if k == 0:  # 60 kW at A2: far too low a voltage, a limit below the EVs' power
            assert expected[f"{agg.sid}.{ev_a2}"].binding_max == f"Vm Bus-{A2} low"
            assert 0 <= got[STEP][ev_a2]["P_max[MW]"][0] < SCHEDULE[A2][0]
        # the peak shaver's reference, one step later: target - (transformer P_hv - fleet)
        [p_ref] = got[(k + 1) * STEP]["Aggregator-0"]["P_ref[MW]"]
        [fc] = got[(k + 1) * STEP]["Aggregator-0"]["P_forecast[MW]"]
        fleet = sum(s[k] for s in SCHEDULE.values())
        assert p_ref == pytest.approx(0.05 - (net_k.res_trafo.p_hv_mw[0] - fleet), abs=1e-6)
        assert fc == pytest.approx([p_ref, p_ref])


def test_operator_sim_maps_sources_to_grid_elements_and_rejects_others(tmp_path):
    path = tmp_path / "tiny.json"
    pp.to_json(radial_net(), str(path))
    sim = OperatorSim()
    sim.init("Op-0", time_resolution=1.0, step_size=STEP)
    [op] = sim.create(1, "Operator", grid=str(path), buses=[A2, C2])
    assert [c["extra_info"]["group"] for c in op["children"]] == [f"bus-{A2}", f"bus-{C2}"]
    net = solved({"a2": 60.0, "c2": 5.0})
    meas = {"Vm[pu]": {f"Grid-0.Bus-{b}": v for b, v in net.res_bus.vm_pu.items()},
            "P[MW]": {f"Grid-0.Bus-{b}": v for b, v in net.res_bus.p_mw.items()},
            "loading[%]": {**{f"Grid-0.Line-{i}": v for i, v in net.res_line.loading_percent.items()},
                           "Grid-0.Transformer-0": net.res_trafo.loading_percent[0]}}
    p_ev = {"BusLimit-0-0": {"P_ev[MW]": {"Fake-0.EVBus-0-3": 0.06}},
            "BusLimit-0-1": {"P_ev[MW]": {"Fake-0.EVBus-0-5": 0.005}}}
    assert sim.step(0, {"Operator-0": meas, **p_ev}, 10**9) == STEP
    out = sim.get_data({"BusLimit-0-0": ["P_max[MW]", "P_min[MW]", "binding"], "Operator-0": [
        "n_limited", "Vm_min[pu]", "loading_max[%]"]})
    expected = GridOperator(radial_net(), [A2, C2]).limits({f"bus-{A2}": 60.0, f"bus-{C2}": 5.0},
                                                           **measurements_from_net(net))[f"bus-{A2}"]
    assert out["BusLimit-0-0"]["P_max[MW]"] == pytest.approx(expected.p_max_kw / 1000)
    assert out["BusLimit-0-0"]["binding"] == expected.binding
    assert out["Operator-0"]["Vm_min[pu]"] == pytest.approx(net.res_bus.vm_pu.min())
    assert out["Operator-0"]["n_limited"] >= 1
    with pytest.raises(ValueError, match="Load"):
        sim.step(STEP, {"Operator-0": {"Vm[pu]": {"Grid-0.Load-2": 1.0}}}, 10**9)
    with pytest.raises(ValueError, match="two simulators"):
        sim.step(STEP, {"Operator-0": {"Vm[pu]": {"Grid-0.Bus-2": 1.0, "Grid-1.Bus-3": 1.0}}}, 10**9)
    with pytest.raises(ValueError, match="grid is required"):
        sim.create(1, "Operator", buses=[A2])
    with pytest.raises(ValueError, match="not both"):
        sim.create(1, "Operator", grid=str(path), buses=[A2], groups=[{"id": "x", "bus": A2}])
    with pytest.raises(ValueError, match="gain"):
        sim.create(1, "Operator", grid=str(path), buses=[A2], gain=2.0)
    with pytest.raises(ValueError, match="unknown parameter"):
        sim.create(1, "Operator", grid=str(path), buses=[A2], vmin=0.9)
    shavers = PeakShaverSim()
    shavers.init("Shaver-0", time_resolution=1.0, step_size=STEP)
    with pytest.raises(ValueError, match="target"):
        shavers.create(1, "PeakShaver", target="lots")


def test_connect_operator_refuses_an_evbus_without_its_limit(tmp_path):
    world, path, grid, agg = tiny_world(tmp_path)
    try:
        op = world.start("Op", step_size=STEP).Operator(grid=str(path), buses=[A2])
        with pytest.raises(ValueError, match=rf"EVBus-0-{C2} \(bus {C2}\) has no BusLimit"):
            connect_operator(world, op, grid, [agg])
    finally:
        world.shutdown()
