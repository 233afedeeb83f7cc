"""The probe kinds of the index stage's stores against real servers started here: ``http_ok`` (any 2xx,
Qdrant's /readyz) and ``tcp`` (connect within the timeout, Memgraph's Bolt port), each in its
failure modes; the configuration that declares them; the simulator that stands in for them; and
the metrics the real exporter makes of them; and the page of a store muting its warning in a real
Alertmanager.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devkafka import free_port
from exporter.app import build_exporter
from localbundle.stack import SlackSink, monitoring_config, running_alertmanager
from pipeline import health
from pipeline.config import DEFAULT_SERVICES, ConfigError, default_services_at, load_config, parse_config
from simulator import HealthEndpoints
from tests.http_stubs import StubHandler, serving

TIMEOUT = 2.0
# A hanging handler holds its request this long and an endless body streams until the prober hangs up;
# a probe that obeys its timeout ends far sooner (a shared two-core machine is slow, never this slow).
HANG_SECONDS = 60.0
BOUND = TIMEOUT * 5
MAX_BODY = 65_536
WITHIN_SECONDS = 60.0


class _Store(StubHandler):
    protocol_version = "HTTP/1.1"
    release: threading.Event  # set on the class by the fixture; frees hanging handlers
    endless_body_left: threading.Event  # set once the prober hung up on the endless body

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/readyz":
            self.answer(200, b"all shards are ready", "text/plain")
        elif self.path == "/no-content":
            self.send_response(204)
            self.end_headers()
        elif self.path == "/not-ready":
            self.answer(503, b"some shards are not ready", "text/plain")
        elif self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/hang":
            self.release.wait(HANG_SECONDS)
            self.close_connection = True
        elif self.path == "/endless":
            self._endless()
        else:
            self.answer(404, b"no such path", "text/plain")

    def _endless(self) -> None:
        """200 with a body that never ends (chunked), until the prober hangs up."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"%x\r\n%s\r\n" % (65_536, b" " * 65_536)
        self.close_connection = True
        try:
            while not self.release.is_set():
                self.wfile.write(chunk)
        except OSError:
            self.endless_body_left.set()


@pytest.fixture(scope="module")
def store() -> Iterator[tuple[str, threading.Event]]:
    """The misbehaving HTTP store's base URL, and the event set once a prober left the endless body."""
    release, left = threading.Event(), threading.Event()
    handler = type("Handler", (_Store,), {"release": release, "endless_body_left": left})
    with serving(handler) as base_url:
        yield base_url, left
        release.set()


def _probe(url: str, kind: str) -> health.ProbeResult:
    started = time.monotonic()
    result = health.probe(health.Target("store", url, kind), timeout_seconds=TIMEOUT, max_body_bytes=MAX_BODY)
    assert time.monotonic() - started < BOUND, "the probe outlived its timeout"
    return result


def _outcome(result: health.ProbeResult) -> tuple[bool, str, int, str | None]:
    return result.success, result.status, result.http_status_code, result.failure_reason


def _wait_for(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WITHIN_SECONDS
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WITHIN_SECONDS:g}s: {what}")
        time.sleep(0.1)
    return value


# -- http_ok ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, code", [("/readyz", 200), ("/no-content", 204)])
def test_http_ok_takes_any_2xx_as_healthy_whatever_the_body(store, path: str, code: int) -> None:
    result = _probe(store[0] + path, health.HTTP_OK)
    assert _outcome(result) == (True, health.HEALTHY, code, None)
    assert result.reported_status is None and result.detail == f"HTTP {code}"


def test_json_status_still_wants_its_json(store) -> None:
    # The same plain-text 200 that is a ready Qdrant is no answer for a json_status service.
    assert _outcome(_probe(store[0] + "/readyz", health.JSON_STATUS)) == (False, health.UNKNOWN, 200,
                                                                          health.INVALID_JSON)


@pytest.mark.parametrize("path, code", [("/not-ready", 503), ("/missing", 404)])
def test_http_ok_refuses_any_other_code(store, path: str, code: int) -> None:
    result = _probe(store[0] + path, health.HTTP_OK)
    assert _outcome(result) == (False, health.UNKNOWN, code, health.HTTP_ERROR)
    assert str(code) in result.detail


