"""The inputs of a run, made and checked before anything is written: the grid, the signal and the fleets."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from evagg.simulators.aggregator import SignalSource
from evagg.simulators.fleet import Fleet
from evagg.simulators.grids import GridError, load_grid
from evagg.simulators.synthetic import synthetic_fleet
from evagg.simulators.tables import InputError, read_reference

from .errors import ScenarioError
from .options import Options, own_sessions

SESSIONS_STREAM = 1009  # the part of the seed (`derived_seed`) that spreads --sessions over the buses


def check_inputs(opts: Options):
    """Load the grid and read the signal (if any) before anything is written: ScenarioError if they do not work."""
    if not opts.grid.strip():
        raise ScenarioError("--grid is empty: give a simbench code (e.g. 1-LV-semiurb4--0-sw) or a pandapower .json "
                            "file")
    try:
        feeder = load_grid(opts.grid)
    except GridError as exc:
        raise ScenarioError(str(exc)) from None
    if not len(feeder.load_buses):
        raise ScenarioError(f"grid {feeder.spec} has no load in service: there is no bus to spread the EVs over")
    if opts.sessions is not None:
        fleet = own_sessions(opts.sessions)
        if fleet.bus is not None:
            unknown = sorted(set(fleet.bus.tolist()) - set(int(b) for b in feeder.net.bus.index))
            if unknown:
                raise ScenarioError(f"sessions {opts.sessions}: bus {unknown[0]} is not a bus of grid {feeder.spec}"
                                    f"{f' (nor {len(unknown) - 1} more)' if len(unknown) > 1 else ''}; drop the "
                                    "bus column to spread the sessions over its load buses")
    reference = None
    if opts.signal is not None:
        try:
            reference = read_reference(opts.signal)
            # the run's steps must be covered; the forecast's look-ahead is cut at the signal's end
            SignalSource(reference, opts.start64, opts.step_s, source=f"signal {opts.signal}").check_covers(
                opts.n_steps)
        except FileNotFoundError:
            raise ScenarioError(f"signal {opts.signal}: no such file") from None
        except (InputError, ValueError) as exc:
            raise ScenarioError(str(exc)) from None
    return feeder, reference


def derived_seed(*parts: int) -> int:
    """A seed for one part of a scenario (aggregator, day), from the scenario's seed: independent streams."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def build_fleet(opts: Options, i: int, n: int, buses: np.ndarray):
    """Aggregator i's fleet. With --sessions: its `n` sessions of the user's (`own_fleet`), every A-th by arrival.
    Else `n` EVs, each at a fixed load bus (drawn from `buses`) with or without V2G, plugging in once a day (synthetic sessions: home, workplace, depot) on every date from the day before the start to the
    end, keeping the sessions plugged in at some time of the simulated period.

    A session already plugged in at the start counts as arriving then, with the energy it would have if it had
    charged flat out since its real arrival (up to its target), as an uncontrolled charger does: every policy
    starts from the same state, the uncontrolled one without a jump, and the reference's baseline and the
    dispatch see what is left of its need over the time that is left."""
    if opts.sessions is not None:
        fleet = own_fleet(opts, buses)
        order = np.argsort(fleet.arrival, kind="stable")
        mine = np.sort(order[i::opts.aggregators])  # every A-th by arrival: each aggregator a similar mix over the day
        assert len(mine) == n, (len(mine), n)
        return fleet.select(mine)
    rng = np.random.default_rng(derived_seed(opts.seed, i, 0))
    ev_bus = np.asarray(buses, dtype=np.int64)[rng.integers(0, len(buses), size=n)]
    ev_v2g = rng.random(n) < opts.v2g_share
    width = max(5, len(str(max(n - 1, 0))))
    start = opts.start64
    end = start + np.timedelta64(opts.until, "s")
    first_date = start.astype("datetime64[D]") - np.timedelta64(1, "D")
    n_dates = int((end.astype("datetime64[D]") - first_date) / np.timedelta64(1, "D")) + 1
    parts = []
    for d in range(n_dates):
        f = synthetic_fleet(n, seed=derived_seed(opts.seed, i, d + 1), start=str(first_date + np.timedelta64(d, "D")),
                            days=1, v2g_share=1.0)
        parts.append(dataclasses.replace(
            f, ev_id=np.array([f"ev{j:0{width}d}-d{d}" for j in range(n)], dtype=object), bus=ev_bus,
            p_discharge_max_kw=np.where(ev_v2g, f.p_discharge_max_kw, 0.0)))
    values = {}
    for fld in dataclasses.fields(Fleet):
        vs = [getattr(p, fld.name) for p in parts]
        if vs[0] is None:  # an optional field the synthetic fleets do not have (departure_declared)
            continue
        values[fld.name] = (pd.concat(vs, ignore_index=True) if isinstance(vs[0], pd.DataFrame)
                            else np.concatenate(vs))
    keep = (values["departure"] > start) & (values["arrival"] < end)
    values = {k: (v[keep] if isinstance(v, np.ndarray) else v[keep].reset_index(drop=True)) for k, v in values.items()}
    return Fleet(**_join_at_start(values, start))


def own_fleet(opts: Options, buses: np.ndarray) -> Fleet:
    """The sessions of --sessions plugged in within the study window (all aggregators'), at their bus column or,
    without one, spread over `buses` (`spread_over_buses`); sessions plugged in before the start join at the start
    as the synthetic ones do."""
    fleet = own_sessions(opts.sessions)
    start = opts.start64
    end = start + np.timedelta64(opts.until, "s")
    fleet = fleet.select((fleet.departure > start) & (fleet.arrival < end))
    if fleet.bus is None:
        fleet = dataclasses.replace(fleet, bus=spread_over_buses(fleet, buses, opts.seed))
    values = {fld.name: getattr(fleet, fld.name) for fld in dataclasses.fields(Fleet)}
    return Fleet(**_join_at_start(values, start))


def spread_over_buses(fleet: Fleet, buses: np.ndarray, seed: int) -> np.ndarray:
    """(N,) a load bus for each session of a fleet without a bus column, by a seeded rule: the stations (the
    column ``station`` of `evagg import`, else each session its own) in the order they first appear take the
    buses of a seeded shuffle of `buses` in turn (round robin: as even as can be, one station at one bus)."""
    buses = np.asarray(buses, dtype=np.int64)
    extra = fleet.extra
    keys = extra["station"].astype(str) if extra is not None and "station" in extra else pd.Series(fleet.ev_id)
    station, _ = pd.factorize(keys.to_numpy(dtype=object))
    shuffled = np.random.default_rng(derived_seed(seed, SESSIONS_STREAM)).permutation(buses)
    return shuffled[station % len(shuffled)]


def _join_at_start(values: dict, start: np.datetime64) -> dict:
    """A fleet's arrays with the sessions plugged in before `start` arriving at it, with the energy charging flat
    out since their real arrival would have given them (up to their target, as an uncontrolled charger)."""
    early = values["arrival"] < start
    if early.any():
        before_h = (start - values["arrival"][early]) / np.timedelta64(1, "h")
        e0, cap = values["energy_initial_kwh"][early], values["capacity_kwh"][early]
        eta, pmax = values["eta_charge"][early], values["p_charge_max_kw"][early]
        full = np.maximum(np.minimum(values["energy_target_kwh"][early], cap), e0)
        e_start = np.minimum(e0 + eta * pmax * before_h, full)
        values["energy_initial_kwh"] = values["energy_initial_kwh"].copy()
        values["energy_initial_kwh"][early] = np.round(e_start, 3)
        values["arrival"] = np.maximum(values["arrival"], start)
    return values
