"""A tiny radial pandapower feeder shared by the operator and same-step tests (built once, copied per use)."""
from __future__ import annotations

import copy
import functools
import warnings

import pandapower as pp

MV, LV, A1, A2, C1, C2 = range(6)


def radial_net(a_km: float = 0.4, c_max_i_ka: float = 0.1, c_r_ohm_per_km: float = 0.2):
    """A fresh copy of `_radial_net`."""
    return copy.deepcopy(_radial_net(a_km, c_max_i_ka, c_r_ohm_per_km))


@functools.lru_cache(maxsize=None)
def _radial_net(a_km: float, c_max_i_ka: float, c_r_ohm_per_km: float):
    """Ext grid - MV bus - 0.4 MVA transformer - LV bus; feeder A: LV-A1-A2 (a_km each, 0.32 ohm/km), feeder C:
    LV-C1-C2 (50 m each, c_r_ohm_per_km, max c_max_i_ka). A small household load (5 kW) at A1, A2, C1, C2.
    Lines 0-1: feeder A, 2-3: feeder C; transformer 0."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = pp.create_empty_network(sn_mva=1.0)
        for name, vn in (("mv", 20.0), ("lv", 0.4), ("a1", 0.4), ("a2", 0.4), ("c1", 0.4), ("c2", 0.4)):
            pp.create_bus(net, vn, name=name)
        pp.create_ext_grid(net, MV, vm_pu=1.0)
        pp.create_transformer(net, MV, LV, std_type="0.4 MVA 20/0.4 kV")
        for f, t, km, r, imax in ((LV, A1, a_km, 0.32, 0.27), (A1, A2, a_km, 0.32, 0.27),
                                  (LV, C1, 0.05, c_r_ohm_per_km, c_max_i_ka),
                                  (C1, C2, 0.05, c_r_ohm_per_km, c_max_i_ka)):
            pp.create_line_from_parameters(net, f, t, km, r_ohm_per_km=r, x_ohm_per_km=0.08, c_nf_per_km=0.0,
                                           max_i_ka=imax)
        for b in (A1, A2, C1, C2):
            pp.create_load(net, b, p_mw=0.005, q_mvar=0.001)
    return net
