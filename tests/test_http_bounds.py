"""The exporter's HTTP side under clients that misbehave: too many of them, too slow, too large; and
what a well-behaved scraper gets meanwhile (HEAD, gzip, OpenMetrics, the same bytes every time).

Every test runs the real ExporterHTTPServer in this process and talks to it over real sockets. The
limits are set low so that a deadline passes in a second; each test awaits the server's reaction
(a closed connection, a thread gone) with a generous bound and asserts that it happened, never how
fast.
"""

from __future__ import annotations

import gzip
import http.client
import select
import socket
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

import exporter.render
from exporter.app import build_exporter
from exporter.metrics import KAFKA_CONSUMER_GROUP_LAG, TREE_DLQ_RECORDS_TOTAL, Part
from exporter.refresh import Refresher
from exporter.render import Format, Renderer
from exporter.server import Endpoints, ExporterHTTPServer, Limits, accepts_gzip, prefers_openmetrics
from exporter.snapshot import Sample, Snapshot
from exporter.text_format import TextWriter
from pipeline.config import parse_config
from tests.exporter_serving import serving_snapshot

# What Prometheus 2.x sends by default (scrape_protocols: OpenMetrics first, then the text format).
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;"
                     "version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2")
BOUND = 30.0  # seconds any awaited reaction may take on a loaded machine; only a hang exceeds it
# Deadlines low enough for a test to see them pass, far below BOUND.
QUICK = Limits(max_connections=8, idle_seconds=30.0, request_seconds=1.0, response_seconds=1.0)


def lag_snapshot(series: int, value: float = 1.0, group_name_bytes: int = 11) -> Snapshot:
    samples = [Sample(KAFKA_CONSUMER_GROUP_LAG,
                      (f"group-{i // 10:05d}".ljust(group_name_bytes, "g"), f"topic-{i // 10:05d}", str(i % 10)),
                      value) for i in range(series)]
    return Snapshot.build([(Part.KAFKA_GROUPS, samples)], built_at=1.0, max_series=series)


@pytest.fixture(scope="module")
def large_snapshot() -> Snapshot:
    """About 7 MB of exposition: more than the kernel buffers of a loopback connection hold, so a
    client that does not read holds the server's write. Long names keep its rendering quick."""
    return lag_snapshot(8_000, group_name_bytes=800)


def serving(snapshot: Snapshot, limits: Limits = QUICK,
            authorize: Callable[[str], bool] | None = None) -> AbstractContextManager[ExporterHTTPServer]:
    return serving_snapshot(snapshot, limits=limits, authorize=authorize)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = BOUND) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        threading.Event().wait(0.02)


def request(server: ExporterHTTPServer, path: str = "/metrics", method: str = "GET",
            headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=BOUND)
    connection.request(method, path, headers=headers or {})
    response = connection.getresponse()
    response.body = response.read()  # type: ignore[attr-defined]
    connection.close()
    return response


def handler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("http-") and t.is_alive()]


def served_connection_ended(client: socket.socket) -> bool:
    return not any(t.name == f"http-127.0.0.1:{client.getsockname()[1]}" for t in handler_threads())


def closed_by_server(client: socket.socket, timeout: float) -> bool:
    """Whether the server ends the connection within ``timeout`` (read and dropped meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readable, _, _ = select.select([client], [], [], 0.1)
        if readable:
            try:
                if not client.recv(65536):
                    return True
            except ConnectionResetError:
                return True
    return False


def slow_reader(server: ExporterHTTPServer) -> socket.socket:
    """A client that asks for /metrics and then reads nothing; its window stays tiny."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", server.port))
    client.sendall(b"GET /metrics HTTP/1.1\r\nHost: exporter\r\n\r\n")
    return client


def half_request(server: ExporterHTTPServer) -> socket.socket:
    """A client that sends the start of a request and then nothing more."""
    client = socket.create_connection(("127.0.0.1", server.port))
    client.sendall(b"GET /metrics HTTP/1.1\r\nHost: exp")
    return client


# -- the well-behaved scraper --------------------------------------------------------------------

def test_a_scrape_is_answered_whole_while_slow_clients_hold_the_other_connections(large_snapshot):
    with serving(large_snapshot, Limits(max_connections=8, request_seconds=BOUND, response_seconds=BOUND)) as server:
        expected = server.endpoints.renderer.metrics_text()
        slow = [slow_reader(server) if i % 2 else half_request(server) for i in range(7)]
        try:
            wait_until(lambda: server.open_connections == 7, "the server to hold the 7 slow connections")
            response = request(server)
            assert response.status == 200
            assert response.body == expected
        finally:
            for client in slow:
                client.close()


