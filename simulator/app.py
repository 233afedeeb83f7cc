"""The simulator as a long-running process (``treewatch simulate``): the stand-in pipeline
plus a steady load, a new synthetic project every so often, until SIGTERM or SIGINT."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time

from pipeline.config import Config
from simulator.control import ControlServer, IncidentControl
from simulator.core import Simulator, SimulatorError, SimulatorSettings
from simulator.incidents import SimulatorOnly

log = logging.getLogger("treewatch.simulator")

REPORT_EVERY_SECONDS = 30.0


def run_simulator(config: Config, settings: SimulatorSettings, *, files_per_project: int,
                  project_interval_seconds: float, control_address: tuple[str, int] | None = None) -> int:
    """Serve until stopped; 0 on a clean stop, 1 when a stage's consumer died.

    ``files_per_project`` 0 publishes nothing (requests come from elsewhere);
    ``project_interval_seconds`` 0 publishes one project at start only; ``control_address``
    (host, port) serves the incident control API there (simulator/control.py).
    """
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with Simulator(config, settings) as sim, contextlib.ExitStack() as extras:
        log.info("simulating %s on %s; health endpoints: %s",
                 ", ".join(f"{w.stage.name} (group {w.stage.group})" for w in sim.workers.values()),
                 config.kafka.bootstrap_servers, ", ".join(s.url for s in config.services) or "none")
        if control_address is not None:
            try:
                control = extras.enter_context(ControlServer(IncidentControl(SimulatorOnly(sim)), control_address))
            except OSError as error:
                raise SimulatorError(f"cannot serve the incident control on {control_address[0]}:"
                                     f"{control_address[1]}: {error.strerror}") from None
            log.info("incident control on %s/incidents (treewatch incident list --simulator %s)",
                     control.url, control.url)
        next_project = time.monotonic() if files_per_project > 0 else float("inf")
        next_report = time.monotonic() + REPORT_EVERY_SECONDS
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_project:
                project = sim.publish_project(files_per_project)
                log.info("published project %s (%d files, correlation_id %s)",
                         project.project_name, project.files, project.correlation_id)
                repeat = project_interval_seconds > 0
                next_project = now + project_interval_seconds if repeat else float("inf")
            dead = sim.failed_workers()
            if dead:
                for stage, error in dead.items():
                    log.error("the %s stage's consumer stopped: %s", stage, error)
                return 1
            if now >= next_report:
                next_report = now + REPORT_EVERY_SECONDS
                log.info("processed so far: %s", "; ".join(
                    f"{name} {s.completed} completed, {s.failed} failed, {s.invalid} invalid"
                    for name, s in sim.stats().items()))
            stop.wait(1.0)
    log.info("stopped")
    return 0
