"""Dead letter queues: inspect one stage's DLQ, and replay its dead letters to their original topic.

Replay is exactly-once for consumers that read with ``isolation.level=read_committed``, and only
for them. A dedicated consumer group per stage (``treewatch-dlq-replay-<dlq topic>``) holds, per
DLQ partition, the offset up to which the DLQ has been handled; each batch of republished records
(``records_per_transaction``, 100 by default) and the group's new offsets are committed in one
Kafka transaction. A crash before the commit leaves neither committed: the offsets are unchanged,
so the next run does the batch again, and the batch's records are aborted. Aborted records stay in
the request topic's log: read_committed consumers never see them, but read_uncommitted ones (the
default of most Kafka clients, librdkafka and the Java client included) do, so for them every
record of an aborted batch is a duplicate of its replay in the next run. The pipeline's
consumers must set isolation.level=read_committed for replay to be exactly once; small batches
keep what a crash exposes to the others small (at most one batch). After the commit, both the
records and the offsets are there: a second run starts where the first ended and replays nothing
twice.

The producer's transactional id is fixed per DLQ (the group's name), so a second replay started
while one runs fences the first: the first stops with ReplayFenced at its next transaction, having
lost nothing (what it committed stays, its open batch is aborted and redone by the second).

Which dead letters are handled, per DLQ partition, in offset order from the group's offset:

- matching the filters (``--correlation-id``, ``--error-type``): republished, handled;
- ``--discard-error-type`` types (e.g. FILE_NOT_FOUND, which replaying cannot fix): handled
  without republishing, counted;
- unreadable or malformed (any bytes that are not a readable JSON object: too big, not UTF-8,
  nested too deep, ...; or no ``original_topic``, no ``original_payload``): a dead letter whose
  original payload cannot be read cannot be re-driven; reported with their offsets and reasons and
  handled without republishing, so they do not block the queue;
- anything else stops that partition: the contiguous prefix before it is handled, it and
  everything after it stay for a later run (with other filters). Only a prefix is ever marked
  handled, so no dead letter is passed over without the operator having asked for it.

``--limit`` bounds the records republished in one run; the rest stay for the next run.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from pipeline.config import Config, Stage
from pipeline.events import DeadLetter, parse_dead_letter
from pipeline.kafka import (
    KafkaSession,
    OutgoingRecord,
    Partition,
    iter_records,
    produce_and_confirm,
    read_records,
    record_timestamp_seconds,
    topic_partitions,
)
from pipeline.kafka_errors import DEFAULT_RETRY_SECONDS, all_watermarks, offsets_for_time, partitions_of
from tools import ToolError

REPLAYED_FROM_HEADER = "treewatch-replayed-from"
# Dead letters handled per transaction by default: what a crash inside a transaction leaves as
# aborted records (seen as duplicates by read_uncommitted consumers) and makes the next run redo.
RECORDS_PER_TRANSACTION = 100
# Bytes of dead letters read per transaction at most, whatever their number: huge dead letters
# must not make one batch hold gigabytes.
MAX_BYTES_PER_TRANSACTION = 16 * 1024 * 1024
# What the operator must know about the records a replay writes.
ISOLATION_NOTE = ("exactly once only for consumers with isolation.level=read_committed: a replay killed inside a "
                  "transaction leaves that transaction's records aborted in the topic, which read_uncommitted "
                  "consumers (the default of most Kafka clients) read as duplicates; the pipeline's consumers "
                  "must set isolation.level=read_committed")
# Right after a commit the coordinator is still writing the transaction's markers and answers the
# next transaction's first requests with CONCURRENT_TRANSACTIONS; librdkafka retries after
# retry.backoff.ms, growing to retry.backoff.max.ms (100 ms and 1 s by default), which made small
# transactions wait longer for that than for everything else. (The Java producer retries
# AddPartitionsToTxn after 20 ms in this case, for the same reason.)
_TRANSACTIONAL_SETTINGS = {"retry.backoff.ms": 10, "retry.backoff.max.ms": 100}
# Each transaction's batch is read with an assignment of its own; a fetch left waiting at the end
# of the DLQ (a long poll: fetch.wait.max.ms, 500 ms by default) holds up the next assignment's
# first fetch until it returns, once per transaction.
_READ_SETTINGS = {"fetch.wait.max.ms": 10}
# A group coordinator moving or loading; asked again every _COORDINATOR_RETRY_SECONDS.
_COORDINATOR_NOT_READY = frozenset({KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                                    KafkaError.COORDINATOR_NOT_AVAILABLE})
_COORDINATOR_RETRY_SECONDS = 0.2
# The errors a transactional producer gets once a newer one with its transactional id started.
_FENCING_ERRORS = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})


class DlqToolError(ToolError):
    """A request the tool cannot carry out, phrased for the operator."""


class ReplayFenced(DlqToolError):
    """Another replay of the same DLQ started (same transactional id) and fenced this one."""


def replay_group(stage: Stage) -> str:
    """The replay's consumer group and transactional id: named after the DLQ topic, so two
    environments (dev., prod.) sharing a cluster never share or fence each other's replay."""
    return f"treewatch-dlq-replay-{stage.dlq_topic}"


def _malformed_reason(letter: DeadLetter) -> str | None:
    if letter.unreadable is not None:
        return letter.unreadable
    if not letter.original_topic:
        return "no original_topic"
    if letter.original_payload is None:
        return "no original_payload"
    return None


def _dlq_partitions(kafka: KafkaSession, stage: Stage) -> tuple[list[Partition], Any]:
    timeout = kafka.settings.request_timeout_seconds
    deadline = time.monotonic() + DEFAULT_RETRY_SECONDS  # a leader election is waited out, not fatal
    admin = kafka.admin
    partitions = partitions_of(admin, [stage.dlq_topic], deadline=deadline,
                               request_timeout=timeout).get(stage.dlq_topic)
    if not partitions:
        raise DlqToolError(f"DLQ topic {stage.dlq_topic!r} of stage {stage.name!r} does not exist")
    keys = [(stage.dlq_topic, p) for p in partitions]
    watermarks = all_watermarks(admin, keys, deadline=deadline, request_timeout=timeout)
    if watermarks.errors:
        raise DlqToolError(f"cannot read the offsets of {stage.dlq_topic}: "
                           f"{next(iter(watermarks.errors.values()))}")
    return keys, watermarks


# -- inspect ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DlqSample:
    partition: int
    offset: int
    timestamp: float | None
    error_type: str
    correlation_id: str | None
    error_message: str | None
    original_topic: str | None
    size: int  # bytes of the record value
    unreadable: str | None = None  # why the record could not be read at all


@dataclass(frozen=True)
class DlqInspection:
    stage: str
    topic: str
    retained: int  # high watermark − log start over all partitions
    read: int
    by_error_type: dict[str, int]  # of the dead letters read (only error_type's, when given)
    malformed: int
    samples: tuple[DlqSample, ...]
    complete: bool
    error_type: str | None = None  # the filter: only dead letters of this error type are counted
    since: float | None = None  # the filter: only dead letters written at or after (seconds since the epoch)
    in_range: int = 0  # offsets from the first dead letter at or after ``since`` (the log start without) to the end

    @property
    def matched(self) -> int:
        return sum(self.by_error_type.values())


