"""Faults in distributed runs: a remote aggregator (mosaik `cmd` mode: started by mosaik; `connect` mode: waiting
with `evagg-mosaik -r`) that is killed or stopped mid-run ends `evagg run remote` within seconds, with exit status
1, an error naming the simulator and how it was started, the steps done kept in results.csv and summary.json
saying "complete": false with the failure (not "interrupted"). Each run is a subprocess with a timeout, so that a
hang fails the test instead of blocking the suite."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("simbench")
pytest.importorskip("mosaik_components.pandapower")

BIN = Path(sys.executable).parent
START = "2026-01-14T18:00:00"
RUN = ["run", "remote", "--evs", "6", "--aggregators", "2", "--steps", "96", "--start", START, "--seed", "3",
       "--no-plots", "--no-progress"]
BOUND_S = 240  # the whole run, set-up included (a hang fails here)
REACT_S = 20  # from the kill to the end of the process: the watchdog checks every 0.2 s; the rest is the summary


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


def wait_for_steps(proc: subprocess.Popen, out: Path, n: int, deadline: float) -> None:
    while steps_written(out) < n:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {n} steps: {proc.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {n} steps within {BOUND_S} s")
        time.sleep(0.1)


def finish(proc: subprocess.Popen, t_fault: float, deadline: float) -> tuple[int, str, float]:
    try:
        _, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the co-simulation hung after the aggregator was lost")
    return proc.returncode, stderr, time.monotonic() - t_fault


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("evagg: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def check_failed_folder(out: Path, steps_before: int, *expected) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and "interrupted" not in summary
    assert "EVAgg-" in summary["error"] and all(e in summary["error"] for e in expected), summary["error"]
    assert steps_before <= summary["steps_done"] < 96
    assert summary["figures"]["steps"] >= steps_before  # the steps done are kept, and summarised
    assert steps_written(out) >= steps_before
    return summary


@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_a_lost_cmd_aggregator_ends_the_run(tmp_path, fault):
    out = tmp_path / "run"
    deadline = time.monotonic() + BOUND_S
    proc = subprocess.Popen(evagg(*RUN, "--out", str(out)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for_steps(proc, out, 3, deadline)
        aggregators = [c for c in children(proc.pid)]
        assert len(aggregators) == 2, aggregators
        before = steps_written(out)
        os.kill(aggregators[0], signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        code, stderr, react = finish(proc, time.monotonic(), deadline)
    finally:
        for pid in children(proc.pid):  # a stopped one would outlive a failed test
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
    assert code == 1, stderr
    message = error_line(stderr)
    assert message.startswith("evagg: error: the run failed: SimulatorLost: simulator EVAgg-")
    assert "started by cmd" in message and "evagg-mosaik" in message
    assert ("killed by signal 9" if fault == "kill" else "is stopped") in message, message
    assert react < REACT_S, react
    check_failed_folder(out, before, "started by cmd")


@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_a_lost_connect_aggregator_ends_the_run(tmp_path, fault):
    """connect mode: mosaik knows the aggregator by its socket only: a killed one closes it, a stopped one does
    not answer within --answer-timeout."""
    out = tmp_path / "run"
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    servers = [subprocess.Popen(aggregator_server(a), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for a in addresses]
    deadline = time.monotonic() + BOUND_S
    proc = None
    try:
        time.sleep(0.5)
        proc = subprocess.Popen(evagg(*RUN, "--connect", ",".join(addresses), "--answer-timeout", "3", "--out",
                                      str(out)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_steps(proc, out, 3, deadline)
        before = steps_written(out)
        servers[1].send_signal(signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        code, stderr, react = finish(proc, time.monotonic(), deadline)
    finally:
        for s in servers:
            s.kill()
            s.communicate()
        if proc is not None and proc.poll() is None:
            proc.kill()
    assert code == 1, stderr
    message = error_line(stderr)
    assert f"simulator EVAgg-1 (connected to {addresses[1]})" in message, message
    # a killed process's socket ends by EOF or by a reset, whichever the kernel delivers first: both are the loss
    said = ("closed its connection", "lost its connection") if fault == "kill" else ("did not answer its",)
    assert any(words in message for words in said), message
    assert react < REACT_S + (3 if fault == "stop" else 0), react
    check_failed_folder(out, before, f"connected to {addresses[1]}")
