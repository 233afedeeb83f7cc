"""Follow one correlation id through the pipeline: every record of every stage topic (request,
completed, failed, dead letter) that carries it, in time order, with where it sits in Kafka.

The read is bounded: each partition from its log start to the high watermark taken when the
trace starts, with assign() and no consumer group, so it commits nothing and ends even while the
pipeline keeps writing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pipeline.config import Config
from pipeline.events import correlation_id as correlation_id_of
from pipeline.events import decode_json_object
from pipeline.kafka import (
    admin_client,
    fetch_watermarks,
    iter_records,
    reader,
    record_timestamp_seconds,
    topic_partitions,
)

# A stage topic's role → the summary column it counts in.
ROLE_COUNTS = {"request": "requested", "completed": "completed", "failed": "failed", "dlq": "dead_lettered"}
_ROLE_ORDER = list(ROLE_COUNTS)


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
class Trace:
    correlation_id: str
    events: tuple[TracedEvent, ...]
    records_scanned: int
    missing_topics: tuple[str, ...]  # stage topics that do not exist
    unread_partitions: tuple[str, ...]  # partitions whose offsets could not be read
    complete: bool  # False when the time limit ended the read before every high watermark
    summary: dict[str, dict[str, int]] = field(default_factory=dict)  # stage → count name → count


def trace(config: Config, correlation_id: str, timeout_seconds: float = 120.0) -> Trace:
    started = time.monotonic()
    kafka_timeout = config.kafka.request_timeout_seconds
    admin = admin_client(config.kafka)
    roles = config.pipeline_topics  # topic → (stage, role)
    partitions = topic_partitions(admin, roles, kafka_timeout)
    keys = [(topic, p) for topic, ids in partitions.items() for p in ids]
    watermarks = fetch_watermarks(admin, keys, kafka_timeout)
    stage_order = [s.name for s in config.stages]
    deadline = started + timeout_seconds
    events = []
    scanned = 0
    consumer = reader(config.kafka)
    try:
        for record in iter_records(consumer, watermarks.low, watermarks.high, deadline=deadline):
            scanned += 1
            if correlation_id_of(record.value()) != correlation_id:
                continue
            stage, role = roles[record.topic()]
            events.append(TracedEvent(record_timestamp_seconds(record), stage.name, role, record.topic(),
                                      record.partition(), record.offset(), decode_json_object(record.value())))
        complete = time.monotonic() < deadline
    finally:
        consumer.close()
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
    )
