"""Reading, validating and writing the CSV tables of the data conventions (docs/model.md).

Tables (kW, kWh, fractions; times ISO 8601):

- sessions: one row per plug-in session; required columns ``ev_id, arrival, departure, energy_initial_kwh,
  energy_target_kwh, capacity_kwh, p_charge_max_kw, p_discharge_max_kw, eta_charge, eta_discharge``; optional
  ``energy_min_kwh`` (default 0; an empty cell means the default), ``bus`` (a non-negative integer grid bus
  index) and ``departure_declared`` (the departure the driver declared, which an aggregator plans with; an empty
  cell means the actual departure); any further columns are kept as they came.
- reference signal: ``time, p_ref_kw`` on a regular grid of whole seconds, at least one row.
- dispatch result (long form): ``time, ev_id, p_charge_kw, p_discharge_kw, energy_kwh``.

Times: ISO 8601. Times with a UTC offset are converted to UTC and made naive, and the conversion is said once per
file (a warning through the logger: ``s.csv: times with a UTC offset (+01:00, +02:00) converted to UTC``); naive
times are taken as they are (i.e. as UTC), the same way for sessions and signal. A file that mixes times with and
without an offset is an `InputError` naming the first line of each kind. Arrivals with a fraction of a second are rounded up and
departures rounded down to the whole second (never lengthening a session); signal times must be whole seconds.

Every problem in an input file raises `InputError`, whose message names the file, the physical line of the CSV
file (the header is line 1, so the first data row is line 2), the column, the offending value and what is wrong:
``sessions.csv line 7, column capacity_kwh: value -3 must be > 0``. The first problem (by line, then column
order) is the message; all problems found are in `InputError.problems`. A file whose header seems to be split by
';', tab or '|' is told so: ``s.csv line 1: looks ';'-separated; the tables are comma-separated CSV``.

Plausibility limits (`LIMITS`, defined in fleet.py; a value outside them is an `InputError` like any other,
e.g. ``sessions.csv line 7, column capacity_kwh: value 1e300 must be <= 1000 (kWh): ...``):

    column               allowed                          unit
    capacity_kwh         (0, 1000]                        kWh
    energy_initial_kwh   [0, capacity_kwh]                kWh
    energy_min_kwh       [0, capacity_kwh]                kWh
    energy_target_kwh    [0, 1000]                        kWh   (above the capacity: as full as it gets)
    p_charge_max_kw      [0, 1000]                        kW
    p_discharge_max_kw   [0, 1000]                        kW
    eta_charge           (0, 1]                           -
    eta_discharge        (0, 1]                           -
    departure            (arrival, arrival + 366 days]
    p_ref_kw             [-1e7, 1e7]                      kW    (every signal)
    p_ref_kw             |p_ref| <= 10 x (sum of charge powers + sum of discharge powers) + 1 kW
                                                          kW    (a signal with its fleet: `read_reference(path,
                                                                fleet=...)`, `check_signal_against_fleet`)

Warnings, not errors (one line each through the logger ``evagg.simulators.tables``): a sessions table of no
sessions; sessions with no whole step of the signal's grid (e.g. shorter than one step: they cannot be served);
a signal covering less than all of the sessions' plugged time (`signal_coverage`).

JSON: `json_safe` / `finite_or_none` turn NaN and infinite floats into None (JSON null), so that every number
written as JSON is finite.

Writers are atomic: the table goes to a temporary file in the target's directory, which then replaces the target
(`os.replace`), so a reader never sees a half-written file and a failure leaves no partial file. Floats are written
with Python's shortest round-trip representation, so reading a file back gives exactly the values written.
"""
from __future__ import annotations

import csv
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .fleet import (
    LIMITS,
    MAX_STAY,
    NUMERIC_SESSION_COLUMNS,
    OPTIONAL_SESSION_COLUMNS,
    SESSION_COLUMNS,
    Fleet,
    signal_bound_kw,
)
from .reference import Reference

__all__ = [
    "InputError",
    "InputProblem",
    "read_sessions",
    "validate_sessions",
    "read_reference",
    "validate_reference",
    "read_dispatch",
    "write_sessions",
    "write_reference",
    "write_dispatch",
    "check_signal_against_fleet",
    "signal_coverage",
    "unservable_sessions",
    "finite_or_none",
    "json_safe",
    "LIMITS",
    "SIGNAL_COLUMNS",
    "DISPATCH_COLUMNS",
    "TIME_FORMAT",
]

SIGNAL_COLUMNS = ("time", "p_ref_kw")
DISPATCH_COLUMNS = ("time", "ev_id", "p_charge_kw", "p_discharge_kw", "energy_kwh")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"

log = logging.getLogger(__name__)

_MAX_LISTED = 20  # problems kept in InputError.problems (the count of all is in InputError.n_problems)


