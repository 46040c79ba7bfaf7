"""The bookkeeping of a run: the progress bar (counting the steps done), Ctrl-C, mosaik's logging, wall times."""
from __future__ import annotations

import signal as _signal
import sys
import threading
import time

from tqdm import tqdm

try:
    from loguru import logger  # mosaik's logger (it comes with mosaik)
except ImportError:  # pragma: no cover
    logger = None


class Progress:
    """A tqdm bar over all steps of a scenario's runs (on stderr; off when not asked for), counting steps done."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.done = 0
        self.bar = None
        if enabled:
            self.bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True, leave=True)

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)

    def __call__(self, time_) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class CtrlC:
    """While active: Ctrl-C sets `pressed` and raises KeyboardInterrupt (mosaik may swallow the exception and end
    its run early; `pressed` still says what happened)."""

    def __init__(self):
        self.pressed = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = _signal.getsignal(_signal.SIGINT)

            def handler(signum, frame):
                self.pressed = True
                raise KeyboardInterrupt

            _signal.signal(_signal.SIGINT, handler)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            _signal.signal(_signal.SIGINT, self._old)
        return False


def quiet_mosaik() -> None:
    """mosaik logs every start and connection through loguru at INFO: keep its warnings and errors only (and not
    mosaik-pandapower-2's advice to install numba, which the power flows of a feeder do not need)."""
    if logger is None:  # pragma: no cover
        return
    logger.remove()
    logger.add(sys.stderr, level="WARNING", format="{level}: {message}",
               filter=lambda record: "numba" not in record["message"])


def elapsed(t0: float) -> float:
    return round(time.perf_counter() - t0, 3)