def test_http_ok_in_a_redirect_loop(store) -> None:
    assert _outcome(_probe(store[0] + "/loop", health.HTTP_OK)) == (False, health.UNKNOWN, 0,
                                                                    health.TOO_MANY_REDIRECTS)


def test_http_ok_that_hangs_times_out(store) -> None:
    assert _outcome(_probe(store[0] + "/hang", health.HTTP_OK)) == (False, health.UNKNOWN, 0, health.TIMEOUT)


def test_http_ok_reads_no_body_an_endless_one_included(store) -> None:
    base, prober_left = store
    assert _outcome(_probe(base + "/endless", health.HTTP_OK)) == (True, health.HEALTHY, 200, None)
    # The probe hung up on the body instead of reading it; a json_status probe reads up to its cap.
    _wait_for(prober_left.is_set, "the http_ok probe to close the connection of the endless body")
    assert _outcome(_probe(base + "/endless", health.JSON_STATUS)) == (False, health.UNKNOWN, 200,
                                                                       health.BODY_TOO_LARGE)


def test_http_ok_refused() -> None:
    result = _probe(f"http://127.0.0.1:{free_port()}/readyz", health.HTTP_OK)
    assert _outcome(result) == (False, health.UNKNOWN, 0, health.CONNECTION_REFUSED)


# -- tcp --------------------------------------------------------------------------------------------

@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


