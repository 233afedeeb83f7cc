"""Replay pipeline events of one correlation id (or project) as the next stage's requests: the
guide's ``replay_events.py`` (Issue 3, "Missing files in search results"), e.g. the
``stamping.generate-completed`` events of a project republished as ``tree.index`` requests so the
index stage works on them again.

What may be replayed into a stage's request topic, and only there (republishing into a completed,
failed or dead letter topic would forge a stage's outcome instead of asking the stage again):
the completed events of the stage before it (each becomes a request built by
pipeline.events.stage_request from the event's payload, as the stages themselves build it), or
the stage's own requests, sent again. The first stage's completed event counts files without naming
them, so it is never a source. No topic is ever created: a request topic that does not exist is
refused before anything is read.

The scan is bounded (tools.event_scan: from --since or the log start to the high watermarks taken
at the start). Exactly once is dlq replay's machinery (tools.dlq): a consumer group and
transactional id per replay (``treewatch-replay-<source topic>-<target topic>-<selection>``) whose
committed offsets say how far the source topic was handled; each batch of requests and the group's
offsets are committed in one transaction, so a run killed midway is resumed by the next without
sending anything twice (for read_committed consumers, see tools.dlq.ISOLATION_NOTE), and a second
replay of the same selection started meanwhile fences the first. ``rerun`` starts again from the
range's start, for a replay whose files failed again after an earlier run.

``only_missing``: files that the target stage completed or dead-lettered within the range are not
sent (dead letters are ``dlq replay``'s to re-drive), so re-driving a project's stragglers does not
index its other files again. Records that are not readable JSON objects, events of other
selections and events without the fields a request needs are passed over and counted.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from confluent_kafka import Message

from pipeline.config import Config, Stage
from pipeline.events import payload_of, stage_request
from pipeline.kafka import KafkaSession, OutgoingRecord, Partition, read_records, topic_partitions
from tools import ToolError
from tools.dlq import (
    MAX_BYTES_PER_TRANSACTION,
    RECORDS_PER_TRANSACTION,
    commit_batch,
    fencing_reported,
    replay_clients,
    replay_positions,
    replayed_from,
)
from tools.event_scan import EventSelector, Unreadable, read_event, scan_range
from tools.reconcile import scan_trails, stage_topics

SOURCE = "treewatch-replay"
# Requests listed in a report (all of them are counted).
SAMPLES = 20


class ReplayRefused(ToolError):
    """A replay that is not one: an unknown topic, a source that is not the target's input, a target
    that is not a request topic."""


@dataclass(frozen=True)
class ReplaySample:
    partition: int  # of the source record
    offset: int
    file_path: str | None
    request: dict[str, Any]


@dataclass
class EventReplayReport:
    from_topic: str
    to_stage: str
    to_topic: str
    selector: str
    group: str
    dry_run: bool
    replayed: int = 0  # requests published (a dry run: that would be)
    samples: list[ReplaySample] = field(default_factory=list)
    skipped_done: int = 0  # only_missing: files the target stage already completed or dead-lettered
    not_requests: int = 0  # selected events without the fields the target stage's request needs
    other_events: int = 0  # readable events of other selections, passed over
    unreadable: Unreadable = field(default_factory=Unreadable)
    start: dict[int, int] = field(default_factory=dict)  # partition → where this run started
    end: dict[int, int] = field(default_factory=dict)  # partition → handled up to (exclusive)
    range_start: dict[int, int] = field(default_factory=dict)  # partition → the range's start (--since)
    high_watermark: dict[int, int] = field(default_factory=dict)  # partition → the range's end
    records_per_transaction: int = RECORDS_PER_TRANSACTION
    transactions: int = 0
    held: ClassVar[str] = "this event replay"

    @property
    def replayed_total(self) -> int:
        return self.replayed

    @property
    def handled_before(self) -> int:
        """Offsets of the range an earlier run of this replay had already handled."""
        return sum(self.start[p] - self.range_start[p] for p in self.start)

    @property
    def left(self) -> int:
        return sum(max(0, self.high_watermark[p] - self.end.get(p, self.start[p])) for p in self.high_watermark)


def replay_group(from_topic: str, to_topic: str, selector: EventSelector) -> str:
    """The replay's consumer group and transactional id: one per source, target and selection, so two
    replays of different projects run side by side and two of the same one fence each other."""
    what = f"correlation-{selector.correlation_id}" if selector.correlation_id is not None \
        else f"project-{selector.project}"
    return f"treewatch-replay-{from_topic}-{to_topic}-{what}"


def target_stage(config: Config, *, stage_name: str | None = None, topic: str | None = None) -> Stage:
    """The stage a replay asks again, named by its name or by its request topic; any other topic
    (completed, failed, dead letter, unknown) is refused."""
    if stage_name is not None:
        try:
            return config.stage(stage_name)
        except KeyError:
            raise ReplayRefused(f"no stage {stage_name!r}; the configured stages are "
                                f"{', '.join(s.name for s in config.stages)}") from None
    for stage in config.stages:
        if stage.request_topic == topic:
            return stage
    role = config.pipeline_topics.get(str(topic))
    if role is not None:
        raise ReplayRefused(f"{topic} is the {role[1]} topic of stage {role[0].name}: a replay only publishes into "
                            f"a stage's request topic (it asks the stage again; it never forges an outcome)")
    raise ReplayRefused(f"{topic!r} is not a request topic of the configured stages; they are "
                        f"{', '.join(s.request_topic for s in config.stages)}")


def check_source(config: Config, from_topic: str, target: Stage) -> None:
    """A source the target stage's requests are made of: the completed topic of the stage before it
    (not the first: its completed event names no files), or the target's own request topic."""
    stages = list(config.stages)
    index = stages.index(target)
    if index == 0:
        raise ReplayRefused(f"stage {target.name} works on projects, not files: a project is discovered again by "
                            f"a new discovery request (treewatch reindex)")
    allowed = [target.request_topic]
    if index >= 2:
        allowed.insert(0, stages[index - 1].completed_topic)
    if from_topic in allowed:
        return
    role = config.pipeline_topics.get(from_topic)
    what = f"the {role[1]} topic of stage {role[0].name}" if role is not None \
        else "not a topic of the configured stages"
    raise ReplayRefused(f"{from_topic} ({what}) does not make requests of stage {target.name}; replay from "
                        f"{' or '.join(allowed)}"
                        + (" (the first stage's completed event counts files, it does not name them)"
                           if index == 1 else ""))


