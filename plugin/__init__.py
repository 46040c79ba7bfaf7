"""evagg.plugin: the mosaik layer.

sim_config entries: ``{"python": "evagg.plugin:AggregatorSim"}``, ``"evagg.plugin:ReferenceSim"``,
``"evagg.plugin:CollectorSim"``, ``"evagg.plugin:SimbenchGridSim"`` (mosaik-pandapower-2 with a simbench code
or a pandapower JSON file loaded once per process, its profiles at the simulated time, transformer results); as
processes ``{"cmd": "evagg-mosaik %(addr)s"}`` (add ``--sim reference`` or
``--sim collector`` for the others) or ``{"connect": "HOST:PORT"}`` with ``evagg-mosaik -r HOST:PORT``.
"""
from .aggregator_sim import AggregatorSim
from .collector_sim import CollectorSim
from .grid import connect_buses
from .reference_sim import ReferenceSim

__all__ = ["AggregatorSim", "ReferenceSim", "CollectorSim", "SimbenchGridSim", "connect_buses", "OperatorSim",
           "connect_operator", "operator_groups", "connect_peak_shaver"]


def __getattr__(name):
    # Imported on first use only: it loads pandapower, which the aggregator's own process does not need.
    if name == "SimbenchGridSim":
        from .pandapower_grid import SimbenchGridSim

        return SimbenchGridSim
    if name in ("OperatorSim", "connect_operator", "operator_groups", "connect_peak_shaver"):
        from . import operator_sim  # the grid operator and peak shaver (evagg.plugin.operator_sim)

        return getattr(operator_sim, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
