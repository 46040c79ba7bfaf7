"""A grid operator that limits the EV load per bus group from the grid's measured state (mosaik-free).

`GridOperator` is built once from a pandapower net (or a simbench code / pandapower JSON file, loaded with
`evagg.simulators.grids.load_grid`) and the controlled groups (an id and a bus each: the EVs of one aggregator at
one bus). Each step it takes measurements (bus voltages `Vm`, line and transformer loadings, optionally the buses'
net power `P`, and each group's present EV power) and returns each group's limits (`GroupLimit`: p_min_kw <= the
group's net EV power <= p_max_kw, None where there is none) and what bound them.

Sensitivities (computed once, at set-up):

- voltage: s[b, g] = d|V_b| / dP_g (pu per kW of extra EV load at group g's bus; <= 0), the exact linearisation
  of the AC power flow at the net's own operating point: the power flow's Jacobian (pandapower's, after one
  `runpp`) solved once for all group buses at once (a sparse LU, one right-hand side per bus);
- loading: for every line and transformer that is a bridge of the grid (every branch of a radial feeder), the set
  of buses downstream of it (`pandapower.topology`, one DFS: the downstream set is a contiguous range of the DFS
  order). Extra EV load downstream adds its power to the branch's flow; branches in a mesh are not monitored.

The rule, per step (proactive: the loop runs with a one-step delay, so it keeps a margin rather than waiting for a
violation; linearised at the measured state). Every monitored quantity is a row c with a headroom h_c and a
non-negative coefficient a[c, g] per group (how much of the headroom one kW of extra EV load of g uses):

- low voltage (bus b):   h = Vm_b - (v_min + v_margin),  a = -s[b, g]  (pu / kW)
- overload (branch l):   h = (M_l - L_P) / k_l,  a = 1 for the groups downstream of l (kW), where L is the
  measured loading (%), k_l = 100 / (S_rated_l * Vm) the loading per MW (S_rated: sqrt(3) vn_kv max_i_ka df
  parallel for a line, sn_mva parallel df for a transformer; Vm of the downstream end), L_P = k_l * P_down the
  active part of the loading (P_down: the summed net power `P` of the downstream buses, load +), L_Q^2 = L^2 -
  L_P^2 the reactive part (held), and M_l = sqrt((loading_max - loading_margin)^2 - L_Q^2). Without the buses'
  `P` the flow is taken as all active and forward (L_P = L): less room than with them, but blind to reverse flow
  and, with a reactive part, a smaller cut for an overload (cured over more steps).

The headroom of row c is shared between the groups that affect it (participants: a[c, g] >= coupling * max_g
a[c, g]):

- room (h_c >= 0): in proportion to room weights r_g: alpha_c = gain * h_c / sum_g a[c, g] r_g, and group g may
  add alpha_c * r_g kW. room_share "load" (default): r_g = max(P_g, 0) + idle_kw * w_g (the groups drawing power,
  likely to want more, get most; idle_kw per unit of the group's weight w_g, e.g. per session, is kept for groups
  not drawing yet, so that arriving EVs can start); "weight": r_g = w_g (steadier, but the room kept for idle
  groups goes unused);
- a violation (h_c < 0): in proportion to the groups' present EV load u_g = max(P_g, 0), i.e. every participant
  is cut by the same fraction: alpha_c = gain * h_c / sum_g a[c, g] u_g, and g changes by alpha_c * u_g
  (participants without load may add nothing).

Each group gets the tightest row: dP_g = min_c alpha_c * (r_g or u_g), and P_max_g = max(P_g + dP_g, 0) (this rule
never asks EVs to export). Given the participants, the allocation keeps every row in the linear model (sum_g a[c,g]
dP_g <= gain * h_c). No limit (None) when the group's room is large: dP_g >= 0 and P_max_g >= its `p_rated_kw`
(what its EVs can draw at most), or dP_g >= `release_kw`.

Export (the symmetric rule, P_min): a high voltage (h = (v_max - v_margin) - Vm_b, a = -s[b, g]) and a reverse-flow
overload (h = (M_l + L_P) / k_l, a = 1 downstream) bound the extra export of the groups (cuts in proportion to the
present export max(-P_g, 0)); P_min_g = min(P_g - dE_g, 0) (never asks EVs to charge).

Parameters (`GridOperator`): v_min 0.95 / v_max 1.05 pu, v_margin 0.01 pu, loading_max 100 %, loading_margin
10 %, gain 0.8 (<= 1; a droop: dP = gain * headroom / sensitivity; below 1 against overshoot from the
linearisation and from the other loads moving; with a margin m a violation of depth d below the band is cured in
one step iff gain * (d + m) >= d, i.e. d <= gain * m / (1 - gain) = 0.04 pu for the defaults), coupling 0.1 (a
group whose sensitivity to a row is below coupling times the largest one's is left out of that row: in a radial
LV grid the other feeders, coupled only through the transformer's impedance (about 7 % of a far bus's own
sensitivity in simbench 1-LV-rural2); their share of that row is then left to the margin; 0 keeps the linear
guarantee for all groups at the price of coupling all feeders), release_kw (None: only p_rated_kw releases),
room_share ("load") and idle_kw (2 kW per unit of weight).

Limitations: sensitivities are those of the net's own operating point (the voltage sensitivities of a
distribution grid change little with load); meshed branches are not monitored; loadings are linearised with the
reactive part held and without the losses downstream.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["Group", "GroupLimit", "GridOperator", "measurements_from_net", "ROOM_SHARES"]

ROOM_SHARES = ("load", "weight")

_SQRT3 = math.sqrt(3.0)


@dataclass(frozen=True)
class Group:
    """A controlled group: the EVs of one aggregator at one bus."""

    id: str
    bus: int
    weight: float = 1.0  # its size for the sharing of room (e.g. its sessions)
    p_rated_kw: float = math.inf  # the most its EVs can draw: a limit at or above it is no limit

    @classmethod
    def make(cls, spec: Any) -> "Group":
        """A Group from a Group, a bus index, or a mapping {"id", "bus", "weight"?, "p_rated_kw"?}."""
        if isinstance(spec, Group):
            return spec
        if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
            return cls(id=f"bus-{int(spec)}", bus=int(spec))
        if not isinstance(spec, Mapping):
            raise ValueError(f"a group must be a bus index or a mapping with 'id' and 'bus', got {spec!r}")
        unknown = set(spec) - {"id", "bus", "weight", "p_rated_kw"}
        if unknown:
            raise ValueError(f"group {spec!r}: unknown key(s) {', '.join(sorted(unknown))}; known: id, bus, weight, "
                             "p_rated_kw")
        if "bus" not in spec:
            raise ValueError(f"group {spec!r}: no 'bus'")
        bus = spec["bus"]
        if isinstance(bus, bool) or not isinstance(bus, (int, np.integer)):
            raise ValueError(f"group {spec!r}: bus must be a bus index (int), got {bus!r}")
        weight = float(spec.get("weight", 1.0) if spec.get("weight") is not None else 1.0)
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"group {spec!r}: weight must be a positive number, got {spec.get('weight')!r}")
        rated = spec.get("p_rated_kw")
        rated = math.inf if rated is None else float(rated)
        if math.isnan(rated) or rated < 0:
            raise ValueError(f"group {spec!r}: p_rated_kw must be >= 0, got {spec.get('p_rated_kw')!r}")
        gid = spec.get("id", f"bus-{int(bus)}")
        return cls(id=str(gid), bus=int(bus), weight=weight, p_rated_kw=rated)


@dataclass(frozen=True)
class GroupLimit:
    """A group's limits for the next step (kW, + = load; None: no limit) and the rows that set them."""

    p_min_kw: float | None
    p_max_kw: float | None
    binding_max: str | None = None  # e.g. "Vm Bus-12 low", "loading Line-3", "loading Transformer-0"
    binding_min: str | None = None  # e.g. "Vm Bus-12 high", "loading Line-3 reverse"
    room_kw: float = math.inf  # the extra load the rule allows (before the release and the clip at 0)
    export_room_kw: float = math.inf  # the extra export it allows

    @property
    def binding(self) -> str:
        """What bound this group ("" if nothing): the P_max row, then the P_min row."""
        return "; ".join(b for b in (self.binding_max, self.binding_min) if b)


