"""remote: `feeder_day` with each aggregator in its own process, started by mosaik through the evagg-mosaik console
script (``{"cmd": "evagg-mosaik -l warning %(addr)s", "posix": True}``; see `evagg.plugin.__main__`).

    evagg run remote [--evs N] [--aggregators A] ...
    from evagg.scenarios import remote; remote.main(evs=40, out="results/remote")

The grid, the reference signals and the results table stay in mosaik's process; the aggregators talk to it over
TCP on the loopback. The results are the same as feeder_day's, value for value (the state-of-charge spread
``soc_*[%]`` included).
"""
from __future__ import annotations

from . import feeder_day
from .options import Options


def main(**options) -> dict:
    """feeder_day with remote aggregators (options: see `evagg.scenarios.options.Options`)."""
    options.pop("scenario", None)
    options.pop("remote", None)
    return run(Options.make("remote", remote=True, **options))


def run(opts: Options) -> dict:
    """feeder_day with checked options (`Options.make("remote", ...)`: remote aggregators)."""
    return feeder_day.run(opts)

