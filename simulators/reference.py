"""The reference signal: what the aggregator is asked to draw, kW (grid side, + = the fleet draws power).

Every value must be finite and within the absolute plausibility limit ``fleet.LIMITS["p_ref_kw"]`` (+-1e7 kW);
the bound derived from a fleet is checked by `tables.check_signal_against_fleet`.

Forecasts of the reference (what an aggregator plans its next steps with): ``perfect`` (the signal's own next
values), ``hold`` (the current value held: persistence) or ``noisy`` (`FORECASTS`): the signal's next values plus
seeded errors that grow with the lead time (`forecast_errors`), a random walk whose standard deviation at a lead
of one hour is the error level (in % of the signal's spread, its standard deviation over the run) and grows as the
square root of the lead: half of it at 15 minutes, twice it at 4 hours.
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


FORECASTS = ("perfect", "hold", "noisy")


def spread_kw(values) -> float:
    """A signal's spread (kW): the standard deviation of its values, what a noisy forecast's level is a share of."""
    values = np.asarray(values, dtype=float)
    return float(np.std(values)) if values.size else 0.0


def forecast_errors(k: int, n: int, step_s: float, sigma_kw: float, seed: int) -> np.ndarray:
    """(n,) errors (kW) of the forecast made in step k for the steps k+1 .. k+n: a random walk over the lead time
    whose standard deviation at a lead of one hour is `sigma_kw` (at lead L: sigma_kw * sqrt(L / 1 h)). Seeded by
    (seed, k): the same step forecast again (a re-planned step) gets the same errors."""
    n = max(int(n), 0)
    if n == 0 or sigma_kw == 0:
        return np.zeros(n)
    z = np.random.default_rng([int(seed), int(k)]).standard_normal(n)
    return float(sigma_kw) * np.sqrt(float(step_s) / 3600.0) * np.cumsum(z)
