"""Headline figures, plots and tables of a results folder (`evagg report DIR` re-makes them from the folder).

Every figure is computed from the tidy results table (results.csv or results.parquet) alone, read in chunks of
whole steps (bounded memory, a year as a day: `scan`), so that summary.json cannot drift from
it; the wall-clock figures come from timing.csv and the run's record and are kept under ``timing``.

Figures (``figures`` in summary.json):
  steps                  steps in the table
  v_min_pu, v_max_pu     lowest / highest bus voltage over all buses and steps (pu), with the bus and time
  voltage_violations     bus-steps with a voltage outside the band (default 0.95-1.05 pu; ``v_band``)
  buses_violating        buses with at least one such step
  line_loading_max_pct   highest line loading (%), with the line and time
  trafo_loading_max_pct  highest transformer loading (%), with the transformer and time
  line_overload_steps    steps with some line loaded above 100 %
  trafo_overload_steps   steps with some transformer loaded above 100 %
  feeder_import_max_mw   highest power drawn from the external grid (MW)
  ev_peak_kw, ev_min_kw  highest / lowest aggregate EV power (kW, + = drawn from the grid)
  ev_energy_kwh          net energy the EVs drew from the grid (kWh): sum over steps of the aggregate power * dt
  tracking_rmse_kw       root mean square of (aggregate EV power - aggregate reference) over the steps (kW)
  energy_shortfall_kwh   target energy (capped at capacity) not delivered to the EVs that left during the run
  need_unmet_kwh         of it, departure need that charging flat out would have delivered (the spec's need; only
                         grid limits can leave it unmet)
  evs_plugged_at_end     EVs plugged in in the last step that leave after it (not in energy_shortfall_kwh)
  certain_shortfall_kwh  of their targets, what they will miss even charging flat out until departure (kWh)
  limited_steps          steps in which a grid limit was binding on some aggregator (grid-aware policies)
  loop_iterations_max    grid-aware, iterative coupling: the most power flows the operator saw in one step
                         (loop_iterations_median: their median), and loop_capped_steps: steps that hit its cap
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from evagg.simulators.collector import TableError, iter_table, read_table

from .errors import ScenarioError
from .folder import RESULTS, RESULTS_PARQUET, SUMMARY, TIMING, read_json, results_file, write_json
from .options import Policy

__all__ = ["figures", "scan", "Scan", "summarize", "plot_run", "plot_policies", "table_text", "comparison_frame", "finish",
           "with_penalties", "remake", "FIGURES", "wide", "information_costs", "comparison_text"]

# key, label, format
FIGURES = (
    ("v_min_pu", "min bus voltage [pu]", "{:.4f}"),
    ("v_max_pu", "max bus voltage [pu]", "{:.4f}"),
    ("voltage_violations", "bus-steps outside the band", "{:d}"),
    ("buses_violating", "buses outside the band", "{:d}"),
    ("line_loading_max_pct", "max line loading [%]", "{:.1f}"),
    ("trafo_loading_max_pct", "max transformer loading [%]", "{:.1f}"),
    ("line_overload_steps", "steps with a line > 100 %", "{:d}"),
    ("trafo_overload_steps", "steps with the transformer > 100 %", "{:d}"),
    ("feeder_import_max_mw", "max feeder import [MW]", "{:.4f}"),
    ("ev_peak_kw", "EV peak [kW]", "{:.1f}"),
    ("ev_energy_kwh", "EV energy drawn [kWh]", "{:.1f}"),
    ("tracking_rmse_kw", "tracking RMSE [kW]", "{:.2f}"),
    ("tracking_rmse_penalty_kw", "RMSE given up to the limits [kW]", "{:.2f}"),
    ("energy_shortfall_kwh", "energy shortfall [kWh]", "{:.2f}"),
    ("need_unmet_kwh", "need unmet (limits) [kWh]", "{:.2f}"),
    ("evs_plugged_at_end", "EVs still plugged in at the end", "{:d}"),
    ("certain_shortfall_kwh", "their certain shortfall [kWh]", "{:.2f}"),
    ("limited_steps", "steps with a binding limit", "{:d}"),
    ("loop_iterations_max", "same-step loop: max iterations", "{:d}"),
    ("loop_capped_steps", "same-step loop: capped steps", "{:d}"),
    ("solve_time_s", "solve time [s]", "{:.2f}"),
)

log = logging.getLogger(__name__)

_KIND = re.compile(r"\.([A-Za-z0-9]+)-")
CHUNK_ROWS = 500_000  # rows read at a time: a year's table is never read into one frame
DAILY_AFTER_DAYS = 3  # plots of a longer run show days (daily envelopes, the worst day, a heat map)


def kind_of(entity: str) -> str:
    """The model of a full entity id: 'Grid-0.Bus-5' -> 'Bus', 'EVAgg-1.Aggregator-0' -> 'Aggregator'."""
    m = _KIND.search(entity)
    return m.group(1) if m else ""


def _results_path(out) -> Path:
    path = results_file(out)
    if path is None and (Path(out) / (RESULTS_PARQUET + ".partial")).is_file():
        raise ScenarioError(f"{Path(out) / (RESULTS_PARQUET + '.partial')}: the run was stopped before it closed its "
                            "Parquet table (killed outright), which is unreadable without its footer; nothing to "
                            "report (a run written as CSV, --results-format csv, keeps its rows then)")
    if path is None:
        raise ScenarioError(f"{out}: no {RESULTS} or {RESULTS_PARQUET} (not a results folder, or the run never "
                            "started)")
    return path


def read_results(out) -> pd.DataFrame:
    """The whole results table of a folder (CSV or Parquet) with a `kind` column: for short runs and tests; the
    figures and plots read it in chunks (`scan`)."""
    return _with_kind(read_table(_results_path(out)))


def _with_kind(table: pd.DataFrame) -> pd.DataFrame:
    kinds = {e: kind_of(e) for e in pd.unique(table["entity"])}
    table["kind"] = table["entity"].map(kinds)
    return table


def wide(table: pd.DataFrame, kind: str, attribute: str) -> pd.DataFrame:
    """Steps x entities of one attribute of one kind of entity (times sorted)."""
    sel = table[(table["kind"] == kind) & (table["attribute"] == attribute)]
    frame = sel.pivot(index="time", columns="entity", values="value")
    return frame.sort_index()


def _where(frame: pd.DataFrame, best) -> tuple:
    """(value, entity, time) of the max (best=np.nanargmax) or min over a steps x entities frame."""
    values = frame.to_numpy(dtype=float)
    if values.size == 0 or np.all(np.isnan(values)):
        return None, None, None
    flat = best(np.where(np.isnan(values), np.nan, values))
    r, c = np.unravel_index(flat, values.shape)
    return float(values[r, c]), _short(frame.columns[c]), str(frame.index[r])


def _short(entity: str) -> str:
    return entity.split(".", 1)[-1]


def _agg_label(entity: str) -> str:
    """'EVAgg-1.Aggregator-0' -> 'aggregator EVAgg-1' (one simulator per aggregator in the scenarios)."""
    sid, _, eid = entity.partition(".")
    return f"aggregator {sid}" if eid == "Aggregator-0" else f"aggregator {entity}"


class Scan:
    """The headline figures (see the module doc) and the per-step series the plots need, accumulated over a
    results table given in frames of whole steps, in time order (`add`): one frame or many give the same figures
    (extremes keep their first occurrence, sums are exact (math.fsum), last values are per entity)."""

    def __init__(self, step_s: float, v_band=(0.95, 1.05)):
        self.dt_h = float(step_s) / 3600.0
        self.v_band = tuple(v_band)
        self.steps = 0
        self.extreme: dict = {}  # name -> (value, entity, time)
        self.counts = {"voltage_violations": 0, "line_overload_steps": 0, "trafo_overload_steps": 0,
                       "limited_steps": 0, "loop_capped_steps": 0}
        self.violating: set = set()
        self.aggregators: set = set()
        self.sums = {"ev_energy": [], "err2": []}
        self.tracked = 0
        self.last: dict = {"shortfall[MWh]": {}, "need_unmet[MWh]": {}, "plugged_at_end": {},
                           "certain_shortfall[MWh]": {}}
        self.seen = {"Aggregator": False, "shortfall[MWh]": False, "need_unmet[MWh]": False, "limited": False,
                     "capped": False, "plugged_at_end": False, "certain_shortfall[MWh]": False}
        self.loops: list = []
        self.parts: list = []
        self.dropped: list = []  # what the reader left out of a table cut short (one line each)

    def _extreme(self, name: str, found: tuple, larger: bool) -> None:
        if found[0] is None:
            return
        cur = self.extreme.get(name)
        if cur is None or (found[0] > cur[0] if larger else found[0] < cur[0]):
            self.extreme[name] = found

    def add(self, table: pd.DataFrame) -> None:
        """One frame of whole steps (time, entity, attribute, value; `kind` is added if missing)."""
        if "kind" not in table:
            table = _with_kind(table)
        self.steps += int(table["time"].nunique())
        steps = pd.Index(sorted(pd.unique(table["time"])), name="time")
        part = pd.DataFrame(index=steps)
        vm = wide(table, "Bus", "Vm[pu]")
        self._extreme("v_min", _where(vm, np.nanargmin), larger=False)
        self._extreme("v_max", _where(vm, np.nanargmax), larger=True)
        lo, hi = self.v_band
        outside = (vm < lo) | (vm > hi)
        self.counts["voltage_violations"] += int(outside.to_numpy().sum())
        self.violating.update(outside.columns[outside.any(axis=0).to_numpy()])
        if len(vm.columns):
            part["vm_min"], part["vm_med"], part["vm_max"] = vm.min(axis=1), vm.median(axis=1), vm.max(axis=1)
        lines, trafos = wide(table, "Line", "loading[%]"), wide(table, "Transformer", "loading[%]")
        self._extreme("line", _where(lines, np.nanargmax), larger=True)
        self._extreme("trafo", _where(trafos, np.nanargmax), larger=True)
        self.counts["line_overload_steps"] += int((lines > 100.0).any(axis=1).sum())
        self.counts["trafo_overload_steps"] += int((trafos > 100.0).any(axis=1).sum())
        if len(lines.columns):
            part["line_med"], part["line_max"] = lines.median(axis=1), lines.max(axis=1)
        if len(trafos.columns):
            part["trafo_max"] = trafos.max(axis=1)
            for col in trafos.columns:
                part[f"trafo|{col}"] = trafos[col]
        ext = wide(table, "ExternalGrid", "P[MW]").sum(axis=1, min_count=1)
        if len(ext) and ext.notna().any():
            t = ext.idxmax()
            self._extreme("ext", (float(ext[t]), None, str(t)), larger=True)
        p = wide(table, "Aggregator", "P[MW]")
        self.aggregators.update(p.columns)
        if len(p.columns):
            self.seen["Aggregator"] = True
            p_kw = p.sum(axis=1) * 1000.0
            self._extreme("ev_peak", (float(p_kw.max()), None, None), larger=True)
            self._extreme("ev_min", (float(p_kw.min()), None, None), larger=False)
            self.sums["ev_energy"].extend(p_kw.to_numpy().tolist())
            ref = wide(table, "Aggregator", "P_ref[MW]").reindex(index=p.index, columns=p.columns)
            tracked = ref.notna().all(axis=1) & (len(ref.columns) > 0)
            err = (p_kw - ref.sum(axis=1) * 1000.0)[tracked]
            self.sums["err2"].extend((err.to_numpy() ** 2).tolist())
            self.tracked += int(tracked.sum())
            part["ev_kw"] = p_kw
            part["ref_kw"] = ref.sum(axis=1, min_count=1) * 1000.0
            for col in p.columns:
                part[f"p_kw|{col}"] = p[col] * 1000.0
            energy = wide(table, "Aggregator", "energy[MWh]") * 1000.0
            for col in energy.columns:
                part[f"energy_kwh|{col}"] = energy[col]
            for q in ("min", "p10", "p50", "p90", "max"):
                soc = wide(table, "Aggregator", f"soc_{q}[%]")
                for col in soc.columns:
                    part[f"soc_{q}|{col}"] = soc[col]
        for attr, last in self.last.items():
            frame = wide(table, "Aggregator", attr)
            if len(frame):
                self.seen[attr] = True
                final = frame.ffill().iloc[-1]
                last.update({k: float(v) for k, v in final.items() if not np.isnan(v)})
                for k in final.index:
                    last.setdefault(k, np.nan)
        limited = wide(table, "Aggregator", "limited")
        if len(limited):
            self.seen["limited"] = True
            self.counts["limited_steps"] += int((limited > 0).any(axis=1).sum())
        self.loops.extend(wide(table, "Operator", "iterations").max(axis=1).to_numpy().tolist())
        capped = wide(table, "Operator", "capped")
        if len(capped):  # the operator reports `capped` in the iterative coupling only
            self.seen["capped"] = True
            self.counts["loop_capped_steps"] += int((capped > 0).any(axis=1).sum())
        self.parts.append(part)

    def figures(self) -> dict:
        """The headline figures of what was added. Values are rounded for reading."""
        x = self.extreme
        none = (None, None, None)
        v_min, bus_min, t_min = x.get("v_min", none)
        v_max, bus_max, t_max = x.get("v_max", none)
        line_max, line, t_line = x.get("line", none)
        trafo_max, trafo, t_trafo = x.get("trafo", none)
        lo, hi = self.v_band
        f: dict = {"steps": self.steps}
        f.update(
            v_min_pu=_r(v_min, 6), v_min_at=[bus_min, t_min], v_max_pu=_r(v_max, 6), v_max_at=[bus_max, t_max],
            v_band_pu=[lo, hi], voltage_violations=self.counts["voltage_violations"],
            buses_violating=len(self.violating),
        )
        f.update(line_overload_steps=self.counts["line_overload_steps"],
                 trafo_overload_steps=self.counts["trafo_overload_steps"])
        f.update(line_loading_max_pct=_r(line_max, 4), line_loading_max_at=[line, t_line],
                 trafo_loading_max_pct=_r(trafo_max, 4), trafo_loading_max_at=[trafo, t_trafo],
                 feeder_import_max_mw=_r(x.get("ext", none)[0], 6))
        n_err = len(self.sums["err2"])

        def final(attr, per=1000.0):
            if not self.seen[attr]:
                return 0.0
            values = pd.Series(self.last[attr], dtype=float).sort_index()
            return float(values.sum() * per)

        f.update(
            aggregators=len(self.aggregators),
            ev_peak_kw=_r(x.get("ev_peak", none)[0], 3),
            ev_min_kw=_r(x.get("ev_min", none)[0], 3),
            ev_energy_kwh=_r(math.fsum(self.sums["ev_energy"]) * self.dt_h, 3),
            tracking_rmse_kw=_r(math.sqrt(math.fsum(self.sums["err2"]) / n_err) if n_err else None, 4),
            tracked_steps=self.tracked,
            energy_shortfall_kwh=_r(final("shortfall[MWh]"), 4),
        )
        # the EVs still plugged in at the end (their last step's values), apart from the shortfall at departures
        at_end = self.seen["plugged_at_end"]
        f.update(evs_plugged_at_end=int(final("plugged_at_end", 1.0)) if at_end else None,
                 certain_shortfall_kwh=_r(final("certain_shortfall[MWh]"), 4) if at_end else None)
        f.update(need_unmet_kwh=_r(final("need_unmet[MWh]"), 4),
                 limited_steps=self.counts["limited_steps"] if self.seen["limited"] else 0)
        iterative = self.seen["capped"]
        loops = np.asarray(self.loops, dtype=float)
        f.update(loop_iterations_max=int(np.nanmax(loops)) if iterative else None,
                 loop_iterations_median=float(np.nanmedian(loops)) if iterative else None,
                 loop_capped_steps=self.counts["loop_capped_steps"] if iterative else None)
        return f

    def series(self) -> pd.DataFrame:
        """Per step (index: time as written): ev_kw, ref_kw, vm_min/med/max, line_med/max, trafo_max, and per
        entity p_kw|E, energy_kwh|E, soc_<q>|E, trafo|E (kW, kWh, pu, %)."""
        if not self.parts:
            return pd.DataFrame()
        frame = pd.concat(self.parts, axis=0, sort=False)
        fixed = [c for c in _SERIES if c in frame]  # one order whatever the frames held
        return frame[fixed + sorted(c for c in frame.columns if c not in _SERIES)]


_SERIES = ("ev_kw", "ref_kw", "vm_min", "vm_med", "vm_max", "line_med", "line_max", "trafo_max")
_SCANS: dict = {}  # the last scan of each table (path, size, mtime): summarize and the plots read a year once


def scan(out, step_s: float, v_band=(0.95, 1.05), rows: int = CHUNK_ROWS, complete: bool = True) -> Scan:
    """The results table of the folder `out` read in frames of about `rows` rows (bounded memory), as far as it
    is whole (a run killed outright may leave its last step cut: `iter_table`); what was dropped is said once as
    a warning and kept in the scan's `dropped`. `complete`: the run finished (its last step is whole)."""
    path = _results_path(out)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, float(step_s), tuple(v_band), int(rows), bool(complete))
    if key in _SCANS:
        return _SCANS[key]
    acc = Scan(step_s, v_band)
    try:
        for chunk in iter_table(path, rows=rows, notes=acc.dropped, complete=complete):
            acc.add(chunk)
    except TableError as exc:
        raise ScenarioError(str(exc)) from None
    if acc.dropped:
        log.warning("; ".join(acc.dropped))
    _SCANS.clear()
    _SCANS[key] = acc
    return acc