def test_head_answers_every_endpoint_with_the_headers_of_get_and_no_body():
    snapshot = lag_snapshot(50)
    with serving(snapshot) as server:
        for path, status in (("/metrics", 200), ("/", 200), ("/-/healthy", 200), ("/-/ready", 200),
                             ("/nowhere", 404)):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=BOUND)
            connection.request("HEAD", path)
            head = connection.getresponse()
            assert head.read() == b""
            # The same connection answers the next request: had a body followed the HEAD answer,
            # it would be read here as a malformed status line.
            connection.request("GET", path)
            get = connection.getresponse()
            body = get.read()
            connection.close()
            assert head.status == get.status == status, path
            assert int(head.headers["Content-Length"]) == len(body) > 0, path
            assert head.headers["Content-Type"] == get.headers["Content-Type"], path

    with serving(snapshot, authorize=lambda header: header == "Basic c2NyYXBlcjpwdw==") as server:
        refused = request(server, method="HEAD")
        assert refused.status == 401
        assert refused.headers["WWW-Authenticate"].startswith("Basic")
        assert int(refused.headers["Content-Length"]) > 0 and refused.body == b""
        allowed = request(server, method="HEAD", headers={"Authorization": "Basic c2NyYXBlcjpwdw=="})
        assert allowed.status == 200 and allowed.body == b""


def test_gzip_when_asked_decompresses_to_exactly_the_plain_body_and_is_compressed_once(monkeypatch):
    with serving(lag_snapshot(2_000)) as server:
        plain = request(server)
        compressed = request(server, headers={"Accept-Encoding": "gzip"})
        assert plain.headers["Content-Encoding"] is None
        assert compressed.headers["Content-Encoding"] == "gzip"
        assert "Accept-Encoding" in compressed.headers["Vary"]
        assert len(compressed.body) < len(plain.body) / 5
        assert gzip.decompress(compressed.body) == plain.body

        compressions = []
        real_compressobj = exporter.render.zlib.compressobj

        def counting_compressobj(*args, **kwargs):
            compressions.append(args)
            return real_compressobj(*args, **kwargs)

        monkeypatch.setattr(exporter.render.zlib, "compressobj", counting_compressobj)
        again = [request(server, headers={"Accept-Encoding": "gzip, deflate"}) for _ in range(3)]
        assert all(response.body == compressed.body for response in again)
        assert compressions == []  # the snapshot's gzip bytes were made once, before these scrapes


def test_openmetrics_when_prometheus_asks_for_it_parses_and_holds_what_the_text_holds():
    snapshot = Snapshot.build([
        (Part.DLQ, [Sample(TREE_DLQ_RECORDS_TOTAL, ("stamp", 'quote " and \\ and \n'), 4.0)]),
        (Part.KAFKA_GROUPS, [KAFKA_CONSUMER_GROUP_LAG.sample(12, group="g", topic="t", partition=0)]),
    ], built_at=1.0, max_series=10)
    with serving(snapshot) as server:
        text = request(server, headers={"Accept": "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"})
        for accept_encoding in ("identity", "gzip"):
            answer = request(server, headers={"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": accept_encoding})
            assert answer.status == 200
            assert answer.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
            body = gzip.decompress(answer.body) if accept_encoding == "gzip" else answer.body
            assert body.endswith(b"# EOF\n") and body.count(b"# EOF") == 1
            openmetrics = {family.name: family for family in parse_openmetrics(body.decode())}
            assert text.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            classic = {family.name: family for family in parse_text(text.body.decode())}
            assert set(openmetrics) == set(classic)
            for name in ("tree_dlq_records", "kafka_consumer_group_lag"):
                assert openmetrics[name].type == classic[name].type
                assert ([(s.name, s.labels, s.value) for s in openmetrics[name].samples]
                        == [(s.name, s.labels, s.value) for s in classic[name].samples])
            assert "process_cpu_seconds" in openmetrics  # the process metrics, before the one # EOF


