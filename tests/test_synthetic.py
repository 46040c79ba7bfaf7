"""Synthetic fleets and reference signals (evagg.simulators.synthetic)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from evagg.simulators.fleet import Fleet
from evagg.simulators.problem import Problem
from evagg.simulators.synthetic import CHARGER_KW, synthetic_fleet, synthetic_reference
from evagg.simulators.tables import validate_sessions

START = np.datetime64("2026-06-01T00:00:00", "s")


def frame_of(fleet: Fleet) -> pd.DataFrame:
    return fleet.to_frame()


@pytest.fixture(scope="module")
def big():
    return synthetic_fleet(4000, seed=11)


def test_same_seed_same_fleet():
    a, b = synthetic_fleet(300, seed=5, buses=range(4)), synthetic_fleet(300, seed=5, buses=range(4))
    pd.testing.assert_frame_equal(frame_of(a), frame_of(b), check_exact=True)
    c = synthetic_fleet(300, seed=6, buses=range(4))
    assert not np.array_equal(a.capacity_kwh, c.capacity_kwh)
    assert not np.array_equal(a.arrival, c.arrival)


def test_other_options_leave_times_and_batteries_alone():
    a = synthetic_fleet(200, seed=5)
    b = synthetic_fleet(200, seed=5, v2g_share=0.9, buses=[3, 4])
    for name in ("arrival", "departure", "capacity_kwh", "energy_initial_kwh", "p_charge_max_kw", "eta_charge"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_ids_and_shape():
    f = synthetic_fleet(12, seed=1)
    assert len(f) == 12
    assert list(f.ev_id[:3]) == ["ev00000", "ev00001", "ev00002"] and f.ev_id[-1] == "ev00011"
    assert f.bus is None
    assert list(f.extra.columns) == ["pattern"]
    assert len(synthetic_fleet(0, seed=1)) == 0
    wide = synthetic_fleet(100001, seed=1, mix=(1, 0, 0))
    assert wide.ev_id[-1] == "ev100000" and len(set(wide.ev_id)) == 100001


def test_passes_validation(big):
    clean = validate_sessions(big.to_frame(), source="synthetic")
    assert len(clean) == len(big)


def test_batteries_and_energies_plausible(big):
    cap = big.capacity_kwh
    assert cap.min() >= 40 and cap.max() <= 100
    assert len(np.unique(np.round(cap, -1))) >= 5  # several sizes, not one
    soc0 = big.energy_initial_kwh / cap
    assert soc0.min() >= 0.2 - 1e-3 and soc0.max() <= 0.6 + 1e-3
    tgt = big.energy_target_kwh / cap
    assert tgt.min() >= 0.7 - 1e-3 and tgt.max() <= 1.0 + 1e-3
    np.testing.assert_allclose(big.energy_min_kwh, 0.1 * cap, atol=1e-3)
    for eta in (big.eta_charge, big.eta_discharge):
        assert eta.min() >= 0.9 and eta.max() <= 0.97
        assert eta.std() > 0.015  # roughly uniform over the range


def test_patterns_times_and_chargers(big):
    pattern = big.extra["pattern"].to_numpy()
    day0 = START.astype("datetime64[D]")
    arr_h = (big.arrival - day0).astype(np.int64) / 3600
    dep_h = (big.departure - day0).astype(np.int64) / 3600
    expect = {  # arrival hours, departure hours (from day 0), allowed chargers
        "home": ((17, 21), (24 + 6, 24 + 9), {3.7, 7.4, 11.0}),
        "workplace": ((7, 10), (15, 19), {11.0, 22.0}),
        "depot": ((19, 23), (24 + 5, 24 + 7), {22.0}),
    }
    for name, ((a0, a1), (d0, d1), chargers) in expect.items():
        m = pattern == name
        assert m.sum() > 100
        assert arr_h[m].min() >= a0 and arr_h[m].max() <= a1
        assert dep_h[m].min() >= d0 and dep_h[m].max() <= d1
        assert set(big.p_charge_max_kw[m]) == chargers
    assert set(big.p_charge_max_kw) <= set(CHARGER_KW)
    assert np.all(big.departure > big.arrival)
    assert big.arrival.dtype == np.dtype("datetime64[s]")


def test_shares(big):
    n = len(big)
    pattern = big.extra["pattern"].to_numpy()
    for name, share in zip(("home", "workplace", "depot"), (0.5, 0.35, 0.15)):
        # within 5 standard deviations of the binomial
        assert abs(np.mean(pattern == name) - share) < 5 * np.sqrt(share * (1 - share) / n)
    v2g = big.p_discharge_max_kw > 0
    assert abs(v2g.mean() - 0.5) < 5 * np.sqrt(0.25 / n)
    np.testing.assert_array_equal(big.p_discharge_max_kw[v2g], big.p_charge_max_kw[v2g])
    assert np.all(big.p_discharge_max_kw[~v2g] == 0)
    assert np.all(synthetic_fleet(100, seed=2, v2g_share=0).p_discharge_max_kw == 0)
    f = synthetic_fleet(100, seed=2, v2g_share=1)
    np.testing.assert_array_equal(f.p_discharge_max_kw, f.p_charge_max_kw)
    only_depot = synthetic_fleet(50, seed=2, mix=(0, 0, 1))
    assert set(only_depot.extra["pattern"]) == {"depot"}


def test_days_and_start():
    f = synthetic_fleet(1000, seed=4, days=3, start="2026-07-10T06:00:00")
    day = (f.arrival.astype("datetime64[D]") - np.datetime64("2026-07-10")).astype(int)
    assert set(day) == {0, 1, 2}
    assert np.all(np.bincount(day) > 250)
    # a departure past the horizon is kept as is
    assert f.departure.max() > np.datetime64("2026-07-13T00:00:00")
    g = synthetic_fleet(10, seed=4, start="2026-07-10T02:00:00+02:00")  # converted to UTC: 2026-07-10T00:00
    h = synthetic_fleet(10, seed=4, start="2026-07-10T00:00:00")
    np.testing.assert_array_equal(g.arrival, h.arrival)


def test_buses():
    f = synthetic_fleet(500, seed=9, buses=[2, 7, 11])
    assert f.bus.dtype == np.int64
    assert set(f.bus) == {2, 7, 11}
    assert np.all(np.bincount(f.bus)[[2, 7, 11]] > 100)
    with pytest.raises(ValueError):
        synthetic_fleet(5, seed=9, buses=[-1, 2])
    with pytest.raises(ValueError):
        synthetic_fleet(5, seed=9, buses=[])


@pytest.mark.parametrize("kwargs", [dict(n=-1), dict(days=0), dict(v2g_share=1.5), dict(mix=(1, 1)),
                                    dict(mix=(0, 0, 0)), dict(mix=(1, -1, 1))])
def test_bad_arguments(kwargs):
    args = dict(n=5, seed=1) | kwargs
    with pytest.raises(ValueError):
        synthetic_fleet(**args)


# ----------------------------------------------------------------------------------------------- references


def _plugged_power(fleet, ref):
    prob = Problem.build(fleet, ref.start, ref.step, ref.n_steps)
    plugged = prob.plugged
    return (plugged * prob.pc_max[:, None]).sum(axis=0), (plugged * prob.pd_max[:, None]).sum(axis=0), prob


def test_reference_deterministic_and_on_its_grid(fleet50, reference50):
    again = synthetic_reference(fleet50, start="2026-06-01T00:00:00", step_s=900, n_steps=96, seed=7)
    np.testing.assert_array_equal(again.p_ref_kw, reference50.p_ref_kw)
    other = synthetic_reference(fleet50, start="2026-06-01T00:00:00", step_s=900, n_steps=96, seed=8)
    assert not np.array_equal(other.p_ref_kw, reference50.p_ref_kw)
    assert reference50.start == START and reference50.step == np.timedelta64(900, "s")
    assert reference50.n_steps == 96 and np.all(np.isfinite(reference50.p_ref_kw))
    np.testing.assert_array_equal(reference50.p_ref_kw, np.round(reference50.p_ref_kw, 3))


def test_regulation_within_the_plugged_power_range(fleet50, reference50):
    up, down, prob = _plugged_power(fleet50, reference50)
    p = reference50.p_ref_kw
    assert np.all(p <= up + 1e-3) and np.all(p >= -down - 1e-3)
    assert np.all(p[up + down == 0] == 0)
    active = up > 0
    assert active.sum() > 40 and np.mean(p[active]) > 0  # a charging fleet: mostly a load
    assert np.std(np.diff(p[active])) > 0  # the noise is there
    # roughly the fleet's need: within a factor of the energy it must take over the day
    need_kwh = float(np.sum(np.maximum(prob.need_end - prob.e0, 0) / prob.eta_c))
    energy_kwh = float(np.sum(p) * prob.dt_h)
    assert 0.3 * need_kwh < energy_kwh < 3 * need_kwh


def test_surplus_asks_for_more_than_the_fleet_can_take(fleet50, surplus50, reference50):
    up, _, _ = _plugged_power(fleet50, surplus50)
    hours = (surplus50.times - START).astype(np.int64) / 3600
    block = (hours >= 10) & (hours < 16)
    p = surplus50.p_ref_kw
    assert np.all(p[block] >= 1.5 * up[block] - 1e-3)
    assert np.all(p[block] > 0)
    room = np.sum((fleet50.capacity_kwh - fleet50.energy_initial_kwh) / fleet50.eta_charge)
    assert np.sum(p[block]) * surplus50.dt_h >= 1.5 * room - 1e-2
    np.testing.assert_array_equal(p[~block], reference50.p_ref_kw[~block])


def test_surplus_block_on_every_day():
    fleet = synthetic_fleet(30, seed=3, days=2)
    ref = synthetic_reference(fleet, step_s=3600, n_steps=48, seed=3, kind="surplus")
    up, _, _ = _plugged_power(fleet, ref)
    hours = np.arange(48) % 24
    block = (hours >= 10) & (hours < 16)
    assert np.all(ref.p_ref_kw[block] >= 1.5 * up[block] - 1e-3)
    room = np.sum((fleet.capacity_kwh - fleet.energy_initial_kwh) / fleet.eta_charge)
    for day in (0, 1):
        assert ref.p_ref_kw[day * 24 + 10: day * 24 + 16].sum() >= 1.5 * room - 1e-2


def test_reference_without_a_fleet():
    r = synthetic_reference(None, step_s=600, n_steps=144, seed=1, scale_kw=50)
    assert r.n_steps == 144 and r.step == np.timedelta64(600, "s")
    assert 25 < r.p_ref_kw.mean() < 75
    s = synthetic_reference(None, step_s=600, n_steps=144, seed=1, scale_kw=50, kind="surplus")
    np.testing.assert_array_equal(s.p_ref_kw[60:96], 150.0)  # 10-16 h


def test_reference_bad_arguments(fleet50):
    with pytest.raises(ValueError):
        synthetic_reference(fleet50, kind="solar")
    with pytest.raises(ValueError):
        synthetic_reference(fleet50, step_s=0)
    with pytest.raises(ValueError):
        synthetic_reference(fleet50, n_steps=0)
