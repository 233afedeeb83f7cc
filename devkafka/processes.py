"""Child processes started and stopped the same way everywhere.

A local server binary (Prometheus, Alertmanager, ...) run for as long as a ``with`` block: the
demo, tests and benchmarks all start such servers the same way: the binary with its arguments,
its output in a log file, ready once an HTTP URL answers 200 (asked until a deadline, never
guessed with a sleep), its log tail in the error when it exits or stays unready, and stopped
however the block ends.

``stop_processes`` is the one way any child is stopped (brokers, servers, the benchmarks'
exporters and simulators): SIGTERM, a grace period to exit on its own, SIGKILL, reaped.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path

import httpx

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """A ``preexec_fn``: the child is killed when the thread that started it ends.

    A test run that is killed (a timeout, Ctrl-C twice, an OOM kill) never reaches its ``finally``
    blocks; without this its brokers and servers would run on, orphaned, eating the machine. Linux
    counts the starting *thread*: start long-lived servers from a thread that outlives them.
    """
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


# How often readiness is asked while a server starts.
READY_POLL_SECONDS = 0.2


class ProcessStartError(RuntimeError):
    """The server exited or did not become ready; the message carries the tail of its log."""


@contextlib.contextmanager
def running_process(name: str, command: Sequence[str], ready_url: str, log_path: Path,
                    timeout: float = 60.0, stop_timeout: float = 15.0) -> Iterator[subprocess.Popen]:
    """Start ``command``, wait until ``ready_url`` answers 200, yield the process, stop it at the end.

    ``name`` is what the errors call it; its output (stdout and stderr) goes to ``log_path``.
    """
    with log_path.open("wb") as log:
        # Its own session, so a Ctrl-C meant for the caller reaches the server only through stop.
        process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent)
    try:
        _await_ready(name, process, ready_url, log_path, timeout)
        yield process
    finally:
        stop_processes(process, grace_seconds=stop_timeout)


def _await_ready(name: str, process: subprocess.Popen, ready_url: str, log_path: Path,
                 timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise ProcessStartError(f"{name} exited with {process.returncode} before it was ready; "
                                    f"the end of {log_path}:\n{log_tail(log_path)}")
        try:
            if httpx.get(ready_url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise ProcessStartError(f"{name} not ready at {ready_url} within {timeout:g}s; "
                                    f"the end of {log_path}:\n{log_tail(log_path)}")
        time.sleep(READY_POLL_SECONDS)


# What the callers stop: a command (subprocess) or a Python function in a child (multiprocessing).
Stoppable = subprocess.Popen | BaseProcess

# How long a child has to exit on its own after SIGTERM, unless the caller says otherwise.
DEFAULT_GRACE_SECONDS = 15.0
# A child that SIGKILL does not end within this long is stuck in the kernel (uninterruptible I/O).
KILL_WAIT_SECONDS = 10.0


def stop_processes(*processes: Stoppable, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> None:
    """Stop ``processes`` and reap them: SIGTERM to all at once (so they shut down side by side,
    not one after the other), up to ``grace_seconds`` in all for them to exit, then SIGKILL for
    those still running. ``grace_seconds=0`` kills straight away: a crash on purpose, or a child
    whose state is thrown away anyway. Those already exited are only reaped.

    Raises TimeoutError when a child outlives its SIGKILL by KILL_WAIT_SECONDS.
    """
    running = [process for process in processes if not _exited(process, 0)]
    if grace_seconds > 0:
        for process in running:
            process.terminate()
        deadline = time.monotonic() + grace_seconds
        running = [process for process in running if not _exited(process, max(0.0, deadline - time.monotonic()))]
    for process in running:
        process.kill()
    stuck = [process.pid for process in running if not _exited(process, KILL_WAIT_SECONDS)]
    if stuck:
        raise TimeoutError(f"process(es) {', '.join(map(str, stuck))} still running {KILL_WAIT_SECONDS:g}s "
                           "after SIGKILL")


def _exited(process: Stoppable, timeout: float) -> bool:
    """Whether ``process`` exits within ``timeout`` seconds (and is then reaped)."""
    if isinstance(process, subprocess.Popen):
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    process.join(timeout)
    return not process.is_alive()


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file ("" when there is none yet)."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
