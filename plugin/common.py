"""Time and parameter handling shared by the plugin's simulators (the thin mosaik layer)."""
from __future__ import annotations

import logging
import math

import mosaik_api_v3
import numpy as np

from evagg.simulators.synthetic import SYNTHETIC_START
from evagg.simulators.times import to_datetime64, whole_seconds

from .meta import ModelSpec, read_outputs

log = logging.getLogger("evagg.plugin")

# mosaik time 0 of a synthetic fleet or signal when neither the simulator's start_date nor the model's start says
# it (synthetic_fleet's own default date; a scenario's study start is evagg.scenarios.options.DEFAULT_STUDY_START)
DEFAULT_TIME_ZERO = SYNTHETIC_START


class TimeGrid:
    """mosaik time (integer steps of `time_resolution` seconds) <-> the models' step index k and datetime."""

    def __init__(self, sim: str, time_resolution, step_size, start_date=None):
        try:
            self.time_resolution = float(time_resolution)
        except (TypeError, ValueError):
            raise ValueError(f"{sim}: time_resolution must be a positive number of seconds, "
                             f"got {time_resolution!r}") from None
        if not math.isfinite(self.time_resolution) or self.time_resolution <= 0:
            raise ValueError(f"{sim}: time_resolution must be a positive number of seconds, got {time_resolution!r}")
        if isinstance(step_size, bool) or not isinstance(step_size, (int, np.integer)) or step_size <= 0:
            raise ValueError(f"{sim}: step_size must be a positive whole number of mosaik time units, "
                             f"got {step_size!r}")
        self.step_size = int(step_size)
        self.step_s = whole_seconds(
            self.step_size * self.time_resolution,
            what=f"{sim}: the step (step_size {self.step_size} x time_resolution {self.time_resolution:g} s)",
        )
        self.start_date = None if start_date is None else to_datetime64(start_date)

    def start_for(self, sim: str, start=None, required_for: str | None = None):
        """The time of mosaik time 0: a model's `start`, else the simulator's `start_date`; None if neither
        (an error if `required_for` says what needs it)."""
        if start is not None:
            return to_datetime64(start)
        if self.start_date is not None:
            return self.start_date
        if required_for:
            raise ValueError(f"{sim}: {required_for} needs the time of mosaik time 0: pass start_date=... to "
                             f"world.start or start=... to the model")
        return None

    def step_index(self, time) -> int:
        """The step k at mosaik time `time` (which must fall on a step boundary)."""
        seconds = time * self.time_resolution
        k = round(seconds / self.step_s)
        if abs(seconds - k * self.step_s) > 1e-6 * max(1.0, abs(seconds)):
            raise ValueError(f"mosaik time {time} ({seconds:g} s) is not a boundary of the {self.step_s} s steps")
        return int(k)

    def steps_until(self, until) -> int:
        """How many steps start before mosaik time `until` (a run's `until`)."""
        return int(math.ceil(until * self.time_resolution / self.step_s - 1e-9))


def time_grid(sim: str, time_resolution, step_size, start_date, sim_params: dict, known=()) -> TimeGrid:
    """A simulator's TimeGrid from its init parameters; ValueError for a simulator parameter it does not know
    (`known`: its own beyond step_size and start_date)."""
    if sim_params:
        raise ValueError(f"{sim}: unknown simulator parameter(s) {', '.join(sorted(sim_params))}; "
                         f"known: {', '.join(('step_size', 'start_date', *known))}")
    return TimeGrid(sim, time_resolution, step_size, start_date)


class SteppedSim(mosaik_api_v3.Simulator):
    """A simulator of one creatable model (`MODEL`, described by `SPEC`) stepping on a TimeGrid, whose init takes
    step_size and start_date only and whose outputs are read from `output_source(eid)` (ReferenceSim,
    PeakShaverSim)."""

    NAME = ""
    MODEL = ""
    SPEC: ModelSpec

    def __init__(self, meta):
        super().__init__(meta)
        self.grid: TimeGrid | None = None

    def init(self, sid, time_resolution: float = 1.0, step_size: int = 900, start_date: str | None = None,
             **sim_params):
        self.grid = time_grid(self.NAME, time_resolution, step_size, start_date, sim_params)
        return self.meta

    def check_model(self, model: str) -> None:
        if model != self.MODEL:
            raise ValueError(f"{self.NAME}: cannot create {model!r}; only {self.MODEL!r}")

    def output_source(self, eid: str):
        """What entity `eid`'s outputs are read from now (None: nothing yet); ValueError for no such entity."""
        raise NotImplementedError

    def get_data(self, outputs):
        return {eid: read_outputs(self.NAME, eid, self.SPEC, attrs, self.output_source(eid))
                for eid, attrs in outputs.items()}
