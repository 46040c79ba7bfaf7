"""Headline figures, plots and tables of a results folder (`evagg report DIR` re-makes them from the folder).

Every figure is computed from the tidy results table (results.csv) alone, so that summary.json cannot drift from
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
  limited_steps          steps in which a grid limit was binding on some aggregator (grid-aware policies)
  loop_iterations_max    grid-aware, iterative coupling: the most power flows the operator saw in one step
                         (loop_iterations_median: their median), and loop_capped_steps: steps that hit its cap
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from evagg.simulators.collector import read_table

from .errors import ScenarioError
from .folder import RESULTS, SUMMARY, TIMING, read_json, write_json

__all__ = ["figures", "summarize", "plot_run", "plot_policies", "table_text", "comparison_frame", "finish",
           "with_penalties", "remake", "FIGURES", "wide"]

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
    ("limited_steps", "steps with a binding limit", "{:d}"),
    ("loop_iterations_max", "same-step loop: max iterations", "{:d}"),
    ("loop_capped_steps", "same-step loop: capped steps", "{:d}"),
    ("solve_time_s", "solve time [s]", "{:.2f}"),
)

_KIND = re.compile(r"\.([A-Za-z0-9]+)-")


def kind_of(entity: str) -> str:
    """The model of a full entity id: 'Grid-0.Bus-5' -> 'Bus', 'EVAgg-1.Aggregator-0' -> 'Aggregator'."""
    m = _KIND.search(entity)
    return m.group(1) if m else ""


def read_results(out) -> pd.DataFrame:
    path = Path(out) / RESULTS
    if not path.is_file():
        raise ScenarioError(f"{out}: no {RESULTS} (not a results folder, or the run never started)")
    table = read_table(path)
    table["kind"] = table["entity"].map(kind_of)
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


def figures(table: pd.DataFrame, step_s: float, v_band=(0.95, 1.05)) -> dict:
    """The headline figures of a results table (see the module doc). Values are rounded for reading."""
    dt_h = float(step_s) / 3600.0
    times = sorted(table["time"].unique())
    f: dict = {"steps": len(times)}
    vm = wide(table, "Bus", "Vm[pu]")
    v_min, bus_min, t_min = _where(vm, np.nanargmin)
    v_max, bus_max, t_max = _where(vm, np.nanargmax)
    lo, hi = v_band
    outside = (vm < lo) | (vm > hi)
    f.update(
        v_min_pu=_r(v_min, 6), v_min_at=[bus_min, t_min], v_max_pu=_r(v_max, 6), v_max_at=[bus_max, t_max],
        v_band_pu=[lo, hi], voltage_violations=int(outside.to_numpy().sum()),
        buses_violating=int(outside.any(axis=0).sum()),
    )
    lines, trafos = wide(table, "Line", "loading[%]"), wide(table, "Transformer", "loading[%]")
    line_max, line, t_line = _where(lines, np.nanargmax)
    trafo_max, trafo, t_trafo = _where(trafos, np.nanargmax)
    f.update(line_overload_steps=int((lines > 100.0).any(axis=1).sum()),
             trafo_overload_steps=int((trafos > 100.0).any(axis=1).sum()))
    ext = wide(table, "ExternalGrid", "P[MW]").sum(axis=1, min_count=1)
    f.update(line_loading_max_pct=_r(line_max, 4), line_loading_max_at=[line, t_line],
             trafo_loading_max_pct=_r(trafo_max, 4), trafo_loading_max_at=[trafo, t_trafo],
             feeder_import_max_mw=_r(float(ext.max()) if len(ext) else None, 6))
    p = wide(table, "Aggregator", "P[MW]")
    p_kw = p.sum(axis=1) * 1000.0
    ref = wide(table, "Aggregator", "P_ref[MW]").reindex(index=p.index, columns=p.columns)
    tracked = ref.notna().all(axis=1) & (len(ref.columns) > 0)
    err = (p_kw - ref.sum(axis=1) * 1000.0)[tracked]
    shortfall = wide(table, "Aggregator", "shortfall[MWh]")
    f.update(
        aggregators=int(p.shape[1]),
        ev_peak_kw=_r(float(p_kw.max()) if len(p_kw) else None, 3),
        ev_min_kw=_r(float(p_kw.min()) if len(p_kw) else None, 3),
        ev_energy_kwh=_r(float(p_kw.sum() * dt_h), 3),
        tracking_rmse_kw=_r(float(np.sqrt(np.mean(err.to_numpy() ** 2))) if len(err) else None, 4),
        tracked_steps=int(tracked.sum()),
        energy_shortfall_kwh=_r(float(shortfall.ffill().iloc[-1].sum() * 1000.0) if len(shortfall) else 0.0, 4),
    )
    unmet = wide(table, "Aggregator", "need_unmet[MWh]")
    limited = wide(table, "Aggregator", "limited")
    f.update(need_unmet_kwh=_r(float(unmet.ffill().iloc[-1].sum() * 1000.0) if len(unmet) else 0.0, 4),
             limited_steps=int((limited > 0).any(axis=1).sum()) if len(limited) else 0)
    loops = wide(table, "Operator", "iterations").max(axis=1)
    capped = wide(table, "Operator", "capped")
    iterative = len(capped) > 0  # the operator reports `capped` in the iterative coupling only
    f.update(loop_iterations_max=int(loops.max()) if iterative else None,
             loop_iterations_median=float(loops.median()) if iterative else None,
             loop_capped_steps=int((capped > 0).any(axis=1).sum()) if iterative else None)
    return f


def _r(value, digits):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return round(float(value), digits)


def timing(out) -> dict:
    """Solve time from timing.csv (s): the aggregators' summed wall time over the run, and the longest step."""
    path = Path(out) / TIMING
    if not path.is_file():
        return {"solve_time_s": None, "solve_time_max_step_s": None}
    t = read_table(path)
    t = t[t["attribute"] == "solve_time[s]"]
    per_step = t.groupby("time")["value"].sum()
    return {"solve_time_s": round(float(t["value"].sum()), 4),
            "solve_time_max_step_s": round(float(per_step.max()), 4) if len(per_step) else None}


