"""Probing the pipeline's services and stores: each target's URL is probed the way its kind says.

- ``json_status`` (the default): ``GET`` the health URL and read the ``status`` its JSON reports;
- ``http_ok``: ``GET`` the URL, any 2xx is healthy and the body is never read (Qdrant's ``/readyz``);
- ``tcp``: open a TCP connection to ``tcp://host:port`` (Memgraph's Bolt port, which speaks no HTTP).

The exporter probes every service on each refresh and the operator tools probe on demand; both
use this module so a service means the same thing everywhere. A probe never raises for anything
the service does: a hang, a refusal, a 10 MB answer, garbage, a redirect loop each become a
``ProbeResult`` with a failure reason. Every probe of a round runs concurrently and the whole round
is bounded by one timeout, so a hanging service delays nothing beyond it. ``http_ok`` and ``tcp``
probes report ``healthy`` or, failing, ``unknown``: neither has a status to read, and a store that
answers is all the index stage needs.

Reported status strings are mapped case-insensitively onto four states. The guide's own strings
("healthy", "degraded", "unhealthy") are used as given; common synonyms from other health-check
conventions are accepted too:

- healthy:   healthy, ok, up, pass, passing
- degraded:  degraded, warn, warning
- unhealthy: unhealthy, down, fail, failing, error, critical
- unknown:   anything else (the raw string is kept in ``ProbeResult.reported_status``)

A JSON answer with a readable ``status`` counts as a successful probe whatever its HTTP code:
services report "unhealthy" with a 503. Only when there is no readable status does the HTTP code
decide the reason (``http_error`` for 4xx/5xx, ``invalid_json``/``missing_status`` otherwise).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args
from urllib.parse import urlsplit, urlunsplit

import httpx

if TYPE_CHECKING:
    from pipeline.config import Service

# How a target is probed (see the module docstring); pipeline.config.Service.kind declares it.
ProbeKind = Literal["json_status", "http_ok", "tcp"]
JSON_STATUS, HTTP_OK, TCP = get_args(ProbeKind)
PROBE_KINDS: tuple[str, ...] = get_args(ProbeKind)

HEALTHY, DEGRADED, UNHEALTHY, UNKNOWN = "healthy", "degraded", "unhealthy", "unknown"
STATES = (HEALTHY, DEGRADED, UNHEALTHY, UNKNOWN)

# Why a probe failed; exporter.metrics.PROBE_FAILURE_REASONS exposes exactly these.
TIMEOUT = "timeout"
CONNECTION_REFUSED = "connection_refused"
CONNECTION_ERROR = "connection_error"
HTTP_ERROR = "http_error"
TOO_MANY_REDIRECTS = "too_many_redirects"
BODY_TOO_LARGE = "body_too_large"
INVALID_JSON = "invalid_json"
MISSING_STATUS = "missing_status"
TLS_ERROR = "tls_error"
FAILURE_REASONS = (
    TIMEOUT, CONNECTION_REFUSED, CONNECTION_ERROR, HTTP_ERROR, TOO_MANY_REDIRECTS,
    BODY_TOO_LARGE, INVALID_JSON, MISSING_STATUS, TLS_ERROR,
)

STATUS_SYNONYMS: dict[str, str] = {
    **dict.fromkeys(("healthy", "ok", "up", "pass", "passing"), HEALTHY),
    **dict.fromkeys(("degraded", "warn", "warning"), DEGRADED),
    **dict.fromkeys(("unhealthy", "down", "fail", "failing", "error", "critical"), UNHEALTHY),
}

MAX_REDIRECTS = 5
# A reported status longer than this is not a status; it is kept only this long for display.
_MAX_REPORTED_STATUS = 64


@dataclass(frozen=True)
class Target:
    """A service to probe: its name, its URL and how to probe it (one of PROBE_KINDS)."""

    name: str
    url: str
    kind: str = JSON_STATUS


def targets(services: Iterable[Service]) -> tuple[Target, ...]:
    """The probe targets of the configured services."""
    return tuple(Target(service.name, service.url, service.kind) for service in services)


@dataclass(frozen=True)
class ProbeResult:
    service: str
    success: bool
    status: str  # one of STATES; UNKNOWN whenever the probe failed
    duration_seconds: float
    http_status_code: int  # 0 when no response arrived
    failure_reason: str | None  # one of FAILURE_REASONS, None on success
    reported_status: str | None = None  # the string the service sent, as sent (truncated)
    detail: str = ""  # one human-readable line on what happened; never carries URL credentials


def map_status(reported: str) -> str:
    """One of STATES for a status string a service reported; unknown strings give UNKNOWN."""
    return STATUS_SYNONYMS.get(reported.strip().lower(), UNKNOWN)


def redact_url(url: str) -> str:
    """The URL without any user:password part, for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def probe_all(targets: Sequence[Target], *, timeout_seconds: float, max_body_bytes: int) -> list[ProbeResult]:
    """Probe every target concurrently; returns within about ``timeout_seconds`` whatever they do.

    Runs its own event loop, so call it from synchronous code (a refresh thread, a CLI command).
    """
    round_ = probe_all_async(targets, timeout_seconds=timeout_seconds, max_body_bytes=max_body_bytes)
    return asyncio.run(round_)


