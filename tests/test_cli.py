"""The `evagg` command (evagg.scenarios.cli)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import evagg.simulators.dispatch as dispatch_module
from evagg.scenarios.cli import SUBCOMMANDS, main
from evagg.simulators.dispatch import METHODS
from evagg.simulators.synthetic import synthetic_fleet, synthetic_reference
from evagg.simulators.tables import read_dispatch, read_reference, read_sessions, write_reference, write_sessions


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def only_files(directory):
    return sorted(p.name for p in directory.iterdir())


# ----------------------------------------------------------------------------------------------- dispatch


def test_dispatch_end_to_end(tmp_path, capsys, fleet50_files, fleet50):
    sessions, signal = fleet50_files
    out = tmp_path / "result.csv"
    code, stdout, stderr = run(capsys, "dispatch", "--sessions", sessions, "--signal", signal,
                               "--method", "uncontrolled", "--out", out, "--time-limit", "30")
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["method"] == "uncontrolled" and summary["n_evs"] == 50 and summary["n_steps"] == 96
    assert not any(summary["violations"].values())
    table = read_dispatch(out)
    assert list(table.columns) == ["time", "ev_id", "p_charge_kw", "p_discharge_kw", "energy_kwh"]
    assert set(table["ev_id"]) <= set(fleet50.ev_id) and len(table) > 0
    assert np.all(table["p_charge_kw"] >= 0) and np.all(table["p_discharge_kw"] >= 0)
    assert only_files(tmp_path) == ["result.csv", "sessions.csv", "signal.csv"]  # no temporary files left


@pytest.mark.parametrize(
    "edit,where",
    [
        (("sessions", 4, "capacity_kwh", "-3"), "sessions.csv line 6, column capacity_kwh: value -3 must be > 0"),
        (("sessions", 0, "eta_charge", "95"), "sessions.csv line 2, column eta_charge: value 95 must be in (0, 1]"),
        (("signal", 10, "p_ref_kw", "x"), "signal.csv line 12, column p_ref_kw: value x is not a number"),
        (("signal", 3, "time", "2026-06-01T00:44:00"), "signal.csv line 5, column time: value 2026-06-01T00:44:00"),
    ],
)
def test_dispatch_bad_input(tmp_path, capsys, fleet50_files, edit, where):
    sessions, signal = fleet50_files
    which, row, column, text = edit
    path = sessions if which == "sessions" else signal
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[row + 1].split(",")
    cells[header.index(column)] = text
    lines[row + 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "result.csv"
    code, stdout, stderr = run(capsys, "dispatch", "--sessions", sessions, "--signal", signal,
                               "--method", "uncontrolled", "--out", out)
    assert code == 2
    assert stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("evagg: error: ")
    assert where in stderr
    assert not out.exists()
    assert only_files(tmp_path) == ["sessions.csv", "signal.csv"]


def test_bad_input_leaves_an_earlier_result_untouched(tmp_path, capsys, fleet50_files):
    sessions, signal = fleet50_files
    out = tmp_path / "result.csv"
    out.write_text("earlier result\n")
    signal.write_text("time,p_ref_kw\n")
    code, _, stderr = run(capsys, "dispatch", "--sessions", sessions, "--signal", signal, "--method", "uncontrolled",
                          "--out", out)
    assert code == 2 and "signal.csv: has no data rows" in stderr
    assert out.read_text() == "earlier result\n"


def test_dispatch_missing_file_and_directory(tmp_path, capsys, fleet50_files):
    sessions, signal = fleet50_files
    code, _, stderr = run(capsys, "dispatch", "--sessions", tmp_path / "nope.csv", "--signal", signal,
                          "--method", "uncontrolled", "--out", tmp_path / "r.csv")
    assert code == 2 and stderr == f"evagg: error: {tmp_path / 'nope.csv'}: no such file\n"
    code, _, stderr = run(capsys, "dispatch", "--sessions", sessions, "--signal", signal, "--method", "uncontrolled",
                          "--out", tmp_path / "no" / "where" / "r.csv")
    assert code == 2 and "does not exist" in stderr
    code, _, stderr = run(capsys, "dispatch", "--sessions", sessions, "--signal", signal, "--method", "uncontrolled",
                          "--out", tmp_path)
    assert code == 2 and "is a directory" in stderr
    assert only_files(tmp_path) == ["sessions.csv", "signal.csv"]


@pytest.mark.parametrize("argv", [
    ["dispatch", "--sessions", "s.csv", "--signal", "r.csv", "--method", "magic", "--out", "o.csv"],
    ["dispatch", "--sessions", "s.csv", "--signal", "r.csv", "--out", "o.csv", "--time-limit", "-1"],
    ["dispatch", "--signal", "r.csv", "--out", "o.csv"],
    ["fleet", "--n", "-4", "--seed", "1", "--out", "s.csv"],
    ["fleet", "--n", "4", "--seed", "1", "--out", "s.csv", "--v2g-share", "2"],
    ["fleet", "--n", "4", "--seed", "1", "--out", "s.csv", "--start", "soon"],
    ["fleet", "--n", "4", "--seed", "1", "--out", "s.csv", "--mix", "1,2"],
    ["fleet", "--n", "4", "--seed", "1", "--out", "s.csv", "--buses", "a-b"],
    ["nonsense"],
    [],
])
def test_usage_errors(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = run(capsys, *argv)
    assert code == 2 and stdout == ""
    assert "error" in stderr
    assert os.listdir(tmp_path) == []


def test_single_row_signal_needs_signal_step(tmp_path, capsys, fleet50_files):
    sessions, signal = fleet50_files
    signal.write_text("time,p_ref_kw\n2026-06-01T12:00:00,50\n")
    out = tmp_path / "r.csv"
    argv = ["dispatch", "--sessions", sessions, "--signal", signal, "--method", "uncontrolled", "--out", out]
    code, _, stderr = run(capsys, *argv)
    assert code == 2 and "--signal-step" in stderr
    code, stdout, stderr = run(capsys, *argv, "--signal-step", "3600")
    assert code == 0, stderr
    assert json.loads(stdout)["n_steps"] == 1
    assert (read_dispatch(out)["time"] == np.datetime64("2026-06-01T12:00:00")).all()


def test_warns_when_no_session_meets_the_horizon(tmp_path, capsys, fleet50_files):
    sessions, signal = fleet50_files
    signal.write_text("time,p_ref_kw\n2027-01-01T00:00:00,1\n2027-01-01T00:15:00,2\n")
    code, stdout, stderr = run(capsys, "dispatch", "--sessions", sessions, "--signal", signal,
                               "--method", "uncontrolled", "--out", tmp_path / "r.csv")
    assert code == 0 and json.loads(stdout)["n_steps"] == 2
    assert stderr.startswith("evagg: warning: ") and "0 % of the sessions' plugged time" in stderr
    assert stderr.count("\n") == 1  # said once


def test_non_finite_dispatch_is_not_written(tmp_path, capsys, fleet50_files, monkeypatch):
    sessions, signal = fleet50_files
    real = dispatch_module.dispatch

    def broken(*args, **kwargs):
        result = real(*args, **kwargs)
        result.pc[0, :] = np.nan
        return result

    monkeypatch.setattr(dispatch_module, "dispatch", broken)
    out = tmp_path / "r.csv"
    code, stdout, stderr = run(capsys, "dispatch", "--sessions", sessions, "--signal", signal,
                               "--method", "uncontrolled", "--out", out)
    assert code == 1 and stdout == "" and "non-finite" in stderr
    assert not out.exists()


# ----------------------------------------------------------------------------------------------- fleet


def test_fleet_writes_sessions_and_signal(tmp_path, capsys):
    s, r = tmp_path / "s.csv", tmp_path / "r.csv"
    code, stdout, stderr = run(capsys, "fleet", "--n", 30, "--seed", 3, "--out", s, "--v2g-share", 0.2,
                               "--days", 2, "--start", "2026-07-01T00:00:00", "--mix", "1,1,0", "--buses", "1-3,9",
                               "--signal-out", r, "--signal-kind", "surplus", "--step-min", 30)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["n_sessions"] == 30 and summary["n_steps"] == 96 and summary["step_s"] == 1800
    fleet = read_sessions(s)
    assert len(fleet) == 30 and set(fleet.bus) <= {1, 2, 3, 9}
    assert set(fleet.extra["pattern"]) <= {"home", "workplace"}
    ref = read_reference(r)
    assert ref.start == np.datetime64("2026-07-01T00:00:00") and ref.n_steps == 96
    assert ref.step == np.timedelta64(1800, "s")
    assert only_files(tmp_path) == ["r.csv", "s.csv"]


def test_fleet_is_reproducible(tmp_path, capsys):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert run(capsys, "fleet", "--n", 20, "--seed", 5, "--out", a)[0] == 0
    assert run(capsys, "fleet", "--n", 20, "--seed", 5, "--out", b)[0] == 0
    assert a.read_bytes() == b.read_bytes()


def test_fleet_step_must_fit(tmp_path, capsys):
    code, _, stderr = run(capsys, "fleet", "--n", 5, "--seed", 1, "--out", tmp_path / "s.csv",
                          "--signal-out", tmp_path / "r.csv", "--step-min", 0.001)
    assert code == 2 and "whole number of seconds" in stderr
    code, _, stderr = run(capsys, "fleet", "--n", 5, "--seed", 1, "--out", tmp_path / "s.csv",
                          "--signal-out", tmp_path / "r.csv", "--step-min", 7)
    assert code == 2 and "does not divide" in stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv, flag", [
    (["fleet", "--n", "4", "--seed", "-1"], "--seed"),  # was a numpy traceback
    (["fleet", "--n", "4", "--seed", "1", "--days", "0"], "--days"),
    (["fleet", "--n", "4", "--seed", "1", "--v2g-share", "nan"], "--v2g-share"),
    (["fleet", "--n", "4", "--seed", "1", "--mix", "1,-1,1"], "--mix"),
    (["fleet", "--n", "4", "--seed", "1", "--buses", "5-2"], "--buses"),
    (["fleet", "--n", "4", "--seed", "1", "--start", "soon"], "--start"),
    (["fleet", "--n", "4", "--seed", "1", "--signal-kind", "noise"], "--signal-kind"),
    (["fleet", "--n", "4", "--seed", "1", "--step-min", "0"], "--step-min"),
    (["dispatch", "--sessions", "s.csv", "--signal", "r.csv", "--method", "magic"], "--method"),
    (["dispatch", "--sessions", "s.csv", "--signal", "r.csv", "--time-limit", "0"], "--time-limit"),
    (["dispatch", "--sessions", "s.csv", "--signal", "r.csv", "--signal-step", "0.5"], "--signal-step"),
])
def test_fleet_and_dispatch_errors_are_one_line_naming_the_flag(tmp_path, capsys, monkeypatch, argv, flag):
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = run(capsys, *argv, "--out", "o.csv")
    assert code == 2 and stdout == ""
    assert stderr.startswith("evagg: error: ") and stderr.count("\n") == 1 and flag in stderr
    assert os.listdir(tmp_path) == []


def test_fleet_defaults_are_synthetic_fleets(tmp_path, capsys):
    """`evagg fleet` without options writes the fleet and signal of the engine's own defaults."""
    s, r = tmp_path / "s.csv", tmp_path / "r.csv"
    assert run(capsys, "fleet", "--n", 12, "--seed", 4, "--out", s, "--signal-out", r)[0] == 0
    fleet = synthetic_fleet(12, 4)
    write_sessions(fleet, tmp_path / "engine-s.csv")
    write_reference(synthetic_reference(fleet, seed=4), tmp_path / "engine-r.csv")
    assert s.read_bytes() == (tmp_path / "engine-s.csv").read_bytes()
    assert r.read_bytes() == (tmp_path / "engine-r.csv").read_bytes()