def summarize(out, base: dict, record: dict | None = None) -> dict:
    """summary.json's content: `base` (scenario, options, grid, ...) + figures + timing (+ the run's record)."""
    out = Path(out)
    opts = base["options"]
    summary = dict(base)
    table = read_results(out)
    summary["figures"] = figures(table, opts["step_s"], tuple(opts.get("v_band", (0.95, 1.05))))
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


# ----------------------------------------------------------------------------------------------- plots

PLOTS = ("power.png", "energy.png", "voltage.png", "loading.png")


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
    ax.legend(loc="best", fontsize=8)
    _time_axis(ax, times)
    fig.tight_layout()
    _save(fig, path)
    return path


def _title(summary: dict) -> str:
    o = summary["options"]
    return (f"{summary.get('grid', {}).get('grid', o['grid'])}, {o['evs']} EVs, {summary.get('method', o['method'])}, "
            f"{o['step_min']:g}-min steps")


def plot_run(out, summary: dict, table: pd.DataFrame | None = None) -> list[Path]:
    """power.png, energy.png, voltage.png, loading.png of one run."""
    out = Path(out)
    plt = _pyplot()
    table = read_results(out) if table is None else table
    title = _title(summary)
    written = []

    p = wide(table, "Aggregator", "P[MW]") * 1000.0
    t = _times(p.index)
    fig, ax = plt.subplots(figsize=(8, 4))
    ref = wide(table, "Aggregator", "P_ref[MW]").reindex(index=p.index, columns=p.columns) * 1000.0
    ax.step(t, p.sum(axis=1), where="post", color="C0", lw=1.8, label="EVs, all aggregators")
    if ref.notna().any().any():
        ax.step(t, ref.sum(axis=1, min_count=1), where="post", color="k", lw=1.0, ls="--", label="reference")
    if p.shape[1] > 1:
        for j, col in enumerate(p.columns):
            ax.step(t, p[col], where="post", lw=0.7, alpha=0.6, color=f"C{j + 1}", label=_agg_label(col))
    ax.axhline(0, color="0.5", lw=0.5)
    ax.set_ylabel("power [kW] (+ = drawn from the grid)")
    ax.set_title(f"Aggregate EV power vs reference: {title}")
    written.append(_finish(fig, ax, t, out / "power.png"))

    energy = wide(table, "Aggregator", "energy[MWh]") * 1000.0
    soc = {q: wide(table, "Aggregator", f"soc_{q}[%]") for q in ("min", "p10", "p50", "p90", "max")}
    has_soc = all(len(v.columns) for v in soc.values())
    fig, axes = plt.subplots(2 if has_soc else 1, 1, figsize=(8, 6 if has_soc else 3.5), sharex=True, squeeze=False)
    ax = axes[0, 0]
    te = _times(energy.index)
    ax.plot(te, energy.sum(axis=1), color="C0", lw=1.8, label="all aggregators")
    if energy.shape[1] > 1:
        for j, col in enumerate(energy.columns):
            ax.plot(te, energy[col], lw=0.8, color=f"C{j + 1}", label=_agg_label(col))
    ax.set_ylabel("energy in plugged EVs [kWh]")
    ax.set_title(f"Fleet energy: {title}")
    ax.legend(loc="best", fontsize=8)
    if has_soc:
        ax = axes[1, 0]
        for j, col in enumerate(soc["p50"].columns):
            idx = soc["p50"].index
            ts = _times(idx)
            ax.fill_between(ts, soc["min"][col].reindex(idx), soc["max"][col].reindex(idx), color=f"C{j + 1}",
                            alpha=0.12, lw=0)
            ax.fill_between(ts, soc["p10"][col].reindex(idx), soc["p90"][col].reindex(idx), color=f"C{j + 1}",
                            alpha=0.3, lw=0, label=f"{_agg_label(col)}: 10-90 % of EVs (light: min-max)")
            ax.plot(ts, soc["p50"][col], color=f"C{j + 1}", lw=1.2, label=f"{_agg_label(col)}: median EV")
        ax.set_ylabel("state of charge of plugged EVs [%]")
        ax.set_ylim(0, 100)
        ax.legend(loc="best", fontsize=7)
    else:
        ax.text(0.01, 0.02, "no state-of-charge spread recorded (aggregators in their own processes)",
                transform=ax.transAxes, fontsize=7, color="0.4")
    _time_axis(axes[-1, 0], te)
    fig.tight_layout()
    _save(fig, out / "energy.png")
    written.append(out / "energy.png")

    vm = wide(table, "Bus", "Vm[pu]")
    tv = _times(vm.index)
    lo, hi = summary["options"].get("v_band", (0.95, 1.05))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.fill_between(tv, vm.min(axis=1), vm.max(axis=1), color="C0", alpha=0.3, lw=0, label="all buses: min-max")
    ax.plot(tv, vm.median(axis=1), color="C0", lw=1.0, label="median bus")
    ax.plot(tv, vm.min(axis=1), color="C3", lw=1.0, label="lowest bus")
    for v in (lo, hi):
        ax.axhline(v, color="k", ls="--", lw=0.8)
    ax.set_ylabel("voltage [pu]")
    ax.set_title(f"Bus voltages ({lo:g}-{hi:g} pu band dashed): {title}")
    written.append(_finish(fig, ax, tv, out / "voltage.png"))

    lines = wide(table, "Line", "loading[%]")
    trafo = wide(table, "Transformer", "loading[%]")
    fig, ax = plt.subplots(figsize=(8, 4))
    if len(lines.columns):
        tl = _times(lines.index)
        ax.fill_between(tl, lines.median(axis=1), lines.max(axis=1), color="C1", alpha=0.25, lw=0,
                        label="lines: median-max")
        ax.plot(tl, lines.max(axis=1), color="C1", lw=1.2, label="most loaded line")
    for j, col in enumerate(trafo.columns):
        ax.plot(_times(trafo.index), trafo[col], color=f"C{(j + 4) % 10}", lw=1.6, label=_short(col))
    ax.axhline(100, color="k", ls="--", lw=0.8)
    ax.set_ylabel("loading [%]")
    ax.set_title(f"Line and transformer loading: {title}")
    written.append(_finish(fig, ax, _times(lines.index if len(lines.columns) else trafo.index),
                           out / "loading.png"))
    return written


