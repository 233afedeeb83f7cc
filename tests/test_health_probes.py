"""Health probes against real local HTTP servers that misbehave in every way the issue lists.

One threaded HTTP server answers each behaviour on its own path; a port nobody listens on gives
the refused connection. Every probe must end with the right status or failure reason, and a round
of all of them together must end by its timeout, hang included: long before the misbehaving
server would have let it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from devkafka import free_port
from exporter import metrics
from exporter.services_source import ServicesSource
from pipeline import health
from pipeline.config import parse_config
from tests.http_stubs import StubHandler, serving

TIMEOUT = 2.0
# The misbehaving server holds a hanging request for HANG_SECONDS and trickles a body over 32 s; a
# probe that obeys its timeout ends far sooner. Bounds are set against those, not against TIMEOUT
# plus a small slack: a shared two-core machine may be slow, never this slow.
HANG_SECONDS = 60.0
BOUND_FACTOR = 5
MAX_BODY = 65_536
TEN_MB = 10 * 1024 * 1024


class _Misbehaving(StubHandler):
    protocol_version = "HTTP/1.1"
    release: threading.Event  # set on the class by the fixture; frees hanging handlers

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path
        if path in ("/healthy", "/degraded", "/unhealthy", "/rebooting", "/OK", "/up"):
            self.answer_json(200, {"status": path.strip("/"), "version": "1.2.3"})
        elif path == "/500-unhealthy":
            self.answer_json(500, {"status": "unhealthy", "error": "qdrant unreachable"})
        elif path == "/503-text":
            self.answer(503, b"Service Unavailable", "text/plain")
        elif path == "/hang":
            self.release.wait(HANG_SECONDS)
            self.close_connection = True
        elif path == "/trickle":  # headers at once, then a byte per 0.5 s: each read is quick
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "64")
            self.end_headers()
            for _ in range(64):
                if self.release.wait(0.5):
                    break
                self.wfile.write(b" ")
                self.wfile.flush()
            self.close_connection = True
        elif path == "/garbage-body":
            self.answer(200, b"<html>it works!</html>", "text/html")
        elif path == "/garbage-protocol":
            self.wfile.write(b"\x00\x17 not HTTP at all \xff\r\n\r\n")
            self.close_connection = True
        elif path == "/no-status":
            self.answer_json(200, {"state": "healthy"})
        elif path == "/status-not-a-string":
            self.answer_json(200, {"status": {"db": "ok"}})
        elif path == "/ten-mb":
            self.answer(200, b"{" + b" " * TEN_MB + b"}")
        elif path == "/ten-mb-no-length":
            # HTTP/1.0 style: no Content-Length, the body ends when the connection closes.
            self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n")
            chunk = b" " * 65_536
            for _ in range(TEN_MB // len(chunk)):
                self.wfile.write(chunk)
            self.close_connection = True
        elif path == "/close":
            self.close_connection = True  # read the request, answer nothing
        elif path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/redirect-once":
            self.send_response(301)
            self.send_header("Location", "/degraded")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.answer(404, b"no such path", "text/plain")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    release = threading.Event()
    handler = type("Handler", (_Misbehaving,), {"release": release})
    with serving(handler) as base_url:
        yield base_url
        release.set()


def _probe(url: str) -> health.ProbeResult:
    return health.probe(health.Target("svc", url), timeout_seconds=TIMEOUT, max_body_bytes=MAX_BODY)


@pytest.mark.parametrize(("path", "status", "reported"), [
    ("/healthy", "healthy", "healthy"),
    ("/degraded", "degraded", "degraded"),
    ("/unhealthy", "unhealthy", "unhealthy"),
    ("/OK", "healthy", "OK"),
    ("/up", "healthy", "up"),
    ("/rebooting", "unknown", "rebooting"),
])
def test_reported_status_is_mapped(server: str, path: str, status: str, reported: str) -> None:
    result = _probe(server + path)
    assert (result.success, result.status, result.failure_reason) == (True, status, None)
    assert result.http_status_code == 200
    assert result.reported_status == reported


def test_json_status_is_read_from_a_500_answer(server: str) -> None:
    result = _probe(server + "/500-unhealthy")
    assert (result.success, result.status, result.http_status_code) == (True, "unhealthy", 500)
    assert result.failure_reason is None


def test_redirects_are_followed_within_the_bound(server: str) -> None:
    result = _probe(server + "/redirect-once")
    assert (result.success, result.status, result.http_status_code) == (True, "degraded", 200)


@pytest.mark.parametrize(("path", "reason", "code"), [
    ("/503-text", "http_error", 503),
    ("/garbage-body", "invalid_json", 200),
    ("/garbage-protocol", "connection_error", 0),
    ("/no-status", "missing_status", 200),
    ("/status-not-a-string", "missing_status", 200),
    ("/ten-mb", "body_too_large", 200),
    ("/ten-mb-no-length", "body_too_large", 200),
    ("/close", "connection_error", 0),
    ("/loop", "too_many_redirects", 0),
    ("/hang", "timeout", 0),
    ("/trickle", "timeout", 200),
])
def test_misbehaviour_gives_its_reason(server: str, path: str, reason: str, code: int) -> None:
    result = _probe(server + path)
    assert (result.success, result.status, result.failure_reason) == (False, "unknown", reason)
    assert result.http_status_code == code
    assert result.detail  # something an operator can read


def test_refused_connection() -> None:
    result = _probe(f"http://127.0.0.1:{free_port()}/health")
    assert (result.success, result.failure_reason) == (False, "connection_refused")
    assert result.http_status_code == 0


def test_tls_to_a_plain_http_server_is_a_tls_error(server: str) -> None:
    result = _probe(server.replace("http://", "https://") + "/healthy")
    assert (result.success, result.failure_reason) == (False, "tls_error")


def test_a_round_of_every_misbehaviour_ends_within_its_timeout(server: str) -> None:
    paths = ["/healthy", "/hang", "/trickle", "/ten-mb", "/ten-mb-no-length", "/close", "/loop",
             "/garbage-protocol", "/500-unhealthy"]
    targets = [health.Target(path.strip("/"), server + path) for path in paths]
    targets.append(health.Target("refused", f"http://127.0.0.1:{free_port()}/health"))
    deadline = time.monotonic() + TIMEOUT * BOUND_FACTOR
    results = health.probe_all(targets, timeout_seconds=TIMEOUT, max_body_bytes=MAX_BODY)
    assert time.monotonic() < deadline, "the probe round waited on the hanging server"
    assert [r.service for r in results] == [t.name for t in targets]
    by_name = {r.service: r for r in results}
    assert by_name["healthy"].status == "healthy"
    assert by_name["500-unhealthy"].status == "unhealthy"
    assert by_name["hang"].failure_reason == "timeout"
    assert all(r.duration_seconds < TIMEOUT * BOUND_FACTOR for r in results)


def test_reasons_and_states_match_the_metric_contract() -> None:
    assert metrics.PROBE_FAILURE_REASONS is health.FAILURE_REASONS  # declared once, where probes make them
    assert metrics.SERVICE_STATES is health.STATES


def test_credentials_in_a_url_never_reach_a_message() -> None:
    assert health.redact_url("http://ops:s3cret@svc:8053/health") == "http://svc:8053/health"
    result = _probe(f"http://ops:s3cret@127.0.0.1:{free_port()}/health")
    assert "s3cret" not in repr(result)


def _services_config(server: str, services: dict[str, str], refresh: float = 5.0, timeout: float = TIMEOUT):
    return parse_config({
        "services": {name: {"url": server + path} for name, path in services.items()},
        "exporter": {"refresh_interval_seconds": refresh, "health_timeout_seconds": timeout},
    }, source="test", environ={})


def _values(samples, metric: str) -> dict[tuple[str, ...], float]:
    return {s.labels: s.value for s in samples if s.metric.name == metric}


def test_services_source_writes_every_state_and_reason_one_hot(server: str) -> None:
    source = ServicesSource(_services_config(server, {"bridge": "/degraded", "onextree": "/loop"}))
    samples = source.gather()[metrics.Part.SERVICES]
    for sample in samples:
        assert sample.metric in metrics.METRICS and sample.metric.collector is metrics.Part.SERVICES
    status = _values(samples, "tree_service_status")
    assert status == {("bridge", s): float(s == "degraded") for s in metrics.SERVICE_STATES} | {
        ("onextree", s): float(s == "unknown") for s in metrics.SERVICE_STATES}
    failure = _values(samples, "tree_service_probe_failure")
    assert failure == {("bridge", r): 0.0 for r in metrics.PROBE_FAILURE_REASONS} | {
        ("onextree", r): float(r == "too_many_redirects") for r in metrics.PROBE_FAILURE_REASONS}
    assert _values(samples, "tree_service_probe_success") == {("bridge",): 1.0, ("onextree",): 0.0}
    assert _values(samples, "tree_service_probe_http_status_code") == {("bridge",): 200.0, ("onextree",): 0.0}
    assert set(_values(samples, "tree_service_probe_duration_seconds")) == {("bridge",), ("onextree",)}


def test_probe_timeout_is_kept_below_the_refresh_interval(server: str) -> None:
    refresh = 1.0
    source = ServicesSource(_services_config(server, {"intelligence": "/hang"}, refresh=refresh, timeout=30))
    assert source.timeout_seconds < refresh
    deadline = time.monotonic() + refresh * BOUND_FACTOR
    samples = source.gather()[metrics.Part.SERVICES]
    assert time.monotonic() < deadline
    assert _values(samples, "tree_service_probe_failure")[("intelligence", "timeout")] == 1.0