def test_the_format_and_encoding_follow_the_weights_the_scraper_gives():
    assert prefers_openmetrics(PROMETHEUS_ACCEPT)
    assert prefers_openmetrics("application/openmetrics-text")
    assert not prefers_openmetrics("text/plain;version=0.0.4;q=0.5,application/openmetrics-text;q=0.4")
    assert not prefers_openmetrics("application/openmetrics-text;q=0")
    assert not prefers_openmetrics(None) and not prefers_openmetrics("")
    assert not prefers_openmetrics("application/openmetrics-text;q=lots")
    assert accepts_gzip("gzip") and accepts_gzip("deflate, gzip;q=0.8") and accepts_gzip("*")
    assert not accepts_gzip(None) and not accepts_gzip("identity") and not accepts_gzip("gzip;q=0")


def test_a_scrape_never_waits_for_a_rendering_in_progress(monkeypatch):
    """A new snapshot is rendered on the refresh side; meanwhile scrapes get the one before."""
    first, second = lag_snapshot(20, value=1.0), lag_snapshot(20, value=2.0)
    current = first
    renderer = Renderer(lambda: current)
    endpoints = Endpoints(renderer=renderer, ready=lambda: True, landing_page=lambda: "")
    server = ExporterHTTPServer(("127.0.0.1", 0), endpoints, limits=QUICK)
    server.serve_in_thread()
    rendering_started, release = threading.Event(), threading.Event()

    real_write = TextWriter.write

    def slow_write(writer: TextWriter, snapshot: Snapshot, **options: object) -> bytes:
        if snapshot is second:
            rendering_started.set()
            release.wait(BOUND)
        return real_write(writer, snapshot, **options)

    try:
        before = request(server).body
        monkeypatch.setattr(TextWriter, "write", slow_write)
        current = second
        prerender = threading.Thread(target=renderer.prerender)
        prerender.start()
        assert rendering_started.wait(BOUND)
        during = request(server)
        assert not release.is_set()
        assert during.status == 200 and during.body == before
        release.set()
        prerender.join(BOUND)
        assert b'topic="topic-00000"} 2.0' in request(server).body
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_the_refresh_side_renders_each_new_snapshot_before_any_scrape(counted_renders: list[Snapshot]):
    renders = counted_renders

    class OneGroup:
        name = "one-group"
        collectors = (Part.KAFKA_GROUPS,)
        lag = 0

        def gather(self):
            self.lag += 1
            return {Part.KAFKA_GROUPS: [KAFKA_CONSUMER_GROUP_LAG.sample(self.lag, group="g", topic="t",
                                                                   partition=0)]}

        def close(self) -> None:
            pass

    renderer = Renderer(lambda: refresher.current)
    refresher = Refresher([OneGroup()], interval_seconds=60, stale_grace_seconds=60, max_series=100,
                          build_info={"version": "t", "python_version": "3", "librdkafka_version": "2"},
                          on_snapshot=renderer.prerender)
    refresher.run_once()
    assert renders == [refresher.current]
    assert b'partition="0",topic="t"} 1.0' in renderer.metrics_text()
    refresher.run_once()
    assert renders == [renders[0], refresher.current]
    assert b'partition="0",topic="t"} 2.0' in renderer.metrics_text()
    assert renderer.exposition(Format.TEXT).body is renderer.exposition(Format.TEXT).body


# -- bounds --------------------------------------------------------------------------------------

def test_connections_over_the_cap_are_answered_503_without_a_thread():
    with serving(lag_snapshot(10)) as server:
        holders = [half_request(server) for _ in range(QUICK.max_connections)]
        try:
            wait_until(lambda: server.open_connections == QUICK.max_connections, "every slot to be taken")
            threads = len(handler_threads())
            extra = socket.create_connection(("127.0.0.1", server.port))
            extra.sendall(b"GET /metrics HTTP/1.1\r\nHost: exporter\r\n\r\n")
            extra.settimeout(BOUND)
            answer = b""
            while chunk := extra.recv(4096):  # the server closes after its answer
                answer += chunk
            extra.close()
            assert answer.startswith(b"HTTP/1.1 503 ")
            assert b"Retry-After: 1" in answer
            assert len(handler_threads()) == threads == QUICK.max_connections
        finally:
            for client in holders:
                client.close()
        # Once the held connections are gone, scrapes are served again.
        wait_until(lambda: server.open_connections == 0, "the slots to be given back")
        assert request(server).status == 200


