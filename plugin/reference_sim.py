"""ReferenceSim: a reference signal for aggregators (model `Signal`, output P_ref[MW], optionally P_forecast[MW]).

From a signal CSV (the spec's table: time, p_ref_kw; resampled onto the simulator's steps as the signal's mean over
each step) or synthetic (`synthetic_reference`: a regulation-like signal around the baseline schedule of a fleet
given as a sessions CSV or as n_evs/seed/days/v2g_share, the same as the aggregator's; without a fleet, around a
diurnal shape of scale_kw). P_forecast[MW] holds the signal's next forecast_steps values, with seeded errors
growing with the lead time if forecast_error (% of the signal's spread, see evagg.simulators.reference) is given.
With `until` (the mosaik time the run ends), a signal that does not cover the run is an
error at creation; without it, at the first step it does not cover. Never a silent zero.

sim_config entry: ``{"python": "evagg.plugin:ReferenceSim"}`` (or ``evagg-mosaik --sim reference``).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
from mosaik_api_v3.types import CreateResult, InputData, Time

from evagg.simulators.aggregator import SignalSource
from evagg.simulators.reference import Reference, forecast_errors, spread_kw
from evagg.simulators.synthetic import synthetic_fleet, synthetic_reference
from evagg.simulators.tables import read_reference, read_sessions
from evagg.simulators.times import to_datetime64

from .common import DEFAULT_TIME_ZERO, SteppedSim
from .meta import REFERENCE_MODELS, build_meta, read_params

log = logging.getLogger("evagg.plugin")

META = build_meta(REFERENCE_MODELS, "time-based")
_SPEC = REFERENCE_MODELS["Signal"]


class ReferenceSim(SteppedSim):
    """Simulator params: step_size (default 900), start_date (ISO 8601, mosaik time 0)."""

    NAME, MODEL, SPEC = "ReferenceSim", "Signal", _SPEC

    def __init__(self):
        super().__init__(META)
        # eid -> (signal, forecast steps, forecast errors: (sigma_kw at 1 h, seed) or None)
        self.signals: dict[str, tuple[SignalSource, int, tuple | None]] = {}
        self._k: int | None = None

    def create(self, num: int, model: str, **p: Any) -> list[CreateResult]:
        self.check_model(model)
        checked = read_params("ReferenceSim", model, _SPEC, p)
        out = []
        for _ in range(num):
            eid = f"Signal-{len(self.signals)}"
            self.signals[eid] = self._build(eid, checked, p)
            src = self.signals[eid][0]
            out.append({"eid": eid, "type": "Signal",
                        "extra_info": {"start": str(src.reference.start), "end": str(src.reference.end),
                                       "n_steps": src.n_steps, "step_s": src.step_s}})
        return out

    def _build(self, eid: str, p: dict, given: dict) -> tuple[SignalSource, int, tuple | None]:
        g = self.grid
        fsteps = int(p["forecast_steps"])
        until = p["until"]
        if p["path"] is not None:
            extra = [k for k in ("kind", "seed", "sessions", "n_evs", "days", "v2g_share", "scale_kw", "n_steps")
                     if given.get(k) is not None]
            if extra:
                raise ValueError(f"ReferenceSim {eid}: {', '.join(extra)} are for a synthetic signal, not with path")
            start = g.start_for("ReferenceSim", p["start"], required_for="a signal CSV")
            source = SignalSource(read_reference(p["path"]), start, g.step_s, source=f"signal {p['path']}")
        else:
            kind = p["kind"]
            start = g.start_for("ReferenceSim", p["start"]) or DEFAULT_TIME_ZERO
            fleet = None
            if p["sessions"] is not None and p["n_evs"] is not None:
                raise ValueError(f"ReferenceSim {eid}: give sessions or n_evs for the baseline, not both")
            if p["sessions"] is not None:
                fleet = read_sessions(p["sessions"])
            elif p["n_evs"] is not None:
                fleet = synthetic_fleet(int(p["n_evs"]), seed=p["seed"], start=str(start), days=int(p["days"]),
                                        v2g_share=float(p["v2g_share"]))
            n_steps = p["n_steps"]
            if n_steps is None:
                n_steps = g.steps_until(until) if until is not None else max(86400 // g.step_s, 1)
            if fleet is not None and len(fleet) == 0:
                # a signal for nobody: 0 kW, said, rather than a signal its (empty) aggregator cannot follow
                log.warning("ReferenceSim %s: its fleet has no sessions; the signal is 0 kW", eid)
                ref = Reference(to_datetime64(start), np.timedelta64(g.step_s, "s"), np.zeros(int(n_steps) + fsteps))
            else:
                ref = synthetic_reference(fleet, start=str(start), step_s=g.step_s, n_steps=int(n_steps) + fsteps,
                                          seed=p["seed"], kind=kind, scale_kw=p["scale_kw"])
            source = SignalSource(ref, start, g.step_s, source=f"synthetic {kind} signal")
        if until is not None:
            source.check_covers(g.steps_until(until))
        noise = None
        if p["forecast_error"]:
            # the level is a share of the signal's spread over the run (else over all it covers)
            n = g.steps_until(until) if until is not None else source.n_steps
            sigma = float(p["forecast_error"]) / 100.0 * spread_kw(source.values(0, n, clip=True))
            noise = (sigma, int(p["forecast_seed"]))
        return source, fsteps, noise

    def step(self, time: Time, inputs: InputData, max_advance: Time) -> Time:
        k = self.grid.step_index(time)
        for src, _, _ in self.signals.values():
            src.values(k, 1)  # the error, now, for a step the signal does not cover
        self._k = k
        return time + self.grid.step_size

    def output_source(self, eid: str):
        if eid not in self.signals:
            raise ValueError(f"ReferenceSim: no entity {eid!r}")
        return None if self._k is None else _SignalOutputs(*self.signals[eid], self._k)


class _SignalOutputs:
    """What a Signal's outputs are read from in step k: its value, and its next values (read when asked for), with
    the forecast's errors if it has some."""

    def __init__(self, source: SignalSource, forecast_steps: int, noise, k: int):
        self._source, self._fsteps, self._noise, self._k = source, forecast_steps, noise, k

    @property
    def p_ref_kw(self) -> float:
        return self._source.value(self._k)

    @property
    def forecast_kw(self):
        ahead = self._source.values(self._k + 1, self._fsteps, clip=True)
        if self._noise is not None:
            sigma, seed = self._noise
            ahead = ahead + forecast_errors(self._k, ahead.size, self._source.step_s, sigma, seed)
        return ahead
