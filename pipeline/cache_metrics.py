"""Reading the services' cache hit rate: ``GET`` a service's cache metrics URL and take the number in
its ``hit_rate`` field (the guide's ``curl http://localhost:8053/cache/metrics | jq '.hit_rate'``).

The exporter turns it into a gauge, the job a json_exporter would otherwise do. Like a health probe
(pipeline/health.py, whose transport, body cap and failure reasons this shares), a read never raises
for anything the service does: a hang, a refusal, an endless or huge body, bytes that are not JSON,
JSON nested a million deep, a ``hit_rate`` that is a string, ``true``, NaN or 7 each become a
``CacheReading`` with a failure reason, and the rest of the round is unaffected.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from pipeline import health
from pipeline.events import UnreadableRecord, read_json_object

HIT_RATE_FIELD = "hit_rate"

# Why a read failed: the transport's reasons are the health probe's, then what the answer lacked.
NOT_A_JSON_OBJECT = "not_a_json_object"
MISSING_HIT_RATE = "missing_hit_rate"
HIT_RATE_OUT_OF_RANGE = "hit_rate_out_of_range"
FAILURE_REASONS = (
    health.TIMEOUT, health.CONNECTION_REFUSED, health.CONNECTION_ERROR, health.HTTP_ERROR,
    health.TOO_MANY_REDIRECTS, health.BODY_TOO_LARGE, health.TLS_ERROR,
    NOT_A_JSON_OBJECT, MISSING_HIT_RATE, HIT_RATE_OUT_OF_RANGE,
)


@dataclass(frozen=True)
class CacheReading:
    service: str
    hit_rate: float | None  # in [0, 1]; None when the read failed
    failure_reason: str | None  # one of FAILURE_REASONS, None on success
    duration_seconds: float
    detail: str = ""  # one human-readable line on what happened; never carries URL credentials


def read_all(targets: Sequence[health.Target], *, timeout_seconds: float, max_body_bytes: int) -> list[CacheReading]:
    """Read every target concurrently; returns within about ``timeout_seconds`` whatever they do.
    Runs its own event loop, so call it from synchronous code."""
    return asyncio.run(read_all_async(targets, timeout_seconds=timeout_seconds, max_body_bytes=max_body_bytes))


async def read_all_async(targets: Sequence[health.Target], *, timeout_seconds: float,
                         max_body_bytes: int) -> list[CacheReading]:
    if not targets:
        return []
    # As for health probes: a fresh client per round, no proxy from the environment.
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_seconds), follow_redirects=True,
                                 max_redirects=health.MAX_REDIRECTS, trust_env=False) as client:
        return list(await asyncio.gather(
            *(_bounded_read(client, target, timeout_seconds, max_body_bytes) for target in targets)))


async def _bounded_read(client: httpx.AsyncClient, target: health.Target, timeout_seconds: float,
                        max_body_bytes: int) -> CacheReading:
    started = time.monotonic()
    try:
        # The whole read, redirects and a body trickled byte by byte included, within the timeout.
        hit_rate, reason, detail = await asyncio.wait_for(_read(client, target, max_body_bytes), timeout_seconds)
    except (TimeoutError, httpx.TimeoutException):
        hit_rate, reason, detail = None, health.TIMEOUT, f"no complete answer within {timeout_seconds:g}s"
    except httpx.TooManyRedirects:
        hit_rate, reason, detail = None, health.TOO_MANY_REDIRECTS, f"more than {health.MAX_REDIRECTS} redirects"
    except httpx.HTTPError as error:
        hit_rate = None
        reason, detail = health.classify_transport_error(error)
    return CacheReading(target.name, hit_rate, reason, time.monotonic() - started, detail)


async def _read(client: httpx.AsyncClient, target: health.Target,
                max_body_bytes: int) -> tuple[float | None, str | None, str]:
    async with client.stream("GET", target.url, headers={"Accept": "application/json"}) as response:
        body = await health.read_capped(response, max_body_bytes)
    if body is None:
        return None, health.BODY_TOO_LARGE, f"answer larger than {max_body_bytes} bytes"
    if response.status_code >= 300:
        return None, health.HTTP_ERROR, f"HTTP {response.status_code}"
    return hit_rate_of(body)


def hit_rate_of(body: bytes) -> tuple[float | None, str | None, str]:
    """(hit rate, None, detail) from a cache metrics answer, or (None, reason, detail) saying why not."""
    try:
        document = read_json_object(body)
    except UnreadableRecord as error:
        return None, NOT_A_JSON_OBJECT, f"answer is {error}"
    value = document.get(HIT_RATE_FIELD)
    # bool is an int to Python, and true is no rate.
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None, MISSING_HIT_RATE, f"JSON answer has no number field {HIT_RATE_FIELD!r}"
    if not (math.isfinite(value) and 0 <= value <= 1):
        return None, HIT_RATE_OUT_OF_RANGE, f"{HIT_RATE_FIELD} {str(value)[:32]} is not between 0 and 1"
    return float(value), None, f"{HIT_RATE_FIELD} {value:g}"
