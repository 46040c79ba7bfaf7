"""The scenarios (evagg.scenarios: feeder_day, grid_impact, remote) and `evagg run` / `evagg report`, on the default
simbench feeder for a few steps with a small fleet. The figures of summary.json are recomputed here from the tidy
results table with plain pandas, and the grid's bus powers are checked against simbench's profiles plus the
dispatch, bus by bus.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("simbench")
pytest.importorskip("mosaik_components.pandapower")

from evagg.scenarios import feeder_day, grid_impact, remote  # noqa: E402
from evagg.scenarios.cli import SUBCOMMANDS, main  # noqa: E402
from evagg.scenarios.errors import ScenarioError  # noqa: E402
from evagg.scenarios.inputs import build_fleet  # noqa: E402
from evagg.scenarios.options import DEFAULT_GRID, Options  # noqa: E402
from evagg.simulators.grids import load_grid, profile_rows  # noqa: E402
from evagg.simulators.reference import Reference  # noqa: E402
from evagg.simulators.tables import read_sessions, write_reference  # noqa: E402
from cli import run_cli  # noqa: E402

START = "2026-01-14T18:00:00"  # the evening: EVs arrive and charge
STEPS = 6
SMALL = dict(evs=16, aggregators=2, steps=STEPS, start=START, seed=3, v_band=(1.0, 1.02))
PLOTS = ("power.png", "energy.png", "voltage.png", "loading.png")


def tidy(out) -> pd.DataFrame:
    return pd.read_csv(Path(out) / "results.csv", dtype={"time": str, "entity": str, "attribute": str},
                       float_precision="round_trip")


def pivot(table, model, attribute) -> pd.DataFrame:
    sel = table[table["entity"].str.contains(f".{model}-", regex=False) & (table["attribute"] == attribute)]
    return sel.pivot(index="time", columns="entity", values="value").sort_index()


def summary_of(out) -> dict:
    return json.loads((Path(out) / "summary.json").read_text())



@pytest.fixture(scope="module")
def day(tmp_path_factory):
    out = tmp_path_factory.mktemp("scen") / "day"
    summary = feeder_day.main(out=str(out), **SMALL)
    return out, summary


# ----------------------------------------------------------------------------------------------- feeder_day


def test_feeder_day_writes_a_complete_results_folder(day):
    out, summary = day
    assert summary["complete"] is True and summary["steps_done"] == STEPS
    for name in ("results.csv", "timing.csv", "summary.json", *PLOTS, "inputs/sessions-0.csv", "inputs/sessions-1.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    on_disk = summary_of(out)
    assert on_disk["complete"] is True and on_disk["figures"] == summary["figures"]
    assert on_disk["options"]["n_steps"] == STEPS and on_disk["grid"]["grid"] == DEFAULT_GRID
    table = tidy(out)
    assert list(table.columns) == ["time", "entity", "attribute", "value"]
    times = sorted(table["time"].unique())
    assert len(times) == STEPS and times[0] == START and times[1] == "2026-01-14T18:15:00"
    kinds = set(table["entity"].str.extract(r"\.(\w+)-")[0])
    assert {"Aggregator", "EVBus", "Signal", "Bus", "Line", "Transformer", "ExternalGrid"} <= kinds
    # solve times only in timing.csv (they differ from run to run)
    assert "solve_time[s]" not in set(table["attribute"])
    timing = pd.read_csv(out / "timing.csv")
    assert set(timing["attribute"]) == {"solve_time[s]"} and len(timing) == 2 * STEPS
    # the aggregators' inputs are sessions tables of the spec, with the bus of each session
    for a in summary["aggregators"]:
        fleet = read_sessions(out / a["sessions"])
        assert len(fleet) == a["n_sessions"] and set(fleet.bus) <= set(load_grid(DEFAULT_GRID).load_buses)


def test_summary_figures_are_recomputed_from_the_table(day):
    out, _ = day
    fig = summary_of(out)["figures"]
    table = tidy(out)
    dt_h = 0.25
    vm = pivot(table, "Bus", "Vm[pu]")
    assert fig["steps"] == STEPS
    assert fig["v_min_pu"] == pytest.approx(vm.min().min(), abs=1e-6)
    assert fig["v_max_pu"] == pytest.approx(vm.max().max(), abs=1e-6)
    outside = ((vm < 1.0) | (vm > 1.02)).to_numpy()
    assert fig["voltage_violations"] == int(outside.sum()) > 0  # the narrow test band is crossed
    assert fig["buses_violating"] == int(outside.any(axis=0).sum())
    assert fig["v_min_at"][0] == vm.min().idxmin().split(".", 1)[1]
    assert fig["line_loading_max_pct"] == pytest.approx(pivot(table, "Line", "loading[%]").max().max(), abs=1e-4)
    trafo = pivot(table, "Transformer", "loading[%]")
    assert trafo.shape[1] == 1 and fig["trafo_loading_max_pct"] == pytest.approx(trafo.max().max(), abs=1e-4)
    assert fig["feeder_import_max_mw"] == pytest.approx(pivot(table, "ExternalGrid", "P[MW]").sum(axis=1).max(),
                                                        abs=1e-6)
    p_kw = pivot(table, "Aggregator", "P[MW]").sum(axis=1) * 1000
    ref_kw = pivot(table, "Aggregator", "P_ref[MW]").sum(axis=1) * 1000
    assert fig["ev_peak_kw"] == pytest.approx(p_kw.max(), abs=1e-3)
    assert fig["ev_energy_kwh"] == pytest.approx(p_kw.sum() * dt_h, abs=1e-3)
    assert fig["tracking_rmse_kw"] == pytest.approx(np.sqrt(((p_kw - ref_kw) ** 2).mean()), abs=1e-4)
    short = pivot(table, "Aggregator", "shortfall[MWh]")
    assert fig["energy_shortfall_kwh"] == pytest.approx(short.iloc[-1].sum() * 1000, abs=1e-4)
    # The aggregators followed their signals: the references they report are the signals' values.
    sig_kw = pivot(table, "Signal", "P_ref[MW]").sum(axis=1) * 1000
    np.testing.assert_allclose(ref_kw, sig_kw, rtol=0, atol=1e-9)
    assert p_kw.max() > 5  # the evening fleet draws power


def test_the_grid_sees_the_dispatch_bus_by_bus(day):
    """Each bus's power in the power flow = simbench's load profiles at the simulated time - its PV + the EVs the
    aggregators put there (sum of their EVBus children), step by step."""
    out, _ = day
    table = tidy(out)
    feeder = load_grid(DEFAULT_GRID)
    net = feeder.net
    bus_p = pivot(table, "Bus", "P[MW]")
    ev = pivot(table, "EVBus", "P[MW]")
    agg = pivot(table, "Aggregator", "P[MW]")
    # The EVBus children add up to their aggregator.
    for a in agg.columns:
        sid = a.split(".")[0]
        kids = [c for c in ev.columns if c.startswith(sid + ".")]
        np.testing.assert_allclose(ev[kids].sum(axis=1), agg[a], rtol=0, atol=1e-12)
    ev_at = {}
    for col in ev.columns:
        bus = int(col.rsplit("-", 1)[1])
        ev_at[bus] = ev_at.get(bus, 0) + ev[col]
    assert len(ev_at) >= 4 and set(ev_at) <= set(feeder.load_buses)
    load_idx, load_p = feeder.profiles[("load", "p_mw")]
    sgen_idx, sgen_p = feeder.profiles[("sgen", "p_mw")]
    load_bus = net.load.bus.loc[load_idx].to_numpy()
    sgen_bus = net.sgen.bus.loc[sgen_idx].to_numpy()
    slack = set(net.ext_grid.bus)  # whose power includes the external grid's
    for t in bus_p.index:
        ts = pd.Timestamp(t)
        row = int((ts.replace(year=2016) - pd.Timestamp("2016-01-01")) / pd.Timedelta(minutes=15))
        for bus in bus_p.columns:
            b = int(bus.rsplit("-", 1)[1])
            if b in slack:
                continue
            expected = load_p[row][load_bus == b].sum() - sgen_p[row][sgen_bus == b].sum()
            if b in ev_at:
                expected += ev_at[b][t]
            assert bus_p.at[t, bus] == pytest.approx(expected, abs=1e-9), (t, bus)
    # and the EVs are a visible share of the feeder's import
    assert sum(v.max() for v in ev_at.values()) > 0.01


def test_same_seed_same_bytes_other_seed_other_results(day, tmp_path):
    out, _ = day
    again = tmp_path / "again"
    feeder_day.main(out=str(again), **SMALL)
    for name in ("results.csv", *PLOTS, "inputs/sessions-0.csv", "inputs/sessions-1.csv"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    a, b = summary_of(out), summary_of(again)
    assert a.pop("timing").keys() == b.pop("timing").keys()
    assert a == b
    other = tmp_path / "other"
    feeder_day.main(out=str(other), plots=False, **{**SMALL, "seed": 4})
    assert (other / "results.csv").read_bytes() != (out / "results.csv").read_bytes()


def test_fleet_buses_and_sessions_already_plugged_in():
    opts = Options.make(evs=20, aggregators=2, seed=5, start="2026-01-14T12:00:00")
    buses = np.array([3, 7, 11])
    fleet = build_fleet(opts, 0, 10, buses)
    start = np.datetime64("2026-01-14T12:00:00")
    end = start + np.timedelta64(1, "D")
    assert set(fleet.bus) <= set(buses)
    ev = np.array([e.split("-")[0] for e in fleet.ev_id])
    for e in np.unique(ev):  # an EV keeps its bus and its V2G ability from day to day
        assert len(set(fleet.bus[ev == e])) == 1
        assert len(set(fleet.p_discharge_max_kw[ev == e] > 0)) == 1
    assert np.all(fleet.departure > start) and np.all(fleet.arrival < end) and np.all(fleet.arrival >= start)
    early = fleet.arrival == start  # workplace sessions from the morning
    assert early.any()
    assert np.all(fleet.energy_initial_kwh <= np.maximum(fleet.energy_target_kwh, fleet.energy_initial_kwh) + 1e-9)
    assert build_fleet(opts, 1, 10, buses).ev_id.tolist() != [] and not np.array_equal(
        build_fleet(opts, 1, 10, buses).energy_initial_kwh[:5], fleet.energy_initial_kwh[:5])


def test_profile_rows_follow_the_calendar():
    assert profile_rows("2026-01-14 12:00:00", 0, 900, 35136).tolist() == [13 * 96 + 48]
    assert profile_rows("2026-01-14 12:00:00", 3600, 3600, 35136).tolist() == [13 * 96 + 52 + i for i in range(4)]
    assert profile_rows("2026-01-14 12:00:00", 0, 300, 35136).tolist() == [13 * 96 + 48]
    assert profile_rows("2026-12-31 23:45:00", 900, 900, 35136).tolist() == [0]  # New Year: back to the start


def test_a_signal_csv_is_shared_by_the_aggregators(tmp_path):
    step = np.timedelta64(900, "s")
    values = np.round(40 + 30 * np.sin(np.arange(40) / 3), 3)
    write_reference(Reference(np.datetime64(START), step, values), tmp_path / "signal.csv")
    out = tmp_path / "csv"
    feeder_day.main(out=str(out), signal=str(tmp_path / "signal.csv"), plots=False,
                    **{**SMALL, "evs": 9, "aggregators": 3})
    ref = pivot(tidy(out), "Signal", "P_ref[MW]")
    assert ref.shape[1] == 3
    np.testing.assert_allclose(ref.sum(axis=1).to_numpy() * 1000, values[:STEPS], atol=1e-6)
    s = summary_of(out)
    assert [a["evs"] for a in s["aggregators"]] == [3, 3, 3] and s["aggregators"][0]["signal"] == "inputs/signal-0.csv"


def test_a_pandapower_json_grid(tmp_path):
    pp = pytest.importorskip("pandapower")
    net = pp.create_empty_network()
    b0, b1 = pp.create_bus(net, 20.0), pp.create_bus(net, 0.4)
    pp.create_ext_grid(net, b0)
    pp.create_transformer(net, b0, b1, "0.4 MVA 20/0.4 kV")
    prev = b1
    for _ in range(3):
        b = pp.create_bus(net, 0.4)
        pp.create_line(net, prev, b, 0.2, "NAYY 4x150 SE")
        pp.create_load(net, b, p_mw=0.01)
        prev = b
    pp.to_json(net, str(tmp_path / "net.json"))
    out = tmp_path / "json"
    s = feeder_day.main(out=str(out), grid=str(tmp_path / "net.json"), plots=False, **SMALL)
    assert s["complete"] and s["grid"]["kind"] == "json" and s["grid"]["profiles"] is False
    buses = {int(c.rsplit("-", 1)[1]) for c in pivot(tidy(out), "EVBus", "P[MW]").columns}
    assert buses <= {2, 3, 4}


# ----------------------------------------------------------------------------------------------- grid_impact, remote


def test_grid_impact_side_by_side(day, tmp_path):
    out = tmp_path / "impact"
    top = grid_impact.main(out=str(out), **SMALL)
    policies = ["uncontrolled", "edf", "dcls", "dcls+grid", "peak_shaving", "dcls@known", "dcls@noisy"]
    assert top["complete"] is True and top["policies_run"] == policies
    for name in ("summary.json", "comparison.csv", "policies.png"):
        assert (out / name).is_file()
    comparison = pd.read_csv(out / "comparison.csv", index_col="figure")
    assert list(comparison.columns) == policies
    for p in policies:
        sub = summary_of(out / p)
        assert sub["complete"] and sub["method"] == p and all((out / p / f).is_file() for f in PLOTS)
        assert sub["figures"]["need_unmet_kwh"] >= 0.0 and sub["figures"]["trafo_overload_steps"] >= 0
        # the folder's figures are the run's, plus (grid-aware policies) the tracking given up to the limits
        assert {k: v for k, v in top["figures"][p].items() if k != "tracking_rmse_penalty_kw"} == sub["figures"]
        assert comparison.at["max line loading [%]", p] == pytest.approx(sub["figures"]["line_loading_max_pct"])
    # the same fleet and reference: the dcls run is feeder_day's, value for value
    assert (out / "dcls" / "results.csv").read_bytes() == (day[0] / "results.csv").read_bytes()
    # the household load under each bus is the same whatever the EVs do: bus power - EV power agrees
    base = None
    slack = [f"Grid-0.Bus-{b}" for b in load_grid(DEFAULT_GRID).net.ext_grid.bus]
    for p in policies:
        table = tidy(out / p)
        bus = pivot(table, "Bus", "P[MW]").drop(columns=slack)
        ev = pivot(table, "EVBus", "P[MW]")
        for col in ev.columns:
            b = f"Grid-0.Bus-{int(col.rsplit('-', 1)[1])}"
            bus[b] = bus[b] - ev[col]
        base = bus if base is None else base
        np.testing.assert_allclose(bus.to_numpy(), base.to_numpy(), rtol=0, atol=1e-9)
    f = top["figures"]
    assert f["uncontrolled"]["tracking_rmse_kw"] > f["dcls"]["tracking_rmse_kw"]
    # what the limits cost in tracking: the same reference with and without the operator
    assert f["dcls+grid"]["tracking_rmse_penalty_kw"] == pytest.approx(
        f["dcls+grid"]["tracking_rmse_kw"] - f["dcls"]["tracking_rmse_kw"], abs=1e-3)
    assert "RMSE given up to the limits [kW]" in top["table"]
    assert "uncontrolled" in top["table"] and "max transformer loading [%]" in top["table"]
    # the cost of information, by default: foresight of the arrivals and a noisy forecast against dcls as run
    costs = top["information_costs"]
    assert list(costs) == ["dcls@known", "dcls@noisy"] and all(c["vs"] == "dcls" for c in costs.values())
    assert summary_of(out / "dcls")["information"]["arrivals"] == "on_plug"
    assert summary_of(out / "dcls@known")["information"]["arrivals"] == "known"
    assert summary_of(out / "dcls@noisy")["information"]["forecast"] == "noisy"
    for variant, c in costs.items():
        assert c["tracking_rmse_kw"] == pytest.approx(f[variant]["tracking_rmse_kw"] - f["dcls"]["tracking_rmse_kw"],
                                                      abs=1e-6)
        assert f"{variant} - dcls" in top["table"]


def test_remote_aggregators_give_the_same_results(day, tmp_path):
    out = tmp_path / "remote"
    s = remote.main(out=str(out), **SMALL)
    assert s["complete"] and s["scenario"] == "remote" and s["options"]["remote"] is True
    local = tidy(day[0])
    pd.testing.assert_frame_equal(tidy(out).reset_index(drop=True), local.reset_index(drop=True))
    assert all((out / f).is_file() for f in PLOTS)


# ----------------------------------------------------------------------------------------------- evagg run / report


def test_run_and_report_subcommands_are_registered():
    assert {"run", "report", "dispatch", "fleet"} <= set(SUBCOMMANDS)


def test_evagg_run_prints_the_summary_table(tmp_path, capsys):
    out = tmp_path / "cli"
    code, stdout, stderr = run_cli(capsys, "run", "feeder_day", "--evs", 4, "--steps", 3, "--start", START,
                                   "--out", out, "--seed", 2, "--no-plots")
    assert code == 0, stderr
    assert "tracking RMSE [kW]" in stdout and "max transformer loading [%]" in stdout
    assert stdout.strip().endswith(f"results: {out}")
    s = summary_of(out)
    assert s["complete"] and s["options"]["evs"] == 4 and s["options"]["seed"] == 2 and s["figures"]["steps"] == 3
    # no information option: an EV is planned once plugged in, the reference's next steps known, and it says so
    assert s["options"]["arrivals"] == s["information"]["arrivals"] == "on_plug"
    assert s["information"]["forecast"] == "perfect" and s["information"]["departures"] == "actual"
    assert not any((out / f).exists() for f in PLOTS)
    # `evagg report DIR` makes the plots and the same table again
    code, again, stderr = run_cli(capsys, "report", out)
    assert code == 0, stderr
    assert all((out / f).is_file() for f in PLOTS)
    assert again == stdout
    assert summary_of(out) == s


def test_report_remakes_plots_and_summary_byte_for_byte(day, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(day[0], copy)
    before = {f: (copy / f).read_bytes() for f in (*PLOTS, "summary.json")}
    for f in PLOTS:
        (copy / f).unlink()
    s = summary_of(copy)
    s["figures"] = {}
    (copy / "summary.json").write_text(json.dumps(s))
    code, stdout, stderr = run_cli(capsys, "report", copy)
    assert code == 0, stderr
    for f, data in before.items():
        assert (copy / f).read_bytes() == data, f


def test_evagg_run_as_a_new_user_would(tmp_path):
    """The installed console script, in a fresh folder, with the default results folder results/<scenario>-<time>."""
    exe = shutil.which("evagg")
    cmd = [exe] if exe else [sys.executable, "-m", "evagg.scenarios.cli"]
    proc = subprocess.run(cmd + ["run", "--evs", "4", "--steps", "2", "--start", START, "--no-plots"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    folders = list((tmp_path / "results").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("feeder_day-")
    assert summary_of(folders[0])["complete"] is True
    assert "tracking RMSE" in proc.stdout and "Traceback" not in proc.stderr


BAD = [
    (["run", "nonsense"], "unknown scenario 'nonsense'"),
    (["run", "--grid", "1-XX-nowhere--0-sw"], "neither a simbench code"),
    (["run", "--grid", "missing.json"], "missing.json: no such file"),
    (["run", "--grid", "FULL"], "FULL: is a directory"),
    (["run", "--grid", "BADJSON"], "not a pandapower network"),
    (["run", "--evs", "0"], "--evs"),
    (["run", "--evs", "many"], "whole number"),
    (["run", "--days", "0"], "--days"),
    (["run", "--step-min", "7"], "does not divide a day"),
    (["run", "--step-min", "0.5"], "--step-min"),
    (["run", "--v2g-share", "1.5"], "--v2g-share"),
    (["run", "--seed", "-1"], "--seed"),
    (["run", "--method", "magic"], "unknown policy 'magic'"),
    (["run", "--steps", "1000"], "--steps"),
    (["run", "--v-band", "1.05,0.95"], "voltage band"),
    (["run", "--start", "soon"], "not an ISO 8601 time"),
    (["run", "--start", "2026-01-14T12:07:00"], "boundary"),
    (["run", "--signal", "nope.csv"], "nope.csv: no such file"),
    (["run", "grid_impact", "--policies", "edf,magic"], "magic"),
    (["run", "--out", "FULL"], "holds results (use --overwrite"),
    (["run", "--out", "FOREIGN"], "not an evagg results folder"),  # not a hint to --overwrite, which refuses too
    (["run", "--out", "FOREIGN", "--overwrite"], "not an evagg results folder"),
    (["run", "--evs", "3", "--aggregators", "5"], "--aggregators 5 is more than the 3 EV(s)"),
    (["report", "NOWHERE"], "no such folder"),
    (["report", "FOREIGN"], "not an evagg results folder"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_one_line_no_output(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "BADJSON.json").write_text('{"not": "a net"}')
    (tmp_path / "FULL").mkdir()
    (tmp_path / "FULL" / "summary.json").write_text("{}")
    (tmp_path / "FOREIGN").mkdir()
    (tmp_path / "FOREIGN" / "thesis.tex").write_text("precious")
    argv = [a.replace("BADJSON", "BADJSON.json") for a in argv]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    code, stdout, stderr = run_cli(capsys, *argv, "--no-progress") if argv[0] == "run" else run_cli(capsys, *argv)
    assert code == 2
    assert stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("evagg: error: "), stderr
    assert message in stderr
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing written, nothing removed


def test_overwrite_replaces_a_results_folder(day, tmp_path, capsys):
    out = tmp_path / "old"
    shutil.copytree(day[0], out)
    (out / "stale.txt").write_text("from an older run")
    code, _, stderr = run_cli(capsys, "run", "--evs", 4, "--steps", 2, "--start", START, "--out", out, "--overwrite",
                              "--no-plots")
    assert code == 0, stderr
    assert not (out / "stale.txt").exists() and not (out / "power.png").exists()
    assert summary_of(out)["options"]["evs"] == 4


def press_ctrl_c_after(monkeypatch, n: int) -> None:
    """A real SIGINT to this process once the results table has `n` steps."""
    from evagg.scenarios import bookkeeping

    real = bookkeeping.Progress.__call__

    def step(self, time_):
        real(self, time_)
        if self.done == n:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(bookkeeping.Progress, "__call__", step)


def test_ctrl_c_leaves_an_incomplete_folder_with_the_steps_done(tmp_path, capsys, monkeypatch):
    """SIGINT after 4 steps: exit 130, summary.json says complete: false, results.csv has the 4 steps."""
    press_ctrl_c_after(monkeypatch, 4)
    handler = signal.getsignal(signal.SIGINT)
    out = tmp_path / "cut"
    code, stdout, stderr = run_cli(capsys, "run", "--evs", 4, "--steps", 12, "--start", START, "--out", out)
    assert code == 130
    said = [line for line in stderr.splitlines() if not line.startswith("evagg: warning: ")]
    assert len(said) == 1 and said[0].startswith("evagg: interrupted after 4 of 12 steps"), stderr
    s = summary_of(out)
    assert s["complete"] is False and s["interrupted"] is True and s["steps_done"] == 4
    assert s["figures"]["steps"] == 4
    assert tidy(out)["time"].nunique() == 4
    assert not (out / "power.png").exists()
    # the handler is gone: Ctrl-C is Python's again
    assert signal.getsignal(signal.SIGINT) is handler
    code, _, stderr = run_cli(capsys, "report", out)  # plots of what there is
    assert code == 0, stderr
    assert (out / "power.png").is_file() and summary_of(out)["complete"] is False


def test_ctrl_c_in_the_second_policy_of_grid_impact(tmp_path, capsys, monkeypatch):
    press_ctrl_c_after(monkeypatch, 6)
    out = tmp_path / "cut"
    code, _, stderr = run_cli(capsys, "run", "grid_impact", "--evs", 4, "--steps", 4, "--start", START, "--out", out)
    said = [line for line in stderr.splitlines() if not line.startswith("evagg: warning: ")]
    assert code == 130 and said[0].startswith("evagg: interrupted after 6 of 28 steps")  # 7 policies x 4 steps
    top = summary_of(out)
    assert top["complete"] is False and top["policies_run"] == ["uncontrolled", "edf"]
    assert summary_of(out / "uncontrolled")["complete"] is True
    edf = summary_of(out / "edf")
    assert edf["complete"] is False and edf["steps_done"] == 2 and top["figures"]["edf"]["steps"] == 2
    assert not (out / "dcls").exists()
    # `evagg report` makes the comparison of what there is, and keeps saying it is incomplete
    code, stdout, stderr = run_cli(capsys, "report", out)
    assert code == 0, stderr
    assert (out / "policies.png").is_file() and (out / "edf" / "power.png").is_file()
    assert "uncontrolled" in stdout and "edf" in stdout and "dcls" not in stdout
    assert summary_of(out)["complete"] is False


def test_a_low_voltage_at_an_ev_bus_lowers_the_ev_load_there_at_the_next_step(tmp_path):
    """Grid-aware, one step late (the default coupling): where a bus with EVs falls below the band in a step, the
    operator's limit makes the EVs there draw less in the next step than the same EVs uncontrolled."""
    opts = dict(SMALL, evs=40, steps=3, v_band=(1.015, 1.05))  # this feeder sits at 1.01-1.02 pu in the evening
    free = feeder_day.main(out=str(tmp_path / "free"), method="uncontrolled", **opts)
    aware = feeder_day.main(out=str(tmp_path / "aware"), method="uncontrolled+grid", **opts)
    assert free["complete"] and aware["complete"]
    t_free, t_aware = tidy(tmp_path / "free"), tidy(tmp_path / "aware")
    ev_free, ev_aware = pivot(t_free, "EVBus", "P[MW]"), pivot(t_aware, "EVBus", "P[MW]")
    vm = pivot(t_free, "Bus", "Vm[pu]")
    # step 0 is the same in both runs (no measurement yet); low voltages at EV buses in step 0
    np.testing.assert_allclose(ev_aware.iloc[0].to_numpy(), ev_free.iloc[0].to_numpy(), atol=1e-12)
    low = [c for c in ev_free.columns if vm.iloc[0][f"Grid-0.Bus-{int(c.rsplit('-', 1)[1])}"] < 1.015 + 0.01
           and ev_free.iloc[0][c] > 0]
    assert low, "the test needs an EV bus with a low voltage in the first step"
    for c in low:
        assert ev_aware.iloc[1][c] < ev_free.iloc[1][c] - 1e-6
    assert pivot(t_aware, "Aggregator", "limited").iloc[1].max() == 1


