"""Synthetic, seeded fleets and reference signals for examples, tests and benchmarks.

Everything is vectorised over sessions with `numpy.random.Generator` streams (no per-EV Python objects), and the
same arguments always give the same fleet or signal. Units follow the data conventions: kW, kWh, fractions, and
naive times (UTC) with whole seconds.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .fleet import Fleet, signal_bound_kw
from .reference import Reference

__all__ = ["synthetic_fleet", "synthetic_reference", "PATTERNS", "CHARGER_KW", "REFERENCE_KINDS", "SYNTHETIC_START",
           "DEFAULT_V2G_SHARE"]

# Charging patterns: name -> (arrival hours [lo, hi), departure hours [lo, hi), departure day offset).
# Hours are clock hours of the session's day; an offset of 1 means the next morning.
PATTERNS = {
    "home": ((17.0, 21.0), (6.0, 9.0), 1),
    "workplace": ((7.0, 10.0), (15.0, 19.0), 0),
    "depot": ((19.0, 23.0), (5.0, 7.0), 1),
}
CHARGER_KW = np.array([3.7, 7.4, 11.0, 22.0])
# Probability of each charger power of CHARGER_KW per pattern (home wallboxes, workplace AC posts, depot 22 kW).
_CHARGER_P = {
    "home": (0.35, 0.35, 0.30, 0.0),
    "workplace": (0.0, 0.0, 0.6, 0.4),
    "depot": (0.0, 0.0, 0.0, 1.0),
}
# Typical usable battery sizes (kWh) and how common they are; each session gets one plus ~3 % noise.
_BATTERY_KWH = np.array([40.0, 52.0, 58.0, 64.0, 77.0, 82.0, 100.0])
_BATTERY_P = np.array([0.12, 0.15, 0.18, 0.18, 0.17, 0.12, 0.08])
REFERENCE_KINDS = ("regulation", "surplus")  # the first is the default
# The synthetic fleets' and signals' own default date (a scenario's study start is scenarios.options's
# DEFAULT_STUDY_START).
SYNTHETIC_START = "2026-06-01T00:00:00"
DEFAULT_V2G_SHARE = 0.5  # share of the synthetic sessions that can discharge


def synthetic_fleet(
    n: int,
    seed: int | None = 0,
    start=SYNTHETIC_START,
    days: int = 1,
    v2g_share: float = DEFAULT_V2G_SHARE,
    mix: Sequence[float] = (0.5, 0.35, 0.15),
    buses: Sequence[int] | None = None,
) -> Fleet:
    """A plausible fleet of `n` plug-in sessions (one per ev_id ``ev00000``, ``ev00001``, ...).

    Each session follows a pattern drawn with the shares `mix` = (home, workplace, depot):

    - home: arrives 17-21 h, leaves the next morning 6-9 h; charger 3.7 / 7.4 / 11 kW;
    - workplace: arrives 7-10 h, leaves 15-19 h the same day; charger 11 / 22 kW;
    - depot (fleet vans): arrives 19-23 h, leaves the next morning 5-7 h; charger 22 kW.

    Sessions fall on one of `days` days (drawn uniformly) counted from the date of `start` (ISO 8601); a departure
    past the horizon ``start + days`` is kept as it is (the engine handles it). Times are whole seconds.
    Battery capacity 40-100 kWh (typical sizes with noise), initial energy 20-60 % and target 70-100 % of it,
    energy_min 10 % of it; charge and discharge efficiencies uniform in [0.90, 0.97]. A share `v2g_share` of the
    sessions can discharge (``p_discharge_max_kw = p_charge_max_kw``), the others not (0 kW).
    With `buses` (grid bus indices), each session is put on one of them at random (column ``bus``).
    The pattern name is kept as an extra column ``pattern``.

    Each attribute has its own random stream derived from `seed`, so e.g. changing `v2g_share` or `buses` leaves
    the times and batteries unchanged. The same arguments give an identical fleet.
    """
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    days = int(days)
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    if not 0.0 <= v2g_share <= 1.0:
        raise ValueError(f"v2g_share must be in [0, 1], got {v2g_share}")
    mix = np.asarray(mix, dtype=float)
    if mix.shape != (3,) or np.any(mix < 0) or mix.sum() <= 0:
        raise ValueError(f"mix must be three non-negative shares (home, workplace, depot), got {tuple(mix)}")
    mix = mix / mix.sum()
    names = list(PATTERNS)
    (r_pattern, r_day, r_arrive, r_stay, r_charger, r_battery, r_soc, r_eta, r_v2g, r_bus) = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(10)
    )

    pattern = r_pattern.choice(3, size=n, p=mix)
    day = r_day.integers(0, days, size=n)
    arr_lo = np.array([PATTERNS[k][0][0] for k in names])[pattern]
    arr_hi = np.array([PATTERNS[k][0][1] for k in names])[pattern]
    dep_lo = np.array([PATTERNS[k][1][0] for k in names])[pattern]
    dep_hi = np.array([PATTERNS[k][1][1] for k in names])[pattern]
    dep_off = np.array([PATTERNS[k][2] for k in names])[pattern]
    # Bell-shaped within each window (beta(2.5, 2.5)), in whole seconds.
    arr_h = arr_lo + (arr_hi - arr_lo) * r_arrive.beta(2.5, 2.5, size=n)
    dep_h = dep_lo + (dep_hi - dep_lo) * r_stay.beta(2.5, 2.5, size=n)
    base = np.datetime64(_naive_utc(start).floor("D").to_datetime64(), "s")
    day_s = day * 86400
    arrival = base + (day_s + np.round(arr_h * 3600)).astype("timedelta64[s]")
    departure = base + (day_s + dep_off * 86400 + np.round(dep_h * 3600)).astype("timedelta64[s]")

    # Charger power per pattern: one uniform number per session, looked up in its pattern's cumulative shares
    # (the first size whose cumulative share exceeds it; sizes of zero share are never picked).
    cum = np.cumsum(np.array([_CHARGER_P[k] for k in names]), axis=1)
    cum = np.where(cum >= 1.0 - 1e-9, 1.0, cum)[pattern]
    charger = np.argmax(r_charger.random(n)[:, None] < cum, axis=1)
    p_charge = CHARGER_KW[charger]

    size = r_battery.choice(len(_BATTERY_KWH), size=n, p=_BATTERY_P / _BATTERY_P.sum())
    capacity = np.round(np.clip(_BATTERY_KWH[size] * r_battery.normal(1.0, 0.03, size=n), 40.0, 100.0), 1)
    e0 = np.round(capacity * r_soc.uniform(0.2, 0.6, size=n), 3)
    target = np.round(capacity * r_soc.uniform(0.7, 1.0, size=n), 3)
    e_min = np.round(0.1 * capacity, 3)
    eta_c = np.round(r_eta.uniform(0.90, 0.97, size=n), 3)
    eta_d = np.round(r_eta.uniform(0.90, 0.97, size=n), 3)
    v2g = r_v2g.random(n) < v2g_share
    p_discharge = np.where(v2g, p_charge, 0.0)

    bus = None
    if buses is not None:
        buses = np.asarray(buses)
        if buses.ndim != 1 or buses.size == 0:
            raise ValueError("buses must be a non-empty sequence of bus indices")
        if not np.issubdtype(buses.dtype, np.integer) or np.any(buses < 0):
            raise ValueError(f"bus indices must be non-negative integers, got {buses.tolist()[:10]}")
        bus = buses[r_bus.integers(0, buses.size, size=n)].astype(np.int64)

    width = max(5, len(str(max(n - 1, 0))))
    ev_id = np.array([f"ev{k:0{width}d}" for k in range(n)], dtype=object)
    return Fleet(
        ev_id=ev_id,
        arrival=arrival.astype("datetime64[s]"),
        departure=departure.astype("datetime64[s]"),
        energy_initial_kwh=e0,
        energy_target_kwh=target,
        capacity_kwh=capacity,
        p_charge_max_kw=p_charge,
        p_discharge_max_kw=p_discharge,
        eta_charge=eta_c,
        eta_discharge=eta_d,
        energy_min_kwh=e_min,
        bus=bus,
        extra=pd.DataFrame({"pattern": np.array(names, dtype=object)[pattern]}),
    )


def synthetic_reference(
    fleet: Fleet | None = None,
    start=SYNTHETIC_START,
    step_s: int = 900,
    n_steps: int = 96,
    seed: int | None = 0,
    kind: str = REFERENCE_KINDS[0],
    scale_kw: float | None = None,
) -> Reference:
    """A seeded reference signal p_ref_kw (kW, grid side, + = the fleet draws power) of `n_steps` steps of
    `step_s` seconds from `start`.

    kind="regulation": a smooth baseline plus regulation noise, within what the plugged fleet can draw or inject.
      With a fleet, the baseline is its "uncontrolled-ish" need: each session's missing energy to its target
      (grid side, ``(target - initial) / eta_charge``, at most what its charger can deliver) spread evenly over
      its plugged time, summed over sessions. The noise is an AR(1) process with a one-hour correlation time and
      a standard deviation of 30 % of half the plugged fleet's power range at each step, i.e. of
      (sum of plugged charge powers + sum of plugged discharge powers) / 2; the sum is clipped to
      [-sum of plugged discharge powers, sum of plugged charge powers]. Without a fleet, the baseline is a
      diurnal shape (evening peak) of mean `scale_kw` (default 100 kW) and the noise's deviation 20 % of it.
    kind="surplus": the regulation signal, except for a midday block (10-16 h each day) of a PV surplus that
      asks for more than the fleet can take: at every block step at least 1.5 times the charge power of the
      sessions plugged in then, and over each block at least 1.5 times the whole fleet's storage room
      (``sum((capacity - initial) / eta_charge)``, kWh). Without a fleet: 3 times `scale_kw` in the block.
    Values are rounded to 1 W, and kept within the fleet's plausible signal range (`fleet.signal_bound_kw`:
    10 x its charge plus discharge powers + 1 kW; the surplus block of a very short horizon may be cut by it).
    The same arguments give the same signal.
    A fleet of no sessions is a ValueError ("no sessions: ..."), not a signal for nobody (pass None for the
    fleet-less diurnal shape).
    """
    if kind not in REFERENCE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(REFERENCE_KINDS)}, got {kind!r}")
    step_s = int(step_s)
    n_steps = int(n_steps)
    if step_s <= 0 or n_steps < 1:
        raise ValueError(f"step_s must be > 0 and n_steps >= 1, got {step_s}, {n_steps}")
    if fleet is not None and len(fleet) == 0:
        raise ValueError("no sessions: a reference signal for a fleet of 0 sessions would ask nobody for power; "
                         "give a fleet of at least one session, or none (fleet=None) for the diurnal shape")
    start = np.datetime64(_naive_utc(start).to_datetime64(), "s")
    dt_h = step_s / 3600.0
    times = start + np.arange(n_steps) * np.timedelta64(step_s, "s")
    hour = (times - times.astype("datetime64[D]")).astype(np.int64) / 3600.0 + 0.5 * dt_h  # mid-step clock hour
    r_noise = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])

    # Unit-variance AR(1) noise with a one-hour correlation time.
    phi = float(np.exp(-step_s / 3600.0))
    eps = r_noise.standard_normal(n_steps)
    x = np.empty(n_steps)
    x[0] = eps[0]
    s = np.sqrt(1.0 - phi * phi)
    for t in range(1, n_steps):
        x[t] = phi * x[t - 1] + s * eps[t]

    if fleet is None:
        scale = 100.0 if scale_kw is None else float(scale_kw)
        shape = 1.0 + 0.6 * np.cos(2 * np.pi * (hour - 20.0) / 24.0)  # evening peak, mean 1
        p = scale * shape + 0.2 * scale * x
        p_max, p_min = None, None
        if kind == "surplus":
            p = np.where((hour >= 10.0) & (hour < 16.0), 3.0 * scale, p)
    else:
        p_max, p_min, baseline = _plugged_sums(fleet, start, step_s, n_steps)
        half_range = 0.5 * (p_max + p_min)
        p = np.clip(baseline + 0.3 * half_range * x, -p_min, p_max)
        if kind == "surplus":
            block = (hour >= 10.0) & (hour < 16.0)
            room_kwh = float(np.sum((fleet.capacity_kwh - fleet.energy_initial_kwh) / fleet.eta_charge))
            day = (times.astype("datetime64[D]") - times[0].astype("datetime64[D]")).astype(np.int64)
            for d in np.unique(day[block]):
                in_block = block & (day == d)
                level = max(room_kwh * 1.5 / (in_block.sum() * dt_h), 1e-3)
                p[in_block] = np.maximum(1.5 * p_max[in_block], level)
        bound = np.floor(signal_bound_kw(fleet) * 1000.0) / 1000.0  # rounded to 1 W, it stays within the bound
        p = np.clip(p, -bound, bound)
    return Reference(start=start, step=np.timedelta64(step_s, "s"), p_ref_kw=np.round(p, 3))


def _plugged_sums(fleet: Fleet, start, step_s: int, n_steps: int):
    """Per step: the summed charge and discharge powers of plugged sessions (kW) and the baseline (kW)."""
    arr_s = (fleet.arrival - start).astype("timedelta64[s]").astype(np.int64)
    dep_s = (fleet.departure - start).astype("timedelta64[s]").astype(np.int64)
    first_all = -(-arr_s // step_s)  # the first step starting at or after arrival (may be before the horizon)
    stop_all = dep_s // step_s  # steps k with t_k + dt <= departure
    n_plug = np.maximum(stop_all - first_all, 0)
    first = np.clip(first_all, 0, n_steps)
    stop = np.clip(stop_all, 0, n_steps)
    stop = np.maximum(stop, first)
    dt_h = step_s / 3600.0
    grid_need = np.maximum(fleet.energy_target_kwh - fleet.energy_initial_kwh, 0.0) / fleet.eta_charge
    deliverable = fleet.p_charge_max_kw * dt_h * n_plug
    p_base = np.where(n_plug > 0, np.minimum(grid_need, deliverable) / np.maximum(n_plug * dt_h, 1e-12), 0.0)

    def window_sum(values):
        diff = np.zeros(n_steps + 1)
        np.add.at(diff, first, values)
        np.add.at(diff, stop, -values)
        return np.cumsum(diff)[:n_steps]

    return window_sum(fleet.p_charge_max_kw), window_sum(fleet.p_discharge_max_kw), window_sum(p_base)


def _naive_utc(time) -> pd.Timestamp:
    """A time (ISO 8601 text, datetime, numpy datetime64) as a naive timestamp in UTC."""
    ts = pd.Timestamp(time)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts
