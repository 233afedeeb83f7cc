"""The exporter's HTTP endpoint: /metrics (or the path --web.telemetry-path names), a landing page at
/, /-/healthy and /-/ready.

Handlers only read what the refresh side already built; none of them talks to Kafka or to the
services, so a scrape answers at once whatever state the pipeline is in. /metrics answers with
bytes rendered once per snapshot (exporter.render), in the format and encoding the scraper asks
for; every scrape of a snapshot shares them, none copies them.

What clients can hold is bounded (``Limits``). One thread serves one connection, and at most
``max_connections`` exist: a connection beyond them is answered 503 by the accept loop itself,
with no thread started for it. Each request has absolute deadlines: for its first byte to arrive
on an idle connection, for the rest of it, and for its whole answer to be written. A socket
timeout alone restarts with every byte, so a client sending or reading one byte a second would
hold its thread forever; here every read and write only gets what is left of the deadline.
"""

from __future__ import annotations

import html
import io
import logging
import math
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from exporter.render import Format, Renderer
from exporter.web import CHALLENGE, Authorizer

log = logging.getLogger("treewatch.http")

DEFAULT_METRICS_PATH = "/metrics"
# The paths no --web.telemetry-path may take.
RESERVED_PATHS = ("/", "/-/healthy", "/-/ready")


@dataclass(frozen=True)
class Endpoints:
    """What the handlers may read; all of it is prepared by the refresh side."""

    renderer: Renderer
    ready: Callable[[], bool]
    landing_page: Callable[[], str]
    metrics_path: str = DEFAULT_METRICS_PATH


@dataclass(frozen=True)
class Limits:
    """How much of the exporter its clients may hold, together and each."""

    max_connections: int = 64
    # A kept-alive connection waiting for its next request (Prometheus reuses one per target).
    idle_seconds: float = 30.0
    # From the first byte of a request (or the start of a TLS handshake) to its last header line.
    request_seconds: float = 10.0
    # Writing one whole answer; Prometheus' own scrape timeout is at most its scrape interval.
    response_seconds: float = 30.0
    # A scrape request is a few hundred bytes; a client sending more is not a scraper.
    max_request_bytes: int = 65_536


_JOIN_TIMEOUT_SECONDS = 5.0
_READ_BUFFER_BYTES = 8_192
_TEXT = "text/plain; charset=utf-8"
# Sent by the accept loop to a connection over the cap. Small enough for any fresh socket's
# buffer, so sending it never blocks the loop.
_BUSY_BODY = b"too many connections; try again soon\n"
_BUSY_ANSWER = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))
_BUSY_WARNING_INTERVAL_SECONDS = 60.0


class _RequestTooLarge(Exception):
    pass