def figures(table: pd.DataFrame, step_s: float, v_band=(0.95, 1.05)) -> dict:
    """The headline figures of a results table held in memory (see the module doc; `scan` reads a folder's)."""
    acc = Scan(step_s, v_band)
    acc.add(table if "kind" in table else _with_kind(table.copy()))
    return acc.figures()


def _r(value, digits):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return round(float(value), digits)


def timing(out) -> dict:
    """Solve time from timing.csv (s): the aggregators' summed wall time over the run, and the longest step."""
    path = Path(out) / TIMING
    if not path.is_file():
        return {"solve_time_s": None, "solve_time_max_step_s": None}
    notes: list = []
    try:
        t = read_table(path, notes=notes)
    except TableError as exc:  # wall times only: the figures do not need them
        log.warning("%s; no solve times reported", exc)
        return {"solve_time_s": None, "solve_time_max_step_s": None}
    if notes:
        log.warning("; ".join(notes))
    t = t[t["attribute"] == "solve_time[s]"]
    per_step = t.groupby("time")["value"].sum()
    return {"solve_time_s": round(float(t["value"].sum()), 4),
            "solve_time_max_step_s": round(float(per_step.max()), 4) if len(per_step) else None}


def summarize(out, base: dict, record: dict | None = None) -> dict:
    """summary.json's content: `base` (scenario, options, grid, ...) + figures + timing (+ the run's record)."""
    out = Path(out)
    opts = base["options"]
    summary = dict(base)
    complete = bool((record or base).get("complete", True))
    acc = scan(out, opts["step_s"], tuple(opts.get("v_band", (0.95, 1.05))), complete=complete)
    summary["figures"] = acc.figures()
    if acc.dropped:
        summary["dropped"] = list(acc.dropped)
    else:
        summary.pop("dropped", None)
    tm = dict(summary.get("timing") or {})
    tm.update(timing(out))
    if record is not None:
        summary["complete"] = bool(record["complete"])
        summary["steps_done"] = int(record["steps_done"])
        for k in ("interrupted", "error"):
            if k in record:
                summary[k] = record[k]
            else:
                summary.pop(k, None)
        tm.update({k: record[k] for k in ("setup_s", "wall_s") if k in record})
    summary["timing"] = tm
    return summary


