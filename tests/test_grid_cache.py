"""simbench nets are built once per machine and kept as pandapower JSON (simulators/grids.py, EVAGG_CACHE_DIR)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from evagg.simulators import grids

CODE = "1-LV-rural2--0-sw"


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    pytest.importorskip("simbench")
    monkeypatch.setenv(grids.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(grids, "_CACHE", {})  # as in a new process
    return tmp_path / "cache"


def test_a_simbench_net_is_built_once_and_loaded_from_the_cache_the_same(fresh, monkeypatch):
    import pandapower as pp
    import simbench as sb

    built = grids.load_grid(CODE)
    (entry,) = fresh.rglob(f"{CODE}.json")
    assert not list(fresh.rglob("*.tmp"))  # written whole
    monkeypatch.setattr(grids, "_CACHE", {})

    def no_build(code):
        raise AssertionError("simbench built the net again")

    monkeypatch.setattr(sb, "get_simbench_net", no_build)
    cached = grids.load_grid(CODE)
    for table in ("bus", "line", "trafo", "load", "sgen"):  # the numbers (JSON may give None for a missing name)
        pd.testing.assert_frame_equal(cached.net[table].select_dtypes("number"),
                                      built.net[table].select_dtypes("number"), check_dtype=False)
    assert set(cached.profiles) == set(built.profiles)
    for key, (index, values) in built.profiles.items():
        np.testing.assert_array_equal(cached.profiles[key][0], index)
        np.testing.assert_array_equal(cached.profiles[key][1], values)
    a, b = built.copy_net(), cached.copy_net()
    pp.runpp(a)
    pp.runpp(b)
    np.testing.assert_array_equal(a.res_bus.vm_pu.values, b.res_bus.vm_pu.values)


def test_a_damaged_cache_entry_is_built_again(fresh, monkeypatch):
    grids.load_grid(CODE)
    (entry,) = fresh.rglob(f"{CODE}.json")
    entry.write_text('{"cut')
    monkeypatch.setattr(grids, "_CACHE", {})
    feeder = grids.load_grid(CODE)
    assert len(feeder.net.bus) > 0
    assert entry.read_text().startswith("{") and len(entry.read_text()) > 1000  # rewritten whole


def test_no_cache_when_switched_off(fresh, monkeypatch):
    monkeypatch.setenv(grids.CACHE_ENV, "off")
    assert grids.cache_dir() is None
    grids.load_grid(CODE)
    assert not fresh.exists()
