"""The receding-horizon EV aggregator, free of mosaik: what the mosaik plugin (evagg.plugin) steps.

At each step k of length dt (step k covers [start + k*dt, start + (k+1)*dt)) the aggregator

1. takes the reference for step k (kW, + = the fleet draws power) and a forecast for the steps after it (given,
   or the current reference held: persistence); with no reference ever received it charges `uncontrolled`;
2. re-dispatches its fleet with the engine (`dispatch`) over the horizon [t_k, t_k + H*dt), starting from the
   energies it carries (`Problem.build(..., energy_initial_kwh=...)`), over the sessions plugged in at some step
   of the horizon (EVs not yet arrived still hold their session's initial energy; EVs that left are dropped);
3. applies the plan's first step only: the energy after step k is exactly `Problem.energy` of that first step;
4. honours grid limits on the fleet (P_min <= aggregate <= P_max) and on its EVs at each bus, as hard constraints
   of the dispatch, held over the horizon (a limit stays until the operator changes it); where they leave an EV's
   departure need out of reach, the need gives way (grid first, see simulators/limits.py) and it is reported;
5. sums the EVs' net power per grid bus.

The spec's conventions hold throughout (docs/model.md): kW, kWh, hours; an EV may draw or inject power
in step k iff arrival <= t_k and t_k + dt <= departure.

Also here: `SignalSource`, the reference signal (a `Reference`, e.g. read from the signal table) resampled onto
the aggregator's time grid, which the reference-signal simulator serves and which can serve as a given forecast.
"""
from __future__ import annotations

import logging
import time as _time
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np

from .dispatch import dispatch, method_info
from .fleet import Fleet
from .limits import Limits, solver_limits
from .problem import FEASIBILITY_TOL, Problem
from .reference import Reference
from .times import to_datetime64, whole_seconds

log = logging.getLogger(__name__)

__all__ = ["Aggregator", "StepResult", "SignalSource", "DEFAULT_HORIZON"]

# Steps planned ahead by default (4 h at 15 min), for the plugin and the scenarios alike. A longer horizon pays off
# with a good forecast (measured with the exact future: RMSE 1.9x the batch dispatch's at 8 steps, 1.2x at 16, 1.0x
# over the whole remaining period); with persistence 8 and 16 track alike.
DEFAULT_HORIZON = 16
# Departure need missed by more than this (kWh) counts as unmet (see the departures in `step`).
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
    n_plugged: int  # EVs plugged in in step k
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
    message: str = ""

    @property
    def tracking_error_kw(self) -> float | None:
        """Aggregate minus reference (kW); None when uncontrolled."""
        return None if self.p_ref_kw is None else self.p_kw - self.p_ref_kw


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
    """

    def __init__(
        self,
        fleet: Fleet,
        start,
        step_s,
        horizon: int = DEFAULT_HORIZON,
        method: str = "dcls",
        time_limit_s: float | None = None,
        bus=None,
        grid_buses: Sequence[int] | None = None,
        forecast: SignalSource | Reference | None = None,
        name: str = "aggregator",
        end=None,
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
        n_plug = np.maximum(self.stop_g - self.first_g, 0)
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

        self.energy_kwh = fleet.energy_initial_kwh.astype(float).copy()  # carried state, one per session
        self.final_energy_kwh = np.full(n, np.nan)  # energy at departure, once departed
        self.shortfall_kwh = 0.0  # cumulative, vs the target capped at capacity (the engine's `shortfall`)
        self.need_unmet_kwh = 0.0  # cumulative, vs the spec's need: 0 unless grid limits left needs out of reach
        self.n_departed = 0
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

        # The sessions with a plugged step in [k, k + h): the plan's EVs.
        idx = np.flatnonzero(self.servable & (self.stop_g > k) & (self.first_g < k + h))
        status, message, limited, lowered = "idle", "", False, 0.0
        if idx.size:
            sub = self._core.select(idx)
            problem = Problem.build(sub, now, self.step_td, h, energy_initial_kwh=self.energy_kwh[idx])
            limits = None
            if p_min_kw is not None or p_max_kw is not None or bus_limits:
                at = self.session_bus[idx] if self._bus_pos is not None else None
                limits = Limits.build(len(idx), h, p_min_kw=p_min_kw, p_max_kw=p_max_kw,
                                      groups=_limit_groups(at, bus_limits, limit_by or {}))
            method = "uncontrolled" if mode == "uncontrolled" else self.method
            res = dispatch(sub, Reference(now, self.step_td, plan_ref), method=method,
                           time_limit_s=self.time_limit_s, problem=problem, limits=limits)
            status, message, lowered = res.status, res.message, res.needs_lowered_kwh
            pc0, pd0 = res.pc[:, 0], res.pd[:, 0]
            if limits is not None:
                net0 = limits.net_kw(res.pc[:, :1], res.pd[:, :1])[:, 0]
                aimed = solver_limits(limits, problem)  # where the solvers put the bounds: a hair inside them
                limited = bool(np.any((net0 >= aimed.p_max_kw[:, 0] - LIMIT_BINDING_KW)
                                      | (net0 <= aimed.p_min_kw[:, 0] + LIMIT_BINDING_KW)))
                if lowered > 0:
                    self._say_once("lowered", logging.WARNING,
                                   "%s: at %s the grid limits leave %.6g kWh of departure needs out of reach; the "
                                   "limits come first (said once)", self.name, now, lowered)
            # Exactly the engine's energy after the first step (Problem.energy's first column).
            e_new = problem.energy(pc0[:, None], pd0[:, None])[:, 0]
            self.energy_kwh[idx] = e_new
            p_ev = pc0 - pd0
            on = (problem.first == 0) & (problem.stop > 0)
            n_plugged = int(on.sum())
            energy = float(e_new[on].sum())
        else:
            pc0 = pd0 = p_ev = np.zeros(0)
            n_plugged, energy = 0, 0.0
        if self._bus_pos is not None:
            bus_kw = np.bincount(self._bus_pos[idx], weights=p_ev, minlength=len(self.buses))
            p_kw = float(bus_kw.sum())
        else:
            bus_kw = np.zeros(0)
            p_kw = float(p_ev.sum())

        self._depart(idx[self.stop_g[idx] == k + 1], k)

        self.k_next = k + 1
        result = StepResult(
            k=k, time=now, p_kw=p_kw, p_ref_kw=None if mode == "uncontrolled" else self._last_ref,
            bus_kw=bus_kw, n_plugged=n_plugged, energy_kwh=energy, shortfall_kwh=self.shortfall_kwh,
            need_unmet_kwh=self.need_unmet_kwh,
            solve_time_s=_time.perf_counter() - t0, mode=mode, status=status, sessions=idx, pc_kw=pc0, pd_kw=pd0,
            limited=limited, needs_lowered_kwh=lowered, message=message,
        )
        self.last = result
        return result

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
                self.n_departed, self.k_next, self.last, self._last_ref)

    def _restore(self) -> None:
        (energy, final, self.shortfall_kwh, self.need_unmet_kwh, self.n_departed, self.k_next, self.last,
         self._last_ref) = self._before
        self.energy_kwh, self.final_energy_kwh = energy.copy(), final.copy()

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
