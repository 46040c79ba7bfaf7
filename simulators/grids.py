"""A grid: a simbench grid (shipped with simbench, no download) or a pandapower JSON file, with its load and
generation profiles when it has them, loaded once per process and checked (mosaik-free; pandapower and simbench are
imported on first use). `evagg.plugin.SimbenchGridSim` (``Grid(grid=...)``) and the scenarios load grids here.

Profiles (simbench's, 15-minute rows over the year 2016) are read at the simulated time: the row of the same month,
day and clock time in 2016 (a run that crosses New Year continues at the start of the profiles). A step longer
than 15 minutes gets the mean of the rows it covers (the energy of the step is kept); a shorter one holds its row.
"""
from __future__ import annotations

import copy
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("evagg.simulators")

PROFILE_YEAR = 2016
PROFILE_STEP_S = 900

__all__ = ["GridError", "Feeder", "load_grid", "profile_rows"]


class GridError(ValueError):
    """The grid named by the user does not load (one-line message)."""


@dataclass(eq=False)
class Feeder:
    """A loaded grid: the pristine pandapower net (copy it before use) and its profiles, if any."""

    spec: str  # what the user gave: a simbench code or a path
    kind: str  # "simbench" | "json"
    net: object  # pandapowerNet (never changed: `copy_net` gives a working copy)
    # (element, column) -> (element indices, values (rows, elements)) in MW / MVar, 15-minute rows from 2016-01-01
    profiles: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec if self.kind == "simbench" else Path(self.spec).name

    @property
    def buses(self) -> np.ndarray:
        return np.asarray(self.net.bus.index, dtype=np.int64)

    @property
    def load_buses(self) -> np.ndarray:
        """The buses with a load in service (where EVs plug in), sorted."""
        load = self.net.load
        if "in_service" in load:
            load = load[load.in_service.astype(bool)]
        return np.unique(np.asarray(load.bus, dtype=np.int64))

    def copy_net(self):
        return copy.deepcopy(self.net)

    @property
    def n_rows(self) -> int:
        for _, values in self.profiles.values():
            return values.shape[0]
        return 0

    def profile_values(self, start, seconds: float, step_s: float) -> dict:
        """(element, column) -> (indices, values) for the step [start + seconds, start + seconds + step_s)."""
        if not self.profiles:
            return {}
        rows = profile_rows(start, seconds, step_s, self.n_rows)
        return {key: (idx, values[rows].mean(axis=0)) for key, (idx, values) in self.profiles.items()}

    def describe(self) -> dict:
        net = self.net
        return {
            "grid": self.spec,
            "kind": self.kind,
            "buses": int(len(net.bus)),
            "load_buses": int(len(self.load_buses)),
            "loads": int(len(net.load)),
            "static_generators": int(len(net.sgen)),
            "lines": int(len(net.line)),
            "transformers": int(len(net.trafo)),
            "transformer_mva": [float(x) for x in net.trafo.sn_mva],
            "profiles": bool(self.profiles),
        }