# ----------------------------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_help_explains_every_option(capsys, command):
    code, stdout, _ = run(capsys, command, "--help")
    assert code == 0
    parser_options = {
        "dispatch": ["--sessions", "--signal", "--method", "--out", "--time-limit", "--signal-step"],
        "fleet": ["--n", "--seed", "--out", "--v2g-share", "--days", "--start", "--mix", "--buses", "--signal-out",
                  "--signal-kind", "--step-min"],
        "run": ["--evs", "--days", "--step-min", "--grid", "--method", "--out", "--overwrite", "--seed", "--v2g-share",
                "--aggregators", "--signal", "--start", "--horizon", "--forecast", "--v-band", "--policies", "--steps",
                "--sessions"],
        "report": ["DIR"],
        "sweep": ["--evs", "--penetration", "--seeds", "--policies", "--grids", "--out", "--workers", "--scheduler",
                  "--steps", "--sessions", "--arrivals"],
        "import": ["FILE", "--out", "--energy", "--capacity-kwh", "--soc-initial", "--v2g-share", "--charger-kw",
                   "--seed", "--strict"],
    }[command]
    for option in parser_options:
        assert option in stdout
    if command in ("run", "report", "sweep"):  # the scenarios' options and results folder (tests/test_scenarios.py)
        assert "summary.json" in stdout
        return
    if command == "import":  # the formats read and the table written
        for word in ("kW", "kWh", "UTC", "ISO 8601", "capacity_kwh", "connectionTime", "UTCTransactionStart"):
            assert word in stdout
        return
    for unit in ("kW", "kWh", "ISO 8601", "p_ref_kw", "capacity_kwh"):
        assert unit in stdout
    if command == "dispatch":
        assert "seconds" in stdout and "energy_kwh" in stdout
        for method in METHODS:
            assert method in stdout
    else:
        assert "minutes" in stdout


def test_top_level_help(capsys):
    code, stdout, _ = run(capsys, "--help")
    assert code == 0
    for command in SUBCOMMANDS:
        assert command in stdout


# ----------------------------------------------------------------------------------------------- installed command


def test_console_script(tmp_path, fleet50_files):
    sessions, signal = fleet50_files
    exe = shutil.which("evagg")
    cmd = [exe] if exe else [sys.executable, "-m", "evagg.scenarios.cli"]
    out = tmp_path / "result.csv"
    proc = subprocess.run(cmd + ["dispatch", "--sessions", str(sessions), "--signal", str(signal),
                                 "--method", "uncontrolled", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["method"] == "uncontrolled"
    assert out.exists()
    sessions.write_text(sessions.read_text().replace(",ev00003,", ",ev00003,").replace("ev00004", "ev00003", 1))
    proc = subprocess.run(cmd + ["dispatch", "--sessions", str(sessions), "--signal", str(signal),
                                 "--method", "uncontrolled", "--out", str(tmp_path / "other.csv")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("evagg: error: ") and "line 6, column ev_id: value ev00003 duplicates" in proc.stderr
    assert not (tmp_path / "other.csv").exists()