def test_the_iterative_coupling_acts_in_the_same_step(tmp_path):
    """coupling="iterative": the same low voltage as above already lowers the EV load in the first step, in a few
    iterations, reported."""
    opts = dict(SMALL, evs=40, steps=3, v_band=(1.015, 1.05))
    free = feeder_day.main(out=str(tmp_path / "free"), method="uncontrolled", **opts)
    loop = feeder_day.main(out=str(tmp_path / "loop"), method="uncontrolled+grid", coupling="iterative", **opts)
    ev_free = pivot(tidy(tmp_path / "free"), "EVBus", "P[MW]")
    ev_loop = pivot(tidy(tmp_path / "loop"), "EVBus", "P[MW]")
    vm = pivot(tidy(tmp_path / "free"), "Bus", "Vm[pu]")
    low = [c for c in ev_free.columns if vm.iloc[0][f"Grid-0.Bus-{int(c.rsplit('-', 1)[1])}"] < 1.015 + 0.01
           and ev_free.iloc[0][c] > 0]
    assert low
    assert sum(ev_loop.iloc[0][c] for c in low) < sum(ev_free.iloc[0][c] for c in low) - 1e-6
    f = loop["figures"]
    assert 1 <= f["loop_iterations_max"] < 10 and f["loop_capped_steps"] == 0
    assert free["figures"]["loop_iterations_max"] is None


