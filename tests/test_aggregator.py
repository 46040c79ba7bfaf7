"""The receding-horizon aggregator (evagg.simulators.aggregator) and the results table (collector), without mosaik."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from evagg.simulators.aggregator import Aggregator, SignalSource
from evagg.simulators.times import to_datetime64, whole_seconds
from evagg.simulators.collector import TidyTable, read_table
from evagg.simulators.dispatch import dispatch
from evagg.simulators.fleet import Fleet
from evagg.simulators.reference import Reference
from evagg.simulators.synthetic import synthetic_fleet, synthetic_reference

T0 = np.datetime64("2026-06-01T00:00:00", "s")
TOL = 1e-6


def small_fleet(n: int = 12, seed: int = 4, buses=(2, 3, 4)) -> Fleet:
    """n sessions within 00:00-04:00, at whole minutes (so some arrive/leave between 15-min steps), half V2G,
    one with a target it cannot reach, one already plugged in before the start."""
    rng = np.random.default_rng(seed)
    arr_min = rng.integers(0, 90, n)
    dep_min = arr_min + rng.integers(45, 150, n)
    arr_min[0], dep_min[0] = 10, 70  # plugged in steps 1..3 only (00:15-01:00) with 15-min steps
    arr_min[1] = -30  # plugged in before the start
    cap = rng.uniform(40, 80, n).round(1)
    e0 = (cap * rng.uniform(0.2, 0.5, n)).round(3)
    target = (cap * rng.uniform(0.6, 0.9, n)).round(3)
    pc_max = rng.choice([3.7, 7.4, 11.0, 22.0], n)
    target[2] = cap[2]  # far out of reach
    pc_max[2] = 3.7
    return Fleet(
        ev_id=np.array([f"ev{i:02d}" for i in range(n)], dtype=object),
        arrival=T0 + arr_min.astype("timedelta64[m]").astype("timedelta64[s]"),
        departure=T0 + dep_min.astype("timedelta64[m]").astype("timedelta64[s]"),
        energy_initial_kwh=e0, energy_target_kwh=target, capacity_kwh=cap, p_charge_max_kw=pc_max,
        p_discharge_max_kw=np.where(np.arange(n) % 2 == 0, pc_max, 0.0),
        eta_charge=rng.uniform(0.9, 0.97, n).round(3), eta_discharge=rng.uniform(0.9, 0.97, n).round(3),
        energy_min_kwh=(0.1 * cap).round(3), bus=np.array(buses)[np.arange(n) % len(buses)].astype(np.int64),
    )


def regulation(fleet, step_s=900, n_steps=40, seed=4):
    return synthetic_reference(fleet, start=str(T0), step_s=step_s, n_steps=n_steps, seed=seed)


def check_step_feasible(agg: Aggregator, res, e_before: np.ndarray):
    """The applied step: within each EV's bounds and plugged window, never charge and discharge at once, energy
    carried exactly (Problem.energy's formula) and within [floor, cap]."""
    idx, pc, pd = res.sessions, res.pc_kw, res.pd_kw
    f = agg.fleet
    k = res.k
    plugged = (agg.first_g[idx] <= k) & (k < agg.stop_g[idx])
    assert np.all(pc >= 0) and np.all(pd >= 0)
    assert np.all(pc <= f.p_charge_max_kw[idx] + TOL) and np.all(pd <= f.p_discharge_max_kw[idx] + TOL)
    assert not np.any((pc > TOL) & (pd > TOL))
    assert np.all(pc[~plugged] == 0) and np.all(pd[~plugged] == 0)
    dt_h = agg.step_s / 3600
    delta = (f.eta_charge[idx] * dt_h) * pc - (dt_h / f.eta_discharge[idx]) * pd
    np.testing.assert_array_equal(agg.energy_kwh[idx], e_before[idx] + delta)  # exact carry
    others = np.setdiff1d(np.arange(len(f)), idx)
    np.testing.assert_array_equal(agg.energy_kwh[others], e_before[others])
    floor = np.minimum(f.energy_min_kwh, f.energy_initial_kwh)[idx]
    assert np.all(agg.energy_kwh[idx][plugged] <= f.capacity_kwh[idx][plugged] + TOL)
    assert np.all(agg.energy_kwh[idx][plugged] >= floor[plugged] - TOL)
    assert res.n_plugged == int(plugged.sum())
    assert res.p_kw == pytest.approx(float(np.sum(pc - pd)), abs=1e-9)
    np.testing.assert_allclose(res.bus_kw.sum(), res.p_kw, atol=1e-12)


@pytest.mark.parametrize("method", ["dcls", "dchr"])
def test_receding_horizon_carries_energy_exactly_and_meets_needs(method):
    fleet = small_fleet()
    ref = regulation(fleet)
    agg = Aggregator(fleet, T0, 900, horizon=6, method=method)
    src = SignalSource(ref, T0, 900)
    for k in range(20):  # 5 h: every session has left
        before = agg.energy_kwh.copy()
        res = agg.step(k, src.value(k))
        assert res.mode == "tracking" and res.p_ref_kw == ref.p_ref_kw[k]
        check_step_feasible(agg, res, before)
    assert agg.n_departed == len(fleet)
    # Every need of the spec met at departure (the reachable part of each target).
    assert agg.need_unmet_kwh == 0.0
    assert np.all(agg.final_energy_kwh >= agg.need_kwh - TOL)
    # A target is short by at most what charging flat out could not reach; the output sums it up.
    short = np.maximum(agg.target_kwh - agg.final_energy_kwh, 0)
    assert np.all(short <= agg.target_kwh - agg.need_kwh + TOL)
    assert short[2] > 1.0  # the unreachable one
    assert agg.last.shortfall_kwh == pytest.approx(short.sum())


def test_plugged_window_follows_the_spec():
    # ev00 arrives 00:10 and leaves 01:10: with 15-min steps it may draw in steps 1, 2, 3 (00:15-01:00) only.
    fleet = small_fleet()
    agg = Aggregator(fleet, T0, 900, horizon=4, method="uncontrolled")
    assert (agg.first_g[0], agg.stop_g[0]) == (1, 4)
    assert agg.first_g[1] == 0  # plugged in before the start: from step 0
    drawn = []
    for k in range(6):
        res = agg.step()
        pos = np.flatnonzero(res.sessions == 0)
        drawn.append(float(res.pc_kw[pos[0]]) if pos.size else 0.0)
    assert drawn[0] == 0.0 and drawn[4] == 0.0 and drawn[5] == 0.0
    assert all(p > 0 for p in drawn[1:4])  # uncontrolled: flat out while plugged (its need is not yet met)
    assert np.isfinite(agg.final_energy_kwh[0])  # departed after step 3


@pytest.mark.parametrize("step_s", [60, 300, 900, 3600])
def test_step_lengths(step_s):
    fleet = small_fleet()
    n_steps = int(np.ceil(5 * 3600 / step_s))
    ref = regulation(fleet, step_s=step_s, n_steps=n_steps)
    agg = Aggregator(fleet, T0, step_s, horizon=4, method="dchr")
    src = SignalSource(ref, T0, step_s)
    for k in range(n_steps):
        before = agg.energy_kwh.copy()
        res = agg.step(k, src.value(k))
        check_step_feasible(agg, res, before)
        assert res.time == T0 + np.timedelta64(k * step_s, "s")
    assert agg.need_unmet_kwh == 0.0
    assert agg.step_of_seconds(3 * step_s) == 3


@pytest.mark.parametrize("bad", [0, -900, 0.5, 900.5, "abc", float("nan")])
def test_step_must_be_whole_seconds(bad):
    with pytest.raises(ValueError, match="whole number of seconds"):
        Aggregator(small_fleet(), T0, bad)
    assert whole_seconds(900.0) == 900


def test_steps_must_be_consecutive_and_on_the_grid():
    agg = Aggregator(small_fleet(), T0, 900, method="uncontrolled")
    agg.step(0)
    with pytest.raises(ValueError, match="expected step 1"):
        agg.step(2)
    with pytest.raises(ValueError, match="not a boundary"):
        agg.step_of_seconds(1000)


def test_no_reference_is_uncontrolled_and_said_once(caplog):
    fleet = small_fleet()
    caplog.set_level(logging.INFO, logger="evagg.simulators.aggregator")
    agg = Aggregator(fleet, T0, 900, horizon=4)
    steps = [agg.step() for _ in range(20)]
    assert all(r.mode == "uncontrolled" and r.p_ref_kw is None and r.tracking_error_kw is None for r in steps)
    said = [r for r in caplog.records if "uncontrolled" in r.getMessage()]
    assert len(said) == 1
    # The same as the batch uncontrolled dispatch: flat out from arrival until the need is met.
    batch = dispatch(fleet, Reference(T0, np.timedelta64(900, "s"), np.zeros(20)), method="uncontrolled")
    np.testing.assert_allclose([r.p_kw for r in steps], batch.aggregate_kw, atol=1e-9)
    assert agg.need_unmet_kwh == 0.0


def test_missing_reference_holds_the_last_and_says_so_once(caplog):
    fleet = small_fleet()
    caplog.set_level(logging.WARNING, logger="evagg.simulators.aggregator")
    agg = Aggregator(fleet, T0, 900, horizon=4, method="dchr")
    agg.step(0, 12.5)
    r1, r2 = agg.step(1, None), agg.step(2, None)
    assert r1.mode == r2.mode == "held" and r1.p_ref_kw == r2.p_ref_kw == 12.5
    assert len([r for r in caplog.records if "holding the last" in r.getMessage()]) == 1
    assert agg.step(3, 20.0).mode == "tracking"
    with pytest.raises(ValueError, match="reference at step 4"):
        agg.step(4, float("nan"))


def test_perfect_forecast_over_the_remaining_day_matches_batch():
    fleet = synthetic_fleet(40, seed=11, start=str(T0), buses=[1, 2])
    t_start = T0 + np.timedelta64(16, "h")
    n = 24  # 16:00 - 22:00
    ref = synthetic_reference(fleet, start=str(t_start), step_s=900, n_steps=n, seed=11)
    agg = Aggregator(fleet, t_start, 900, horizon=n, method="dchr", arrivals="known")  # foresight, as the batch
    steps = agg.run(n, ref, perfect_forecast=True)
    rmse_rh = np.sqrt(np.mean((np.array([r.p_kw for r in steps]) - ref.p_ref_kw) ** 2))
    # Batch: the same fleet and signal in one plan, energies from the same start.
    batch = dispatch(fleet, ref, method="dchr")
    assert agg.need_unmet_kwh == 0.0
    assert rmse_rh <= batch.rmse * 1.05 + 1e-3
    # Persistence (the current reference held) is worse or equal.
    agg2 = Aggregator(fleet, t_start, 900, horizon=8, method="dchr", arrivals="known")
    steps2 = agg2.run(n, ref)
    rmse_hold = np.sqrt(np.mean((np.array([r.p_kw for r in steps2]) - ref.p_ref_kw) ** 2))
    assert rmse_hold >= rmse_rh - 1e-6


def test_forecast_argument_wins_and_is_padded():
    fleet = small_fleet()
    agg = Aggregator(fleet, T0, 900, horizon=5, method="dchr")
    res = agg.step(0, 10.0, forecast_kw=[20.0, 30.0])  # steps 3, 4 hold 30
    assert res.mode == "tracking"
    given = Reference(T0, np.timedelta64(900, "s"), np.full(40, 15.0))
    agg2 = Aggregator(fleet, T0, 900, horizon=5, method="dchr", forecast=given)
    assert agg2.forecast.values(1, 4).tolist() == [15.0] * 4
    agg2.step(0, 10.0)


def test_limits_are_hard_bounds_and_the_grid_comes_first():
    fleet = small_fleet()
    ref = regulation(fleet)
    src = SignalSource(ref, T0, 900)
    agg = Aggregator(fleet, T0, 900, horizon=6, method="dchr")
    p_max, p_min = 60.0, -5.0  # uncontrolled peaks at 91 kW; the needs fit under 60 kW (not under 45)
    limited = 0
    for k in range(20):
        before = agg.energy_kwh.copy()
        res = agg.step(k, src.value(k) * 3, p_min_kw=p_min, p_max_kw=p_max)  # asks for far more than allowed
        check_step_feasible(agg, res, before)
        assert p_min - 1e-6 <= res.p_kw <= p_max + 1e-6
        limited += res.limited
    assert limited > 0
    assert agg.need_unmet_kwh == 0.0
    # A limit that the departure needs cannot respect: the limit holds, the needs give way and it is reported.
    agg = Aggregator(fleet, T0, 900, horizon=6, method="dchr")
    results = [agg.step(k, 0.0, p_max_kw=0.0) for k in range(20)]
    assert all(r.p_kw <= 1e-6 for r in results)
    assert any(r.needs_lowered_kwh > 0 for r in results)
    assert agg.need_unmet_kwh > 0
    with pytest.raises(ValueError, match="P_min"):
        agg.step(20, 0.0, p_min_kw=5.0, p_max_kw=1.0)


@pytest.mark.parametrize("method", ["dcls", "uncontrolled"])
def test_bus_limits_bound_the_evs_at_that_bus_only(method):
    """A P_max on one bus holds there, in every step, while the other buses are free to take the rest."""
    fleet = small_fleet()
    src = SignalSource(regulation(fleet), T0, 900)
    free = Aggregator(fleet, T0, 900, horizon=6, method=method)
    agg = Aggregator(fleet, T0, 900, horizon=6, method=method)
    bus = int(agg.buses[0])
    cap = 3.0
    binding = 0
    for k in range(20):
        ref = None if method == "uncontrolled" else src.value(k)
        r_free = free.step(k, ref)
        res = agg.step(k, ref, bus_limits={bus: (None, cap)})
        assert res.bus_kw[0] <= cap + 1e-6
        binding += r_free.bus_kw[0] > cap + 1e-6
    assert binding > 0  # the limit changed something
    with pytest.raises(ValueError, match="no EVs"):
        agg.step(20, 0.0, bus_limits={999: (None, 1.0)})


def test_buses_mapping_and_grid_check():
    fleet = small_fleet()
    agg = Aggregator(fleet, T0, 900)
    assert agg.buses.tolist() == [2, 3, 4]
    mapping = {str(e): 7 for e in fleet.ev_id}
    agg = Aggregator(fleet, T0, 900, bus=mapping)
    assert agg.buses.tolist() == [7]
    with pytest.raises(ValueError, match="no bus for session"):
        Aggregator(fleet, T0, 900, bus={"ev00": 1})
    with pytest.raises(ValueError, match=r"bus\(es\) \[4\] which the grid does not have"):
        Aggregator(fleet, T0, 900, grid_buses=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="non-negative integer"):
        Aggregator(fleet, T0, 900, bus=[1.5] * len(fleet))
    none = Aggregator(Fleet(**{**fleet.__dict__, "bus": None}), T0, 900, method="uncontrolled")
    res = none.step()
    assert none.buses.size == 0 and res.bus_kw.size == 0


def test_unknown_method_and_bad_horizon():
    with pytest.raises(ValueError, match="unknown dispatch method"):
        Aggregator(small_fleet(), T0, 900, method="magic")
    with pytest.raises(ValueError, match="horizon"):
        Aggregator(small_fleet(), T0, 900, horizon=0)


def test_signal_source_resampling_and_coverage():
    ref = Reference(T0, np.timedelta64(900, "s"), np.arange(8, dtype=float) * 1.1)
    same = SignalSource(ref, T0, 900)
    assert same.values(0, 8).tolist() == ref.p_ref_kw.tolist()  # exact, no arithmetic
    finer = SignalSource(ref, T0, 300)  # 5-min steps: each 15-min value held
    assert finer.values(0, 6).tolist() == [0.0, 0.0, 0.0, 1.1, 1.1, 1.1]
    coarser = SignalSource(ref, T0, 1800)  # 30-min steps: the mean
    np.testing.assert_allclose(coarser.values(0, 4), [0.55, 2.75, 4.95, 7.15])
    late = SignalSource(ref, T0 + np.timedelta64(1800, "s"), 900)
    assert late.value(0) == ref.p_ref_kw[2] and late.n_steps == 6
    with pytest.raises(ValueError, match="does not cover the simulated period"):
        same.check_covers(9)
    same.check_covers(8)
    with pytest.raises(ValueError, match="has no value for"):
        same.value(8)
    assert same.values(6, 5, clip=True).tolist() == ref.p_ref_kw[6:].tolist()
    early = SignalSource(ref, T0 - np.timedelta64(900, "s"), 900)
    with pytest.raises(ValueError):
        early.value(0)
    assert to_datetime64("2026-06-01T02:00:00+02:00") == T0


def test_tidy_table_csv_is_flushed_as_it_goes(tmp_path, caplog):
    path = tmp_path / "out.csv"
    table = TidyTable(path, start=T0)
    table.add_step(0, [("a.x", "P[MW]", 0.1), ("a.x", "n", 3), ("a.x", "on", True), ("a.x", "none", None)])
    frame = read_table(path)  # readable before closing: a crash keeps it
    assert frame["value"].tolist() == [0.1, 3.0, 1.0]
    assert frame["time"].tolist() == ["2026-06-01T00:00:00"] * 3
    caplog.set_level(logging.WARNING)
    table.add_step(900, [("a.x", "P[MW]", 1 / 3), ("a.x", "list", [1, 2])])
    table.add_step(1800, [("a.x", "list", [1, 2])])
    table.close()
    frame = read_table(path)
    assert list(frame.columns) == ["time", "entity", "attribute", "value"]
    assert frame["value"].iloc[3] == 1 / 3  # exact round trip
    assert frame["time"].iloc[3] == "2026-06-01T00:15:00"
    assert len([r for r in caplog.records if "not a number" in r.getMessage()]) == 1


def test_tidy_table_parquet(tmp_path):
    path = tmp_path / "out.parquet"
    table = TidyTable(path, row_group_rows=2)
    partial = tmp_path / "out.parquet.partial"
    table.add_step(0, [("e", "P[MW]", 0.5)])
    assert partial.exists() and not path.exists()
    table.add_step(5, [("e", "P[MW]", 0.25)])
    table.add_step(10, [("e", "P[MW]", float("nan"))])
    assert table.n_rows == 2  # one row group written as it goes, the third row still buffered
    table.close()
    assert path.exists() and not partial.exists()
    frame = pd.read_parquet(path)
    assert frame["value"].tolist()[:2] == [0.5, 0.25] and np.isnan(frame["value"].iat[2])
    assert frame["time"].tolist() == ["0", "5", "10"]


def test_end_shrinks_the_horizon_and_exact_future_matches_batch():
    """Closed loop, re-planned every step over the whole remaining period with the exact future: the batch
    dispatch's tracking (the issue's target: RMSE within 1 %)."""
    fleet = synthetic_fleet(30, seed=5, start=str(T0))
    t_start = T0 + np.timedelta64(15, "h")
    n = 24
    ref = synthetic_reference(fleet, start=str(t_start), step_s=900, n_steps=n, seed=5)
    end = t_start + np.timedelta64(n * 900, "s")
    agg = Aggregator(fleet, t_start, 900, horizon=n, method="dchr", end=end, arrivals="known")  # the future known
    steps = agg.run(n, ref, perfect_forecast=True)
    rmse = np.sqrt(np.mean((np.array([r.p_kw for r in steps]) - ref.p_ref_kw) ** 2))
    batch = dispatch(fleet, ref, method="dchr")
    assert rmse <= batch.rmse * 1.01 + 1e-6
    assert agg.need_unmet_kwh == 0.0
    with pytest.raises(ValueError, match="step boundary"):
        Aggregator(fleet, t_start, 900, end=t_start + np.timedelta64(100, "s"))


def test_the_same_step_again_re_plans_it_from_its_start():
    """A same-step loop with the grid steps the aggregator again at the same step with new limits: the result is
    exactly that of stepping it once with those limits."""
    fleet = small_fleet()
    src = SignalSource(regulation(fleet), T0, 900)
    once = Aggregator(fleet, T0, 900, horizon=6, method="dcls")
    twice = Aggregator(fleet, T0, 900, horizon=6, method="dcls")
    for k in range(12):
        a = once.step(k, src.value(k), p_max_kw=25.0)
        twice.step(k, src.value(k))  # first iteration: no limit yet
        b = twice.step(k, src.value(k), p_max_kw=25.0)  # the operator's answer: the same step again
        assert b.p_kw == pytest.approx(a.p_kw, abs=1e-9)
        np.testing.assert_allclose(twice.energy_kwh, once.energy_kwh, atol=1e-9)
    assert twice.need_unmet_kwh == once.need_unmet_kwh
    with pytest.raises(ValueError, match="one after the other"):
        twice.step(5, 0.0)


def test_limits_set_by_one_branch_are_pooled_over_its_buses():
    """Upper limits that the operator set from the same transformer row are one limit on the buses' sum (the plan
    splits the room); a voltage-set limit stays on its bus."""
    fleet = small_fleet()
    src = SignalSource(regulation(fleet), T0, 900)
    agg = Aggregator(fleet, T0, 900, horizon=6, method="dcls")
    b0, b1, b2 = (int(b) for b in agg.buses)
    pooled_over = 0
    for k in range(16):
        res = agg.step(k, src.value(k) * 3, bus_limits={b0: (None, 4.0), b1: (None, 4.0), b2: (None, 2.0)},
                       limit_by={b0: "Transformer-0", b1: "Transformer-0", b2: "Vm Bus-9 low"})
        p0, p1, p2 = res.bus_kw
        assert p0 + p1 <= 8.0 + 1e-6 and p2 <= 2.0 + 1e-6
        pooled_over += max(p0, p1) > 4.0 + 1e-6  # one bus took more than its own share of the pool
    assert pooled_over > 0
