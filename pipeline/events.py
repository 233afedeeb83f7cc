"""The pipeline's event envelopes and dead letters, read tolerantly.

Events are JSON objects whose ``payload`` carries ``correlation_id``; dead letters carry
``original_topic``, ``original_payload``, ``error_type`` and an error message. Anything else
(bad JSON, a list, bytes that are not UTF-8) is reported as unreadable, never raised, so one
bad record cannot stop a reader.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

# error_type given to a dead letter that is not a JSON object, so it is counted, not lost.
UNPARSEABLE = "unparseable"
# error_type given to a readable dead letter that names none.
UNKNOWN_ERROR_TYPE = "UNKNOWN"
# Optional discovery request field: how many files the simulator's discovery reports for a synthetic
# project. The real pipeline does not read it; it discovers the files under project_path.
SYNTHETIC_FILE_COUNT_FIELD = "synthetic_file_count"


def decode_json_object(value: bytes | str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        decoded = json.loads(value)
    except (UnicodeDecodeError, ValueError):
        return None
    return decoded if isinstance(decoded, dict) else None


def correlation_id(value: bytes | str | None) -> str | None:
    """The correlation id of an event envelope or a dead letter, wherever it was put."""
    event = decode_json_object(value)
    return None if event is None else correlation_id_of(event)


def correlation_id_of(event: dict[str, Any]) -> str | None:
    """correlation_id() for an event already decoded."""
    payload = event.get("payload")
    if isinstance(payload, dict) and isinstance(payload.get("correlation_id"), str):
        return payload["correlation_id"]
    if isinstance(event.get("correlation_id"), str):
        return event["correlation_id"]
    original = event.get("original_payload")
    if isinstance(original, dict):
        inner = original.get("payload") if isinstance(original.get("payload"), dict) else original
        if isinstance(inner.get("correlation_id"), str):
            return inner["correlation_id"]
    return None


@dataclass(frozen=True)
class DeadLetter:
    error_type: str
    error_message: str | None
    original_topic: str | None
    original_payload: Any
    correlation_id: str | None


def parse_dead_letter(value: bytes | str | None) -> DeadLetter:
    record = decode_json_object(value)
    if record is None:
        return DeadLetter(UNPARSEABLE, None, None, None, None)
    error_type = record.get("error_type")
    message = record.get("error_message", record.get("error"))
    return DeadLetter(
        error_type=error_type if isinstance(error_type, str) and error_type else UNKNOWN_ERROR_TYPE,
        error_message=message if isinstance(message, str) else None,
        original_topic=record.get("original_topic") if isinstance(record.get("original_topic"), str) else None,
        original_payload=record.get("original_payload"),
        correlation_id=correlation_id_of(record),
    )


def envelope(event_type: str, payload: dict[str, Any], *, source: str = "treewatch") -> dict[str, Any]:
    """A new event envelope in the pipeline's shape."""
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "source": source,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "payload": payload,
    }


def dead_letter(original_topic: str, original_payload: Any, error_type: str, error_message: str) -> dict[str, Any]:
    """A new dead letter in the pipeline's shape."""
    return {
        "original_topic": original_topic,
        "original_payload": original_payload,
        "error_type": error_type,
        "error_message": error_message,
        "correlation_id": correlation_id_of(original_payload) if isinstance(original_payload, dict) else None,
        "failed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def discovery_request(project_path: str, project_name: str, correlation_id: str, *,
                      synthetic_file_count: int | None = None, force_regenerate: bool = False,
                      source: str = "treewatch") -> dict[str, Any]:
    """A discovery request as the guide's tools publish it to the discover stage's request topic."""
    payload: dict[str, Any] = {"project_path": project_path, "project_name": project_name,
                               "correlation_id": correlation_id}
    if synthetic_file_count is not None:
        payload[SYNTHETIC_FILE_COUNT_FIELD] = synthetic_file_count
    if force_regenerate:
        payload["force_regenerate"] = True
    return envelope("tree.discover.requested", payload, source=source)
