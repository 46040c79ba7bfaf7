"""A supervised `world.run`: a remote simulator (``cmd`` or ``connect``) that dies, closes its connection, is stopped
or does not answer ends the co-simulation with `SimulatorLost`, within about a second, instead of hanging.

    from evagg.plugin import SimulatorLost, supervised_run
    try:
        supervised_run(world, until=96 * 900, answer_timeout=120)   # world.run's other options pass through
    except SimulatorLost as exc:
        print(exc)   # simulator EVAgg-0 (started by cmd `evagg-mosaik 127.0.0.1:40123`, pid 4242) ...

Why: mosaik 3 (checked on 3.6) raises a lost connection only when the simulator closes it while mosaik waits for
its answer. A simulator that dies between two of its calls (e.g. while the grid steps) has its connection's
reader end first; mosaik's next request is then written into the dead socket and awaited for ever. A reset
connection (ConnectionResetError, not IncompleteReadError) ends the reader without failing the waiting request,
and a stopped or hung simulator never answers: both hang too. And shutting such a world down hangs as well
(`RemoteProxy.stop` waits for a reader that will never see the end of the requests).

What is watched, every `check_every` seconds while the world runs: each remote simulator's process (cmd: exited
with its status, or stopped by a signal while a request waits), its connection (both modes: closed or reset) and
the age of its oldest unanswered request (`answer_timeout` seconds, None: no limit). On a loss the run is
cancelled, the lost simulator is dropped (its socket aborted, its process killed if mosaik started it), the
others are shut down as usual (``shutdown=True``) and `SimulatorLost` names the simulator, how it was started and
what happened. What the other simulators wrote before (e.g. evagg's CollectorSim tables, flushed as they go)
is kept.

It reads a few private attributes of mosaik 3's proxies (`_channel`, `_process`, the channel's reader task);
without them a simulator is watched by `answer_timeout` only.
"""
from __future__ import annotations

import asyncio
import functools
import shlex
import signal
import subprocess
from dataclasses import dataclass, field

__all__ = ["SimulatorLost", "supervised_run"]

STOP_WAIT_S = 5.0  # at the shutdown: how long a remote simulator has to close after "stop" (mosaik gives 0.1 s)


class SimulatorLost(RuntimeError):
    """A remote simulator of the world died or stopped answering; the message names it and how it was started."""

    def __init__(self, sid: str, started: str, what: str):
        super().__init__(f"simulator {sid} ({started}) {what}")
        self.sid, self.started, self.what = sid, started, what


@dataclass
class _Remote:
    """One remote simulator under watch: its proxy, process (cmd) and unanswered requests (token -> (call, t0))."""

    sid: str
    proxy: object  # mosaik.proxies.RemoteProxy
    pending: dict = field(default_factory=dict)

    @property
    def process(self):
        proc = getattr(self.proxy, "_process", None)
        return proc[0] if proc else None

    @property
    def started(self) -> str:
        proc = self.process
        if proc is not None:
            args = proc.args if isinstance(proc.args, (list, tuple)) else [str(proc.args)]
            return f"started by cmd `{' '.join(shlex.quote(str(a)) for a in args)}`, pid {proc.pid}"
        writer = getattr(getattr(self.proxy, "_channel", None), "_writer", None)
        peer = writer.get_extra_info("peername") if writer is not None else None
        return f"connected to {peer[0]}:{peer[1]}" if peer else "connected"

    def loss(self, now: float, answer_timeout: float | None) -> str | None:
        """What is wrong with it (None: nothing seen)."""
        waiting = min(self.pending.values(), key=lambda v: v[1]) if self.pending else None
        reader = getattr(getattr(self.proxy, "_channel", None), "_receiver_task", None)
        closed = reader is not None and reader.done()
        proc = self.process
        if proc is not None:
            code = proc.poll()
            if code is None and closed:  # the socket closes as the process exits: give it a moment, for its status
                try:
                    code = proc.wait(0.5)
                except subprocess.TimeoutExpired:
                    pass
            if code is not None:
                how = (f"was killed by signal {-code} ({_signal_name(-code)})" if code < 0
                       else f"exited with status {code}")
                return f"{how}{_during(waiting)}"
            if waiting is not None and _stopped(proc.pid):
                return f"is stopped (by a signal such as SIGSTOP) and does not answer its {waiting[0]!r} call"
        if closed:
            exc = None if reader.cancelled() else reader.exception()
            how = f"lost its connection ({type(exc).__name__})" if exc is not None else "closed its connection"
            return f"{how}{_during(waiting)}"
        if answer_timeout is not None and waiting is not None and now - waiting[1] > answer_timeout:
            return f"did not answer its {waiting[0]!r} call within {answer_timeout:g} s"
        return None

    async def stop(self, wait_s: float) -> None:
        """Stop it in bounded time (replaces mosaik's `RemoteProxy.stop`, which waits for the end of the
        connection's requests for ever when the simulator did not close it within 0.1 s, e.g. while it finishes
        the step of a cancelled run): "stop" is sent and `wait_s` given for it to close, then it is dropped."""
        channel = getattr(self.proxy, "_channel", None)
        if channel is not None and not channel._receiver_task.done():
            try:
                await asyncio.wait_for(channel.send(["stop", [], {}]), wait_s)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                pass  # it closes instead of answering
        self.drop(grace_s=wait_s)

    def drop(self, grace_s: float = 0.0) -> None:
        """End our side: abort its socket, end the connection's reader tasks; its process (cmd, if mosaik is to
        terminate it) is given `grace_s` to exit on its own (after "stop"), then killed (SIGKILL: a stopped
        process does not act on SIGTERM)."""
        proxy = self.proxy
        channel = getattr(proxy, "_channel", None)
        writer = getattr(channel, "_writer", None)
        if writer is not None:
            writer.transport.abort()
        for task in (getattr(channel, "_receiver_task", None), getattr(proxy, "_reader_task", None)):
            if task is not None and not task.done():
                task.cancel()
        proc = self.process
        if proc is not None and getattr(proxy, "_process", (None, True))[1]:
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                try:
                    proc.wait(2.0)
                except subprocess.TimeoutExpired:  # pragma: no cover - unkillable: nothing more to do
                    pass

        async def stopped() -> None:
            return None

        proxy.stop = stopped  # nothing left to stop