# ----------------------------------------------------------------------------------------------- tables


def _value(summary: dict, key: str):
    if key in ("solve_time_s",):
        return (summary.get("timing") or {}).get(key)
    return (summary.get("figures") or {}).get(key)


def comparison_frame(summaries: dict) -> pd.DataFrame:
    """Figures (rows) x runs (columns, e.g. policies)."""
    rows = {}
    for key, label, _ in FIGURES:
        rows[label] = [_value(s, key) for s in summaries.values()]
    return pd.DataFrame(rows, index=list(summaries)).T


def table_text(summaries: dict) -> str:
    """A plain-text table of the headline figures, one column per run."""
    names = list(summaries)
    rows = [["", *names]]
    for key, label, fmt in FIGURES:
        cells = [label]
        for s in summaries.values():
            v = _value(s, key)
            cells.append("-" if v is None else (fmt.format(int(v)) if fmt == "{:d}" else fmt.format(v)))
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- comparison


def finish(out: Path, top: dict, runs: dict, plots: bool = True) -> dict:
    """The folder's summary.json, comparison.csv and policies.png from the policies' summaries `runs`."""
    out = Path(out)
    top = dict(top)
    runs = with_penalties(runs)
    top["policies_run"] = list(runs)
    top["figures"] = {name: s.get("figures", {}) for name, s in runs.items()}
    total = (top.get("timing") or {}).get("total_s")
    top["timing"] = {name: s.get("timing", {}) for name, s in runs.items()}
    if total is not None:
        top["timing"]["total_s"] = total
    top["complete"] = (bool(runs) and all(s.get("complete") for s in runs.values())
                       and list(runs) == list(top["options"]["policies"]))
    top["information_costs"] = information_costs(runs)
    frame = comparison_frame(runs)
    frame.index.name = "figure"
    frame.to_csv(out / "comparison.csv", lineterminator="\n")
    write_json(out / SUMMARY, top)
    with_steps = {n: s for n, s in runs.items() if (s.get("figures") or {}).get("steps")}
    if plots and with_steps:
        plot_policies(out, with_steps)
    return top


