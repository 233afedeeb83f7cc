"""The stand-in pipeline put together: topics, one worker per configured stage (in the
configuration's order: see simulator/stages.py), the services' health endpoints and a load
generator, started and stopped as one.

    with Simulator(config) as sim:
        project = sim.publish_project(files=100)
        sim.configure("stamp", error_rate=0.05)
        sim.pause("index")
        sim.set_health("metadata-stamping", "degraded")
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException

from pipeline.config import Config
from pipeline.events import dead_letter
from pipeline.kafka import admin_client
from simulator.health import HealthEndpoints
from simulator.load import LoadGenerator, Project
from simulator.service_metrics import ServiceMetrics
from simulator.stages import ERROR_TYPES, StageBehaviour, pipeline_logics
from simulator.topics import ensure_topics
from simulator.worker import StageWorker, WorkerStats, WorkerStuck

log = logging.getLogger("treewatch.simulator")


class SimulatorError(RuntimeError):
    """The simulator cannot start; the message says what it could not do and where."""


@dataclass(frozen=True)
class SimulatorSettings:
    partitions: int = 3
    # Replicas of the DLQs it creates; -1: the broker's default, as for every other topic.
    dlq_replication_factor: int = -1
    # Files discovery reports for a request that does not say (one typed by hand).
    default_files_per_project: int = 100
    # Address the health servers listen on instead of their URLs' host (0.0.0.0 in a container).
    bind_host: str | None = None
    behaviours: Mapping[str, StageBehaviour] = field(default_factory=dict)
    serve_health: bool = True
    seed: int | None = None


class Simulator:
    def __init__(self, config: Config, settings: SimulatorSettings | None = None) -> None:
        self.config = config
        self.settings = settings or SimulatorSettings()
        self.stage_names = tuple(stage.name for stage in config.stages)
        unknown = sorted(set(self.settings.behaviours) - set(self.stage_names))
        if unknown:
            raise SimulatorError(f"no stage named {unknown[0]!r} to simulate; the configuration has "
                                 f"{', '.join(self.stage_names)}")
        self._behaviours: dict[str, StageBehaviour] = {
            name: self.settings.behaviours.get(name, StageBehaviour()) for name in self.stage_names
        }
        self.service_metrics = ServiceMetrics()
        self.health = HealthEndpoints(config.services if self.settings.serve_health else (),
                                      bind_host=self.settings.bind_host, metrics=self.service_metrics)
        self.workers: dict[str, StageWorker] = {}
        self._load: LoadGenerator | None = None
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Simulator:
        try:
            self._create_topics()
            try:
                self.health.start()
            except (OSError, ValueError) as error:  # a port taken, or a URL it cannot serve
                raise SimulatorError(str(error)) from error
            logics = pipeline_logics(self.config.stages, self.settings.default_files_per_project)
            for offset, (name, logic) in enumerate(logics.items()):
                seed = None if self.settings.seed is None else self.settings.seed + offset
                worker = StageWorker(self.config.kafka, logic, behaviour=lambda n=name: self._behaviours[n],
                                     seed=seed, observe=self.service_metrics.observe)
                worker.start()
                self.workers[name] = worker
            # The first stage is the one discovery requests go to.
            self._load = LoadGenerator(self.config.kafka, self.config.stages[0])
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything; raises WorkerStuck (after stopping the rest) if a stage would not stop."""
        # All stages finish their batches at the same time rather than one after the other.
        for worker in self.workers.values():
            worker.request_stop()
        stuck: list[WorkerStuck] = []
        for worker in self.workers.values():
            try:
                worker.stop()
            except WorkerStuck as error:
                stuck.append(error)
        self.workers.clear()
        if self._load is not None:
            self._load.close()
            self._load = None
        self.health.stop()
        if stuck:
            raise WorkerStuck("; ".join(str(error) for error in stuck))

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _create_topics(self) -> None:
        admin = admin_client(self.config.kafka)
        try:
            ensure_topics(admin, self.config, partitions=self.settings.partitions,
                          dlq_replication_factor=self.settings.dlq_replication_factor,
                          timeout=self.config.kafka.request_timeout_seconds * 3)
        except (KafkaException, TimeoutError) as error:
            reason = error.args[0] if error.args else error
            detail = reason.str() if hasattr(reason, "str") else str(reason)
            where = self.config.kafka.bootstrap_servers
            raise SimulatorError(f"cannot create the pipeline's topics on {where}: {detail}") from error

    # -- control ---------------------------------------------------------------------------------

    def publish_project(self, files: int, name: str | None = None,
                        correlation_id: str | None = None) -> Project:
        """Publish a discovery request for a new synthetic project of ``files`` files."""
        return self.publish(Project.synthetic(files, name=name, correlation_id=correlation_id))

    def publish(self, project: Project) -> Project:
        """Publish the discovery request of a project planned with ``Project.synthetic``."""
        return self._loader().publish(project)

    def _loader(self) -> LoadGenerator:
        if self._load is None:
            raise RuntimeError("the simulator is not running: start() it first")
        return self._load

    def configure(self, stage: str, **changes: Any) -> StageBehaviour:
        """Change how a stage behaves from its next request on (delay_seconds, error_rate, fail_files)."""
        with self._lock:
            behaviour = dataclasses.replace(self._behaviour(stage), **changes)
            self._behaviours[stage] = behaviour
        return behaviour

    def behaviour(self, stage: str) -> StageBehaviour:
        return self._behaviour(stage)

    def pause(self, stage: str) -> None:
        """Stop the stage's consumer from fetching; it stays in its group, its lag grows."""
        self._worker(stage).pause()

    def resume(self, stage: str) -> None:
        self._worker(stage).resume()

    def set_health(self, service: str, status: str) -> None:
        self.health.set_status(service, status)

    def take_down(self, service: str) -> None:
        """The service stops answering at all: its health port refuses connections."""
        self.health.take_down(service)

    def bring_up(self, service: str) -> None:
        self.health.bring_up(service)

    def write_dead_letters(self, stage: str, error_type: str, count: int, *, malformed: int = 0) -> Project:
        """Write ``count`` dead letters of ``error_type`` for a new synthetic project straight into
        the stage's DLQ, plus ``malformed`` records that are cut short (not JSON), and wait until
        Kafka has them all. The stage's failed topic is left alone: only the DLQ sees the burst."""
        if error_type not in ERROR_TYPES:
            raise ValueError(f"unknown error type {error_type!r}; expected one of {', '.join(ERROR_TYPES)}")
        logic = self._worker(stage).logic
        project = Project.synthetic(count)
        letters = logic.dead_letters(project.project_name, project.project_path, project.correlation_id, count,
                                     error_type)
        records = [(letter.key.encode() if letter.key else None, json.dumps(letter.value).encode())
                   for letter in letters]
        whole = json.dumps(dead_letter(logic.stage.request_topic, {"correlation_id": project.correlation_id},
                                       error_type, "cut short")).encode()
        records += [(project.correlation_id.encode(), whole[: len(whole) // 2]) for _ in range(malformed)]
        self._loader().write(logic.stage.dlq_topic, records)
        return project

    def wait_assigned(self, timeout: float = 60.0) -> None:
        """Wait until every stage's consumer has joined its group and got partitions."""
        deadline = time.monotonic() + timeout
        for name, worker in self.workers.items():
            if not worker.wait_assigned(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"the {name} consumer got no partitions of {worker.stage.request_topic} "
                                   f"in group {worker.stage.group} within {timeout}s")

    def stats(self) -> dict[str, WorkerStats]:
        return {name: worker.stats() for name, worker in self.workers.items()}

    def failed_workers(self) -> dict[str, BaseException]:
        """Stages whose consumer stopped on an error, with the error."""
        return {name: worker.error for name, worker in self.workers.items() if worker.error is not None}

    def _behaviour(self, stage: str) -> StageBehaviour:
        try:
            return self._behaviours[stage]
        except KeyError:
            expected = ", ".join(self.stage_names)
            raise KeyError(f"no simulated stage {stage!r}; expected one of {expected}") from None

    def _worker(self, stage: str) -> StageWorker:
        self._behaviour(stage)  # the clear error for an unknown name
        try:
            return self.workers[stage]
        except KeyError:
            raise RuntimeError("the simulator is not running: start() it first") from None
