"""The package's structure: its imports (no circle, no upward arrow between the layers scenarios -> plugin ->
simulators, imports inside functions only for heavy optional dependencies) and one home for each option (the
arguments and help of `evagg run`, `fleet` and `dispatch` are their options' tables, nothing added by hand)."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from evagg.scenarios.cli import DISPATCH_OPTIONS, FLEET_OPTIONS, SIGNAL_OPTIONS, build_parser
from evagg.scenarios.options import OPTIONS, Options, _num
from evagg.simulators.aggregator import DEFAULT_HORIZON
from evagg.simulators.dispatch import DEFAULT_METHOD, dispatch
from evagg.simulators.synthetic import synthetic_fleet, synthetic_reference

ROOT = Path(__file__).resolve().parents[1]
# source folder -> package, and its layer (an import goes to the same layer or one below, never up)
PACKAGES = {"simulators": "evagg.simulators", "plugin": "evagg.plugin", "scenarios": "evagg.scenarios"}
LAYER = {"evagg.simulators": 0, "evagg.plugin": 1, "evagg.scenarios": 2}
MOSAIK = ("mosaik", "mosaik_api_v3", "mosaik_components")

# What may be imported inside a function: heavy dependencies, loaded only where they are used.
HEAVY = {
    "pyomo",  # the exact method's MIQP (simulators/exact.py)
    "pandapower", "simbench", "networkx",  # grids and their topology (simulators/grids.py, simulators/operator.py)
    "pyarrow",  # Parquet tables (simulators/collector.py)
    "distributed",  # Dask: `evagg sweep --scheduler` (scenarios/sweep.py)
    "matplotlib",  # the plots (scenarios/report.py: the Agg backend is chosen before pyplot is imported)
    "evagg.plugin.pandapower_grid",  # SimbenchGridSim (pandapower), handed out lazily by evagg.plugin
}
SIMULATORS_IN_FUNCTIONS: set[str] = set()  # the engine imports everything else at the top


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


MODULES = modules()


def imports(name: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import of module `name`; relative imports resolved,
    `from package import module` as the module."""
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    inside = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(fn)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            targets = subs if subs and len(subs) == len(node.names) else [base, *subs]
        else:
            continue
        out += [(t, node.lineno, id(node) in inside) for t in targets]
    return out


IMPORTS = {name: imports(name, path) for name, path in MODULES.items()}


def package_of(module: str) -> str | None:
    return next((p for p in LAYER if module == p or module.startswith(p + ".")), None)


def where(name: str, line: int) -> str:
    return f"{MODULES[name].relative_to(ROOT)}:{line}"


def test_the_walk_sees_every_module():
    assert {"evagg.simulators.aggregator", "evagg.plugin.meta", "evagg.plugin.wiring", "evagg.scenarios.options",
            "evagg.scenarios.report", "evagg.scenarios.cli"} <= set(MODULES)
    assert any(t == "evagg.plugin.wiring" and not inside for t, _, inside in IMPORTS["evagg.plugin"])
    assert any(t == "evagg.plugin.pandapower_grid" and inside for t, _, inside in IMPORTS["evagg.plugin"])


def test_no_import_circle():
    edges = {m: sorted({t for t, _, _ in IMPORTS[m] if t in MODULES and t != m}) for m in MODULES}
    # Tarjan's strongly connected components: any of more than one module is a circle
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    assert circles == []


def test_no_upward_arrow():
    """scenarios -> plugin -> simulators: the engine never imports mosaik, the plugin or the scenarios; the plugin
    never imports the scenarios."""
    wrong = []
    for name, found in IMPORTS.items():
        layer = LAYER[package_of(name)]
        for target, line, _ in found:
            up = package_of(target)
            if up is not None and LAYER[up] > layer:
                wrong.append(f"{where(name, line)} imports {target}")
            if layer == 0 and target.split(".")[0] in MOSAIK:
                wrong.append(f"{where(name, line)} imports {target} (the engine is mosaik-free)")
    assert wrong == []


def test_imports_inside_functions_are_heavy_dependencies_only():
    wrong = []
    for name, found in IMPORTS.items():
        allowed = HEAVY | (SIMULATORS_IN_FUNCTIONS if package_of(name) == "evagg.simulators" else set())
        for target, line, inside in found:
            if inside and not any(target == a or target.startswith(a + ".") for a in allowed):
                wrong.append(f"{where(name, line)} imports {target} inside a function")
    assert wrong == []


