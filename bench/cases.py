"""A case suite for the dispatch engine: seeded fleets and reference signals from a generator of our own.

The engine must not be tunable to one generator, so this one shares nothing with `evagg.simulators.synthetic`
(its distributions, battery list and reference shape are all different) and varies, case by case, every
property a real fleet varies: V2G share, charger mix (with 22 kW), targets out of reach, EVs arriving below
their floor, sessions under an hour, home / work / depot sessions, weak and strong reference swings, and the
PV-surplus regime.

    from cases import CASES, make_case, baseline_case
    fleet, reference = make_case("other_generator", 2000, seed=1)
    fleet0, reference0 = baseline_case(2000, seed=1, v2g_share=0.8, regime="regulation")   # the project's own

How a session is drawn (all vectorised over sessions, one random stream per attribute):

- session type: home / work / depot with the shares `sessions`, of which a share `short_share` is replaced by
  short public stops (errands, under an hour);
- arrival: a mixture of normal distributions per type (clock hours, wrapped into the day);
- dwell: log-normal per type; short stops 3-59 min, some shorter than one 15-min step (no plugged step at all);
- charger: drawn from `chargers` ((kW, share), ...); a share `v2g_share` (exact count) discharges at its full
  charger power; efficiencies depend on the charger (slow single-phase AC is less efficient);
- battery: a list of car models and, for depots, of vans; the owner's charge limit (80 / 90 / 100 %) sets the
  target, the energy asked is drawn in kWh (gamma per type), the energy at arrival is the target minus it;
  the floor `energy_min_kwh` is the owner's reserve (10 / 20 / 30 % of the battery);
- then exact shares (counts) of EVs arriving below their floor and of targets out of reach are made, and every
  other target is made reachable, so that the case's shares are what its parameters say.

"Out of reach" follows the spec's need rule: min(target, capacity) > e0 + Pc*eta_c*dt*(plugged steps), with
plugged steps k = floor(departure / dt) - ceil(arrival / dt) counted from the horizon's start over the whole
session (an EV leaving after the horizon keeps its later steps).

The reference (kW, + = the fleet draws) is the fleet's charging need (each EV's grid-side need spread evenly
over its plugged steps) plus a swing: `swing` * (plugged charge + discharge power) * a shape in [-1, 1] (slow
waves, hourly market steps and a little noise), clipped to what the plugged fleet can draw or inject. In the
"surplus" regime a midday block (a PV bell from about 10-11 h to 14.5-16 h) asks at every step at least 1.5x
the charge power of the EVs plugged in then.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from evagg.simulators.fleet import Fleet
from evagg.simulators.reference import Reference

START = "2026-06-01T00:00:00"
STEP_S = 900  # 15-minute steps
N_STEPS = 96  # one day
REGIMES = ("regulation", "surplus")
SESSION_TYPES = ("home", "work", "depot", "short")

# Arrival clock hours per session type: a mixture of normals, (weight, mean h, sd h) per component.
# Home: mostly the evening return, some at midday (home office, part-time); depots: the evening shift's return
# and a midday changeover; short stops: late morning and late afternoon errands.
_ARRIVAL_MIXTURE = {
    "home": ((0.75, 18.0, 1.6), (0.25, 13.5, 2.5)),
    "work": ((1.0, 8.3, 1.0),),
    "depot": ((0.8, 19.0, 1.2), (0.2, 12.5, 1.0)),
    "short": ((0.5, 11.5, 2.0), (0.5, 17.0, 2.0)),
}
# Dwell time per type: log-normal (median h, sigma), clipped to [lo h, hi h].
_DWELL = {
    "home": (11.0, 0.35, 2.0, 20.0),
    "work": (8.5, 0.20, 3.0, 12.0),
    "depot": (9.5, 0.25, 4.0, 14.0),
    "short": (0.5, 0.50, 0.05, 59.0 / 60.0),  # 3-59 min: under an hour, some below one step
}
# Energy asked (kWh into the battery) per type: gamma(shape, scale). Commutes ~13 kWh, vans' shifts ~36 kWh.
_ASKED_KWH = {"home": (2.2, 6.0), "work": (2.0, 6.0), "depot": (3.0, 12.0), "short": (1.5, 5.0)}
# Usable battery sizes (kWh) of common models and how common they are; depots run vans.
_CAR_KWH = np.array([24.0, 35.8, 42.0, 50.0, 60.0, 71.0, 87.0, 95.0])
_CAR_P = np.array([0.06, 0.12, 0.14, 0.18, 0.18, 0.14, 0.11, 0.07])
_VAN_KWH = np.array([47.0, 68.0, 79.0, 90.0, 112.0])
_VAN_P = np.array([0.2, 0.3, 0.2, 0.2, 0.1])
# The owner's settings: charge limit (fraction of the battery) and reserve (the floor, energy_min_kwh).
_CHARGE_LIMIT = (np.array([0.8, 0.9, 1.0]), np.array([0.5, 0.2, 0.3]))
_RESERVE = (np.array([0.1, 0.2, 0.3]), np.array([0.4, 0.4, 0.2]))
_NO_ASK_SHARE = 0.04  # plugged in although (nearly) full: target at or below the energy at arrival
# Mean charge efficiency by charger power (single-phase 3.7 kW AC loses most); discharge a little lower.
_ETA_BY_KW = ((3.7, 0.88), (7.4, 0.91), (11.0, 0.93), (22.0, 0.94))


@dataclass(frozen=True)
class CaseParams:
    """What one case varies. Shares are fractions of the sessions; powers kW."""

    v2g_share: float = 0.5  # exact share of sessions that discharge, at their full charger power
    chargers: tuple = ((3.7, 0.20), (7.4, 0.40), (11.0, 0.30), (22.0, 0.10))  # (kW, share), ...
    sessions: tuple = (0.55, 0.30, 0.15)  # home, work, depot
    short_share: float = 0.05  # short public stops (under an hour), taken out of the shares above
    unreachable_share: float = 0.05  # targets out of reach by the need rule (exact, as far as EVs allow)
    below_floor_share: float = 0.03  # EVs arriving with less energy than their energy_min_kwh
    swing: float = 0.25  # the reference's largest swing around the need, fraction of the plugged power range
    regime: str = "regulation"  # or "surplus": a midday block asking >= 1.5x the plugged charge power

    def as_dict(self) -> dict:
        return asdict(self)


DEFAULT = CaseParams()
CASES: dict[str, CaseParams] = {
    "v2g0": replace(DEFAULT, v2g_share=0.0),
    "v2g50": replace(DEFAULT, v2g_share=0.5),
    "v2g80": replace(DEFAULT, v2g_share=0.8),
    "v2g100": replace(DEFAULT, v2g_share=1.0),
    # Mostly 22 kW with slow single-phase wallboxes: the widest spread of charger powers.
    "mix22": replace(DEFAULT, chargers=((3.7, 0.35), (22.0, 0.65))),
    "unreachable": replace(DEFAULT, unreachable_share=0.15),
    "below_floor": replace(DEFAULT, below_floor_share=0.25),
    "short": replace(DEFAULT, short_share=0.30),
    "depot_heavy": replace(DEFAULT, sessions=(0.10, 0.10, 0.80), chargers=((11.0, 0.3), (22.0, 0.7))),
    "weak_swing": replace(DEFAULT, swing=0.10),
    "strong_swing": replace(DEFAULT, swing=0.50),
    "surplus": replace(DEFAULT, regime="surplus"),
    "surplus_v2g80": replace(DEFAULT, regime="surplus", v2g_share=0.8),
    # Like another generator's fleets: 80 % V2G at full charger power, 3.7 / 7.4 / 11 / 22 kW, home / work /
    # depot, 12 % of targets out of reach, a reference swinging by about a third of the plugged power.
    "other_generator": replace(
        DEFAULT, v2g_share=0.8, chargers=((3.7, 0.20), (7.4, 0.35), (11.0, 0.25), (22.0, 0.20)),
        sessions=(0.50, 0.30, 0.20), unreachable_share=0.12, swing=0.33,
    ),
}


def params_of(case) -> CaseParams:
    """A case by name (see CASES) or the parameters themselves."""
    if isinstance(case, CaseParams):
        return case
    try:
        return CASES[case]
    except KeyError:
        raise ValueError(f"unknown case {case!r}; choose one of {', '.join(CASES)}") from None


def make_case(case, n: int, seed: int = 0, start=START, step_s: int = STEP_S, n_steps: int = N_STEPS):
    """(fleet, reference) of `case` (a name of CASES or CaseParams) with `n` sessions; the same args, the same."""
    params = params_of(case)
    fleet = case_fleet(params, n, seed=seed, start=start, step_s=step_s)
    return fleet, case_reference(fleet, params, seed=seed, start=start, step_s=step_s, n_steps=n_steps)


def baseline_case(n: int, seed: int, v2g_share: float, regime: str = "regulation", start=START,
                  step_s: int = STEP_S, n_steps: int = N_STEPS):
    """The project's own synthetic fleet and reference of the same size, V2G share and regime: the baseline of
    the issue's "at most 2x the time on our own fleet"."""
    from evagg.simulators.synthetic import synthetic_fleet, synthetic_reference

    fleet = synthetic_fleet(n, seed=seed, start=start, v2g_share=v2g_share)
    return fleet, synthetic_reference(fleet, start=start, step_s=step_s, n_steps=n_steps, seed=seed, kind=regime)


