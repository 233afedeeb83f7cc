"""The pipeline services' health endpoints, served for real on the configured URLs.

Each service gets its own HTTP server on the host and port of its URL; ``GET`` on the URL's
path (and on ``/health``) answers JSON ``{"status": ..., "service": ...}``. The status is set
from the outside, to show the exporter and the alerts a degraded or failing service;
"unhealthy" is answered with HTTP 503, as load balancers expect. Beside it, each HTTP service
answers ``/metrics`` and the intelligence service ``/cache/metrics`` with what it reports about
its own work (simulator/service_metrics.py). The index stage's stores are
served as they are probed: a service of kind ``http_ok`` (Qdrant's ``/readyz``) by the same HTTP
server, whose 200 or 503 is all the probe reads; one of kind ``tcp`` (Memgraph's Bolt port) by a
listener that accepts each connection and closes it, which is all a tcp probe asks.
"""

from __future__ import annotations

import json
import logging
import socketserver
import sys
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from pipeline.config import Service
from pipeline.health import TCP
from simulator.service_metrics import ServiceMetrics

log = logging.getLogger("treewatch.simulator.health")

STATUSES = ("healthy", "degraded", "unhealthy")
# The guide's issue 4 reads these beside /health (simulator/service_metrics.py).
METRICS_PATH = "/metrics"
CACHE_METRICS_PATH = "/cache/metrics"
EXPOSITION_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def bind_address(url: str, bind_host: str | None = None) -> tuple[str, int, str]:
    """(host, port, path) to serve a health URL on; ``bind_host`` replaces the URL's host (in a
    container the URL names the container, the server listens on 0.0.0.0)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "tcp"):
        raise ValueError(f"{url}: the simulator serves plain http and tcp only")
    if parts.hostname is None:
        raise ValueError(f"{url}: no host in the health URL")
    return bind_host or parts.hostname, parts.port or 80, parts.path or "/health"


class _HealthServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], service: str, path: str,
                 metrics: ServiceMetrics | None = None) -> None:
        super().__init__(address, _HealthHandler)
        self.service = service
        self.metrics = metrics
        self.health_path = path
        self.status = "healthy"
        self.started = time.monotonic()

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        # A prober that gave up (its timeout) before the answer was written is its business, not
        # an error of this server: socketserver would print a traceback to stderr for it.
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("%s: the prober at %s left before its answer", self.service, client_address)
            return
        super().handle_error(request, client_address)


class _StoreListener(socketserver.ThreadingTCPServer):
    """A store's port (kind tcp): accepts every connection and closes it. Its status is kept for
    set_status and take_down alike, though a tcp probe only sees whether it accepts."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], service: str) -> None:
        super().__init__(address, socketserver.BaseRequestHandler)
        self.service = service
        self.status = "healthy"


class _HealthHandler(BaseHTTPRequestHandler):
    server: _HealthServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        metrics = self.server.metrics
        if metrics is not None and path == METRICS_PATH:
            self._send_bytes(200, metrics.exposition(self.server.service), EXPOSITION_CONTENT_TYPE)
            return
        cache = None if metrics is None else metrics.cache_metrics(self.server.service)
        if cache is not None and path == CACHE_METRICS_PATH:
            self._send(200, cache)
            return
        if path not in (self.server.health_path, "/health"):
            self._send(404, {"error": f"not found; try {self.server.health_path}"})
            return
        status = self.server.status
        self._send(503 if status == "unhealthy" else 200, {
            "status": status,
            "service": self.server.service,
            "version": "simulated",
            "uptime_seconds": round(time.monotonic() - self.server.started, 3),
        })

    def _send(self, code: int, body: dict) -> None:
        self._send_bytes(code, json.dumps(body).encode(), "application/json")

    def _send_bytes(self, code: int, data: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        log.debug("%s %s", self.server.service, format % args)


class HealthEndpoints:
    """One health server per service; ``with HealthEndpoints(services) as health: ...``."""

    def __init__(self, services: Iterable[Service], bind_host: str | None = None,
                 metrics: ServiceMetrics | None = None) -> None:
        self.services = tuple(services)
        self.bind_host = bind_host
        self.metrics = metrics  # what each HTTP service serves on /metrics and /cache/metrics
        self._servers: dict[str, _HealthServer | _StoreListener] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._down: dict[str, str] = {}  # service taken down -> the status it had

    def start(self) -> HealthEndpoints:
        try:
            for service in self.services:
                self._serve(service)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for name in list(self._servers):
            self._close(name)
        self._down.clear()

    def take_down(self, service: str) -> None:
        """Stop serving one service's health URL: its port refuses connections, as a crashed
        service's would. Its status is kept for when it is brought back up."""
        server = self._server(service)
        self._down[service] = server.status
        self._close(service)

    def bring_up(self, service: str) -> None:
        """Serve a service taken down again, on the same address and with the status it had."""
        if service not in self._down:
            raise KeyError(f"service {service!r} is not down; down: {', '.join(self._down) or 'none'}")
        status = self._down.pop(service)
        self._serve(next(s for s in self.services if s.name == service)).status = status

    def is_down(self, service: str) -> bool:
        return service in self._down

    def _serve(self, service: Service) -> _HealthServer | _StoreListener:
        host, port, path = bind_address(service.url, self.bind_host)
        try:
            server = (_StoreListener((host, port), service.name) if service.kind == TCP
                      else _HealthServer((host, port), service.name, path, self.metrics))
        except OSError as error:
            raise OSError(error.errno, f"cannot serve {service.name}'s health on {host}:{port}: "
                                       f"{error.strerror}") from None
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                  name=f"simulator-health-{service.name}", daemon=True)
        thread.start()
        # Only a serving server is registered: shutdown() waits for serve_forever to end.
        self._servers[service.name] = server
        self._threads[service.name] = thread
        return server

    def _close(self, service: str) -> None:
        server = self._servers.pop(service)
        server.shutdown()
        server.server_close()
        self._threads.pop(service).join(10)

    def __enter__(self) -> HealthEndpoints:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_status(self, service: str, status: str) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        self._server(service).status = status

    def status(self, service: str) -> str:
        return self._server(service).status

    def statuses(self) -> dict[str, str]:
        return {name: server.status for name, server in self._servers.items()}

    def port(self, service: str) -> int:
        return self._server(service).server_address[1]

    def _server(self, service: str) -> _HealthServer | _StoreListener:
        try:
            return self._servers[service]
        except KeyError:
            if service in self._down:
                raise KeyError(f"simulated service {service!r} is down; bring_up() it first") from None
            raise KeyError(f"no simulated service {service!r}; serving: {', '.join(self._servers)}") from None