def _positive(name: str, value, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"GridOperator: {name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"GridOperator: {name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


class GridOperator:
    """Per-group EV limits from the grid's measured state (the rule: see the module doc).

    net: a pandapowerNet (not changed; copied), or a simbench code / pandapower JSON path (`load_grid`).
    groups: Group / {"id", "bus", "weight", "p_rated_kw"} / bus index, one per controlled group (ids unique)."""

    def __init__(self, net, groups: Sequence, *, v_min: float = 0.95, v_max: float | None = 1.05,
                 v_margin: float = 0.01, loading_max: float = 100.0, loading_margin: float = 10.0,
                 gain: float = 0.8, coupling: float = 0.1, release_kw: float | None = None,
                 room_share: str = "load", idle_kw: float = 2.0):
        self.v_min = _positive("v_min", v_min)
        self.v_max = None if v_max is None else _positive("v_max", v_max)
        self.v_margin = _positive("v_margin", v_margin, allow_zero=True)
        if self.v_max is not None and self.v_max - self.v_margin <= self.v_min + self.v_margin:
            raise ValueError(f"GridOperator: the band v_min + v_margin .. v_max - v_margin is empty (v_min {v_min!r}, "
                             f"v_max {v_max!r}, v_margin {v_margin!r})")
        self.loading_max = _positive("loading_max", loading_max)
        self.loading_margin = _positive("loading_margin", loading_margin, allow_zero=True)
        if self.loading_margin >= self.loading_max:
            raise ValueError(f"GridOperator: loading_margin {loading_margin!r} must be below loading_max "
                             f"{loading_max!r}")
        self.gain = _positive("gain", gain)
        if self.gain > 1:
            raise ValueError(f"GridOperator: gain must be in (0, 1], got {gain!r}")
        self.coupling = _positive("coupling", coupling, allow_zero=True)
        if self.coupling >= 1:
            raise ValueError(f"GridOperator: coupling must be in [0, 1), got {coupling!r}")
        self.release_kw = None if release_kw is None else _positive("release_kw", release_kw)
        if room_share not in ROOM_SHARES:
            raise ValueError(f"GridOperator: room_share must be one of {', '.join(ROOM_SHARES)}, got {room_share!r}")
        self.room_share = room_share
        self.idle_kw = _positive("idle_kw", idle_kw)

        self.grid = None
        if not _is_net(net):
            from .grids import load_grid

            self.grid = str(net)
            net = load_grid(net).net  # the pristine net: only read here
        self.groups: tuple[Group, ...] = tuple(Group.make(g) for g in groups)
        ids = [g.id for g in self.groups]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"GridOperator: group ids must be unique, repeated: {dup}")
        self._index = {gid: i for i, gid in enumerate(ids)}
        self.bus_index = np.asarray(net.bus.index, dtype=np.int64)  # sorted copy below for lookups
        self._bus_order = np.argsort(self.bus_index)
        bad = [g.bus for g in self.groups if g.bus not in set(self.bus_index.tolist())]
        if bad:
            raise ValueError(f"GridOperator: group bus(es) {sorted(set(bad))} are not buses of the grid "
                             f"({len(self.bus_index)} buses)")
        self.weight = np.array([g.weight for g in self.groups], dtype=float)
        self.p_rated_kw = np.array([g.p_rated_kw for g in self.groups], dtype=float)
        group_bus = np.array([g.bus for g in self.groups], dtype=np.int64)
        self._setup(net, group_bus)

    # ----------------------------------------------------------------------------------------------- set-up

    def _setup(self, net, group_bus: np.ndarray) -> None:
        import copy

        import pandapower as pp

        work = copy.deepcopy(net)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                pp.runpp(work, numba=False)
            except Exception as exc:
                raise ValueError(f"GridOperator: the grid's power flow does not converge ({type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())[:200]})") from None
        # voltage sensitivities d|V_b|/dP at every bus for 1 kW of extra load at each group's bus
        self.s_v = self._voltage_sensitivities(work, group_bus)  # (n_bus, n_groups), pu per kW, <= 0
        # branches: a downstream bus set for each bridge line / transformer
        self._setup_branches(work, group_bus)

    def _voltage_sensitivities(self, net, group_bus: np.ndarray) -> np.ndarray:
        import scipy.sparse as sp
        import scipy.sparse.linalg as spl

        internal = net._ppc["internal"]
        if internal.get("J") is None:
            raise ValueError("GridOperator: pandapower kept no Jacobian of the grid's power flow (Newton-Raphson)")
        jac = internal["J"]
        pv, pq = np.asarray(internal["pv"], dtype=np.int64), np.asarray(internal["pq"], dtype=np.int64)
        pvpq = np.r_[pv, pq]
        n_ppc = len(internal["V"])
        lookup = np.asarray(net._pd2ppc_lookups["bus"], dtype=np.int64)
        ppc_of = np.full(len(self.bus_index), -1, dtype=np.int64)
        ok = (self.bus_index >= 0) & (self.bus_index < len(lookup))
        ppc_of[ok] = lookup[self.bus_index[ok]]
        ppc_of[(ppc_of < 0) | (ppc_of >= n_ppc)] = -1
        vm = net.res_bus.vm_pu.reindex(self.bus_index).to_numpy(dtype=float)
        energised = (ppc_of >= 0) & np.isfinite(vm)
        gpos = self._bus_pos(group_bus)
        dead = [int(group_bus[i]) for i in range(len(group_bus)) if not energised[gpos[i]]]
        if dead:
            raise ValueError(f"GridOperator: group bus(es) {sorted(set(dead))} are not energised (out of service or "
                             "not connected to the external grid)")
        p_row = np.full(n_ppc, -1, dtype=np.int64)
        p_row[pvpq] = np.arange(len(pvpq))
        ubus, inv = np.unique(ppc_of[gpos], return_inverse=True)
        rows = p_row[ubus]  # -1 for a group at the slack bus: the external grid takes its power (no effect)
        rhs = np.zeros((jac.shape[0], len(ubus)))
        has = rows >= 0
        rhs[rows[has], np.flatnonzero(has)] = 1.0
        sol = spl.splu(sp.csc_matrix(jac)).solve(rhs) if has.any() else rhs
        d_vm = np.zeros((n_ppc, len(ubus)))
        d_vm[pq] = sol[len(pvpq):]
        base_mva = float(internal.get("baseMVA", net.sn_mva))
        # an injection of 1 pu (base_mva MW) raises |V| by d_vm; 1 kW of load lowers it by d_vm / (1000 base_mva)
        s_ppc = -d_vm / (1000.0 * base_mva)
        out = np.zeros((len(self.bus_index), len(ubus)))
        out[energised] = s_ppc[ppc_of[energised]]
        return out[:, inv]

    def _setup_branches(self, net, group_bus: np.ndarray) -> None:
        import networkx as nx
        import pandapower.topology as top

        graph = nx.Graph(top.create_nxgraph(net, respect_switches=True, include_out_of_service=False))
        slack = [int(b) for b in net.ext_grid.bus[net.ext_grid.in_service.astype(bool)]]
        root = ("slack",)
        graph.add_edges_from((root, b) for b in slack)
        bridges = {frozenset(e) for e in nx.bridges(graph)}
        tree = nx.dfs_tree(graph, root)
        order = list(nx.dfs_preorder_nodes(tree, root))  # a subtree is a contiguous range of this order
        tin = {node: i for i, node in enumerate(order)}
        size = {node: 1 for node in order}
        for node in reversed(order):
            for child in tree.successors(node):
                size[node] += size[child]
        depth = nx.single_source_shortest_path_length(tree, root)
        nb = len(self.bus_index)
        self._bus_tin = np.array([tin.get(int(b), -1) for b in self.bus_index], dtype=np.int64)
        gtin = self._bus_tin[self._bus_pos(group_bus)]

        names, kinds, idx, lo, hi, rated, child_pos = [], [], [], [], [], [], []
        unmonitored = []
        for elm, fb, tb in (("line", "from_bus", "to_bus"), ("trafo", "hv_bus", "lv_bus")):
            table = net[elm]
            if table.empty:
                continue
            service = table.in_service.astype(bool).to_numpy()
            for i, (index, row) in enumerate(table.iterrows()):
                if not service[i]:
                    continue
                u, v = int(row[fb]), int(row[tb])
                if frozenset((u, v)) not in bridges or u not in tin or v not in tin:
                    unmonitored.append(f"{'Line' if elm == 'line' else 'Transformer'}-{index}")
                    continue
                child = v if depth[v] > depth[u] else u
                if elm == "line":
                    s_rated = _SQRT3 * float(net.bus.vn_kv.at[u]) * float(row.max_i_ka) * float(row.df) * float(
                        row.parallel)
                else:
                    s_rated = float(row.sn_mva) * float(row.parallel) * float(row.df)
                names.append(f"{'Line' if elm == 'line' else 'Transformer'}-{index}")
                kinds.append(0 if elm == "line" else 1)
                idx.append(int(index))
                lo.append(tin[child])
                hi.append(tin[child] + size[child])
                rated.append(s_rated)
                child_pos.append(int(self._bus_pos(np.array([child]))[0]))
        self.unmonitored = tuple(unmonitored)
        if unmonitored:
            log.info("GridOperator: %d branch(es) in meshes or unconnected are not monitored: %s", len(unmonitored),
                     ", ".join(unmonitored[:10]))
        self.branch_names = tuple(names)
        self._branch_kind = np.array(kinds, dtype=np.int64)  # 0 line, 1 transformer
        self._branch_idx = np.array(idx, dtype=np.int64)
        lo_a, hi_a = np.array(lo, dtype=np.int64), np.array(hi, dtype=np.int64)
        self._branch_rated_mva = np.array(rated, dtype=float)
        self._branch_child = np.array(child_pos, dtype=np.int64)
        # groups downstream of each branch (n_branch, n_groups) and buses downstream (n_branch, n_bus)
        self.downstream = (gtin[None, :] >= lo_a[:, None]) & (gtin[None, :] < hi_a[:, None]) & (gtin >= 0)[None, :]
        bt = self._bus_tin
        self._down_bus = (bt[None, :] >= lo_a[:, None]) & (bt[None, :] < hi_a[:, None]) & (bt >= 0)[None, :]
        self._line_pos = {int(i): k for k, i in enumerate(self._branch_idx) if self._branch_kind[k] == 0}
        self._trafo_pos = {int(i): k for k, i in enumerate(self._branch_idx) if self._branch_kind[k] == 1}
        self.n_buses = nb

    def _bus_pos(self, buses: np.ndarray) -> np.ndarray:
        """Positions in `bus_index` of the given bus indices (which must exist)."""
        sorted_idx = self.bus_index[self._bus_order]
        return self._bus_order[np.searchsorted(sorted_idx, np.asarray(buses, dtype=np.int64))]

    # ----------------------------------------------------------------------------------------------- stepping

    @property
    def group_ids(self) -> tuple[str, ...]:
        return tuple(g.id for g in self.groups)

    def downstream_groups(self, element: str) -> tuple[str, ...]:
        """The ids of the groups downstream of a monitored branch, e.g. "Line-3" or "Transformer-0"."""
        if element not in self.branch_names:
            raise ValueError(f"GridOperator: {element!r} is not a monitored branch")
        row = self.downstream[self.branch_names.index(element)]
        return tuple(self.groups[i].id for i in np.flatnonzero(row))

    def _values(self, what: str, values, positions: Mapping[int, int] | None, n: int) -> np.ndarray:
        """A (n,) array from {element index: value} (NaN where not measured)."""
        out = np.full(n, np.nan)
        if values is None:
            return out
        items = values.items() if hasattr(values, "items") else values
        keys, vals = [], []
        for k, v in items:
            keys.append(int(k))
            vals.append(np.nan if v is None else float(v))
        if not keys:
            return out
        keys_a, vals_a = np.asarray(keys, dtype=np.int64), np.asarray(vals, dtype=float)
        if positions is None:  # buses
            sorted_idx = self.bus_index[self._bus_order]
            at = np.searchsorted(sorted_idx, keys_a)
            at = np.minimum(at, len(sorted_idx) - 1)
            bad = sorted_idx[at] != keys_a
            if bad.any():
                raise ValueError(f"GridOperator: {what} for bus(es) {keys_a[bad][:5].tolist()} the grid does not have")
            out[self._bus_order[at]] = vals_a
        else:
            pos = np.array([positions.get(int(k), -1) for k in keys_a], dtype=np.int64)
            known = pos >= 0
            out[pos[known]] = vals_a[known]
        return out

    def limits(self, p_ev_kw: Mapping[str, float], vm_pu=None, line_loading_pct=None, trafo_loading_pct=None,
               p_bus_mw=None) -> dict[str, GroupLimit]:
        """Each group's limits for the next step from the measured state.

        p_ev_kw: {group id: its present net EV power, kW} (every group); vm_pu: {bus: Vm}; line_loading_pct /
        trafo_loading_pct: {index: loading %}; p_bus_mw: {bus: net power, load +} (pandapower's res_bus.p_mw).
        Mappings (dicts or pandas Series) keyed by pandapower index; what is not measured is not constrained
        (branches that are not monitored are ignored)."""
        missing = [g for g in self._index if g not in p_ev_kw]
        if missing:
            raise ValueError(f"GridOperator: no present EV power for group(s) {missing[:5]}")
        unknown = [g for g in p_ev_kw if g not in self._index]
        if unknown:
            raise ValueError(f"GridOperator: EV power for unknown group(s) {unknown[:5]}")
        p = np.array([float(p_ev_kw[g.id]) for g in self.groups], dtype=float)
        if not np.isfinite(p).all():
            bad = [self.groups[i].id for i in np.flatnonzero(~np.isfinite(p))]
            raise ValueError(f"GridOperator: the EV power of group(s) {bad[:5]} is not a finite number")
        vm = self._values("Vm", vm_pu, None, self.n_buses)
        pb = self._values("P", p_bus_mw, None, self.n_buses)
        nbr = len(self.branch_names)
        load = self._values("line loading", line_loading_pct, self._line_pos, nbr)
        tl = self._values("transformer loading", trafo_loading_pct, self._trafo_pos, nbr)
        load = np.where(self._branch_kind == 1, tl, load)

        # ---- rows: (name, headroom, coefficients) for more load (P_max) and more export (P_min)
        v_ok = np.isfinite(vm)
        s = -self.s_v[v_ok]  # (n_v, G) >= 0: pu lost per kW of extra load
        v_names = np.array([f"Vm Bus-{b}" for b in self.bus_index[v_ok]], dtype=object)
        h_vlow = vm[v_ok] - (self.v_min + self.v_margin)

        b_ok = np.isfinite(load)
        a_br = self.downstream[b_ok].astype(float)
        vm_child = vm[self._branch_child[b_ok]]
        vm_child = np.where(np.isfinite(vm_child) & (vm_child > 0), vm_child, 1.0)
        k = 100.0 / (self._branch_rated_mva[b_ok] * vm_child)  # % per MW
        lv = load[b_ok]
        down = self._down_bus[b_ok]
        p_known = (~down | np.isfinite(pb)[None, :]).all(axis=1)
        p_down = np.where(down, np.nan_to_num(pb)[None, :], 0.0).sum(axis=1)
        l_p = np.where(p_known, k * p_down, lv)  # without the buses' P: all active, forward
        l_q2 = np.maximum(lv ** 2 - l_p ** 2, 0.0)
        lim = self.loading_max - self.loading_margin
        m = np.sqrt(np.maximum(lim ** 2 - l_q2, 0.0))
        h_fwd_kw = (m - l_p) / k * 1000.0
        h_rev_kw = (m + l_p) / k * 1000.0
        br_names = np.array(self.branch_names, dtype=object)[b_ok]

        a_max = np.vstack([s, a_br])
        h_max = np.r_[h_vlow, h_fwd_kw]
        n_max = np.r_[v_names + " low", br_names]
        room, bind_max = self._allocate(a_max, h_max, np.maximum(p, 0.0), self._room_weights(p))
        if self.v_max is not None:
            h_vhigh = (self.v_max - self.v_margin) - vm[v_ok]
            a_min, h_min = np.vstack([s, a_br]), np.r_[h_vhigh, h_rev_kw]
            n_min = np.r_[v_names + " high", br_names + " reverse"]
        else:
            a_min, h_min, n_min = a_br, h_rev_kw, br_names + " reverse"
        export_room, bind_min = self._allocate(a_min, h_min, np.maximum(-p, 0.0), self._room_weights(-p))

        p_max = np.maximum(p + room, 0.0)
        p_min = np.minimum(p - export_room, 0.0)
        # released: unbounded, or a room its EVs cannot use (never a cut below the present power)
        free_max = ~np.isfinite(room) | ((p_max >= self.p_rated_kw) & (room >= 0))
        free_min = ~np.isfinite(export_room) | ((-p_min >= self.p_rated_kw) & (export_room >= 0))
        if self.release_kw is not None:
            free_max |= room >= self.release_kw
            free_min |= export_room >= self.release_kw
        out = {}
        for i, g in enumerate(self.groups):
            out[g.id] = GroupLimit(
                p_min_kw=None if free_min[i] else float(p_min[i]),
                p_max_kw=None if free_max[i] else float(p_max[i]),
                binding_max=None if free_max[i] or bind_max[i] < 0 else str(n_max[bind_max[i]]),
                binding_min=None if free_min[i] or bind_min[i] < 0 else str(n_min[bind_min[i]]),
                room_kw=float(room[i]), export_room_kw=float(export_room[i]),
            )
        return out

    def _room_weights(self, p_kw: np.ndarray) -> np.ndarray:
        """The groups' shares of a row's room: their weights, or their present use plus idle_kw per weight."""
        if self.room_share == "weight":
            return self.weight
        return np.maximum(p_kw, 0.0) + self.idle_kw * self.weight

    def _allocate(self, a: np.ndarray, h: np.ndarray, used: np.ndarray,
                  room_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(room per group, kW (+inf: unbounded; -inf: none at all), the row that set it, -1 if none) for rows
        sum_g a[c, g] dP_g <= h_c (a >= 0): room shared by the weights, a violation by the present use."""
        n_g = a.shape[1]
        if a.shape[0] == 0:
            return np.full(n_g, np.inf), np.full(n_g, -1, dtype=np.int64)
        top = a.max(axis=1, keepdims=True)
        part = (a > 0) & (a >= self.coupling * top)
        share = np.where(h[:, None] >= 0, room_w[None, :], used[None, :])
        den = np.where(part, a * share, 0.0).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            alpha = np.where(den > 0, self.gain * h / den, np.where(h >= 0, np.inf, -np.inf))
            cap = alpha[:, None] * share
        # a violated row with no present use among its participants: they may add nothing more than -inf..0
        cap = np.where(np.isnan(cap), 0.0, cap)
        cap = np.where(part, cap, np.inf)
        which = np.argmin(cap, axis=0)
        room = cap[which, np.arange(n_g)]
        which = np.where(room < np.inf, which, -1)
        return room, which


def _is_net(obj) -> bool:
    return hasattr(obj, "bus") and hasattr(obj, "line") and hasattr(obj, "ext_grid")


def measurements_from_net(net) -> dict[str, Any]:
    """The measurements `GridOperator.limits` takes, from a solved pandapower net (its res_ tables)."""
    out = {"vm_pu": net.res_bus.vm_pu, "p_bus_mw": net.res_bus.p_mw, "line_loading_pct": None,
           "trafo_loading_pct": None}
    if len(net.line):
        out["line_loading_pct"] = net.res_line.loading_percent
    if len(net.trafo):
        out["trafo_loading_pct"] = net.res_trafo.loading_percent
    return out
