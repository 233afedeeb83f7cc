"""The exporter's real HTTP server on a free loopback port, serving a fixed snapshot for a ``with``
block: the server side of the exporter without Kafka or a refresh loop behind it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from exporter.render import Renderer
from exporter.server import Endpoints, ExporterHTTPServer
from exporter.snapshot import Snapshot


@contextmanager
def serving_snapshot(snapshot: Snapshot, **server_options: Any) -> Iterator[ExporterHTTPServer]:
    """``server_options``: ExporterHTTPServer's own (authorize, tls_context, limits, headers)."""
    endpoints = Endpoints(renderer=Renderer(lambda: snapshot), ready=lambda: True, landing_page=lambda: "landing")
    server = ExporterHTTPServer(("127.0.0.1", 0), endpoints, **server_options)
    server.serve_in_thread()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