def profile_rows(start, seconds: float, step_s: float, n_rows: int) -> np.ndarray:
    """The profile rows (15-minute steps from 2016-01-01 00:00) covered by [t, t + step_s), t = start + seconds,
    mapped onto the year 2016 by month, day and clock time (wrapping at the end of the profiles)."""
    t = pd.Timestamp(start) + pd.Timedelta(seconds=float(seconds))
    in_year = (t.replace(year=PROFILE_YEAR) - pd.Timestamp(f"{PROFILE_YEAR}-01-01")).total_seconds()
    first = int(in_year // PROFILE_STEP_S)
    last = max(int(np.ceil((in_year + float(step_s)) / PROFILE_STEP_S - 1e-9)), first + 1)
    return np.arange(first, last) % n_rows


_CACHE: dict = {}
# simbench builds a net from its CSV tables in 3-5 s in every process; the same net saved as pandapower JSON loads
# in 0.7 s with the same tables and profiles (its power flow identical, measured), so each code is built once per
# machine and kept in this folder (EVAGG_CACHE_DIR; "off": no cache), per simbench and pandapower version.
CACHE_ENV = "EVAGG_CACHE_DIR"


def cache_dir() -> Path | None:
    """Where built simbench nets are kept: $EVAGG_CACHE_DIR, else $XDG_CACHE_HOME/evagg or ~/.cache/evagg; None
    with EVAGG_CACHE_DIR=off."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() == "off":
        return None
    if value:
        return Path(value).expanduser()
    try:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "evagg"
    except (RuntimeError, KeyError):  # no home directory to be found (a service account): no cache
        return None


def _simbench_net(code: str):
    """simbench's net `code`, from the cache where it was built before (a damaged entry is built again)."""
    import pandapower as pp
    import simbench as sb

    directory = cache_dir()
    path = None if directory is None else (
        directory / f"simbench-{sb.__version__}-pandapower-{pp.__version__}" / f"{code}.json")
    if path is not None and path.is_file():
        try:
            net = pp.from_json(str(path))
            if isinstance(net, pp.pandapowerNet):
                return net
        except Exception:  # noqa: BLE001  (pandapower raises all kinds of errors for a damaged file)
            pass
        log.info("grid cache %s is damaged: built again", path)
    net = sb.get_simbench_net(code)
    if path is not None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # whole or not at all: processes may race here
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            pp.to_json(net, str(tmp))
            os.replace(tmp, path)
        except OSError as exc:  # a read-only home: no cache, nothing else changes
            log.info("grid cache %s not written: %s", path, exc)
            tmp.unlink(missing_ok=True)
    return net


def grid_file(spec) -> Path | None:
    """The pandapower JSON file a grid `spec` names (None for a simbench code); GridError if it names a file that
    is not there. Cheap: for checking a list of grids before any run loads one."""
    spec = str(spec).strip()
    if not (spec.lower().endswith(".json") or os.sep in spec or Path(spec).exists()):
        return None
    path = Path(spec).expanduser().resolve()
    if path.is_dir():
        raise GridError(f"grid file {spec}: is a directory; give a pandapower .json file or a simbench code")
    if not path.is_file():
        raise GridError(f"grid file {spec}: no such file")
    return path


def load_grid(spec) -> Feeder:
    """The grid `spec`: a simbench code (e.g. ``1-LV-semiurb4--0-sw``) or a pandapower JSON file (a simbench net
    saved with ``pandapower.to_json`` keeps its profiles). Loaded once per process; GridError if it does not load,
    has no external grid, or its power flow does not converge."""
    spec = str(spec).strip()
    if not spec:
        raise GridError("the grid is empty: give a simbench code (e.g. 1-LV-semiurb4--0-sw) or a pandapower .json file")
    path = grid_file(spec)
    is_file = path is not None
    if is_file:
        st = path.stat()
        key = ("json", str(path), st.st_mtime_ns, st.st_size)
    else:
        key = ("simbench", spec)
    if key in _CACHE:
        return _CACHE[key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pandapower as pp

        if is_file:
            try:
                net = pp.from_json(str(path))
            except Exception as exc:  # pandapower raises all kinds of errors for a bad file
                raise GridError(f"grid file {spec}: not a pandapower network in JSON "
                                f"({type(exc).__name__}: {_one_line(exc)})") from None
            if not isinstance(net, pp.pandapowerNet):
                raise GridError(f"grid file {spec}: not a pandapower network")
            kind = "json"
        else:
            import simbench as sb

            codes = set(sb.collect_all_simbench_codes())
            if spec not in codes:
                raise GridError(f"grid {spec!r} is neither a simbench code (e.g. 1-LV-rural2--0-sw, 1-LV-rural1--0-sw, "
                                f"1-MV-rural--0-sw) nor an existing pandapower .json file")
            try:
                net = _simbench_net(spec)
            except Exception as exc:
                raise GridError(f"simbench grid {spec} does not load "
                                f"({type(exc).__name__}: {_one_line(exc)})") from None
            kind = "simbench"
        profiles = _profiles(net, spec)
        feeder = Feeder(spec=spec, kind=kind, net=net, profiles=profiles)
        _check(feeder)
    if not profiles:  # said once per process (the feeder is cached): a study without profiles is a flat day
        log.warning("grid %s has no load or generation profiles: its loads and generators keep the values in the "
                    "net at every step (a flat base load)", spec)
    _CACHE[key] = feeder
    return feeder


def _profiles(net, spec: str) -> dict:
    """simbench's absolute profiles of the net's elements as arrays (empty if the net has none)."""
    raw = getattr(net, "profiles", None) if "profiles" in net else None
    if not isinstance(raw, dict) or not any(isinstance(v, pd.DataFrame) and len(v) for v in raw.values()):
        return {}
    import simbench as sb

    try:
        absolute = sb.get_absolute_values(net, profiles_instead_of_study_cases=True)
    except Exception as exc:
        raise GridError(f"grid {spec}: its profiles do not apply ({type(exc).__name__}: {_one_line(exc)})") from None
    out = {}
    for (elm, col), frame in absolute.items():
        if net[elm].empty or frame is None or frame.empty:
            continue
        idx = np.asarray(frame.columns, dtype=np.int64)
        known = np.isin(idx, np.asarray(net[elm].index, dtype=np.int64))
        if not known.all():
            raise GridError(f"grid {spec}: profiles name {elm} elements the net lacks: {idx[~known][:5].tolist()}")
        out[(elm, col)] = (idx, frame.to_numpy(dtype=float))
    return out


def _check(feeder: Feeder) -> None:
    import pandapower as pp

    net, spec = feeder.net, feeder.spec
    if net.bus.empty:
        raise GridError(f"grid {spec} has no buses")
    if net.ext_grid.empty:
        raise GridError(f"grid {spec} has no external grid (slack): the power flow needs one")
    trial = feeder.copy_net()
    for (elm, col), (idx, values) in feeder.profiles.items():
        trial[elm].loc[idx, col] = values[0]
    try:
        pp.runpp(trial, numba=False)
    except Exception as exc:
        raise GridError(f"grid {spec}: the power flow does not converge ({type(exc).__name__}: "
                        f"{_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]
