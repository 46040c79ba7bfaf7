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

The headroom of row c is shared between the groups that affect it (participants: a[c, g] >= min_share * max_g
a[c, g]). Notation: u_g = max(P_g, 0) the group's present EV load, R_g its rating (`p_rated_kw`: what its EVs can
draw at most; without one rated_kw * w_g, or +inf if rated_kw is None), C_g >= u_g its capability (the most it may
draw in the next step, `capability`), B_c = gain * h_c the row's budget.

1. Release (the row needs no sharing): if h_c >= 0 and sum_g a[c, g] (C_g - u_g) <= B_c, i.e. even every
   participant going from its present load to its capability at once stays within the row (linearised; h_c
   already holds the present load), the row bounds nobody. capability "rated" (default): C_g = max(R_g, u_g), the
   worst case, which keeps the linear guarantee; "learned": C_g = R_g for a group held at its last limit (its EVs
   drew what it allowed, within max(0.1 kW, 1 %): they may want more), else its recent peak load (the peak of u_g,
   decaying by exp(-1/memory) per step) but at least idle_kw * w_g, at most R_g: fewer limits, no guarantee (an
   idle group whose EVs start at once can overshoot the row for a step, until the next step cuts it).
2. Room (h_c >= 0, not released): B_c is shared in proportion to room weights r_g, but no group beyond its rating
   (room it could not use goes to the others): group g may add x_cg = min(lam_c r_g, R_g - u_g), lam_c such that
   sum_g a[c, g] x_cg = B_c. room_share "demand" (default): r_g = m_g + idle_kw * w_g, with m_g the group's recent
   peak load (as above, memory steps: a group whose EVs paused keeps its share instead of being starved for being
   idle at the moment; idle_kw per unit of the group's weight w_g, e.g. per session, lets arriving EVs start), and
   for a group held at its last limit r_g = max(that, R_g) (2 r_g without a rating): the room goes where the EVs
   press against their limits, so that a group whose EVs must charge grows to its need within a few steps;
   "load" (the weights before): r_g = u_g + idle_kw * w_g; "weight": r_g = w_g.
3. A violation (h_c < 0): in proportion to the groups' present EV load, i.e. every participant is cut by the same
   fraction: alpha_c = gain * h_c / sum_g a[c, g] u_g, and g changes by alpha_c * u_g (participants without load
   may add nothing).

Each group gets the tightest row: dP_g = min_c x_cg (or alpha_c u_g; +inf if no row bounds it), and P_max_g =
max(P_g + dP_g, 0) (this rule never asks EVs to export). Given the participants, every row holds in the linear model
when every group uses its room (sum_g a[c, g] dP_g <= gain * h_c). No limit (None) when no row bounds the group
(every row it takes part in is released), or its room is of no use to it: dP_g >= 0 and P_max_g >= R_g, or dP_g >=
`release_kw`. The operator remembers each group's recent peak and its last limits (one call of `limits` = one
step, or pass `step` for a same-step loop; `reset()`).

Export (the symmetric rule, P_min): a high voltage (h = (v_max - v_margin) - Vm_b, a = -s[b, g]) and a reverse-flow
overload (h = (M_l + L_P) / k_l, a = 1 downstream) bound the extra export of the groups, with the same release and
sharing on the export side (u_g = max(-P_g, 0), the rating R_g taken for export too, a group held at its last
P_min); P_min_g = min(P_g - dE_g, 0) (never asks EVs to charge).

Parameters (`GridOperator`): v_min 0.95 / v_max 1.05 pu, v_margin 0.01 pu, loading_max 100 %, loading_margin
10 %, gain 0.8 (<= 1; a droop: dP = gain * headroom / sensitivity; below 1 against overshoot from the
linearisation and from the other loads moving; with a margin m a violation of depth d below the band is cured in
one step iff gain * (d + m) >= d, i.e. d <= gain * m / (1 - gain) = 0.04 pu for the defaults), min_share 0.1 (a
group whose sensitivity to a row is below min_share times the largest one's is left out of that row: in a radial
LV grid the other feeders, coupled only through the transformer's impedance (about 7 % of a far bus's own
sensitivity in simbench 1-LV-rural2); their share of that row is then left to the margin; 0 keeps the linear
guarantee for all groups at the price of coupling all feeders), release_kw (None: only the rating releases),
room_share ("demand"), idle_kw (2 kW per unit of weight), capability ("rated"), memory (16 steps: the aggregators'
horizon in the scenarios) and rated_kw (None: a group without p_rated_kw has no known rating).