def with_penalties(runs: dict) -> dict:
    """`runs` with, for each grid-aware policy "<p>+grid" whose "<p>" ran too, the tracking RMSE it gave up to the
    grid limits (kW; figure tracking_rmse_penalty_kw): the same feeder, fleet and reference with and without the
    operator."""
    out = {}
    for name, s in runs.items():
        base = runs.get(name[:-len("+grid")]) if name.endswith("+grid") else None
        f, fb = (s.get("figures") or {}), ((base or {}).get("figures") or {})
        if f.get("tracking_rmse_kw") is not None and fb.get("tracking_rmse_kw") is not None:
            s = dict(s, figures=dict(f, tracking_rmse_penalty_kw=round(f["tracking_rmse_kw"]
                                                                        - fb["tracking_rmse_kw"], 4)))
        out[name] = s
    return out


def comparison_text(runs: dict) -> str:
    """The printed comparison of grid_impact's policies: their figures, then the costs of information."""
    return table_text(with_penalties(runs)) + costs_text(information_costs(runs))


# The figures an information setting is compared on: key, label, digits.
COST_FIGURES = (("tracking_rmse_kw", "tracking RMSE [kW]", 2), ("energy_shortfall_kwh", "energy shortfall [kWh]", 2),
                ("need_unmet_kwh", "need unmet [kWh]", 2), ("ev_peak_kw", "EV peak [kW]", 1),
                ("trafo_loading_max_pct", "max transformer loading [%]", 1), ("v_min_pu", "min bus voltage [pu]", 4))


