"""Property-based tests (hypothesis), issue 13: over random valid fleets, signals and grid limits every dispatch
method returns a dispatch with 0 violations and finite figures; over random invalid rows the sessions reader
refuses each with an InputError naming its line and column.

Small on purpose (1-6 EVs, 4-16 steps, few examples): the whole module runs in well under a minute. A failing
example prints the fleet as a sessions CSV and the signal, ready to be saved and run with `evagg dispatch`.
"""
from __future__ import annotations

import csv
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from evagg.simulators.dispatch import METHODS, dispatch
from evagg.simulators.fleet import SESSION_COLUMNS, Fleet
from evagg.simulators.limits import Limits
from evagg.simulators.reference import Reference
from evagg.simulators.tables import InputError, read_reference, read_sessions, validate_sessions

START = np.datetime64("2026-06-01T00:00:00", "s")
FAST = [m for m in METHODS if m != "exact"]
HEADER = list(SESSION_COLUMNS) + ["energy_min_kwh"]


# ----------------------------------------------------------------------------------------------- valid inputs


@st.composite
def cases(draw, max_evs=6, max_steps=16, with_limits=True):
    """(fleet, reference, limits or None): a valid fleet of 1..max_evs sessions on a grid of 4..max_steps steps,
    a signal within the fleet's power range (and sometimes beyond what it can do), and maybe grid limits that
    keep 0 kW feasible (P_min <= 0 <= P_max, as a real operator's limits do)."""
    n = draw(st.integers(1, max_evs))
    n_steps = draw(st.integers(4, max_steps))
    step_s = draw(st.sampled_from([900, 3600]))
    horizon = n_steps * step_s
    rows = []
    for k in range(n):
        arr = draw(st.integers(-horizon // 2, horizon))  # may arrive before the start, or off the step grid
        stay = draw(st.integers(1, 2 * horizon))  # may be shorter than a step, or leave after the horizon
        cap = draw(st.floats(5.0, 120.0))
        pc = draw(st.sampled_from([0.0, 3.7, 11.0, 22.0]) | st.floats(0.0, 60.0))
        rows.append(dict(
            ev_id=f"ev{k}",
            arrival=START + np.timedelta64(arr, "s"),
            departure=START + np.timedelta64(arr + stay, "s"),
            energy_initial_kwh=cap * draw(st.floats(0.0, 1.0)),
            energy_target_kwh=cap * draw(st.floats(0.0, 1.2)),
            capacity_kwh=cap,
            p_charge_max_kw=pc,
            p_discharge_max_kw=draw(st.sampled_from([0.0, pc]) | st.floats(0.0, 30.0)),
            eta_charge=draw(st.floats(0.7, 1.0)),
            eta_discharge=draw(st.floats(0.7, 1.0)),
            energy_min_kwh=cap * draw(st.floats(0.0, 0.5)),
        ))
    fleet = Fleet.from_frame(validate_sessions(pd.DataFrame(rows)))
    power = float(fleet.p_charge_max_kw.sum() + fleet.p_discharge_max_kw.sum())
    scale = draw(st.sampled_from([0.0, 0.3, 1.0, 2.0]))
    p_ref = draw(st.lists(st.floats(-scale * power - 1, scale * power + 1), min_size=n_steps, max_size=n_steps))
    reference = Reference(START, np.timedelta64(step_s, "s"), np.round(p_ref, 3))
    limits = None
    if with_limits and draw(st.booleans()):
        up, down = float(fleet.p_charge_max_kw.sum()), float(fleet.p_discharge_max_kw.sum())
        share = st.floats(0.0, 1.0)
        p_max = [up * draw(share) for _ in range(n_steps)] if draw(st.booleans()) else None
        p_min = [-down * draw(share) for _ in range(n_steps)] if draw(st.booleans()) else None
        groups = {}
        if n >= 2 and draw(st.booleans()):
            members = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
            groups["bus 1"] = (members, None, float(fleet.p_charge_max_kw[members].sum()) * draw(share))
        limits = Limits.build(n, n_steps, p_min_kw=p_min, p_max_kw=p_max, groups=groups)
    return fleet, reference, limits


def reproducer(fleet: Fleet, reference: Reference, limits) -> str:
    """The case as text: sessions CSV, signal CSV and the limits, to paste into files."""
    text = "sessions.csv:\n" + fleet.to_frame().to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%S",
                                                        float_format=lambda v: repr(float(v)))
    text += "signal.csv:\n" + reference.to_frame().to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%S")
    if limits is not None:
        for r, name in enumerate(limits.names):
            text += (f"limit {name}: members {np.flatnonzero(limits.members.toarray()[r]).tolist()}, "
                     f"P_min {limits.p_min_kw[r].tolist()}, P_max {limits.p_max_kw[r].tolist()}\n")
    return text


def finite_or_none(value) -> bool:
    if value is None or isinstance(value, (str, bool)):
        return True
    if isinstance(value, dict):
        return all(finite_or_none(v) for v in value.values())
    return math.isfinite(value)


def check_dispatch(fleet, reference, limits, method):
    try:
        result = dispatch(fleet, reference, method=method, limits=limits)
    except Exception as exc:  # pragma: no cover - an engine bug: say what input made it
        raise AssertionError(f"{method} raised {type(exc).__name__}: {exc}\n{reproducer(fleet, reference, limits)}")
    bad = {k: v for k, v in result.violations.items() if v}
    assert not bad, f"{method}: violations {bad} ({result.message})\n{reproducer(fleet, reference, limits)}"
    summary = result.summary()
    assert all(finite_or_none(v) for v in summary.values()), \
        f"{method}: non-finite figures {summary}\n{reproducer(fleet, reference, limits)}"
    for a in (result.pc, result.pd, result.energy):
        assert np.all(np.isfinite(a)), f"{method}: non-finite dispatch\n{reproducer(fleet, reference, limits)}"
    assert summary["n_evs"] == len(fleet) and summary["n_steps"] == reference.n_steps


def subnormal_discharge_case():
    """Found by the property below: one EV whose need (0.925 kWh in its one step) the fleet limit P_max = 0 kW
    puts out of reach, with a subnormal discharge power. The optimisers' grid-first `reconcile` LP fails on it
    ("could not check the grid limits against the EVs' needs (the LP failed)"), the answer cannot be repaired and
    the fallback keeps the need: the result has departure_need_unmet = 1. With p_discharge_max_kw = 0 (or 1e-9)
    every method lowers the need by 0.925 kWh and has no violation.

    sessions.csv:
        ev_id,arrival,departure,energy_initial_kwh,energy_target_kwh,capacity_kwh,p_charge_max_kw,
        p_discharge_max_kw,eta_charge,eta_discharge,energy_min_kwh
        ev2,2026-06-01T00:00:00,2026-06-01T00:15:00,0.0,5.0,5.0,3.7,2.7670874133909854e-166,1.0,1.0,0.0
    signal.csv: 4 steps of 900 s from 2026-06-01T00:00:00, all 0.0 kW
    limits: Limits.build(1, 4, p_max_kw=0.0)
    """
    row = dict(ev_id="ev2", arrival=START, departure=START + np.timedelta64(900, "s"), energy_initial_kwh=0.0,
               energy_target_kwh=5.0, capacity_kwh=5.0, p_charge_max_kw=3.7,
               p_discharge_max_kw=2.7670874133909854e-166, eta_charge=1.0, eta_discharge=1.0, energy_min_kwh=0.0)
    fleet = Fleet.from_frame(validate_sessions(pd.DataFrame([row])))
    return fleet, Reference(START, np.timedelta64(900, "s"), np.zeros(4)), Limits.build(1, 4, p_max_kw=0.0)


# Derandomized: the same examples every run, so a bug found is pinned (as an @example below) rather than making
# the suite fail now and then; run with more examples by hand to search further.
@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(method=st.sampled_from(FAST), case=cases())
@example(method="dcls", case=subnormal_discharge_case())  # was a bug: a subnormal power (now 0 kW, problem.py)
@example(method="dchr", case=subnormal_discharge_case())
@example(method="edf", case=subnormal_discharge_case())  # the rules keep the limits and report the shortfall
def test_every_method_dispatches_random_valid_cases_feasibly(method, case):
    check_dispatch(*case, method)


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(max_evs=3, max_steps=6))
@example(case=subnormal_discharge_case())
def test_exact_dispatches_small_random_cases_feasibly(case):
    check_dispatch(*case, "exact")