# --------------------------------------------------------------------------------------------------- the fleet


def case_fleet(params: CaseParams, n: int, seed: int = 0, start=START, step_s: int = STEP_S) -> Fleet:
    """`n` plug-in sessions of one day from the date of `start`, drawn as the module doc says."""
    p = params_of(params)
    _check_params(p)
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    streams = np.random.SeedSequence([int(seed), 0xCA5E]).spawn(12)
    (r_type, r_arrive, r_dwell, r_charger, r_v2g, r_eta, r_battery, r_owner, r_ask, r_floor, r_reach,
     r_depart) = (np.random.default_rng(s) for s in streams)
    dt_h = step_s / 3600.0

    # Session types: home / work / depot by their shares, short stops replacing a share of them.
    home_work_depot = np.asarray(p.sessions, float) / np.sum(p.sessions)
    type_p = np.append(home_work_depot * (1.0 - p.short_share), p.short_share)
    kind = r_type.choice(len(SESSION_TYPES), size=n, p=type_p)

    # Arrival (seconds after midnight of the start's day): each type's normal mixture, wrapped into the day.
    arrive_h = np.empty(n)
    for k, name in enumerate(SESSION_TYPES):
        idx = np.flatnonzero(kind == k)
        comps = _ARRIVAL_MIXTURE[name]
        w = np.array([c[0] for c in comps])
        c = r_arrive.choice(len(comps), size=idx.size, p=w / w.sum())
        mean, sd = np.array([x[1] for x in comps])[c], np.array([x[2] for x in comps])[c]
        arrive_h[idx] = r_arrive.normal(mean, sd)
    arrival_s = np.floor(np.mod(arrive_h, 24.0) * 3600.0).astype(np.int64)
    arrival_s = np.minimum(arrival_s, 86400 - 1)

    median, sigma, lo, hi = (np.array([_DWELL[t][j] for t in SESSION_TYPES])[kind] for j in range(4))
    dwell_h = np.clip(median * np.exp(sigma * r_dwell.standard_normal(n)), lo, hi)
    departure_s = arrival_s + np.maximum(np.round(dwell_h * 3600.0).astype(np.int64), 60)

    # Chargers and V2G (an exact count, so that a case's share is what it says).
    kw = np.array([c[0] for c in p.chargers], float)
    share = np.array([c[1] for c in p.chargers], float)
    p_charge = kw[r_charger.choice(kw.size, size=n, p=share / share.sum())]
    v2g = np.zeros(n, bool)
    v2g[r_v2g.permutation(n)[: int(round(p.v2g_share * n))]] = True
    p_discharge = np.where(v2g, p_charge, 0.0)
    eta_mean = np.interp(p_charge, [e[0] for e in _ETA_BY_KW], [e[1] for e in _ETA_BY_KW])
    eta_c = np.round(np.clip(r_eta.normal(eta_mean, 0.015), 0.80, 0.98), 3)
    eta_d = np.round(np.clip(eta_c - np.abs(r_eta.normal(0.01, 0.01, size=n)), 0.78, 0.98), 3)

    # Battery, the owner's settings and the energy asked (kWh), which gives the energy at arrival.
    is_van = kind == SESSION_TYPES.index("depot")
    capacity = np.where(is_van, _VAN_KWH[r_battery.choice(_VAN_KWH.size, size=n, p=_VAN_P)],
                        _CAR_KWH[r_battery.choice(_CAR_KWH.size, size=n, p=_CAR_P)])
    limit = _CHARGE_LIMIT[0][r_owner.choice(3, size=n, p=_CHARGE_LIMIT[1])]
    reserve = _RESERVE[0][r_owner.choice(3, size=n, p=_RESERVE[1])]
    target = limit * capacity
    e_min = np.round(reserve * capacity, 1)
    shape, scale = (np.array([_ASKED_KWH[t][j] for t in SESSION_TYPES])[kind] for j in range(2))
    asked = r_ask.gamma(shape, scale)
    # Nobody arrives empty: at least 3-10 % of the battery is left, the ask shrinks to fit.
    e0 = np.maximum(target - asked, r_ask.uniform(0.03, 0.10, size=n) * capacity)
    no_ask = r_ask.random(n) < _NO_ASK_SHARE
    target = np.where(no_ask, e0 * r_ask.uniform(0.7, 1.0, size=n), target)

    # Below the floor: an exact count arrives with 10-90 % of its reserve; everybody else at or above it
    # (where the draw left them below, their reserve setting is taken as lower than what they arrived with).
    below = np.zeros(n, bool)
    below[r_floor.permutation(n)[: int(round(p.below_floor_share * n))]] = True
    e0 = np.where(below, e_min * r_floor.uniform(0.1, 0.9, size=n), e0)
    e_min = np.where(~below & (e0 < e_min), np.floor(e0 * r_floor.uniform(0.3, 1.0, size=n) * 10) / 10, e_min)
    e0 = np.minimum(np.round(e0, 3), capacity)

    target, departure_s = _set_reachability(p, r_reach, r_depart, arrival_s, departure_s, e0, target, capacity,
                                            p_charge, eta_c, step_s, dt_h)

    day = np.datetime64(np.datetime64(start, "s"), "D").astype("datetime64[s]")
    width = max(6, len(str(max(n - 1, 0))))
    fleet = Fleet(
        ev_id=np.array([f"S{k:0{width}d}" for k in range(n)], dtype=object),
        arrival=day + arrival_s.astype("timedelta64[s]"),
        departure=day + departure_s.astype("timedelta64[s]"),
        energy_initial_kwh=e0,
        energy_target_kwh=target,
        capacity_kwh=capacity,
        p_charge_max_kw=p_charge,
        p_discharge_max_kw=p_discharge,
        eta_charge=eta_c,
        eta_discharge=eta_d,
        energy_min_kwh=e_min,
        extra=None,
    )
    _check_conventions(fleet)
    return fleet


