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
    """A tqdm bar over all steps of a scenario's runs (on stderr; off when not asked for), counting steps done,
    with the expected end as a clock time (``ends ~14:05``, with the date when it is not today), renewed at most
    once a second."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.done = 0
        self.total = int(total)
        self.bar = None
        self._shown = 0.0
        if enabled:
            self.bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True, leave=True)

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)

    def __call__(self, time_) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            now = time.monotonic()
            if now - self._shown >= 1.0:
                self._shown = now
                end = expected_end(self.bar.format_dict, self.total)
                if end:
                    self.bar.set_postfix_str(f"ends ~{end}", refresh=False)

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


def expected_end(stats: dict, total: int, now: float | None = None) -> str | None:
    """The clock time (local) at which a tqdm bar with `stats` (its format_dict) reaches `total`, or None while
    there is no rate yet."""
    rate = stats.get("rate") or (stats["n"] / stats["elapsed"] if stats.get("elapsed") and stats.get("n") else None)
    if not rate:
        return None
    left_s = max(total - stats["n"], 0) / rate
    now = time.time() if now is None else now
    end = time.localtime(now + left_s)
    same_day = time.strftime("%Y-%m-%d", end) == time.strftime("%Y-%m-%d", time.localtime(now))
    return time.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M", end)


def elapsed(t0: float) -> float:
    return round(time.perf_counter() - t0, 3)