# Found by the property test above: a positive but subnormal power made dcls divide by it and dchr return
# non-finite powers; below a milliwatt a power is 0 kW (problem.py).
@pytest.mark.parametrize("method", ["dcls", "dchr"])
def test_a_subnormal_discharge_power_is_solved_not_fallen_back(method):
    row = dict(ev_id="ev0", arrival=START, departure=START + np.timedelta64(3600, "s"), energy_initial_kwh=10.0,
               energy_target_kwh=20.0, capacity_kwh=50.0, p_charge_max_kw=11.0, p_discharge_max_kw=1e-310,
               eta_charge=0.9, eta_discharge=0.9, energy_min_kwh=0.0)
    fleet = Fleet.from_frame(validate_sessions(pd.DataFrame([row])))
    reference = Reference(START, np.timedelta64(900, "s"), [5.0, -3.0, 8.0, 2.0])
    result = dispatch(fleet, reference, method=method)
    assert not any(result.violations.values())  # holds: the fallback is feasible
    assert result.status != "fallback", result.message


# ----------------------------------------------------------------------------------------------- invalid rows

# (column, bad text, kind) -- each alone makes a valid row invalid in that column.
BAD = {
    "ev_id": [""],
    "arrival": ["", "yesterday", "2026-13-01T00:00:00"],
    "departure": ["", "soon", "2026-06-01 25:00"],
    "energy_initial_kwh": ["", "x", "nan", "inf", "-1", "1e300"],
    "energy_target_kwh": ["", "12 kWh", "NaN", "-inf", "-5", "1001", "1e300"],
    "capacity_kwh": ["", "big", "nan", "inf", "0", "-3", "1001", "1e300"],
    "p_charge_max_kw": ["", "fast", "nan", "inf", "-11", "1000.5", "1e300"],
    "p_discharge_max_kw": ["", "nan", "-inf", "-0.5", "2000", "1e300"],
    "eta_charge": ["", "high", "nan", "0", "-0.1", "1.01", "95"],
    "eta_discharge": ["", "nan", "inf", "0", "1.5", "90"],
    "energy_min_kwh": ["x", "nan", "inf", "-1", "1e300"],
}


