"""Waiting on a running pipeline's state by polling it, for what offers nothing to wait on (Prometheus,
consumer group commits, records of a topic)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# Bounds on waiting, never expected durations: generous for a busy 2-core machine.
WITHIN_SECONDS = 180.0


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WITHIN_SECONDS,
             seen: Callable[[], Any] | None = None) -> Any:
    """The condition's first true value, polled until ``timeout``; ``seen`` says what there was instead."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            instead = f"; seen: {seen()}" if seen else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{instead}")
        time.sleep(0.5)
