"""Issue 13, the rows about input: plausibility limits, the delimiter hint, warnings on suspicious but valid input,
an empty fleet's signal, finite JSON (evagg.simulators.fleet / tables / reference / synthetic)."""
from __future__ import annotations

import dataclasses
import json
import logging
import re

import numpy as np
import pytest

from evagg.simulators import fleet as fleet_module
from evagg.simulators import tables as tables_module
from evagg.simulators.fleet import LIMITS, SESSION_COLUMNS, signal_bound_kw
from evagg.simulators.reference import Reference
from evagg.simulators.synthetic import synthetic_fleet, synthetic_reference
from evagg.simulators.tables import (
    InputError,
    check_signal_against_fleet,
    finite_or_none,
    json_safe,
    read_reference,
    read_sessions,
    signal_coverage,
    unservable_sessions,
    validate_sessions,
)

HEADER = list(SESSION_COLUMNS) + ["energy_min_kwh"]
ROWS = [
    ["ev1", "2026-06-01T08:00:00", "2026-06-01T12:00:00", "10", "40", "50", "11", "11", "0.95", "0.93", "5"],
    ["ev2", "2026-06-01T08:00:00", "2026-06-01T12:00:00", "20", "60", "77", "7.4", "0", "0.9", "0.9", "7"],
    ["ev3", "2026-06-01T09:00:00", "2026-06-01T12:00:00", "12", "52", "64", "22", "22", "1", "0.97", "6"],
]
START = np.datetime64("2026-06-01T08:00:00", "s")
LOGGER = "evagg.simulators.tables"


def write_csv(path, header, rows, sep=","):
    path.write_text("\n".join(sep.join(r) for r in [header] + rows) + "\n")
    return path


def sessions_file(tmp_path, edits=None, rows=ROWS, sep=","):
    rows = [list(r) for r in rows]
    for (k, col), text in (edits or {}).items():
        rows[k][HEADER.index(col)] = text
    return write_csv(tmp_path / "sessions.csv", HEADER, rows, sep)


def signal_file(tmp_path, values, start="2026-06-01T08:00:00", step_s=900, sep=","):
    times = np.datetime64(start, "s") + np.arange(len(values)) * np.timedelta64(step_s, "s")
    rows = [[str(t), str(v)] for t, v in zip(times, values)]
    return write_csv(tmp_path / "signal.csv", ["time", "p_ref_kw"], rows, sep)


# ----------------------------------------------------------------------------------------------- absurd values


@pytest.mark.parametrize("column,limit", [
    ("capacity_kwh", "must be <= 1000 (kWh)"),
    ("p_charge_max_kw", "must be <= 1000 (kW)"),
    ("p_discharge_max_kw", "must be <= 1000 (kW)"),
    ("energy_target_kwh", "must be <= 1000 (kWh)"),
])
def test_absurd_session_value_is_refused_naming_line_and_column(tmp_path, column, limit):
    path = sessions_file(tmp_path, {(1, column): "1e300"})
    with pytest.raises(InputError) as info:
        read_sessions(path)
    assert str(info.value).startswith(f"{path} line 3, column {column}: value 1e300 {limit}")
    assert (info.value.line, info.value.column, info.value.value) == (3, column, "1e300")


def test_a_capacity_of_1000_kwh_is_still_plausible(tmp_path):
    fleet = read_sessions(sessions_file(tmp_path, {(1, "capacity_kwh"): "1000", (2, "p_charge_max_kw"): "1000"}))
    assert fleet.capacity_kwh[1] == 1000 and fleet.p_charge_max_kw[2] == 1000


def test_energy_above_an_absurd_capacity_names_the_capacity_only(tmp_path):
    with pytest.raises(InputError) as info:
        read_sessions(sessions_file(tmp_path, {(0, "capacity_kwh"): "1e300", (0, "energy_initial_kwh"): "1e299"}))
    assert info.value.column == "capacity_kwh" and info.value.n_problems == 1


def test_a_year_long_session_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"line 2, column departure: value 2030-06-01T12:00:00 is more than 366 "
                                         r"days after the arrival"):
        read_sessions(sessions_file(tmp_path, {(0, "departure"): "2030-06-01T12:00:00"}))


def test_absurd_signal_value_is_refused(tmp_path):
    path = signal_file(tmp_path, [10, 1e300, 0, 5])
    with pytest.raises(InputError) as info:
        read_reference(path)
    assert str(info.value).startswith(f"{path} line 3, column p_ref_kw: value 1e+300 must be within +-1e+07 kW")