def inspect_dlq(config: Config, stage_name: str, limit: int | None = None, samples_per_type: int = 3,
                timeout_seconds: float = 120.0, *, error_type: str | None = None,
                since: datetime | None = None) -> DlqInspection:
    """Counts by error type of the retained dead letters (the first ``limit`` read if given), a few
    samples of each type; malformed ones are counted under their own type ("unparseable") and in
    ``malformed``. ``error_type``: only that type is counted and sampled (the others are read, to
    get past them, and left out). ``since``: each partition is read from its first dead letter
    written at or after that time, found by Kafka's time index (ListOffsets by timestamp), so older
    ones are never fetched."""
    stage = config.stage(stage_name)
    counts: Counter[str] = Counter()
    samples: list[DlqSample] = []
    malformed = read = 0
    with KafkaSession(config.kafka) as kafka:
        keys, watermarks = _dlq_partitions(kafka, stage)
        deadline = time.monotonic() + timeout_seconds
        starts = dict(watermarks.low)
        if since is not None:
            at_time = offsets_for_time(kafka.admin, keys, int(since.timestamp() * 1000), deadline=deadline,
                                       request_timeout=config.kafka.request_timeout_seconds)
            # -1: no dead letter that recent in the partition; nothing of it is read.
            starts = {key: watermarks.high[key] if at_time[key] < 0 else at_time[key] for key in keys}
        records = iter_records(kafka.reader(), starts, watermarks.high, deadline=deadline)
        with contextlib.closing(records):
            for record in records:
                if limit is not None and read >= limit:
                    break
                read += 1
                letter = parse_dead_letter(record.value())
                if error_type is not None and letter.error_type != error_type:
                    continue
                counts[letter.error_type] += 1
                malformed += _malformed_reason(letter) is not None
                if counts[letter.error_type] <= samples_per_type:
                    samples.append(DlqSample(record.partition(), record.offset(), record_timestamp_seconds(record),
                                             letter.error_type, letter.correlation_id, letter.error_message,
                                             letter.original_topic, len(record), letter.unreadable))
    retained = sum(watermarks.high[k] - watermarks.low[k] for k in keys)
    complete = (limit is not None and read >= limit) or time.monotonic() < deadline
    return DlqInspection(stage.name, stage.dlq_topic, retained, read, dict(counts.most_common()), malformed,
                         tuple(samples), complete, error_type, None if since is None else since.timestamp(),
                         sum(watermarks.high[k] - starts[k] for k in keys))


# -- replay ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayFilter:
    correlation_id: str | None = None
    error_type: str | None = None
    discard_error_types: frozenset[str] = frozenset()

    def matches(self, letter: DeadLetter) -> bool:
        return ((self.correlation_id is None or letter.correlation_id == self.correlation_id)
                and (self.error_type is None or letter.error_type == self.error_type))


@dataclass(frozen=True)
class Skipped:
    partition: int
    offset: int
    reason: str


@dataclass
class ReplayReport:
    stage: str
    dlq_topic: str
    group: str
    dry_run: bool
    replayed: Counter = field(default_factory=Counter)  # original topic → records republished
    discarded: Counter = field(default_factory=Counter)  # error type → records handled unreplayed
    malformed: list[Skipped] = field(default_factory=list)
    stopped: list[Skipped] = field(default_factory=list)  # first record left, per partition
    limit_reached: bool = False
    start: dict[int, int] = field(default_factory=dict)  # partition → offset the run started at
    end: dict[int, int] = field(default_factory=dict)  # partition → offset handled up to (exclusive)
    high_watermark: dict[int, int] = field(default_factory=dict)
    records_per_transaction: int = RECORDS_PER_TRANSACTION
    transactions: int = 0  # transactions committed
    held: ClassVar[str] = "this DLQ"  # what a replay that fences this one takes over, for ReplayFenced

    @property
    def replayed_total(self) -> int:
        return sum(self.replayed.values())

    @property
    def left(self) -> int:
        """Offsets between where this run stopped and the high watermark it read up to."""
        return sum(max(0, self.high_watermark[p] - self.end.get(p, self.start[p])) for p in self.high_watermark)


@dataclass(frozen=True)
class _Decision:
    record: Message
    action: str  # replay | discard | malformed | stop
    letter: DeadLetter
    reason: str = ""