def _set_reachability(p, r_reach, r_depart, arrival_s, departure_s, e0, target, capacity, p_charge, eta_c,
                      step_s, dt_h):
    """Make an exact count of targets out of reach and every other target reachable; returns (target, departure).

    Out of reach either by a target above what the stay can deliver (where the battery has room beyond it:
    slow chargers, short stays) or, where a fast charger would fill the battery anyway, by a shorter stay
    (the driver leaves early). Margins are >= 0.2 kWh, so rounding never flips a case."""
    n = e0.size
    steps = plugged_steps_s(arrival_s, departure_s, step_s)
    gain = p_charge * eta_c * dt_h  # kWh per plugged step charging flat out
    reach = e0 + gain * steps
    first = -(-arrival_s // step_s)
    # by_target: the battery can hold >= 1 kWh more than the stay delivers; by_stay: room for >= 6 steps of
    # charging and a stay of >= 2 steps to cut (not the short stops: they are short already).
    by_target = (steps >= 1) & (capacity - reach >= 1.0)
    by_stay = ~by_target & (steps >= 2) & (capacity - e0 >= 6.0 * gain) & (departure_s - arrival_s >= 3600)
    candidates = np.flatnonzero(by_target | by_stay)
    out = np.zeros(n, bool)
    out[r_reach.permutation(candidates)[: min(int(round(p.unreachable_share * n)), candidates.size)]] = True

    u = r_reach.uniform(size=n)
    v = r_reach.uniform(size=n)
    target = target.copy()
    departure_s = departure_s.copy()
    t_a = out & by_target
    target[t_a] = reach[t_a] + (0.2 + 0.8 * u[t_a]) * (capacity[t_a] - reach[t_a])
    t_b = out & by_stay
    target[t_b] = e0[t_b] + (0.6 + 0.4 * u[t_b]) * (capacity[t_b] - e0[t_b])
    cut = np.maximum(np.floor((0.3 + 0.5 * v[t_b]) * (target[t_b] - e0[t_b]) / gain[t_b]), 1).astype(np.int64)
    cut = np.minimum(cut, steps[t_b])
    departure_s[t_b] = (first[t_b] + cut) * step_s + r_depart.integers(0, step_s, size=cut.size)

    # Every other target within reach: what was asked beyond it shrinks to 50-100 % of what the stay delivers.
    # Rounded down to 1 Wh, so it stays within reach.
    over = ~out & (np.minimum(target, capacity) > reach)
    target[over] = e0[over] + (0.5 + 0.5 * u[over]) * (reach[over] - e0[over])
    target = np.round(target, 3)
    # ... and where rounding to 1 Wh lifted one above its reach, rounded down instead.
    lifted = ~out & (np.minimum(target, capacity) > reach)
    target[lifted] = np.floor(np.minimum(target[lifted], reach[lifted]) * 1000) / 1000
    return target, departure_s


def plugged_steps_s(arrival_s, departure_s, step_s: int = STEP_S) -> np.ndarray:
    """Plugged steps of sessions given in seconds from the horizon's start (spec: arrival <= t_k, t_k + dt <=
    departure), over the whole session."""
    return np.maximum(departure_s // step_s - (-(-arrival_s // step_s)), 0)


def seconds_from(times, start) -> np.ndarray:
    return (np.asarray(times, "datetime64[s]") - np.datetime64(start, "s")).astype(np.int64)


def out_of_reach(fleet: Fleet, start=START, step_s: int = STEP_S) -> np.ndarray:
    """(N,) bool: the target (capped at capacity) is beyond charging flat out over the plugged steps."""
    steps = plugged_steps_s(seconds_from(fleet.arrival, start), seconds_from(fleet.departure, start), step_s)
    reach = fleet.energy_initial_kwh + fleet.p_charge_max_kw * fleet.eta_charge * step_s / 3600.0 * steps
    return np.minimum(fleet.energy_target_kwh, fleet.capacity_kwh) > reach + 1e-6


def _check_params(p: CaseParams) -> None:
    shares = {"v2g_share": p.v2g_share, "short_share": p.short_share, "unreachable_share": p.unreachable_share,
              "below_floor_share": p.below_floor_share}
    for name, v in shares.items():
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v}")
    if p.short_share >= 1.0:
        raise ValueError("short_share must be < 1 (some sessions must be home / work / depot)")
    if p.regime not in REGIMES:
        raise ValueError(f"regime must be one of {', '.join(REGIMES)}, got {p.regime!r}")
    if p.swing < 0:
        raise ValueError(f"swing must be >= 0, got {p.swing}")
    if len(p.sessions) != 3 or min(p.sessions) < 0 or sum(p.sessions) <= 0:
        raise ValueError(f"sessions must be three non-negative shares (home, work, depot), got {p.sessions}")
    if not p.chargers or any(kw <= 0 or s < 0 for kw, s in p.chargers) or sum(s for _, s in p.chargers) <= 0:
        raise ValueError(f"chargers must be (kW > 0, share >= 0) pairs, got {p.chargers}")


def _check_conventions(f: Fleet) -> None:
    """The data conventions, asserted here so that a generator bug never reaches a benchmark as a 'hard case'."""
    assert np.all(f.departure > f.arrival), "departure must be after arrival"
    assert np.all((f.eta_charge > 0) & (f.eta_charge <= 1) & (f.eta_discharge > 0) & (f.eta_discharge <= 1))
    assert np.all(f.capacity_kwh > 0)
    assert np.all((f.energy_initial_kwh >= 0) & (f.energy_initial_kwh <= f.capacity_kwh))
    assert np.all((f.energy_min_kwh >= 0) & (f.energy_min_kwh <= f.capacity_kwh))
    assert np.all(f.energy_target_kwh >= 0)
    assert np.all((f.p_charge_max_kw >= 0) & (f.p_discharge_max_kw >= 0))


# ------------------------------------------------------------------------------------------------ the reference


def plugged_power(fleet: Fleet, start=START, step_s: int = STEP_S, n_steps: int = N_STEPS):
    """Per step of the horizon: (plugged charge power, plugged discharge power, charging need) in kW.

    The need is each EV's grid-side need, (min(target, cap, reach) - e0)^+ / eta_c, spread evenly over its
    plugged steps (those after the horizon keep their share)."""
    arr = seconds_from(fleet.arrival, start)
    dep = seconds_from(fleet.departure, start)
    first_all = -(-arr // step_s)
    stop_all = dep // step_s
    steps = np.maximum(stop_all - first_all, 0)
    dt_h = step_s / 3600.0
    reach = fleet.energy_initial_kwh + fleet.p_charge_max_kw * fleet.eta_charge * dt_h * steps
    need = np.minimum(np.minimum(fleet.energy_target_kwh, fleet.capacity_kwh), reach)
    need_kw = np.where(steps > 0, np.maximum(need - fleet.energy_initial_kwh, 0) / fleet.eta_charge
                       / np.maximum(steps, 1) / dt_h, 0.0)
    first = np.clip(first_all, 0, n_steps)
    stop = np.maximum(np.clip(stop_all, 0, n_steps), first)

    def over_window(values):
        # each session adds `values` from its first plugged step up to (not including) its stop
        diff = np.bincount(first, values, n_steps + 1) - np.bincount(stop, values, n_steps + 1)
        return np.cumsum(diff)[:n_steps]

    return over_window(fleet.p_charge_max_kw), over_window(fleet.p_discharge_max_kw), over_window(need_kw)


def swing_shape(rng: np.random.Generator, hours: np.ndarray) -> np.ndarray:
    """A shape in [-1, 1] with max |shape| = 1: three slow waves (2-6 h), hourly market steps, a little noise."""
    slow = np.zeros(hours.size)
    for _ in range(3):
        slow += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * hours / rng.uniform(2.0, 6.0) + rng.uniform(0, 2 * np.pi))
    hourly = rng.uniform(-1.0, 1.0, size=int(np.ceil(hours[-1] + 1e-9)) + 1)[np.floor(hours).astype(int)]
    shape = slow / max(np.abs(slow).max(), 1e-12) + 0.6 * hourly + 0.15 * rng.standard_normal(hours.size)
    return shape / max(np.abs(shape).max(), 1e-12)


def case_reference(fleet: Fleet, params, seed: int = 0, start=START, step_s: int = STEP_S,
                   n_steps: int = N_STEPS) -> Reference:
    """The case's reference signal for `fleet` (see the module doc), rounded to 1 W."""
    p = params_of(params)
    _check_params(p)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5E7]))
    start = np.datetime64(start, "s")
    hours = (np.arange(n_steps) + 0.5) * step_s / 3600.0  # mid-step, from the start
    clock = np.mod(hours + (start - start.astype("datetime64[D]")).astype(np.int64) / 3600.0, 24.0)
    p_charge, p_discharge, need = plugged_power(fleet, start, step_s, n_steps)
    power_range = p_charge + p_discharge
    p_ref = np.clip(need + p.swing * power_range * swing_shape(rng, hours), -p_discharge, p_charge)
    p_ref = np.round(p_ref, 3)
    if p.regime == "surplus":
        lo, hi = rng.uniform(10.0, 11.0), rng.uniform(14.5, 16.0)
        block = (clock >= lo) & (clock < hi)
        if block.any():
            # A PV bell (0.6 at the block's edges, 1 at its middle) scaled so that every block step asks
            # 1.5-1.8x the plugged charge power or more; rounded up so that rounding never undercuts 1.5x.
            bell = 0.6 + 0.4 * np.sin(np.pi * (clock[block] - lo) / (hi - lo))
            level = max(np.max(1.5 * p_charge[block] / bell), 1.0) * rng.uniform(1.0, 1.2)
            p_ref[block] = np.ceil(level * bell * 1000) / 1000
    return Reference(start=start, step=np.timedelta64(step_s, "s"), p_ref_kw=p_ref)
