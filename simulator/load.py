"""The load generator: discovery requests for synthetic projects, published the way the
guide's tools publish them (payload ``{project_path, project_name, correlation_id}``)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaException

from pipeline.config import KafkaSettings, Stage
from pipeline.events import discovery_request
from pipeline.kafka import OutgoingRecord, produce_and_confirm
from pipeline.kafka import producer as make_producer
from pipeline.kafka_errors import error_text
from simulator.stages import SOURCE, synthetic_file_paths

# Longest wait for Kafka to confirm what one write() produced.
WRITE_SECONDS = 30.0


@dataclass(frozen=True)
class Project:
    correlation_id: str
    project_name: str
    project_path: str
    files: int

    @classmethod
    def synthetic(cls, files: int, name: str | None = None, correlation_id: str | None = None) -> Project:
        """A project not published yet: its files are known before any stage runs."""
        if files < 0:
            raise ValueError(f"a project has zero or more files, got {files}")
        correlation_id = correlation_id or str(uuid.uuid4())
        name = name or f"synthetic-{correlation_id[:8]}"
        return cls(correlation_id, name, f"/projects/{name}", files)

    @property
    def file_paths(self) -> list[str]:
        """The files discovery will report for this project, in order."""
        return synthetic_file_paths(self.project_path, self.files)


class LoadGenerator:
    def __init__(self, kafka: KafkaSettings, discover: Stage) -> None:
        self.discover = discover
        self._producer = make_producer(kafka)

    def publish(self, project: Project) -> Project:
        """Publish the project's discovery request and wait until Kafka has it."""
        request = discovery_request(project.project_path, project.project_name, project.correlation_id,
                                    synthetic_file_count=project.files, source=SOURCE)
        try:
            self.write(self.discover.request_topic,
                       [(project.correlation_id.encode(), json.dumps(request).encode())])
        except RuntimeError as error:
            raise RuntimeError(f"discovery request for {project.project_name}: {error}") from None
        return project

    def write(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        """Write (key, value) records as they are, and wait until Kafka has every one."""
        outgoing = [OutgoingRecord(topic, value, key) for key, value in records]
        try:
            produce_and_confirm(self._producer, outgoing, deadline=time.monotonic() + WRITE_SECONDS)
        except KafkaException as error:  # ProduceFailed, or no answer to the topics' lookup
            raise RuntimeError(error_text(error)) from None

    def close(self) -> None:
        # publish() already waited for every request; close() ends the producer's threads now
        # rather than whenever the garbage collector gets to it.
        if self._producer.flush(10):
            self._producer.purge()  # requests publish() already reported as not written
        self._producer.close()