def replay_dlq(config: Config, stage_name: str, replay_filter: ReplayFilter, *, limit: int | None = None,
               dry_run: bool, records_per_transaction: int = RECORDS_PER_TRANSACTION,
               timeout_seconds: float = 300.0, on_progress: Callable[[ReplayReport], None] | None = None
               ) -> ReplayReport:
    """Republish the stage's matching dead letters once (see the module's docstring for the rules),
    at most ``records_per_transaction`` dead letters handled per transaction; ``dry_run`` decides
    the same way and changes nothing. ReplayFenced when another replay of the DLQ took over.
    ``on_progress`` is given the report so far after each transaction (each batch, in a dry run)."""
    stage = config.stage(stage_name)
    with KafkaSession(config.kafka) as kafka:
        return _replay(kafka, config, stage, replay_filter, limit=limit, dry_run=dry_run,
                       records_per_transaction=records_per_transaction, timeout_seconds=timeout_seconds,
                       on_progress=on_progress)


def _replay(kafka: KafkaSession, config: Config, stage: Stage, replay_filter: ReplayFilter, *, limit: int | None,
            dry_run: bool, records_per_transaction: int, timeout_seconds: float,
            on_progress: Callable[[ReplayReport], None] | None) -> ReplayReport:
    group = replay_group(stage)
    keys, watermarks = _dlq_partitions(kafka, stage)
    timeout = config.kafka.request_timeout_seconds
    # Only a request topic may receive a replay: republishing into a completed, failed or dead
    # letter topic would forge a stage's outcome instead of asking the stage again.
    request_topics = [s.request_topic for s in config.stages]
    existing_topics = set(topic_partitions(kafka.admin, request_topics, timeout))
    report = ReplayReport(stage.name, stage.dlq_topic, group, dry_run, records_per_transaction=records_per_transaction)
    deadline = time.monotonic() + timeout_seconds
    consumer, txn_producer = replay_clients(kafka, report, dry_run=dry_run, timeout=timeout)
    positions = replay_positions(consumer, keys, watermarks.low, timeout)
    report.start = {p: positions[(t, p)] for t, p in keys}
    report.high_watermark = {p: watermarks.high[(t, p)] for t, p in keys}
    open_partitions = {key for key in keys if positions[key] < watermarks.high[key]}
    while open_partitions and not report.limit_reached:
        if time.monotonic() >= deadline:
            raise DlqToolError(f"replay took longer than {timeout_seconds:g}s; what was committed stays "
                               f"replayed, run again to continue")
        batch = read_records(consumer, {k: positions[k] for k in open_partitions}, watermarks.high,
                             deadline=deadline, max_records=records_per_transaction,
                             max_bytes=MAX_BYTES_PER_TRANSACTION)
        decisions = _decide(batch, replay_filter, existing_topics, open_partitions, report, limit)
        if not decisions:
            break
        advanced = _handled_positions(decisions)
        if txn_producer is not None:
            with fencing_reported(txn_producer, report, timeout):
                _commit_batch(txn_producer, consumer, decisions, advanced, existing_topics, timeout)
            report.transactions += 1
        positions.update(advanced)
        _record(report, decisions)
        if on_progress is not None:
            on_progress(report)
        stopped = {(d.record.topic(), d.record.partition()) for d in decisions if d.action == "stop"}
        open_partitions = {k for k in open_partitions - stopped if positions[k] < watermarks.high[k]}
    report.end = {p: positions[(t, p)] for t, p in keys}
    return report


class ReplayProgress(Protocol):
    """What fencing_reported tells of a replay: its group (and transactional id), what it holds, what it
    republished so far."""

    group: str
    held: ClassVar[str]

    @property
    def replayed_total(self) -> int: ...


