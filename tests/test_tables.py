"""Reading, validating and writing the CSV tables (evagg.simulators.tables)."""
from __future__ import annotations

import csv
import os
import stat

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evagg.simulators.dispatch import DispatchResult
from evagg.simulators.fleet import SESSION_COLUMNS, Fleet
from evagg.simulators.problem import Problem, make_feasible
from evagg.simulators.reference import Reference
from evagg.simulators.tables import (
    InputError,
    read_dispatch,
    read_reference,
    read_sessions,
    validate_reference,
    validate_sessions,
    write_dispatch,
    write_reference,
    write_sessions,
)

HEADER = list(SESSION_COLUMNS) + ["energy_min_kwh", "bus"]
GOOD = [
    ["ev1", "2026-06-01T08:00:00", "2026-06-01T17:00:00", "10", "40", "50", "11", "11", "0.95", "0.93", "5", "3"],
    ["ev2", "2026-06-01T18:00:00", "2026-06-02T07:00:00", "20.5", "60", "77", "7.4", "0", "0.9", "0.9", "7.7", "0"],
    ["ev3", "2026-06-01T19:30:00", "2026-06-02T06:00:00", "12", "52", "64", "22", "22", "1", "0.97", "6.4", "12"],
]


def write_table(path, header, rows, prefix=""):
    with open(path, "w", newline="") as f:
        f.write(prefix)
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return path


def sessions_file(tmp_path, edits=None, header=HEADER, rows=GOOD, name="sessions.csv"):
    """A sessions CSV of GOOD with cells replaced: edits = {(row index, column): text}."""
    rows = [list(r) for r in rows]
    for (k, col), text in (edits or {}).items():
        rows[k][header.index(col)] = text
    return write_table(tmp_path / name, header, rows)


def error_of(path, reader=read_sessions) -> InputError:
    with pytest.raises(InputError) as info:
        reader(path)
    return info.value


# ----------------------------------------------------------------------------------------------- sessions: valid


def test_good_sessions_read(tmp_path):
    fleet = read_sessions(sessions_file(tmp_path))
    assert isinstance(fleet, Fleet) and len(fleet) == 3
    assert list(fleet.ev_id) == ["ev1", "ev2", "ev3"]
    assert fleet.arrival[1] == np.datetime64("2026-06-01T18:00:00")
    assert fleet.arrival.dtype == np.dtype("datetime64[s]")
    np.testing.assert_array_equal(fleet.capacity_kwh, [50, 77, 64])
    np.testing.assert_array_equal(fleet.energy_min_kwh, [5, 7.7, 6.4])
    np.testing.assert_array_equal(fleet.bus, [3, 0, 12])
    assert fleet.extra is None


def test_optional_columns_absent_and_empty(tmp_path):
    header = HEADER[:-2]
    fleet = read_sessions(sessions_file(tmp_path, header=header, rows=[r[:-2] for r in GOOD]))
    np.testing.assert_array_equal(fleet.energy_min_kwh, 0.0)
    assert fleet.bus is None
    # An empty energy_min_kwh cell means the default, 0.
    fleet = read_sessions(sessions_file(tmp_path, {(1, "energy_min_kwh"): ""}))
    np.testing.assert_array_equal(fleet.energy_min_kwh, [5, 0, 6.4])


def test_extra_columns_kept(tmp_path):
    header = HEADER + ["owner", "weight"]
    rows = [r + [o, w] for r, o, w in zip(GOOD, ["ann", "bob", "cy"], ["1.5", "2", "3"])]
    fleet = read_sessions(sessions_file(tmp_path, header=header, rows=rows))
    assert list(fleet.extra.columns) == ["owner", "weight"]
    assert list(fleet.extra["owner"]) == ["ann", "bob", "cy"]
    assert list(fleet.extra["weight"]) == ["1.5", "2", "3"]  # as they came: text, never reinterpreted


def test_lenient_forms_accepted(tmp_path):
    # Whitespace around cells and names, a UTF-8 BOM, blank lines, a trailing comma, bus written as 3.0,
    # a space instead of T in times.
    path = tmp_path / "s.csv"
    lines = [" " + ", ".join(HEADER)]
    rows = [list(r) for r in GOOD]
    rows[0][HEADER.index("bus")] = "3.0"
    rows[1][HEADER.index("arrival")] = "2026-06-01 18:00:00"
    lines += [", ".join(r) + "," for r in rows]
    path.write_text("\ufeff" + "\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n", encoding="utf-8")
    fleet = read_sessions(path)
    np.testing.assert_array_equal(fleet.bus, [3, 0, 12])
    assert fleet.arrival[1] == np.datetime64("2026-06-01T18:00:00")


def test_header_only_is_an_empty_fleet(tmp_path):
    fleet = read_sessions(sessions_file(tmp_path, rows=[]))
    assert len(fleet) == 0


def test_timezones_converted_to_naive_utc(tmp_path):
    fleet = read_sessions(sessions_file(tmp_path, {(0, "arrival"): "2026-06-01T10:00:00+02:00",
                                                   (0, "departure"): "2026-06-01T17:00:00Z"}, rows=GOOD[:1]))
    assert fleet.arrival[0] == np.datetime64("2026-06-01T08:00:00")
    assert fleet.departure[0] == np.datetime64("2026-06-01T17:00:00")
    sig = write_table(tmp_path / "r.csv", ["time", "p_ref_kw"],
                      [["2026-06-01T02:00:00+02:00", "1"], ["2026-06-01T01:15:00+01:00", "2"]])
    ref = read_reference(sig)
    assert ref.start == np.datetime64("2026-06-01T00:00:00") and ref.step == np.timedelta64(900, "s")


def test_fractional_seconds_never_lengthen_a_session(tmp_path):
    fleet = read_sessions(sessions_file(tmp_path, {(0, "arrival"): "2026-06-01T08:00:00.2",
                                                   (0, "departure"): "2026-06-01T17:00:00.8"}))
    assert fleet.arrival[0] == np.datetime64("2026-06-01T08:00:01")
    assert fleet.departure[0] == np.datetime64("2026-06-01T17:00:00")


def test_example_files_if_present():
    base = "/work/shared/examples/fleet50"
    if not os.path.exists(base):  # only on the project machine; users' clones have no /work/shared
        return
    fleet = read_sessions(f"{base}/sessions.csv")
    ref = read_reference(f"{base}/signal.csv")
    assert len(fleet) == 50 and ref.n_steps == 96


# ----------------------------------------------------------------------------------------------- sessions: errors

BAD_CELLS = [
    # (row, column, text, what the message must say)
    (2, "capacity_kwh", "-3", "must be > 0"),
    (0, "capacity_kwh", "0", "must be > 0"),
    (1, "eta_charge", "95", "must be in (0, 1]"),
    (1, "eta_discharge", "0", "must be in (0, 1]"),
    (0, "eta_charge", "1.01", "must be in (0, 1]"),
    (0, "p_charge_max_kw", "-11", "must be >= 0 kW"),
    (2, "p_discharge_max_kw", "-0.5", "must be >= 0 kW"),
    (1, "energy_initial_kwh", "-1", "must be >= 0 kWh"),
    (1, "energy_target_kwh", "-60", "must be >= 0 kWh"),
    (1, "energy_min_kwh", "-1", "must be >= 0 kWh"),
    (0, "energy_initial_kwh", "50.5", "exceeds the capacity 50 kWh"),
    (2, "energy_min_kwh", "70", "exceeds the capacity 64 kWh"),
    (1, "departure", "2026-06-01T18:00:00", "must be after the arrival 2026-06-01T18:00:00"),
    (1, "departure", "2026-06-01T17:00:00", "must be after the arrival"),
    (0, "arrival", "yesterday", "is not a valid ISO 8601 time"),
    (0, "departure", "06/01/2026 17:00", "is not a valid ISO 8601 time"),
    (2, "arrival", "2026-06-31T19:30:00", "is not a valid ISO 8601 time"),
    (2, "arrival", "", "is empty"),
    (1, "capacity_kwh", "abc", "is not a number"),
    (1, "capacity_kwh", "77 kWh", "is not a number"),
    (0, "energy_target_kwh", "nan", "is NaN"),
    (0, "energy_target_kwh", "", "is empty"),
    (0, "p_charge_max_kw", "inf", "must be finite"),
    (1, "ev_id", "", "is empty"),
    (1, "ev_id", "ev1", "duplicates the ev_id of line 2"),
    (0, "bus", "-1", "must be a non-negative integer"),
    (0, "bus", "2.5", "must be a non-negative integer"),
    (0, "bus", "bus7", "must be a non-negative integer"),
    (2, "bus", "", "must be a non-negative integer"),
]


