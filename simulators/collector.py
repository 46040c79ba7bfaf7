"""A tidy results table (time, entity, attribute, value), written as it goes: the mosaik-free part of the results
collector (evagg.plugin.CollectorSim).

CSV: rows are appended and the file flushed every `flush_every` steps, so a run that crashes keeps every row up to
its last flush. Parquet (a path ending ``.parquet``): rows are written as the run goes, in row groups of
`row_group_rows` rows (pyarrow's ParquetWriter, the columns as in the CSV: time as text, entity and attribute
dictionary-encoded, value float64), to ``<path>.partial``, which becomes ``<path>`` when the table is closed (also
after Ctrl-C or a failing simulator: mosaik's shutdown closes it). Memory stays bounded by one row group, however
long the run. A process killed outright leaves the ``.partial`` file without its footer (unreadable): the CSV
format is the one that survives that.

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
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["TidyTable", "COLUMNS", "read_table", "iter_table"]

COLUMNS = ("time", "entity", "attribute", "value")
ROW_GROUP_ROWS = 200_000  # Parquet: rows per row group (about 10 MB in memory while it fills)


class TidyTable:
    """Rows of (time, entity, attribute, value) appended per step; see the module doc."""

    def __init__(self, path, flush_every: int = 1, start=None, seconds_per_unit: float = 1.0,
                 row_group_rows: int = ROW_GROUP_ROWS):
        self.path = Path(path)
        self.parquet = self.path.suffix.lower() == ".parquet"
        self.file_path = self.path.with_name(self.path.name + ".partial") if self.parquet else self.path
        if int(flush_every) < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        if int(row_group_rows) < 1:
            raise ValueError(f"row_group_rows must be >= 1, got {row_group_rows}")
        self.flush_every = int(flush_every)
        self.row_group_rows = int(row_group_rows)
        self.start = None if start is None else np.datetime64(start, "s")
        self.seconds_per_unit = float(seconds_per_unit)
        self.file_path.parent.mkdir(parents=True, exist_ok=True)
        if self.parquet:
            import pyarrow.parquet as pq

            self._file = None
            self._writer = pq.ParquetWriter(str(self.file_path), _arrow_schema(), compression="zstd",
                                            use_dictionary=["entity", "attribute"])
        else:
            self._file = open(self.file_path, "w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._file, lineterminator="\n")
            self._writer.writerow(COLUMNS)
            self._file.flush()
        self._buffer: list[tuple] = []
        self._label = (None, None)  # (time, its label): every row of a step has the same time
        self._steps = 0
        self._skipped: set[str] = set()
        self.n_rows = 0
        self.closed = False

    def time_label(self, time) -> str:
        if self._label[0] == time:
            return self._label[1]
        label = self._time_label(time)
        self._label = (time, label)
        return label

    def _time_label(self, time) -> str:
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
        self._buffer.append((self.time_label(time), entity, attribute, v if self.parquet else _number(v)))
        return True

    def add_step(self, time, rows) -> None:
        """Rows (entity, attribute, value) of one step, then a flush when due."""
        for entity, attribute, value in rows:
            self.add(time, entity, attribute, value)
        self._steps += 1
        if self.parquet:
            if len(self._buffer) >= self.row_group_rows:
                self.flush()
        elif self._steps % self.flush_every == 0:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows (CSV: appended and flushed; Parquet: one row group)."""
        if self._buffer:
            if self.parquet:
                self._writer.write_table(_arrow_table(self._buffer))
            else:
                self._writer.writerows(self._buffer)
            self.n_rows += len(self._buffer)
            self._buffer.clear()
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        """Flush and close; a Parquet file gets its footer and its final name."""
        if self.closed:
            return
        self.flush()
        self.closed = True
        if self.parquet:
            self._writer.close()
            os.replace(self.file_path, self.path)
        else:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_CSV_READ = dict(dtype={"time": str, "entity": str, "attribute": str, "value": float}, keep_default_na=False,
                 na_values={"value": ["nan", "NaN"]}, float_precision="round_trip")


def read_table(path) -> pd.DataFrame:
    """A results table (CSV or Parquet) as one frame: time as written (text), value float. For a table that may be
    long (a year), `iter_table` reads it in bounded memory."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        return _plain(pd.read_parquet(path))
    return pd.read_csv(path, **_CSV_READ)


def iter_table(path, rows: int = 500_000):
    """The table `path` (CSV or Parquet) as frames of about `rows` rows each, in file order, each holding whole
    steps (the rows of one time are never split between two frames: the table is written step by step)."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        chunks = (_plain(b.to_pandas()) for b in pq.ParquetFile(str(path)).iter_batches(batch_size=rows))
    else:
        chunks = pd.read_csv(path, chunksize=rows, **_CSV_READ)
    carry = None
    for chunk in chunks:
        if carry is not None:
            chunk = pd.concat([carry, chunk], ignore_index=True)
        if chunk.empty:
            continue
        last = chunk["time"].iat[-1]
        tail = (chunk["time"] == last).to_numpy()
        first_tail = int(np.argmax(tail))  # the last time's rows are the frame's tail (they may go on)
        carry = chunk.iloc[first_tail:].reset_index(drop=True)
        if first_tail:
            yield chunk.iloc[:first_tail].reset_index(drop=True)
    if carry is not None and len(carry):
        yield carry


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Parquet's dictionary columns as plain text columns (as the CSV reader gives)."""
    for col in ("time", "entity", "attribute"):
        if col in frame and not pd.api.types.is_object_dtype(frame[col]):
            frame[col] = frame[col].astype(str).astype(object)
    frame["value"] = frame["value"].astype(float)
    return frame.reset_index(drop=True)


def _number(v) -> str:
    if isinstance(v, int) or math.isfinite(v):
        return repr(v)  # shortest round trip: reading back gives the value written
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def _arrow_schema():
    import pyarrow as pa

    return pa.schema([("time", pa.string()), ("entity", pa.string()), ("attribute", pa.string()),
                      ("value", pa.float64())])


def _arrow_table(rows: list[tuple]):
    import pyarrow as pa

    time, entity, attribute, value = zip(*rows)
    return pa.Table.from_arrays([pa.array(time, pa.string()), pa.array(entity, pa.string()),
                                 pa.array(attribute, pa.string()), pa.array(value, pa.float64())],
                                schema=_arrow_schema())