# ----------------------------------------------------------------------------------------------- options


def run_parser():
    return command_parser("run")


def command_parser(command: str):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[command]


TABLES = {"fleet": {**FLEET_OPTIONS, **SIGNAL_OPTIONS}, "dispatch": DISPATCH_OPTIONS}


@pytest.mark.parametrize("command", list(TABLES))
def test_command_arguments_are_their_table(command):
    """Every argument of `evagg fleet` / `dispatch` is an option of its table, with the table's flag, help and
    requiredness, read as text (the table checks it: no argparse type, choices or default of its own)."""
    actions = {a.dest: a for a in command_parser(command)._actions if a.dest != "help"}
    table = TABLES[command]
    assert set(actions) == set(table)
    for name, opt in table.items():
        action = actions[name]
        assert action.help == opt.help_text(), name
        assert action.option_strings == [opt.cli_flag], name
        assert action.required == opt.required, name
        assert (action.type, action.choices, action.default) == (None, None, None), name
        if opt.required:
            assert "default:" not in action.help, name
        else:
            assert "; default: " in action.help, name


def test_command_defaults_are_the_engines():
    """The defaults of `evagg fleet` / `dispatch` are the engine functions' own (one home: their signatures)."""
    for table, function, names in ((FLEET_OPTIONS, synthetic_fleet, {}),
                                   (SIGNAL_OPTIONS, synthetic_reference, {"signal_kind": "kind"}),
                                   (DISPATCH_OPTIONS, dispatch, {"time_limit": "time_limit_s"})):
        params = inspect.signature(function).parameters
        for name, opt in table.items():
            engine = params.get(names.get(name, name))
            if engine is not None and not opt.required:
                assert opt.default == engine.default, name
    step_s = inspect.signature(synthetic_reference).parameters["step_s"].default
    assert SIGNAL_OPTIONS["step_min"].default * 60 == step_s
    assert DISPATCH_OPTIONS["method"].default == DEFAULT_METHOD


def test_run_arguments_are_the_options_table():
    """Every argument of `evagg run` is an option of the table, with the table's flag and help; nothing else."""
    run = run_parser()
    actions = {a.dest: a for a in run._actions if a.dest != "help"}
    on_cli = {name: opt for name, opt in OPTIONS.items() if opt.cli_flag is not None or name == "scenario"}
    assert set(actions) == set(on_cli)
    for name, opt in on_cli.items():
        action = actions[name]
        assert action.help == opt.help_text(), name
        assert action.option_strings == ([] if name == "scenario" else [opt.cli_flag]), name
    assert {name for name, opt in OPTIONS.items() if name not in on_cli} == {"remote"}  # set by the scenario


def test_run_help_shows_every_option_with_its_default(capsys):
    from evagg.scenarios.cli import main

    assert main(["run", "--help"]) == 0
    text = capsys.readouterr().out
    helps = {a.dest: a.help for a in run_parser()._actions}
    for name, opt in OPTIONS.items():
        if opt.cli_flag is None and name != "scenario":
            continue
        assert (opt.cli_flag or opt.metavar) in text, name
        if opt.kind != "flag":
            shown = opt.default_text if opt.default_text is not None else (
                ",".join(_num(v) for v in opt.default) if isinstance(opt.default, tuple) else _num(opt.default))
            assert helps[name].endswith(f"; default: {shown}"), name
            assert helps[name].split()[0] in text, name
    assert OPTIONS["horizon"].help_text().endswith(f"default: {DEFAULT_HORIZON}")  # the engine's, not a copy


def test_the_options_defaults_are_the_table():
    defaults = Options()
    for name, opt in OPTIONS.items():
        assert getattr(defaults, name) == opt.default, name
    made = Options.make()
    assert made.horizon == DEFAULT_HORIZON and made.method == "dcls" and made.progress is False


@pytest.mark.parametrize("name", [n for n, o in OPTIONS.items() if o.kind in ("int", "number")])
def test_a_number_out_of_range_is_an_error_naming_its_flag(name):
    from evagg.scenarios.errors import ScenarioError

    opt = OPTIONS[name]
    with pytest.raises(ScenarioError, match=opt.cli_flag):
        opt.check(opt.hi * 2 + 1 if opt.hi is not None else -1e12, hi=opt.hi if opt.hi is not None else 10)
