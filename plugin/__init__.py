"""evagg.plugin: the mosaik layer.

sim_config entries: ``{"python": "evagg.plugin:AggregatorSim"}``, ``"evagg.plugin:ReferenceSim"``,
``"evagg.plugin:CollectorSim"``; as processes ``{"cmd": "evagg-mosaik %(addr)s"}`` (add ``--sim reference`` or
``--sim collector`` for the others) or ``{"connect": "HOST:PORT"}`` with ``evagg-mosaik -r HOST:PORT``.
"""
from .aggregator_sim import AggregatorSim
from .collector_sim import CollectorSim
from .grid import connect_buses
from .reference_sim import ReferenceSim

__all__ = ["AggregatorSim", "ReferenceSim", "CollectorSim", "connect_buses"]
