"""Faults in distributed runs: a remote aggregator (mosaik `cmd` mode: started by mosaik; `connect` mode: waiting
with `evagg-mosaik -r`) that is killed or stopped mid-run ends `evagg run remote` within seconds, with exit status
1, an error naming the simulator and how it was started, the steps done kept in results.csv and summary.json
saying "complete": false with the failure (not "interrupted").

The four cases run at once (a module fixture), each `evagg run remote` a subprocess of its own on a tiny feeder
saved as pandapower JSON (the grid plays no part in the fault; a simbench grid costs seconds to load), so that
their start-ups overlap; each is watched to a deadline, so that a hang fails its test instead of blocking the
suite."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("mosaik_components.pandapower")
pp = pytest.importorskip("pandapower")

from nets import radial_net  # noqa: E402

BIN = Path(sys.executable).parent
START = "2026-01-14T18:00:00"
# 3 days: far more steps than a case lives through (it is ended after 3), so the fault always lands mid-run
N_STEPS = 3 * 96
RUN = ["run", "remote", "--evs", "6", "--aggregators", "2", "--days", "3", "--start", START, "--seed", "3",
       "--results-format", "csv", "--no-plots", "--no-progress"]
STEPS_BEFORE_FAULT = 3
ANSWER_TIMEOUT_S = 3  # connect mode: a stopped aggregator is noticed by its unanswered call
BOUND_S = 180  # all four runs, set-up included (a hang fails here)
REACT_S = 20  # from the fault to the end of the process: the watchdog checks every 0.2 s; the rest is the summary
CASES = [("cmd", "kill"), ("cmd", "stop"), ("connect", "kill"), ("connect", "stop")]


def evagg(*args) -> list[str]:
    exe = BIN / "evagg"
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "evagg.scenarios", *args]


def aggregator_server(address: str) -> list[str]:
    exe = BIN / "evagg-mosaik"
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "evagg.plugin"]
    return [*base, "-l", "warning", "-r", address]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """Whether a socket listens on 127.0.0.1:`port` (read from /proc: a trial connection would be the one
    connection an `evagg-mosaik -r` server accepts)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp", encoding="ascii") as f:
        return any(cols[1] == want and cols[3] == "0A" for cols in (line.split() for line in f.readlines()[1:]))


