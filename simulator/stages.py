"""What each stage of the stand-in pipeline does with one request: from the request record to
the records the stage writes (its outputs, or a failed event and a dead letter). No Kafka here,
so the consumer loop is the same for every stage and this part is plain to read.

The stages are the configuration's, in its order (``pipeline_logics``): the first receives the
project's discovery request, each completed request becomes the next stage's request, and the
last stage's completion finishes a file. With the built-in three:

discover: a project request → one ``discover-completed`` event with ``files_discovered`` = N
          and N stamping requests, one per file.
stamp:    a file → ``stamping.generate-completed`` and a ``tree.index`` request.
index:    a file → ``tree.index-completed`` (and the next stage's request, when one is configured).

A stage added in treewatch.yaml works on files like stamp and index: a completed event carrying the
file forward, and the request of the stage after it, if any.
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import Stage
from pipeline.events import (
    SYNTHETIC_FILE_COUNT_FIELD,
    correlation_id,
    dead_letter,
    decode_json_object,
    envelope,
    payload_of,
    stage_event_name,
    stage_request,
)

SOURCE = "treewatch-simulator"

# The guide's error codes with the message its DLQ section shows for each.
ERROR_MESSAGES: dict[str, str] = {
    "FILE_NOT_FOUND": "File '{file_path}' not found",
    "INTELLIGENCE_SERVICE_ERROR": "Intelligence service timeout after 30s",
    "ENCODING_ERROR": "Cannot decode file with UTF-8 encoding",
}
ERROR_TYPES: tuple[str, ...] = tuple(ERROR_MESSAGES)
# A request the stage cannot read at all is failed and dead-lettered, like any other failure.
INVALID_EVENT = "INVALID_EVENT"

# Optional request field: how many files discovery finds in the synthetic project. Without it
# (a request typed by hand, as in the guide's `rpk topic produce` example) the default applies.
FILE_COUNT_FIELD = SYNTHETIC_FILE_COUNT_FIELD


@dataclass(frozen=True)
class StageBehaviour:
    """How a simulated stage behaves; replaced whole while it runs (see Simulator.configure)."""

    delay_seconds: float = 0.0  # processing time per request
    error_rate: float = 0.0  # share of requests that fail, with a random error type
    # file_path (project_path for discovery) -> error_type: these requests always fail.
    fail_files: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate must be between 0 and 1, got {self.error_rate}")
        if self.delay_seconds < 0:
            raise ValueError(f"delay_seconds must not be negative, got {self.delay_seconds}")
        unknown = sorted(set(self.fail_files.values()) - set(ERROR_TYPES))
        if unknown:
            raise ValueError(f"unknown error types {unknown}; expected one of {', '.join(ERROR_TYPES)}")


@dataclass(frozen=True)
class Record:
    topic: str
    key: str | None
    value: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    status: str  # "completed", "failed" or "invalid"
    records: tuple[Record, ...]


class InvalidRequest(ValueError):
    """A request the stage cannot act on: not a JSON object, or a required field missing."""


def synthetic_file_paths(project_path: str, files: int) -> list[str]:
    """The files discovery 'finds' in a synthetic project: the same list every time."""
    root = project_path.rstrip("/")
    return [f"{root}/src/pkg_{index // 50:03d}/module_{index:05d}.py" for index in range(files)]


def request_payload(value: bytes | None, required: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(payload, whole record) of a request; an envelope's payload or, for a bare object such
    as the guide's hand-typed test request, the object itself."""
    record = decode_json_object(value)
    if record is None:
        raise InvalidRequest("not a JSON object")
    payload = payload_of(record)
    missing = [name for name in required if not isinstance(payload.get(name), str) or not payload[name]]
    if missing:
        raise InvalidRequest(f"missing or empty field(s): {', '.join(missing)}")
    return payload, record


def event_name(stage: Stage) -> str:
    return stage_event_name(stage.name)


