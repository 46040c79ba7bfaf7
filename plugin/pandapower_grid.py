"""SimbenchGridSim: mosaik-pandapower-2's grid simulator with simbench profiles read at the simulated time.

mosaik-pandapower-2 applies a simbench grid's load/generation profiles at row ``time // 900``, i.e. as if mosaik
time 0 were 2016-01-01 00:00 and one mosaik time unit one second, whatever the scenario's start and
time_resolution. This subclass takes the row from the simulated datetime instead: ``start_date`` + time *
time_resolution, mapped onto the profiles' year 2016 (same month, day and clock time; a run crossing New Year
continues at the start of the profiles). Steps shorter than the profiles' 15 minutes hold the row.

sim_config entry: ``{"python": "evagg.plugin:SimbenchGridSim"}``;
``world.start("Grid", step_size=900, start_date="2026-06-01 00:00:00").Grid(simbench="1-MV-rural--0-sw")``.
Everything else is mosaik-pandapower-2 as it is.
"""
from __future__ import annotations

import pandas as pd
from mosaik_components.pandapower.simulator import Simulator, apply_profiles

PROFILE_YEAR = 2016
PROFILE_STEP_S = 900


class SimbenchGridSim(Simulator):
    def init(self, sid, time_resolution: float = 1.0, step_size: int | None = 900, start_date: str | None = None):
        self._time_resolution = float(time_resolution)
        ts = pd.Timestamp(start_date if start_date is not None else f"{PROFILE_YEAR}-01-01")
        if ts.tzinfo is not None:
            ts = ts.tz_convert("UTC").tz_localize(None)
        self._start = ts
        return super().init(sid, time_resolution=time_resolution, step_size=step_size)

    def profile_row(self, time: int) -> int:
        """The profile row (15-min steps from 2016-01-01 00:00) of mosaik time `time`."""
        t = self._start + pd.Timedelta(seconds=time * self._time_resolution)
        in_year = t.replace(year=PROFILE_YEAR) - pd.Timestamp(f"{PROFILE_YEAR}-01-01")
        return int(in_year.total_seconds() // PROFILE_STEP_S)

    def step(self, time, inputs, max_advance):
        profiles = self._profiles
        if profiles:
            apply_profiles(self._net, profiles, self.profile_row(time))
        self._profiles = None  # the parent would apply row time // 900 again
        try:
            return super().step(time, inputs, max_advance)
        finally:
            self._profiles = profiles
