"""The exporter's HTTP endpoint: /metrics, a landing page at /, /-/healthy and /-/ready.

Handlers only read what the refresh side already built; none of them talks to Kafka or to the
services, so a scrape answers at once whatever state the pipeline is in.
"""

from __future__ import annotations

import html
import logging
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


class _Handler(BaseHTTPRequestHandler):
    server: ExporterHTTPServer
    protocol_version = "HTTP/1.1"

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

    def _send(self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
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
    daemon_threads = True
    # A restarted exporter must be able to take its port back at once.
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], endpoints: Endpoints,
                 authorize: Callable[[BaseHTTPRequestHandler], bool] | None = None) -> None:
        super().__init__(address, _Handler)
        self.endpoints = endpoints
        self.authorize = authorize or (lambda _handler: True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        thread.start()
        return thread


def landing_page(title: str, rows: list[tuple[str, str]]) -> str:
    """A small HTML page: links to the endpoints, then a table of what is watched."""
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        "<p><a href='/metrics'>Metrics</a> · <a href='/-/healthy'>Healthy</a> · <a href='/-/ready'>Ready</a></p>"
        f"<table>{table}</table></body></html>"
    )