def test_tcp_connects_to_a_listener(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    result = _probe(f"tcp://127.0.0.1:{port}", health.TCP)
    assert _outcome(result) == (True, health.HEALTHY, 0, None)
    listener.settimeout(BOUND)
    assert result.detail == f"TCP connection to 127.0.0.1:{port} accepted"
    accepted, _ = listener.accept()  # the connection reached the listener: the probe spoke to it
    accepted.close()


def test_tcp_to_a_closed_port_is_refused(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    listener.close()
    assert _outcome(_probe(f"tcp://127.0.0.1:{port}", health.TCP)) == (False, health.UNKNOWN, 0,
                                                                       health.CONNECTION_REFUSED)


@contextlib.contextmanager
def _full_listener() -> Iterator[int]:
    """A listening port that accepts nothing more: its backlog is full and nobody accepts, so the kernel
    drops every further SYN and a connect hangs, as towards a store stuck or behind a blackholing
    firewall. Yields the port once a connect has been seen to hang."""
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(socket.socket())
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        address = server.getsockname()
        for _ in range(16):
            client = stack.enter_context(socket.socket())
            client.settimeout(0.5)
            try:
                client.connect(address)
            except TimeoutError:
                break  # this one hung: the backlog is full
        else:
            raise AssertionError("the backlog never filled")
        yield address[1]


def test_tcp_to_a_port_that_never_accepts_times_out() -> None:
    with _full_listener() as port:
        result = _probe(f"tcp://127.0.0.1:{port}", health.TCP)
    assert _outcome(result) == (False, health.UNKNOWN, 0, health.TIMEOUT)
    assert result.duration_seconds >= TIMEOUT * 0.9  # it did wait its timeout, not fail early


def test_tcp_to_a_host_that_does_not_resolve() -> None:
    result = _probe("tcp://no-such-store.invalid:7687", health.TCP)
    assert _outcome(result) == (False, health.UNKNOWN, 0, health.CONNECTION_ERROR)
    assert result.detail


def test_a_round_of_every_kind_ends_within_its_timeout(store, listener: socket.socket) -> None:
    base, _ = store
    with _full_listener() as full:
        targets = [
            health.Target("qdrant", base + "/readyz", health.HTTP_OK),
            health.Target("qdrant-hang", base + "/hang", health.HTTP_OK),
            health.Target("memgraph", f"tcp://127.0.0.1:{listener.getsockname()[1]}", health.TCP),
            health.Target("memgraph-full", f"tcp://127.0.0.1:{full}", health.TCP),
            health.Target("memgraph-down", f"tcp://127.0.0.1:{free_port()}", health.TCP),
        ]
        started = time.monotonic()
        results = health.probe_all(targets, timeout_seconds=TIMEOUT, max_body_bytes=MAX_BODY)
        assert time.monotonic() - started < BOUND
    assert {r.service: r.failure_reason for r in results} == {
        "qdrant": None, "qdrant-hang": health.TIMEOUT, "memgraph": None, "memgraph-full": health.TIMEOUT,
        "memgraph-down": health.CONNECTION_REFUSED}


# -- the configuration -----------------------------------------------------------------------------

def test_the_default_configuration_probes_qdrant_and_memgraph() -> None:
    services = {s.name: (s.url, s.kind) for s in load_config(None, environ={}).services}
    assert services["qdrant"] == ("http://localhost:6333/readyz", health.HTTP_OK)
    assert services["memgraph"] == ("tcp://localhost:7687", health.TCP)
    assert services["intelligence"] == ("http://localhost:8053/health", health.JSON_STATUS)
    assert [target.kind for target in health.targets(load_config(None, environ={}).services)] == [
        entry.get("kind", health.JSON_STATUS) for entry in DEFAULT_SERVICES.values()]


@pytest.mark.parametrize("url, why", [
    ("tcp://memgraph", "no port from 1 to 65535"),
    ("tcp://:7687", "no host"),
    ("tcp://memgraph:76870", "the port is not a number from 1 to 65535"),
    ("tcp://memgraph:bolt", "the port is not a number from 1 to 65535"),
    ("tcp://memgraph:7687/db", "a path, query or user part"),
    ("http://memgraph:7687", "the scheme is 'http'"),
])
def test_a_malformed_tcp_url_is_refused_with_the_field(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config({"services": {"memgraph": {"url": url, "kind": "tcp"}}}, source="treewatch.yaml", environ={})
    message = str(refused.value)
    assert message.startswith("treewatch.yaml: services.memgraph.url: expected tcp://host:port for kind tcp")
    assert why in message


def test_a_tcp_url_needs_kind_tcp_and_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"treewatch.yaml: services.memgraph.url: kind json_status probes an "
                                          r"http:// or https:// URL, got string 'tcp://memgraph:7687' \(a tcp:// "
                                          r"URL needs kind: tcp\)"):
        parse_config({"services": {"memgraph": {"url": "tcp://memgraph:7687"}}}, source="treewatch.yaml", environ={})
    with pytest.raises(ConfigError, match=r"services.qdrant.kind: expected one of json_status, http_ok, tcp, "
                                          r"got string 'grpc'"):
        parse_config({"services": {"qdrant": {"url": "http://q:6333/readyz", "kind": "grpc"}}},
                     source="treewatch.yaml", environ={})


def test_credentials_in_a_tcp_url_never_reach_the_message() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config({"services": {"memgraph": {"url": "tcp://ops:s3cret@memgraph:7687", "kind": "tcp"}}},
                     source="treewatch.yaml", environ={})
    assert "s3cret" not in str(refused.value)


# -- the simulator ----------------------------------------------------------------------------------

def test_the_simulator_serves_the_stores_as_they_are_probed() -> None:
    services = parse_config({"services": default_services_at("127.0.0.1", lambda default_port: free_port())},
                            source="test", environ={}).services
    stores = [health.Target(s.name, s.url, s.kind) for s in services if s.name in ("qdrant", "memgraph")]
    assert [t.kind for t in stores] == [health.HTTP_OK, health.TCP]
    assert stores[0].url.endswith("/readyz")

    def probe() -> dict[str, str | None]:
        results = health.probe_all(stores, timeout_seconds=TIMEOUT, max_body_bytes=MAX_BODY)
        return {r.service: r.failure_reason for r in results}

    with HealthEndpoints(services) as simulated:
        assert probe() == {"qdrant": None, "memgraph": None}
        simulated.set_status("qdrant", "unhealthy")  # a 503 from /readyz: shards not ready
        simulated.take_down("memgraph")
        assert probe() == {"qdrant": health.HTTP_ERROR, "memgraph": health.CONNECTION_REFUSED}
        simulated.set_status("qdrant", "healthy")
        simulated.bring_up("memgraph")
        assert probe() == {"qdrant": None, "memgraph": None}


# -- the exporter -----------------------------------------------------------------------------------

def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name.startswith("tree_service_")}


def test_the_exporter_reports_http_ok_and_tcp_stores(store, listener: socket.socket) -> None:
    base, _ = store
    config = parse_config({
        # Kafka is never reached here: its collectors fail, the services' do not depend on them.
        "kafka": {"bootstrap_servers": "127.0.0.1:9", "request_timeout_seconds": 1},
        "services": {
            "qdrant": {"url": base + "/readyz", "kind": "http_ok"},
            "memgraph": {"url": f"tcp://127.0.0.1:{listener.getsockname()[1]}", "kind": "tcp"},
            "memgraph-down": {"url": f"tcp://127.0.0.1:{free_port()}", "kind": "tcp"},
            "qdrant-not-ready": {"url": base + "/not-ready", "kind": "http_ok"},
        },
        "exporter": {"listen_address": "127.0.0.1:0", "refresh_interval_seconds": 2,
                     "health_timeout_seconds": 1},
    }, source="test", environ={})
    exporter = build_exporter(config).start()

    def probed() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        values = _scrape(exporter.url)
        return values if sum(metric == "tree_service_probe_success" for metric, _ in values) == 4 else None

    try:
        values = _wait_for(probed, "the exporter's first probe round of the four stores")
    finally:
        exporter.stop()

    def value(metric: str, service: str, **labels: str) -> float:
        return values[(metric, tuple(sorted({"service": service, **labels}.items())))]

    expected = {"qdrant": (1, 200, None), "memgraph": (1, 0, None),
                "memgraph-down": (0, 0, health.CONNECTION_REFUSED), "qdrant-not-ready": (0, 503, health.HTTP_ERROR)}
    for service, (success, code, reason) in expected.items():
        assert value("tree_service_probe_success", service) == success, service
        assert value("tree_service_probe_http_status_code", service) == code, service
        assert value("tree_service_probe_duration_seconds", service) >= 0
        for state in health.STATES:
            assert value("tree_service_status", service, status=state) == float(
                state == (health.HEALTHY if success else health.UNKNOWN)), (service, state)
        for failure in health.FAILURE_REASONS:
            assert value("tree_service_probe_failure", service, reason=failure) == float(failure == reason), (
                service, failure)


# -- Alertmanager -----------------------------------------------------------------------------------

def _firing(alertname: str, severity: str, service: str) -> dict[str, Any]:
    return {"labels": {"alertname": alertname, "severity": severity, "job": "treewatch",
                       "instance": "exporter:9847", "service": service},
            "annotations": {"summary": alertname, "description": f"{alertname} {service}"},
            "startsAt": (datetime.now(UTC) - timedelta(minutes=1)).isoformat()}


def test_the_page_of_a_store_mutes_its_own_warning_only(tmp_path) -> None:
    paging, warning_only = f"qdrant-{uuid.uuid4().hex[:8]}", f"memgraph-{uuid.uuid4().hex[:8]}"
    with SlackSink() as sink, running_alertmanager(tmp_path, monitoring_config(sink, tmp_path, group_wait="1s"),
                                                   free_port()) as alertmanager:
        alertmanager.post([_firing("IndexStoreDown", "critical", paging),
                           _firing("StoreUnavailable", "warning", paging),
                           _firing("StoreUnavailable", "warning", warning_only)])

        def state(alertname: str, service: str) -> str | None:
            found = alertmanager.alerts(f'alertname="{alertname}"', f'service="{service}"')
            if not found:
                return None
            return "inhibited" if found[0]["status"]["inhibitedBy"] else found[0]["status"]["state"]

        _wait_for(lambda: state("StoreUnavailable", paging) == "inhibited",
                  "IndexStoreDown to inhibit the StoreUnavailable of its store")
        _wait_for(lambda: state("StoreUnavailable", warning_only) == "active",
                  "the other store's StoreUnavailable to stay active")
        _wait_for(lambda: state("IndexStoreDown", paging) == "active", "IndexStoreDown to be active")