def information_costs(runs: dict) -> dict:
    """{variant: {"vs": its policy without @ settings, "information": its settings, figure: variant - base}} for
    every policy with @ settings whose base policy ran too (None where a figure is missing)."""
    costs = {}
    for name, s in runs.items():
        base = Policy(name).base
        if base == name or base not in runs:
            continue
        f, fb = s.get("figures") or {}, runs[base].get("figures") or {}
        row = {"vs": base, "information": s.get("information"), "base_information": runs[base].get("information")}
        for key, _, digits in COST_FIGURES:
            a, b = f.get(key), fb.get(key)
            row[key] = None if a is None or b is None else round(a - b, digits + 2)
        costs[name] = row
    return costs


def costs_text(costs: dict) -> str:
    """The printed table of `information_costs`, figures x variants ("" without any)."""
    if not costs:
        return ""
    rows = [["information: variant minus as run", *(f"{name} - {row['vs']}" for name, row in costs.items())]]
    for key, label, digits in COST_FIGURES:
        rows.append([label, *("-" if row[key] is None else f"{row[key]:+.{digits}f}" for row in costs.values())])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n\n" + "\n".join(lines)


# ----------------------------------------------------------------------------------------------- plots

PLOTS = ("power.png", "energy.png", "voltage.png", "loading.png")
DAY_PLOTS = ("worst_day.png", "loading_heatmap.png")  # besides PLOTS, for a run longer than DAILY_AFTER_DAYS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3,
                         "svg.hashsalt": "evagg"})
    return plt


def _times(index) -> np.ndarray:
    return pd.to_datetime(pd.Index(index)).to_numpy()


def _time_axis(ax, times) -> None:
    import matplotlib.dates as mdates

    span_h = (times[-1] - times[0]) / np.timedelta64(1, "h") if len(times) > 1 else 0
    if span_h <= 30:
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    else:
        locator = mdates.AutoDateLocator(maxticks=10)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlabel("time")


def _save(fig, path) -> None:
    fig.savefig(path, dpi=100, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)


def _finish(fig, ax, times, path: Path) -> Path:
    """A one-axes plot's legend and time axis; saved at `path` (returned)."""
    if ax.get_legend_handles_labels()[0]:  # (a plot of no_evs alone has no labelled line)
        ax.legend(loc="best", fontsize=8)
    _time_axis(ax, times)
    fig.tight_layout()
    _save(fig, path)
    return path


def _title(summary: dict) -> str:
    o = summary["options"]
    return (f"{summary.get('grid', {}).get('grid', o['grid'])}, {o['evs']} EVs, {summary.get('method', o['method'])}, "
            f"{o['step_min']:g}-min steps")


def _cols(series: pd.DataFrame, prefix: str) -> dict:
    """{entity: column} of the per-entity series `prefix|entity`, entities sorted."""
    cut = len(prefix) + 1
    return {c[cut:]: c for c in sorted(series.columns) if c.startswith(prefix + "|")}


def _series_of(out, summary: dict, series: pd.DataFrame | None) -> pd.DataFrame:
    if series is not None:
        return series
    o = summary["options"]
    return scan(out, o["step_s"], tuple(o.get("v_band", (0.95, 1.05))),
                complete=bool(summary.get("complete", True))).series()


def _span_days(times: np.ndarray) -> float:
    return float((times[-1] - times[0]) / np.timedelta64(1, "D")) if len(times) > 1 else 0.0