@st.composite
def valid_rows(draw, n):
    rows = []
    for k in range(n):
        arr = draw(st.integers(0, 86400))
        cap = draw(st.floats(1.0, 1000.0))
        rows.append([
            f"ev{k}", str(START + np.timedelta64(arr, "s")), str(START + np.timedelta64(arr + draw(st.integers(1, 86400)), "s")),
            repr(cap * draw(st.floats(0.0, 1.0))), repr(draw(st.floats(0.0, 1000.0))), repr(cap),
            repr(draw(st.floats(0.0, 1000.0))), repr(draw(st.floats(0.0, 1000.0))),
            repr(draw(st.floats(0.01, 1.0))), repr(draw(st.floats(0.01, 1.0))), repr(cap * draw(st.floats(0.0, 1.0))),
        ])
    return rows


@st.composite
def invalid_tables(draw):
    """(rows, line, column): valid rows with one bad cell (or pair of cells), and where the error must be."""
    n = draw(st.integers(1, 5))
    rows = draw(valid_rows(n))
    k = draw(st.integers(0, n - 1))
    kind = draw(st.sampled_from(["cell", "departure_not_after", "initial_above_capacity", "min_above_capacity",
                                 "duplicate_id"]))
    row = rows[k]
    col = HEADER.index
    if kind == "cell":
        column = draw(st.sampled_from(sorted(BAD)))
        row[col(column)] = draw(st.sampled_from(BAD[column]))
        if column == "capacity_kwh":  # keep the energies valid for any capacity the limit allows: only it is bad
            row[col("energy_initial_kwh")] = row[col("energy_min_kwh")] = "0"
    elif kind == "departure_not_after":
        column = "departure"
        back = draw(st.integers(0, 86400))
        row[col("departure")] = str(np.datetime64(row[col("arrival")]) - np.timedelta64(back, "s"))
    elif kind in ("initial_above_capacity", "min_above_capacity"):
        column = "energy_initial_kwh" if kind == "initial_above_capacity" else "energy_min_kwh"
        cap = float(row[col("capacity_kwh")])
        row[col(column)] = repr(cap + draw(st.floats(1e-3, 100.0)))
    else:
        if n < 2:
            rows.append(list(row))
            rows[-1][0] = "x"
            n, k = 2, 1
            rows[1][0] = rows[0][0]
        else:
            first = draw(st.integers(0, n - 2))
            k = draw(st.integers(first + 1, n - 1))
            rows[k][0] = rows[first][0]
        column = "ev_id"
    return rows, k + 2, column


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=invalid_tables())
def test_every_invalid_row_is_refused_naming_line_and_column(tmp_path, case):
    rows, line, column = case
    path = tmp_path / "sessions.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(HEADER)
        w.writerows(rows)
    with pytest.raises(InputError) as info:
        read_sessions(path)
    err = info.value
    assert (err.line, err.column) == (line, column), (str(err), rows)
    assert str(err).startswith(f"{path} line {line}, column {column}: ")
    assert err.n_problems == 1, err.describe_all()


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.floats(-1e4, 1e4), min_size=2, max_size=10), data=st.data())
def test_every_invalid_signal_value_is_refused_naming_line_and_column(tmp_path, values, data):
    k = data.draw(st.integers(0, len(values) - 1))
    texts = [repr(v) for v in values]
    texts[k] = data.draw(st.sampled_from(["", "x", "nan", "inf", "-inf", "1e300", "-2e7", "5 kW"]))
    path = tmp_path / "signal.csv"
    lines = ["time,p_ref_kw"] + [f"{START + np.timedelta64(900 * j, 's')},{t}" for j, t in enumerate(texts)]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as info:
        read_reference(path)
    assert (info.value.line, info.value.column, info.value.n_problems) == (k + 2, "p_ref_kw", 1), str(info.value)
