"""Long runs: the grid's recycled power flow, a run across New Year, Parquet results as the run goes, and the
figures and plots computed from chunks of whole steps (as a year is read), on small runs."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("simbench")
pytest.importorskip("mosaik_components.pandapower")

from evagg.plugin.pandapower_grid import SimbenchGridSim  # noqa: E402
from evagg.scenarios import feeder_day, report  # noqa: E402
from evagg.scenarios.cli import main  # noqa: E402
from evagg.scenarios.inputs import build_fleet  # noqa: E402
from evagg.scenarios.options import Options  # noqa: E402
from evagg.simulators.collector import TidyTable, iter_table, read_table  # noqa: E402
from evagg.simulators.grids import load_grid, profile_rows  # noqa: E402

from nets import radial_net  # noqa: E402

SMALL = dict(evs=12, aggregators=2, steps=8, start="2026-01-14T18:00:00", seed=4, plots=False)


def summary_of(out) -> dict:
    return json.loads((Path(out) / "summary.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same seeded run with its results in CSV and in Parquet."""
    base = tmp_path_factory.mktemp("long")
    out = {}
    for fmt in ("csv", "parquet"):
        out[fmt] = base / fmt
        feeder_day.main(out=str(out[fmt]), results_format=fmt, **SMALL)
    return out


def _grid_sim(recycle: bool) -> SimbenchGridSim:
    sim = SimbenchGridSim()
    sim.init("Grid", time_resolution=1.0, step_size=900)
    sim.create(1, "Grid", net=radial_net())
    sim.setup_done()
    sim.recycle = recycle
    return sim


def test_recycled_power_flow_equals_a_fresh_one_each_step():
    """Loads changing every step (also to and from 0 and into generation): the recycled set-up gives the bus
    voltages, line and transformer loadings of a power flow set up from scratch, to the solver's tolerance."""
    rng = np.random.default_rng(7)
    sims = {r: _grid_sim(r) for r in (True, False)}
    for k in range(8):
        p = rng.uniform(-0.02, 0.06, size=4)
        p[k % 4] = 0.0
        inputs = {f"Bus-{b}": {"P_load[MW]": {"src": float(v)}} for b, v in zip((2, 3, 4, 5), p)}
        for sim in sims.values():
            assert sim.step(k * 900, inputs, 10**9) == (k + 1) * 900
        new, old = sims[True]._net, sims[False]._net
        # Newton-Raphson stops at a power mismatch of 1e-8 MVA (pandapower's tolerance_mva): on this weak 0.4 kV
        # feeder near 0.9 pu each solution is that close, about 1e-8 pu, to the exact one; 1e-7 pu is the bound.
        np.testing.assert_allclose(new.res_bus.vm_pu, old.res_bus.vm_pu, rtol=0, atol=1e-7)
        np.testing.assert_allclose(new.res_line.loading_percent, old.res_line.loading_percent, rtol=0, atol=1e-5)
        np.testing.assert_allclose(new.res_trafo.loading_percent, old.res_trafo.loading_percent, rtol=0, atol=1e-5)
        np.testing.assert_allclose(new.res_ext_grid.p_mw, old.res_ext_grid.p_mw, rtol=0, atol=1e-8)
        assert new.load.p_mw.sum() == pytest.approx(p.sum() + old.load.p_mw.iloc[:4].sum())  # the inputs arrived
    assert sims[True]._net["_ppc"] is not None  # the set-up is kept between steps


def test_switching_an_element_sets_the_power_flow_up_afresh():
    sim = _grid_sim(True)
    sim.step(0, {}, 10**9)
    vm_on = sim._net.res_bus.vm_pu.copy()
    sim.disable_elements(["Load-0"])
    assert sim._net["_ppc"] is None
    sim.step(900, {}, 10**9)
    fresh = _grid_sim(False)
    fresh.disable_elements(["Load-0"])
    fresh.step(0, {}, 10**9)
    np.testing.assert_allclose(sim._net.res_bus.vm_pu, fresh._net.res_bus.vm_pu, rtol=0, atol=1e-8)
    assert not np.allclose(sim._net.res_bus.vm_pu, vm_on, rtol=0, atol=1e-7)  # the load is gone


def test_a_run_across_new_year(tmp_path):
    """31 Dec 22:00 for 12 quarter hours: the grid's profiles go on at the first row of their year, the fleet has
    sessions on both dates, and the run completes."""
    opts = dict(SMALL, start="2026-12-31T22:00:00", steps=12, aggregators=1)
    out = tmp_path / "ny"
    summary = feeder_day.main(out=str(out), **opts)
    assert summary["complete"] and summary["figures"]["steps"] == 12
    table = read_table(out / "results.csv")
    times = sorted(table["time"].unique())
    assert times[0] == "2026-12-31T22:00:00" and times[-1] == "2027-01-01T00:45:00"
    # The grid reads 2027-01-01 00:00 at simbench's first row, the quarter hour before at its last.
    feeder = load_grid(Options.make(**opts).grid)
    assert profile_rows(np.datetime64("2026-12-31T22:00:00"), 2 * 3600, 900, feeder.n_rows).tolist() == [0]
    assert profile_rows(np.datetime64("2026-12-31T22:00:00"), 2 * 3600 - 900, 900, feeder.n_rows).tolist() == [
        feeder.n_rows - 1]
    ext = table[(table["attribute"] == "P[MW]") & table["entity"].str.contains(".ExternalGrid-", regex=False)]
    assert ext["value"].notna().all() and len(ext) == 12
    # The synthetic fleet of a period across New Year plugs in on both sides of it.
    two_days = Options.make(evs=30, aggregators=1, start="2026-12-31T12:00:00", days=2)
    arrivals = pd.to_datetime(build_fleet(two_days, 0, 30, feeder.load_buses).arrival)
    assert (arrivals < "2027-01-01").any() and (arrivals >= "2027-01-01").any() and arrivals.max() >= pd.Timestamp("2027-01-02")
    plugged = table[table["attribute"] == "n_plugged"].set_index("time")["value"]
    assert plugged.loc["2027-01-01T00:45:00"] > 0


