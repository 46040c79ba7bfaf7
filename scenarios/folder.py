"""The results folder of a run: its files, where it goes, and atomic JSON. A results folder holds:

- ``results.csv``: the tidy results table (time, entity, attribute, value), one row per recorded value and step;
  MW, MWh, pu, % as in the attribute names (see `evagg.scenarios.feeder_day` for what is recorded); or the same
  table as ``results.parquet`` (runs longer than a week by default; ``--results-format``);
- ``timing.csv``: the aggregators' wall time per step (``solve_time[s]``), kept apart because it differs from run
  to run while everything else is the same, byte for byte, for the same options and seed;
- ``summary.json``: ``complete`` (false while running and after an interrupted or failed run), the options, the
  grid, ``figures`` (the headline figures, recomputed from results.csv by `evagg.scenarios.report`) and
  ``timing`` (solve and wall times: the only fields that differ between identical runs);
- ``inputs/``: the sessions (and signal) tables the aggregators were given;
- the PNG plots (`evagg.scenarios.report`).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

from evagg.simulators.tables import json_safe

from .errors import ScenarioError

SUMMARY = "summary.json"
RESULTS = "results.csv"
RESULTS_PARQUET = "results.parquet"  # the same table in Parquet (long runs, or --results-format parquet)
TIMING = "timing.csv"
INPUTS = "inputs"


def default_out(scenario: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("results") / f"{scenario}-{stamp}"
    out, k = base, 1
    while out.exists():
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    return out


def check_out(out, scenario: str, overwrite: bool, inputs=()) -> Path:
    """The results folder to use; ScenarioError if it is in the way or would hold one of the run's `inputs`
    (files it reads: emptying the folder would delete them). Nothing is created here."""
    out = default_out(scenario) if out is None else Path(out)
    if out.exists() and not out.is_dir():
        raise ScenarioError(f"{out}: exists and is not a folder")
    for path in inputs:
        if Path(path).resolve().is_relative_to(out.resolve()):
            raise ScenarioError(f"{out}: the results folder holds {path}, an input of this run; choose another "
                                "--out (or move the input)")
    if out.is_dir() and any(out.iterdir()):
        if not (out / SUMMARY).is_file():
            raise ScenarioError(f"{out}: the folder is not empty and holds no {SUMMARY}: it is not an evagg results "
                                "folder (--overwrite empties results folders only); choose another --out")
        if not overwrite:
            raise ScenarioError(f"{out}: the folder holds results (use --overwrite to replace them)")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ScenarioError(f"{out}: cannot write in {parent}")
    return out


def make_out(out: Path) -> None:
    """Create (or empty, if it is a results folder being overwritten) the results folder."""
    if out.is_dir() and any(out.iterdir()):
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)


def write_json(path: Path, data: dict) -> None:
    """Write `data` as JSON at `path`, atomically (a reader never sees half a file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(json_safe(data), f, indent=2, sort_keys=False, allow_nan=False)  # NaN, inf: null
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def results_file(out) -> Path | None:
    """The results table of the folder `out` (results.csv or results.parquet), or None if it has none."""
    for name in (RESULTS, RESULTS_PARQUET):
        if (Path(out) / name).is_file():
            return Path(out) / name
    return None


def read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