def test_signal_beyond_the_fleets_range_is_refused_with_the_fleet(tmp_path):
    fleet = read_sessions(sessions_file(tmp_path))
    bound = signal_bound_kw(fleet)
    assert bound == pytest.approx(10 * ((11 + 7.4 + 22) + (11 + 0 + 22)) + 1)
    ok = signal_file(tmp_path, [10, -bound, bound, 5])
    assert read_reference(ok, fleet=fleet).n_steps == 4
    bad = signal_file(tmp_path, [10, 20, 5000, 5])
    assert read_reference(bad).n_steps == 4  # plausible for some fleet
    with pytest.raises(InputError) as info:
        read_reference(bad, fleet=fleet)
    assert str(info.value).startswith(f"{bad} line 4, column p_ref_kw: value 5000 must be within +-{bound:g} kW for "
                                      "a fleet of 3 sessions")
    with pytest.raises(InputError, match=r"^signal.csv line 4, column p_ref_kw: value 5000 must be within"):
        check_signal_against_fleet(read_reference(bad), fleet, source="signal.csv")


def test_absurd_value_in_a_python_built_fleet_names_session_and_field():
    fleet = synthetic_fleet(4, seed=1)
    cap = fleet.capacity_kwh.copy()
    cap[2] = 1e300
    with pytest.raises(ValueError, match=r"session ev00002 \(position 2\), capacity_kwh: 1e\+300 must be <= 1000"):
        dataclasses.replace(fleet, capacity_kwh=cap)
    with pytest.raises(ValueError, match=r"session ev00001 \(position 1\), p_charge_max_kw: 1e\+300 must be <= 1000"):
        dataclasses.replace(fleet, p_charge_max_kw=np.array([3.7, 1e300, 11, 22]))
    with pytest.raises(ValueError, match=r"session ev00000 \(position 0\), eta_charge: nan must be finite"):
        dataclasses.replace(fleet, eta_charge=np.array([np.nan, 0.9, 0.9, 0.9]))
    with pytest.raises(ValueError, match=r"ev_id: ev00000 duplicates the ev_id of position 0"):
        dataclasses.replace(fleet, ev_id=np.array(["ev00000", "ev00001", "ev00000", "x"], dtype=object))
    with pytest.raises(ValueError, match=r"departure must be after|departure: .* must be after the arrival"):
        dataclasses.replace(fleet, departure=fleet.arrival.copy())
    with pytest.raises(ValueError, match=r"capacity_kwh has shape \(3,\), but there are 4 sessions"):
        dataclasses.replace(fleet, capacity_kwh=fleet.capacity_kwh[:3])


def test_absurd_value_in_a_python_built_reference():
    with pytest.raises(ValueError, match=r"p_ref_kw at step 1 \(2026-06-01T08:15:00\): 1e\+300 must be within"):
        Reference(START, np.timedelta64(900, "s"), [1.0, 1e300])
    with pytest.raises(ValueError, match=r"step 0 .*: nan must be finite"):
        Reference(START, np.timedelta64(900, "s"), [np.nan])


def test_limits_table_in_the_docstrings_matches_limits():
    for column, limit in LIMITS.items():
        row = re.search(rf"^\s+{column}\s+(\S+ \S+)", fleet_module.__doc__, re.M)
        assert row is not None and row.group(1).replace("1e7", "1e+07") == limit.interval(), column
        assert re.search(rf"^\s+{column}\s+\S", tables_module.__doc__, re.M), column
    assert "(0, 1000]" in fleet_module.__doc__ and "[-1e7, 1e7]" in fleet_module.__doc__


# ----------------------------------------------------------------------------------------------- an empty fleet


def test_empty_fleet_gets_no_signal():
    empty = synthetic_fleet(0, seed=1)
    with pytest.raises(ValueError, match=r"^no sessions: "):
        synthetic_reference(empty, step_s=900, n_steps=96, seed=1)
    assert synthetic_reference(None, step_s=900, n_steps=4, seed=1).n_steps == 4  # fleet-less: still a shape


