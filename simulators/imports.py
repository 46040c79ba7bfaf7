"""Sessions tables from the session data that users hold: ACN-Data (Caltech, JPL: JSON) and ElaadNL's open
transactions (CSV). No mosaik: `evagg import acn|elaad` and Python alike.

    read_acn(path, energy="delivered", ...)  -> the sessions table (a validated DataFrame, docs/model.md)
    read_elaad(path, ...)                    -> the same

Mapping (times in UTC, naive, whole seconds):

- ACN-Data (``{"_items": [...], "_meta": {...}}`` as the API and the website export it, or a plain list of
  items): ev_id = ``sessionID``, arrival = ``connectionTime``, departure = ``disconnectTime`` (RFC 1123 in GMT,
  ``Wed, 25 Apr 2018 11:08:04 GMT``; ISO 8601 is also read), energy = ``kWhDelivered`` (what the EV took, so the
  need is feasible) or, with ``energy="requested"``, the ``kWhRequested`` of the latest ``userInputs`` entry (by
  ``modifiedAt``; a session without one keeps its delivered energy, said on stderr), departure_declared =
  that entry's ``requestedDeparture`` (the actual departure where there is none, or where it is not after the
  arrival), station = ``stationID``. Charging time for the charger power: ``doneChargingTime`` - arrival.
- ElaadNL (``;``- or ``,``-separated; a ``;`` file may use decimal commas): ev_id = ``TransactionId``, arrival /
  departure = ``UTCTransactionStart`` / ``UTCTransactionStop`` (day first, ``01/01/2019 11:33``, or ISO 8601),
  energy = ``TotalEnergy`` (kWh), charger power = ``MaxPower`` (kW), station = ``ChargePoint``; ``ChargeTime``
  (hours, else ``ConnectedTime``) is the charging time.

What the data lacks, from seeded assumptions (`Assumptions`; same file, options and seed: the same table):

- battery: ``capacity_kwh`` (default 60 kWh), raised where the session needs more, so that the battery holds
  the energy at arrival plus what the session took: ``capacity = max(capacity_kwh, eta * E / (1 - soc))``;
- energy at arrival: ``soc * capacity``, ``soc`` drawn uniformly in ``soc_initial`` (default 0.2-0.5; one value
  for all: LO = HI);
- target: energy at arrival + ``eta * E`` (the battery side of the grid energy E the session took or asked for);
- charger power: ElaadNL's MaxPower, ACN's ``charger_kw`` (default 6.6 kW, a level-2 charger: the data has no
  power), never below the energy taken / charging time nor / plugged time (so that it fits into the session; a
  request, ``energy="requested"``, does not make the charger stronger: it may be out of reach, a shortfall);
- the battery (above) holds the larger of the energy taken and the energy requested;
- V2G: a share ``v2g_share`` (default 0) of the sessions, drawn, discharge at their charger power;
- efficiencies ``eta`` (default 0.95) both ways.

The draws are made for every row of the file in its order (rows skipped too), so that fixing or dropping one row
does not change the others'.

Dirty rows (a row that cannot be a session: a missing or bad time, stop not after start, a missing or negative
energy, a duplicate id, a stay over 366 days, a battery or charger beyond `fleet.LIMITS`) are skipped: each is
said through the logger ``evagg.simulators.imports`` (on stderr in the ``evagg`` command) with its line (CSV) or
item (JSON, from 1) and id, then their count. ``strict=True`` makes the first an `InputError` instead. A file
with no session left is an `InputError`. The rows skipped are in the result's ``attrs["skipped"]``.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .fleet import LIMITS, MAX_STAY, SESSION_COLUMNS
from .tables import InputError, InputProblem, _parse_floats, _Problems, _read_csv_text, validate_sessions

__all__ = ["Assumptions", "Skipped", "read_acn", "read_elaad", "ENERGY_CHOICES", "ELAAD_COLUMNS"]

log = logging.getLogger(__name__)

ENERGY_CHOICES = ("delivered", "requested")
ELAAD_COLUMNS = ("TransactionId", "ChargePoint", "UTCTransactionStart", "UTCTransactionStop", "ChargeTime",
                 "TotalEnergy", "MaxPower")  # the ones the mapping reads (ConnectedTime too, where present)
_LISTED = 20  # skipped rows said one by one; the rest are counted


@dataclass(frozen=True)
class Assumptions:
    """What the session data lacks (see the module's doc): documented defaults, drawn with `seed`."""

    capacity_kwh: float = 60.0
    soc_initial: tuple = (0.2, 0.5)  # (lo, hi): the state of charge at arrival, drawn uniformly
    v2g_share: float = 0.0
    seed: int = 1
    charger_kw: float = 6.6
    eta: float = 0.95

    def __post_init__(self):
        soc = self.soc_initial
        soc = (float(soc), float(soc)) if np.ndim(soc) == 0 else tuple(float(x) for x in soc)
        object.__setattr__(self, "soc_initial", soc)
        if len(soc) != 2 or not 0.0 <= soc[0] <= soc[1] < 1.0:
            raise ValueError(f"soc_initial must be a share in [0, 1) or a range LO,HI within it, got {soc}")
        if not 0.0 < self.capacity_kwh <= LIMITS["capacity_kwh"].high:
            raise ValueError(f"capacity_kwh must be in (0, {LIMITS['capacity_kwh'].high:g}], got {self.capacity_kwh}")
        if not 0.0 <= self.v2g_share <= 1.0:
            raise ValueError(f"v2g_share must be a share in [0, 1], got {self.v2g_share}")
        if not 0.0 < self.charger_kw <= LIMITS["p_charge_max_kw"].high:
            raise ValueError(f"charger_kw must be in (0, {LIMITS['p_charge_max_kw'].high:g}], got {self.charger_kw}")
        if not 0.0 < self.eta <= 1.0:
            raise ValueError(f"eta must be an efficiency in (0, 1], got {self.eta}")


@dataclass(frozen=True)
class Skipped:
    """A row of the file that cannot be a session: where ("line 7", "item 3"), its id and why."""

    where: str
    id: str
    why: str

    def describe(self, source: str, id_name: str) -> str:
        return f"{source} {self.where} ({id_name} {self.id or '?'}): skipped: {self.why}"


# ----------------------------------------------------------------------------------------------- ACN-Data


def read_acn(path, energy: str = "delivered", strict: bool = False, **assumptions) -> pd.DataFrame:
    """The sessions table of an ACN-Data JSON file (see the module's doc); `assumptions`: the fields of
    `Assumptions`. InputError for a file that is no ACN-Data JSON, for a dirty row with `strict`, or when no
    session is left."""
    if energy not in ENERGY_CHOICES:
        raise ValueError(f"energy must be {' or '.join(ENERGY_CHOICES)}, got {energy!r}")
    a = Assumptions(**assumptions)
    source = str(path)
    items = _acn_items(path)
    n = len(items)
    why = [None] * n  # the first reason a row cannot be a session
    for k, it in enumerate(items):
        if not isinstance(it, dict):
            why[k] = f"is not a session object (a JSON {type(it).__name__})"
    get = lambda key: [it.get(key) if isinstance(it, dict) else None for it in items]  # noqa: E731
    ids = np.array([_text(v) for v in get("sessionID")], dtype=object)
    arrival, bad_arr = _acn_times(get("connectionTime"))
    departure, bad_dep = _acn_times(get("disconnectTime"))
    done, _ = _acn_times(get("doneChargingTime"))
    latest = [_latest_input(it.get("userInputs")) if isinstance(it, dict) else {} for it in items]
    declared, _ = _acn_times([u.get("requestedDeparture") for u in latest])
    delivered = np.array([_number(v) for v in get("kWhDelivered")])
    e, missing = delivered, np.zeros(n, dtype=bool)
    if energy == "requested":
        requested = np.array([_number(u.get("kWhRequested")) for u in latest])
        missing = np.isnan(requested)
        e = np.where(missing, delivered, requested)
    names = {"arrival": "connectionTime", "departure": "disconnectTime", "energy": "kWhRequested or kWhDelivered"
             if energy == "requested" else "kWhDelivered", "id": "sessionID"}
    texts = {"arrival": [_text(v) for v in get("connectionTime")], "departure": [_text(v) for v in get("disconnectTime")]}
    hours = (done - arrival).dt.total_seconds().to_numpy() / 3600.0
    charge_h = np.where(hours > 0, hours, np.nan)
    frame = _sessions(source, [f"item {k + 1}" for k in range(n)], "sessionID", ids, why, arrival, bad_arr,
                      departure, bad_dep, e, charge_h, np.full(n, np.nan), declared,
                      np.array([_text(v) for v in get("stationID")], dtype=object), names, texts, a, strict,
                      took=delivered)
    fallback = int(frame["ev_id"].isin(set(ids[missing])).sum())
    if fallback:
        log.warning("%s: %d of the %d sessions imported have no kWhRequested in their userInputs: their kWhDelivered "
                    "is their energy", source, fallback, len(frame))
    return frame


def _acn_items(path) -> list:
    source = str(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            doc = json.load(f)
    except UnicodeDecodeError as exc:
        raise InputError(source, [InputProblem(None, None, None, f"is not UTF-8 text ({exc.reason})")]) from None
    except json.JSONDecodeError as exc:
        raise InputError(source, [InputProblem(exc.lineno, None, None, f"is not valid JSON ({exc.msg})")]) from None
    if isinstance(doc, dict) and isinstance(doc.get("_items"), list):
        return doc["_items"]
    if isinstance(doc, list):
        return doc
    raise InputError(source, [InputProblem(None, None, None, 'is not ACN-Data JSON: expected {"_items": [...], '
                                                             '"_meta": {...}} or a list of sessions')])


_RFC1123 = "%a, %d %b %Y %H:%M:%S GMT"


def _acn_times(values) -> tuple[pd.Series, np.ndarray]:
    """(naive UTC times, bad): RFC 1123 in GMT as ACN-Data writes them, else ISO 8601 (an offset converted to
    UTC, none: UTC). `bad`: given but not a time. ACN-Data's times are defined in GMT, so there is no mix of
    local and UTC times to check."""
    text = pd.Series([_text(v) for v in values], dtype=object)
    given = (text != "").to_numpy()
    ts = pd.to_datetime(text.where(given, None), format=_RFC1123, errors="coerce", utc=True)
    other = ts.isna().to_numpy() & given
    if other.any():
        ts[other] = pd.to_datetime(text[other], format="ISO8601", errors="coerce", utc=True)
    ts = ts.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ns]")
    return ts.reset_index(drop=True), ts.isna().to_numpy() & given


def _latest_input(inputs) -> dict:
    """The userInputs entry with the latest modifiedAt (the last one listed among equals; one without a readable
    modifiedAt counts as the oldest); {} for none."""
    if not isinstance(inputs, list):
        return {}
    entries = [u for u in inputs if isinstance(u, dict)]
    if not entries:
        return {}
    when, _ = _acn_times([u.get("modifiedAt") for u in entries])
    order = when.fillna(pd.Timestamp.min).to_numpy(dtype="datetime64[ns]")
    return entries[len(order) - 1 - int(np.argmax(order[::-1]))]


def _text(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v).strip()


def _number(v) -> float:
    """A JSON value as a float; NaN where it is none (null, text that is no number, a bool)."""
    if isinstance(v, bool) or v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


# ----------------------------------------------------------------------------------------------- ElaadNL


def read_elaad(path, strict: bool = False, **assumptions) -> pd.DataFrame:
    """The sessions table of an ElaadNL open transactions CSV (see the module's doc); `assumptions`: the fields
    of `Assumptions`. InputError for a file without the columns `ELAAD_COLUMNS`, for one mixing times with and
    without a UTC offset, for a dirty row with `strict`, or when no session is left."""
    a = Assumptions(**assumptions)
    source = str(path)
    delimiter = _delimiter(path)
    frame, lines = _read_csv_text(path, ELAAD_COLUMNS, delimiter=delimiter)
    n = len(frame)
    zones = _Problems(source, lines, list(frame.columns))
    arrival, bad_arr = _elaad_times(frame["UTCTransactionStart"], "UTCTransactionStart", zones)
    departure, bad_dep = _elaad_times(frame["UTCTransactionStop"], "UTCTransactionStop", zones)
    zones.raise_if_any()  # a file mixing times with and without an offset; else says a conversion once
    number = lambda c: _elaad_numbers(frame[c], delimiter)  # noqa: E731
    charge_h = _elaad_hours(frame["ChargeTime"], delimiter)
    if "ConnectedTime" in frame.columns:
        charge_h = np.where(charge_h > 0, charge_h, _elaad_hours(frame["ConnectedTime"], delimiter))
    names = {"arrival": "UTCTransactionStart", "departure": "UTCTransactionStop", "energy": "TotalEnergy",
             "id": "TransactionId"}
    texts = {"arrival": frame["UTCTransactionStart"].tolist(), "departure": frame["UTCTransactionStop"].tolist()}
    return _sessions(source, [f"line {k}" for k in lines], "TransactionId", frame["TransactionId"].to_numpy(dtype=object),
                     [None] * n, arrival, bad_arr, departure, bad_dep, number("TotalEnergy"),
                     np.where(charge_h > 0, charge_h, np.nan), number("MaxPower"), None,
                     frame["ChargePoint"].to_numpy(dtype=object), names, texts, a, strict)


def _delimiter(path) -> str:
    """';' or ',': the one the first non-blank line (the header) holds more of."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            if line.strip():
                return ";" if line.count(";") > line.count(",") else ","
    return ","


_DAY_FIRST = re.compile(r"^(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})")


def _elaad_times(col: pd.Series, column: str, zones: _Problems) -> tuple[pd.Series, np.ndarray]:
    """(naive UTC times, bad) of a start or stop column: day first (01/01/2019 11:33, seconds optional; / . or -)
    or ISO 8601. The column's ISO times go to the file's time-zone check (`zones`)."""
    text = col.astype(str).str.strip().reset_index(drop=True)
    given = (text != "").to_numpy()
    day_first = text.str.match(_DAY_FIRST).to_numpy() & given
    ts = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns]")
    if day_first.any():
        norm = text[day_first].str.replace(_DAY_FIRST, r"\1/\2/\3", regex=True).str.replace(r"\s+", " ", regex=True)
        parsed = pd.to_datetime(norm, format="%d/%m/%Y %H:%M", errors="coerce")
        for fmt in ("%d/%m/%Y %H:%M:%S", "%d/%m/%Y"):
            left = parsed.isna()
            if left.any():
                parsed[left] = pd.to_datetime(norm[left], format=fmt, errors="coerce")
        ts[day_first] = parsed
    iso = given & ~day_first
    if iso.any():
        parsed = pd.to_datetime(text[iso], format="ISO8601", errors="coerce", utc=True)
        ts[iso] = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    zones.time_column(column, text.to_numpy(dtype=object), ~given | ts.isna().to_numpy())
    return ts, ts.isna().to_numpy() & given


def _elaad_numbers(col: pd.Series, delimiter: str) -> np.ndarray:
    """A number column as floats (NaN where empty or no number); a ';' file may write decimal commas."""
    if delimiter == ";":
        col = col.astype(str).str.replace(",", ".", regex=False)
    return _parse_floats(col.reset_index(drop=True))[0]


def _elaad_hours(col: pd.Series, delimiter: str) -> np.ndarray:
    """A duration column in hours: decimal hours (6.11) or h:mm[:ss]."""
    hours = _elaad_numbers(col, delimiter)
    text = col.astype(str).str.strip().reset_index(drop=True)
    clock = text.str.match(r"^\d+:\d{2}(:\d{2})?$").to_numpy()
    if clock.any():
        padded = text[clock].where(text[clock].str.count(":") == 2, text[clock] + ":00")
        hours[clock] = pd.to_timedelta(padded, errors="coerce").dt.total_seconds().to_numpy() / 3600.0
    return hours


# ----------------------------------------------------------------------------------------------- both


def _sessions(source, where, id_name, ids, why, arrival, bad_arr, departure, bad_dep, energy, charge_h, power_kw,
              declared, station, names, texts, a: Assumptions, strict: bool, took=None) -> pd.DataFrame:
    """The validated sessions table of the parsed rows (all arrays, one entry per row of the file), with the
    rows that cannot be a session skipped (or, `strict`, the first of them an InputError). `energy` is the need
    (kWh, grid side); `took` what the session actually drew (default: the need): the charger power follows what
    it took (a request does not make a charger stronger), the battery holds the larger of the two."""
    n = len(ids)
    ids = np.array([_text(v) for v in ids], dtype=object)
    why = list(why)
    arr = arrival.dt.ceil("s").to_numpy(dtype="datetime64[s]")  # as the tables round: never lengthen a session
    dep = departure.dt.floor("s").to_numpy(dtype="datetime64[s]")
    energy = np.asarray(energy, dtype=float)
    stay_h = (dep - arr).astype("timedelta64[s]").astype(float) / 3600.0

    # the seeded draws, for every row of the file in order (see the module's doc)
    rng = np.random.default_rng(a.seed)
    soc = rng.uniform(a.soc_initial[0], a.soc_initial[1], n)
    v2g = rng.random(n) < a.v2g_share

    took = energy if took is None else np.asarray(took, dtype=float)
    e_batt = a.eta * energy
    with np.errstate(invalid="ignore", divide="ignore"):
        held = a.eta * np.fmax(energy, took)  # the battery holds the need and what was taken (NaN: none known)
        cap = np.ceil(np.maximum(a.capacity_kwh, held / (1.0 - soc)) * 1000.0) / 1000.0
        base = np.where(np.isfinite(power_kw) & (power_kw > 0), power_kw, a.charger_kw)
        rate = np.fmax(took / charge_h, took / stay_h)  # what it took within the charging and the plugged time
        pc = np.ceil(np.fmax(base, np.where(took > 0, rate, 0.0)) * 1000.0) / 1000.0

    dup = pd.Series(ids).duplicated(keep="first").to_numpy() & (ids != "")
    first_of = {}
    for k, i in enumerate(ids):
        first_of.setdefault(i, k)
    at = lambda k, key: texts[key][k]  # noqa: E731
    checks = [
        (ids == "", lambda k: f"has no {names['id']}"),
        (dup, lambda k: f"repeats the {names['id']} of {where[first_of[ids[k]]]}"),
        (np.isnat(arr) & ~bad_arr, lambda k: f"has no {names['arrival']}"),
        (bad_arr, lambda k: f"{names['arrival']} {at(k, 'arrival')!r} is not a time"),
        (np.isnat(dep) & ~bad_dep, lambda k: f"has no {names['departure']}"),
        (bad_dep, lambda k: f"{names['departure']} {at(k, 'departure')!r} is not a time"),
        (~np.isnat(arr) & ~np.isnat(dep) & (dep <= arr),
         lambda k: f"{names['departure']} {dep[k]} is not after {names['arrival']} {arr[k]}"),
        (~np.isnat(arr) & ~np.isnat(dep) & (dep - arr > MAX_STAY),
         lambda k: f"stays {stay_h[k] / 24:.0f} days, more than 366: not a plug-in session"),
        (np.isnan(energy), lambda k: f"has no {names['energy']} (kWh)"),
        (energy < 0, lambda k: f"{names['energy']} {energy[k]:g} kWh is negative"),
        (cap > LIMITS["capacity_kwh"].high,
         lambda k: f"{energy[k]:g} kWh needs a battery of {cap[k]:g} kWh, over the limit of "
                   f"{LIMITS['capacity_kwh'].high:g} kWh"),
        (pc > LIMITS["p_charge_max_kw"].high,
         lambda k: f"{took[k]:g} kWh in {min(stay_h[k], np.nan_to_num(charge_h[k], nan=np.inf)):.3g} h needs "
                   f"{pc[k]:g} kW, over the limit of {LIMITS['p_charge_max_kw'].high:g} kW"),
    ]
    with np.errstate(invalid="ignore"):
        for mask, what in checks:
            for k in np.flatnonzero(np.asarray(mask, dtype=bool)):
                if why[k] is None:
                    why[k] = what(k)
    skipped = [Skipped(where[k], ids[k], why[k]) for k in range(n) if why[k] is not None]
    if skipped and strict:
        s = skipped[0]
        raise InputError(f"{source} {s.where} ({id_name} {s.id or '?'})",
                         [InputProblem(None, None, None, f"cannot be a session (--strict): {s.why}")],
                         n_problems=len(skipped))
    keep = np.array([w is None for w in why], dtype=bool)
    if not keep.any():
        detail = f"; the first: {skipped[0].describe(source, id_name)}" if skipped else ""
        raise InputError(source, [InputProblem(None, None, None,
                                               f"holds no session ({n} row{'s' if n != 1 else ''}{detail})")])
    for s in skipped[:_LISTED]:
        log.warning("%s", s.describe(source, id_name))
    if skipped:
        more = f" (the first {_LISTED} are listed)" if len(skipped) > _LISTED else ""
        log.warning("%s: %d of %d rows skipped: they cannot be a session%s; %d sessions imported", source,
                    len(skipped), n, more, int(keep.sum()))

    e0 = np.floor(soc * cap * 1000.0) / 1000.0
    out = {
        "ev_id": ids[keep],
        "arrival": arr[keep],
        "departure": dep[keep],
        "energy_initial_kwh": e0[keep],
        "energy_target_kwh": np.round(e0 + e_batt, 6)[keep],
        "capacity_kwh": cap[keep],
        "p_charge_max_kw": pc[keep],
        "p_discharge_max_kw": np.where(v2g, pc, 0.0)[keep],
        "eta_charge": np.full(int(keep.sum()), a.eta),
        "eta_discharge": np.full(int(keep.sum()), a.eta),
    }
    assert tuple(out) == SESSION_COLUMNS
    if declared is not None:
        d = declared.dt.floor("s").to_numpy(dtype="datetime64[s]")
        usable = ~np.isnat(d) & (d > arr) & (d - arr <= MAX_STAY)
        given = ~np.isnat(d) & keep
        if (given & ~usable).any():
            log.warning("%s: %d requestedDeparture not after the arrival (or beyond 366 days): the actual departure "
                        "is taken as declared", source, int((given & ~usable).sum()))
        if (usable & keep).any():  # the column only where the data declares something
            out["departure_declared"] = np.where(usable, d, dep)[keep]
    out["station"] = np.array([_text(v) for v in station], dtype=object)[keep]
    frame = validate_sessions(pd.DataFrame(out), source=source)
    frame.attrs["skipped"] = skipped
    return frame
