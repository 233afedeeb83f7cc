"""The exporter's HTTP endpoint: /metrics, a landing page at /, /-/healthy and /-/ready.

Handlers only read what the refresh side already built; none of them talks to Kafka or to the
services, so a scrape answers at once whatever state the pipeline is in.
"""

from __future__ import annotations

import html
import logging
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from exporter.render import CONTENT_TYPE, Renderer

log = logging.getLogger("treewatch.http")


@dataclass(frozen=True)
class Endpoints:
    """What the handlers may read; all of it is prepared by the refresh side."""

    renderer: Renderer
    ready: Callable[[], bool]
    landing_page: Callable[[], str]


_JOIN_TIMEOUT_SECONDS = 5.0


class _Handler(BaseHTTPRequestHandler):
    server: ExporterHTTPServer
    protocol_version = "HTTP/1.1"
    # Seconds a connection may sit idle (or stall a TLS handshake) before its thread gives up.
    timeout = 30

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self.server.authorize(self):
            return
        path = self.path.split("?", 1)[0]
        endpoints = self.server.endpoints
        if path == "/metrics":
            self._send(200, CONTENT_TYPE, endpoints.renderer.metrics_text())
        elif path == "/":
            self._send(200, "text/html; charset=utf-8", endpoints.landing_page().encode())
        elif path == "/-/healthy":
            self._send(200, "text/plain; charset=utf-8", b"OK\n")
        elif path == "/-/ready":
            if endpoints.ready():
                self._send(200, "text/plain; charset=utf-8", b"ready\n")
            else:
                self._send(503, "text/plain; charset=utf-8", b"not ready: first refresh still running\n")
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found; try /metrics\n")

    def _send(self, status: int, content_type: str, body: bytes,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        log.debug("%s %s", self.address_string(), format % args)


class ExporterHTTPServer(ThreadingHTTPServer):
    """One thread per connection; TLS, when configured, is negotiated in that thread.

    ``server_close`` ends every open connection (a Prometheus keep-alive connection would
    otherwise hold its thread until the idle timeout) and joins the handler threads, so a stopped
    server leaves no thread behind. Handler threads are named ``http-<client>`` for that reason.
    """

    daemon_threads = True
    # A restarted exporter must be able to take its port back at once.
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], endpoints: Endpoints,
                 authorize: Callable[[BaseHTTPRequestHandler], bool] | None = None,
                 tls_context: ssl.SSLContext | None = None) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        # Set before binding: a failed bind calls server_close, which needs them.
        self.endpoints = endpoints
        self.authorize = authorize or (lambda _handler: True)
        self.tls_context = tls_context
        self._connections: set[socket.socket] = set()
        self._handler_threads: list[threading.Thread] = []
        self._connections_lock = threading.Lock()
        self._closing = False
        super().__init__(address, _Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        thread.start()
        return thread

    def process_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                                  name=f"http-{client_address[0]}:{client_address[1]}", daemon=True)
        with self._connections_lock:
            self._handler_threads = [t for t in self._handler_threads if t.is_alive()]
            self._handler_threads.append(thread)
        thread.start()

    def finish_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        connection = request
        if self.tls_context is not None:
            # Handshake here, in the connection's own thread and under the handler's timeout: a
            # client that connects and says nothing delays no other scrape.
            request.settimeout(_Handler.timeout)
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


def landing_page(title: str, rows: list[tuple[str, str]]) -> str:
    """A small HTML page: links to the endpoints, then a table of what is watched."""
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        "<p><a href='/metrics'>Metrics</a> · <a href='/-/healthy'>Healthy</a> · "
        "<a href='/-/ready'>Ready</a></p>"
        f"<table>{table}</table></body></html>"
    )