def plot_run(out, summary: dict, series: pd.DataFrame | None = None) -> list[Path]:
    """power.png, energy.png, voltage.png, loading.png of one run (from the per-step series of `scan`); a run of
    more than DAILY_AFTER_DAYS days gets them as daily envelopes, plus worst_day.png and loading_heatmap.png."""
    out = Path(out)
    series = _series_of(out, summary, series)
    if series.empty:
        return []
    times = _times(series.index)
    if _span_days(times) > DAILY_AFTER_DAYS:
        return _plot_days(out, summary, series)
    plt = _pyplot()
    title = _title(summary)
    written = []
    t = times

    fig, ax = plt.subplots(figsize=(8, 4))
    aggs = _cols(series, "p_kw")
    if "ev_kw" in series:
        ax.step(t, series["ev_kw"], where="post", color="C0", lw=1.8, label="EVs, all aggregators")
        if series["ref_kw"].notna().any():
            ax.step(t, series["ref_kw"], where="post", color="k", lw=1.0, ls="--", label="reference")
    if len(aggs) > 1:
        for j, (name, col) in enumerate(aggs.items()):
            ax.step(t, series[col], where="post", lw=0.7, alpha=0.6, color=f"C{j + 1}", label=_agg_label(name))
    ax.axhline(0, color="0.5", lw=0.5)
    ax.set_ylabel("power [kW] (+ = drawn from the grid)")
    ax.set_title(f"Aggregate EV power vs reference: {title}")
    written.append(_finish(fig, ax, t, out / "power.png"))

    energy = _cols(series, "energy_kwh")
    soc = {q: _cols(series, f"soc_{q}") for q in ("min", "p10", "p50", "p90", "max")}
    has_soc = all(len(v) for v in soc.values())
    fig, axes = plt.subplots(2 if has_soc else 1, 1, figsize=(8, 6 if has_soc else 3.5), sharex=True, squeeze=False)
    ax = axes[0, 0]
    if energy:
        ax.plot(t, series[list(energy.values())].sum(axis=1, min_count=1), color="C0", lw=1.8,
                label="all aggregators")
    if len(energy) > 1:
        for j, (name, col) in enumerate(energy.items()):
            ax.plot(t, series[col], lw=0.8, color=f"C{j + 1}", label=_agg_label(name))
    ax.set_ylabel("energy in plugged EVs [kWh]")
    ax.set_title(f"Fleet energy: {title}")
    if energy:
        ax.legend(loc="best", fontsize=8)
    if has_soc:
        ax = axes[1, 0]
        for j, name in enumerate(soc["p50"]):
            lo_, hi_ = series[soc["min"][name]], series[soc["max"][name]]
            ax.fill_between(t, lo_, hi_, color=f"C{j + 1}", alpha=0.12, lw=0)
            ax.fill_between(t, series[soc["p10"][name]], series[soc["p90"][name]], color=f"C{j + 1}", alpha=0.3,
                            lw=0, label=f"{_agg_label(name)}: 10-90 % of EVs (light: min-max)")
            ax.plot(t, series[soc["p50"][name]], color=f"C{j + 1}", lw=1.2, label=f"{_agg_label(name)}: median EV")
        ax.set_ylabel("state of charge of plugged EVs [%]")
        ax.set_ylim(0, 100)
        ax.legend(loc="best", fontsize=7)
    else:
        ax.text(0.01, 0.02, "no state-of-charge spread recorded (aggregators in their own processes)",
                transform=ax.transAxes, fontsize=7, color="0.4")
    _time_axis(axes[-1, 0], t)
    fig.tight_layout()
    _save(fig, out / "energy.png")
    written.append(out / "energy.png")

    lo, hi = summary["options"].get("v_band", (0.95, 1.05))
    fig, ax = plt.subplots(figsize=(8, 4))
    if "vm_min" in series:
        ax.fill_between(t, series["vm_min"], series["vm_max"], color="C0", alpha=0.3, lw=0,
                        label="all buses: min-max")
        ax.plot(t, series["vm_med"], color="C0", lw=1.0, label="median bus")
        ax.plot(t, series["vm_min"], color="C3", lw=1.0, label="lowest bus")
    for v in (lo, hi):
        ax.axhline(v, color="k", ls="--", lw=0.8)
    ax.set_ylabel("voltage [pu]")
    ax.set_title(f"Bus voltages ({lo:g}-{hi:g} pu band dashed): {title}")
    written.append(_finish(fig, ax, t, out / "voltage.png"))

    fig, ax = plt.subplots(figsize=(8, 4))
    if "line_max" in series:
        ax.fill_between(t, series["line_med"], series["line_max"], color="C1", alpha=0.25, lw=0,
                        label="lines: median-max")
        ax.plot(t, series["line_max"], color="C1", lw=1.2, label="most loaded line")
    for j, (name, col) in enumerate(_cols(series, "trafo").items()):
        ax.plot(t, series[col], color=f"C{(j + 4) % 10}", lw=1.6, label=_short(name))
    ax.axhline(100, color="k", ls="--", lw=0.8)
    ax.set_ylabel("loading [%]")
    ax.set_title(f"Line and transformer loading: {title}")
    written.append(_finish(fig, ax, t, out / "loading.png"))
    return written


def _daily(series: pd.Series, times: np.ndarray) -> pd.DataFrame:
    """Daily min, mean and max of a per-step series (index: the days)."""
    s = pd.Series(series.to_numpy(dtype=float), index=pd.DatetimeIndex(times))
    return s.resample("D").agg(["min", "mean", "max"]).dropna(how="all")


def _envelope(ax, daily: pd.DataFrame, color: str, label: str, mean: bool = True) -> None:
    days = daily.index.to_numpy()
    ax.fill_between(days, daily["min"], daily["max"], color=color, alpha=0.25, lw=0, label=f"{label}: daily min-max")
    if mean:
        ax.plot(days, daily["mean"], color=color, lw=1.0, label=f"{label}: daily mean")


def _worst_day(series: pd.DataFrame, times: np.ndarray):
    """The day of the highest transformer loading (else line loading, else the lowest voltage)."""
    idx = pd.DatetimeIndex(times)
    for col, larger in (("trafo_max", True), ("line_max", True), ("vm_min", False)):
        if col in series and series[col].notna().any():
            values = series[col].to_numpy(dtype=float)
            k = int(np.nanargmax(values) if larger else np.nanargmin(values))
            return idx[k].normalize(), col
    return idx[0].normalize(), None


