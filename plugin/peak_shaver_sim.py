"""PeakShaverSim: a fleet's reference from the feeder's measured net load (model `PeakShaver`).

Thin by design: units (MW <-> kW) and time; the model is `evagg.simulators.peak_shaving.PeakShaver`. sim_config
entry: ``{"python": "evagg.plugin:PeakShaverSim"}``.

PeakShaver: ``target`` (MW, or "auto" with ``initial`` MW for the first day), ``share``, ``forecast_steps``,
``forecast`` ("persistence" / "daily"); inputs ``P_feeder[MW]`` (a Transformer's P_hv[MW] or the ExternalGrid's
P[MW]) and ``P_fleet[MW]`` (the aggregators' P[MW], summed); outputs ``P_ref[MW]``, ``P_forecast[MW]``,
``P_base[MW]``, ``target[MW]``. `connect_peak_shaver` (evagg.plugin.wiring) wires it: the reference goes into
the aggregator time-shifted, also next to an iterative operator (the aggregator's P_ref[MW] is no trigger).
Stepped again at the same time, a shaver steps again from where it was before that time: a step's reference is
taken from the last measurement of the step.

    shavers = world.start("PeakShaver", step_size=900)
    shaver = shavers.PeakShaver(target=0.15, forecast_steps=8)
    connect_peak_shaver(world, shaver, transformer, agg)
"""
from __future__ import annotations

import copy
from typing import Any

from mosaik_api_v3.types import CreateResult, InputData, Time

from evagg.simulators.peak_shaving import PeakShaver

from .common import SteppedSim
from .meta import KW_PER_MW, PEAK_SHAVER_MODELS, build_meta, read_params

META = build_meta(PEAK_SHAVER_MODELS, "time-based")
_SHAVER = PEAK_SHAVER_MODELS["PeakShaver"]
_INPUTS = _SHAVER.input_attrs


class PeakShaverSim(SteppedSim):
    """Peak shavers for mosaik. Simulator params: step_size (default 900), start_date (not used; accepted like the
    other evagg simulators)."""

    NAME, MODEL, SPEC = "PeakShaverSim", "PeakShaver", _SHAVER

    def __init__(self):
        super().__init__(META)
        self.shavers: dict[str, PeakShaver] = {}
        self._time: Time | None = None  # the mosaik time of the last step
        self._before: dict[str, PeakShaver] = {}  # each shaver as it was before that time

    def create(self, num: int, model: str, **params: Any) -> list[CreateResult]:
        self.check_model(model)
        p = read_params("PeakShaverSim", model, _SHAVER, params)
        return [self._create(p) for _ in range(num)]

    def _create(self, p: dict) -> CreateResult:
        eid = f"PeakShaver-{len(self.shavers)}"
        if p["target"] is None:
            raise ValueError(f"PeakShaverSim {eid}: target is required (MW, or 'auto')")
        target = p["target"]
        if not isinstance(target, str):
            try:
                target = float(target) * KW_PER_MW
            except (TypeError, ValueError):
                raise ValueError(f"PeakShaverSim {eid}: target must be a number (MW) or 'auto', got "
                                 f"{target!r}") from None
        initial = p["initial"]
        if initial is not None:
            try:
                initial = float(initial) * KW_PER_MW
            except (TypeError, ValueError):
                raise ValueError(f"PeakShaverSim {eid}: initial must be a number (MW), got {initial!r}") from None
        try:
            shaver = PeakShaver(target, share=p["share"], forecast_steps=p["forecast_steps"], forecast=p["forecast"],
                                step_s=self.grid.step_s, initial_kw=initial)
        except ValueError as exc:
            raise ValueError(f"PeakShaverSim {eid}: {exc}") from None
        self.shavers[eid] = shaver
        return {"eid": eid, "type": "PeakShaver", "rel": [],
                "extra_info": {"target": p["target"], "share": shaver.share, "forecast_steps": shaver.forecast_steps,
                               "forecast": shaver.forecast}}

    def step(self, time: Time, inputs: InputData, max_advance: Time) -> Time:
        self.grid.step_index(time)  # an error for a time off the steps
        for eid, data in inputs.items():
            if eid not in self.shavers:
                raise ValueError(f"PeakShaverSim: inputs for an unknown entity {eid!r}")
            unknown = set(data) - set(_INPUTS)
            if unknown:
                raise ValueError(f"PeakShaverSim {eid}: unexpected input(s) {sorted(unknown)}")
        again = time == self._time
        self._time = time
        for eid in self.shavers:  # a shaver steps once per time: again, from where it was before this time
            if again:
                self.shavers[eid] = copy.deepcopy(self._before[eid])
            else:
                self._before[eid] = copy.deepcopy(self.shavers[eid])
        for eid, shaver in self.shavers.items():
            data = inputs.get(eid, {})
            v = {name: attr.from_mosaik(data.get(name, {}).values()) for name, attr in _INPUTS.items()}
            shaver.step(v["P_feeder[MW]"], v["P_fleet[MW]"])
        return time + self.grid.step_size

    def output_source(self, eid: str):
        if eid not in self.shavers:
            raise ValueError(f"PeakShaverSim: no entity {eid!r}")
        return self.shavers[eid].last