def test_threads_stay_bounded_under_200_connections():
    limits = Limits(max_connections=8, idle_seconds=BOUND * 2, request_seconds=BOUND * 2)
    with serving(lag_snapshot(10), limits) as server:
        threads_before = threading.active_count()
        clients: list[socket.socket] = []
        most_threads = 0
        try:
            for _ in range(200):
                client = socket.create_connection(("127.0.0.1", server.port), timeout=BOUND)
                client.sendall(b"GET /metrics HTTP/1.1\r\nHost: exp")  # and never the rest
                clients.append(client)
                most_threads = max(most_threads, threading.active_count())
            turned_away: list[socket.socket] = []
            waiting = list(clients)

            def all_but_the_served_are_answered() -> bool:
                readable, _, _ = select.select(waiting, [], [], 0)
                for client in readable:
                    answer = client.recv(4096)
                    assert answer.startswith(b"HTTP/1.1 503 "), answer[:40]
                    waiting.remove(client)
                    turned_away.append(client)
                return len(waiting) == limits.max_connections

            wait_until(all_but_the_served_are_answered, "192 connections to be answered 503")
            most_threads = max(most_threads, threading.active_count())
            assert len(turned_away) == 200 - limits.max_connections
            assert server.open_connections == limits.max_connections
            assert len(handler_threads()) == limits.max_connections
            assert most_threads - threads_before <= limits.max_connections
        finally:
            for client in clients:
                client.close()


def test_a_request_dripping_one_byte_at_a_time_is_cut_off_at_its_deadline():
    with serving(lag_snapshot(10)) as server:
        client = socket.create_connection(("127.0.0.1", server.port))
        drip = iter(b"GET /metrics HTTP/1.1\r\nHost: exporter\r\nX-Slow: " + b"a" * 100_000)
        cut_off = False
        deadline = time.monotonic() + BOUND
        # One byte, then up to 0.1 s of looking for the server's close: each byte comes well inside
        # any socket timeout, so only a deadline for the whole request ends this.
        while not cut_off and time.monotonic() < deadline:
            try:
                client.send(bytes([next(drip)]))
            except (BrokenPipeError, ConnectionResetError):
                cut_off = True
                break
            cut_off = closed_by_server(client, 0.1)
        assert cut_off, "the server kept serving a request sent one byte at a time"
        client.close()
        wait_until(lambda: server.open_connections == 0, "the connection's thread to end")


def test_an_idle_connection_is_closed_after_the_idle_deadline():
    with serving(lag_snapshot(10), Limits(idle_seconds=1.0)) as server:
        client = socket.create_connection(("127.0.0.1", server.port))
        assert closed_by_server(client, BOUND)
        client.close()


def test_a_client_reading_slowly_is_cut_off_at_the_response_deadline(large_snapshot):
    with serving(large_snapshot) as server:
        total = len(server.endpoints.renderer.metrics_text())
        client = slow_reader(server)
        received = 0
        cut_off = False
        deadline = time.monotonic() + BOUND * 2
        # 4 KiB every 0.05 s: the server's writes keep progressing (no write waits long enough
        # for a socket timeout), but the whole answer would take minutes.
        while time.monotonic() < deadline:
            threading.Event().wait(0.05)  # the client's slowness itself, not a wait for the server
            try:
                chunk = client.recv(4096)
            except ConnectionResetError:
                cut_off = True
                break
            if not chunk:
                cut_off = True
                break
            received += len(chunk)
        assert cut_off, "the server was still writing to a slow reader"
        assert received < total
        wait_until(lambda: served_connection_ended(client), "the slow reader's thread to end")
        client.close()


def test_a_request_larger_than_the_limit_is_refused_431():
    with serving(lag_snapshot(10), Limits(max_request_bytes=16_384)) as server:
        headers = {f"X-Filler-{i}": "f" * 1_000 for i in range(50)}
        refused = request(server, headers=headers)
        assert refused.status == 431
        assert refused.headers["Connection"] == "close"
        assert request(server).status == 200


def test_max_connections_is_a_setting_the_exporter_serves_with():
    config = parse_config({"kafka": {"bootstrap_servers": "127.0.0.1:9"}, "services": {},
                           "exporter": {"listen_address": "127.0.0.1:0", "max_connections": 3}},
                          source="treewatch.yaml", environ={})
    built = build_exporter(config)
    try:
        assert built.server.limits.max_connections == 3
    finally:
        built.server.server_close()
        built.refresher.stop()
