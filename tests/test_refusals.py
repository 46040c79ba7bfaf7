"""What the CLI refuses or says instead of doing something silently wrong: an output over an input, a results
folder that holds an input, a grid without profiles, counts written as whole numbers, and the synthetic signal
kept with the run's inputs (each a row of the bad-input issue)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from evagg.scenarios.cli import main
from evagg.simulators.synthetic import synthetic_fleet, synthetic_reference
from evagg.simulators.tables import read_reference, write_reference, write_sessions
from cli import run_cli

START = "2026-01-14T18:00:00"



@pytest.fixture
def files(tmp_path):
    fleet = synthetic_fleet(6, seed=2, start="2026-06-01T00:00:00")
    sessions, signal = tmp_path / "s.csv", tmp_path / "r.csv"
    write_sessions(fleet, sessions)
    write_reference(synthetic_reference(fleet, start="2026-06-01T00:00:00", seed=2), signal)
    return sessions, signal


@pytest.mark.parametrize("target", ["sessions", "signal"])
def test_dispatch_never_writes_over_its_input(files, capsys, monkeypatch, target):
    sessions, signal = files
    monkeypatch.chdir(sessions.parent)
    before = {p: p.read_bytes() for p in (sessions, signal)}
    out = "./s.csv" if target == "sessions" else f"{signal.parent}/./r.csv"  # the same file, spelt otherwise
    code, stdout, stderr = run_cli(capsys, "dispatch", "--sessions", "s.csv", "--signal", signal, "--out", out)
    assert code == 2 and stdout == ""
    assert stderr.startswith("evagg: error: ") and "reads or writes" in stderr
    assert {p: p.read_bytes() for p in before} == before


def test_fleet_refuses_one_file_for_sessions_and_signal(tmp_path, capsys):
    code, _, stderr = run_cli(capsys, "fleet", "--n", 3, "--seed", 1, "--out", tmp_path / "a.csv",
                              "--signal-out", tmp_path / "a.csv")
    assert code == 2 and "reads or writes" in stderr
    assert not (tmp_path / "a.csv").exists()


def test_run_refuses_a_results_folder_that_holds_its_signal(tmp_path, capsys):
    fleet = synthetic_fleet(4, seed=1, start="2026-01-14T00:00:00", days=2)
    out = tmp_path / "old"
    out.mkdir()
    (out / "summary.json").write_text("{}")  # a results folder, which --overwrite would empty
    signal = out / "r.csv"
    write_reference(synthetic_reference(fleet, start="2026-01-14T00:00:00", n_steps=192, seed=1), signal)
    before = signal.read_bytes()
    code, stdout, stderr = run_cli(capsys, "run", "--evs", 4, "--steps", 2, "--start", START, "--signal", signal,
                                   "--out", out, "--overwrite", "--no-progress", "--no-plots")
    assert code == 2 and stdout == ""
    assert "an input of this run" in stderr and stderr.count("\n") == 1
    assert signal.read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["r.csv", "summary.json"]


def test_a_grid_without_profiles_is_said(tmp_path, caplog):
    import pandapower.networks as pn
    import pandapower as pp

    from evagg.simulators.grids import load_grid

    net = pn.example_simple()
    path = tmp_path / "flat.json"
    pp.to_json(net, str(path))
    with caplog.at_level(logging.WARNING, logger="evagg"):
        feeder = load_grid(path)
    assert not feeder.profiles
    assert any("no load or generation profiles" in r.getMessage() for r in caplog.records)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("refusals") / "run"
    assert main(["run", "--evs", "8", "--steps", "3", "--start", START, "--out", str(out), "--no-progress",
                 "--no-plots"]) == 0
    return out


def test_counts_are_written_as_whole_numbers(small_run):
    rows = [line.split(",") for line in (small_run / "results.csv").read_text().splitlines()[1:]]
    counts = [value for _, _, attribute, value in rows if attribute == "n_plugged"]
    assert counts and all(value.isdigit() for value in counts)


def test_the_synthetic_signal_is_kept_with_the_inputs(small_run):
    """inputs/ holds every aggregator's signal, and it is the signal the aggregators were given (P_ref)."""
    summary = json.loads((small_run / "summary.json").read_text())
    table = pd.read_csv(small_run / "results.csv", dtype={"time": str})
    for agg in summary["aggregators"]:
        assert agg["signal"] == f"inputs/signal-{agg['index']}.csv"
        saved = read_reference(small_run / agg["signal"])
        sent = table[(table.attribute == "P_ref[MW]") & table.entity.str.endswith(f"Signal-{agg['index']}")]
        assert len(sent) == 3
        # the same values: only the unit differs (kW in the table, MW at the mosaik boundary)
        np.testing.assert_allclose(sent.value.to_numpy() * 1000.0, saved.p_ref_kw[:3], rtol=1e-12, atol=0)


def test_evs_plugged_at_the_end_are_reported_apart(tmp_path, capsys):
    """A session that cannot charge (0 kW) and leaves after the signal: its shortfall is certain, and said."""
    fleet = synthetic_fleet(6, seed=2, start="2026-06-01T00:00:00").to_frame()
    fleet.loc[0, ["arrival", "departure"]] = [pd.Timestamp("2026-06-01T20:00:00"), pd.Timestamp("2026-06-02T06:00:00")]
    fleet.loc[0, ["p_charge_max_kw", "p_discharge_max_kw"]] = 0.0
    sessions, signal, out = tmp_path / "s.csv", tmp_path / "r.csv", tmp_path / "d.csv"
    fleet.to_csv(sessions, index=False, date_format="%Y-%m-%dT%H:%M:%S")
    reference = synthetic_reference(None, start="2026-06-01T00:00:00", seed=2)  # ends 2026-06-02T00:00
    write_reference(reference, signal)
    code, stdout, stderr = run_cli(capsys, "dispatch", "--sessions", sessions, "--signal", signal, "--out", out)
    assert code == 0, stderr
    summary = json.loads(stdout)
    end = pd.Timestamp("2026-06-02T00:00:00")
    leaving_later = int(np.sum((pd.to_datetime(fleet.departure) > end) & (pd.to_datetime(fleet.arrival) < end)))
    assert summary["evs_plugged_at_end"] == leaving_later >= 1
    need = min(fleet.energy_target_kwh[0], fleet.capacity_kwh[0]) - fleet.energy_initial_kwh[0]
    assert summary["certain_shortfall_kwh"] >= need - 1e-9  # at least the stuck EV's whole need
    assert summary["shortfall_kwh"] == 0.0  # no departure within the horizon misses its target
    assert "still plugged in at the signal's end" in stderr
