"""`evagg sweep`: a grid of runs on local worker processes and on a Dask cluster started on the loopback (`dask
scheduler` and `dask worker` processes), the same figures from both; resume (complete runs skipped, the others
run again); a failing run is a row with its error and the others go on (exit status 1)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("simbench")
pytest.importorskip("mosaik_components.pandapower")
distributed = pytest.importorskip("distributed")
pp = pytest.importorskip("pandapower")

from evagg.scenarios import sweep  # noqa: E402
from evagg.scenarios.errors import ScenarioError  # noqa: E402
from evagg.scenarios.cli import main  # noqa: E402
from evagg.scenarios.options import DEFAULT_GRID  # noqa: E402
from evagg.simulators.grids import load_grid  # noqa: E402
from nets import radial_net  # noqa: E402
from cli import run_cli  # noqa: E402

SWEEP = ["sweep", "--evs", "20,60", "--seeds", "1,2", "--steps", "8", "--no-plots"]
RUNS = {(20, 1), (20, 2), (60, 1), (60, 2)}
# what differs between two identical runs: wall and solve times (and where the sweep's folder is)
TIMES = ("wall_s", "solve_time_s")



def table(d: Path) -> pd.DataFrame:
    return pd.read_csv(d / "sweep.csv", keep_default_na=False, na_values=[""])


def figures_only(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=[c for c in (*TIMES, "status") if c in frame]).reset_index(drop=True)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The sweep of the issue on 2 local worker processes: (its folder, the exit code)."""
    d = tmp_path_factory.mktemp("sweep") / "D"
    code = main([*SWEEP, "--workers", "2", "--out", str(d)])
    return d, code


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A Dask scheduler and a single-threaded worker on 127.0.0.1, as processes (`python -m dask ...`). One worker
    process: each process loads the simbench grid once (seconds of CPU), and the runs of the tests that follow find
    it loaded there."""
    where = tmp_path_factory.mktemp("dask")
    file = where / "scheduler.json"
    dask = [sys.executable, "-m", "dask"]
    procs = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(file)], cwd=where, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not file.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(file.read_text())["address"]
        procs.append(subprocess.Popen([*dask, "worker", address, "--host", "127.0.0.1", "--nworkers", "1",
                                       "--nthreads", "1", "--no-nanny", "--no-dashboard"], cwd=where,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def test_a_local_sweep_writes_every_run_the_table_and_the_plots(local):
    d, code = local
    assert code == 0
    frame = table(d)
    assert len(frame) == 4 and set(zip(frame["evs"], frame["seed"])) == RUNS
    assert (frame["status"] == "done").all() and (frame["error"].isna()).all()
    assert (frame["grid"] == DEFAULT_GRID).all() and (frame["policy"] == "dcls").all()
    assert sorted(p.name for p in (d / "runs").iterdir()) == sorted(
        f"{DEFAULT_GRID}_dcls_evs{n}_seed{k}" for n, k in RUNS)
    for _, row in frame.iterrows():
        summary = json.loads((d / row["folder"] / "summary.json").read_text())
        assert summary["complete"] is True
        assert summary["options"]["evs"] == row["evs"] and summary["options"]["seed"] == row["seed"]
        for key in ("trafo_loading_max_pct", "line_loading_max_pct", "v_min_pu", "trafo_overload_steps",
                    "need_unmet_kwh", "tracking_rmse_kw", "steps"):
            assert row[key] == summary["figures"][key], key  # every headline figure, as in summary.json
        assert row["steps"] == 8
    assert (d / f"hosting-{DEFAULT_GRID}.png").stat().st_size > 10_000


def test_a_sweep_on_a_dask_cluster_gives_the_same_table(local, cluster, tmp_path, capsys):
    d = tmp_path / "D"
    code, out, err = run_cli(capsys, *SWEEP, "--scheduler", cluster, "--out", d)
    assert code == 0, err
    assert f"Dask scheduler {cluster}" in err
    pd.testing.assert_frame_equal(figures_only(table(d)), figures_only(table(local[0])))
    assert (d / f"hosting-{DEFAULT_GRID}.png").is_file()


def test_a_resumed_sweep_skips_the_complete_runs(local, cluster, tmp_path, capsys):
    d = tmp_path / "D"
    # a copy of the local sweep's folder, with one run left incomplete (as a crash leaves it)
    subprocess.run(["cp", "-r", str(local[0]), str(d)], check=True)
    redo = f"runs/{DEFAULT_GRID}_dcls_evs20_seed2"
    summary = json.loads((d / redo / "summary.json").read_text())
    (d / redo / "summary.json").write_text(json.dumps(dict(summary, complete=False)))
    kept = {p: p.stat().st_mtime_ns for p in (d / "runs").glob("*/results.csv") if redo not in str(p)}
    code, out, err = run_cli(capsys, *SWEEP, "--scheduler", cluster, "--out", d)
    assert code == 0, err
    assert "4 runs, 3 complete from before, 1 to run" in err
    frame = table(d)
    assert frame.set_index("folder")["status"].to_dict() == {
        f"runs/{DEFAULT_GRID}_dcls_evs{n}_seed{k}": ("done" if f"evs{n}_seed{k}" in redo else "skipped")
        for n, k in sorted(RUNS)}
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the complete runs were not touched
    pd.testing.assert_frame_equal(figures_only(frame), figures_only(table(local[0])))
    # other options on the same folder: refused (the runs would not be of one sweep)
    other = [("4" if a == "8" else a) for a in SWEEP]  # --steps 4
    code, out, err = run_cli(capsys, *other, "--scheduler", cluster, "--out", d)
    assert code == 2 and "holds a sweep of other options (n_steps 8 -> 4, steps 8 -> 4)" in err


def test_a_failing_run_is_a_row_and_the_others_go_on(cluster, tmp_path, capsys):
    d = tmp_path / "D"
    broken = tmp_path / "broken.json"  # there, but not a network: found out by the run that loads it
    broken.write_text('{"not": "a net"}')
    code, out, err = run_cli(capsys, "sweep", "--evs", "20", "--steps", "8", "--grids", f"{DEFAULT_GRID},{broken}",
                             "--scheduler", cluster, "--out", d, "--no-plots")
    assert code == 1
    assert "1 of 2 runs failed" in err
    frame = table(d).set_index("grid")
    assert frame.loc[DEFAULT_GRID, "status"] == "done" and bool(frame.loc[DEFAULT_GRID, "complete"])
    assert frame.loc[str(broken), "status"] == "failed"
    assert f"grid file {broken}: not a pandapower network" in frame.loc[str(broken), "error"]


def test_a_missing_grid_file_is_a_usage_error_before_any_run(tmp_path, capsys):
    d = tmp_path / "D"
    missing = tmp_path / "missing.json"
    code, out, err = run_cli(capsys, "sweep", "--evs", "20", "--steps", "8", "--grids", f"{DEFAULT_GRID},{missing}",
                             "--out", d, "--no-plots")
    assert code == 2 and f"--grids: grid file {missing}: no such file" in err and not d.exists()


def test_a_penetration_is_a_share_of_the_load_buses(tmp_path):
    grid = tmp_path / "feeder.json"  # the tiny feeder: 4 load buses (a simbench grid costs seconds to load)
    pp.to_json(radial_net(), str(grid))
    buses = len(load_grid(str(grid)).load_buses)
    assert buses == 4
    _, specs = sweep.plan(sweep_args("--penetration", "50,100", "--seeds", "3", "--grids", str(grid)))
    assert [(s["evs"], s["penetration_pct"], s["seed"]) for s in specs] == [(2, 50.0, 3), (4, 100.0, 3)]
    with pytest.raises(ScenarioError, match="--penetration 10 % of the 4 load buses of .* is no EV"):
        sweep.plan(sweep_args("--penetration", "10", "--grids", str(grid)))


def test_bad_sweep_options_are_refused_before_any_run(tmp_path, capsys):
    d = tmp_path / "D"
    for args, message in ((["--evs", "20,x"], "--evs '20,x' is not a comma-separated list of numbers"),
                          (["--evs", "0"], "number of EVs (--evs) must be between 1"),
                          (["--evs", "20", "--penetration", "10"], "either --evs LIST or --penetration LIST"),
                          (["--evs", "20", "--policies", "dcls,nope"], "unknown policy 'nope'"),
                          (["--evs", "20", "--steps", "0"], "--steps")):
        code, out, err = run_cli(capsys, "sweep", *args, "--out", d)
        assert code == 2 and message in err, (args, err)
        assert not d.exists()


def sweep_args(*argv):
    import argparse

    p = argparse.ArgumentParser()
    sweep.setup(p)
    return p.parse_args([*argv, "--out", "unused"])