async def probe_all_async(targets: Sequence[Target], *, timeout_seconds: float,
                          max_body_bytes: int) -> list[ProbeResult]:
    # A fresh client per round: a keep-alive connection from the last round would hide a service
    # that stopped accepting connections. No proxy from the environment: a health endpoint is
    # probed directly, or the probe would report on the proxy.
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_seconds), follow_redirects=True,
                                 max_redirects=MAX_REDIRECTS, trust_env=False) as client:
        return list(await asyncio.gather(
            *(_bounded_probe(client, target, timeout_seconds, max_body_bytes) for target in targets)))


def probe(target: Target, *, timeout_seconds: float, max_body_bytes: int) -> ProbeResult:
    """Probe one target (see ``probe_all``)."""
    return probe_all([target], timeout_seconds=timeout_seconds, max_body_bytes=max_body_bytes)[0]


async def _bounded_probe(client: httpx.AsyncClient, target: Target, timeout_seconds: float,
                         max_body_bytes: int) -> ProbeResult:
    started = time.monotonic()
    outcome = _Outcome()
    try:
        # httpx's timeouts bound each network operation; this bounds the whole probe, redirects
        # and a body trickled byte by byte included.
        await asyncio.wait_for(_PROBES[target.kind](client, target, max_body_bytes, outcome), timeout_seconds)
    except (TimeoutError, httpx.TimeoutException):
        outcome.fail(TIMEOUT, f"no complete answer within {timeout_seconds:g}s")
    except ConnectionRefusedError:
        outcome.fail(CONNECTION_REFUSED, "connection refused")
    except OSError as error:  # only a tcp probe's own connect raises these; httpx wraps its own
        outcome.fail(CONNECTION_ERROR, _first_line(error))
    except httpx.TooManyRedirects:
        outcome.fail(TOO_MANY_REDIRECTS, f"more than {MAX_REDIRECTS} redirects")
    except httpx.HTTPError as error:
        outcome.fail(*classify_transport_error(error))
    return ProbeResult(
        service=target.name,
        success=outcome.reason is None,
        status=outcome.status if outcome.reason is None else UNKNOWN,
        duration_seconds=time.monotonic() - started,
        http_status_code=outcome.http_status_code,
        failure_reason=outcome.reason,
        reported_status=outcome.reported_status,
        detail=outcome.detail,
    )


class _Outcome:
    """What a probe learned so far; filled in step by step so a timeout keeps the HTTP code."""

    def __init__(self) -> None:
        self.status = UNKNOWN
        self.http_status_code = 0
        self.reason: str | None = None
        self.reported_status: str | None = None
        self.detail = ""

    def fail(self, reason: str, detail: str) -> None:
        self.reason, self.detail = reason, detail


