"""The scenarios' errors: bad input (one line, nothing written), a failed run and an interrupted one."""
from __future__ import annotations

from pathlib import Path


class ScenarioError(ValueError):
    """Bad input to a scenario (an option out of range, a grid that does not load, an output folder in the way):
    a one-line message; nothing has been written."""


class RunFailed(RuntimeError):
    """The simulation stopped before its end (a simulator failed); the results folder says so."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C: the results folder holds the steps done and says it is incomplete."""

    def __init__(self, out: Path, steps_done: int, n_steps: int):
        super().__init__(f"interrupted after {steps_done} of {n_steps} steps")
        self.out, self.steps_done, self.n_steps = out, steps_done, n_steps