def replay_clients(kafka: KafkaSession, report: ReplayProgress, *, dry_run: bool,
                   timeout: float) -> tuple[Consumer, Producer | None]:
    """The replay group's read_committed consumer and, unless ``dry_run``, its transactional producer
    (transactional id: the group), started."""
    consumer = kafka.reader(**{"group.id": report.group, "isolation.level": "read_committed", **_READ_SETTINGS})
    txn_producer: Producer | None = None
    if not dry_run:
        # First: starting the transactional producer fences a replay still running and aborts
        # the open transaction of one that crashed, whose pending offsets would otherwise
        # keep the group's committed offsets from being read.
        txn_producer = kafka.producer(**{"transactional.id": report.group, **_TRANSACTIONAL_SETTINGS})
        with fencing_reported(txn_producer, report, timeout):
            txn_producer.init_transactions(timeout)
    return consumer, txn_producer


@contextlib.contextmanager
def fencing_reported(txn_producer: Producer, report: ReplayProgress, timeout: float) -> Iterator[None]:
    """ReplayFenced instead of the Kafka error when another replay's producer fenced this one.

    librdkafka names the fencing (_FENCED, or the broker's PRODUCER_FENCED / INVALID_PRODUCER_EPOCH)
    only in the call that met it: a call after that, produce() above all, fails with a bare _FATAL,
    and a broker has answered a fenced EndTxn with UNKNOWN. A fenced producer answers any
    transactional call with its fatal error, so an abort (which cannot change anything a fenced
    producer did, and undoes the batch of one that is not) tells which it is.
    """
    try:
        yield
    except KafkaException as error:
        cause = _kafka_error(error)
        if cause is None or cause.code() not in _FENCING_ERRORS:
            try:
                txn_producer.abort_transaction(timeout)
            except KafkaException as underlying:
                cause = _kafka_error(underlying) or cause
        if cause is None or cause.code() not in _FENCING_ERRORS:
            raise
        raise ReplayFenced(
            f"another replay holds {report.held} (transactional id {report.group}): it started after this one "
            f"and fenced it. This run stopped after republishing {report.replayed_total} record(s), which stay "
            f"committed; its open transaction was aborted and the other replay handles the rest "
            f"({cause.str()})") from error


def _kafka_error(error: KafkaException) -> KafkaError | None:
    return error.args[0] if error.args and isinstance(error.args[0], KafkaError) else None