@dataclass(frozen=True)
class InputProblem:
    """One problem found in an input table. `line` is the physical line in the file (header = line 1)."""

    line: int | None
    column: str | None
    value: str | None
    what: str

    def describe(self, source: str) -> str:
        where = source
        if self.line is not None:
            where += f" line {self.line}"
        if self.column is not None:
            where += f", column {self.column}"
        if self.value is None:
            return f"{where}: {self.what}"
        return f"{where}: value {_show(self.value)} {self.what}"


class InputError(ValueError):
    """A problem in an input table. str(error) is one line naming file, line, column, value and the problem."""

    def __init__(self, source: str, problems: list[InputProblem], n_problems: int | None = None):
        self.source = str(source)
        self.problems = list(problems)
        self.n_problems = len(self.problems) if n_problems is None else int(n_problems)
        first = self.problems[0]
        self.line, self.column, self.value, self.what = first.line, first.column, first.value, first.what
        message = first.describe(self.source)
        if self.n_problems > 1:
            more = self.n_problems - 1
            message += f" (and {more} more problem{'s' if more > 1 else ''} in this file)"
        super().__init__(message)

    def __reduce__(self):  # picklable (e.g. across processes) despite the custom constructor
        return (InputError, (self.source, self.problems, self.n_problems))

    def describe_all(self) -> str:
        """Every listed problem, one per line."""
        lines = [p.describe(self.source) for p in self.problems]
        if self.n_problems > len(self.problems):
            lines.append(f"... and {self.n_problems - len(self.problems)} more")
        return "\n".join(lines)


def _show(value: str) -> str:
    """A cell's text as shown in messages: quoted when empty or holding spaces or commas."""
    if value == "" or any(ch.isspace() for ch in value) or "," in value:
        return repr(value)
    return value


class _Problems:
    """Collects problems found column-wise (vectorised) and raises the first ones by (line, column order)."""

    def __init__(self, source: str, lines: np.ndarray, column_order: list[str]):
        self.source = source
        self.lines = lines
        self.order = {c: k for k, c in enumerate(column_order)}
        self.found: list[tuple[int, int, InputProblem]] = []
        self.count = 0
        self.times: list[tuple[str, np.ndarray, np.ndarray]] = []  # the file's time columns (`time_column`)

    def add(self, mask, column: str, texts, what) -> None:
        """Rows where `mask` holds have a problem in `column`; `what` is a string or a function of the row."""
        idx = np.flatnonzero(np.asarray(mask, dtype=bool))
        if idx.size == 0:
            return
        self.count += idx.size
        for i in idx[:_MAX_LISTED]:
            problem = InputProblem(int(self.lines[i]), column, texts[i], what(i) if callable(what) else what)
            self.found.append((problem.line, self.order.get(column, len(self.order)), problem))

    def add_file(self, what: str, line: int | None = None, column: str | None = None) -> None:
        self.count += 1
        self.found.append((line or 0, -1, InputProblem(line, column, None, what)))

    def raise_if_any(self) -> None:
        """Raise the first problems found (with the file's time zones checked first: `_time_zones`); with none,
        say once that times with an offset were converted to UTC."""
        offsets = self._time_zones()
        if self.found:
            self.found.sort(key=lambda x: (x[0], x[1]))
            raise InputError(self.source, [p for _, _, p in self.found[:_MAX_LISTED]], self.count)
        if offsets:
            log.warning("%s: times with a UTC offset (%s) converted to UTC", self.source, ", ".join(offsets))

    def time_column(self, column: str, texts: np.ndarray, empty: np.ndarray) -> None:
        """Note a time column (its cells' text) for the file's time-zone check (`_time_zones`)."""
        self.times.append((column, texts, empty))

    def _time_zones(self) -> list[str]:
        """The distinct UTC offsets of the file's times (sorted; [] when no time has one). A file mixing times with
        and without an offset is a problem naming the first line (and column, value) of each kind: a naive time
        is UTC, so a mix is almost always local times half converted."""
        first = {}  # kind -> (line, column order, column, text)
        offsets = set()
        for column, texts, empty in self.times:
            text = pd.Series(np.asarray(texts, dtype=object)).astype(str)
            found = text.str.extract(_OFFSET, expand=False).to_numpy(dtype=object)
            aware = pd.notna(found)
            full = ~np.asarray(empty, dtype=bool)
            for kind, mask in (("with", aware & full), ("without", ~aware & full)):
                idx = np.flatnonzero(mask)
                if idx.size:
                    k = int(idx[np.argmin(self.lines[idx])])
                    here = (int(self.lines[k]), self.order.get(column, len(self.order)), column, str(texts[k]))
                    first[kind] = min(first.get(kind, here), here)
            offsets.update(_offset_text(o) for o in found[aware & full])
        if len(first) == 2:
            (lw, _, cw, tw), (ln, _, cn, tn) = first["with"], first["without"]
            self.add_file(f"mixes times with a UTC offset (first: line {lw}, column {cw}, {_show(tw)}) and times "
                          f"without one (first: line {ln}, column {cn}, {_show(tn)}): give every time with its "
                          "offset, or none (a time without an offset is UTC)", line=min(lw, ln))
        return sorted(offsets)