Measured (`evagg.scenarios.grid_impact`, the default study: simbench 1-LV-rural2, 60 EVs / 81 sessions in 49 groups
of 2 aggregators, p_rated_kw 22 kW per session; dcls+grid, seeds 1 / 2 / 3): need unmet 27.0 / 23.3 / 55.0 kWh and
81 / 65 / 78 steps with a binding limit under the rule before (room_share "load"); 7.9 / 8.4 / 24.0 kWh and 80 / 80
/ 78 steps with the defaults; 7.6 / 17.0 / 16.4 kWh and 58 / 41 / 53 steps with capability "learned" and idle_kw 1;
no overload and no voltage violation in any. The release never frees the transformer's row there: its
participants' ratings (1782 kW; even the EVs plugged in at night, ~480 kW) far exceed its room (at most ~170 kW), so
with "rated" every group has a limit in every step, and it binds whenever an aggregator wants its power where the
split did not put it. Sharing in proportion to the capability itself (a common level max(u_g, theta C_g)) did
worse: 50-190 kWh unmet (the room of groups without EVs plugged in is lost).

Limitations: sensitivities are those of the net's own operating point (the voltage sensitivities of a
distribution grid change little with load); meshed branches are not monitored; loadings are linearised with the
reactive part held and without the losses downstream. The operator sees each group's power only, not which EVs are
plugged in nor what they need: where a row is shared by many groups (a transformer), its split between them is a
guess of where the aggregators will want their power, and an aggregator that holds a limit over its horizon plans
as if a wrong guess were final (departure needs give way). A limit per aggregator on the rows its groups share
would leave that split to the aggregator.
"""
from __future__ import annotations

import copy
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spl

from .grids import load_grid

log = logging.getLogger(__name__)

__all__ = ["Group", "GroupLimit", "GridOperator", "measurements_from_net", "ROOM_SHARES", "CAPABILITIES"]

ROOM_SHARES = ("demand", "load", "weight")
CAPABILITIES = ("learned", "rated")
# a group within this of its last limit (kW, or this share of the limit) is taken as held back by it
AT_LIMIT_KW, AT_LIMIT_SHARE = 0.1, 0.01

_SQRT3 = math.sqrt(3.0)
_NO_STEP = object()  # no step given: every call is a step of its own


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
                 gain: float = 0.8, min_share: float = 0.1, release_kw: float | None = None,
                 room_share: str = "demand", idle_kw: float = 2.0, rated_kw: float | None = None,
                 capability: str = "rated", memory: float = 16.0):
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
        self.min_share = _positive("min_share", min_share, allow_zero=True)
        if self.min_share >= 1:
            raise ValueError(f"GridOperator: min_share must be in [0, 1), got {min_share!r}")
        self.release_kw = None if release_kw is None else _positive("release_kw", release_kw)
        if room_share not in ROOM_SHARES:
            raise ValueError(f"GridOperator: room_share must be one of {', '.join(ROOM_SHARES)}, got {room_share!r}")
        self.room_share = room_share
        self.idle_kw = _positive("idle_kw", idle_kw)
        self.rated_kw = None if rated_kw is None else _positive("rated_kw", rated_kw)
        if capability not in CAPABILITIES:
            raise ValueError(f"GridOperator: capability must be one of {', '.join(CAPABILITIES)}, got "
                             f"{capability!r}")
        self.capability = capability
        self.memory = _positive("memory", memory)

        self.grid = None
        if not _is_net(net):
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
        self.reset()

    # ----------------------------------------------------------------------------------------------- set-up

    def _setup(self, net, group_bus: np.ndarray) -> None:
        import pandapower as pp  # heavy, and only for a grid operator

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
               p_bus_mw=None, step=None) -> dict[str, GroupLimit]:
        """Each group's limits for the next step from the measured state.

        p_ev_kw: {group id: its present net EV power, kW} (every group); vm_pu: {bus: Vm}; line_loading_pct /
        trafo_loading_pct: {index: loading %}; p_bus_mw: {bus: net power, load +} (pandapower's res_bus.p_mw).
        Mappings (dicts or pandas Series) keyed by pandapower index; what is not measured is not constrained
        (branches that are not monitored are ignored).

        The operator remembers the groups' recent draw and its last limits (`room_share` "demand", `capability`
        "learned"): one call is one step of that memory, unless `step` (any hashable, e.g. the time) is given: then
        calls with the same `step` as the call before are rounds of one step (a same-step loop) and age the memory
        once. `reset()` forgets it."""
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
        use, export = np.maximum(p, 0.0), np.maximum(-p, 0.0)
        self._begin(step)
        room, bind_max = self._allocate(a_max, h_max, use, self.capability_kw(p, 0), self._room_weights(p, 0))
        if self.v_max is not None:
            h_vhigh = (self.v_max - self.v_margin) - vm[v_ok]
            a_min, h_min = np.vstack([s, a_br]), np.r_[h_vhigh, h_rev_kw]
            n_min = np.r_[v_names + " high", br_names + " reverse"]
        else:
            a_min, h_min, n_min = a_br, h_rev_kw, br_names + " reverse"
        export_room, bind_min = self._allocate(a_min, h_min, export, self.capability_kw(-p, 1),
                                               self._room_weights(-p, 1))

        p_max = np.maximum(p + room, 0.0)
        p_min = np.minimum(p - export_room, 0.0)
        # released: no row bounds it, or a room its EVs cannot use (never a cut below the present power)
        rating = self.rating_kw
        free_max = ~np.isfinite(room) | ((p_max >= rating) & (room >= 0))
        free_min = ~np.isfinite(export_room) | ((-p_min >= rating) & (export_room >= 0))
        if self.release_kw is not None:
            free_max |= room >= self.release_kw
            free_min |= export_room >= self.release_kw
        self._remember(p, np.where(free_max, np.inf, p_max), np.where(free_min, np.inf, -p_min), step)
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

    # ------------------------------------------------------------------------------------------ the groups' state

    @property
    def rating_kw(self) -> np.ndarray:
        """Each group's rating (kW): its p_rated_kw, else rated_kw per unit of weight (+inf if rated_kw is None)."""
        other = np.inf if self.rated_kw is None else self.rated_kw * self.weight
        return np.where(np.isfinite(self.p_rated_kw), self.p_rated_kw, other)

    def reset(self) -> None:
        """Forget the groups' history (their recent peaks and the last limits given)."""
        n = len(self.groups)
        self._peak = np.zeros((2, n))  # per side (0: load, 1: export): the recent peak (kW, decaying)
        self._peak_before = self._peak  # the peaks before the current step (a same-step loop restarts from them)
        self._last = np.full((2, n), np.inf)  # per side: the last limit given (P_max, -P_min; inf: none)
        self._step = _NO_STEP

    def _held(self, p_kw: np.ndarray, side: int) -> np.ndarray:
        """The groups at their last limit on this side (held back by it: they may want more)."""
        last = self._last[side]
        use = np.maximum(p_kw, 0.0)
        with np.errstate(invalid="ignore"):
            return np.isfinite(last) & (use >= last - np.maximum(AT_LIMIT_KW, AT_LIMIT_SHARE * np.abs(last)))

    def capability_kw(self, p_kw: np.ndarray, side: int = 0) -> np.ndarray:
        """Each group's estimated most in the next step (side 0: draw, p_kw = P; side 1: export, p_kw = -P), kW,
        at least its present use max(p_kw, 0). "rated": its rating; "learned": its rating where it is held at its
        last limit, else its recent peak (decaying with `memory`) but at least idle_kw per unit of weight, at most
        its rating."""
        use = np.maximum(p_kw, 0.0)
        rating = self.rating_kw
        if self.capability == "rated":
            return np.maximum(rating, use)
        recent = np.maximum(self._recent_kw(p_kw, side), self.idle_kw * self.weight)
        est = np.where(self._held(p_kw, side), rating, np.minimum(recent, rating))
        return np.maximum(est, use)

    def _room_weights(self, p_kw: np.ndarray, side: int) -> np.ndarray:
        """The groups' weights r_g in the sharing of a row's room (see the module doc)."""
        if self.room_share == "weight":
            return self.weight.copy()
        if self.room_share == "load":
            return np.maximum(p_kw, 0.0) + self.idle_kw * self.weight
        r = self._recent_kw(p_kw, side) + self.idle_kw * self.weight
        rating = self.rating_kw
        boost = np.where(np.isfinite(rating), np.maximum(r, rating), 2.0 * r)  # held back: up to its rating
        return np.where(self._held(p_kw, side), boost, r)

    def _recent_kw(self, p_kw: np.ndarray, side: int) -> np.ndarray:
        """The groups' recent peak use (kW): the peak remembered before this step, decayed by one step, or the
        present use."""
        return np.maximum(self._peak_before[side] * math.exp(-1.0 / self.memory), np.maximum(p_kw, 0.0))

    def _begin(self, step) -> None:
        if step is None or step != self._step:  # a new step (else another round of the same step)
            self._peak_before = self._peak

    def _remember(self, p_kw: np.ndarray, last_max: np.ndarray, last_export: np.ndarray, step) -> None:
        self._peak = np.vstack([self._recent_kw(p_kw, 0), self._recent_kw(-p_kw, 1)])
        self._step = _NO_STEP if step is None else step
        self._last = np.vstack([last_max, last_export])

    # ------------------------------------------------------------------------------------------------ sharing

    def _allocate(self, a: np.ndarray, h: np.ndarray, used: np.ndarray, cap: np.ndarray,
                  room_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(room per group, kW (+inf: unbounded), the row that set it, -1 if none) for rows
        sum_g a[c, g] dP_g <= gain * h_c (a >= 0), for groups that use `used` now and may use `cap` at most."""
        n_g = a.shape[1]
        if a.shape[0] == 0:
            return np.full(n_g, np.inf), np.full(n_g, -1, dtype=np.int64)
        top = a.max(axis=1, keepdims=True)
        part = (a > 0) & (a >= self.min_share * top)
        ap = np.where(part, a, 0.0)
        budget = self.gain * h
        # released rows: room for every participant at its capability
        with np.errstate(invalid="ignore"):
            want = np.where(ap > 0, ap * (cap - used)[None, :], 0.0).sum(axis=1)
        safe = (h >= 0) & (want <= budget * (1 + 1e-12))
        # room: in proportion to the weights, but no group beyond its rating (what it cannot use goes to others)
        share = _capped_shares(ap, np.maximum(budget, 0.0), room_w, np.maximum(self.rating_kw - used, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            # a violation: every participant cut by the same fraction of its present use
            den_v = (ap * used[None, :]).sum(axis=1)
            alpha_v = np.where(den_v > 0, budget / den_v, -np.inf)
            cut = alpha_v[:, None] * used[None, :]
        # a violated row with no present use among its participants: they may add nothing (-inf * 0 -> 0)
        cut = np.where(np.isnan(cut), 0.0, cut)
        cap_rows = np.where((h >= 0)[:, None], share, cut)
        cap_rows = np.where(part & ~safe[:, None], cap_rows, np.inf)
        which = np.argmin(cap_rows, axis=0)
        room = cap_rows[which, np.arange(n_g)]
        which = np.where(room < np.inf, which, -1)
        return room, which


def _capped_shares(a: np.ndarray, budget: np.ndarray, w: np.ndarray, span: np.ndarray) -> np.ndarray:
    """(R, G): per row c the shares x[c, g] = min(lam_c w_g, span_g) with sum_g a[c, g] x[c, g] = budget_c (a >= 0,
    budget >= 0, w > 0, span >= 0 or +inf); x = span where even that stays within the budget."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(w > 0, span / w, np.inf)  # the level at which each group is full
    order = np.argsort(t, kind="stable")
    t_s, w_s = t[order], w[order]
    a_s = a[:, order]
    fin = np.isfinite(t_s)
    a_span = np.where((a_s > 0) & fin[None, :], a_s * np.where(fin, span[order], 0.0)[None, :], 0.0)
    full_incl = np.cumsum(a_span, axis=1)  # the room of the groups full up to and including k
    rest = np.cumsum((a_s * w_s[None, :])[:, ::-1], axis=1)[:, ::-1]  # the weight of the groups from k on
    with np.errstate(invalid="ignore"):
        # the room taken at level t_k: the groups before k full, the others at t_k w
        taken = np.where(fin[None, :], full_incl - a_span + t_s[None, :] * rest, np.inf)
    k = (taken <= budget[:, None]).sum(axis=1)  # the groups full within the budget (a prefix, taken grows with k)
    rows = np.arange(a.shape[0])
    n = a.shape[1]
    full_k = np.where(k > 0, full_incl[rows, np.maximum(k - 1, 0)], 0.0)
    rest_k = np.where(k < n, rest[rows, np.minimum(k, n - 1)], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.where(rest_k > 0, (budget - full_k) / rest_k, np.inf)
        x = np.minimum(lam[:, None] * w[None, :], span[None, :])
    return np.where(np.isnan(x), 0.0, x)


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
