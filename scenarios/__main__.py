"""`python -m evagg.scenarios [SCENARIO] [options]`: `evagg run [SCENARIO] [options]` (e.g. `python -m
evagg.scenarios feeder_day --evs 60`); `python -m evagg.scenarios dispatch|fleet|report ...`: the other commands."""
import sys

from .cli import SUBCOMMANDS, main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not argv or argv[0] not in (*SUBCOMMANDS, "-h", "--help"):
        argv = ["run", *argv]
    sys.exit(main(argv))
