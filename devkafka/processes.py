"""A local server binary (Prometheus, Alertmanager, ...) run for as long as a ``with`` block.

The demo, tests and benchmarks all start such servers the same way: the binary with its
arguments, its output in a log file, ready once an HTTP URL answers 200 (asked until a
deadline, never guessed with a sleep), its log tail in the error when it exits or stays
unready, and stopped (terminate, then kill) however the block ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
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
        _stop(process, stop_timeout)


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


def _stop(process: subprocess.Popen, timeout: float) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file ("" when there is none yet)."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
