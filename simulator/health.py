"""The pipeline services' health endpoints, served for real on the configured URLs.

Each service gets its own HTTP server on the host and port of its URL; ``GET`` on the URL's
path (and on ``/health``) answers JSON ``{"status": ..., "service": ...}``. The status is set
from the outside, to show the exporter and the alerts a degraded or failing service;
"unhealthy" is answered with HTTP 503, as load balancers expect.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from pipeline.config import Service

log = logging.getLogger("treewatch.simulator.health")

STATUSES = ("healthy", "degraded", "unhealthy")


def bind_address(url: str, bind_host: str | None = None) -> tuple[str, int, str]:
    """(host, port, path) to serve a health URL on; ``bind_host`` replaces the URL's host (in a
    container the URL names the container, the server listens on 0.0.0.0)."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"{url}: the simulator serves plain http only")
    if parts.hostname is None:
        raise ValueError(f"{url}: no host in the health URL")
    return bind_host or parts.hostname, parts.port or 80, parts.path or "/health"


class _HealthServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], service: str, path: str) -> None:
        super().__init__(address, _HealthHandler)
        self.service = service
        self.health_path = path
        self.status = "healthy"
        self.started = time.monotonic()


class _HealthHandler(BaseHTTPRequestHandler):
    server: _HealthServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
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
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        log.debug("%s %s", self.server.service, format % args)


class HealthEndpoints:
    """One health server per service; ``with HealthEndpoints(services) as health: ...``."""

    def __init__(self, services: Iterable[Service], bind_host: str | None = None) -> None:
        self.services = tuple(services)
        self.bind_host = bind_host
        self._servers: dict[str, _HealthServer] = {}
        self._threads: list[threading.Thread] = []

    def start(self) -> HealthEndpoints:
        try:
            for service in self.services:
                host, port, path = bind_address(service.url, self.bind_host)
                try:
                    server = _HealthServer((host, port), service.name, path)
                except OSError as error:
                    raise OSError(error.errno, f"cannot serve {service.name}'s health on {host}:{port}: "
                                               f"{error.strerror}") from None
                thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                          name=f"simulator-health-{service.name}", daemon=True)
                thread.start()
                # Only a serving server is registered: shutdown() waits for serve_forever to end.
                self._servers[service.name] = server
                self._threads.append(thread)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self._servers.values():
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(10)
        self._servers.clear()
        self._threads.clear()

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

    def _server(self, service: str) -> _HealthServer:
        try:
            return self._servers[service]
        except KeyError:
            raise KeyError(f"no simulated service {service!r}; serving: {', '.join(self._servers)}") from None
