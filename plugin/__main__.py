"""`evagg-mosaik`: run one of the plugin's simulators as its own process (mosaik_api_v3.start_simulation).

    evagg-mosaik HOST:PORT                  connect to mosaik (sim_config {"cmd": "evagg-mosaik %(addr)s"})
    evagg-mosaik -r HOST:PORT               wait for mosaik (sim_config {"connect": "HOST:PORT"})
    evagg-mosaik --sim reference HOST:PORT  the reference signal (or: collector) instead of the aggregator
"""
from __future__ import annotations

import sys

import mosaik_api_v3

from . import AggregatorSim, CollectorSim, ReferenceSim

SIM_OPTION = "-s SIM, --sim SIM  Simulator to serve: aggregator, reference or collector [default: aggregator]"


def _simulators():
    return {"aggregator": AggregatorSim, "reference": ReferenceSim, "collector": CollectorSim}


def _sim_name(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg in ("-s", "--sim") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--sim="):
            return arg.split("=", 1)[1]
        if arg.startswith("-s") and len(arg) > 2:
            return arg[2:]
    return "aggregator"


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    sims = _simulators()
    name = _sim_name(sys.argv[1:])
    if name not in sims:
        print(f"evagg-mosaik: unknown simulator {name!r}; choose one of {', '.join(sims)}", file=sys.stderr)
        return 2
    return mosaik_api_v3.start_simulation(sims[name](), f"evagg's mosaik {name} simulator", [SIM_OPTION])


if __name__ == "__main__":
    sys.exit(main())