def _plot_days(out: Path, summary: dict, series: pd.DataFrame) -> list[Path]:
    """The plots of a long run: daily envelopes (power, energy, voltage, loading), the worst day in steps and a
    heat map of the transformer loading by day and hour."""
    plt = _pyplot()
    title = _title(summary)
    times = _times(series.index)
    lo, hi = summary["options"].get("v_band", (0.95, 1.05))
    written = []

    def save(fig, ax, name, ylabel, head, days=None):
        ax.set_ylabel(ylabel)
        ax.set_title(f"{head}: {title}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
        _time_axis(ax, days if days is not None else times)
        fig.tight_layout()
        _save(fig, out / name)
        written.append(out / name)

    fig, ax = plt.subplots(figsize=(10, 4))
    if "ev_kw" in series:
        _envelope(ax, _daily(series["ev_kw"], times), "C0", "EVs")
        if series["ref_kw"].notna().any():
            ref = _daily(series["ref_kw"], times)
            ax.plot(ref.index.to_numpy(), ref["mean"], color="k", lw=0.8, ls="--", label="reference: daily mean")
    ax.axhline(0, color="0.5", lw=0.5)
    save(fig, ax, "power.png", "power [kW] (+ = drawn from the grid)", "Aggregate EV power by day")

    fig, ax = plt.subplots(figsize=(10, 4))
    energy = _cols(series, "energy_kwh")
    if energy:
        _envelope(ax, _daily(series[list(energy.values())].sum(axis=1, min_count=1), times), "C0",
                  "energy in plugged EVs")
    save(fig, ax, "energy.png", "energy in plugged EVs [kWh]", "Fleet energy by day")

    fig, ax = plt.subplots(figsize=(10, 4))
    if "vm_min" in series:
        low, high = _daily(series["vm_min"], times), _daily(series["vm_max"], times)
        days = low.index.to_numpy()
        ax.fill_between(days, low["min"], high["max"], color="C0", alpha=0.25, lw=0, label="all buses: daily min-max")
        ax.plot(days, low["min"], color="C3", lw=1.0, label="lowest bus: daily min")
    for v in (lo, hi):
        ax.axhline(v, color="k", ls="--", lw=0.8)
    save(fig, ax, "voltage.png", "voltage [pu]", f"Bus voltages by day ({lo:g}-{hi:g} pu band dashed)")

    fig, ax = plt.subplots(figsize=(10, 4))
    if "line_max" in series:
        _envelope(ax, _daily(series["line_max"], times), "C1", "most loaded line")
    if "trafo_max" in series:
        tr = _daily(series["trafo_max"], times)
        ax.plot(tr.index.to_numpy(), tr["max"], color="C4", lw=1.4, label="most loaded transformer: daily max")
    ax.axhline(100, color="k", ls="--", lw=0.8)
    save(fig, ax, "loading.png", "loading [%]", "Line and transformer loading by day")

    day, by = _worst_day(series, times)
    on_day = (times >= day.to_datetime64()) & (times < (day + pd.Timedelta(days=1)).to_datetime64())
    sub, ts = series[on_day], times[on_day]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    if "ev_kw" in sub:
        axes[0].step(ts, sub["ev_kw"], where="post", color="C0", lw=1.5, label="EVs")
        if sub["ref_kw"].notna().any():
            axes[0].step(ts, sub["ref_kw"], where="post", color="k", lw=0.8, ls="--", label="reference")
    axes[0].set_ylabel("EV power [kW]")
    if "vm_min" in sub:
        axes[1].plot(ts, sub["vm_min"], color="C3", lw=1.2, label="lowest bus")
    axes[1].axhline(lo, color="k", ls="--", lw=0.8)
    axes[1].set_ylabel("voltage [pu]")
    if "line_max" in sub:
        axes[2].plot(ts, sub["line_max"], color="C1", lw=1.2, label="most loaded line")
    if "trafo_max" in sub:
        axes[2].plot(ts, sub["trafo_max"], color="C4", lw=1.4, label="most loaded transformer")
    axes[2].axhline(100, color="k", ls="--", lw=0.8)
    axes[2].set_ylabel("loading [%]")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    if len(ts):
        _time_axis(axes[2], ts)
    what = {"trafo_max": "the highest transformer loading", "line_max": "the highest line loading",
            "vm_min": "the lowest voltage"}.get(by, "the first day")
    fig.suptitle(f"The worst day, {day:%Y-%m-%d} ({what}): {title}")
    fig.tight_layout()
    _save(fig, out / "worst_day.png")
    written.append(out / "worst_day.png")

    col = "trafo_max" if "trafo_max" in series else ("line_max" if "line_max" in series else None)
    fig, ax = plt.subplots(figsize=(10, 4))
    if col is not None:
        idx = pd.DatetimeIndex(times)
        grid = (pd.DataFrame({"day": idx.normalize(), "hour": idx.hour, "v": series[col].to_numpy(dtype=float)})
                .pivot_table(index="hour", columns="day", values="v", aggfunc="max")
                .reindex(index=range(24)))
        import matplotlib.dates as mdates

        days = mdates.date2num(grid.columns.to_pydatetime())
        extent = (days[0], days[-1] + 1, 0, 24)
        im = ax.imshow(grid.to_numpy(), aspect="auto", origin="lower", extent=extent, cmap="magma_r",
                       interpolation="nearest")
        fig.colorbar(im, ax=ax, label=f"{'transformer' if col == 'trafo_max' else 'line'} loading, hourly max [%]")
        ax.xaxis_date()
        ax.set_yticks(range(0, 25, 6))
        ax.grid(False)
    ax.set_ylabel("hour of the day")
    ax.set_title(f"Loading by day and hour: {title}")
    fig.tight_layout()
    _save(fig, out / "loading_heatmap.png")
    written.append(out / "loading_heatmap.png")
    return written


def plot_policies(out, runs: dict, series: dict | None = None) -> Path:
    """policies.png: the policies side by side (EV power, lowest voltage, most loaded line, transformer); a run
    of more than DAILY_AFTER_DAYS days as daily means (power) and daily extremes (voltage, loading)."""
    out = Path(out)
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    first = next(iter(runs.values()))
    lo, hi = first["options"].get("v_band", (0.95, 1.05))
    t = None
    for j, (name, summary) in enumerate(runs.items()):
        sr = _series_of(out / name, summary, None if series is None else series[name])
        if sr.empty:
            continue
        t = _times(sr.index)
        daily = _span_days(t) > DAILY_AFTER_DAYS

        def show(ax, col, how, **kw):
            if col not in sr or not sr[col].notna().any():
                return
            if daily:
                d = _daily(sr[col], t)
                ax.plot(d.index.to_numpy(), d[how], **kw)
            elif "ls" in kw or col == "ev_kw":
                ax.step(t, sr[col], where="post", **kw)
            else:
                ax.plot(t, sr[col], **kw)

        color = f"C{j}"
        show(axes[0, 0], "ev_kw", "mean", color=color, lw=1.3, label=name)
        if j == 0:
            show(axes[0, 0], "ref_kw", "mean", color="k", lw=0.8, ls="--", label="reference")
        show(axes[0, 1], "vm_min", "min", color=color, lw=1.3, label=name)
        show(axes[1, 0], "line_max", "max", color=color, lw=1.3, label=name)
        show(axes[1, 1], "trafo_max", "max", color=color, lw=1.3, label=name)
    daily = t is not None and _span_days(t) > DAILY_AFTER_DAYS
    axes[0, 0].set_ylabel("aggregate EV power [kW]" + (" (daily mean)" if daily else ""))
    axes[0, 1].set_ylabel("lowest bus voltage [pu]" + (" (daily min)" if daily else ""))
    axes[0, 1].axhline(lo, color="k", ls="--", lw=0.8)
    axes[1, 0].set_ylabel("most loaded line [%]" + (" (daily max)" if daily else ""))
    axes[1, 1].set_ylabel("most loaded transformer [%]" + (" (daily max)" if daily else ""))
    for ax in axes.ravel():
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    if t is not None:
        for ax in axes[1]:
            _time_axis(ax, t)
    fig.suptitle(f"Grid impact of the dispatch policies: {first.get('grid', {}).get('grid', '')}, "
                 f"{first['options']['evs']} EVs, {first['options']['step_min']:g}-min steps")
    fig.tight_layout()
    path = out / "policies.png"
    _save(fig, path)
    return path


# ----------------------------------------------------------------------------------------------- report DIR


def remake(out) -> str:
    """Re-make the figures, plots and tables of a results folder from its tables; returns the summary table text."""
    out = Path(out)
    if not out.is_dir():
        raise ScenarioError(f"{out}: no such folder")
    if not (out / SUMMARY).is_file():
        raise ScenarioError(f"{out}: no {SUMMARY}: not an evagg results folder")
    summary = _read_summary(out)
    if summary.get("scenario") == "grid_impact":
        if not isinstance(summary.get("options"), dict) or not isinstance(summary["options"].get("policies"), list):
            raise ScenarioError(f"{out / SUMMARY}: has no options.policies: the summary is damaged; run the study "
                                "again")
        runs = {}
        for name in summary.get("policies_run") or []:
            sub = out / str(name)
            if results_file(sub) is not None and (sub / SUMMARY).is_file():
                runs[name] = _remake_run(sub)
        if not runs:
            raise ScenarioError(f"{out}: no policy has results yet")
        summary = finish(out, summary, runs)
        return comparison_text(runs)
    summary = _remake_run(out)
    return table_text({summary.get("method", "run"): summary})


# what `evagg report` needs of a run's options (written by `evagg run` before its first step)
_NEEDED = {"step_s": (int, float), "step_min": (int, float), "evs": int, "grid": str, "method": str}


def _read_summary(out: Path) -> dict:
    """A folder's summary.json, checked to be one written by `evagg run` (written atomically when a run starts,
    so a missing or unreadable one is not a run's doing); ScenarioError otherwise, in one line."""
    path = out / SUMMARY
    try:
        summary = read_json(path)
    except UnicodeDecodeError:
        raise ScenarioError(f"{path}: not UTF-8 text: not the summary of an evagg run") from None
    except ValueError as exc:
        raise ScenarioError(f"{path}: not valid JSON ({exc}); it holds the run's options, without which the "
                            "folder cannot be reported: run it again") from None
    if not isinstance(summary, dict):
        raise ScenarioError(f"{path}: holds a {type(summary).__name__}, not the summary of an evagg run")
    return summary


def _remake_run(out: Path) -> dict:
    old = _read_summary(out)
    options = old.get("options")
    if not isinstance(options, dict):
        raise ScenarioError(f"{out / SUMMARY}: has no options: not an evagg results folder")
    for key, kind in _NEEDED.items():
        if not isinstance(options.get(key), kind) or isinstance(options.get(key), bool):
            raise ScenarioError(f"{out / SUMMARY}: options.{key} is {options.get(key)!r}, not what evagg run "
                                "writes: the summary is damaged; run the study again")
    summary = summarize(out, old)
    if not summary["figures"]["steps"]:
        raise ScenarioError(f"{_results_path(out)}: has no steps")
    write_json(out / SUMMARY, summary)
    plot_run(out, summary)
    return summary
