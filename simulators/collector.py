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
import io
import logging
import math
import numbers
import os
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["TidyTable", "COLUMNS", "read_table", "iter_table", "TableError"]

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


class TableError(ValueError):
    """A results table that cannot be read: str(error) is one line naming the file, the line (CSV) and the
    problem."""


def read_table(path, notes: list | None = None) -> pd.DataFrame:
    """A results table (CSV or Parquet) as one frame: time as written (text), value float. For a table that may be
    long (a year), `iter_table` reads it in bounded memory. A CSV cut short is read as `iter_table` does."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        import pyarrow  # optional, heavy: Parquet tables only

        try:
            return _plain(pd.read_parquet(path))
        except (pyarrow.ArrowException, OSError) as exc:
            raise TableError(f"{path}: not a readable Parquet table ({' '.join(str(exc).split())})") from None
    frames = list(iter_table(path, notes=notes))
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=float if c == "value" else object) for c in COLUMNS})
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def iter_table(path, rows: int = 500_000, notes: list | None = None, complete: bool = True):
    """The table `path` (CSV or Parquet) as frames of about `rows` rows each, in file order, each holding whole
    steps (the rows of one time are never split between two frames: the table is written step by step).

    A CSV table is read as far as it is whole, as a run killed outright leaves it: a last line without its end
    (cut mid-write) is dropped with the rest of its step (which may lack rows); so is, for a run that did not
    finish (`complete` False), a last step holding only the first rows of the step before (rows are written in
    the same order each step). What is dropped is said in `notes` (one line each). A line that is not a row is
    a TableError naming it."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        import pyarrow  # optional, heavy: Parquet tables only
        import pyarrow.parquet as pq

        try:
            batches = pq.ParquetFile(str(path)).iter_batches(batch_size=rows)
        except (pyarrow.ArrowException, OSError) as exc:
            raise TableError(f"{path}: not a readable Parquet table ({' '.join(str(exc).split())})") from None
        yield from _whole_steps((_plain(b.to_pandas()) for b in batches), notes=None, cut=None, complete=True)
        return
    size, whole = _whole_size(path)
    cut = None
    if whole < size:
        with open(path, "rb") as f:
            f.seek(whole)
            cut = f.read(min(size - whole, 40)).decode("utf-8", "replace")  # enough to recognise it
    if whole == 0:
        raise TableError(f"{path}: " + ("empty" if size == 0 else f"holds no whole line (only {cut!r})")
                         + f": not a results table ({', '.join(COLUMNS)})")
    with open(path, "rb") as raw:
        header = raw.readline().decode("utf-8", "replace").strip()
        if header != ",".join(COLUMNS):
            raise TableError(f"{path}, line 1: the header is {header[:80]!r}, not {','.join(COLUMNS)!r}: not a "
                             "results table")
        raw.seek(0)
        head = io.BufferedReader(_Head(raw, whole), buffer_size=1 << 20)
        try:
            chunks = pd.read_csv(head, chunksize=rows, encoding="utf-8", **_CSV_READ)
            yield from _whole_steps(chunks, notes=notes, cut=cut, complete=complete, path=path)
        except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:  # a line that is not a row
            raise TableError(_first_bad_line(path, whole) or f"{path}: cannot be read ({exc})") from None


def _whole_steps(chunks, notes, cut, complete, path=None):
    """Frames of whole steps from frames of rows (see iter_table)."""
    carry = None
    before = None  # the last step of the frames yielded so far: (entity, attribute) in order
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
            done = chunk.iloc[:first_tail]
            step = done[done["time"] == done["time"].iat[-1]]
            before = list(zip(step["entity"], step["attribute"]))
            yield done.reset_index(drop=True)
    if carry is None or not len(carry):
        if cut is not None and notes is not None:
            notes.append(f"{path}: the last line is cut ({cut!r}): dropped")
        return
    time = carry["time"].iat[0]
    if cut is not None:
        if notes is not None:
            notes.append(f"{path}: the last line is cut ({cut!r}, a run stopped while writing it): dropped it and "
                         f"the {len(carry)} whole row(s) of its step {time}, which may lack rows")
        return
    keys = list(zip(carry["entity"], carry["attribute"]))
    if not complete and before is not None and len(keys) < len(before) and keys == before[:len(keys)]:
        if notes is not None:
            notes.append(f"{path}: the last step {time} has only the first {len(keys)} of the {len(before)} rows "
                         "of the step before (a run stopped while writing it): dropped it")
        return
    yield carry


class _Head(io.RawIOBase):
    """The first `limit` bytes of a binary file (the whole lines of a table cut short)."""

    def __init__(self, raw, limit: int):
        self.raw, self.left = raw, int(limit)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        if n <= 0:
            return 0
        got = self.raw.readinto(memoryview(buffer)[:n])
        self.left -= got
        return got


def _whole_size(path: Path) -> tuple[int, int]:
    """(the file's size, the size of its whole lines: up to and including its last newline)."""
    size = path.stat().st_size
    block = 1 << 16
    with open(path, "rb") as f:
        end = size
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            data = f.read(end - start)
            k = data.rfind(b"\n")
            if k >= 0:
                return size, start + k + 1
            end = start
    return size, 0


def _first_bad_line(path: Path, whole: int) -> str | None:
    """The first line of the table (its whole part) that is not a row (time, entity, attribute, number), said
    in one line; None if every line is one. Only on the error path: it reads the file again."""
    with open(path, "rb") as raw:
        for lineno, line in enumerate(io.BufferedReader(_Head(raw, whole)), start=1):
            try:
                text = line.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                return f"{path}, line {lineno}: not UTF-8 text: the table is damaged (not a results table?)"
            if lineno == 1:
                continue
            row = next(csv.reader([text]), [])
            problem = None
            if len(row) != len(COLUMNS):
                problem = f"has {len(row)} field(s), not {len(COLUMNS)} ({', '.join(COLUMNS)})"
            else:
                try:
                    float(row[3])
                except ValueError:
                    problem = f"column value: {row[3]!r} is not a number"
            if problem is not None:
                shown = text if len(text) <= 80 else text[:77] + "..."
                return f"{path}, line {lineno}: {shown!r} {problem}: the table is damaged"
    return None


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