def replay_events(config: Config, from_topic: str, target: Stage, selector: EventSelector, *, dry_run: bool,
                  since: float | None = None, only_missing: bool = False, rerun: bool = False,
                  rate: float | None = None, records_per_transaction: int = RECORDS_PER_TRANSACTION,
                  timeout_seconds: float = 300.0) -> EventReplayReport:
    """Republish the selected events of ``from_topic`` as requests of ``target`` (see the module
    docstring); ``dry_run`` decides the same way and publishes nothing. ``rate``: requests per second
    at most. ReplayRefused before anything is read for a replay that is not one; tools.dlq.ReplayFenced
    when another replay of the same selection took over."""
    check_source(config, from_topic, target)
    deadline = time.monotonic() + timeout_seconds
    timeout = config.kafka.request_timeout_seconds
    if rate is not None:
        # A transaction is not held open for longer than about a second to keep to the rate.
        records_per_transaction = min(records_per_transaction, max(1, math.floor(rate)))
    group = replay_group(from_topic, target.request_topic, selector)
    report = EventReplayReport(from_topic, target.name, target.request_topic, str(selector), group, dry_run,
                               records_per_transaction=records_per_transaction)
    with KafkaSession(config.kafka) as kafka:
        existing = topic_partitions(kafka.admin, [from_topic, target.request_topic], timeout)
        for topic in (target.request_topic, from_topic):
            if topic not in existing:
                raise ReplayRefused(f"topic {topic} does not exist: nothing replayed, and a replay creates no topic")
        done: set[str] = set()
        if only_missing:
            trails, *_ = scan_trails(kafka, selector, stage_topics([target], ("completed", "dlq")), since, deadline)
            done = trails.completed[target.name] | set(trails.dead_lettered[target.name])
        scan = scan_range(kafka, [from_topic], since, deadline)
        consumer, txn_producer = replay_clients(kafka, report, dry_run=dry_run, timeout=timeout)
        positions = dict(scan.starts) if rerun else replay_positions(consumer, scan.partitions, scan.starts, timeout)
        report.range_start = {p: scan.starts[(t, p)] for t, p in scan.partitions}
        report.start = {p: positions[(t, p)] for t, p in scan.partitions}
        report.high_watermark = {p: scan.ends[(t, p)] for t, p in scan.partitions}
        open_partitions = {key for key in scan.partitions if positions[key] < scan.ends[key]}
        started = time.monotonic()
        while open_partitions:
            if time.monotonic() >= deadline:
                raise ToolError(f"replay took longer than {timeout_seconds:g}s; what was committed stays replayed, "
                                f"run again to continue")
            drained: set[Partition] = set()
            batch = read_records(consumer, {k: positions[k] for k in open_partitions}, scan.ends, deadline=deadline,
                                 max_records=records_per_transaction, max_bytes=MAX_BYTES_PER_TRANSACTION,
                                 drained=drained)
            requests = [_request(record, target, selector, done, report) for record in batch]
            replays = [r for r in requests if r is not None]
            advanced = {(r.topic(), r.partition()): r.offset() + 1 for r in batch}
            advanced.update({key: scan.ends[key] for key in drained})
            if not advanced:
                break  # nothing more arrived before the deadline
            if txn_producer is not None:
                if rate is not None:
                    _keep_to_rate(started, report.replayed, len(replays), rate)
                with fencing_reported(txn_producer, report, timeout):
                    commit_batch(txn_producer, consumer, replays, advanced, {target.request_topic}, timeout)
                report.transactions += 1
            report.replayed += len(replays)
            positions.update(advanced)
            open_partitions = {k for k in open_partitions if positions[k] < scan.ends[k]}
        report.end = {p: positions[(t, p)] for t, p in scan.partitions}
    return report


