"""Every summary is valid JSON (numbers finite or null), and `evagg dispatch` checks the signal against the fleet
it is for (rows of the bad-input issue)."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pandas as pd

from evagg.scenarios.cli import main
from evagg.scenarios.folder import write_json
from evagg.simulators import dispatch as dispatch_module
from evagg.simulators.synthetic import synthetic_fleet, synthetic_reference
from evagg.simulators.tables import write_reference, write_sessions

START = "2026-06-01T00:00:00"


def _files(tmp_path, scale=1.0):
    fleet = synthetic_fleet(6, seed=2, start=START)
    sessions, signal = tmp_path / "s.csv", tmp_path / "r.csv"
    write_sessions(fleet, sessions)
    reference = synthetic_reference(fleet, start=START, seed=2)
    write_reference(dataclasses.replace(reference, p_ref_kw=reference.p_ref_kw * scale), signal)
    return fleet, sessions, signal


def test_dispatch_refuses_a_signal_beyond_the_fleet_naming_its_line(tmp_path, capsys):
    """A signal of W sent as kW (x 1000) for a fleet of 6 EVs: one line naming file, line and column (it used to
    run and report a 'feasible' dispatch tracking nothing)."""
    fleet, sessions, signal = _files(tmp_path, scale=1000.0)
    out = tmp_path / "d.csv"
    code = main(["dispatch", "--sessions", str(sessions), "--signal", str(signal), "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 2 and not out.exists()
    assert err.startswith(f"evagg: error: {signal}") and "p_ref_kw" in err and "line" in err
    assert err.count("\n") == 1


def test_the_dispatch_summary_is_valid_json_whatever_the_figures(tmp_path, capsys, monkeypatch):
    """A figure that is not finite (here a lower bound) is null, never 'Infinity' or 'NaN' (not JSON)."""
    fleet, sessions, signal = _files(tmp_path)
    real = dispatch_module.dispatch

    def unbounded(*args, **kwargs):
        return dataclasses.replace(real(*args, **kwargs), lower_bound=float("inf"))

    monkeypatch.setattr(dispatch_module, "dispatch", unbounded)
    code = main(["dispatch", "--sessions", str(sessions), "--signal", str(signal), "--out", str(tmp_path / "d.csv"),
                 "--method", "edf"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert summary["lower_bound_kw2"] is None and np.isfinite(summary["sse_kw2"])


def test_write_json_writes_non_finite_numbers_as_null(tmp_path):
    path = tmp_path / "summary.json"
    write_json(path, {"a": float("nan"), "b": [1.0, float("-inf")], "c": np.float64(2.5), "t": pd.NA is None})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, None], "c": 2.5, "t": False}


def test_an_output_that_is_another_name_of_an_input_is_refused(tmp_path, capsys):
    """--out a hard link to the sessions file: the same file under another name (one check for every command,
    samefile included; it used to compare resolved paths only)."""
    fleet, sessions, signal = _files(tmp_path)
    link = tmp_path / "link.csv"
    os.link(sessions, link)
    before = sessions.read_bytes()
    code = main(["dispatch", "--sessions", str(sessions), "--signal", str(signal), "--out", str(link)])
    _, err = capsys.readouterr()
    assert code == 2 and f"is also {sessions}" in err and sessions.read_bytes() == before
