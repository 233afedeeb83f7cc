"""Starting and stopping the catalogue's incidents in a running simulator, over HTTP on loopback
(``treewatch simulate --control 127.0.0.1:9850``; ``treewatch incident start|stop|list`` is the client).

    GET  /incidents                 the catalogue, and the incidents active now
    POST /incidents/<name>/start    body (optional): a JSON object of parameters, e.g. {"stage": "stamp"}
    POST /incidents/<name>/stop

Answers are JSON; an error is ``{"error": "..."}`` with 400 (bad parameters), 404 (no such
incident), 409 (already active / not active) or 422 (this simulator cannot do it: the exporter
and the brokers are not its own). Nothing here authenticates: it listens where you tell it, and
loopback is the default of every caller.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx

from pipeline.http_serving import BackgroundHTTPServer
from simulator.incidents import CATALOGUE, Environment, Incident, IncidentUnavailable, incident

log = logging.getLogger("treewatch.simulator.control")

# A start request's body is a handful of parameters; anything bigger is not one.
MAX_BODY_BYTES = 4096


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class IncidentControl:
    """The incidents active in one environment; start and stop are safe from any thread."""

    def __init__(self, env: Environment) -> None:
        self.env = env
        self._active: dict[str, tuple[Incident, float]] = {}
        self._lock = threading.Lock()

    def start(self, name: str, parameters: dict[str, Any]) -> Incident:
        with self._lock:
            if name in self._active:
                raise ControlError(409, f"incident {name} is already active; stop it first")
            try:
                fault = incident(name, **parameters)
            except KeyError as error:
                raise ControlError(404, error.args[0]) from None
            except (TypeError, ValueError) as error:
                raise ControlError(400, str(error)) from None
            try:
                fault.start(self.env)
            except IncidentUnavailable as error:
                raise ControlError(422, str(error)) from None
            except (KeyError, ValueError) as error:  # e.g. a service name this simulator does not serve
                raise ControlError(400, error.args[0] if error.args else str(error)) from None
            self._active[name] = (fault, time.time())
            log.warning("incident started: %s", fault.describe())
            return fault

    def stop(self, name: str) -> Incident:
        with self._lock:
            if name not in CATALOGUE:
                raise ControlError(404, f"no incident named {name!r}; the catalogue has {', '.join(CATALOGUE)}")
            if name not in self._active:
                raise ControlError(409, f"incident {name} is not active")
            fault, _ = self._active.pop(name)
            fault.stop(self.env)
            log.warning("incident stopped: %s", fault.name)
            return fault

    def stop_all(self) -> None:
        for name in list(self._active):
            self.stop(name)

    def describe(self) -> dict[str, Any]:
        with self._lock:
            active = [{"name": name, "parameters": fault.parameters, "subject": fault.subject, "started_at": at}
                      for name, (fault, at) in self._active.items()]
        return {"catalogue": catalogue_entries(), "active": active}


def catalogue_entries() -> list[dict[str, Any]]:
    entries = []
    for name, cls in CATALOGUE.items():
        fault = cls()
        entries.append({"name": name, "summary": cls.summary.format(**fault.parameters), "guide": cls.guide,
                        "parameters": fault.parameters, "subject": fault.subject})
    return entries


class ControlServer(BackgroundHTTPServer):
    """``IncidentControl`` served over HTTP; ``with ControlServer(control, ("127.0.0.1", 9850)) as server``."""

    def __init__(self, control: IncidentControl, address: tuple[str, int]) -> None:
        self.control = control
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.split("?", 1)[0].rstrip("/") != "/incidents":
                    self._send(404, {"error": "not found; try GET /incidents"})
                    return
                self._send(200, outer.control.describe())

            def do_POST(self) -> None:  # noqa: N802
                parts = self.path.split("?", 1)[0].strip("/").split("/")
                if len(parts) != 3 or parts[0] != "incidents" or parts[2] not in ("start", "stop"):
                    self._send(404, {"error": "not found; try POST /incidents/<name>/start or /stop"})
                    return
                try:
                    parameters = self._parameters()
                    if parts[2] == "start":
                        fault = outer.control.start(parts[1], parameters)
                        self._send(200, {"started": fault.describe(), "parameters": fault.parameters})
                    else:
                        fault = outer.control.stop(parts[1])
                        self._send(200, {"stopped": fault.describe()})
                except ControlError as error:
                    self._send(error.status, {"error": str(error)})
                except Exception as error:  # the fault itself failed: say so rather than drop the connection
                    log.exception("incident %s %s failed", parts[1], parts[2])
                    self._send(500, {"error": f"{parts[2]} {parts[1]} failed: {error}"})

            def _parameters(self) -> dict[str, Any]:
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    raise ControlError(400, "Content-Length is not a number") from None
                if length > MAX_BODY_BYTES:
                    self.close_connection = True  # its body is left unread: the connection cannot go on
                    raise ControlError(400, f"a body of parameters is at most {MAX_BODY_BYTES} bytes")
                raw = self.rfile.read(length) if length > 0 else b""
                if not raw.strip():
                    return {}
                try:
                    parameters = json.loads(raw)
                except (ValueError, RecursionError):
                    raise ControlError(400, "the body is not JSON") from None
                if not isinstance(parameters, dict):
                    raise ControlError(400, "the body must be a JSON object of parameters")
                return parameters

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
                log.debug("control: " + format, *args)

        super().__init__(address, Handler, name="simulator-control")

    @property
    def url(self) -> str:
        return self.base_url


class ControlClient:
    """The other end: ``ControlClient("http://127.0.0.1:9850").start("stage-stalled", stage="stamp")``.
    Errors the simulator reports are raised as ControlError with its status and message."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def describe(self) -> dict[str, Any]:
        return self._call("GET", "/incidents")

    def start(self, name: str, **parameters: Any) -> dict[str, Any]:
        return self._call("POST", f"/incidents/{name}/start", parameters)

    def stop(self, name: str) -> dict[str, Any]:
        return self._call("POST", f"/incidents/{name}/stop")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = httpx.request(method, self.url + path, json=body, timeout=self.timeout)
        except httpx.HTTPError as error:
            raise ControlError(503, f"no simulator control at {self.url} ({error}); is `treewatch simulate "
                                    f"--control` running there?") from None
        try:
            answer = response.json()
        except ValueError:
            raise ControlError(response.status_code, f"{self.url}{path} answered HTTP {response.status_code} "
                                                     "without JSON: not a treewatch simulator?") from None
        if response.status_code != 200:
            raise ControlError(response.status_code, str(answer.get("error", answer)))
        return answer
