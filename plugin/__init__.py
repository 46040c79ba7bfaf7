"""evagg.plugin: the mosaik layer.

sim_config entries: ``{"python": "evagg.plugin:AggregatorSim"}``, ``"evagg.plugin:ReferenceSim"``,
``"evagg.plugin:CollectorSim"``, ``"evagg.plugin:SimbenchGridSim"`` (mosaik-pandapower-2 with a simbench code
or a pandapower JSON file loaded once per process, its profiles at the simulated time, transformer results),
``"evagg.plugin:OperatorSim"`` (a grid operator's limits per bus group) and ``"evagg.plugin:PeakShaverSim"``
(a reference from the feeder's measured load); as processes ``{"cmd": "evagg-mosaik %(addr)s"}`` (add
``--sim reference`` or ``--sim collector`` for the others) or ``{"connect": "HOST:PORT"}`` with
``evagg-mosaik -r HOST:PORT``. The wiring helpers (`evagg.plugin.wiring`): connect_buses, connect_operator,
operator_groups, connect_peak_shaver. `supervised_run(world, until)`: world.run that ends with `SimulatorLost`
(instead of hanging) when a remote simulator dies or stops answering (`evagg.plugin.supervise`).
"""
from .aggregator_sim import AggregatorSim
from .collector_sim import CollectorSim
from .operator_sim import OperatorSim
from .peak_shaver_sim import PeakShaverSim
from .reference_sim import ReferenceSim
from .supervise import SimulatorLost, supervised_run
from .wiring import connect_buses, connect_operator, connect_peak_shaver, operator_groups

__all__ = ["AggregatorSim", "ReferenceSim", "CollectorSim", "SimbenchGridSim", "OperatorSim", "PeakShaverSim",
           "connect_buses", "connect_operator", "operator_groups", "connect_peak_shaver", "supervised_run",
           "SimulatorLost"]


def __getattr__(name):
    # Imported on first use only: it loads pandapower, which the aggregator's own process does not need.
    if name == "SimbenchGridSim":
        from .pandapower_grid import SimbenchGridSim  # pandapower (heavy)

        return SimbenchGridSim
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
