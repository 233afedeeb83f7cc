"""Follow one correlation id through the pipeline: every record of every stage topic (request,
completed, failed, dead letter) that carries it, in time order, with where it sits in Kafka.

The read is bounded: each partition from its log start to the high watermark taken when the
trace starts, with assign() and no consumer group, so it commits nothing and ends even while the
pipeline keeps writing.

It is a scan of every retained record, so it is made to be fast: one assignment streamed in big
consume() batches with large fetches, and a record is decoded only when the correlation id's text
is in its raw bytes. A JSON string equal to the id holds that text unless the producer escaped
characters JSON never requires escaping (``\\u0063`` for ``c``); the common encoders (Python's json,
Jackson, Go's encoding/json, JavaScript's JSON.stringify) never escape letters, digits or
``-_.:``, so only the longest run of those in the id is looked for. A
record holding it that cannot be read (pipeline.events: too big, not UTF-8, nested too deep, ...)
is listed as unreadable and skipped; the others are never decoded.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.config import Config
from pipeline.events import UnreadableRecord, correlation_id_of, read_json_object
from pipeline.kafka import KafkaSession, iter_records, record_timestamp_seconds
from pipeline.kafka_errors import all_watermarks, partitions_of
from tools.event_scan import UnreadableSample

# A stage topic's role → the summary column it counts in.
ROLE_COUNTS = {"request": "requested", "completed": "completed", "failed": "failed", "dlq": "dead_lettered"}
_ROLE_ORDER = list(ROLE_COUNTS)
# Unreadable records listed one by one; beyond this many only their count grows.
MAX_UNREADABLE_LISTED = 20
# Records asked of consume() at once: the per-call overhead is paid per batch, not per record.
_BATCH_RECORDS = 10_000
# A scan is throughput bound: librdkafka's default of 1 MiB per partition and fetch made it wait on
# fetch round trips (a quarter of the speed of 4 MiB and more on a topic tried). The totals
# stay librdkafka's (50 MiB per fetch, 64 MiB queued), and so does the memory a scan can hold.
_SCAN_SETTINGS = {"max.partition.fetch.bytes": 8 * 1024 * 1024}
# Characters every JSON encoder writes as they are.
_VERBATIM_RUN = re.compile(r"[A-Za-z0-9._:-]+")


@dataclass(frozen=True)
class TracedEvent:
    timestamp: float | None  # record timestamp, seconds since the epoch
    stage: str
    role: str  # request | completed | failed | dlq
    topic: str
    partition: int
    offset: int
    event: dict | None  # the decoded record value


@dataclass(frozen=True)
class RoleSpan:
    """A stage role's events of the correlation id: how many, and the first and last record time."""

    count: int
    first: float | None  # record timestamps, seconds since the epoch
    last: float | None


@dataclass(frozen=True)
class Trace:
    correlation_id: str
    events: tuple[TracedEvent, ...]
    records_scanned: int
    missing_topics: tuple[str, ...]  # stage topics that do not exist
    unread_partitions: tuple[str, ...]  # partitions whose offsets could not be read
    complete: bool  # False when the time limit or max_events ended the read before every high watermark
    summary: dict[str, dict[str, int]] = field(default_factory=dict)  # stage → count name → count
    unreadable_count: int = 0  # records holding the id's text that could not be read, skipped
    # The first MAX_UNREADABLE_LISTED records holding the id's text that could not be read.
    unreadable: tuple[UnreadableSample, ...] = ()
    spans: dict[str, dict[str, RoleSpan]] = field(default_factory=dict)  # stage → role → its events' span
    max_events_reached: bool = False  # the read stopped at max_events, not at the high watermarks


def prefilter(correlation_id: str) -> bytes:
    """Bytes every record carrying ``correlation_id`` contains: the id's longest run of characters
    that JSON encoders never escape (b"" for an id without one: then every record is decoded)."""
    runs = _VERBATIM_RUN.findall(correlation_id)
    return max(runs, key=len).encode() if runs else b""