class StageLogic(ABC):
    """One stage's work on one request; subclasses say what success writes. ``next_stage`` is the
    stage whose requests this one's completions become (None for the last)."""

    required: tuple[str, ...] = ("correlation_id",)

    def __init__(self, stage: Stage, next_stage: Stage | None = None) -> None:
        self.stage = stage
        self.next_stage = next_stage
        self.event_name = event_name(stage)

    @abstractmethod
    def succeed(self, payload: dict[str, Any]) -> list[Record]:
        """The records the stage writes when the request succeeds."""

    def next_request(self, key: str, payload: dict[str, Any]) -> list[Record]:
        """The next stage's request for ``payload`` (nothing after the last stage)."""
        if self.next_stage is None:
            return []
        return [Record(self.next_stage.request_topic, key, stage_request(self.next_stage.name, payload, source=SOURCE))]

    def dead_letters(self, project_name: str, project_path: str, correlation: str, count: int,
                     error_type: str) -> list[Record]:
        """``count`` dead letters as this stage writes them when it gives up on requests of a
        project with ``error_type`` (the failed events aside), each keeping its request's key."""
        records = []
        for index, path in enumerate(synthetic_file_paths(project_path, count)):
            file = {"correlation_id": correlation, "project_name": project_name, "project_path": project_path,
                    "file_path": path, "file_index": index}
            request = _event(f"{self.event_name}.requested", file)
            message = ERROR_MESSAGES[error_type].format(file_path=path)
            records.append(Record(self.stage.dlq_topic, path,
                                  dead_letter(self.stage.request_topic, request, error_type, message)))
        return records

    def process(self, value: bytes | None, behaviour: StageBehaviour, rng: random.Random,
                key: str | None = None) -> Outcome:
        """What the stage writes for one request; ``key`` is the request's record key, which its
        dead letter keeps (as Kafka Connect's and Spring's dead letter queues do), so a replay lands
        on the partition the request was on."""
        try:
            payload, record = request_payload(value, self.required)
            failure = self._failure(payload, behaviour, rng)
            if failure is None:
                return Outcome("completed", tuple(self.succeed(payload)))
        except InvalidRequest as error:
            return self._invalid(value, error, key)
        error_type, message = failure
        failed = _event(f"{self.event_name}.failed",
                        {**_identity(payload), "error_type": error_type, "error_message": message})
        letter = dead_letter(self.stage.request_topic, record, error_type, message)
        correlation = payload["correlation_id"]
        return Outcome("failed", (Record(self.stage.failed_topic, correlation, failed),
                                  Record(self.stage.dlq_topic, key or correlation, letter)))

    def _invalid(self, value: bytes | None, error: InvalidRequest, request_key: str | None) -> Outcome:
        """A failed event as for any failure, so requested = completed + failed still adds up
        (tree_events_in_flight would otherwise grow by one per bad request, for ever), and
        the raw request in a dead letter for whoever repairs it."""
        # A JSON object missing a field is kept as the object (its correlation_id included), so
        # the dead letter can be traced and replayed; anything else as the text it was.
        original: Any = decode_json_object(value)
        if original is None and value is not None:
            original = value.decode("utf-8", errors="replace")
        message = f"unreadable request: {error}"
        key = correlation_id(value)
        failed = _event(f"{self.event_name}.failed",
                        {"correlation_id": key, "error_type": INVALID_EVENT, "error_message": message})
        letter = dead_letter(self.stage.request_topic, original, INVALID_EVENT, message)
        return Outcome("invalid", (Record(self.stage.failed_topic, key, failed),
                                   Record(self.stage.dlq_topic, request_key or key, letter)))

    @staticmethod
    def _failure(payload: dict[str, Any], behaviour: StageBehaviour,
                 rng: random.Random) -> tuple[str, str] | None:
        file_path = payload.get("file_path") or payload.get("project_path") or ""
        error_type = behaviour.fail_files.get(file_path)
        if error_type is None and behaviour.error_rate > 0 and rng.random() < behaviour.error_rate:
            error_type = rng.choice(ERROR_TYPES)
        if error_type is None:
            return None
        return error_type, ERROR_MESSAGES[error_type].format(file_path=file_path)


class Discover(StageLogic):
    """The first stage: a project's discovery request → its completed event with the number of
    files found, and one request of the next stage per file."""

    required = ("correlation_id", "project_path")

    def __init__(self, stage: Stage, next_stage: Stage | None, default_files: int) -> None:
        super().__init__(stage, next_stage)
        self.default_files = default_files

    def succeed(self, payload: dict[str, Any]) -> list[Record]:
        files = payload.get(FILE_COUNT_FIELD, self.default_files)
        if not isinstance(files, int) or isinstance(files, bool) or files < 0:
            raise InvalidRequest(f"{FILE_COUNT_FIELD} must be a non-negative integer, got {files!r}")
        project_path = payload["project_path"]
        project = {
            "correlation_id": payload["correlation_id"],
            "project_name": payload.get("project_name") or project_path.rstrip("/").rsplit("/", 1)[-1],
            "project_path": project_path,
        }
        completed = _event(f"{self.event_name}.completed", {**project, "files_discovered": files})
        records = [Record(self.stage.completed_topic, project["correlation_id"], completed)]
        for index, path in enumerate(synthetic_file_paths(project_path, files)):
            records += self.next_request(path, {**project, "file_path": path, "file_index": index})
        return records


class FileStage(StageLogic):
    """A stage that works on one file: a completed event and the next stage's request, both carrying
    the file and what this stage adds to it (``adds``)."""

    required = ("correlation_id", "file_path")

    def adds(self, file: dict[str, Any]) -> dict[str, Any]:
        """What this stage's work adds to the file's events."""
        return {}

    def succeed(self, payload: dict[str, Any]) -> list[Record]:
        identity = _identity(payload)
        path = identity["file_path"]
        file = {**identity, **self.adds(identity)}
        completed = _event(f"{self.event_name}.completed", file)
        return [Record(self.stage.completed_topic, path, completed), *self.next_request(path, file)]


class Stamp(FileStage):
    def adds(self, file: dict[str, Any]) -> dict[str, Any]:
        digest = hashlib.blake2b(file["file_path"].encode(), digest_size=16).hexdigest()
        return {"stamp": {"content_hash": digest, "stamped_by": "metadata-stamping"}}


class Index(FileStage):
    def adds(self, file: dict[str, Any]) -> dict[str, Any]:
        return {"indexed_in": ["qdrant", "memgraph"]}


# What the built-in file stages add; any other stage after the first is a plain FileStage.
FILE_STAGES: dict[str, type[FileStage]] = {"stamp": Stamp, "index": Index}


def pipeline_logics(stages: Sequence[Stage], default_files: int) -> dict[str, StageLogic]:
    """stage name → its logic, for the configuration's stages in order: the first discovers, each
    one's completions are the next one's requests."""
    if not stages:
        raise ValueError("a pipeline has at least one stage")
    following: list[Stage | None] = [*stages[1:], None]
    logics: dict[str, StageLogic] = {stages[0].name: Discover(stages[0], following[0], default_files)}
    for stage, next_stage in zip(stages[1:], following[1:], strict=True):
        logics[stage.name] = FILE_STAGES.get(stage.name, FileStage)(stage, next_stage)
    return logics


def _identity(payload: dict[str, Any]) -> dict[str, Any]:
    """The fields every event about this project or file carries forward."""
    keys = ("correlation_id", "project_name", "project_path", "file_path", "file_index")
    return {key: payload[key] for key in keys if key in payload}


def _event(event_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    return envelope(event_type, payload, source=SOURCE)
