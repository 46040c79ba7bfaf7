"""The reference signal: what the aggregator is asked to draw, kW (grid side, + = the fleet draws power).

Every value must be finite and within the absolute plausibility limit ``fleet.LIMITS["p_ref_kw"]`` (+-1e7 kW);
the bound derived from a fleet is checked by `tables.check_signal_against_fleet`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .fleet import LIMITS


@dataclass(frozen=True, eq=False)
class Reference:
    """A reference on a regular time grid: step k covers [start + k*step, start + (k+1)*step)."""

    start: np.datetime64  # datetime64[s]
    step: np.timedelta64  # timedelta64[s], > 0
    p_ref_kw: np.ndarray  # (T,)

    def __post_init__(self):
        object.__setattr__(self, "start", np.datetime64(self.start, "s"))
        object.__setattr__(self, "step", np.timedelta64(self.step, "s"))
        object.__setattr__(self, "p_ref_kw", np.asarray(self.p_ref_kw, dtype=float))
        if self.step <= np.timedelta64(0, "s"):
            raise ValueError(f"reference step must be positive, got {self.step}")
        if self.p_ref_kw.ndim != 1:
            raise ValueError(f"reference p_ref_kw must be one value per step, got shape {self.p_ref_kw.shape}")
        high = LIMITS["p_ref_kw"].high
        with np.errstate(invalid="ignore"):
            bad = ~(np.abs(self.p_ref_kw) <= high)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            what = "must be finite" if not np.isfinite(self.p_ref_kw[k]) else \
                f"must be within +-{high:g} kW: {LIMITS['p_ref_kw'].why}"
            raise ValueError(f"reference p_ref_kw at step {k} ({self.start + self.step * k}): {self.p_ref_kw[k]:g} "
                             f"{what}")

    @property
    def n_steps(self) -> int:
        return len(self.p_ref_kw)

    @property
    def dt_h(self) -> float:
        return self.step / np.timedelta64(1, "h")

    @property
    def times(self) -> np.ndarray:
        return self.start + self.step * np.arange(self.n_steps)

    @property
    def end(self) -> np.datetime64:
        return self.start + self.step * self.n_steps

    def to_frame(self) -> pd.DataFrame:
        """The signal table of the data conventions (time, p_ref_kw)."""
        return pd.DataFrame({"time": pd.to_datetime(self.times), "p_ref_kw": self.p_ref_kw})
