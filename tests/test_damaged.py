"""`evagg report DIR` on a partial or damaged results folder (a row of the bad-input issue): it reads what is whole,
says in one line what it dropped, and never shows a traceback; what cannot be read is one line and exit status 2."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from evagg.scenarios import report
from evagg.scenarios.cli import main
from evagg.simulators.collector import TableError, iter_table
from cli import run_cli

START = "2026-01-14T18:00:00"
STEPS = 4



@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("damaged") / "run"
    assert main(["run", "--evs", "6", "--steps", str(STEPS), "--start", START, "--out", str(out), "--no-progress",
                 "--no-plots"]) == 0
    return out


@pytest.fixture
def folder(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def _figures_of(table: pd.DataFrame, summary: dict) -> dict:
    o = summary["options"]
    return report.figures(table, o["step_s"], tuple(o["v_band"]))


def _text_without_last_line(path):
    return path.read_text().rstrip("\n").rsplit("\n", 1)


@pytest.mark.parametrize("cut", ["mid-number", "after-comma", "mid-entity"])
def test_report_reads_a_table_cut_mid_line(folder, capsys, cut):
    """A hard kill cuts the last line anywhere: that line and the rest of its step are dropped (the step may lack
    rows), said in one line; the figures are those of the whole steps. The old code read a number cut short as
    another number, silently, or showed a traceback."""
    path = folder / "results.csv"
    whole, last = _text_without_last_line(path)
    keep = {"mid-number": len(last) - 3, "after-comma": last.rfind(",") + 1, "mid-entity": last.find(",") + 4}[cut]
    path.write_text(whole + "\n" + last[:keep])
    code, stdout, stderr = run_cli(capsys, "report", folder)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evagg: warning:") and "cut" in lines[0]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["figures"]["steps"] == STEPS - 1
    assert summary["dropped"] and "cut" in summary["dropped"][0]
    rows = pd.read_csv(folder / "results.csv", dtype={"time": str}, nrows=len(whole.splitlines()) - 1)
    earlier = rows[rows.time < rows.time.max()]  # every step but the one that was being written
    expected = _figures_of(earlier, summary)
    assert summary["figures"] == expected


def test_an_unfinished_run_drops_a_last_step_cut_at_a_line_end(folder, capsys):
    """A kill between two lines of a step leaves a last step holding only the first rows of the step before
    (rows are written in the same order every step): for a run that did not finish, that step is dropped."""
    path = folder / "results.csv"
    path.write_text("\n".join(path.read_text().splitlines()[:-3]) + "\n")
    summary = json.loads((folder / "summary.json").read_text())
    summary["complete"] = False
    (folder / "summary.json").write_text(json.dumps(summary))
    code, _, stderr = run_cli(capsys, "report", folder)
    assert code == 0, stderr
    assert len(stderr.strip().splitlines()) == 1 and "has only the first" in stderr
    assert json.loads((folder / "summary.json").read_text())["figures"]["steps"] == STEPS - 1


def test_a_finished_run_keeps_every_step(folder):
    """The same table is read whole when the run finished (complete): nothing dropped, nothing said."""
    notes: list = []
    frames = list(iter_table(folder / "results.csv", notes=notes, complete=True))
    assert not notes
    assert sum(f["time"].nunique() for f in frames) == STEPS


def _empty(folder):
    (folder / "results.csv").write_text("")


def _garbage_line(folder):
    lines = (folder / "results.csv").read_text().splitlines()
    lines[9] = "2026-01-14T18:00:00,Grid-0.Bus-1,Vm[pu],1.0x"
    (folder / "results.csv").write_text("\n".join(lines) + "\n")


def _short_row(folder):
    with open(folder / "results.csv", "a") as f:
        f.write("xx,yy\n")


def _not_text(folder):
    (folder / "results.csv").write_bytes(b"time,entity,attribute,value\n" + bytes(range(128, 256)) * 4 + b"\n")


def _summary_list(folder):
    (folder / "summary.json").write_text("[]")


def _summary_cut(folder):
    text = (folder / "summary.json").read_text()
    (folder / "summary.json").write_text(text[: len(text) // 2])


def _summary_without_step(folder):
    summary = json.loads((folder / "summary.json").read_text())
    del summary["options"]["step_s"]
    (folder / "summary.json").write_text(json.dumps(summary))


def _summary_missing(folder):
    (folder / "summary.json").unlink()


def _parquet_partial(folder):
    (folder / "results.csv").rename(folder / "results.parquet.partial")


def _parquet_broken(folder):
    (folder / "results.parquet").write_bytes(b"PAR1" + b"\0" * 100)
    (folder / "results.csv").unlink()


DAMAGE = {
    "empty table": (_empty, "results.csv: empty"),
    "a value that is not a number": (_garbage_line, "results.csv, line 10:"),
    "a row of two fields": (_short_row, "line %d:"),
    "not text": (_not_text, "results.csv, line 2: not UTF-8"),
    "summary a list": (_summary_list, "summary.json: holds a list"),
    "summary cut": (_summary_cut, "summary.json: not valid JSON"),
    "summary without step_s": (_summary_without_step, "options.step_s"),
    "summary missing": (_summary_missing, "no summary.json"),
    "parquet never closed": (_parquet_partial, "results.parquet.partial: the run was stopped"),
    "parquet broken": (_parquet_broken, "results.parquet: not a readable Parquet table"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_folder_is_one_line_and_exit_2(folder, capsys, damage):
    make, said = DAMAGE[damage]
    n_lines = len((folder / "results.csv").read_text().splitlines())
    make(folder)
    code, stdout, stderr = run_cli(capsys, "report", folder)
    assert code == 2
    assert stdout == ""
    assert stderr.startswith("evagg: error: ") and stderr.count("\n") == 1, stderr
    assert (said % (n_lines + 1) if "%d" in said else said) in stderr


def test_damaged_wall_times_are_dropped_not_fatal(folder, capsys):
    """timing.csv holds wall times only: damaged, it is said and the figures are made without them."""
    (folder / "timing.csv").write_text("")
    code, _, stderr = run_cli(capsys, "report", folder)
    assert code == 0
    assert stderr.startswith("evagg: warning: ") and stderr.count("\n") == 1 and "timing.csv" in stderr
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["timing"]["solve_time_s"] is None and summary["figures"]["steps"] == STEPS


def test_a_table_error_names_the_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("time,entity,attribute,value\n0,a,x,1.0\n0,a,y,nan\n1,a,x,oops\n")
    with pytest.raises(TableError, match=r"line 4: .* 'oops' is not a number"):
        list(iter_table(path))


@pytest.mark.parametrize("text, said", [("{", "not valid JSON"), ("[]", "holds a list")])
def test_a_damaged_sweep_folder_is_one_line_and_exit_2(tmp_path, capsys, text, said):
    """Resuming a sweep whose sweep.json is damaged: one line, exit 2, no run started (was a traceback)."""
    d = tmp_path / "D"
    d.mkdir()
    (d / "sweep.json").write_text(text)
    code, stdout, stderr = run_cli(capsys, "sweep", "--evs", "3", "--steps", "2", "--workers", "1", "--out", d)
    assert code == 2 and stdout == ""
    assert stderr.startswith("evagg: error: ") and stderr.count("\n") == 1 and said in stderr
    assert not (d / "runs").exists()