def test_zero_sessions_warn(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    fleet = read_sessions(sessions_file(tmp_path, rows=[]))
    assert len(fleet) == 0
    said = [r.getMessage() for r in caplog.records if "no sessions" in r.getMessage()]
    assert len(said) == 1 and "sessions.csv" in said[0] and "\n" not in said[0]


# ----------------------------------------------------------------------------------------------- delimiters


@pytest.mark.parametrize("sep,name", [(";", "';'"), ("\t", "tab")])
def test_other_delimiter_gets_a_hint(tmp_path, sep, name):
    path = sessions_file(tmp_path, sep=sep)
    with pytest.raises(InputError) as info:
        read_sessions(path)
    assert str(info.value).startswith(f"{path} line 1: looks {name}-separated; the tables are comma-separated CSV")
    assert "missing required column" not in str(info.value)
    sig = signal_file(tmp_path, [1, 2], sep=sep)
    with pytest.raises(InputError, match=rf"signal.csv line 1: looks {name}-separated"):
        read_reference(sig)


def test_a_semicolon_in_a_comma_file_is_no_delimiter(tmp_path):
    # A header with a column missing and a ';' in an extra column's name: the missing column is what is wrong.
    path = write_csv(tmp_path / "s.csv", HEADER[1:] + ["note;x"], [r[1:] + ["a"] for r in ROWS])
    with pytest.raises(InputError, match="looks ';'-separated"):
        read_sessions(path)  # a ';' in the header is the likelier explanation still: said as a hint
    path = write_csv(tmp_path / "s.csv", HEADER[1:], [r[1:] for r in ROWS])
    with pytest.raises(InputError, match="missing required column ev_id"):
        read_sessions(path)


# ----------------------------------------------------------------------------------------------- suspicious input


def test_session_shorter_than_one_step_warns(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    rows = [list(r) for r in ROWS]
    rows[1][1:3] = ["2026-06-01T08:00:00", "2026-06-01T08:10:00"]  # 10 minutes, steps of 15
    fleet = read_sessions(sessions_file(tmp_path, rows=rows))
    ref = read_reference(signal_file(tmp_path, [10.0] * 16), fleet=fleet)
    np.testing.assert_array_equal(unservable_sessions(fleet, ref), [False, True, False])
    said = [r.getMessage() for r in caplog.records if "cannot be served" in r.getMessage()]
    assert len(said) == 1 and "ev2" in said[0] and "shorter than one 900 s step" in said[0]


def test_session_between_two_step_boundaries_warns(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    rows = [list(r) for r in ROWS]
    rows[0][1:3] = ["2026-06-01T08:05:00", "2026-06-01T08:25:00"]  # 20 minutes, but no whole 15-minute step
    fleet = read_sessions(sessions_file(tmp_path, rows=rows))
    check_signal_against_fleet(read_reference(signal_file(tmp_path, [10.0] * 16)), fleet)
    said = [r.getMessage() for r in caplog.records if "cannot be served" in r.getMessage()]
    assert len(said) == 1 and "ev1" in said[0] and "no whole 900 s step" in said[0]


def test_signal_covering_half_the_sessions_time_is_detected(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    rows = [[f"ev{k}", "2026-06-01T08:00:00", "2026-06-01T12:00:00"] + ROWS[0][3:] for k in range(3)]
    fleet = read_sessions(sessions_file(tmp_path, rows=rows))
    ref = read_reference(signal_file(tmp_path, [10.0] * 8))  # 08:00-10:00 of 08:00-12:00
    assert signal_coverage(ref, fleet) == pytest.approx(0.5)
    assert check_signal_against_fleet(ref, fleet, source="signal.csv") == pytest.approx(0.5)
    said = [r.getMessage() for r in caplog.records if "of the sessions' plugged time" in r.getMessage()]
    assert len(said) == 1 and "50 %" in said[0] and said[0].startswith("signal.csv: covers 2026-06-01T08:00:00")
    caplog.clear()
    whole = read_reference(signal_file(tmp_path, [10.0] * 16), fleet=fleet)
    assert signal_coverage(whole, fleet) == 1.0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_coverage_of_nothing_and_of_nothing_plugged():
    ref = Reference(START, np.timedelta64(900, "s"), np.zeros(4))
    assert signal_coverage(ref, synthetic_fleet(0, seed=1)) == 1.0
    fleet = synthetic_fleet(5, seed=1, start="2026-07-01T00:00:00")  # a month later
    assert signal_coverage(ref, fleet) == 0.0


def test_almost_covered_is_not_shown_as_100_percent():
    assert tables_module._share(0.9996) == "99.9 %" and tables_module._share(1.0) == "100 %"


# ----------------------------------------------------------------------------------------------- JSON


def test_json_safe_maps_non_finite_numbers_to_null():
    obj = {"sse_kw2": float("inf"), "gap": np.float64("nan"), "n": np.int64(3), "ok": np.bool_(True),
           "nested": [1.5, -np.inf, (np.float32(2.0), None)], "arr": np.array([1.0, np.nan]), "s": "x"}
    safe = json_safe(obj)
    text = json.dumps(safe, allow_nan=False)
    assert json.loads(text) == {"sse_kw2": None, "gap": None, "n": 3, "ok": True,
                                "nested": [1.5, None, [2.0, None]], "arr": [1.0, None], "s": "x"}
    assert finite_or_none(float("nan")) is None and finite_or_none(2) == 2 and finite_or_none(None) is None


def test_validate_sessions_frames_get_the_same_limits():
    frame = synthetic_fleet(3, seed=2).to_frame()
    frame.loc[1, "p_discharge_max_kw"] = 5e3
    with pytest.raises(InputError, match=r"^mine line 3, column p_discharge_max_kw: value 5000.0 must be <= 1000"):
        validate_sessions(frame, source="mine")


def test_evagg_fleet_refuses_a_signal_for_an_empty_fleet(tmp_path, capsys):
    from evagg.scenarios.cli import main

    code = main(["fleet", "--n", "0", "--seed", "1", "--out", str(tmp_path / "f.csv"),
                 "--signal-out", str(tmp_path / "r.csv")])
    assert code == 2
    assert "--n 0" in capsys.readouterr().err
    assert not (tmp_path / "f.csv").exists() and not (tmp_path / "r.csv").exists()
