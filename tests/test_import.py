"""Session import (`evagg import acn|elaad`, simulators/imports.py), time zones of the tables and of --start, and
studies on one's own sessions (`evagg run --sessions`). Every input file is written here, in the formats' own
shapes (ACN-Data's JSON with RFC 1123 GMT times, ElaadNL's ';' CSV with day-first times and decimal commas)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from evagg.scenarios.cli import main
from evagg.scenarios.errors import ScenarioError
from evagg.scenarios.inputs import spread_over_buses
from evagg.scenarios.options import Options
from evagg.simulators.fleet import LIMITS, Fleet
from evagg.simulators.imports import Assumptions, read_acn, read_elaad
from evagg.simulators.reference import Reference
from evagg.simulators.tables import InputError, read_reference, read_sessions, write_reference

ETA = Assumptions().eta


def rfc(ts: str) -> str:
    """An ISO time (UTC) as ACN-Data writes it: RFC 1123 in GMT."""
    return pd.Timestamp(ts).strftime("%a, %d %b %Y %H:%M:%S GMT")


def acn_item(sid, arrive, leave, kwh, station="2-39-78-362", done=None, inputs=None):
    return {"_id": f"id-{sid}", "clusterID": "0039", "connectionTime": rfc(arrive) if arrive else None,
            "disconnectTime": rfc(leave) if leave else None, "doneChargingTime": rfc(done) if done else None,
            "kWhDelivered": kwh, "sessionID": sid, "siteID": "0002", "spaceID": "CA-496", "stationID": station,
            "timezone": "America/Los_Angeles", "userID": None, "userInputs": inputs}


def user_input(modified, kwh, departure):
    return {"WhPerMile": 400, "kWhRequested": kwh, "milesRequested": 70, "minutesAvailable": 463,
            "modifiedAt": rfc(modified), "paymentRequired": True, "requestedDeparture": rfc(departure),
            "userID": 194}


GOOD_ACN = [
    acn_item("s1", "2018-04-25T11:08:04", "2018-04-25T13:20:10", 7.932, done="2018-04-25T13:00:00"),
    # two userInputs listed out of order: the latest by modifiedAt (12 kWh, leave 22:28) counts
    acn_item("s2", "2018-04-25T13:45:10", "2018-04-26T00:56:16", 10.013, station="2-39-79-380",
             inputs=[user_input("2018-04-25T14:46:03", 12.0, "2018-04-25T22:28:10"),
                     user_input("2018-04-25T13:46:03", 28.0, "2018-04-25T21:28:10")]),
    acn_item("s3", "2018-04-25T15:00:00", "2018-04-25T19:00:00", 100.0, station="2-39-78-362"),  # a big battery
]
DIRTY_ACN = [
    acn_item("d1", "2018-04-25T15:00:00", "2018-04-25T14:00:00", 3.0),  # leaves before it arrives
    acn_item("d2", None, "2018-04-25T14:00:00", 3.0),  # no connection time
    acn_item("d3", "2018-04-25T12:00:00", "2018-04-25T14:00:00", -1.0),  # negative energy
    acn_item("s1", "2018-04-25T12:00:00", "2018-04-25T14:00:00", 1.0),  # a repeated sessionID
    "not a session",
]


def write_acn(path, items, wrapped=True):
    doc = {"_meta": {"max_results": 25, "page": 1, "total": len(items)}, "_items": items} if wrapped else items
    path.write_text(json.dumps(doc, indent=1))
    return path


def check_energy_bounds(frame):
    """Every imported session within the sessions table's rules and the plausibility limits."""
    assert (frame.departure > frame.arrival).all()
    assert (frame.energy_initial_kwh >= 0).all() and (frame.energy_initial_kwh <= frame.capacity_kwh).all()
    assert (frame.energy_target_kwh <= frame.capacity_kwh + 1e-9).all()  # the battery holds what it took
    assert (frame.capacity_kwh <= LIMITS["capacity_kwh"].high).all()
    stay_h = (frame.departure - frame.arrival).dt.total_seconds() / 3600
    grid_kwh = (frame.energy_target_kwh - frame.energy_initial_kwh) / frame.eta_charge
    assert (frame.p_charge_max_kw * stay_h >= grid_kwh - 1e-6).all()  # the energy fits into the stay