def steps_written(out: Path) -> int:
    """Distinct times in results.csv so far (the collector flushes each step)."""
    try:
        lines = (out / "results.csv").read_text(encoding="utf-8").splitlines()[1:]
    except FileNotFoundError:
        return 0
    return len({line.split(",", 1)[0] for line in lines if line})


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class Case:
    """One fault case in flight: its run, the aggregator processes, and what happened when."""

    mode: str  # cmd | connect
    fault: str  # kill | stop
    out: Path
    grid: Path  # the feeder, a pandapower JSON file
    addresses: list = field(default_factory=list)  # connect mode
    servers: list = field(default_factory=list)  # connect mode: the waiting aggregator processes
    proc: subprocess.Popen | None = None
    aggregators: list = field(default_factory=list)  # their pids, noted at the fault (they outlive a failed run)
    steps_before: int = 0
    t_fault: float | None = None
    react_s: float | None = None
    problem: str | None = None  # why the case did not reach the checks (the test fails with it)

    @property
    def over(self) -> bool:
        return self.problem is not None or self.react_s is not None

    def start(self) -> None:
        args = [*RUN, "--grid", str(self.grid), "--out", str(self.out)]
        if self.mode == "connect":
            args += ["--connect", ",".join(self.addresses), "--answer-timeout", str(ANSWER_TIMEOUT_S)]
        # to files, not pipes: four runs at once, read when they end (a full pipe would block its run)
        with open(self.out.with_suffix(".stdout"), "w") as out, open(self.out.with_suffix(".stderr"), "w") as err:
            self.proc = subprocess.Popen(evagg(*args), stdout=out, stderr=err)

    @property
    def stderr(self) -> str:
        return self.out.with_suffix(".stderr").read_text(encoding="utf-8")

    def advance(self) -> None:
        """One look at the case: fault it once it has written its steps, note when it ends."""
        if self.over:
            return
        code = self.proc.poll()
        if self.t_fault is None:
            if code is not None:
                self.problem = f"the run ended before {STEPS_BEFORE_FAULT} steps: {self.stderr[-2000:]}"
            elif steps_written(self.out) >= STEPS_BEFORE_FAULT:
                self.aggregators = children(self.proc.pid) if self.mode == "cmd" else [s.pid for s in self.servers]
                if len(self.aggregators) != 2:
                    self.problem = f"expected 2 aggregator processes, found {self.aggregators}"
                    return
                self.steps_before = steps_written(self.out)
                # cmd: the first one mosaik started; connect: EVAgg-1 (the second address)
                victim = self.aggregators[0] if self.mode == "cmd" else self.aggregators[1]
                os.kill(victim, signal.SIGKILL if self.fault == "kill" else signal.SIGSTOP)
                self.t_fault = time.monotonic()
        elif code is not None:
            self.react_s = time.monotonic() - self.t_fault

    def end(self) -> None:
        """Nothing of the case outlives the module (a stopped aggregator would)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.aggregators:
            kill_quietly(pid)
        for s in self.servers:
            s.kill()
            s.wait()


@pytest.fixture(scope="module")
def faulted(tmp_path_factory) -> dict:
    """(mode, fault) -> its Case, every case run to its end (or to the deadline: a hang)."""
    where = tmp_path_factory.mktemp("faults")
    grid = where / "feeder.json"
    pp.to_json(radial_net(), str(grid))
    cases = {(m, f): Case(m, f, where / f"{m}-{f}", grid) for m, f in CASES}
    deadline = time.monotonic() + BOUND_S
    try:
        for case in cases.values():
            if case.mode == "connect":
                ports = [free_port() for _ in range(2)]
                case.addresses = [f"127.0.0.1:{p}" for p in ports]
                case.servers = [subprocess.Popen(aggregator_server(a), stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.DEVNULL) for a in case.addresses]
        waiting = [int(a.rsplit(":", 1)[1]) for c in cases.values() for a in c.addresses]
        while not all(listening(p) for p in waiting) and time.monotonic() < deadline:
            time.sleep(0.1)
        for case in cases.values():
            case.start()
        while not all(c.over for c in cases.values()):
            if time.monotonic() > deadline:
                for c in cases.values():
                    if not c.over:
                        c.problem = (f"the co-simulation hung after the aggregator was lost ({BOUND_S} s)"
                                     if c.t_fault is not None else f"no {STEPS_BEFORE_FAULT} steps within {BOUND_S} s")
                break
            for c in cases.values():
                c.advance()
            time.sleep(0.05)
    finally:
        for case in cases.values():
            case.end()
    return cases


def outcome(faulted: dict, mode: str, fault: str) -> Case:
    case = faulted[(mode, fault)]
    if case.problem:
        pytest.fail(case.problem)
    return case


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("evagg: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def check_failed_folder(case: Case, *expected) -> dict:
    summary = json.loads((case.out / "summary.json").read_text())
    assert summary["complete"] is False and "interrupted" not in summary
    assert "EVAgg-" in summary["error"] and all(e in summary["error"] for e in expected), summary["error"]
    assert case.steps_before <= summary["steps_done"] < N_STEPS
    assert summary["figures"]["steps"] >= case.steps_before  # the steps done are kept, and summarised
    assert steps_written(case.out) >= case.steps_before
    return summary


@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_a_lost_cmd_aggregator_ends_the_run(faulted, fault):
    case = outcome(faulted, "cmd", fault)
    assert case.proc.returncode == 1, case.stderr
    message = error_line(case.stderr)
    assert message.startswith("evagg: error: the run failed: SimulatorLost: simulator EVAgg-")
    assert "started by cmd" in message and "evagg-mosaik" in message
    assert f"pid {case.aggregators[0]}" in message, message  # the one killed, not its healthy sibling
    assert ("killed by signal 9" if fault == "kill" else "is stopped") in message, message
    assert case.react_s < REACT_S, case.react_s
    check_failed_folder(case, "started by cmd")


@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_a_lost_connect_aggregator_ends_the_run(faulted, fault):
    """connect mode: mosaik knows the aggregator by its socket only: a killed one closes it, a stopped one does
    not answer within --answer-timeout."""
    case = outcome(faulted, "connect", fault)
    assert case.proc.returncode == 1, case.stderr
    message = error_line(case.stderr)
    assert f"simulator EVAgg-1 (connected to {case.addresses[1]})" in message, message
    # a killed process's socket ends by EOF or by a reset, whichever the kernel delivers first: both are the loss
    said = ("closed its connection", "lost its connection") if fault == "kill" else ("did not answer its",)
    assert any(words in message for words in said), message
    assert case.react_s < REACT_S + (ANSWER_TIMEOUT_S if fault == "stop" else 0), case.react_s
    check_failed_folder(case, f"connected to {case.addresses[1]}")