def _request(record: Message, target: Stage, selector: EventSelector, done: set[str],
             report: EventReplayReport) -> OutgoingRecord | None:
    """The target stage's request for one source record, or None (counted in the report) when it
    makes none."""
    event = read_event(record, report.unreadable)
    if event is None:
        return None
    if not selector.matches(event):
        report.other_events += 1
        return None
    payload = payload_of(event)
    required = ("correlation_id", "file_path")
    if any(not isinstance(payload.get(name), str) or not payload[name] for name in required):
        report.not_requests += 1
        return None
    if payload["file_path"] in done:
        report.skipped_done += 1
        return None
    request = stage_request(target.name, payload, source=SOURCE)
    if len(report.samples) < SAMPLES:
        report.samples.append(ReplaySample(record.partition(), record.offset(), payload["file_path"], request))
    # The source's key (the file, as the stages key it) keeps the request on the partition it was on.
    key = record.key() or payload["file_path"].encode()
    return OutgoingRecord(target.request_topic, json.dumps(request).encode(), key, (replayed_from(record),))


def _keep_to_rate(started: float, sent: int, sending: int, rate: float) -> None:
    """Wait until ``sent + sending`` requests are within ``rate`` per second since ``started``."""
    wait = started + (sent + sending) / rate - time.monotonic()
    if wait > 0:
        time.sleep(wait)
