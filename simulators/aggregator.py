"""The receding-horizon EV aggregator, free of mosaik: what the mosaik plugin (evagg.plugin) steps.

At each step k of length dt (step k covers [start + k*dt, start + (k+1)*dt)) the aggregator

1. takes the reference for step k (kW, + = the fleet draws power) and a forecast for the steps after it (given,
   or the current reference held: persistence); with no reference ever received it charges `uncontrolled`;
2. re-dispatches its fleet with the engine (`dispatch`) over the horizon [t_k, t_k + H*dt), starting from the
   energies it carries (`Problem.build(..., energy_initial_kwh=...)`), over the sessions it knows of (`arrivals`,
   below; EVs that left are dropped);
3. applies the plan's first step only: the energy after step k is exactly `Problem.energy` of that first step;
4. honours grid limits on the fleet (P_min <= aggregate <= P_max) and on its EVs at each bus, as hard constraints
   of the dispatch, held over the horizon (a limit stays until the operator changes it); where they leave an EV's
   departure need out of reach, the need gives way (grid first, see simulators/limits.py) and it is reported;
5. sums the EVs' net power per grid bus.

The spec's conventions hold throughout (docs/model.md): kW, kWh, hours; an EV may draw or inject power
in step k iff arrival <= t_k and t_k + dt <= departure.

What the aggregator knows of its sessions (`arrivals`, `ARRIVALS`):

- ``on_plug`` (default): an EV enters the plan once it is plugged in (step k with arrival <= t_k), and the
  aggregator learns then its target and its departure: the declared one (the sessions' `departure_declared`)
  where given, else the actual one. The session still ends at its actual departure: leaving before the declared
  time leaves the EV short (counted in the shortfall, and in the unmet need when below what charging flat out
  until then would give); staying after it is idle plugged time (the EV is no longer planned and draws nothing;
  `idle_plugged_h`).
- ``known``: the future known (the foresight of earlier studies, for upper-bound studies; a receding-horizon
  plan is usually, not always, better for it): the sessions plugged in at some step of the horizon are planned,
  EVs not yet arrived with their session's initial energy, each with its actual departure.
- ``forecast``: ``on_plug`` plus "ghost" sessions for the arrivals it expects, so that the plan keeps room for
  them. The rule (`ghost_sessions`): the fleet's arrival profile by hour of day is taken from its own sessions
  (those arriving after the start; the rate of hour h = the arrivals in hour h / the times hour h occurs from
  the start to the last arrival), and from it, seeded (`arrivals_seed`), a Poisson number of ghosts is drawn for
  every hour from the start to the last departure, each at a uniform time in its hour and a copy of one of that
  hour's sessions drawn at random (its energies, powers, efficiencies, bus and declared stay). A ghost is planned
  while its arrival lies ahead in the horizon (never in the step applied); once its time comes the real
  arrivals take over.

Also here: `SignalSource`, the reference signal (a `Reference`, e.g. read from the signal table) resampled onto
the aggregator's time grid, which the reference-signal simulator serves and which can serve as a given forecast.
"""
from __future__ import annotations

import logging
import time as _time
from dataclasses import dataclass, fields, replace
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .dispatch import DEFAULT_METHOD, DispatchResult, dispatch, method_info
from .fleet import Fleet, _unchecked
from .limits import Limits, solver_limits
from .problem import FEASIBILITY_TOL, Problem
from .reference import Reference
from .times import to_datetime64, whole_seconds

log = logging.getLogger(__name__)

__all__ = ["Aggregator", "StepResult", "SignalSource", "DEFAULT_HORIZON", "ARRIVALS", "ghost_sessions"]

# Steps planned ahead by default (4 h at 15 min), for the plugin and the scenarios alike. A longer horizon pays off
# with a good forecast (measured with the exact future: RMSE 1.9x the batch dispatch's at 8 steps, 1.2x at 16, 1.0x
# over the whole remaining period); with persistence 8 and 16 track alike.
DEFAULT_HORIZON = 16
# What the aggregator knows of its sessions (see the module doc); the first is the default.
ARRIVALS = ("on_plug", "known", "forecast")
# Departure need missed by more than this (kWh) counts as unmet (see `Aggregator._depart`).
NEED_UNMET_KWH = 1e-3
# A limit counts as binding in a step when the power it bounds is this close (kW) to where the solvers put it (a
# hair inside the bound, limits.solver_limits).
LIMIT_BINDING_KW = 1e-2


