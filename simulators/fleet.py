"""The fleet of plug-in sessions, held as arrays (one entry per session), never as one object per EV.

Column names follow the sessions table of the data conventions (kW, kWh, fractions, datetime64[s]).
Reading and validating a sessions CSV lives in `tables.py`; synthetic fleets in `synthetic.py`.

Plausibility limits (`LIMITS`; the CSV readers refuse a value outside them with `tables.InputError` naming file,
line, column and value, and a `Fleet` built in Python with a ValueError naming the session and field):

    column               allowed                          unit  why
    capacity_kwh         (0, 1000]                        kWh   the largest EV batteries (e-trucks) hold ~600 kWh
    energy_initial_kwh   [0, capacity_kwh]                kWh   a battery holds no more than its capacity
    energy_min_kwh       [0, capacity_kwh]                kWh   a floor within the battery
    energy_target_kwh    [0, 1000]                        kWh   no battery is larger; above the capacity = "full"
    p_charge_max_kw      [0, 1000]                        kW    the fastest (megawatt) chargers give ~1000 kW
    p_discharge_max_kw   [0, 1000]                        kW    the same for V2G; 0 = no V2G
    eta_charge           (0, 1]                           -     an efficiency, not a percentage
    eta_discharge        (0, 1]                           -     an efficiency, not a percentage
    departure            (arrival, arrival + 366 days]    -     a plug-in session, not a year's parking
    departure_declared   (arrival, arrival + 366 days]    -     optional: what the driver told the app (the plan
                                                                uses it; the session ends at `departure`)
    p_ref_kw             [-1e7, 1e7]                      kW    10 GW: more than any aggregator's fleet
    p_ref_kw, fleet      |p_ref| <= 10 x (sum of charge powers + sum of discharge powers) + 1 kW
                                                          kW    a signal far beyond what the fleet can draw or
                                                                inject is a unit or file mix-up, not a request

Every number must be finite. The signal's fleet bound (`signal_bound_kw`) is checked where both the signal and its
fleet are known: `tables.read_reference(path, fleet=...)` or `tables.check_signal_against_fleet`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

# The sessions table's required columns, in the order they are written.
SESSION_COLUMNS = (
    "ev_id",
    "arrival",
    "departure",
    "energy_initial_kwh",
    "energy_target_kwh",
    "capacity_kwh",
    "p_charge_max_kw",
    "p_discharge_max_kw",
    "eta_charge",
    "eta_discharge",
)
OPTIONAL_SESSION_COLUMNS = ("energy_min_kwh", "bus", "departure_declared")
NUMERIC_SESSION_COLUMNS = SESSION_COLUMNS[3:] + ("energy_min_kwh",)


@dataclass(frozen=True)
class Limit:
    """The plausible range of one physical input: low .. high (`high_column`: at most that column's value)."""

    low: float
    high: float
    unit: str
    why: str
    low_open: bool = False  # low itself is not allowed
    high_column: str | None = None  # also at most this column of the same row (e.g. the capacity)
    note: str = ""  # said with either side's message instead of the generic wording

    def interval(self) -> str:
        high = self.high_column or f"{self.high:g}"
        return f"{'(' if self.low_open else '['}{self.low:g}, {high}]"

    def below(self, value) -> np.ndarray:
        v = np.asarray(value, dtype=float)
        with np.errstate(invalid="ignore"):
            return (v <= self.low) if self.low_open else (v < self.low)

    def above(self, value) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return np.asarray(value, dtype=float) > self.high

    def low_message(self) -> str:
        if self.note:
            return f"must be in {self.interval()} ({self.note})"
        if self.low_open:
            return f"must be > {self.low:g}"
        return f"must be >= {self.low:g} {self.unit}".rstrip()

    def high_message(self) -> str:
        if self.note:
            return f"must be in {self.interval()} ({self.note})"
        return f"must be <= {self.high:g} ({self.unit}): {self.why}"


MAX_STAY = np.timedelta64(366 * 86400, "s")  # a session's departure at most this long after its arrival
SIGNAL_FLEET_FACTOR = 10.0  # |p_ref| <= SIGNAL_FLEET_FACTOR * (sum pc_max + sum pd_max) + SIGNAL_FLEET_MARGIN_KW
SIGNAL_FLEET_MARGIN_KW = 1.0

LIMITS = {
    "capacity_kwh": Limit(0.0, 1000.0, "kWh", "the largest EV batteries (e-trucks) hold about 600 kWh",
                          low_open=True),
    "energy_initial_kwh": Limit(0.0, 1000.0, "kWh", "a battery holds no more than its capacity",
                                high_column="capacity_kwh"),
    "energy_min_kwh": Limit(0.0, 1000.0, "kWh", "a floor within the battery", high_column="capacity_kwh"),
    "energy_target_kwh": Limit(0.0, 1000.0, "kWh", "no EV battery is larger (a target above the capacity means "
                                                    "full)"),
    "p_charge_max_kw": Limit(0.0, 1000.0, "kW", "the fastest (megawatt) chargers give about 1000 kW"),
    "p_discharge_max_kw": Limit(0.0, 1000.0, "kW", "the fastest (megawatt) chargers give about 1000 kW"),
    "eta_charge": Limit(0.0, 1.0, "", "an efficiency", low_open=True, note="an efficiency, not a percentage"),
    "eta_discharge": Limit(0.0, 1.0, "", "an efficiency", low_open=True, note="an efficiency, not a percentage"),
    "p_ref_kw": Limit(-1e7, 1e7, "kW", "10 GW, more than any aggregator's fleet: a unit or file mix-up"),
}


def signal_bound_kw(fleet: "Fleet") -> float:
    """The largest plausible |p_ref| for `fleet` (kW): 10 x (sum of charge powers + sum of discharge powers) + 1 kW,
    never above the absolute limit of `LIMITS["p_ref_kw"]`."""
    power = float(np.sum(fleet.p_charge_max_kw) + np.sum(fleet.p_discharge_max_kw))
    return min(SIGNAL_FLEET_FACTOR * power + SIGNAL_FLEET_MARGIN_KW, LIMITS["p_ref_kw"].high)


@dataclass(frozen=True, eq=False)
class Fleet:
    """Plug-in sessions as parallel arrays. Build it with `Fleet.from_frame`, the readers, or directly.

    However built, it is checked (`check_fleet`): one entry per session in every array, ids non-empty and unique,
    finite numbers within `LIMITS`, departure after arrival; else a ValueError naming the session and field.
    """

    ev_id: np.ndarray  # str
    arrival: np.ndarray  # datetime64[s]
    departure: np.ndarray  # datetime64[s]
    energy_initial_kwh: np.ndarray
    energy_target_kwh: np.ndarray
    capacity_kwh: np.ndarray
    p_charge_max_kw: np.ndarray
    p_discharge_max_kw: np.ndarray
    eta_charge: np.ndarray
    eta_discharge: np.ndarray
    energy_min_kwh: np.ndarray
    bus: np.ndarray | None = None  # int64 grid bus index per session, if known
    extra: pd.DataFrame | None = None  # any further columns of the sessions table, kept as they came
    departure_declared: np.ndarray | None = None  # datetime64[s] the driver declared, if known (else = departure)

    def __post_init__(self):
        check_fleet(self)

    def __len__(self) -> int:
        return len(self.ev_id)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> "Fleet":
        """Arrays from an already validated sessions frame (see `tables.validate_sessions`)."""
        known = set(SESSION_COLUMNS) | set(OPTIONAL_SESSION_COLUMNS)
        extra_cols = [c for c in frame.columns if c not in known]
        n = len(frame)
        num = {c: frame[c].to_numpy(dtype=float) for c in NUMERIC_SESSION_COLUMNS if c in frame}
        num.setdefault("energy_min_kwh", np.zeros(n))
        bus = frame["bus"].to_numpy(dtype=np.int64) if "bus" in frame else None
        declared = _to_datetime64(frame["departure_declared"]) if "departure_declared" in frame else None
        return cls(
            ev_id=frame["ev_id"].astype(str).to_numpy(dtype=object),
            arrival=_to_datetime64(frame["arrival"]),
            departure=_to_datetime64(frame["departure"]),
            bus=bus,
            extra=frame[extra_cols].reset_index(drop=True) if extra_cols else None,
            departure_declared=declared,
            **num,
        )

    def to_frame(self) -> pd.DataFrame:
        """The sessions table (the CSV format of the data conventions)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _OPTIONAL_FIELDS}
        frame = pd.DataFrame(data)
        if self.bus is not None:
            frame["bus"] = self.bus
        if self.departure_declared is not None:
            frame["departure_declared"] = self.departure_declared
        if self.extra is not None:
            frame = pd.concat([frame, self.extra.reset_index(drop=True)], axis=1)
        return frame

    @property
    def departure_planned(self) -> np.ndarray:
        """The departures an aggregator learns at plug-in: the declared ones where known, else the actual ones."""
        return self.departure if self.departure_declared is None else self.departure_declared

    def select(self, index) -> "Fleet":
        """The sessions at `index` (a boolean mask or integer positions), as a new fleet."""
        index = np.asarray(index)
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                values[f.name] = None
            elif isinstance(v, pd.DataFrame):
                values[f.name] = v.iloc[np.flatnonzero(index) if index.dtype == bool else index].reset_index(drop=True)
            else:
                values[f.name] = v[index]
        return _unchecked(values)  # a part of a checked fleet is as valid as the whole: not checked again


_OPTIONAL_FIELDS = ("bus", "extra", "departure_declared")  # fields that may be None (not plain columns)


def _unchecked(values: dict) -> Fleet:
    fleet = object.__new__(Fleet)
    for name, v in values.items():
        object.__setattr__(fleet, name, v)
    return fleet


def check_fleet(fleet: Fleet) -> None:
    """ValueError unless `fleet` is a valid fleet: the rules of the sessions table (see `tables.validate_sessions`)
    and its plausibility limits (`LIMITS`). The message names the first bad session (id and position) and field."""
    ids = np.asarray(fleet.ev_id, dtype=object)
    n = len(ids)
    if ids.ndim != 1:
        raise ValueError(f"Fleet: ev_id must be one-dimensional, got shape {ids.shape}")
    names = [f.name for f in fields(fleet) if f.name not in ("ev_id", *_OPTIONAL_FIELDS)]
    given = [name for name in ("bus", "departure_declared") if getattr(fleet, name) is not None]
    for name in names + given:
        v = getattr(fleet, name)
        if np.shape(v) != (n,):
            raise ValueError(f"Fleet: {name} has shape {np.shape(v)}, but there are {n} sessions (ev_id)")
    if fleet.extra is not None and len(fleet.extra) != n:
        raise ValueError(f"Fleet: extra has {len(fleet.extra)} rows for {n} sessions")
    if n == 0:
        return

    def fail(mask, name, what):
        i = int(np.flatnonzero(mask)[0])
        more = int(np.count_nonzero(mask)) - 1
        value = getattr(fleet, name)[i] if name in names or name in given else ids[i]
        shown = f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)
        raise ValueError(f"Fleet: session {ids[i]!s} (position {i}), {name}: {shown} {what}"
                         + (f" (and {more} more session{'s' if more > 1 else ''})" if more else ""))

    text = np.array([str(v).strip() if v is not None else "" for v in ids], dtype=object)
    empty = text == ""
    if empty.any():
        fail(empty, "ev_id", "is empty: every session needs an ev_id")
    dup = pd.Series(text).duplicated(keep="first").to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        fail(dup, "ev_id", f"duplicates the ev_id of position {int(np.flatnonzero(text == text[i])[0])}")
    num = {}
    for name in NUMERIC_SESSION_COLUMNS:
        try:
            num[name] = np.asarray(getattr(fleet, name), dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"Fleet: {name} must hold numbers") from None
        bad = ~np.isfinite(num[name])
        if bad.any():
            fail(bad, name, "must be finite")
    for name in sorted(NUMERIC_SESSION_COLUMNS, key=lambda c: LIMITS[c].high_column is not None):
        limit = LIMITS[name]
        v = num[name]
        if limit.below(v).any():
            fail(limit.below(v), name, limit.low_message())
        if limit.high_column is not None:
            over = v > num[limit.high_column]
            if over.any():
                fail(over, name, f"exceeds the {limit.high_column} {num[limit.high_column][np.argmax(over)]:g} "
                                 f"{limit.unit}")
        if limit.above(v).any():
            fail(limit.above(v), name, limit.high_message())
    try:
        arr = np.asarray(fleet.arrival).astype("datetime64[s]")
        dep = np.asarray(fleet.departure).astype("datetime64[s]")
    except (TypeError, ValueError):
        raise ValueError("Fleet: arrival and departure must be datetime64 times") from None
    times = [("arrival", arr), ("departure", dep)]
    if fleet.departure_declared is not None:
        try:
            times.append(("departure_declared", np.asarray(fleet.departure_declared).astype("datetime64[s]")))
        except (TypeError, ValueError):
            raise ValueError("Fleet: departure_declared must be datetime64 times") from None
    for name, t in times:
        if np.isnat(t).any():
            fail(np.isnat(t), name, "is not a time (NaT)")
    for name, t in times[1:]:
        if (t <= arr).any():
            fail(t <= arr, name, "must be after the arrival")
        if (t - arr > MAX_STAY).any():
            fail(t - arr > MAX_STAY, name, f"is more than {MAX_STAY // np.timedelta64(86400, 's')} days after the "
                                           "arrival: a plug-in session, not a year's parking")
    if fleet.bus is not None:
        try:
            b = np.asarray(fleet.bus, dtype=float)
        except (TypeError, ValueError):
            raise ValueError("Fleet: bus must hold grid bus indices (non-negative integers)") from None
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(b) | (b < 0) | (np.floor(b) != b)
        if bad.any():
            fail(bad, "bus", "must be a non-negative integer (a grid bus index)")


def _to_datetime64(col: pd.Series) -> np.ndarray:
    ts = pd.to_datetime(col)
    if getattr(ts.dt, "tz", None) is not None:
        # Times with an offset are compared in UTC, then kept naive, like the signal's times.
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    return ts.to_numpy(dtype="datetime64[s]")