async def _probe_json_status(client: httpx.AsyncClient, target: Target, max_body_bytes: int,
                             outcome: _Outcome) -> None:
    async with client.stream("GET", target.url, headers={"Accept": "application/json"}) as response:
        outcome.http_status_code = response.status_code
        body = await read_capped(response, max_body_bytes)
    if body is None:
        outcome.fail(BODY_TOO_LARGE, f"answer larger than {max_body_bytes} bytes")
        return
    error_code = response.status_code >= 400 or response.is_redirect
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        if error_code:
            outcome.fail(HTTP_ERROR, f"HTTP {response.status_code} without a JSON status")
        else:
            outcome.fail(INVALID_JSON, f"HTTP {response.status_code} answer is not JSON")
        return
    reported = document.get("status") if isinstance(document, dict) else None
    if not isinstance(reported, str):
        if error_code:
            outcome.fail(HTTP_ERROR, f"HTTP {response.status_code} without a JSON status")
        else:
            outcome.fail(MISSING_STATUS, "JSON answer has no string field 'status'")
        return
    outcome.reported_status = reported[:_MAX_REPORTED_STATUS]
    outcome.status = map_status(reported)
    outcome.detail = f"HTTP {response.status_code}, status {outcome.reported_status!r}"


async def _probe_http_ok(client: httpx.AsyncClient, target: Target, max_body_bytes: int, outcome: _Outcome) -> None:
    # Leaving the stream unread closes the connection instead of draining it: a readiness endpoint
    # that answers 200 with an endless body costs the probe nothing.
    async with client.stream("GET", target.url) as response:
        outcome.http_status_code = response.status_code
    if not response.is_success:
        outcome.fail(HTTP_ERROR, f"HTTP {response.status_code}, not 2xx")
        return
    outcome.status = HEALTHY
    outcome.detail = f"HTTP {response.status_code}"


async def _probe_tcp(client: httpx.AsyncClient, target: Target, max_body_bytes: int, outcome: _Outcome) -> None:
    host, port = tcp_address(target.url)
    _, writer = await asyncio.open_connection(host, port)
    # Accepted is all a tcp probe asks: the store's own protocol (Bolt) is not spoken.
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass  # a store that resets the connection we are closing has still accepted it
    outcome.status = HEALTHY
    outcome.detail = f"TCP connection to {host}:{port} accepted"


_PROBES = {JSON_STATUS: _probe_json_status, HTTP_OK: _probe_http_ok, TCP: _probe_tcp}


def tcp_address(url: str) -> tuple[str, int]:
    """(host, port) of a ``tcp://host:port`` URL; ValueError saying what is wrong otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "tcp":
        raise ValueError(f"the scheme is {parts.scheme or 'missing'!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError("no host")
    if not port:
        raise ValueError("no port from 1 to 65535")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("a path, query or user part, which TCP has no use for")
    return parts.hostname, port


async def read_capped(response: httpx.Response, max_body_bytes: int) -> bytes | None:
    """The (decoded) body, or None as soon as it exceeds ``max_body_bytes``."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_body_bytes:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_body_bytes:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def classify_transport_error(error: httpx.HTTPError) -> tuple[str, str]:
    causes = list(_causes(error))
    if any(isinstance(cause, ssl.SSLError) for cause in causes):
        return TLS_ERROR, f"TLS handshake failed: {_first_line(error)}"
    if any(isinstance(cause, ConnectionRefusedError) for cause in causes) or "refused" in str(error).lower():
        return CONNECTION_REFUSED, "connection refused"
    if isinstance(error, httpx.RemoteProtocolError):
        return CONNECTION_ERROR, f"no valid HTTP answer: {_first_line(error)}"
    if isinstance(error, httpx.DecodingError):
        return HTTP_ERROR, f"answer could not be decoded: {_first_line(error)}"
    return CONNECTION_ERROR, _first_line(error) or type(error).__name__


def _causes(error: BaseException):
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