class _Deadline:
    """The connection's socket, each read and write bounded by the time left until ``at``."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.at = math.inf
        self.budget = math.inf  # bytes the current request may still send
        self.write_cut_short = False  # an answer was abandoned at its deadline

    def start(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def _arm(self) -> None:
        remaining = self.at - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        self.connection.settimeout(remaining)

    def recv_into(self, buffer: memoryview) -> int:
        if self.budget <= 0:
            raise _RequestTooLarge()
        self._arm()
        received = self.connection.recv_into(buffer)
        self.budget -= received
        return received

    def send_all(self, data: bytes | memoryview) -> None:
        # Slices of a memoryview share the caller's bytes: a large body is never copied.
        with memoryview(data) as view:
            sent = 0
            try:
                while sent < len(view):
                    self._arm()
                    sent += self.connection.send(view[sent:])
            except TimeoutError:
                self.write_cut_short = True
                raise


class _DeadlineReader(io.RawIOBase):
    def __init__(self, deadline: _Deadline) -> None:
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        return self._deadline.recv_into(buffer)


class _DeadlineWriter(io.BufferedIOBase):
    """Unbuffered: http.server writes the headers in one call and the handlers the body in one."""

    def __init__(self, deadline: _Deadline) -> None:
        self._deadline = deadline

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | memoryview) -> int:  # type: ignore[override]
        self._deadline.send_all(data)
        return len(data)


class _Handler(BaseHTTPRequestHandler):
    server: ExporterHTTPServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.connection = self.request
        # Headers and body leave in two writes; with Nagle the body's last segment would wait for
        # the client's delayed acknowledgement of the headers.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self._deadline = _Deadline(self.connection)
        self.rfile = io.BufferedReader(_DeadlineReader(self._deadline), _READ_BUFFER_BYTES)
        self.wfile = _DeadlineWriter(self._deadline)

    def finish(self) -> None:
        super().finish()
        if self._deadline.write_cut_short:
            # What the kernel still holds of the answer is dropped at once (the close sends a
            # reset) instead of trickling out to a client that reads one byte a second.
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:  # already closed
                pass

    def handle_one_request(self) -> None:
        limits = self.server.limits
        self._deadline.start(limits.idle_seconds)
        self._deadline.budget = math.inf
        try:
            if not self.rfile.peek(1):  # the client closed the connection
                self.close_connection = True
                return
        except TimeoutError:
            self.close_connection = True
            return
        self._deadline.start(limits.request_seconds)
        self._deadline.budget = limits.max_request_bytes
        # parse_request sets these; a request cut short before it must not be answered as the
        # previous request on this connection was.
        self.requestline = self.request_version = self.command = ""
        try:
            super().handle_one_request()
        except _RequestTooLarge:
            self.close_connection = True
            self.send_error(431, "Request too large")

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        if not self.server.authorize(self.headers.get("Authorization", "")):
            self._send(401, _TEXT, b"unauthorized\n", send_body, {"WWW-Authenticate": CHALLENGE})
            return
        path = self.path.split("?", 1)[0]
        endpoints = self.server.endpoints
        if path == endpoints.metrics_path:
            exposition = endpoints.renderer.exposition(
                Format.OPENMETRICS if prefers_openmetrics(self.headers.get("Accept")) else Format.TEXT,
                gzip=accepts_gzip(self.headers.get("Accept-Encoding")))
            headers = {"Vary": "Accept, Accept-Encoding"}
            if exposition.content_encoding:
                headers["Content-Encoding"] = exposition.content_encoding
            self._send(200, exposition.content_type, exposition.body, send_body, headers)
        elif path == "/":
            self._send(200, "text/html; charset=utf-8", endpoints.landing_page().encode(), send_body)
        elif path == "/-/healthy":
            self._send(200, _TEXT, b"OK\n", send_body)
        elif path == "/-/ready":
            if endpoints.ready():
                self._send(200, _TEXT, b"ready\n", send_body)
            else:
                self._send(503, _TEXT, b"not ready: first refresh still running\n", send_body)
        else:
            self._send(404, _TEXT, f"not found; try {endpoints.metrics_path}\n".encode(), send_body)

    def _send(self, status: int, content_type: str, body: bytes, send_body: bool,
              headers: dict[str, str] | None = None) -> None:
        """Headers, then (unless this is HEAD) ``body`` itself, not a copy of it."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in {**self.server.headers, **(headers or {})}.items():
            self.send_header(key, value)
        self._deadline.start(self.server.limits.response_seconds)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        log.debug("%s %s", self.address_string(), format % args)


def _weights(header: str | None) -> dict[str, float]:
    """Media type or content coding -> its q value, from an Accept or Accept-Encoding header."""
    weights: dict[str, float] = {}
    for item in (header or "").split(","):
        name, *parameters = (part.strip() for part in item.split(";"))
        if not name:
            continue
        weight = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        # Prometheus lists OpenMetrics twice (two versions, two weights): the better one counts.
        weights[name.lower()] = max(weights.get(name.lower(), 0.0), weight)
    return weights


def prefers_openmetrics(accept: str | None) -> bool:
    """True when the Accept header weighs OpenMetrics above the classic text format."""
    weights = _weights(accept)
    text = max(weights.get("text/plain", 0.0), weights.get("text/*", 0.0), weights.get("*/*", 0.0))
    return weights.get("application/openmetrics-text", 0.0) > text


def accepts_gzip(accept_encoding: str | None) -> bool:
    weights = _weights(accept_encoding)
    return weights.get("gzip", weights.get("*", 0.0)) > 0


