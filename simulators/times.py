"""Time on the engine's grids: whole seconds and naive UTC datetime64[s], the tables' rule (docs/model.md)."""
from __future__ import annotations

import numpy as np
import pandas as pd


def whole_seconds(value, what: str = "step") -> int:
    """`value` seconds as a positive int, or a ValueError saying why not (e.g. a step of 0.5 s)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a positive whole number of seconds, got {value!r}") from None
    if not np.isfinite(v):
        raise ValueError(f"{what} must be a positive whole number of seconds, got {value!r}")
    r = round(v)
    if r <= 0 or abs(v - r) > 1e-9 * max(1.0, abs(v)):
        raise ValueError(f"{what} must be a positive whole number of seconds, got {value!r} s")
    return int(r)


def to_datetime64(value) -> np.datetime64:
    """A time (ISO 8601 text, datetime, pandas or numpy time) as naive UTC datetime64[s] (the tables' rule:
    an offset is converted to UTC); a fraction of a second is an error."""
    if isinstance(value, np.datetime64):
        out = value.astype("datetime64[s]")
        if out != value:
            raise ValueError(f"times must be whole seconds, got {value}")
        return out
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a time (ISO 8601 expected): {value!r}") from exc
    if ts is pd.NaT:
        raise ValueError(f"not a time (ISO 8601 expected): {value!r}")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    if ts != ts.floor("s"):
        raise ValueError(f"times must be whole seconds, got {value!r}")
    return np.datetime64(ts.to_datetime64(), "s")
