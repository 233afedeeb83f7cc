"""Times as operators type them: ``--since 30m``, ``--since 2026-01-31T12:00:00Z``, ``timestamp:...``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"(\d{1,9})([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def utc_moment(text: str) -> datetime:
    """An ISO 8601 time; one without a zone is read as UTC. ValueError saying what is expected."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time (e.g. 2026-01-31T12:00:00Z)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def since_moment(text: str, now: datetime | None = None) -> datetime:
    """``30m``, ``2h``, ``1d12h`` (s, m, h, d, w) ago from ``now``, or an ISO 8601 time (UTC when no
    zone is given). ValueError saying what is expected."""
    parts = _DURATION.findall(text)
    if parts and "".join(number + unit for number, unit in parts) == text:
        ago = timedelta(seconds=sum(int(number) * _UNIT_SECONDS[unit] for number, unit in parts))
        return (now or datetime.now(UTC)) - ago
    try:
        return utc_moment(text)
    except ValueError:
        raise ValueError(f"{text!r}: expected a duration (30m, 2h, 1d; units s m h d w) or an ISO 8601 time "
                         f"(2026-01-31T12:00:00Z)") from None
