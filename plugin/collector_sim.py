"""CollectorSim: writes every attribute connected to it, each step, into a tidy table (time, entity, attribute,
value) in CSV or Parquet (a path ending .parquet), flushed as it goes (see evagg.simulators.collector).

sim_config entry: ``{"python": "evagg.plugin:CollectorSim"}``. Simulator params: start_date (ISO 8601; times are
then written as datetimes, else as mosaik times); on_step (in-process only: a callable, called with the mosaik
time after each step has been written, e.g. a progress bar). Event-based: it steps whenever its inputs change.

    col = world.start("Results", start_date="2026-06-01 00:00:00").Table(path="results.parquet")
    world.connect(agg, col, "P[MW]", "n_plugged")
"""
from __future__ import annotations

from typing import Any, Callable

import mosaik_api_v3
from mosaik_api_v3.types import CreateResult, InputData, OutputData, OutputRequest, SimId, Time

from evagg.simulators.times import to_datetime64
from evagg.simulators.collector import TidyTable

from .meta import COLLECTOR_MODELS, build_meta, read_params

META = build_meta(COLLECTOR_MODELS, "event-based")


class CollectorSim(mosaik_api_v3.Simulator):
    def __init__(self):
        super().__init__(META)
        self.tables: dict[str, TidyTable] = {}
        self.time_resolution = 1.0
        self.start = None
        self.on_step: Callable[[Time], Any] | None = None

    def init(self, sid: SimId, time_resolution: float = 1.0, start_date: str | None = None,
             on_step: Callable[[Time], Any] | None = None, **sim_params):
        if sim_params:
            raise ValueError(f"CollectorSim: unknown simulator parameter(s) {', '.join(sorted(sim_params))}; "
                             "known: start_date, on_step")
        if on_step is not None and not callable(on_step):
            raise ValueError(f"CollectorSim: on_step must be a callable (in-process only), got {on_step!r}")
        self.time_resolution = float(time_resolution)
        self.start = None if start_date is None else to_datetime64(start_date)
        self.on_step = on_step
        return self.meta

    def create(self, num: int, model: str, **p: Any) -> list[CreateResult]:
        if model != "Table":
            raise ValueError(f"CollectorSim: cannot create {model!r}; only 'Table'")
        p = read_params("CollectorSim", model, COLLECTOR_MODELS["Table"], p)
        if p["path"] is None:
            raise ValueError("CollectorSim: Table needs path= (a .csv or .parquet file)")
        if num != 1:
            raise ValueError("CollectorSim: create one Table per path (num=1)")
        eid = f"Table-{len(self.tables)}"
        self.tables[eid] = TidyTable(p["path"], flush_every=p["flush_every"], start=self.start,
                                     seconds_per_unit=self.time_resolution)
        return [{"eid": eid, "type": "Table", "extra_info": {"path": str(p["path"])}}]

    def step(self, time: Time, inputs: InputData, max_advance: Time) -> None:
        for eid, data in inputs.items():
            rows = sorted((src, attr, value) for attr, sources in data.items() for src, value in sources.items())
            self.tables[eid].add_step(time, rows)
        if self.on_step is not None:
            self.on_step(time)
        return None

    def get_data(self, outputs: OutputRequest) -> OutputData:
        raise ValueError("CollectorSim has no outputs")

    def finalize(self) -> None:
        for table in self.tables.values():
            table.close()
