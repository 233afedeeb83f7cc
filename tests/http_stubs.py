"""Stand-in HTTP services for tests: a handler base that answers a whole body in one call and logs
nothing, and a server for it on a free loopback port, served from a thread for a ``with`` block."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pipeline.http_serving import BackgroundHTTPServer


class StubHandler(BaseHTTPRequestHandler):
    """A handler whose answers carry their length, so a keep-alive client knows where each ends."""

    def answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def answer_json(self, status: int, document: object) -> None:
        self.answer(status, json.dumps(document).encode())

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        pass  # a line per request on stderr says nothing a test asserts


class AlwaysHealthy(StubHandler):
    """Every path answers the guide's healthy /health document, so no service alert fires."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.answer_json(200, {"status": "healthy"})


class StubServer(ThreadingHTTPServer):
    daemon_threads = True
    # Every service's probe and read may connect at once; the default backlog of 5 would make some
    # wait for a SYN retransmission, a second or more, longer than the probes' timeouts.
    request_queue_size = 64

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client hanging up on a hanging, endless or huge answer is what the stubs are for


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler], name: str = "stub-server") -> Iterator[str]:
    """``handler`` served on a free loopback port for the block: its base URL, http://127.0.0.1:port."""
    with BackgroundHTTPServer(("127.0.0.1", 0), handler, name=name, server_class=StubServer) as server:
        yield server.base_url