# ----------------------------------------------------------------------------------------------- ACN-Data


def test_acn_mapping(tmp_path, caplog):
    path = write_acn(tmp_path / "acn.json", GOOD_ACN + DIRTY_ACN)
    with caplog.at_level(logging.WARNING):
        frame = read_acn(path)
    assert frame.ev_id.tolist() == ["s1", "s2", "s3"]
    assert frame.arrival[1] == pd.Timestamp("2018-04-25T13:45:10")  # GMT kept as UTC
    assert frame.departure[1] == pd.Timestamp("2018-04-26T00:56:16")
    grid_kwh = (frame.energy_target_kwh - frame.energy_initial_kwh) / ETA
    np.testing.assert_allclose(grid_kwh, [7.932, 10.013, 100.0], atol=1e-5)  # the energy the EV took
    assert frame.departure_declared.tolist() == [pd.Timestamp("2018-04-25T13:20:10"),  # none given: the actual
                                                 pd.Timestamp("2018-04-25T22:28:10"),  # the latest input's
                                                 pd.Timestamp("2018-04-25T19:00:00")]
    assert frame.station.tolist() == ["2-39-78-362", "2-39-79-380", "2-39-78-362"]
    assert frame.capacity_kwh[0] == 60.0 and frame.capacity_kwh[2] > 60.0  # raised for 100 kWh, not below it
    check_energy_bounds(frame)
    # charged 7.932 kWh in 1.87 h (doneChargingTime): the charger gives at least that rate
    assert frame.p_charge_max_kw[0] >= 7.932 / ((pd.Timestamp("2018-04-25T13:00:00")
                                                 - pd.Timestamp("2018-04-25T11:08:04")).total_seconds() / 3600)
    assert [(s.where, s.id) for s in frame.attrs["skipped"]] == [
        ("item 4", "d1"), ("item 5", "d2"), ("item 6", "d3"), ("item 7", "s1"), ("item 8", "")]
    said = [r.getMessage() for r in caplog.records]
    assert any("item 4 (sessionID d1): skipped" in m and "is not after" in m for m in said)
    assert any("item 7 (sessionID s1): skipped: repeats the sessionID of item 1" in m for m in said)
    assert any("5 of 8 rows skipped" in m for m in said)


def test_acn_plain_list_and_seeds(tmp_path):
    wrapped = read_acn(write_acn(tmp_path / "a.json", GOOD_ACN), seed=5)
    plain = read_acn(write_acn(tmp_path / "b.json", GOOD_ACN, wrapped=False), seed=5)
    pd.testing.assert_frame_equal(wrapped, plain)
    other = read_acn(tmp_path / "a.json", seed=6)
    assert not np.array_equal(other.energy_initial_kwh, wrapped.energy_initial_kwh)
    # a dirty row does not shift the others' draws
    with_dirty = read_acn(write_acn(tmp_path / "c.json", GOOD_ACN + DIRTY_ACN), seed=5)
    pd.testing.assert_frame_equal(with_dirty, wrapped)
    fixed = read_acn(tmp_path / "a.json", soc_initial=0.3, v2g_share=1.0, capacity_kwh=80)
    np.testing.assert_allclose(fixed.energy_initial_kwh / fixed.capacity_kwh, 0.3, atol=1e-4)
    np.testing.assert_array_equal(fixed.p_discharge_max_kw, fixed.p_charge_max_kw)
    assert (fixed.capacity_kwh >= 80).all()