def test_parquet_results_equal_the_csv_results(runs):
    csv, parquet = (read_table(runs[f] / n) for f, n in (("csv", "results.csv"), ("parquet", "results.parquet")))
    assert not (runs["parquet"] / "results.csv").exists() and not (runs["csv"] / "results.parquet").exists()
    assert len(csv) > 0
    pd.testing.assert_frame_equal(csv, parquet)
    a, b = summary_of(runs["csv"]), summary_of(runs["parquet"])
    assert a["figures"] == b["figures"]
    assert a["options"]["results_format"] == "csv" and b["options"]["results_format"] == "parquet"


def test_parquet_row_groups_are_written_as_the_run_goes(tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    table = TidyTable(path, row_group_rows=3)
    for k in range(5):
        table.add_step(k, [("a", "x", float(k)), ("b", "x", -float(k))])
    assert table.n_rows == 8  # two row groups of two steps written, the fifth step buffered
    table.close()
    assert pq.ParquetFile(str(path)).metadata.num_row_groups == 3
    assert read_table(path)["value"].tolist() == [v for k in range(5) for v in (k, -k)]


def test_chunks_hold_whole_steps(runs):
    whole = read_table(runs["parquet"] / "results.parquet")
    for fmt, name in (("csv", "results.csv"), ("parquet", "results.parquet")):
        for rows, n_chunks in ((37, SMALL["steps"]), (700, None)):  # fewer rows than a step has: a step each
            chunks = list(iter_table(runs[fmt] / name, rows=rows))
            assert len(chunks) == n_chunks if n_chunks else 1 < len(chunks) < SMALL["steps"]
            times = [set(c["time"]) for c in chunks]
            assert all(not (a & b) for i, a in enumerate(times) for b in times[i + 1:])  # no step split
            pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), whole)


def test_streaming_figures_and_series_equal_the_in_memory_ones(runs):
    out = runs["csv"]
    o = summary_of(out)["options"]
    band = tuple(o["v_band"])
    whole = report.figures(read_table(out / "results.csv"), o["step_s"], band)
    for fmt, rows in (("csv", 41), ("parquet", 97), ("csv", 10**6)):
        acc = report.scan(runs[fmt], o["step_s"], band, rows=rows)
        assert acc.figures() == whole
        one = report.Scan(o["step_s"], band)
        one.add(report.read_results(out))
        pd.testing.assert_frame_equal(acc.series(), one.series())
    assert whole == summary_of(out)["figures"]
    assert whole["steps"] == SMALL["steps"] and whole["ev_peak_kw"] > 0


def test_evagg_report_on_a_parquet_folder(runs, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(runs["parquet"], copy)
    before = summary_of(copy)["figures"]
    s = summary_of(copy)
    s["figures"] = {}
    (copy / "summary.json").write_text(json.dumps(s))
    assert main(["report", str(copy)]) == 0, capsys.readouterr().err
    assert summary_of(copy)["figures"] == before
    for name in report.PLOTS:
        assert (copy / name).stat().st_size > 0


def test_a_long_run_gets_daily_plots(runs, tmp_path):
    """A run of more than DAILY_AFTER_DAYS days: daily envelopes, the worst day and the heat map (the per-step
    series of a short run, shifted in time, stand for it)."""
    o = summary_of(runs["csv"])
    series = report.scan(runs["csv"], o["options"]["step_s"], tuple(o["options"]["v_band"])).series()
    times = pd.to_datetime(series.index)
    long = pd.concat([series.set_axis((times + pd.Timedelta(hours=12 * d)).strftime("%Y-%m-%dT%H:%M:%S"))
                      for d in range(10)])
    written = report.plot_run(tmp_path, o, long)
    assert {p.name for p in written} == set(report.PLOTS) | set(report.DAY_PLOTS)


def test_results_format_auto_is_parquet_after_a_week():
    assert Options.make(days=7).results_name == "results.csv"
    assert Options.make(days=8).results_name == "results.parquet"
    assert Options.make(days=8, steps=4).results_name == "results.csv"  # a short trial of a long period
    assert Options.make(days=1, results_format="parquet").results_name == "results.parquet"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from evagg.scenarios.errors import ScenarioError
    with pytest.raises(ScenarioError, match="csv or parquet"):
        Options.make(results_format="xlsx")
