"""A tidy results table (time, entity, attribute, value), written as it goes: the mosaik-free part of the results
collector (evagg.plugin.CollectorSim).

CSV: rows are appended and the file flushed every `flush_every` steps, so a run that crashes keeps every row up to
its last flush. Parquet (a path ending ``.parquet``): a Parquet file is only readable once complete, so rows are
journaled the same way to ``<path>.partial.csv`` and written to the Parquet file (atomically) when the table is
closed; the journal is then removed. After a crash the journal holds what the run had, in the CSV format.

Values are numbers (whole numbers such as counts as written, e.g. ``8``; other numbers and booleans as floats);
None is not written; anything else (text, lists) is not written either, and that is logged once per attribute.
Times are ISO 8601 (naive, as the tables) when the table knows its start time, else the simulation time as given.
"""
from __future__ import annotations

import csv
import logging
import math
import numbers
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["TidyTable", "COLUMNS", "read_table"]

COLUMNS = ("time", "entity", "attribute", "value")


class TidyTable:
    """Rows of (time, entity, attribute, value) appended per step; see the module doc."""

    def __init__(self, path, flush_every: int = 1, start=None, seconds_per_unit: float = 1.0):
        self.path = Path(path)
        self.parquet = self.path.suffix.lower() == ".parquet"
        self.file_path = self.path.with_name(self.path.name + ".partial.csv") if self.parquet else self.path
        if int(flush_every) < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.flush_every = int(flush_every)
        self.start = None if start is None else np.datetime64(start, "s")
        self.seconds_per_unit = float(seconds_per_unit)
        self.file_path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.file_path, "w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file, lineterminator="\n")
        self._writer.writerow(COLUMNS)
        self._file.flush()
        self._buffer: list[tuple] = []
        self._steps = 0
        self._skipped: set[str] = set()
        self.n_rows = 0
        self.closed = False

    def time_label(self, time) -> str:
        if self.start is None:
            return str(time)
        seconds = float(time) * self.seconds_per_unit
        if seconds != int(seconds):
            return str(pd.Timestamp(self.start) + pd.Timedelta(seconds=seconds))
        return str(self.start + np.timedelta64(int(seconds), "s"))

    def add(self, time, entity: str, attribute: str, value) -> bool:
        """Buffer one row; False (and nothing written) for a value that is not a number."""
        if value is None:
            return False
        if isinstance(value, (bool, np.bool_)):
            v = float(value)
        elif isinstance(value, numbers.Integral):  # counts (n_plugged) stay whole numbers: "8", not "8.0"
            v = int(value)
        elif isinstance(value, numbers.Real):
            v = float(value)
        else:
            key = f"{entity}.{attribute}"
            if key not in self._skipped:
                self._skipped.add(key)
                log.warning("results table %s: %s is not a number (%s) and is not written (said once)",
                            self.path, key, type(value).__name__)
            return False
        self._buffer.append((self.time_label(time), entity, attribute, _number(v)))
        return True

    def add_step(self, time, rows) -> None:
        """Rows (entity, attribute, value) of one step, then a flush when due."""
        for entity, attribute, value in rows:
            self.add(time, entity, attribute, value)
        self._steps += 1
        if self._steps % self.flush_every == 0:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self._writer.writerows(self._buffer)
            self.n_rows += len(self._buffer)
            self._buffer.clear()
        self._file.flush()

    def close(self) -> None:
        """Flush, close, and for Parquet write the file from the journal (then remove the journal)."""
        if self.closed:
            return
        self.flush()
        self._file.close()
        self.closed = True
        if self.parquet:
            frame = read_table(self.file_path)
            _write_parquet(frame, self.path)
            os.remove(self.file_path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_table(path) -> pd.DataFrame:
    """A results table (CSV, its journal, or Parquet) as a frame: time as written, value float."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype={"time": str, "entity": str, "attribute": str, "value": float},
                       keep_default_na=False, na_values={"value": ["nan", "NaN"]}, float_precision="round_trip")


def _number(v) -> str:
    if isinstance(v, int) or math.isfinite(v):
        return repr(v)  # shortest round trip: reading back gives the value written
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