def test_acn_requested_energy(tmp_path, caplog):
    greedy = acn_item("s4", "2018-04-25T15:00:00", "2018-04-25T19:00:00", 10.0,
                      inputs=[user_input("2018-04-25T15:01:00", 80.0, "2018-04-25T19:00:00")])
    path = write_acn(tmp_path / "acn.json", GOOD_ACN + [greedy])
    with caplog.at_level(logging.WARNING):
        frame = read_acn(path, energy="requested")
    grid_kwh = (frame.energy_target_kwh - frame.energy_initial_kwh) / ETA
    np.testing.assert_allclose(grid_kwh, [7.932, 12.0, 100.0, 80.0], atol=1e-5)  # s2: 12 kWh, its latest input
    check_energy_bounds(frame.iloc[:3])
    # asking 80 kWh where 10 were taken in 4 h: the battery holds the request, the charger stays what it was
    delivered = read_acn(path)
    assert frame.p_charge_max_kw[3] == delivered.p_charge_max_kw[3] == Assumptions().charger_kw
    assert frame.energy_target_kwh[3] <= frame.capacity_kwh[3] + 1e-9
    assert frame.p_charge_max_kw[3] * 4 < 80.0  # out of reach: a shortfall for the study to count
    assert any("2 of the 4 sessions imported have no kWhRequested" in r.getMessage() for r in caplog.records)