@pytest.mark.parametrize("row,column,text,what", BAD_CELLS)
def test_bad_cell_message_names_file_line_column_value(tmp_path, row, column, text, what):
    err = error_of(sessions_file(tmp_path, {(row, column): text}))
    shown = repr(text) if text == "" or " " in text else text
    assert str(err).startswith(f"{tmp_path / 'sessions.csv'} line {row + 2}, column {column}: value {shown} ")
    assert what in str(err)
    assert (err.line, err.column, err.value) == (row + 2, column, text)
    assert err.n_problems == 1
    assert "\n" not in str(err)
    assert isinstance(err, ValueError)


def test_message_format_matches_the_documented_example(tmp_path):
    err = error_of(sessions_file(tmp_path, {(5 - 2, "capacity_kwh"): "-3"},
                                 rows=GOOD + [[f"ev{k}"] + GOOD[0][1:] for k in range(4, 7)]))
    assert str(err) == f"{tmp_path / 'sessions.csv'} line 5, column capacity_kwh: value -3 must be > 0"


def test_lines_are_physical_lines(tmp_path):
    # Blank lines and a quoted cell spanning two lines shift the rows: messages give the line in the file.
    path = tmp_path / "sessions.csv"
    rows = [list(r) for r in GOOD]
    rows[0][0] = "ev\n1"
    rows[2][HEADER.index("capacity_kwh")] = "-3"
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(HEADER)
        w.writerow(rows[0])  # lines 2-3
        f.write("\n")  # line 4
        w.writerow(rows[1])  # line 5
        w.writerow(rows[2])  # line 6
    err = error_of(path)
    assert (err.line, err.column) == (6, "capacity_kwh")


def test_first_problem_by_line_then_column_and_count(tmp_path):
    err = error_of(sessions_file(tmp_path, {(2, "ev_id"): "", (1, "eta_charge"): "2", (1, "capacity_kwh"): "-1"}))
    assert (err.line, err.column) == (3, "capacity_kwh")
    assert err.n_problems == 3
    assert str(err).endswith("(and 2 more problems in this file)")
    assert [(p.line, p.column) for p in err.problems] == [(3, "capacity_kwh"), (3, "eta_charge"), (4, "ev_id")]
    assert len(err.describe_all().splitlines()) == 3


def test_input_error_pickles(tmp_path):
    import pickle

    err = error_of(sessions_file(tmp_path, {(0, "capacity_kwh"): "-3"}))
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.line == 2 and back.problems == err.problems


def test_invalid_capacity_does_not_add_capacity_comparisons(tmp_path):
    err = error_of(sessions_file(tmp_path, {(0, "capacity_kwh"): "-3"}))
    assert err.n_problems == 1


@pytest.mark.parametrize("missing", [["capacity_kwh"], ["arrival", "eta_discharge"]])
def test_missing_columns(tmp_path, missing):
    keep = [k for k, c in enumerate(HEADER) if c not in missing]
    err = error_of(sessions_file(tmp_path, header=[HEADER[k] for k in keep], rows=[[r[k] for k in keep] for r in GOOD]))
    assert err.line == 1
    assert f"sessions.csv line 1: missing required column{'s' if len(missing) > 1 else ''} {', '.join(missing)}" \
        in str(err)


