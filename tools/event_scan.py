"""The events of one correlation id or one project in pipeline topics, read over a bounded range
(``treewatch replay`` and ``treewatch reconcile``).

The range is fixed when the scan starts: from the first record at or after ``since`` (Kafka's
ListOffsets by timestamp: the earliest offset whose record timestamp is at or after it) or the log start,
up to the high watermark taken then. A topic the pipeline keeps writing therefore never makes a
scan endless, and records written after it started are left for the next one.

Every record is read through pipeline.events.read_json_object: a record that is not a readable
JSON object (any bytes: huge, binary, nested too deep) is counted by reason and passed over, never
fatal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Message

from pipeline.events import UnreadableRecord, correlation_id_of, payload_of, read_json_object
from pipeline.kafka import KafkaSession, Partition
from pipeline.kafka_errors import all_watermarks, error_text, offsets_for_time, partitions_of
from tools import ToolError

# Unreadable records listed one by one in a report (all of them are counted).
UNREADABLE_SAMPLES = 10


@dataclass(frozen=True)
class EventSelector:
    """The events a scan is about: those of one correlation id, or those of one project (every
    correlation id its discovery requests had)."""

    correlation_id: str | None = None
    project: str | None = None

    def __post_init__(self) -> None:
        if (self.correlation_id is None) == (self.project is None):
            raise ValueError("select events by a correlation id or by a project, one of the two")

    def matches(self, event: dict[str, Any]) -> bool:
        """Whether ``event`` (an envelope, a bare request or a dead letter, whose original event is
        looked into) is one of the selected."""
        if self.correlation_id is not None:
            return correlation_id_of(event) == self.correlation_id
        original = event.get("original_payload")
        return any(fields.get("project_name") == self.project
                   for fields in (payload_of(event), payload_of(original) if isinstance(original, dict) else {}))

    @property
    def options(self) -> list[str]:
        """The command-line options that select the same events."""
        if self.correlation_id is not None:
            return ["--correlation-id", self.correlation_id]
        return ["--project", str(self.project)]

    def __str__(self) -> str:
        return f"correlation id {self.correlation_id}" if self.correlation_id is not None \
            else f"project {self.project}"


@dataclass(frozen=True)
class ScanRange:
    """Per partition, where a scan starts (inclusive) and ends (exclusive), both fixed at its start;
    ``log_start``: the first offset retained then."""

    starts: dict[Partition, int]
    ends: dict[Partition, int]
    log_start: dict[Partition, int]
    missing_topics: tuple[str, ...]  # asked for, but not in the cluster

    @property
    def partitions(self) -> list[Partition]:
        return sorted(self.ends)


def scan_range(kafka: KafkaSession, topics: Iterable[str], since: float | None, deadline: float) -> ScanRange:
    """The range of ``topics`` to scan: from ``since`` (seconds since the epoch) or the log start, to
    the high watermark now. A partition without a leader for the moment is asked again until
    ``deadline`` (time.monotonic())."""
    timeout = kafka.settings.request_timeout_seconds
    wanted = list(dict.fromkeys(topics))
    partitions = partitions_of(kafka.admin, wanted, deadline=deadline, request_timeout=timeout)
    keys = [(topic, p) for topic, ids in partitions.items() for p in ids]
    watermarks = all_watermarks(kafka.admin, keys, deadline=deadline, request_timeout=timeout)
    if watermarks.errors:
        (topic, partition), error = next(iter(watermarks.errors.items()))
        raise ToolError(f"cannot read where {topic}[{partition}] starts and ends: {error_text(error)}")
    starts = dict(watermarks.low)
    if since is not None and keys:
        at_time = offsets_for_time(kafka.admin, keys, int(since * 1000), deadline=deadline, request_timeout=timeout)
        # -1: no record that recent in the partition; nothing of it is read.
        starts = {key: watermarks.high[key] if at_time[key] < 0 else at_time[key] for key in keys}
    return ScanRange({k: max(starts[k], watermarks.low[k]) for k in keys}, dict(watermarks.high), dict(watermarks.low),
                     tuple(t for t in wanted if t not in partitions))


@dataclass(frozen=True)
class UnreadableSample:
    """A record passed over because it is not a readable JSON object: where it is, its size and why."""

    topic: str
    partition: int
    offset: int
    size: int  # bytes of the record value
    reason: str


@dataclass
class Unreadable:
    """Records passed over because they are not readable JSON objects: counted by reason, the first
    few listed."""

    # A plain dict, not a Counter: dataclasses.asdict() rebuilds a Counter from its items, counting them.
    by_reason: dict[str, int] = field(default_factory=dict)
    samples: list[UnreadableSample] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def add(self, record: Message, reason: str) -> None:
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        if len(self.samples) < UNREADABLE_SAMPLES:
            self.samples.append(UnreadableSample(record.topic(), record.partition(), record.offset(),
                                                 len(record.value() or b""), reason))


def read_event(record: Message, unreadable: Unreadable) -> dict[str, Any] | None:
    """The record's JSON object, or None (counted in ``unreadable``) when it is not one."""
    try:
        return read_json_object(record.value())
    except UnreadableRecord as error:
        unreadable.add(record, str(error))
        return None