def test_acn_strict_and_nothing_written(tmp_path, capsys):
    path = write_acn(tmp_path / "acn.json", GOOD_ACN + DIRTY_ACN)
    out = tmp_path / "sessions.csv"
    assert main(["import", "acn", str(path), "--out", str(out), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "item 4 (sessionID d1)" in err and "(and 4 more problems" in err and not out.exists()
    with pytest.raises(InputError, match="item 4"):
        read_acn(path, strict=True)
    assert main(["import", "acn", str(path), "--out", str(path)]) == 2  # never over the input
    assert "which this command reads" in capsys.readouterr().err and json.loads(path.read_text())["_items"]
    only_dirty = write_acn(tmp_path / "dirty.json", DIRTY_ACN[:3])
    assert main(["import", "acn", str(only_dirty), "--out", str(out)]) == 2
    assert "holds no session" in capsys.readouterr().err and not out.exists()
    (tmp_path / "broken.json").write_text('{"_items": [')
    assert main(["import", "acn", str(tmp_path / "broken.json"), "--out", str(out)]) == 2
    assert "is not valid JSON" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("flag, value, says", [
    ("--soc-initial", "0.5,0.2", "LO <= HI < 1"),
    ("--soc-initial", "1", "LO <= HI < 1"),
    ("--seed", "-1", "0 or more"),
    ("--capacity-kwh", "0", "between 0 and"),
    ("--charger-kw", "x", "must be a number"),
    ("--v2g-share", "1.5", "between 0 and 1"),
])
def test_import_assumptions_out_of_range_name_their_flag(tmp_path, capsys, flag, value, says):
    """Checked from the option table like every command's (one line naming the flag, exit 2, nothing written)."""
    path = write_acn(tmp_path / "acn.json", GOOD_ACN)
    out = tmp_path / "sessions.csv"
    assert main(["import", "acn", str(path), "--out", str(out), flag, value]) == 2
    err = capsys.readouterr().err
    assert f"({flag})" in err and says in err and "Traceback" not in err and not out.exists()


def test_import_defaults_are_the_importers_own(tmp_path):
    """No flag given: the same table as read_acn with its documented Assumptions."""
    path = write_acn(tmp_path / "acn.json", GOOD_ACN)
    out = tmp_path / "sessions.csv"
    assert main(["import", "acn", str(path), "--out", str(out)]) == 0
    pd.testing.assert_frame_equal(read_sessions(out).to_frame(), Fleet.from_frame(read_acn(path)).to_frame(),
                                  check_dtype=False, rtol=1e-9)


# ----------------------------------------------------------------------------------------------- ElaadNL

ELAAD_HEADER = ("TransactionId;ChargePoint;Connector;UTCTransactionStart;UTCTransactionStop;StartCard;"
                "ConnectedTime;ChargeTime;TotalEnergy;MaxPower")
ELAAD_ROWS = [
    "1001;EVB-P1;1;01/01/2019 11:33;01/01/2019 15:10;card1;3,6167;1,5;5,2;3,7",
    "1002;EVB-P2;1;02/01/2019 08:00;02/01/2019 17:00;card2;9;2;20;3,7",  # 20 kWh in 2 h: 10 kW, not 3.7
    "1003;EVB-P1;2;03/01/2019 08:00;;card3;;;1;3",  # no stop
    "1004;EVB-P1;2;03/01/2019 09:00;03/01/2019 10:00;card3;1;1;-1;3",  # negative energy
    "1005;EVB-P3;1;03/01/2019 12:00;03/01/2019 11:00;card4;1;1;2;3",  # stop before start
]


def test_elaad_mapping(tmp_path, caplog):
    path = tmp_path / "transactions.csv"
    path.write_text("\n".join([ELAAD_HEADER] + ELAAD_ROWS) + "\n")
    with caplog.at_level(logging.WARNING):
        frame = read_elaad(path)
    assert frame.ev_id.tolist() == ["1001", "1002"] and frame.station.tolist() == ["EVB-P1", "EVB-P2"]
    assert frame.arrival[0] == pd.Timestamp("2019-01-01T11:33:00")  # day first
    assert frame.arrival[1] == pd.Timestamp("2019-01-02T08:00:00")
    grid_kwh = (frame.energy_target_kwh - frame.energy_initial_kwh) / ETA
    np.testing.assert_allclose(grid_kwh, [5.2, 20.0], atol=1e-5)
    assert frame.p_charge_max_kw[0] == 3.7  # MaxPower
    assert frame.p_charge_max_kw[1] >= 20.0 / 2.0  # never below TotalEnergy / ChargeTime
    assert "departure_declared" not in frame.columns
    check_energy_bounds(frame)
    assert [(s.where, s.id) for s in frame.attrs["skipped"]] == [("line 4", "1003"), ("line 5", "1004"),
                                                                 ("line 6", "1005")]
    said = [r.getMessage() for r in caplog.records]
    assert any("line 5 (TransactionId 1004): skipped: TotalEnergy -1 kWh is negative" in m for m in said)
    assert any("3 of 5 rows skipped" in m for m in said)
    # the same data ','-separated with ISO times: the same table
    comma = tmp_path / "comma.csv"
    comma.write_text("\n".join([ELAAD_HEADER.replace(";", ","),
                                "1001,EVB-P1,1,2019-01-01T11:33:00,2019-01-01 15:10:00,card1,3.6167,1.5,5.2,3.7",
                                "1002,EVB-P2,1,2019-01-02T08:00,2019-01-02T17:00,card2,9,2,20,3.7"]) + "\n")
    again = read_elaad(comma)
    pd.testing.assert_frame_equal(again, frame)
    with pytest.raises(InputError, match=r"line 4 \(TransactionId 1003\).*and 2 more"):
        read_elaad(path, strict=True)


def test_elaad_missing_column_and_energy_option(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text(ELAAD_HEADER.replace(";MaxPower", "") + "\n" + ELAAD_ROWS[0].rsplit(";", 1)[0] + "\n")
    with pytest.raises(InputError, match="missing required column MaxPower"):
        read_elaad(path)
    assert main(["import", "elaad", str(path), "--out", str(tmp_path / "s.csv"), "--energy", "requested"]) == 2
    assert "--energy is for ACN-Data" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- time zones

SESSIONS_HEADER = ("ev_id,arrival,departure,energy_initial_kwh,energy_target_kwh,capacity_kwh,p_charge_max_kw,"
                   "p_discharge_max_kw,eta_charge,eta_discharge")


def test_aware_times_converted_and_said_once(tmp_path, caplog):
    path = tmp_path / "s.csv"
    path.write_text(SESSIONS_HEADER + "\n"
                    "a,2026-03-28T10:00:00+01:00,2026-03-28T17:00:00+01:00,1,20,50,7,0,0.9,0.9\n"
                    "b,2026-03-29T10:00:00+02:00,2026-03-29T17:00:00Z,1,20,50,7,0,0.9,0.9\n")
    with caplog.at_level(logging.WARNING):
        fleet = read_sessions(path)
    assert fleet.arrival.tolist() == [np.datetime64("2026-03-28T09:00:00"), np.datetime64("2026-03-29T08:00:00")]
    notes = [r.getMessage() for r in caplog.records if "UTC offset" in r.getMessage()]
    assert notes == [f"{path}: times with a UTC offset (+00:00, +01:00, +02:00) converted to UTC"]


def test_mixed_times_are_an_error_naming_both_lines(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(SESSIONS_HEADER + "\n"
                    "a,2026-03-28T10:00:00,2026-03-28T17:00:00,1,20,50,7,0,0.9,0.9\n"
                    "b,2026-03-29T10:00:00,2026-03-29T17:00:00+02:00,1,20,50,7,0,0.9,0.9\n")
    with pytest.raises(InputError) as info:
        read_sessions(path)
    message = str(info.value)
    assert "mixes times with a UTC offset (first: line 3, column departure" in message
    assert "without one (first: line 2, column arrival" in message
    signal = tmp_path / "r.csv"
    signal.write_text("time,p_ref_kw\n2026-03-28T10:00:00+01:00,1\n2026-03-28T09:15:00,1\n")
    with pytest.raises(InputError, match="line 2.*line 3"):
        read_reference(signal)
    elaad = tmp_path / "e.csv"
    elaad.write_text(ELAAD_HEADER + "\n" + ELAAD_ROWS[0] + "\n"
                     "1002;EVB-P2;1;2019-01-02T08:00:00+01:00;2019-01-02T17:00:00+01:00;c;9;2;20;3,7\n")
    with pytest.raises(InputError, match="mixes times with a UTC offset"):
        read_elaad(elaad)


def test_start_with_an_offset(caplog):
    with caplog.at_level(logging.WARNING):
        opts = Options.make("feeder_day", start="2026-01-14T13:00:00+01:00")
    assert opts.start == "2026-01-14T12:00:00"
    assert [r.getMessage() for r in caplog.records if "start" in r.getMessage()] == [
        "start 2026-01-14T13:00:00+01:00: a time with a UTC offset (+01:00) converted to UTC: 2026-01-14T12:00:00"]


# ----------------------------------------------------------------------------------------------- own sessions


def test_spread_over_buses_by_station():
    fleet = read_sessions_frame(pd.DataFrame({
        "ev_id": [f"e{k}" for k in range(6)], "station": ["A", "B", "A", "C", "B", "D"]}))
    buses = np.array([3, 7, 11])
    bus = spread_over_buses(fleet, buses, seed=1)
    assert bus[0] == bus[2] and bus[1] == bus[4]  # one station, one bus
    assert len(set(bus[[0, 1, 3]])) == 3 and bus[5] == bus[0]  # round robin over a shuffle of the buses
    np.testing.assert_array_equal(bus, spread_over_buses(fleet, buses, seed=1))
    assert set(bus) <= set(buses)


def read_sessions_frame(extra: pd.DataFrame):
    """A fleet of len(extra) one-hour sessions with `extra`'s columns (ev_id and more)."""
    from evagg.simulators.fleet import Fleet
    from evagg.simulators.tables import validate_sessions
    n = len(extra)
    frame = pd.DataFrame({"arrival": ["2026-01-14T12:00:00"] * n, "departure": ["2026-01-14T13:00:00"] * n,
                          "energy_initial_kwh": 1.0, "energy_target_kwh": 5.0, "capacity_kwh": 50.0,
                          "p_charge_max_kw": 7.0, "p_discharge_max_kw": 0.0, "eta_charge": 0.9,
                          "eta_discharge": 0.9})
    return Fleet.from_frame(validate_sessions(pd.concat([extra, frame], axis=1)))


def test_own_sessions_options(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(SESSIONS_HEADER + "\n"
                    "a,2018-04-25T11:08:04,2018-04-25T13:20:10,1,20,50,7,0,0.9,0.9\n"
                    "b,2018-04-25T13:45:10,2018-04-26T00:56:16,1,20,50,7,0,0.9,0.9\n"
                    "c,2018-05-25T13:45:10,2018-05-26T00:56:16,1,20,50,7,0,0.9,0.9\n")
    opts = Options.make("feeder_day", sessions=str(path))
    assert opts.start == "2018-04-25T11:00:00" and opts.evs == 2  # from the first arrival; c is outside
    with pytest.raises(ScenarioError, match="no session is plugged in within the study window"):
        Options.make("feeder_day", sessions=str(path), start="2026-01-14T12:00:00")
    with pytest.raises(ScenarioError, match="--evs is for the synthetic fleet"):
        Options.make("feeder_day", sessions=str(path), evs=10)
    with pytest.raises(ScenarioError, match="no such file"):
        Options.make("feeder_day", sessions=str(tmp_path / "none.csv"))


def test_round_trip_dispatch_and_run(tmp_path, capsys):
    """An imported table is accepted by `evagg dispatch` and by `evagg run --sessions` (a short study)."""
    items = GOOD_ACN + [acn_item(f"x{k}", f"2018-04-25T{11 + k % 3}:{10 * k:02d}:00", f"2018-04-25T{15 + k % 4}:00:00",
                                 4.0 + k, station=f"st{k % 4}") for k in range(6)]
    acn = write_acn(tmp_path / "acn.json", items)
    sessions = tmp_path / "sessions.csv"
    assert main(["import", "acn", str(acn), "--out", str(sessions), "--v2g-share", "0.5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_sessions"] == 9 and summary["skipped"] == 0 and summary["departure_declared"]
    fleet = read_sessions(sessions)
    # departure_declared is a column the reader parses (what the plan uses), station is kept as text
    assert fleet.bus is None and list(fleet.extra.columns) == ["station"] and fleet.departure_declared is not None

    signal = tmp_path / "signal.csv"
    start = np.datetime64("2018-04-25T11:00:00")
    write_reference(Reference(start, np.timedelta64(900, "s"), np.full(48, 15.0)), signal)
    result = tmp_path / "result.csv"
    assert main(["dispatch", "--sessions", str(sessions), "--signal", str(signal), "--out", str(result)]) == 0
    dispatched = json.loads(capsys.readouterr().out)
    assert dispatched["n_evs"] == 9 and not any(dispatched["violations"].values())

    out = tmp_path / "run"
    code = main(["run", "--sessions", str(sessions), "--steps", "8", "--out", str(out), "--no-plots",
                 "--no-progress", "--aggregators", "2"])
    err = capsys.readouterr().err
    assert code == 0, err
    run = json.loads((out / "summary.json").read_text())
    assert run["complete"] and run["options"]["sessions"] == str(sessions) and run["options"]["evs"] <= 9
    assert run["options"]["start"] == "2018-04-25T11:00:00"
    parts = [read_sessions(out / a["sessions"]) for a in run["aggregators"]]
    ids = np.concatenate([p.ev_id for p in parts])
    assert len(set(ids)) == len(ids) == run["options"]["evs"]  # each session with one aggregator
    station_bus = pd.DataFrame({"s": np.concatenate([p.extra["station"] for p in parts]),
                                "b": np.concatenate([p.bus for p in parts])}).drop_duplicates()
    assert not station_bus.s.duplicated().any()  # one station, one bus (over the aggregators)
    assert all((p.arrival >= start).all() for p in parts)


def test_elaad_round_trip_dispatch_and_run(tmp_path, capsys):
    """An imported ElaadNL table is accepted by `evagg dispatch` and by `evagg run --sessions` too."""
    path = tmp_path / "transactions.csv"
    path.write_text("\n".join([ELAAD_HEADER] + ELAAD_ROWS[:2]) + "\n")
    sessions = tmp_path / "sessions.csv"
    assert main(["import", "elaad", str(path), "--out", str(sessions)]) == 0
    assert json.loads(capsys.readouterr().out)["n_sessions"] == 2
    signal = tmp_path / "signal.csv"
    write_reference(Reference(np.datetime64("2019-01-01T11:30:00"), np.timedelta64(900, "s"), np.full(24, 2.0)),
                    signal)
    result = tmp_path / "result.csv"
    assert main(["dispatch", "--sessions", str(sessions), "--signal", str(signal), "--out", str(result)]) == 0
    dispatched = json.loads(capsys.readouterr().out)
    assert dispatched["n_evs"] == 2 and not any(dispatched["violations"].values()) and result.is_file()
    out = tmp_path / "run"
    code = main(["run", "--sessions", str(sessions), "--steps", "4", "--out", str(out), "--no-plots",
                 "--no-progress", "--aggregators", "1"])
    assert code == 0, capsys.readouterr().err
    run = json.loads((out / "summary.json").read_text())
    assert run["complete"] and run["options"]["start"] == "2019-01-01T11:30:00" and run["options"]["evs"] == 1