def test_wrong_field_count(tmp_path):
    rows = [list(r) for r in GOOD]
    rows[1] = rows[1][:-3]
    err = error_of(sessions_file(tmp_path, rows=rows))
    assert "sessions.csv line 3: has 9 fields but the header (line 1) has 12" in str(err)


def test_empty_file_and_duplicate_header(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert "empty.csv: is empty: no header line" in str(error_of(empty))
    err = error_of(sessions_file(tmp_path, header=HEADER[:-1] + ["ev_id"]))
    assert "line 1, column ev_id: appears twice in the header" in str(err)


def test_not_utf8(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(",".join(HEADER).encode() + b"\n\xe9v1" + b",x" * 11 + b"\n")
    assert "is not UTF-8 text" in str(error_of(path))


def test_validate_sessions_on_a_typed_frame(fleet50):
    frame = fleet50.to_frame()
    clean = validate_sessions(frame, source="mine")
    assert list(clean.columns[:10]) == list(SESSION_COLUMNS)
    fleet = Fleet.from_frame(clean)
    np.testing.assert_array_equal(fleet.capacity_kwh, fleet50.capacity_kwh)
    np.testing.assert_array_equal(fleet.arrival, fleet50.arrival)
    bad = frame.copy()
    bad.loc[4, "eta_charge"] = np.nan
    with pytest.raises(InputError, match=r"^mine line 6, column eta_charge: value nan is NaN"):
        validate_sessions(bad, source="mine")


# ----------------------------------------------------------------------------------------------- signal

SIG = [["2026-06-01T00:00:00", "10"], ["2026-06-01T00:15:00", "-2.5"], ["2026-06-01T00:30:00", "0"],
       ["2026-06-01T00:45:00", "7"]]


def signal_file(tmp_path, edits=None, rows=SIG, header=("time", "p_ref_kw"), name="signal.csv"):
    rows = [list(r) for r in rows]
    for (k, col), text in (edits or {}).items():
        rows[k][list(header).index(col)] = text
    return write_table(tmp_path / name, list(header), rows)


def test_good_signal(tmp_path):
    ref = read_reference(signal_file(tmp_path))
    assert isinstance(ref, Reference)
    assert ref.start == np.datetime64("2026-06-01T00:00:00")
    assert ref.step == np.timedelta64(900, "s") and ref.n_steps == 4
    np.testing.assert_array_equal(ref.p_ref_kw, [10, -2.5, 0, 7])


BAD_SIGNAL = [
    (2, "time", "2026-06-01T00:40:00", "is 1500 s after the previous time, but the first step (lines 2-3) is 900 s"),
    (3, "time", "2026-06-01T00:30:00", "is not after the previous time 2026-06-01T00:30:00 (line 4)"),
    (2, "time", "2026-06-01T00:10:00", "is not after the previous time 2026-06-01T00:15:00 (line 3)"),
    (1, "time", "2026-06-01T00:00:00.5", "is 0.5 s after the previous time: the step must be a whole number of "
                                         "seconds"),
    (0, "time", "2026-06-01T00:00:00.5", "has a fraction of a second"),
    (1, "time", "noon", "is not a valid ISO 8601 time"),
    (1, "time", "", "is empty"),
    (2, "p_ref_kw", "lots", "is not a number"),
    (2, "p_ref_kw", "NaN", "is NaN"),
    (3, "p_ref_kw", "", "is empty"),
    (3, "p_ref_kw", "-inf", "must be finite"),
]


@pytest.mark.parametrize("row,column,text,what", BAD_SIGNAL)
def test_bad_signal_message(tmp_path, row, column, text, what):
    err = error_of(signal_file(tmp_path, {(row, column): text}), read_reference)
    shown = repr(text) if text == "" else text
    assert str(err).startswith(f"{tmp_path / 'signal.csv'} line {row + 2}, column {column}: value {shown} ")
    assert what in str(err)
    assert (err.line, err.column) == (row + 2, column)


def test_signal_missing_columns_and_rows(tmp_path):
    err = error_of(signal_file(tmp_path, header=("time", "p_kw")), read_reference)
    assert "signal.csv line 1: missing required column p_ref_kw (found: time, p_kw)" in str(err)
    err = error_of(signal_file(tmp_path, rows=[]), read_reference)
    assert "signal.csv: has no data rows" in str(err)


def test_signal_single_row_needs_the_step(tmp_path):
    path = signal_file(tmp_path, rows=SIG[:1])
    err = error_of(path, read_reference)
    assert "line 2, column time: has a single row, which does not define the step" in str(err)
    ref = read_reference(path, step_s=600)
    assert ref.n_steps == 1 and ref.step == np.timedelta64(600, "s")


def test_signal_step_given_must_match(tmp_path):
    assert read_reference(signal_file(tmp_path), step_s=900).n_steps == 4
    err = error_of(signal_file(tmp_path), lambda p: read_reference(p, step_s=600))
    assert "line 3, column time: value 2026-06-01T00:15:00 is 900 s after the previous time, but the step given " \
           "is 600 s" in str(err)


def test_validate_reference_typed_frame(reference50):
    ref = validate_reference(reference50.to_frame())
    assert ref.start == reference50.start and ref.step == reference50.step
    np.testing.assert_array_equal(ref.p_ref_kw, reference50.p_ref_kw)


# ----------------------------------------------------------------------------------------------- round trips


def test_sessions_round_trip(tmp_path):
    from evagg.simulators.synthetic import synthetic_fleet

    fleet = synthetic_fleet(40, seed=3, buses=[1, 5, 9])
    path = tmp_path / "s.csv"
    write_sessions(fleet, path)
    assert path.read_text().splitlines()[1].split(",")[1] == str(fleet.arrival[0])  # ISO 8601 with T
    back = read_sessions(path)
    assert_fleets_equal(back, fleet)


def assert_fleets_equal(a: Fleet, b: Fleet):
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame(), check_exact=True, check_dtype=False)


def test_signal_round_trip(tmp_path, reference50):
    path = tmp_path / "r.csv"
    write_reference(reference50, path)
    assert path.read_text().splitlines()[1].startswith("2026-06-01T00:00:00,")
    back = read_reference(path)
    assert back.start == reference50.start and back.step == reference50.step
    np.testing.assert_array_equal(back.p_ref_kw, reference50.p_ref_kw)


def _result(fleet, reference, seed=0) -> DispatchResult:
    """A feasible dispatch with awkward floats (random powers made feasible), no solver needed."""
    problem = Problem.build(fleet, reference.start, reference.step, reference.n_steps)
    rng = np.random.default_rng(seed)
    pc = rng.uniform(0, 1, (problem.n_evs, problem.n_steps)) * problem.pc_max[:, None] / 3
    pd_ = rng.uniform(0, 1, pc.shape) * problem.pd_max[:, None] * (rng.random(pc.shape) < 0.3)
    pc, pd_ = make_feasible(problem, pc, pd_)
    return DispatchResult(
        problem=problem, ev_id=fleet.ev_id, p_ref_kw=reference.p_ref_kw, pc=pc, pd=pd_, energy=problem.energy(pc, pd_),
        method="test", status="feasible", message="", solve_time_s=0.0, iterations=0, lower_bound=None, mip_gap=None,
    )


def test_dispatch_round_trip(tmp_path, fleet50, reference50):
    result = _result(fleet50, reference50)
    path = tmp_path / "result.csv"
    write_dispatch(result, path)
    header, first = path.read_text().splitlines()[:2]
    assert header == "time,ev_id,p_charge_kw,p_discharge_kw,energy_kwh"
    assert first[:19] == str(np.datetime64(result.to_frame()["time"].iloc[0], "s"))
    back = read_dispatch(path)
    expected = result.to_frame()
    assert len(back) == len(expected) == int(result.problem.plugged.sum())
    assert (back["time"] == expected["time"]).all() and (back["ev_id"] == expected["ev_id"]).all()
    for c in ("p_charge_kw", "p_discharge_kw", "energy_kwh"):
        np.testing.assert_allclose(back[c], expected[c], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(back["energy_kwh"], expected["energy_kwh"])  # in fact exact


# ----------------------------------------------------------------------------------------------- atomic writes


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path, fleet50, monkeypatch):
    path = tmp_path / "s.csv"
    real_to_csv = pd.DataFrame.to_csv

    def broken(self, f, *args, **kwargs):
        f.write("ev_id,arrival\npartial")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(OSError, match="disk full"):
        write_sessions(fleet50, path)
    assert list(tmp_path.iterdir()) == []
    path.write_text("old\n")
    with pytest.raises(OSError):
        write_sessions(fleet50, path)
    assert path.read_text() == "old\n" and list(tmp_path.iterdir()) == [path]
    monkeypatch.setattr(pd.DataFrame, "to_csv", real_to_csv)
    write_sessions(fleet50, path)
    assert len(read_sessions(path)) == 50 and list(tmp_path.iterdir()) == [path]


def test_written_file_has_normal_permissions(tmp_path, reference50):
    path = tmp_path / "r.csv"
    write_reference(reference50, path)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


# ----------------------------------------------------------------------------------------------- property tests

_T0 = np.datetime64("2026-06-01T00:00:00", "s")


@st.composite
def fleets(draw):
    n = draw(st.integers(0, 12))
    floats = lambda lo, hi: st.floats(lo, hi, allow_nan=False, allow_infinity=False)  # noqa: E731
    arrays = lambda elem: st.lists(elem, min_size=n, max_size=n).map(np.array)  # noqa: E731
    cap = arrays(floats(1e-3, 1e3))
    cap = draw(cap)
    frac = lambda: draw(arrays(floats(0, 1)))  # noqa: E731
    arr = draw(arrays(st.integers(-86400, 3 * 86400)))
    stay = draw(arrays(st.integers(1, 3 * 86400)))
    pc = draw(arrays(floats(0, 350)))
    return Fleet(
        ev_id=np.array([draw(st.text("abcXYZ019_-. ", min_size=0, max_size=4)).strip() + f"#{k}" for k in range(n)],
                       dtype=object),
        arrival=_T0 + arr.astype("timedelta64[s]"),
        departure=_T0 + (arr + stay).astype("timedelta64[s]"),
        energy_initial_kwh=cap * frac(),
        energy_target_kwh=draw(arrays(floats(0, 1e3))),  # up to the plausibility limit (fleet.LIMITS)
        capacity_kwh=cap,
        p_charge_max_kw=pc,
        p_discharge_max_kw=pc * (frac() < 0.5),
        eta_charge=draw(arrays(floats(1e-6, 1))),
        eta_discharge=draw(arrays(floats(1e-6, 1))),
        energy_min_kwh=cap * frac(),
        bus=draw(st.one_of(st.none(), arrays(st.integers(0, 10**6)))),
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fleet=fleets())
def test_random_valid_fleets_round_trip_exactly(tmp_path, fleet):
    path = tmp_path / "s.csv"
    write_sessions(fleet, path)
    back = read_sessions(path)
    assert len(back) == len(fleet)
    if len(fleet):
        assert_fleets_equal(back, fleet)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=30),
       step=st.integers(1, 7 * 86400), offset=st.integers(-10**9, 10**9))
def test_random_signals_round_trip_exactly(tmp_path, values, step, offset):
    ref = Reference(start=_T0 + np.timedelta64(offset, "s"), step=np.timedelta64(step, "s"), p_ref_kw=values)
    path = tmp_path / "r.csv"
    write_reference(ref, path)
    back = read_reference(path, step_s=step if len(values) == 1 else None)
    assert back.start == ref.start and back.step == ref.step
    np.testing.assert_array_equal(back.p_ref_kw, ref.p_ref_kw)