def _during(waiting) -> str:
    return f" while mosaik waited for its {waiting[0]!r} call" if waiting is not None else ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def _stopped(pid: int) -> bool:
    """Whether the process is stopped (state T or t in /proc; False where there is no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("T", "t")


def _remotes(world) -> list[_Remote]:
    """The world's remote simulators (mosaik's RemoteProxy: the proxies with a channel; found by that, so that
    this module needs no mosaik import), their `send` wrapped to note each unanswered request."""
    remotes = []
    for sid, proxy in world._async_world._proxies.items():
        while not hasattr(proxy, "_channel") and hasattr(proxy, "_out"):  # mosaik's API-version adapters
            proxy = proxy._out
        if not hasattr(proxy, "_channel"):
            continue  # in-process ("python") simulators cannot be lost
        remote = _Remote(sid, proxy)
        proxy.send = _noting(remote, proxy.send)
        proxy.stop = functools.partial(remote.stop, STOP_WAIT_S)
        remotes.append(remote)
    return remotes


def _noting(remote: _Remote, send):
    async def noted(request):
        token = object()
        remote.pending[token] = (str(request[0]), asyncio.get_running_loop().time())
        try:
            return await send(request)
        finally:
            remote.pending.pop(token, None)

    return noted


def supervised_run(world, until: int, *, answer_timeout: float | None = None, check_every: float = 0.2,
                   shutdown: bool = True, **run_options) -> None:
    """`world.run(until, **run_options)` (a mosaik 3 `World`) under watch: raises `SimulatorLost` within about
    `check_every` seconds when a remote simulator dies, closes or loses its connection, or is stopped while
    mosaik waits for it, and when one leaves a request unanswered for `answer_timeout` seconds (None: no limit;
    set it above the slowest step you expect). Then the lost simulator is dropped and, with ``shutdown=True``
    (as `world.run`), the others are shut down; with ``shutdown=False`` call `world.shutdown()` yourself (it no
    longer hangs on the lost one). An error that mosaik raises itself because a simulator went away is raised as
    `SimulatorLost` too (from mosaik's). Ctrl-C and other errors pass through unchanged."""
    if world.loop.is_closed():
        raise RuntimeError("this world has already run (a mosaik World runs once)")
    remotes = _remotes(world)
    lost: list[tuple[_Remote, str]] = []

    def check() -> None:
        if not lost:
            now = world.loop.time()
            lost.extend((r, what) for r in remotes if (what := r.loss(now, answer_timeout)) is not None)

    async def watch(run: asyncio.Task) -> None:
        while not run.done():
            await asyncio.sleep(check_every)
            check()
            if lost:
                run.cancel()
                return

    async def main() -> None:
        run = asyncio.ensure_future(world._async_world.run(until, **run_options))
        dog = asyncio.ensure_future(watch(run)) if remotes else None
        try:
            await run
        finally:
            if dog is not None:
                dog.cancel()

    try:
        world.loop.run_until_complete(main())
    except (Exception, asyncio.CancelledError) as exc:
        check()  # e.g. mosaik's own ConnectionClosedError: say which simulator and how
        if not lost:
            raise
        _end(world, lost, shutdown)
        remote, what = lost[0]
        raise SimulatorLost(remote.sid, remote.started, what) from (
            None if isinstance(exc, asyncio.CancelledError) else exc)
    if shutdown:
        world.shutdown()


def _end(world, lost, shutdown: bool) -> None:
    """After a loss: mosaik's tasks of the run cancelled, the lost simulators dropped, the others shut down."""
    loop = world.loop
    for remote, _ in lost:
        remote.drop()
    # the run's tasks (mosaik's runners and what they waited on); the connections' readers stay for the shutdown
    keep = ("Reader task for ", "handle remote requests for ")
    pending = [t for t in asyncio.all_tasks(loop) if not t.done() and not t.get_name().startswith(keep)]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    if shutdown:
        try:
            world.shutdown()
        except Exception:  # noqa: BLE001 - a simulator that failed is gone already; the loss is what is raised
            pass
