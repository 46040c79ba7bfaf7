"""Peak shaving / valley filling: a reference for the fleet from the feeder's measured net load (mosaik-free).

Instead of a market signal, the fleet follows the room below a target on the feeder (e.g. its transformer):

    base_kw  = P_feeder - P_fleet            (the non-EV load: the feeder's measured net load, load +, e.g. the
                                              transformer's P_hv or the external grid's P, minus the fleet's own
                                              power in the same step; losses stay in the base)
    p_ref_kw = share * (target_kw - base_kw)  (positive: fill the valley below the target; negative: ask the fleet
                                              to avoid load or discharge above it)

`share` (0 < share <= 1) splits the room between several aggregators on one feeder (their shares summing to 1;
each aggregator's P_fleet is then the whole fleet's, all aggregators summed).

Forecast (for the aggregator's horizon): the base load of the next steps, estimated by persistence (the present
estimate held; default) or by "daily" persistence (the estimate of the same clock time one day earlier, where
recorded, else the present one; needs `step_s`), turned into references as above.

Target: a number (kW), or "auto": the flat level that the last day's base load plus the energy the fleet drew
over that day would have filled (`flat_level_kw`: water-filling of the valleys with the fleet's energy; a fleet
that exported on balance shaves the peaks instead). Until one day is recorded, `initial_kw` if given, else the
level over what has been recorded so far. `flat_level_kw` also gives a scenario a target from a base load
forecast (e.g. a simbench grid's profiles) and the fleet's energy need.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

__all__ = ["PeakShaver", "ShaverStep", "flat_level_kw", "FORECASTS"]

FORECASTS = ("persistence", "daily")


def flat_level_kw(base_kw, energy_kwh: float, step_s: float) -> float:
    """The level L that `energy_kwh` of extra load fills under it: sum_t max(L - base_t, 0) * dt = energy (valley
    filling). A negative energy (net export) shaves the peaks instead: sum_t max(base_t - L, 0) * dt = -energy.
    Vectorised (sort + cumulative sums)."""
    b = np.sort(np.asarray(base_kw, dtype=float).ravel())
    if b.size == 0:
        raise ValueError("flat_level_kw: base_kw is empty")
    if not np.isfinite(b).all():
        raise ValueError("flat_level_kw: base_kw has NaN or infinite values")
    dt_h = float(step_s) / 3600.0
    if not dt_h > 0:
        raise ValueError(f"flat_level_kw: step_s must be > 0, got {step_s!r}")
    e = float(energy_kwh) / dt_h  # in kW-steps
    if e == 0:
        return float(b[0])
    if e < 0:  # shave the peaks: mirror the profile
        return -float(_fill(-b[::-1], -e))
    return float(_fill(b, e))


def _fill(b_sorted: np.ndarray, e: float) -> float:
    """Water level over the ascending profile b that holds volume e (in value x steps)."""
    n = b_sorted.size
    if e <= 0:
        return float(b_sorted[0])
    # volume held under level b[k] (filling the k lowest steps): k * b[k] - sum(b[:k])
    k = np.arange(n)
    vol = k * b_sorted - np.r_[0.0, np.cumsum(b_sorted)[:-1]]
    j = int(np.searchsorted(vol, e, side="right"))  # the level lies between b[j-1] and b[j] (or above b[-1])
    return float((e + b_sorted[:j].sum()) / j)


@dataclass(frozen=True)
class ShaverStep:
    """One step of the shaver (kW, + = load)."""

    p_ref_kw: float | None  # the fleet's reference (share applied); None before any measurement
    forecast_kw: list  # references for the next forecast_steps steps
    base_kw: float | None  # the estimated non-EV load
    target_kw: float | None  # the target used


class PeakShaver:
    """The fleet's reference from the feeder's measured net load (the rule: see the module doc).

    target_kw: a number, or "auto"; share: this aggregator's part of the room (0 < share <= 1); forecast_steps:
    how many future references to give; forecast: "persistence" or "daily"; step_s: the step (s), needed by
    "daily" and "auto"; initial_kw: the target of the first day with "auto"."""

    def __init__(self, target_kw, share: float = 1.0, forecast_steps: int = 0, forecast: str = "persistence",
                 step_s: float | None = None, initial_kw: float | None = None):
        self.auto = isinstance(target_kw, str)
        if self.auto:
            if target_kw != "auto":
                raise ValueError(f"PeakShaver: target must be a number (kW) or 'auto', got {target_kw!r}")
            self.target_kw = None if initial_kw is None else _finite("initial_kw", initial_kw)
        else:
            if initial_kw is not None:
                raise ValueError("PeakShaver: initial_kw is for target 'auto' only")
            self.target_kw = _finite("target", target_kw)
        try:
            self.share = float(share)
        except (TypeError, ValueError):
            raise ValueError(f"PeakShaver: share must be a number in (0, 1], got {share!r}") from None
        if not 0 < self.share <= 1:
            raise ValueError(f"PeakShaver: share must be in (0, 1], got {share!r}")
        if isinstance(forecast_steps, bool) or int(forecast_steps) != forecast_steps or forecast_steps < 0:
            raise ValueError(f"PeakShaver: forecast_steps must be a whole number >= 0, got {forecast_steps!r}")
        self.forecast_steps = int(forecast_steps)
        if forecast not in FORECASTS:
            raise ValueError(f"PeakShaver: forecast must be one of {', '.join(FORECASTS)}, got {forecast!r}")
        self.forecast = forecast
        self.step_s = None if step_s is None else float(step_s)
        if self.step_s is not None and not (math.isfinite(self.step_s) and self.step_s > 0):
            raise ValueError(f"PeakShaver: step_s must be > 0 seconds, got {step_s!r}")
        self.steps_per_day = None
        if forecast == "daily" or self.auto:
            if self.step_s is None:
                raise ValueError(f"PeakShaver: step_s is needed for {'target auto' if self.auto else 'daily'}")
            spd = 86400.0 / self.step_s
            if abs(spd - round(spd)) > 1e-9:
                raise ValueError(f"PeakShaver: a day must be a whole number of steps, step_s {step_s!r}")
            self.steps_per_day = int(round(spd))
        # the last day's (base, fleet) estimates, oldest first
        n_keep = self.steps_per_day or 1
        self._base = deque(maxlen=n_keep)
        self._fleet = deque(maxlen=n_keep)
        self.last: ShaverStep | None = None

    def _target(self) -> float | None:
        if not self.auto:
            return self.target_kw
        if len(self._base) == self.steps_per_day or (self.target_kw is None and self._base):
            return flat_level_kw(np.fromiter(self._base, float), sum(self._fleet) * self.step_s / 3600.0,
                                 self.step_s)
        return self.target_kw

    def step(self, p_feeder_kw: float | None, p_fleet_kw: float | None) -> ShaverStep:
        """One step from the feeder's measured net load and the fleet's power in the same step (kW, load +). A
        missing feeder measurement holds the last base estimate; a missing fleet power counts as 0."""
        if p_feeder_kw is None:
            base = self.last.base_kw if self.last is not None else None
        else:
            fleet = 0.0 if p_fleet_kw is None else float(p_fleet_kw)
            base = float(p_feeder_kw) - fleet
            if not math.isfinite(base):
                raise ValueError(f"PeakShaver: the feeder load {p_feeder_kw!r} or fleet power {p_fleet_kw!r} is not "
                                 "a finite number")
            self._base.append(base)
            self._fleet.append(fleet)
        target = self._target()
        if base is None or target is None:
            self.last = ShaverStep(None, [], base, target)
            return self.last
        ref = self.share * (target - base)
        fc = []
        if self.forecast_steps:
            if self.forecast == "daily" and len(self._base) == self.steps_per_day:
                # the buffer holds the base of steps t - spd + 1 .. t: step t + h one day earlier is at h - 1
                day = np.fromiter(self._base, float)
                fb = day[(np.arange(1, self.forecast_steps + 1) - 1) % self.steps_per_day]
            else:
                fb = np.full(self.forecast_steps, base)
            fc = (self.share * (target - fb)).tolist()
        self.last = ShaverStep(ref, fc, base, target)
        return self.last


def _finite(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"PeakShaver: {name} must be a number (kW), got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"PeakShaver: {name} must be finite, got {value!r}")
    return v
