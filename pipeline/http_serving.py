"""A small HTTP server served from a thread of its own for the length of a ``with`` block: the
simulator's control API and the demo's Slack stand-in are both such servers."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class BackgroundHTTPServer:
    """``ThreadingHTTPServer(address, handler)`` served by a daemon thread once entered, shut down
    and closed on exit. Port 0 in ``address`` takes a free port: ``base_url`` tells which."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *, name: str,
                 server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer) -> None:
        self._server = server_class(address, handler)
        # A client that keeps its connection open must not hold up the exit.
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
