"""The pipeline's event envelopes and dead letters, read tolerantly.

Events are JSON objects whose ``payload`` carries ``correlation_id``; dead letters carry
``original_topic``, ``original_payload``, ``error_type`` and an error message. A record's value is
any bytes at all: every reader goes through ``read_json_object``, which either returns a JSON
object or says why the record cannot be read (too big, not UTF-8, not a JSON object, nested too
deep, a number too long), and never raises anything else, so one poison record cannot stop a
reader however it was made.
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

# Records bigger than this are not parsed: Kafka's default max.message.bytes is 1 MiB, so no event
# of a default topic is bigger, and parsing costs time and memory in proportion to the size (as
# Python objects, a record of many small JSON values takes up to 25 times its size).
MAX_DECODED_BYTES = 1024 * 1024
# Deeper JSON is not accepted: the pipeline's records nest a handful of levels (dead letter,
# original_payload, payload, fields). json.loads gives up near Python's recursion limit (1,000
# frames) with RecursionError, and what walks the result recursively (dataclasses.asdict,
# json.dump with indent, copy.deepcopy) gives up far sooner: a few hundred levels.
MAX_NESTING_DEPTH = 64
# An error_type longer than this is cut: it becomes a Prometheus label value, and a producer bug
# that puts a stack trace there would otherwise put megabytes into every scrape.
MAX_ERROR_TYPE_CHARS = 128
# Any other text of a dead letter (message, correlation id) longer than this is cut: it is shown to
# an operator, one line per dead letter.
MAX_TEXT_CHARS = 1000
# Kafka refuses longer topic names; a longer original_topic names no topic, cut or not.
MAX_TOPIC_NAME_CHARS = 249
# Marks a text that was cut.
TRUNCATED_MARKER = "...truncated"

# Characters a terminal or a one-line listing must not get raw: C0 and C1 controls (ANSI escape
# sequences start with one) and DEL; line breaks and tabs become a space.
_CONTROL_CHARACTERS = {code: "\ufffd" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_CONTROL_CHARACTERS.update({ord("\n"): " ", ord("\r"): " ", ord("\t"): " "})


class UnreadableRecord(ValueError):
    """A record value that is not a JSON object treewatch can read; ``str()`` says why, for an operator."""


def read_json_object(value: bytes | str | None) -> dict[str, Any]:
    """The record value as a JSON object, or UnreadableRecord saying why not.

    JSON exchanged between systems is UTF-8 (RFC 8259, section 8.1): bytes are decoded as UTF-8
    only, so a reader that looks for a text in the raw bytes first (``tools.trace``) finds every
    record this reads. Whatever the bytes, nothing but UnreadableRecord is raised.
    """
    if value is None:
        raise UnreadableRecord("no value (a tombstone)")
    if len(value) > MAX_DECODED_BYTES:
        raise UnreadableRecord(f"larger than {MAX_DECODED_BYTES:,} bytes ({len(value):,} bytes)")
    try:
        text = value if isinstance(value, str) else bytes(value).decode("utf-8")
        decoded = json.loads(text)
    except UnicodeDecodeError:
        raise UnreadableRecord("not UTF-8") from None
    except json.JSONDecodeError:
        raise UnreadableRecord("not a JSON object") from None
    except RecursionError:
        raise UnreadableRecord(f"nested deeper than {MAX_NESTING_DEPTH} levels") from None
    except ValueError:
        # The only other ValueError json raises: an integer of more digits than Python converts
        # (sys.get_int_max_str_digits(), 4,300 by default).
        raise UnreadableRecord("holds a number too long to read") from None
    except MemoryError:
        # Within MAX_DECODED_BYTES only a machine already short of memory gets here: one record
        # is then unreadable, the reader goes on.
        raise UnreadableRecord("too big to read with the memory available") from None
    if not isinstance(decoded, dict):
        raise UnreadableRecord("not a JSON object")
    # Fewer brackets than the limit cannot nest deeper: the walk is only needed for the rare rest.
    if text.count("{") + text.count("[") > MAX_NESTING_DEPTH and _nests_deeper(decoded, MAX_NESTING_DEPTH):
        raise UnreadableRecord(f"nested deeper than {MAX_NESTING_DEPTH} levels")
    return decoded


def _nests_deeper(value: Any, limit: int) -> bool:
    """Whether containers in ``value`` nest more than ``limit`` levels (iterative: no recursion
    limit of its own)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def decode_json_object(value: bytes | str | None) -> dict[str, Any] | None:
    """read_json_object(), or None when the record cannot be read."""
    try:
        return read_json_object(value)
    except UnreadableRecord:
        return None