def plot_policies(out, runs: dict, tables: dict | None = None) -> Path:
    """policies.png: the policies side by side (EV power, lowest voltage, most loaded line, transformer)."""
    out = Path(out)
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    first = next(iter(runs.values()))
    lo, hi = first["options"].get("v_band", (0.95, 1.05))
    t = None
    for j, (name, summary) in enumerate(runs.items()):
        table = read_results(out / name) if tables is None else tables[name]
        p = wide(table, "Aggregator", "P[MW]").sum(axis=1) * 1000.0
        t = _times(p.index)
        color = f"C{j}"
        axes[0, 0].step(t, p, where="post", color=color, lw=1.3, label=name)
        if j == 0:
            ref = wide(table, "Aggregator", "P_ref[MW]").sum(axis=1, min_count=1) * 1000.0
            if ref.notna().any():
                axes[0, 0].step(_times(ref.index), ref, where="post", color="k", lw=0.8, ls="--", label="reference")
        vm = wide(table, "Bus", "Vm[pu]")
        axes[0, 1].plot(_times(vm.index), vm.min(axis=1), color=color, lw=1.3, label=name)
        lines = wide(table, "Line", "loading[%]")
        if len(lines.columns):
            axes[1, 0].plot(_times(lines.index), lines.max(axis=1), color=color, lw=1.3, label=name)
        trafo = wide(table, "Transformer", "loading[%]")
        if len(trafo.columns):
            axes[1, 1].plot(_times(trafo.index), trafo.max(axis=1), color=color, lw=1.3, label=name)
    axes[0, 0].set_ylabel("aggregate EV power [kW]")
    axes[0, 1].set_ylabel("lowest bus voltage [pu]")
    axes[0, 1].axhline(lo, color="k", ls="--", lw=0.8)
    axes[1, 0].set_ylabel("most loaded line [%]")
    axes[1, 1].set_ylabel("most loaded transformer [%]")
    for ax in axes.ravel():
        ax.legend(loc="best", fontsize=8)
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
    try:
        summary = read_json(out / SUMMARY)
    except ValueError as exc:
        raise ScenarioError(f"{out / SUMMARY}: not valid JSON ({exc})") from None
    if summary.get("scenario") == "grid_impact":
        runs = {}
        for name in summary.get("policies_run", []):
            sub = out / name
            if (sub / RESULTS).is_file() and (sub / SUMMARY).is_file():
                runs[name] = _remake_run(sub)
        if not runs:
            raise ScenarioError(f"{out}: no policy has results yet")
        summary = finish(out, summary, runs)
        return table_text(runs)
    summary = _remake_run(out)
    return table_text({summary.get("method", "run"): summary})


def _remake_run(out: Path) -> dict:
    old = read_json(out / SUMMARY)
    if "options" not in old:
        raise ScenarioError(f"{out / SUMMARY}: has no options: not an evagg results folder")
    table = read_results(out)
    if table.empty:
        raise ScenarioError(f"{out}: {RESULTS} has no steps")
    summary = summarize(out, old)
    write_json(out / SUMMARY, summary)
    plot_run(out, summary, table)
    return summary
