"""The README's "Use it in your own mosaik scenario" snippet runs as written (and with the faults section's supervised
run put in as it says), its first command is the main job, and plugin/README.md's parameter tables are the models'
own (evagg.plugin.meta)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from evagg.plugin.meta import AGGREGATOR_MODELS, REFERENCE_MODELS, params_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
PLUGIN_README = README.parent / "plugin" / "README.md"


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert m, f"README has no section '## {title}'"
    return m.group(1)


def code_blocks(text: str, lang: str = "") -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.M | re.S)


def test_the_first_command_installs_and_runs_the_main_job():
    first = code_blocks(section("The two commands"))[0].strip()
    assert first == "pip install . && evagg run"


def test_the_mosaik_snippet_runs_as_written(tmp_path):
    pytest.importorskip("simbench")
    pytest.importorskip("mosaik_components.pandapower")
    blocks = code_blocks(section("Use it in your own mosaik scenario"), "python")
    assert len(blocks) == 1
    (tmp_path / "scenario.py").write_text(blocks[0], encoding="utf-8")
    proc = subprocess.run([sys.executable, "scenario.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(tmp_path / "results.csv")
    assert list(table.columns) == ["time", "entity", "attribute", "value"]
    assert table["time"].nunique() == 24  # 6 hours of 15-minute steps
    agg = table[table["entity"] == "EVAgg-0.Aggregator-0"].pivot(index="time", columns="attribute", values="value")
    assert {"P[MW]", "P_ref[MW]", "energy[MWh]"} <= set(agg.columns)
    assert agg["P[MW]"].max() > 0.005  # the evening EVs draw power
    vm = table[table["attribute"] == "Vm[pu]"]
    assert vm["entity"].str.startswith("Grid-0.Bus-").all() and vm["value"].between(0.9, 1.1).all()


def test_the_plugin_readme_shows_every_model_parameter_as_the_table_has_it():
    """The Aggregator's and the Signal's parameters (what the aggregator knows among them: arrivals, arrivals_seed,
    the forecast, the forecast error and its seed) with their defaults, as `params_markdown` makes them from the
    table the models read their parameters from; regenerate the README's block with it after changing one."""
    text = PLUGIN_README.read_text(encoding="utf-8")
    blocks = dict(re.findall(r"^<!-- params: (\w+) .*?-->\n(.*?)\n<!-- end params -->", text, flags=re.M | re.S))
    assert set(blocks) == {"Aggregator", "Signal"}
    assert blocks["Aggregator"] == params_markdown(AGGREGATOR_MODELS["Aggregator"])
    assert blocks["Signal"] == params_markdown(REFERENCE_MODELS["Signal"])
    for name, default in (("arrivals", "`on_plug`"), ("arrivals_seed", "`0`"), ("forecast", "-")):
        assert f"| `{name}` | {default} |" in blocks["Aggregator"]
    for name, default in (("forecast_steps", "`0`"), ("forecast_error", "`0.0`"), ("forecast_seed", "`0`")):
        assert f"| `{name}` | {default} |" in blocks["Signal"]


def test_the_supervised_snippet_runs_in_the_mosaik_scenario(tmp_path):
    """The faults section's snippet, put into the mosaik scenario as it says (the aggregator in its own process,
    the last line replaced), runs to the end; test_faults kills such aggregators."""
    pytest.importorskip("simbench")
    pytest.importorskip("mosaik_components.pandapower")
    scenario = code_blocks(section("Use it in your own mosaik scenario"), "python")[0]
    faults = section("Faults in distributed runs")
    blocks = code_blocks(faults, "python")
    assert len(blocks) == 1
    own_process = re.search(r'\(`("EVAgg": \{"cmd": [^`]*\})`\)', faults).group(1)
    scenario, n = re.subn(r'"EVAgg": \{[^}]*\}', lambda _: own_process, scenario)
    assert n == 1
    last = "world.run(until=HOURS * 3600)\n"
    assert scenario.endswith(last)
    script = scenario[: -len(last)] + blocks[0]
    (tmp_path / "scenario.py").write_text(script, encoding="utf-8")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run([sys.executable, "scenario.py"], cwd=tmp_path, capture_output=True, text=True, timeout=180,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "evagg-mosaik" in script and "supervised_run(world" in script
    table = pd.read_csv(tmp_path / "results.csv")
    assert table["time"].nunique() == 24
