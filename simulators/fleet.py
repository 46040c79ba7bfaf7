"""The fleet of plug-in sessions, held as arrays (one entry per session), never as one object per EV.

Column names follow the sessions table of the data conventions (kW, kWh, fractions, datetime64[s]).
Reading and validating a sessions CSV lives in `tables.py`; synthetic fleets in `synthetic.py`.
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
OPTIONAL_SESSION_COLUMNS = ("energy_min_kwh", "bus")
NUMERIC_SESSION_COLUMNS = SESSION_COLUMNS[3:] + ("energy_min_kwh",)


@dataclass(frozen=True, eq=False)
class Fleet:
    """Plug-in sessions as parallel arrays. Build it with `Fleet.from_frame` (checked) or the readers."""

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
        return cls(
            ev_id=frame["ev_id"].astype(str).to_numpy(dtype=object),
            arrival=_to_datetime64(frame["arrival"]),
            departure=_to_datetime64(frame["departure"]),
            bus=bus,
            extra=frame[extra_cols].reset_index(drop=True) if extra_cols else None,
            **num,
        )

    def to_frame(self) -> pd.DataFrame:
        """The sessions table (the CSV format of the data conventions)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("bus", "extra")}
        frame = pd.DataFrame(data)
        if self.bus is not None:
            frame["bus"] = self.bus
        if self.extra is not None:
            frame = pd.concat([frame, self.extra.reset_index(drop=True)], axis=1)
        return frame

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
        return Fleet(**values)


def _to_datetime64(col: pd.Series) -> np.ndarray:
    ts = pd.to_datetime(col)
    if getattr(ts.dt, "tz", None) is not None:
        # Times with an offset are compared in UTC, then kept naive, like the signal's times.
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    return ts.to_numpy(dtype="datetime64[s]")