# ----------------------------------------------------------------------------------------------- reading CSV


def _read_csv_text(path, required=(), delimiter=",") -> tuple[pd.DataFrame, np.ndarray]:
    """The table of `path` as stripped strings, with the physical line number of each data row (fields split by
    `delimiter`: the project's tables are ','-separated; imported ones may not be).

    Checks the header (names, duplicates, the `required` columns) before any row, then each row's field count.
    """
    source = str(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = None
            header_line = 0
            rows, lines = [], []
            prev = 0
            for row in reader:
                start = prev + 1
                prev = reader.line_num
                cells = [c.strip() for c in row]
                if not any(cells):
                    continue  # a blank line (or one of empty fields only)
                if header is None:
                    header, header_line = cells, start
                    _check_header(header, header_line, required, source)
                    continue
                if len(cells) > len(header) and not any(cells[len(header):]):
                    cells = cells[: len(header)]  # trailing empty fields (e.g. a trailing comma)
                if len(cells) != len(header):
                    raise InputError(
                        source,
                        [InputProblem(start, None, None,
                                 f"has {len(cells)} fields but the header (line {header_line}) has {len(header)}")],
                    )
                rows.append(cells)
                lines.append(start)
    except UnicodeDecodeError as exc:
        raise InputError(source, [InputProblem(None, None, None, f"is not UTF-8 text ({exc.reason})")]) from None
    except csv.Error as exc:
        raise InputError(source, [InputProblem(reader.line_num, None, None, f"is not valid CSV ({exc})")]) from None
    if header is None:
        raise InputError(source, [InputProblem(None, None, None, "is empty: no header line")])
    frame = pd.DataFrame(rows, columns=header, dtype=object) if rows else pd.DataFrame(columns=header, dtype=object)
    frame.attrs["header_line"] = header_line
    return frame, np.asarray(lines, dtype=np.int64)


def _check_header(header: list[str], header_line: int, required, source: str) -> None:
    empty_names = [k + 1 for k, c in enumerate(header) if not c]
    if empty_names:
        raise InputError(source, [InputProblem(header_line, None, None, f"header field {empty_names[0]} has no name")])
    seen = set()
    for c in header:
        if c in seen:
            raise InputError(source, [InputProblem(header_line, c, None, "appears twice in the header")])
        seen.add(c)
    missing = [c for c in required if c not in header]
    if missing:
        delimiter = _other_delimiter(header)
        if delimiter is not None:
            name = {";": "';'", "\t": "tab", "|": "'|'"}[delimiter]
            raise InputError(source, [InputProblem(
                header_line, None, None,
                f"looks {name}-separated; the tables are comma-separated CSV (header: {','.join(header)[:80]!r})")])
    frame = pd.DataFrame(columns=header)
    frame.attrs["header_line"] = header_line
    _check_columns(frame, required, source)


def _other_delimiter(header: list[str]) -> str | None:
    """The delimiter a header that lacks required columns seems to use instead of ',' (';', tab or '|'), if any:
    one that splits some of its fields into names."""
    counts = {d: sum(c.count(d) for c in header) for d in (";", "\t", "|")}
    best = max(counts, key=counts.get)
    return best if counts[best] >= 1 else None


def _check_columns(frame: pd.DataFrame, required, source: str, header_line: int = 1) -> None:
    """InputError naming every required column the header lacks."""
    header_line = frame.attrs.get("header_line", header_line)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        names = ", ".join(missing)
        found = ", ".join(map(str, frame.columns)) or "none"
        raise InputError(
            source,
            [InputProblem(header_line, None, None,
                     f"missing required column{'s' if len(missing) > 1 else ''} {names} (found: {found})")],
        )


def _strip_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` with the text cells stripped of surrounding whitespace (other cells as they are)."""
    out = {}
    for c in frame.columns:
        col = frame[c]
        if col.dtype == object:
            values = col.to_numpy(dtype=object)
            if pd.api.types.infer_dtype(values, skipna=False) == "string":
                stripped = np.char.strip(values.astype(str)).astype(object) if len(values) else values
            else:
                stripped = np.array([v.strip() if isinstance(v, str) else v for v in values], dtype=object)
            col = pd.Series(stripped, dtype=object)
        out[c] = col.reset_index(drop=True)
    result = pd.DataFrame(out, columns=list(frame.columns))
    result.attrs.update(frame.attrs)
    return result


def _stripped_text(col: pd.Series) -> np.ndarray | None:
    """The cells as an object array of str if every cell is text (the CSV case), else None. Cells are already
    stripped (`_strip_cells`)."""
    values = col.to_numpy(dtype=object)
    if pd.api.types.infer_dtype(values, skipna=False) != "string":
        return None
    return values


def _texts(col: pd.Series) -> np.ndarray:
    """Each cell as the text a user sees (for messages): strings stripped, missing values as ''."""
    text = _stripped_text(col)
    if text is not None:
        return text
    out = np.empty(len(col), dtype=object)
    for k, v in enumerate(col.to_numpy(dtype=object)):
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NaT:
            out[k] = "" if v is None else str(v)
        else:
            out[k] = v.strip() if isinstance(v, str) else str(v)
    return out


def _is_empty(col: pd.Series) -> np.ndarray:
    """Cells that are empty text or None (a NaN number is not empty: it is reported as NaN)."""
    text = _stripped_text(col)
    if text is not None:
        return text == ""
    values = col.to_numpy(dtype=object)
    return np.fromiter(
        (v is None or (isinstance(v, str) and not v.strip()) for v in values), dtype=bool, count=len(values)
    )


def _parse_floats(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(values, empty): the column as floats, NaN where a cell is empty or no number, and which cells are empty.

    Text is parsed with Python's correctly rounded conversion (pandas' fast parser is not), so the shortest
    round-trip text of a float written by the writers reads back as exactly that float.
    """
    empty = _is_empty(col)
    if col.dtype != object:
        try:
            return col.to_numpy(dtype=float), empty
        except (TypeError, ValueError):
            col = col.astype(object)
    values = np.full(len(col), np.nan)
    full = ~empty
    text = _stripped_text(col)
    cells = text[full].astype(str) if text is not None else col.to_numpy(dtype=object)[full]
    try:
        values[full] = cells.astype(np.float64)
    except (TypeError, ValueError):  # some cell is no number: convert one by one, leaving those NaN
        for k, v in zip(np.flatnonzero(full), cells):
            try:
                values[k] = float(v)
            except (TypeError, ValueError):
                pass
    return values, empty


def _numbers(col: pd.Series, column: str, texts: np.ndarray, problems: _Problems, required=True) -> np.ndarray:
    """Column as floats; records empty, unparseable, NaN and infinite cells. Bad cells become NaN."""
    values, empty = _parse_floats(col)
    bad = np.isnan(values) & ~empty
    if bad.any():
        # Distinguish a literal NaN from text that is no number at all.
        literal_nan = np.zeros(len(values), dtype=bool)
        for i in np.flatnonzero(bad):
            try:
                literal_nan[i] = np.isnan(float(texts[i]))
            except (TypeError, ValueError):
                pass
        problems.add(literal_nan, column, texts, "is NaN: a number is required")
        problems.add(bad & ~literal_nan, column, texts, "is not a number")
    if required:
        problems.add(empty, column, texts, "is empty: a number is required")
    problems.add(np.isinf(values), column, texts, "must be finite")
    values = np.where(np.isinf(values), np.nan, values)
    return values


def _times(col: pd.Series, column: str, texts: np.ndarray, problems: _Problems) -> pd.Series:
    """Column as naive UTC timestamps (datetime64[ns]); records empty and unparseable cells (NaT)."""
    empty = _is_empty(col)
    try:
        ts = pd.to_datetime(col.where(~empty, None), format="ISO8601", utc=True, errors="coerce")
    except (TypeError, ValueError):  # e.g. mixed objects pandas cannot handle as a whole: go cell by cell
        ts = pd.Series([_one_time(v) for v in col], index=col.index, dtype="datetime64[ns, UTC]")
    ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    bad = ts.isna().to_numpy() & ~empty
    problems.time_column(column, texts, empty | bad)
    problems.add(empty, column, texts, "is empty: an ISO 8601 time is required")
    problems.add(bad, column, texts, "is not a valid ISO 8601 time (e.g. 2026-06-01T18:30:00)")
    return ts.reset_index(drop=True)


# A UTC offset at the end of an ISO 8601 time of day (Z, +02, +0200, +02:00); a date alone has none.
_OFFSET = r"(?i)[T ]\d{2}(?::?\d{2}){0,2}(?:[.,]\d+)?\s*(Z|[+-]\d{2}(?::?\d{2})?)$"


def _offset_text(offset: str) -> str:
    """An offset as +HH:MM (Z is +00:00)."""
    if offset.upper() == "Z":
        return "+00:00"
    digits = offset[1:].replace(":", "")
    return f"{offset[0]}{digits[:2]}:{digits[2:4] or '00'}"


def _one_time(v):
    try:
        return pd.to_datetime(v, format="ISO8601", utc=True)
    except (TypeError, ValueError):
        return pd.NaT


# ----------------------------------------------------------------------------------------------- sessions


def read_sessions(path) -> Fleet:
    """The fleet of the sessions table at `path` (CSV), validated; raises `InputError` naming the first problem."""
    frame, lines = _read_csv_text(path, SESSION_COLUMNS)
    return Fleet.from_frame(validate_sessions(frame, source=str(path), lines=lines))


def validate_sessions(frame: pd.DataFrame, source: str = "sessions", lines=None) -> pd.DataFrame:
    """The cleaned sessions frame, or `InputError` for the first problem of `frame`.

    `frame` may hold text (as read from CSV) or typed values. `source` names the table in messages; `lines` gives
    the file line of each row (default: row k is on line k + 2, the header on line 1).

    The cleaned frame has the required columns (numbers as float, times as naive UTC datetime64 whole seconds),
    `energy_min_kwh` (0 where absent or empty), `bus` (int64) if present, then the extra columns as they came (text
    from a CSV file, stripped), in the order of the sessions table, with a fresh index.
    """
    source = str(source)
    frame = _strip_cells(frame)
    lines = np.arange(len(frame), dtype=np.int64) + 2 if lines is None else np.asarray(lines, dtype=np.int64)
    if len(lines) != len(frame):
        raise ValueError(f"lines has {len(lines)} entries for {len(frame)} rows")
    frame.columns = [str(c).strip() for c in frame.columns]
    _check_columns(frame, SESSION_COLUMNS, source)
    order = list(frame.columns)
    problems = _Problems(source, lines, order)
    texts = {c: _texts(frame[c]) for c in frame.columns if c in SESSION_COLUMNS or c in OPTIONAL_SESSION_COLUMNS}

    # ev_id: present and unique
    ev_text = texts["ev_id"]
    ev_empty = ev_text == ""
    problems.add(ev_empty, "ev_id", ev_text, "is empty: every session needs an ev_id")
    ids = pd.Series(ev_text)
    dup = ids.duplicated(keep="first").to_numpy() & ~ev_empty
    if dup.any():
        firsts = ~ids.duplicated(keep="first").to_numpy()
        first_line = dict(zip(ev_text[firsts], lines[firsts]))
        problems.add(dup, "ev_id", ev_text, lambda i: f"duplicates the ev_id of line {first_line[ev_text[i]]}")

    # times
    arr_ts = _times(frame["arrival"], "arrival", texts["arrival"], problems).dt.ceil("s")
    dep_ts = _times(frame["departure"], "departure", texts["departure"], problems).dt.floor("s")
    both = (~arr_ts.isna() & ~dep_ts.isna()).to_numpy()
    not_after = np.zeros(len(frame), dtype=bool)
    not_after[both] = (dep_ts[both] <= arr_ts[both]).to_numpy()
    problems.add(not_after, "departure", texts["departure"],
                 lambda i: f"must be after the arrival {texts['arrival'][i]}")

    # numbers
    num = {}
    for c in NUMERIC_SESSION_COLUMNS:
        if c in frame.columns:
            num[c] = _numbers(frame[c], c, texts[c], problems, required=c in SESSION_COLUMNS)
    if "energy_min_kwh" in num:
        num["energy_min_kwh"] = np.where(_is_empty(frame["energy_min_kwh"]), 0.0, num["energy_min_kwh"])
    else:
        num["energy_min_kwh"] = np.zeros(len(frame))
    with np.errstate(invalid="ignore"):
        cap = num["capacity_kwh"]
        cap_ok = ~LIMITS["capacity_kwh"].below(cap) & ~LIMITS["capacity_kwh"].above(cap)
        for c in NUMERIC_SESSION_COLUMNS:  # the plausibility limits (fleet.LIMITS)
            if c not in texts:
                continue
            limit, v = LIMITS[c], num[c]
            low = limit.below(v)
            problems.add(low, c, texts[c], limit.low_message())
            if limit.high_column is not None:
                ref = texts[limit.high_column]
                problems.add(~low & cap_ok & (v > num[limit.high_column]), c, texts[c],
                             lambda i, ref=ref: f"exceeds the capacity {ref[i]} kWh")
            else:
                problems.add(limit.above(v), c, texts[c], limit.high_message())
    long_stay = np.zeros(len(frame), dtype=bool)
    long_stay[both] = (dep_ts[both] - arr_ts[both] > pd.Timedelta(seconds=int(MAX_STAY / np.timedelta64(1, "s")))
                       ).to_numpy()
    problems.add(long_stay, "departure", texts["departure"],
                 lambda i: f"is more than {MAX_STAY // np.timedelta64(86400, 's')} days after the arrival "
                           f"{texts['arrival'][i]}: a plug-in session, not a year's parking")
    declared = _declared_departures(frame, texts, arr_ts, dep_ts, problems)

    # bus: a non-negative integer (3 and 3.0 both accepted)
    bus = None
    if "bus" in frame.columns:
        bt = texts["bus"]
        bv = _numbers_quiet(frame["bus"])
        bad = ~np.isfinite(bv) | (bv < 0) | (np.floor(bv) != bv)
        problems.add(bad, "bus", bt, "must be a non-negative integer (a grid bus index)")
        bus = np.where(bad, 0, bv).astype(np.int64)

    problems.raise_if_any()
    if len(frame) == 0:
        log.warning("%s: no sessions (a header only): there is nothing to dispatch", source)

    out = {"ev_id": pd.Series(ev_text, dtype=object),
           "arrival": arr_ts.astype("datetime64[s]"), "departure": dep_ts.astype("datetime64[s]")}
    for c in SESSION_COLUMNS[3:]:
        out[c] = num[c]
    out["energy_min_kwh"] = num["energy_min_kwh"]
    if bus is not None:
        out["bus"] = bus
    if declared is not None:
        out["departure_declared"] = declared.astype("datetime64[s]")
    known = set(SESSION_COLUMNS) | set(OPTIONAL_SESSION_COLUMNS)
    for c in frame.columns:
        if c not in known:
            out[c] = _as_came(frame[c])
    return pd.DataFrame(out)


def _declared_departures(frame: pd.DataFrame, texts: dict, arr_ts: pd.Series, dep_ts: pd.Series,
                         problems: "_Problems") -> pd.Series | None:
    """The optional column departure_declared (what the driver told the app): a time after the arrival, at most
    MAX_STAY after it, rounded down to the second like the departure; an empty cell means the actual departure.
    None where the column is absent."""
    if "departure_declared" not in frame.columns:
        return None
    col, text = frame["departure_declared"], texts["departure_declared"]
    empty = _is_empty(col)
    unheard = _Problems(problems.source, problems.lines, [])  # empty cells are allowed: its messages are ours
    ts = _times(col, "departure_declared", text, unheard).dt.floor("s")
    ts = ts.where(~empty, dep_ts)
    bad = ts.isna().to_numpy() & ~empty
    problems.add(bad, "departure_declared", text, "is not a valid ISO 8601 time (e.g. 2026-06-01T18:30:00), or "
                                                  "empty for the actual departure")
    both = (~ts.isna() & ~arr_ts.isna()).to_numpy() & ~empty
    not_after = np.zeros(len(frame), dtype=bool)
    not_after[both] = (ts[both] <= arr_ts[both]).to_numpy()
    problems.add(not_after, "departure_declared", text, lambda i: f"must be after the arrival {texts['arrival'][i]}")
    long_stay = np.zeros(len(frame), dtype=bool)
    long_stay[both] = (ts[both] - arr_ts[both] > pd.Timedelta(seconds=int(MAX_STAY / np.timedelta64(1, "s")))
                       ).to_numpy()
    problems.add(long_stay, "departure_declared", text,
                 lambda i: f"is more than {MAX_STAY // np.timedelta64(86400, 's')} days after the arrival "
                           f"{texts['arrival'][i]}: a plug-in session, not a year's parking")
    return ts


def _numbers_quiet(col: pd.Series) -> np.ndarray:
    return _parse_floats(col)[0]


def _as_came(col: pd.Series) -> pd.Series:
    """An extra column as it came: text cells stripped, never reinterpreted (an id like 00123 stays text)."""
    if col.dtype != object:
        return col.reset_index(drop=True)
    return col.map(lambda v: v.strip() if isinstance(v, str) else v).reset_index(drop=True)


# ----------------------------------------------------------------------------------------------- signal


def read_reference(path, step_s: float | None = None, fleet: Fleet | None = None) -> Reference:
    """The reference signal table at `path` (CSV: time, p_ref_kw), validated; raises `InputError`.

    The step is the spacing of the times. A signal of a single row does not show its step: pass `step_s`
    (seconds) then; when given for a longer signal it must match the file's spacing.
    With the `fleet` it is for, it is also checked against it (`check_signal_against_fleet`: the fleet's signal
    bound is an `InputError` naming the file's line; sessions the signal cannot serve are a warning).
    """
    frame, lines = _read_csv_text(path, SIGNAL_COLUMNS)
    reference = validate_reference(frame, source=str(path), lines=lines, step_s=step_s)
    if fleet is not None:
        check_signal_against_fleet(reference, fleet, source=str(path), lines=lines,
                                   _texts=_texts(frame["p_ref_kw"]))
    return reference


def validate_reference(frame: pd.DataFrame, source: str = "signal", lines=None, step_s: float | None = None) -> Reference:
    """The `Reference` of a signal frame (time, p_ref_kw; text or typed), or `InputError` for its first problem.

    Every p_ref_kw must be finite and within the absolute plausibility limit ``LIMITS["p_ref_kw"]``
    (+-1e7 kW); the bound derived from a fleet is `check_signal_against_fleet`'s."""
    source = str(source)
    attrs = dict(frame.attrs)
    frame = frame.reset_index(drop=True)
    frame.attrs.update(attrs)
    lines = np.arange(len(frame), dtype=np.int64) + 2 if lines is None else np.asarray(lines, dtype=np.int64)
    frame.columns = [str(c).strip() for c in frame.columns]
    _check_columns(frame, SIGNAL_COLUMNS, source)
    if len(frame) < 1:
        raise InputError(source, [InputProblem(None, None, None, "has no data rows: the signal needs at least one")])
    problems = _Problems(source, lines, list(frame.columns))
    t_text = _texts(frame["time"])
    p_text = _texts(frame["p_ref_kw"])
    ts = _times(frame["time"], "time", t_text, problems)
    p = _numbers(frame["p_ref_kw"], "p_ref_kw", p_text, problems)
    limit = LIMITS["p_ref_kw"]
    problems.add(limit.below(p) | limit.above(p), "p_ref_kw", p_text,
                 f"must be within +-{limit.high:g} kW: {limit.why}")
    ns = ts.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    valid = ~ts.isna().to_numpy()
    second = 1_000_000_000
    step_ns = None
    if step_s is not None:
        step_ns = round(float(step_s) * second)
        if step_ns <= 0 or step_ns % second:
            raise ValueError(f"step_s must be a positive whole number of seconds, got {step_s}")
    if valid.all():
        if len(ns) >= 2:
            d = np.diff(ns)
            d0 = int(d[0])
            nonpos = np.concatenate([[False], d <= 0])
            frac = np.concatenate([[False], (d > 0) & (d % second != 0)])
            ref = step_ns if step_ns is not None else d0
            irregular = np.concatenate([[False], (d > 0) & (d % second == 0) & (d != ref)])
            problems.add(nonpos, "time", t_text,
                         lambda i: f"is not after the previous time {t_text[i - 1]} (line {lines[i - 1]}): "
                                   "times must increase")
            problems.add(frac, "time", t_text,
                         lambda i: f"is {_secs(d[i - 1])} s after the previous time: the step must be a whole "
                                   "number of seconds")
            if step_ns is not None:
                what = lambda i: f"is {_secs(d[i - 1])} s after the previous time, but the step given is {_secs(ref)} s"
            else:
                what = lambda i: (f"is {_secs(d[i - 1])} s after the previous time, but the first step (lines "
                                  f"{lines[0]}-{lines[1]}) is {_secs(d0)} s: the time grid must be regular")
            problems.add(irregular, "time", t_text, what)
        elif step_ns is None:
            problems.add_file(
                "has a single row, which does not define the step: give the step (step_s; in the evagg "
                "command --signal-step)", line=int(lines[0]), column="time")
        problems.add(ns % second != 0, "time", t_text, "has a fraction of a second: times must be whole seconds")
    problems.raise_if_any()
    step = step_ns // second if step_ns is not None else int(ns[1] - ns[0]) // second
    return Reference(start=np.datetime64(int(ns[0] // second), "s"), step=np.timedelta64(step, "s"), p_ref_kw=p)


def _secs(ns: int) -> str:
    return f"{ns / 1e9:g}"


# ----------------------------------------------------------------------------------------------- signal and fleet


def check_signal_against_fleet(reference: Reference, fleet: Fleet, source: str = "signal", lines=None,
                               _texts=None) -> float:
    """Check a signal against the fleet it is for; returns the share of the sessions' time it covers (0..1).

    Error (`InputError` naming `source`, the line and column p_ref_kw): a value beyond the fleet's plausible
    range, ``|p_ref| > 10 x (sum of charge powers + sum of discharge powers) + 1 kW`` (`fleet.signal_bound_kw`):
    a signal of kW meant for MW, or for another fleet. `lines`: the file line of each step (default: step k on
    line k + 2, as `write_reference` writes it). Not checked for a fleet of no sessions (nothing to compare).
    One-line warnings (logger ``evagg.simulators.tables``), the dispatch runs anyway:
    sessions with no whole step of the signal's grid between arrival and departure (shorter than one step, or
    between two step boundaries: they cannot draw or inject power, `unservable_sessions`), and a signal that
    covers less than all of the sessions' plugged time (`signal_coverage` < 1: the rest is not dispatched).
    """
    source = str(source)
    p = np.asarray(reference.p_ref_kw, dtype=float)
    n = len(fleet)
    if n:
        bound = signal_bound_kw(fleet)
        lines = np.arange(len(p), dtype=np.int64) + 2 if lines is None else np.asarray(lines, dtype=np.int64)
        problems = _Problems(source, lines, list(SIGNAL_COLUMNS))
        texts = np.array([_number_text(v) for v in p], dtype=object) if _texts is None else _texts
        pc, pd_ = float(np.sum(fleet.p_charge_max_kw)), float(np.sum(fleet.p_discharge_max_kw))
        with np.errstate(invalid="ignore"):
            over = ~(np.abs(p) <= bound)
        problems.add(over, "p_ref_kw", texts,
                     f"must be within +-{bound:g} kW for a fleet of {n} session{'s' if n > 1 else ''}: 10 x its "
                     f"power range (sum of charge powers {pc:g} kW + sum of discharge powers {pd_:g} kW) + 1 kW")
        problems.raise_if_any()
    bad = unservable_sessions(fleet, reference)
    if bad.any():
        step_s = int(reference.step / np.timedelta64(1, "s"))
        i = int(np.flatnonzero(bad)[0])
        stay_s = int((fleet.departure[i] - fleet.arrival[i]) / np.timedelta64(1, "s"))
        why = (f"shorter than one {step_s} s step" if stay_s < step_s
               else f"no whole {step_s} s step of the signal's grid between them")
        more = int(bad.sum()) - 1
        log.warning("%s: %d session(s) cannot be served: no whole step between arrival and departure (e.g. %s, "
                    "%s to %s: %s%s); they draw no power", source, int(bad.sum()), fleet.ev_id[i], fleet.arrival[i],
                    fleet.departure[i], why, f"; and {more} more" if more else "")
    coverage = signal_coverage(reference, fleet)
    if coverage < 1.0:
        log.warning("%s: covers %s to %s, %s of the sessions' plugged time (%s to %s): the rest is not dispatched",
                    source, reference.start, reference.end, _share(coverage), fleet.arrival.min(),
                    fleet.departure.max())
    return coverage


def signal_coverage(reference: Reference, fleet: Fleet) -> float:
    """The share (0..1) of the sessions' plugged time (sum over sessions of departure - arrival) inside the
    signal's horizon [start, end). 1.0 for a fleet of no sessions (there is nothing to cover)."""
    if len(fleet) == 0:
        return 1.0
    second = np.timedelta64(1, "s")
    arr = ((fleet.arrival - reference.start) / second).astype(np.float64)
    dep = ((fleet.departure - reference.start) / second).astype(np.float64)
    end = float((reference.end - reference.start) / second)
    total = float(np.sum(dep - arr))
    inside = float(np.sum(np.maximum(np.minimum(dep, end) - np.maximum(arr, 0.0), 0.0)))
    return 1.0 if total <= 0 else min(inside / total, 1.0)


def unservable_sessions(fleet: Fleet, reference: Reference) -> np.ndarray:
    """(N,) bool: the sessions with no whole step of the signal's time grid (extended before and after it) between
    arrival and departure. Step k may be used iff arrival <= t_k and t_k + step <= departure (data conventions), so
    these sessions can never draw or inject power at this step, whatever the horizon."""
    step_s = int(reference.step / np.timedelta64(1, "s"))
    arr_s = ((fleet.arrival - reference.start) / np.timedelta64(1, "s")).astype(np.int64)
    dep_s = ((fleet.departure - reference.start) / np.timedelta64(1, "s")).astype(np.int64)
    first = -(-arr_s // step_s)  # the first step boundary at or after arrival
    return first + 1 > dep_s // step_s


def _number_text(v) -> str:
    """A float as short as it reads back exactly, without a trailing '.0' (5000.0 -> '5000')."""
    text = repr(float(v))
    return text[:-2] if text.endswith(".0") else text


def _share(x: float) -> str:
    """A share as a percentage rounded down (99.96 % shows as 99.9 %, never as 100 %)."""
    return f"{math.floor(x * 1000) / 10:g} %"


# ----------------------------------------------------------------------------------------------- JSON


def finite_or_none(x):
    """`x` as a JSON-ready number: a float or int, None where it is NaN or infinite (or None)."""
    if x is None or isinstance(x, bool):
        return x
    if isinstance(x, (int, np.integer)):
        return int(x)
    x = float(x)
    return x if math.isfinite(x) else None


def json_safe(obj):
    """`obj` with every NaN or infinite float replaced by None, recursively through dicts, lists, tuples and numpy
    arrays (numpy scalars become Python numbers), so that ``json.dumps(json_safe(obj), allow_nan=False)`` works.
    Other values are returned as they are."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [json_safe(v) for v in obj.tolist()]
    if isinstance(obj, (float, np.floating, np.integer)) and not isinstance(obj, bool):
        return finite_or_none(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# ----------------------------------------------------------------------------------------------- dispatch result


def read_dispatch(path) -> pd.DataFrame:
    """The dispatch result table at `path` (time as datetime64, ev_id text, powers kW and energy kWh as float)."""
    frame, lines = _read_csv_text(path, DISPATCH_COLUMNS)
    source = str(path)
    _check_columns(frame, DISPATCH_COLUMNS, source)
    problems = _Problems(source, lines, list(frame.columns))
    out = {"time": _times(frame["time"], "time", _texts(frame["time"]), problems)}
    out["ev_id"] = pd.Series(_texts(frame["ev_id"]), dtype=object)
    for c in DISPATCH_COLUMNS[2:]:
        out[c] = _numbers(frame[c], c, _texts(frame[c]), problems)
    problems.raise_if_any()
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------------------------- writing


def write_sessions(fleet: Fleet, path) -> None:
    """Write `fleet` as a sessions table (CSV) at `path`, atomically."""
    _write_frame(fleet.to_frame(), path)


def write_reference(reference: Reference, path) -> None:
    """Write `reference` as a signal table (CSV: time, p_ref_kw) at `path`, atomically."""
    _write_frame(reference.to_frame(), path)


def write_dispatch(result, path) -> None:
    """Write a `DispatchResult`'s table (``result.to_frame()``: time, ev_id, p_charge_kw, p_discharge_kw,
    energy_kwh) as CSV at `path`, atomically. Floats round-trip exactly."""
    _write_frame(result.to_frame(), path)


def _write_frame(frame: pd.DataFrame, path) -> None:
    _atomic_write(path, lambda f: frame.to_csv(f, index=False, date_format=TIME_FORMAT, lineterminator="\n"))


def _atomic_write(path, write) -> None:
    """Call `write(file)` on a temporary file next to `path`, then move it onto `path` (all or nothing)."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; give it the mode a plain open() would
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
