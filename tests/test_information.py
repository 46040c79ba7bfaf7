"""What the aggregator knows: arrivals (on_plug, known, forecast), declared vs actual departures and noisy reference
forecasts, from the engine (evagg.simulators.aggregator) to the mosaik signal and `evagg run`'s options."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from evagg.plugin.reference_sim import ReferenceSim
from evagg.scenarios import report
from evagg.scenarios.errors import ScenarioError
from evagg.scenarios.folder import read_json
from evagg.scenarios.options import Options, Policy
from evagg.scenarios.cli import main as evagg
from evagg.simulators.aggregator import ARRIVALS, Aggregator, ghost_sessions
from evagg.simulators.dispatch import dispatch
from evagg.simulators.fleet import Fleet
from evagg.simulators.reference import Reference, forecast_errors, spread_kw
from evagg.simulators.synthetic import synthetic_fleet, synthetic_reference
from evagg.simulators.tables import (InputError, read_dispatch, read_sessions, write_reference,
                                     write_sessions)

START = "2026-06-01T00:00:00"
STEP = 900
H = 8


@pytest.fixture(scope="module")
def fleet():
    return synthetic_fleet(30, seed=5, start=START, days=1, v2g_share=0.5)


@pytest.fixture(scope="module")
def reference(fleet):
    return synthetic_reference(fleet, start=START, step_s=STEP, n_steps=96 + H, seed=5, kind="regulation")


def one_session(arrival, departure, declared=None, target=30.0) -> Fleet:
    t = lambda s: np.array([np.datetime64(s, "s")])  # noqa: E731
    return Fleet(ev_id=np.array(["a"], dtype=object), arrival=t(arrival), departure=t(departure),
                 energy_initial_kwh=np.array([10.0]), energy_target_kwh=np.array([target]),
                 capacity_kwh=np.array([60.0]), p_charge_max_kw=np.array([11.0]), p_discharge_max_kw=np.array([0.0]),
                 eta_charge=np.array([0.95]), eta_discharge=np.array([0.95]), energy_min_kwh=np.array([0.0]),
                 departure_declared=None if declared is None else t(declared))


# --------------------------------------------------------------------------------------------------- arrivals


def test_on_plug_plans_no_ev_before_it_arrives(fleet, reference):
    seen = {}
    for arrivals in ("on_plug", "known"):
        agg = Aggregator(fleet, START, STEP, horizon=H, method="edf", arrivals=arrivals)
        results = agg.run(96, reference)
        early = [int(np.sum(agg.first_g[r.sessions] > r.k)) for r in results]
        seen[arrivals] = sum(early)
        if arrivals == "on_plug":
            assert agg.arrivals == "on_plug"
            for r in results:  # planned: plugged in at step k and not yet gone
                assert np.all(agg.first_g[r.sessions] <= r.k) and np.all(agg.stop_g[r.sessions] > r.k)
    assert seen["on_plug"] == 0 and seen["known"] > 0  # known plans EVs ahead of their arrival; on_plug never
    assert Aggregator(fleet, START, STEP).arrivals == ARRIVALS[0] == "on_plug"  # the default


def test_known_plans_the_sessions_of_the_horizon(fleet, reference):
    """known is the foresight of before: the plan of step k holds exactly the sessions with a plugged step in
    [k, k + h) (the spec's convention computed here from the fleet's own times)."""
    agg = Aggregator(fleet, START, STEP, horizon=H, method="edf", arrivals="known")
    t = np.datetime64(START, "s") + np.timedelta64(STEP, "s") * np.arange(96 + H)
    plugged = (fleet.arrival[:, None] <= t[None, :]) & (t[None, :] + np.timedelta64(STEP, "s")
                                                         <= fleet.departure[:, None])
    for r in agg.run(96, reference):
        assert r.sessions.tolist() == np.flatnonzero(plugged[:, r.k:r.k + H].any(axis=1)).tolist()


def test_without_arrivals_to_come_on_plug_is_known(fleet, reference):
    """Every session plugged in from the start: nothing to foresee, so the two settings give the same steps."""
    early = dataclasses.replace(fleet, arrival=np.full(len(fleet), np.datetime64(START, "s")))
    runs = [Aggregator(early, START, STEP, horizon=H, arrivals=a).run(24, reference, perfect_forecast=True)
            for a in ("on_plug", "known")]
    assert [r.p_kw for r in runs[0]] == [r.p_kw for r in runs[1]]
    assert [r.sessions.tolist() for r in runs[0]] == [r.sessions.tolist() for r in runs[1]]


def test_forecast_ghosts_are_seeded_and_follow_the_arrival_profile(fleet):
    g1, b1 = ghost_sessions(fleet, START, seed=7, bus=np.arange(len(fleet)))
    g2, b2 = ghost_sessions(fleet, START, seed=7, bus=np.arange(len(fleet)))
    g3, _ = ghost_sessions(fleet, START, seed=8)
    assert len(g1) > 0 and b1.tolist() == b2.tolist()
    assert g1.arrival.tolist() == g2.arrival.tolist() and g1.energy_target_kwh.tolist() == g2.energy_target_kwh.tolist()
    assert g1.arrival.tolist() != g3.arrival.tolist()
    start = np.datetime64(START, "s")
    assert np.all(g1.arrival > start) and np.all(g1.departure > g1.arrival)
    hour = lambda t: ((t - t.astype("datetime64[D]")) // np.timedelta64(3600, "s")).astype(int)  # noqa: E731
    arriving = fleet.arrival > start
    # each ghost copies a session arriving in the same hour of day (its bus, energies and stay)
    src = b1
    assert np.all(hour(g1.arrival) == hour(fleet.arrival[src])) and np.all(arriving[src])
    assert np.all(g1.departure - g1.arrival == fleet.departure[src] - fleet.arrival[src])
    assert np.all(g1.energy_initial_kwh == fleet.energy_initial_kwh[src])
    late = dataclasses.replace(fleet, arrival=np.full(len(fleet), start))  # no arrival after the start: no ghost
    assert len(ghost_sessions(late, START, seed=7)[0]) == 0


def test_forecast_plans_ghosts_ahead_only_and_applies_real_evs(fleet, reference):
    agg = Aggregator(fleet, START, STEP, horizon=H, method="edf", arrivals="forecast", arrivals_seed=3)
    results = agg.run(96, reference)
    assert agg.n_ghosts > 0 and max(r.n_ghosts for r in results) > 0
    for r in results:
        assert np.all(agg.first_g[r.sessions] <= r.k)  # the real EVs planned are plugged in
        assert r.pc_kw.shape == r.sessions.shape  # and only they get power
        planned = (agg._ghost_first > r.k) & (agg._ghost_first < r.k + H)
        assert r.n_ghosts == int(planned.sum())  # ghosts only while their arrival lies ahead in the horizon
    again = Aggregator(fleet, START, STEP, horizon=H, method="edf", arrivals="forecast", arrivals_seed=3)
    assert [r.p_kw for r in again.run(96, reference)] == [r.p_kw for r in results]


# ----------------------------------------------------------------------------------------- declared departures


def test_an_early_departure_is_counted_as_shortfall():
    """Declared 14:00, gone at 10:00: following a 0 kW reference the plan charges as late as the declared time
    allows, so the EV leaves short; knowing the real departure it leaves with its target."""
    ref = Reference(np.datetime64(START, "s"), np.timedelta64(STEP, "s"), np.zeros(96))
    told = one_session("2026-06-01T08:00", "2026-06-01T10:00", declared="2026-06-01T14:00")
    short = Aggregator(told, START, STEP, horizon=32)
    short.run(48, ref, perfect_forecast=True)
    assert short.n_departed == 1
    e_dep = short.final_energy_kwh[0]
    assert short.shortfall_kwh == pytest.approx(30.0 - e_dep) and short.shortfall_kwh > 1.0
    # the need (what flat out until 10:00 gives, 30 kWh reachable) is unmet by the same amount
    assert short.need_unmet_kwh == pytest.approx(short.shortfall_kwh)
    for truth in (one_session("2026-06-01T08:00", "2026-06-01T10:00"),  # no declaration: declared = actual
                  told):  # known: the real departure, whatever was declared
        agg = Aggregator(truth, START, STEP, horizon=32, arrivals="known" if truth is told else "on_plug")
        agg.run(48, ref, perfect_forecast=True)
        assert agg.shortfall_kwh == 0.0 and agg.final_energy_kwh[0] >= 30.0 - 1e-6


def test_staying_past_the_declared_departure_is_idle_plugged_time():
    ref = Reference(np.datetime64(START, "s"), np.timedelta64(STEP, "s"), np.full(96, 5.0))
    agg = Aggregator(one_session("2026-06-01T08:00", "2026-06-01T14:00", declared="2026-06-01T10:00"), START, STEP,
                     horizon=16)
    results = agg.run(64, ref, perfect_forecast=True)
    assert agg.shortfall_kwh == 0.0 and agg.final_energy_kwh[0] >= 30.0 - 1e-6  # charged by the declared 10:00
    after = [r for r in results if 40 <= r.k < 56]  # 10:00 to 14:00: plugged in, not planned, drawing nothing
    assert all(r.p_kw == 0.0 and r.n_plugged == 1 and r.sessions.size == 0 for r in after)
    assert agg.idle_plugged_h == pytest.approx(4.0) and results[-1].idle_plugged_h == pytest.approx(4.0)
    assert results[56].n_plugged == 0


def test_the_sessions_table_reads_departure_declared(tmp_path):
    head = ("ev_id,arrival,departure,energy_initial_kwh,energy_target_kwh,capacity_kwh,p_charge_max_kw,"
            "p_discharge_max_kw,eta_charge,eta_discharge,departure_declared\n")
    rows = ("a,2026-06-01T08:00:00,2026-06-01T12:00:00,10,40,60,11,0,0.95,0.95,2026-06-01T14:00:00.7\n"
            "b,2026-06-01T08:00:00,2026-06-01T12:00:00,10,40,60,11,0,0.95,0.95,\n")
    path = tmp_path / "s.csv"
    path.write_text(head + rows)
    f = read_sessions(path)
    assert f.departure_declared.tolist() == [np.datetime64("2026-06-01T14:00:00"), np.datetime64("2026-06-01T12:00")]
    write_sessions(f, tmp_path / "again.csv")  # written and read back alike
    assert read_sessions(tmp_path / "again.csv").departure_declared.tolist() == f.departure_declared.tolist()
    assert read_sessions_without(tmp_path, head, rows).departure_declared is None
    for bad, what in (("2026-06-01T07:00:00", "must be after the arrival 2026-06-01T08:00:00"),
                      ("soon", "is not a valid ISO 8601 time")):
        path.write_text(head + rows.replace("2026-06-01T14:00:00.7", bad))
        with pytest.raises(InputError) as e:
            read_sessions(path)
        assert str(e.value).startswith(f"{path} line 2, column departure_declared: value {bad} {what}")
    with pytest.raises(ValueError, match="departure_declared"):
        one_session("2026-06-01T08:00", "2026-06-01T10:00", declared="2026-06-01T07:00")


def flat_reference(kw: float, hours: int = 8, at: str = "2026-06-01T08:00") -> Reference:
    return Reference(np.datetime64(at, "s"), np.timedelta64(STEP, "s"), np.full(hours * 4, kw))


def test_the_batch_dispatch_plans_with_the_declared_departure_and_counts_leaving_early():
    """`dispatch` (evagg dispatch): declared 14:00, gone at 10:00, a 0 kW reference: the plan spreads the charge up
    to 14:00, the EV leaves at 10:00 with what it got until then, and that shortfall is counted; no power after it
    left. Without the declaration (or knowing the real departure) it leaves with its target."""
    told = one_session("2026-06-01T08:00", "2026-06-01T10:00", declared="2026-06-01T14:00")
    res = dispatch(told, flat_reference(0.0))
    s = res.summary()
    assert s["departures"] == "declared" and s["sessions_leaving_before_declared"] == 1
    assert res.plan.problem.stop[0] == 24 and res.problem.stop[0] == 8  # planned to 14:00, plugged to 10:00
    assert np.all(res.pc[:, 8:] == 0.0) and np.all(res.plan.pc[:, :8] == res.pc[:, :8])  # the plan, cut at 10:00
    e_dep = res.energy[0, 7]
    assert s["shortfall_kwh"] == pytest.approx(30.0 - e_dep) and s["shortfall_kwh"] > 1.0
    assert s["shortfall_by_early_departures_kwh"] == s["shortfall_kwh"]
    assert not any(s["violations"].values())  # the plan was feasible: leaving early is the driver's doing
    assert res.plan.summary()["shortfall_kwh"] == 0.0 and s["planned_sse_kw2"] == res.plan.sse
    assert len(res.to_frame()) == 8  # the rows are the steps the EV was plugged in
    honest = dispatch(one_session("2026-06-01T08:00", "2026-06-01T10:00"), flat_reference(0.0))
    assert honest.summary()["departures"] == "actual" and honest.plan is None
    assert honest.summary()["shortfall_kwh"] == 0.0 and honest.energy[0, 7] >= 30.0 - 1e-6


def test_the_batch_dispatch_counts_staying_past_the_declared_departure_as_idle():
    res = dispatch(one_session("2026-06-01T08:00", "2026-06-01T14:00", declared="2026-06-01T10:00"),
                   flat_reference(5.0))
    s = res.summary()
    assert s["sessions_leaving_after_declared"] == 1 and s["idle_plugged_h"] == pytest.approx(4.0)
    assert s["shortfall_kwh"] == 0.0 and res.energy[0, 7] >= 30.0 - 1e-6  # charged by the declared 10:00
    assert np.all(res.pc[0, 8:] == 0.0) and np.all(res.energy[0, 8:24] == res.energy[0, 7])  # plugged, idle
    table = res.to_frame()
    assert len(table) == 24 and table["p_charge_kw"].iloc[8:].eq(0.0).all()  # still plugged in until 14:00


def test_evagg_dispatch_honours_departure_declared(tmp_path, capsys):
    told = one_session("2026-06-01T08:00", "2026-06-01T10:00", declared="2026-06-01T14:00")
    write_sessions(told, tmp_path / "s.csv")
    write_reference(flat_reference(0.0), tmp_path / "r.csv")
    code = evagg(["dispatch", "--sessions", str(tmp_path / "s.csv"), "--signal", str(tmp_path / "r.csv"),
                  "--out", str(tmp_path / "out.csv")])
    out, err = capsys.readouterr()
    assert code == 0, err
    s = __import__("json").loads(out)
    assert s["departures"] == "declared" and s["shortfall_kwh"] > 1.0 and s["sessions_leaving_before_declared"] == 1
    result = read_dispatch(tmp_path / "out.csv")
    assert result["time"].max() < np.datetime64("2026-06-01T10:00")  # no row after the EV left


def read_sessions_without(tmp_path, head, rows):
    path = tmp_path / "plain.csv"
    path.write_text("\n".join(line.rsplit(",", 1)[0] for line in (head + rows).splitlines()) + "\n")
    return read_sessions(path)


# ------------------------------------------------------------------------------------------ noisy forecasts


def test_forecast_errors_are_seeded_and_grow_with_the_lead():
    a, b = forecast_errors(5, 16, STEP, 10.0, seed=1), forecast_errors(5, 16, STEP, 10.0, seed=1)
    assert a.tolist() == b.tolist() and a.tolist() != forecast_errors(5, 16, STEP, 10.0, seed=2).tolist()
    assert a.tolist() != forecast_errors(6, 16, STEP, 10.0, seed=1).tolist()  # each step its own forecast
    assert forecast_errors(5, 16, STEP, 0.0, seed=1).tolist() == [0.0] * 16
    many = np.array([forecast_errors(k, 16, STEP, 10.0, seed=1) for k in range(2000)])
    std = many.std(axis=0)
    # sqrt(lead / 1 h): 5 kW at 15 min, 10 kW at 1 h, 20 kW at 4 h (2000 draws: within a few %)
    assert std[0] == pytest.approx(5.0, rel=0.1) and std[3] == pytest.approx(10.0, rel=0.1)
    assert std[15] == pytest.approx(20.0, rel=0.1)


def signal_forecasts(error, seed, n_steps=20):
    sim = ReferenceSim()
    sim.init("Ref", time_resolution=1.0, step_size=STEP, start_date="2026-06-01T16:00:00")  # EVs plugged in
    sim.create(1, "Signal", kind="regulation", n_evs=20, seed=2, forecast_steps=H - 1, until=n_steps * STEP,
               forecast_error=error, forecast_seed=seed)
    out = []
    for k in range(n_steps):
        sim.step(k * STEP, {}, 0)
        out.append(sim.get_data({"Signal-0": ["P_ref[MW]", "P_forecast[MW]"]})["Signal-0"])
    return out


def test_the_signal_sends_a_seeded_noisy_forecast():
    perfect, noisy, again = signal_forecasts(0.0, 1), signal_forecasts(50.0, 1), signal_forecasts(50.0, 1)
    assert noisy == again  # the same seed, the same forecasts
    assert [d["P_ref[MW]"] for d in noisy] == [d["P_ref[MW]"] for d in perfect]  # the reference itself is exact
    assert all(d["P_forecast[MW]"] != p["P_forecast[MW]"] for d, p in zip(noisy, perfect))
    assert noisy != signal_forecasts(50.0, 2)
    for k in range(len(perfect) - 1):  # perfect: the next steps' own values
        assert perfect[k]["P_forecast[MW]"][0] == perfect[k + 1]["P_ref[MW]"]


def test_a_noisy_forecast_tracks_worse_than_a_perfect_one(fleet, reference):
    """Median over seeds of the tracking RMSE with a noisy forecast (50 % of the signal's spread at 1 h) against
    the same run with the future known exactly, over the day (the evening's swings need planning ahead)."""
    n = 96
    src = reference.p_ref_kw
    sigma = 0.5 * spread_kw(src[:n])

    def rmse(seed):
        agg = Aggregator(fleet, START, STEP, horizon=H, arrivals="known")
        errs = []
        for k in range(n):
            ahead = src[k + 1:k + H]
            if seed is not None:
                ahead = ahead + forecast_errors(k, ahead.size, STEP, sigma, seed)
            r = agg.step(k, src[k], forecast_kw=ahead)
            errs.append(r.tracking_error_kw)
        return float(np.sqrt(np.mean(np.square(errs))))

    perfect = rmse(None)
    noisy = [rmse(seed) for seed in range(3)]
    assert np.median(noisy) > perfect


# -------------------------------------------------------------------------------------------- options, policies


def test_options_and_policy_settings():
    opts = Options.make()
    assert opts.arrivals == "on_plug" and opts.forecast == "perfect" and opts.as_dict()["arrivals"] == "on_plug"
    assert Options.make(forecast="noisy", forecast_error="25").forecast_error == 25.0
    with pytest.raises(ScenarioError, match=r"arrivals must be on_plug or known or forecast"):
        Options.make(arrivals="psychic")
    with pytest.raises(ScenarioError, match=r"forecast error \(--forecast-error\) must be between 0 and 1000"):
        Options.make(forecast_error=-1)
    p = Policy("dcls+grid@known@noisy")
    assert (p.method, p.grid_aware, p.arrivals, p.forecast, p.base) == ("dcls", True, "known", "noisy", "dcls+grid")
    informed = p.informed(opts)
    assert (informed.arrivals, informed.forecast) == ("known", "noisy") and opts.arrivals == "on_plug"
    assert Policy("dcls").informed(opts) is opts
    for bad in ("dcls@maybe", "dcls@known@on_plug", "no_evs@known", "peak_shaving@noisy"):
        with pytest.raises(ScenarioError, match=bad.split("@")[0]):
            Policy(bad)
    assert Options.make("grid_impact", policies="dcls,dcls@known").policies == ("dcls", "dcls@known")


def test_grid_impact_compares_information_by_default():
    """Without --policies, grid_impact runs the method also with the other information (the cost of information in
    every comparison), against the run's own settings; none where the setting would change nothing."""
    tail = lambda **kw: tuple(p for p in Options.make("grid_impact", **kw).policies if "@" in p)  # noqa: E731
    assert tail() == ("dcls@known", "dcls@noisy")
    assert tail(method="edf") == ("edf@known", "edf@noisy") and tail(method="edf")[0].base == "edf"
    assert tail(arrivals="known") == ("dcls@on_plug", "dcls@noisy")  # the run knows: the variant does not
    assert tail(forecast="noisy") == ("dcls@known", "dcls@perfect")
    assert Options.make("grid_impact", method="peak_shaving").policies[-1] == "peak_shaving@known"  # own forecast
    assert not any("@" in p for p in Options.make("grid_impact", method="uncontrolled").policies)  # plans nothing
    assert Options.make("grid_impact", policies="dcls,edf").policies == ("dcls", "edf")  # as given


def test_grid_impact_compares_information_settings(tmp_path):
    pytest.importorskip("simbench")
    pytest.importorskip("mosaik_components.pandapower")
    from evagg.scenarios import grid_impact

    top = grid_impact.main(out=str(tmp_path / "gi"), evs=8, aggregators=1, steps=3, start="2026-01-14T18:00:00",
                           seed=3, policies="dcls,dcls@known", plots=False, progress=False)
    assert top["complete"] and top["options"]["arrivals"] == "on_plug"
    runs = {p: __import__("json").loads((tmp_path / "gi" / p / "summary.json").read_text())
            for p in ("dcls", "dcls@known")}
    assert runs["dcls"]["information"]["arrivals"] == "on_plug"
    assert runs["dcls@known"]["information"]["arrivals"] == "known"
    assert runs["dcls@known"]["options"]["arrivals"] == "known"
    cost = top["information_costs"]["dcls@known"]
    assert cost["vs"] == "dcls"
    fk, fb = runs["dcls@known"]["figures"], runs["dcls"]["figures"]
    assert cost["tracking_rmse_kw"] == pytest.approx(fk["tracking_rmse_kw"] - fb["tracking_rmse_kw"], abs=1e-6)
    assert "dcls@known - dcls" in top["table"]
    assert report.remake(tmp_path / "gi") == top["table"]  # `evagg report DIR` prints the same, costs included
    assert read_json(tmp_path / "gi" / "summary.json")["information_costs"] == top["information_costs"]