def replay_positions(consumer: Consumer, keys: list[Partition], log_start: dict[Partition, int],
                      timeout: float) -> dict[Partition, int]:
    """Where the replay group is in each DLQ partition: its committed offset, or the log start when it
    has none or retention removed the records since.

    A group coordinator that is moving or still loading its offsets (a new cluster, a broker that
    just restarted) answers NOT_COORDINATOR and the like, which librdkafka hands back instead of
    asking again: asked again until the request timeout is spent."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            committed = consumer.committed([TopicPartition(t, p) for t, p in keys],
                                           timeout=max(0.1, deadline - time.monotonic()))
            break
        except KafkaException as error:
            cause = _kafka_error(error)
            if cause is not None and cause.code() in _COORDINATOR_NOT_READY and time.monotonic() < deadline:
                time.sleep(_COORDINATOR_RETRY_SECONDS)
                continue
            raise DlqToolError(f"cannot read the replay group's offsets ({error.args[0].str()}): a replay "
                               f"transaction may still be open (another replay running, or one that crashed; "
                               f"a run with --execute aborts a crashed one)") from error
    positions = {}
    for tp in committed:
        if tp.error is not None:
            raise KafkaException(tp.error)
        key = (tp.topic, tp.partition)
        positions[key] = max(tp.offset, log_start[key]) if tp.offset >= 0 else log_start[key]
    return positions


def _decide(batch: list[Message], replay_filter: ReplayFilter, existing_topics: set[str],
            open_partitions: set[Partition], report: ReplayReport, limit: int | None) -> list[_Decision]:
    """The batch's records up to each partition's first stop, and up to the limit of replays."""
    decisions: list[_Decision] = []
    replays = report.replayed_total
    for record in batch:
        key = (record.topic(), record.partition())
        if key not in open_partitions:
            continue  # this partition stopped earlier in the batch
        letter = parse_dead_letter(record.value())
        reason = _malformed_reason(letter)
        if reason is not None:
            decisions.append(_Decision(record, "malformed", letter, reason))
        elif letter.error_type in replay_filter.discard_error_types:
            decisions.append(_Decision(record, "discard", letter))
        elif not replay_filter.matches(letter):
            decisions.append(_Decision(record, "stop", letter, f"{letter.error_type} "
                                       f"(correlation id {letter.correlation_id}) does not match the filters"))
            open_partitions = open_partitions - {key}
        elif letter.original_topic not in existing_topics:
            decisions.append(_Decision(record, "stop", letter, f"original topic {letter.original_topic!r} is not "
                                       f"an existing request topic of the configured stages"))
            open_partitions = open_partitions - {key}
        elif limit is not None and replays >= limit:
            report.limit_reached = True
            break
        else:
            decisions.append(_Decision(record, "replay", letter))
            replays += 1
    return decisions


def _handled_positions(decisions: list[_Decision]) -> dict[Partition, int]:
    """Per partition, the offset after the last handled record (a stop is not handled)."""
    return {(d.record.topic(), d.record.partition()): d.record.offset() + 1
            for d in decisions if d.action != "stop"}


def _commit_batch(txn_producer: Producer, consumer: Consumer, decisions: list[_Decision],
                  advanced: dict[Partition, int], request_topics: set[str], timeout: float) -> None:
    # A dead letter keeps its request's key, so the replay lands where the request was.
    replays = [OutgoingRecord(d.letter.original_topic, _encode(d.letter.original_payload), d.record.key(),
                              (replayed_from(d.record),))
               for d in decisions if d.action == "replay"]
    commit_batch(txn_producer, consumer, replays, advanced, request_topics, timeout)


def replayed_from(source: Message) -> tuple[str, bytes]:
    """The header a replayed record carries: where it was replayed from (topic/partition/offset)."""
    return REPLAYED_FROM_HEADER, f"{source.topic()}/{source.partition()}/{source.offset()}".encode()


def commit_batch(txn_producer: Producer, consumer: Consumer, replays: list[OutgoingRecord],
                 advanced: dict[Partition, int], request_topics: set[str], timeout: float) -> None:
    """``replays`` and the replay group's ``advanced`` offsets in one transaction: both or neither.
    ``request_topics``: the existing request topics every replay goes to, checked when the replay started."""
    txn_producer.begin_transaction()
    try:
        # _decide lets through only request topics found when the replay started: not looked up again.
        produce_and_confirm(txn_producer, replays, deadline=time.monotonic() + timeout, known_topics=request_topics)
        if advanced:
            offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in advanced.items()]
            txn_producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), timeout)
        txn_producer.commit_transaction(timeout)
    except BaseException:
        # Neither the records nor the offsets of this batch become visible; the next run redoes it.
        # An abort that fails too (a fenced producer) changes nothing: the coordinator aborts an
        # unfinished transaction itself, at its timeout or when the next run's producer starts.
        with contextlib.suppress(KafkaException):
            txn_producer.abort_transaction(timeout)
        raise


def _encode(payload: Any) -> bytes:
    """The original event's bytes: a payload kept as a JSON string is sent as that string's text."""
    return payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()


def _record(report: ReplayReport, decisions: list[_Decision]) -> None:
    for decision in decisions:
        record = decision.record
        if decision.action == "replay":
            report.replayed[decision.letter.original_topic] += 1
        elif decision.action == "discard":
            report.discarded[decision.letter.error_type] += 1
        elif decision.action == "malformed":
            report.malformed.append(Skipped(record.partition(), record.offset(), decision.reason))
        else:
            report.stopped.append(Skipped(record.partition(), record.offset(), decision.reason))