def test_peak_shaving_lowers_the_transformer_peak(tmp_path):
    # twelve hours from 18:00: the target is the flat level of their base load plus the EVs' energy
    top = grid_impact.main(out=str(tmp_path / "peak"), policies="uncontrolled,peak_shaving",
                           **dict(SMALL, evs=30, steps=48, plots=False))
    f = top["figures"]
    assert f["peak_shaving"]["trafo_loading_max_pct"] < f["uncontrolled"]["trafo_loading_max_pct"] - 5.0
    sub = summary_of(tmp_path / "peak" / "peak_shaving")
    assert sub["peak_target_kw"] > 0
    # its reference is the room below the target, from the feeder measured one step before
    table = tidy(tmp_path / "peak" / "peak_shaving")
    assert pivot(table, "PeakShaver", "P_ref[MW]").shape[0] == 48


def test_policies_are_checked():
    with pytest.raises(ScenarioError, match="unknown policy 'dcls\\+grud'"):
        Options.make("grid_impact", policies="dcls+grud")
    with pytest.raises(ScenarioError, match="coupling must be"):
        Options.make(coupling="sometimes")
    assert Options.make("grid_impact").policies == ("uncontrolled", "edf", "dcls", "dcls+grid", "peak_shaving",
                                                    "dcls@known", "dcls@noisy")
    assert Options.make(method="edf+grid").method == "edf+grid"


def test_options_are_checked_before_anything_runs():
    with pytest.raises(ScenarioError, match="unknown option"):
        feeder_day.main(evz=3)
    with pytest.raises(ScenarioError, match="--aggregators"):
        Options.make(aggregators=17)
    assert Options.make(evs=1).aggregators == 1  # never an aggregator without EVs
    o = Options.make(days=2, step_min=60)
    assert (o.n_steps, o.step_s, o.until) == (48, 3600, 48 * 3600)
