"""The `evagg` command run in-process by the CLI tests: its exit status and what it printed."""
from __future__ import annotations

from evagg.scenarios.cli import main


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err