@dataclass
class StepResult:
    """What one step of the aggregator did (kW, kWh; times datetime64[s])."""

    k: int
    time: np.datetime64
    p_kw: float  # the fleet's net power in step k, + = drawn from the grid
    p_ref_kw: float | None  # the reference step k was asked to follow (None: uncontrolled)
    bus_kw: np.ndarray  # (n_buses,) net power per bus, in the order of `Aggregator.buses`
    n_plugged: int  # EVs plugged in in step k (idle ones, past their declared departure, included)
    energy_kwh: float  # energy stored in the EVs plugged in in step k, at the end of the step
    shortfall_kwh: float  # cumulative: target (capped at capacity) not delivered at departure, up to this step
    need_unmet_kwh: float  # cumulative: the spec's departure need not met (only grid limits can cause it)
    solve_time_s: float  # wall time of the re-dispatch (build, solve, limits)
    mode: str  # tracking | held (the last reference, none came) | uncontrolled
    status: str  # the engine's status of the plan ("idle" when nothing was plugged in)
    sessions: np.ndarray = None  # positions (in the fleet) of the sessions planned for in this step
    pc_kw: np.ndarray = None  # their charge power applied in step k (0 for those not plugged in in step k)
    pd_kw: np.ndarray = None  # their discharge power applied in step k
    limited: bool = False  # a grid limit was binding in step k (the fleet or a bus at one of its bounds)
    needs_lowered_kwh: float = 0.0  # departure needs the plan gave up because the limits left them out of reach
    idle_plugged_h: float = 0.0  # cumulative: hours EVs stayed plugged in after their declared departure
    n_ghosts: int = 0  # expected arrivals ("ghost" sessions, arrivals="forecast") planned for in this step
    message: str = ""

    @property
    def tracking_error_kw(self) -> float | None:
        """Aggregate minus reference (kW); None when uncontrolled."""
        return None if self.p_ref_kw is None else self.p_kw - self.p_ref_kw


@dataclass
class _Plan:
    """One step's re-dispatch: the problem solved (None: nothing plugged in, idle) and its first step's powers (kW;
    the sessions planned, then the ghosts)."""

    problem: Problem | None
    pc0: np.ndarray
    pd0: np.ndarray
    status: str = "idle"
    message: str = ""
    limited: bool = False  # a grid limit was binding in the first step
    needs_lowered_kwh: float = 0.0