class ExporterHTTPServer(ThreadingHTTPServer):
    """One thread per connection, at most ``limits.max_connections`` of them; TLS, when
    configured, is negotiated in the connection's thread.

    ``server_close`` ends every open connection (a Prometheus keep-alive connection would
    otherwise hold its thread until the idle timeout) and joins the handler threads, so a stopped
    server leaves no thread behind. Handler threads are named ``http-<client>`` for that reason.
    """

    daemon_threads = True
    # A restarted exporter must be able to take its port back at once.
    allow_reuse_address = True
    # Connections the kernel holds until the accept loop takes them. The loop is quick (it starts
    # a thread or answers 503), but a burst larger than the queue would wait out SYN retries.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], endpoints: Endpoints,
                 authorize: Authorizer | None = None,
                 tls_context: ssl.SSLContext | None = None,
                 limits: Limits = Limits(),
                 headers: Mapping[str, str] | None = None) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        # Set before binding: a failed bind calls server_close, which needs them.
        self.endpoints = endpoints
        self.authorize = authorize or (lambda _header: True)
        self.tls_context = tls_context
        self.limits = limits
        self.headers = dict(headers or {})  # added to every answer (a web config's http_server_config.headers)
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        self._connections: set[socket.socket] = set()
        self._handler_threads: list[threading.Thread] = []
        self._connections_lock = threading.Lock()
        self._closing = False
        self._turned_away = 0
        self._busy_warned_at = -math.inf
        super().__init__(address, _Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        thread.start()
        return thread

    def process_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        if not self._slots.acquire(blocking=False):
            self._turn_away(request, client_address)
            return
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address),
                                  name=f"http-{client_address[0]}:{client_address[1]}", daemon=True)
        with self._connections_lock:
            self._handler_threads = [t for t in self._handler_threads if t.is_alive()]
            self._handler_threads.append(thread)
        try:
            thread.start()
        except RuntimeError:  # the system would not give another thread
            self._slots.release()
            self._turn_away(request, client_address)

    def _serve_connection(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _turn_away(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        """Answer 503 from the accept loop without blocking it; over TLS (no handshake without a
        thread), close the connection."""
        try:
            if self.tls_context is None:
                request.setblocking(False)
                request.send(_BUSY_ANSWER)
                # Read what already arrived of the request, so closing sends a FIN, not a reset
                # that could overtake the answer.
                request.recv(self.limits.max_request_bytes)
        except OSError:
            pass
        finally:
            self.shutdown_request(request)
        self._turned_away += 1
        now = time.monotonic()
        if now - self._busy_warned_at >= _BUSY_WARNING_INTERVAL_SECONDS:
            log.warning("%d connection(s) turned away (the latest from %s): %d already open, the limit",
                        self._turned_away, client_address[0], self.limits.max_connections)
            self._turned_away, self._busy_warned_at = 0, now

    def finish_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        connection = request
        if self.tls_context is not None:
            # Handshake here, in the connection's own thread; ssl bounds a whole handshake by the
            # socket timeout, so a client that stalls it delays no other scrape, and not for long.
            request.settimeout(self.limits.request_seconds)
            connection = self.tls_context.wrap_socket(request, server_side=True,
                                                      do_handshake_on_connect=False)
        if not self._track(connection):
            connection.close()
            return
        try:
            if connection is not request:
                try:
                    connection.do_handshake()
                except (ssl.SSLError, OSError) as error:
                    log.debug("TLS handshake with %s failed: %s", client_address[0], error)
                    return
            super().finish_request(connection, client_address)
        finally:
            self._untrack(connection)
            if connection is not request:
                connection.close()

    @property
    def open_connections(self) -> int:
        with self._connections_lock:
            return len(self._connections)

    def _track(self, connection: socket.socket) -> bool:
        with self._connections_lock:
            if self._closing:
                return False
            self._connections.add(connection)
            return True

    def _untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # a client that went away mid-answer is not news
            log.debug("connection from %s ended: %s", client_address[0], error)
        else:
            log.exception("answering %s failed", client_address[0])

    def server_close(self) -> None:
        with self._connections_lock:
            self._closing = True
            open_connections = list(self._connections)
        for connection in open_connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed by the client
                pass
        super().server_close()
        with self._connections_lock:
            threads = list(self._handler_threads)
        for thread in threads:
            # Their connections are shut, so they end at once; the bound only guards the exit.
            thread.join(_JOIN_TIMEOUT_SECONDS)


def landing_page(title: str, rows: list[tuple[str, str]], metrics_path: str = DEFAULT_METRICS_PATH) -> str:
    """A small HTML page: links to the endpoints, then a table of what is watched."""
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p><a href='{html.escape(metrics_path)}'>Metrics</a> · <a href='/-/healthy'>Healthy</a> · "
        "<a href='/-/ready'>Ready</a></p>"
        f"<table>{table}</table></body></html>"
    )