def safe_text(value: object, max_chars: int) -> str | None:
    """A string of a record as safe to show or to use as a label value, None when ``value`` is not a
    string: valid UTF-8 (JSON's escapes can make lone surrogates, "\\ud800", which no UTF-8 writer
    accepts, so a scrape or a print would fail on them: they become U+FFFD), no control
    characters, and at most ``max_chars`` characters (a longer one is cut and ends in
    TRUNCATED_MARKER)."""
    if not isinstance(value, str):
        return None
    if len(value) > max_chars:
        value = value[:max(0, max_chars - len(TRUNCATED_MARKER))] + TRUNCATED_MARKER
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value.translate(_CONTROL_CHARACTERS)


def correlation_id(value: bytes | str | None) -> str | None:
    """The correlation id of an event envelope or a dead letter, wherever it was put."""
    event = decode_json_object(value)
    return None if event is None else correlation_id_of(event)


def payload_of(event: dict[str, Any] | None) -> dict[str, Any]:
    """The event's fields: an envelope's ``payload``, or the object itself when it carries no payload
    object (a bare request such as the guide's hand-typed one); {} for no event at all."""
    if event is None:
        return {}
    payload = event.get("payload")
    return payload if isinstance(payload, dict) else event


def correlation_id_of(event: dict[str, Any]) -> str | None:
    """correlation_id() for an event already decoded: in its payload, beside it, or, for a dead
    letter, in its original event."""
    original = event.get("original_payload")
    for fields in (payload_of(event), event, payload_of(original) if isinstance(original, dict) else {}):
        if isinstance(fields.get("correlation_id"), str):
            return fields["correlation_id"]
    return None


@dataclass(frozen=True)
class DeadLetter:
    """A dead letter as read. Its texts went through safe_text (error_type is a label value);
    ``unreadable`` says why the record could not be read at all, and then error_type is UNPARSEABLE."""

    error_type: str
    error_message: str | None
    original_topic: str | None
    original_payload: Any
    correlation_id: str | None
    unreadable: str | None = None


def parse_dead_letter(value: bytes | str | None) -> DeadLetter:
    try:
        record = read_json_object(value)
    except UnreadableRecord as error:
        return DeadLetter(UNPARSEABLE, None, None, None, None, unreadable=str(error))
    return DeadLetter(
        error_type=safe_text(record.get("error_type"), MAX_ERROR_TYPE_CHARS) or UNKNOWN_ERROR_TYPE,
        error_message=safe_text(record.get("error_message", record.get("error")), MAX_TEXT_CHARS),
        original_topic=safe_text(record.get("original_topic"), MAX_TOPIC_NAME_CHARS),
        original_payload=record.get("original_payload"),
        correlation_id=safe_text(correlation_id_of(record), MAX_TEXT_CHARS),
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


# The event names the built-in stages' events are made of (``<name>.requested``, ``.completed``,
# ``.failed``); a stage added in the configuration uses its own name.
STAGE_EVENT_NAMES: dict[str, str] = {"discover": "tree.discover", "stamp": "stamping.generate", "index": "tree.index"}


def stage_event_name(stage_name: str) -> str:
    return STAGE_EVENT_NAMES.get(stage_name, stage_name)


def stage_request(stage_name: str, payload: dict[str, Any], *, source: str = "treewatch") -> dict[str, Any]:
    """A request of stage ``stage_name`` in a new envelope. A stage's request carries forward the
    payload of the previous stage's completed event (file identity and what that stage added), so
    ``payload_of(completed)`` is what the next stage is asked about."""
    return envelope(f"{stage_event_name(stage_name)}.requested", payload, source=source)


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
