"""devkafka.processes.stop_processes, the one way a child is stopped (brokers, the demo's servers,
the benchmarks' exporters and simulators): SIGTERM, a grace period, SIGKILL, reaped."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from devkafka.processes import stop_processes

# The child says "ready" once its SIGTERM disposition is set, so the signal never races its start.
EXITS_ON_SIGTERM = "import time; print('ready', flush=True); time.sleep(600)"
IGNORES_SIGTERM = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                   "print('ready', flush=True); time.sleep(600)")


def started(code: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "ready\n"
    return process


def test_a_child_that_exits_on_sigterm_is_stopped_by_it_and_reaped() -> None:
    process = started(EXITS_ON_SIGTERM)
    stop_processes(process, grace_seconds=60)
    assert process.returncode == -signal.SIGTERM
    assert not Path(f"/proc/{process.pid}").exists()


def test_a_child_that_ignores_sigterm_is_killed_once_the_grace_is_over() -> None:
    process = started(IGNORES_SIGTERM)
    stop_processes(process, grace_seconds=0.5)
    assert process.returncode == -signal.SIGKILL


def test_no_grace_kills_without_asking_first(tmp_path: Path) -> None:
    asked = tmp_path / "asked"
    process = started(f"import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: (open({str(asked)!r}, "
                      "'w').close(), sys.exit(0))); print('ready', flush=True); time.sleep(600)")
    stop_processes(process, grace_seconds=0)
    assert process.returncode == -signal.SIGKILL
    assert not asked.exists(), "the child was sent SIGTERM"


def test_several_children_are_stopped_side_by_side_each_as_it_needs() -> None:
    polite, stubborn = started(EXITS_ON_SIGTERM), started(IGNORES_SIGTERM)
    stop_processes(stubborn, polite, grace_seconds=0.5)
    assert (polite.returncode, stubborn.returncode) == (-signal.SIGTERM, -signal.SIGKILL)


def test_a_child_that_already_exited_is_only_reaped() -> None:
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)  # until it exited, leaving it to be reaped
    stop_processes(process)
    assert process.returncode == 3


def test_a_multiprocessing_child_is_stopped_the_same_way() -> None:
    process = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(600,))
    process.start()
    stop_processes(process, grace_seconds=60)
    assert not process.is_alive()
    assert process.exitcode == -signal.SIGTERM