def trace(config: Config, correlation_id: str, timeout_seconds: float = 120.0, max_events: int | None = None,
          on_progress: Callable[[int, int, int], None] | None = None) -> Trace:
    """The correlation id's records; ``max_events``: stop once that many are found. Partitions are
    read side by side, not in time order, so those are the first found, not the earliest written.
    ``on_progress(records read, records to read, events found)`` is called every _BATCH_RECORDS records."""
    started = time.monotonic()
    kafka_timeout = config.kafka.request_timeout_seconds
    roles = config.pipeline_topics  # topic → (stage, role)
    deadline = started + timeout_seconds
    stage_order = [s.name for s in config.stages]
    needle = prefilter(correlation_id)
    events = []
    unreadable: list[UnreadableSample] = []
    unreadable_count = scanned = 0
    with KafkaSession(config.kafka) as kafka:
        # Partitions without a leader for the moment (an election) are asked again until the deadline.
        partitions = partitions_of(kafka.admin, roles, deadline=deadline, request_timeout=kafka_timeout)
        keys = [(topic, p) for topic, ids in partitions.items() for p in ids]
        watermarks = all_watermarks(kafka.admin, keys, deadline=deadline, request_timeout=kafka_timeout)
        records = iter_records(kafka.reader(**_SCAN_SETTINGS), watermarks.low, watermarks.high, deadline=deadline,
                               batch_size=_BATCH_RECORDS)
        to_read = sum(watermarks.high[key] - watermarks.low[key] for key in watermarks.high)
        with contextlib.closing(records):
            for record in records:
                scanned += 1
                if on_progress is not None and scanned % _BATCH_RECORDS == 0:
                    on_progress(scanned, to_read, len(events))
                value = record.value()
                if value is None or needle not in value:
                    continue
                try:
                    event = read_json_object(value)
                except UnreadableRecord as error:
                    unreadable_count += 1
                    if len(unreadable) < MAX_UNREADABLE_LISTED:
                        unreadable.append(UnreadableSample(record.topic(), record.partition(), record.offset(),
                                                           len(value), str(error)))
                    continue
                if correlation_id_of(event) != correlation_id:
                    continue
                stage, role = roles[record.topic()]
                events.append(TracedEvent(record_timestamp_seconds(record), stage.name, role, record.topic(),
                                          record.partition(), record.offset(), event))
                if max_events is not None and len(events) >= max_events:
                    break
        max_events_reached = max_events is not None and len(events) >= max_events
        complete = time.monotonic() < deadline and not max_events_reached
    # Records written in the same millisecond keep the pipeline's order: stage, then role.
    events.sort(key=lambda e: (e.timestamp if e.timestamp is not None else float("inf"),
                               stage_order.index(e.stage), _ROLE_ORDER.index(e.role), e.partition, e.offset))
    summary = {name: dict.fromkeys(ROLE_COUNTS.values(), 0) for name in stage_order}
    for event in events:
        summary[event.stage][ROLE_COUNTS[event.role]] += 1
    return Trace(
        correlation_id=correlation_id,
        events=tuple(events),
        records_scanned=scanned,
        missing_topics=tuple(sorted(set(roles) - set(partitions))),
        unread_partitions=tuple(f"{t}[{p}]" for t, p in sorted(watermarks.errors)),
        complete=complete,
        summary=summary,
        unreadable_count=unreadable_count,
        unreadable=tuple(unreadable),
        spans=_spans(events, stage_order),
        max_events_reached=max_events_reached,
    )


def _spans(events: list[TracedEvent], stage_order: list[str]) -> dict[str, dict[str, RoleSpan]]:
    spans: dict[str, dict[str, RoleSpan]] = {}
    for stage in stage_order:
        for role in _ROLE_ORDER:
            times = [e.timestamp for e in events if e.stage == stage and e.role == role]
            known = [t for t in times if t is not None]
            spans.setdefault(stage, {})[role] = RoleSpan(len(times), min(known, default=None),
                                                         max(known, default=None))
    return spans