class SignalSource:
    """A reference signal on the time grid start + k*step_s (k = 0, 1, ...), from a `Reference` on any grid.

    The value of step k is the signal's mean over [t_k, t_k + dt): the signal's own value when its grid is the same
    as (or coarser than and aligned with) the aggregator's, so that nothing is changed by a resampling. A step the
    signal does not cover entirely is an error, never a zero.
    """

    def __init__(self, reference: Reference, start, step_s: int, source: str = "the signal"):
        self.reference = reference
        self.start = to_datetime64(start)
        self.step_s = whole_seconds(step_s)
        self.source = source
        ref_step = int(reference.step / np.timedelta64(1, "s"))
        offset = int((self.start - reference.start) / np.timedelta64(1, "s"))
        # Aligned and the signal's step a multiple of ours: direct look-up (hold), exact values.
        self._direct = ref_step % self.step_s == 0 and offset % self.step_s == 0
        self._ref_step, self._offset = ref_step, offset
        edges = np.arange(reference.n_steps + 1, dtype=float) * ref_step
        self._cum = np.concatenate([[0.0], np.cumsum(reference.p_ref_kw * ref_step)])
        self._edges = edges

    @property
    def n_steps(self) -> int:
        """How many steps of the aggregator's grid from `start` the signal covers entirely."""
        end_s = self._ref_step * self.reference.n_steps
        if self._offset < 0:
            return 0
        return max((end_s - self._offset) // self.step_s, 0)

    @property
    def end(self) -> np.datetime64:
        return self.reference.end

    def check_covers(self, n_steps: int) -> None:
        """ValueError unless steps 0 .. n_steps-1 are covered (set-up time check of a simulated period)."""
        if n_steps > self.n_steps or self._offset < 0:
            t_end = self.start + np.timedelta64(n_steps * self.step_s, "s")
            raise ValueError(
                f"{self.source} covers {self.reference.start} to {self.reference.end}, which does not cover the "
                f"simulated period {self.start} to {t_end} ({n_steps} steps of {self.step_s} s)"
            )

    def value(self, k: int) -> float:
        return float(self.values(k, 1)[0])

    def values(self, k: int, n: int, clip: bool = False) -> np.ndarray:
        """Steps k .. k+n-1 (kW). `clip`: only as many of them as are covered (possibly none), else ValueError."""
        k, n = int(k), int(n)
        if clip:
            n = max(min(n, self.n_steps - k), 0)
        elif k < 0 or k + n > self.n_steps or self._offset < 0:
            t0 = self.start + np.timedelta64(k * self.step_s, "s")
            t1 = t0 + np.timedelta64(n * self.step_s, "s")
            raise ValueError(
                f"{self.source} covers {self.reference.start} to {self.reference.end}: it has no value for "
                f"{t0} to {t1} (steps {k}..{k + n - 1} of {self.step_s} s from {self.start})"
            )
        if n <= 0:
            return np.zeros(0)
        t = self._offset + self.step_s * np.arange(k, k + n, dtype=np.int64)
        if self._direct:
            return self.reference.p_ref_kw[t // self._ref_step].astype(float)
        lo = np.interp(t, self._edges, self._cum)
        hi = np.interp(t + self.step_s, self._edges, self._cum)
        return (hi - lo) / self.step_s


class Aggregator:
    """An EV aggregator that re-dispatches its fleet each step over a receding horizon and applies the first step.

    fleet:       the plug-in sessions (`Fleet`).
    start:       the time of step 0 (datetime64 / ISO 8601; naive = UTC, as the tables).
    step_s:      step length, a positive whole number of seconds.
    horizon:     steps planned at each step (>= 1), the current one included.
    method:      the engine's dispatch method (see `dispatch.METHODS`); `uncontrolled` is used while no reference
                 has been received.
    time_limit_s: the solver's time limit per re-dispatch (None: the method's default).
    bus:         the grid bus of each session: None (the sessions' `bus` column, if any), an array (one per
                 session) or a mapping ev_id -> bus index. Without any, there are no per-bus outputs.
    grid_buses:  the bus indices the grid has: a session at another bus is an error here.
    forecast:    a `SignalSource` (or `Reference`) for the steps after the current one; None = persistence (the
                 current reference held over the horizon). A forecast passed to `step` wins over it.
    end:         optional end of the planning period (a time on the step grid): the horizon never reaches past
                 it (a shrinking horizon towards the end of a study period, like a batch dispatch over it).
    arrivals:    what it knows of its sessions: on_plug (default), known or forecast (see the module doc).
    arrivals_seed: the seed of the expected arrivals (arrivals="forecast").
    """

    def __init__(
        self,
        fleet: Fleet,
        start,
        step_s,
        horizon: int = DEFAULT_HORIZON,
        method: str = DEFAULT_METHOD,
        time_limit_s: float | None = None,
        bus=None,
        grid_buses: Sequence[int] | None = None,
        forecast: SignalSource | Reference | None = None,
        name: str = "aggregator",
        end=None,
        arrivals: str = ARRIVALS[0],
        arrivals_seed: int = 0,
    ):
        self.name = name
        self.start = to_datetime64(start)
        self.step_s = whole_seconds(step_s)
        self.step_td = np.timedelta64(self.step_s, "s")
        self.dt_h = self.step_s / 3600.0
        if int(horizon) != horizon or int(horizon) < 1:
            raise ValueError(f"horizon must be a whole number of steps >= 1, got {horizon!r}")
        self.horizon = int(horizon)
        self.end_k = None
        if end is not None:
            end_s = int((to_datetime64(end) - self.start) / np.timedelta64(1, "s"))
            if end_s <= 0 or end_s % self.step_s:
                raise ValueError(f"end {end} must be a step boundary after the start {self.start}")
            self.end_k = end_s // self.step_s
        if arrivals not in ARRIVALS:
            raise ValueError(f"arrivals must be one of {', '.join(ARRIVALS)}, got {arrivals!r}")
        self.arrivals = arrivals
        method_info(method)  # a clear error for an unknown method, now rather than at the first step
        self.method = method
        self.time_limit_s = None if time_limit_s is None else float(time_limit_s)
        if isinstance(forecast, Reference):
            forecast = SignalSource(forecast, self.start, self.step_s, source="the forecast")
        self.forecast = forecast
        n = len(fleet)
        self.fleet = fleet
        # The engine needs neither the extra columns nor the bus: a lean copy makes the per-step selection cheap.
        self._core = replace(fleet, bus=None, extra=None)

        self.session_bus = self._session_buses(fleet, bus)
        if self.session_bus is not None:
            self.buses = np.unique(self.session_bus)
            self._bus_pos = np.searchsorted(self.buses, self.session_bus)
            if grid_buses is not None:
                grid = set(int(b) for b in grid_buses)
                missing = sorted(set(int(b) for b in self.buses) - grid)
                if missing:
                    ids = fleet.ev_id[np.isin(self.session_bus, missing)][:5]
                    raise ValueError(
                        f"{name}: the sessions plug in at bus(es) {missing} which the grid does not have "
                        f"(e.g. sessions {', '.join(map(str, ids))}); the grid has {len(grid)} buses"
                    )
        else:
            self.buses = np.zeros(0, dtype=np.int64)
            self._bus_pos = None

        # Each session's plugged steps on the global grid: first_g <= k < stop_g (the spec's convention).
        arr_s = (fleet.arrival - self.start).astype("timedelta64[s]").astype(np.int64)
        dep_s = (fleet.departure - self.start).astype("timedelta64[s]").astype(np.int64)
        self.first_g = np.maximum(-(-arr_s // self.step_s), 0)
        self.stop_g = dep_s // self.step_s
        self.servable = self.stop_g > self.first_g
        # The departures the plan uses: the actual ones with the future known, else those learnt at plug-in.
        planned = fleet.departure if arrivals == "known" else fleet.departure_planned
        self._plan_fleet = replace(self._core, departure=planned, departure_declared=None)
        self.plan_stop_g = (planned - self.start).astype("timedelta64[s]").astype(np.int64) // self.step_s
        self._idle_possible = bool(np.any(self.plan_stop_g < self.stop_g))
        # The spec's need over the steps the EV is both plugged in and expected to be.
        n_plug = np.maximum(np.minimum(self.stop_g, self.plan_stop_g) - self.first_g, 0)
        self.target_kwh = np.minimum(fleet.energy_target_kwh, fleet.capacity_kwh).astype(float)
        # The spec's departure need of each whole session (from its initial energy and all its plugged steps).
        self.need_kwh = np.minimum(
            self.target_kwh,
            fleet.energy_initial_kwh + fleet.p_charge_max_kw * fleet.eta_charge * self.dt_h * n_plug,
        )
        gone = np.sum(dep_s <= 0)
        unservable = int(np.sum(~self.servable & (self.stop_g > 0)))
        if gone:
            log.info("%s: %d session(s) leave before the start %s and are ignored", name, gone, self.start)
        if unservable:
            log.warning("%s: %d session(s) are plugged in for no whole step of %d s and cannot be served",
                        name, unservable, self.step_s)
        # Their shortfall is counted like any other, at the step they leave in (t_k < departure <= t_k+1), as the
        # batch dispatch counts it (Problem.shortfall): the target is missed whatever the cause.
        self._short_stay_k = np.where(~self.servable & (dep_s > 0), -(-dep_s // self.step_s) - 1, -1)

        # Expected arrivals ("ghosts"), planned after the sessions: positions n.. of the plan fleet.
        self.n_ghosts = 0
        self._ghost_first, self._ghost_e0 = np.zeros(0, dtype=np.int64), np.zeros(0)
        self._plan_bus = self.session_bus
        if arrivals == "forecast":
            ghosts, at = ghost_sessions(self._plan_fleet, self.start, arrivals_seed, self.session_bus)
            if len(ghosts):
                g_arr = (ghosts.arrival - self.start).astype("timedelta64[s]").astype(np.int64)
                self._ghost_first = -(-g_arr // self.step_s)
                self._ghost_e0 = ghosts.energy_initial_kwh.astype(float)
                self._plan_fleet = _joined(self._plan_fleet, ghosts)
                self._plan_bus = None if at is None else np.concatenate([self.session_bus, at])
                self.n_ghosts = len(ghosts)
            log.info("%s: plans for %d expected arrivals (ghost sessions, seed %s) from its fleet's arrival profile",
                     name, self.n_ghosts, arrivals_seed)

        self.energy_kwh = fleet.energy_initial_kwh.astype(float).copy()  # carried state, one per session
        self.final_energy_kwh = np.full(n, np.nan)  # energy at departure, once departed
        self.shortfall_kwh = 0.0  # cumulative, vs the target capped at capacity (the engine's `shortfall`)
        self.need_unmet_kwh = 0.0  # cumulative, vs the spec's need: 0 unless grid limits left needs out of reach
        self.n_departed = 0
        self.idle_plugged_h = 0.0  # cumulative: plugged in after the declared departure (not planned)
        self.k_next = 0
        self.last: StepResult | None = None
        self._last_ref: float | None = None
        self._before = None  # the state before the last step, to re-plan that step (see step)
        self._said: set[str] = set()

    # ------------------------------------------------------------------------------------------- set-up helpers

    @staticmethod
    def _session_buses(fleet: Fleet, bus) -> np.ndarray | None:
        if bus is None:
            return None if fleet.bus is None else np.asarray(fleet.bus, dtype=np.int64)
        if isinstance(bus, Mapping):
            mapping = {str(k): v for k, v in bus.items()}
            missing = [str(e) for e in fleet.ev_id if str(e) not in mapping]
            if missing:
                raise ValueError(f"the bus mapping has no bus for session(s) {', '.join(missing[:5])}"
                                 f"{' ...' if len(missing) > 5 else ''} ({len(missing)} in all)")
            values = [mapping[str(e)] for e in fleet.ev_id]
        else:
            values = list(np.asarray(bus).ravel())
            if len(values) != len(fleet):
                raise ValueError(f"bus must give one bus per session: {len(values)} for {len(fleet)} sessions")
        out = np.empty(len(values), dtype=np.int64)
        for i, v in enumerate(values):
            if isinstance(v, (bool, np.bool_)) or float(v) != int(float(v)) or int(float(v)) < 0:
                raise ValueError(f"bus of session {fleet.ev_id[i]} must be a non-negative integer, got {v!r}")
            out[i] = int(float(v))
        return out

    @property
    def sessions_per_bus(self) -> np.ndarray:
        """(n_buses,) how many of the fleet's sessions plug in at each bus of `buses` (empty without buses)."""
        if self._bus_pos is None:
            return np.zeros(0, dtype=np.int64)
        return np.bincount(self._bus_pos, minlength=len(self.buses))

    def time_of(self, k: int) -> np.datetime64:
        return self.start + self.step_td * int(k)

    def step_of_seconds(self, seconds) -> int:
        """The step index of `seconds` after start, which must fall on a step boundary."""
        s = float(seconds)
        k = round(s / self.step_s)
        if abs(s - k * self.step_s) > 1e-6:
            raise ValueError(f"{self.name}: {s:g} s after the start is not a boundary of its {self.step_s} s steps")
        return int(k)

    def _say_once(self, key: str, level: int, msg: str, *args) -> None:
        if key not in self._said:
            self._said.add(key)
            log.log(level, msg, *args)

    # ------------------------------------------------------------------------------------------------ stepping

    def step(self, k: int | None = None, p_ref_kw: float | None = None, forecast_kw=None,
             p_min_kw: float | None = None, p_max_kw: float | None = None,
             bus_limits: Mapping | None = None, limit_by: Mapping | None = None) -> StepResult:
        """Plan over [t_k, t_k + horizon*dt), apply step k, carry the energies; k defaults to the next step.
        Stepping the last step again re-plans it from its start (with new limits, in a same-step loop).

        p_ref_kw:    the reference for step k; None = none came: the last one is held (said once), or, if there
                     never was one, the fleet charges uncontrolled (said once).
        forecast_kw: the reference forecast for steps k+1, k+2, ... (any length: cut to the horizon, its last
                     value held if short); None = the aggregator's `forecast` source where it covers, else the
                     step's reference held.
        p_min_kw / p_max_kw: grid limits on the fleet's net power in step k, held over the horizon; hard: where
                     they leave departure needs out of reach the needs give way (said, and `needs_lowered_kwh`).
        bus_limits:  {bus: (p_min_kw, p_max_kw)} (either may be None): the same for the EVs at that bus.
        limit_by:    {bus: what set its P_max} (the operator's row, e.g. "Transformer-0"): the upper limits of
                     buses set by the same line or transformer (a loading row, on which every EV behind the
                     branch counts the same) are pooled into one limit on their sum, so that the plan, not the
                     operator's split, decides which of those EVs take the room. Voltage-set ("Vm ...") limits
                     stay per bus.
        """
        if k is None:
            k = self.k_next
        if k == self.k_next - 1 and self._before is not None:
            self._restore()  # the same step again (a same-step loop with the grid): re-plan it from its start
        if k != self.k_next:
            raise ValueError(f"{self.name}: steps must come one after the other: expected step {self.k_next} "
                             f"({self.time_of(self.k_next)}), got step {k} ({self.time_of(k)})")
        self._before = self._state()
        bus_limits = self._checked_limits(k, p_min_kw, p_max_kw, bus_limits)
        now = self.time_of(k)
        t0 = _time.perf_counter()
        h = self.horizon if self.end_k is None else max(min(self.horizon, self.end_k - k), 1)

        mode = self._reference_mode(k, now, p_ref_kw)
        plan_ref = self._planned_reference(k, h, mode, forecast_kw)

        idx, ghosts = self._planned(k, h)
        plan = self._plan(now, h, mode, plan_ref, idx, ghosts, p_min_kw, p_max_kw, bus_limits, limit_by)
        pc0, pd0, n_plugged, energy = self._apply(idx, plan)
        bus_kw, p_kw = self._bus_powers(idx, pc0 - pd0)
        n_idle, energy_idle = self._idle(k)
        self._depart(self._leaving(k, idx), k)

        self.k_next = k + 1
        result = StepResult(
            k=k, time=now, p_kw=p_kw, p_ref_kw=None if mode == "uncontrolled" else self._last_ref,
            bus_kw=bus_kw, n_plugged=n_plugged + n_idle, energy_kwh=energy + energy_idle,
            shortfall_kwh=self.shortfall_kwh, need_unmet_kwh=self.need_unmet_kwh,
            solve_time_s=_time.perf_counter() - t0, mode=mode, status=plan.status, sessions=idx, pc_kw=pc0,
            pd_kw=pd0, limited=plan.limited, needs_lowered_kwh=plan.needs_lowered_kwh,
            idle_plugged_h=self.idle_plugged_h, n_ghosts=int(ghosts.size), message=plan.message,
        )
        self.last = result
        return result

    def _plan(self, now, h: int, mode: str, plan_ref: np.ndarray, idx: np.ndarray, ghosts: np.ndarray,
              p_min_kw, p_max_kw, bus_limits: dict, limit_by) -> _Plan:
        """The re-dispatch from `now` over h steps for the sessions `idx` and the ghosts `ghosts` (an idle plan when
        no session is plugged in), under the step's limits."""
        if not idx.size:
            return _Plan(None, np.zeros(0), np.zeros(0))
        planned = np.concatenate([idx, len(self.fleet) + ghosts]) if ghosts.size else idx
        sub = self._plan_fleet.select(planned)
        e0 = np.concatenate([self.energy_kwh[idx], self._ghost_e0[ghosts]]) if ghosts.size else self.energy_kwh[idx]
        problem = Problem.build(sub, now, self.step_td, h, energy_initial_kwh=e0)
        limits = None
        if p_min_kw is not None or p_max_kw is not None or bus_limits:
            at = self._plan_bus[planned] if self._bus_pos is not None else None
            limits = Limits.build(len(planned), h, p_min_kw=p_min_kw, p_max_kw=p_max_kw,
                                  groups=_limit_groups(at, bus_limits, limit_by or {}))
        method = "uncontrolled" if mode == "uncontrolled" else self.method
        res = dispatch(sub, Reference(now, self.step_td, plan_ref), method=method,
                       time_limit_s=self.time_limit_s, problem=problem, limits=limits, applied_steps=1)
        limited = False
        if limits is not None:
            limited = _binding(limits, problem, res)
            if res.needs_lowered_kwh > 0:
                self._say_once("lowered", logging.WARNING,
                               "%s: at %s the grid limits leave %.6g kWh of departure needs out of reach; the "
                               "limits come first (said once)", self.name, now, res.needs_lowered_kwh)
        # (ghosts: 0 in the first step, their arrival lies ahead)
        return _Plan(problem, res.pc[:, 0], res.pd[:, 0], res.status, res.message, limited, res.needs_lowered_kwh)

    def _apply(self, idx: np.ndarray, plan: _Plan) -> tuple[np.ndarray, np.ndarray, int, float]:
        """The plan's first step applied to the sessions `idx`: their energies carried (exactly the engine's energy
        after the first step, Problem.energy's first column); (pc, pd) of `idx`, the EVs plugged in in the step and
        their energy at its end."""
        if plan.problem is None:
            return np.zeros(0), np.zeros(0), 0, 0.0
        n_idx = idx.size
        e_new = plan.problem.energy(plan.pc0[:, None], plan.pd0[:, None])[:n_idx, 0]
        self.energy_kwh[idx] = e_new
        on = (plan.problem.first[:n_idx] == 0) & (plan.problem.stop[:n_idx] > 0)
        return plan.pc0[:n_idx], plan.pd0[:n_idx], int(on.sum()), float(e_new[on].sum())

    def _bus_powers(self, idx: np.ndarray, p_ev: np.ndarray) -> tuple[np.ndarray, float]:
        """(net power per bus of `buses` (empty without buses), the fleet's net power) in kW of the sessions `idx`
        drawing `p_ev`."""
        if self._bus_pos is None:
            return np.zeros(0), float(p_ev.sum())
        bus_kw = np.bincount(self._bus_pos[idx], weights=p_ev, minlength=len(self.buses))
        return bus_kw, float(bus_kw.sum())

    def _idle(self, k: int) -> tuple[int, float]:
        """The EVs plugged in in step k past their declared departure (not planned, drawing nothing): their number
        and energy; their hours counted in `idle_plugged_h`."""
        if not self._idle_possible:
            return 0, 0.0
        idle = np.flatnonzero((self.plan_stop_g <= k) & (self.first_g <= k) & (self.stop_g > k))
        self.idle_plugged_h += idle.size * self.dt_h
        return int(idle.size), float(self.energy_kwh[idle].sum())

    def _leaving(self, k: int, idx: np.ndarray) -> np.ndarray:
        """The sessions that leave at the end of step k: among those planned (`idx`), or, where EVs may stay past
        their declared departure unplanned, among all."""
        # (with the stays shorter than one step, which leave unserved in the step their departure falls in)
        short = np.flatnonzero(self._short_stay_k == k)
        if self._idle_possible:
            return np.concatenate([np.flatnonzero(self.servable & (self.stop_g == k + 1)), short])
        return np.concatenate([idx[self.stop_g[idx] == k + 1], short])

    def _planned(self, k: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        """The positions of the sessions the plan of step k (over h steps) is for, and of its ghost sessions."""
        if self.arrivals == "known":  # the sessions with a plugged step in [k, k + h)
            idx = np.flatnonzero(self.servable & (self.stop_g > k) & (self.first_g < k + h))
        else:  # the sessions plugged in now and expected to stay
            idx = np.flatnonzero((self.first_g <= k) & (self.stop_g > k) & (self.plan_stop_g > k))
        ghosts = np.flatnonzero((self._ghost_first > k) & (self._ghost_first < k + h)) if self.n_ghosts else \
            self._ghost_first
        return idx, ghosts

    def _checked_limits(self, k: int, p_min_kw, p_max_kw, bus_limits) -> dict:
        """The step's limits checked (P_min <= P_max, buses it has EVs at): {bus: (p_min_kw, p_max_kw)}."""
        if p_min_kw is not None and p_max_kw is not None and p_min_kw > p_max_kw + FEASIBILITY_TOL:
            raise ValueError(f"{self.name}: at step {k} P_min ({p_min_kw} kW) is above P_max ({p_max_kw} kW)")
        bus_limits = {int(b): v for b, v in (bus_limits or {}).items() if v is not None and any(x is not None for x in v)}
        if bus_limits and self._bus_pos is None:
            raise ValueError(f"{self.name}: bus limits were given, but its sessions have no bus")
        unknown = sorted(set(bus_limits) - set(int(b) for b in self.buses))
        if unknown:
            raise ValueError(f"{self.name}: limits for bus(es) {unknown} where it has no EVs (its buses: "
                             f"{[int(b) for b in self.buses]})")
        return bus_limits

    def _reference_mode(self, k: int, now, p_ref_kw) -> str:
        """What the step follows: "tracking" (a reference came), "held" (the last one) or "uncontrolled" (never one);
        each change said once."""
        if p_ref_kw is not None and not np.isfinite(p_ref_kw):
            raise ValueError(f"{self.name}: the reference at step {k} ({now}) is {p_ref_kw}")
        if p_ref_kw is not None:
            mode = "tracking"
            if "uncontrolled" in self._said and "tracking" not in self._said:
                self._say_once("tracking", logging.INFO, "%s: a reference arrived at %s: tracking it", self.name, now)
            self._last_ref = float(p_ref_kw)
        elif self._last_ref is not None:
            mode = "held"
            self._say_once("held", logging.WARNING,
                           "%s: no reference at %s (step %d): holding the last one, %.6g kW (said once)",
                           self.name, now, k, self._last_ref)
        else:
            mode = "uncontrolled"
            self._say_once("uncontrolled", logging.WARNING,
                           "%s: no reference from %s (step %d) on: the fleet charges uncontrolled (said once)",
                           self.name, now, k)

        return mode

    def _planned_reference(self, k: int, h: int, mode: str, forecast_kw) -> np.ndarray:
        """(h,) kW the plan follows: the step's reference, then the forecast (given, the aggregator's source, or the
        reference held)."""
        plan_ref = np.zeros(h)
        if mode != "uncontrolled":
            plan_ref[:] = self._last_ref
            ahead = None
            if forecast_kw is not None:
                ahead = np.atleast_1d(np.asarray(forecast_kw, dtype=float))
            elif self.forecast is not None:
                ahead = self.forecast.values(k + 1, h - 1, clip=True)
            if ahead is not None and ahead.size and h > 1:
                m = min(ahead.size, h - 1)
                plan_ref[1:1 + m] = ahead[:m]
                plan_ref[1 + m:] = ahead[m - 1]

        return plan_ref

    def _depart(self, leaving: np.ndarray, k: int) -> None:
        """Sessions `leaving` at the end of step k: their energy at departure, shortfall and unmet need counted."""
        if leaving.size:
            e_dep = self.energy_kwh[leaving]
            self.final_energy_kwh[leaving] = e_dep
            self.shortfall_kwh += float(np.maximum(self.target_kwh[leaving] - e_dep, 0.0).sum())
            unmet = np.maximum(self.need_kwh[leaving] - e_dep, 0.0)
            # Below NEED_UNMET_KWH a shortfall is the hair (limits.NEED_MARGIN_KWH) by which the grid-first rule
            # lowers a need beyond what its LP finds, not energy an owner misses.
            unmet = unmet[unmet > NEED_UNMET_KWH]
            if unmet.size:
                self.need_unmet_kwh += float(unmet.sum())
                log.warning("%s: %d EV(s) left at %s short of their need by %.6g kWh",
                            self.name, unmet.size, self.time_of(k + 1), unmet.sum())
            self.n_departed += int(leaving.size)

    def _state(self):
        return (self.energy_kwh.copy(), self.final_energy_kwh.copy(), self.shortfall_kwh, self.need_unmet_kwh,
                self.n_departed, self.k_next, self.last, self._last_ref, self.idle_plugged_h)

    def _restore(self) -> None:
        (energy, final, self.shortfall_kwh, self.need_unmet_kwh, self.n_departed, self.k_next, self.last,
         self._last_ref, self.idle_plugged_h) = self._before
        self.energy_kwh, self.final_energy_kwh = energy.copy(), final.copy()

    def plugged_at_end(self) -> tuple[int, float]:
        """After the steps done: how many EVs plugged in in the last step leave after it, and the kWh of their
        targets they will miss whatever comes next: the target minus what charging flat out until departure can
        still add (`Problem.certain_shortfall`). Counted apart from `shortfall_kwh` (departures so far); a run that
        ends here reports them so."""
        n = self.k_next
        staying = np.flatnonzero(self.servable & (self.first_g < n) & (self.stop_g > n))
        if not n or not staying.size:
            return 0, 0.0
        problem = Problem.build(self._core.select(staying), self.start, self.step_td, n,
                                energy_initial_kwh=self.energy_kwh[staying])
        # their energy now is their energy at the end of the last step, the horizon's last plugged step for each
        energy = np.broadcast_to(self.energy_kwh[staying][:, None], (staying.size, n))
        return int(problem.plugged_at_end.sum()), float(problem.certain_shortfall(energy).sum())

    def soc_spread(self, percentiles=(0, 10, 50, 90, 100)) -> np.ndarray | None:
        """The state of charge (energy / capacity, in %) of the EVs plugged in in the last step, at its end: its
        `percentiles` (numpy's linear rule). None before the first step or when no EV was plugged in."""
        res = self.last
        if res is None or res.sessions is None or not len(res.sessions):
            return None
        idx = res.sessions
        idx = idx[(self.first_g[idx] <= res.k) & (self.stop_g[idx] > res.k)]
        if not idx.size:
            return None
        soc = 100.0 * self.energy_kwh[idx] / self.fleet.capacity_kwh[idx]
        return np.percentile(soc, percentiles)

    def run(self, n_steps: int, reference: SignalSource | Reference | None = None, perfect_forecast: bool = False,
            p_max_kw=None, p_min_kw=None, bus_limits=None) -> list[StepResult]:
        """Step `n_steps` times from the next step, the reference taken from `reference` (None: uncontrolled);
        `perfect_forecast`: its future over the horizon is given exactly, else persistence (or `self.forecast`)."""
        if isinstance(reference, Reference):
            reference = SignalSource(reference, self.start, self.step_s)
        out = []
        for _ in range(int(n_steps)):
            k = self.k_next
            p_ref = None if reference is None else reference.value(k)
            fc = reference.values(k + 1, self.horizon - 1, clip=True) if (perfect_forecast and reference) else None
            out.append(self.step(k, p_ref, forecast_kw=fc, p_min_kw=p_min_kw, p_max_kw=p_max_kw,
                                 bus_limits=bus_limits))
        return out


def ghost_sessions(fleet: Fleet, start, seed, bus: np.ndarray | None = None) -> tuple[Fleet, np.ndarray | None]:
    """The expected arrivals of `fleet` from `start` on, as "ghost" sessions (ids ghost-0, ghost-1, ...), and their
    buses (None without `bus`): the rule of arrivals="forecast" (module doc). Seeded: the same `seed`, the same
    ghosts. No arrival after the start: no ghosts."""
    start = to_datetime64(start)
    hour = 3600
    arr_s = (fleet.arrival - start).astype("timedelta64[s]").astype(np.int64)
    arriving = np.flatnonzero(arr_s > 0)  # the sessions plugged in at the start are no arrivals
    empty = fleet.select(np.zeros(0, dtype=np.int64))
    if not arriving.size:
        return empty, None if bus is None else np.zeros(0, dtype=np.int64)
    day_s = (start - start.astype("datetime64[D]")).astype("timedelta64[s]").astype(np.int64)  # start's time of day
    of_hour = lambda s: ((s + day_s) // hour) % 24  # noqa: E731 - the hour of day of seconds after the start
    b = of_hour(arr_s[arriving])
    counts = np.bincount(b, minlength=24)
    # The hours from the one holding the start to the one holding the last arrival: how often each hour occurred.
    first_slot = -((day_s % hour))
    seen = of_hour(np.arange(first_slot, int(arr_s[arriving].max()) + 1, hour))
    rate = counts / np.maximum(np.bincount(seen, minlength=24), 1)
    dep_s = (fleet.departure - start).astype("timedelta64[s]").astype(np.int64)
    slots = np.arange(first_slot, int(dep_s.max()), hour)
    rng = np.random.default_rng(seed)
    n = rng.poisson(rate[of_hour(slots)])
    slot = np.repeat(slots, n)
    t = slot + np.floor(rng.random(slot.size) * hour).astype(np.int64)
    # each ghost a copy of one of its hour's sessions, drawn at random
    order = arriving[np.argsort(b, kind="stable")]
    offset = np.concatenate([[0], np.cumsum(counts)[:-1]])
    gb = of_hour(slot)
    pick = order[offset[gb] + np.floor(rng.random(slot.size) * counts[gb]).astype(np.int64)]
    keep = t > 0
    pick, t = pick[keep], t[keep]
    stay = fleet.departure[pick] - fleet.arrival[pick]
    ghosts = fleet.select(pick)
    arrival = start + t.astype("timedelta64[s]")
    ghosts = replace(ghosts, ev_id=np.array([f"ghost-{i}" for i in range(len(pick))], dtype=object),
                     arrival=arrival, departure=arrival + stay)
    return ghosts, None if bus is None else np.asarray(bus)[pick]


def _joined(a: Fleet, b: Fleet) -> Fleet:
    """The sessions of `a`, then those of `b` (which have the same fields)."""
    values = {}
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if x is None or y is None:
            values[f.name] = None
        elif isinstance(x, pd.DataFrame):
            values[f.name] = pd.concat([x, y], ignore_index=True)
        else:
            values[f.name] = np.concatenate([x, y])
    return _unchecked(values)  # two checked fleets (a ghost's id may repeat a session's: ids are not used here)


def _binding(limits: Limits, problem: Problem, res: DispatchResult) -> bool:
    """Whether a grid limit binds in the plan's first step: the power it bounds within LIMIT_BINDING_KW of where the
    solvers put the bound (a hair inside it, limits.solver_limits)."""
    net0 = limits.net_kw(res.pc[:, :1], res.pd[:, :1])[:, 0]
    aimed = solver_limits(limits, problem)
    return bool(np.any((net0 >= aimed.p_max_kw[:, 0] - LIMIT_BINDING_KW)
                       | (net0 <= aimed.p_min_kw[:, 0] + LIMIT_BINDING_KW)))


def _limit_groups(at: np.ndarray, bus_limits: Mapping, limit_by: Mapping) -> dict:
    """Limits.build's groups: a row per bus, except that the upper limits set by the same branch (limit_by not a
    voltage row) become one row over those buses with the sum of their limits."""
    groups, pools = {}, {}
    for b, (lo, hi) in bus_limits.items():
        by = limit_by.get(b, "")
        if hi is not None and by and not by.startswith("Vm"):
            pools.setdefault(by, []).append((b, hi))
            hi = None
        if lo is not None or hi is not None:
            groups[f"bus {b}"] = (at == b, lo, hi)
    for by, members in pools.items():
        buses = [b for b, _ in members]
        groups[f"{by} (buses {', '.join(map(str, buses))})"] = (np.isin(at, buses), None, sum(h for _, h in members))
    return groups
