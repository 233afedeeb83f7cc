"""Follow one request through the pipeline's stages: publish a discovery request and follow its
correlation id while the stages work on it (``treewatch bench`` and ``treewatch reindex``).

The stages are the configuration's, in its order: the first receives the discovery request and
reports how many files it found (``files_discovered`` of its completed event); every later stage
works on files, each one's completions being the next one's requests; a file is finished when the
last stage completes it (with the built-in stages, when it is indexed).

``RequestFollower.start()`` takes the high watermark of every stage's completed, failed and dead
letter topic *before* the request is published, and reads on from there as records arrive: one
consumer, assigned once, remembering its position, so each record is read once however long the
wait (the guide's scripts re-read whole topics every few seconds). It counts the records that
carry the correlation id:

- discovered: ``files_discovered`` of the first stage's completed event;
- completed, per later stage: files with a completed event of that stage;
- failed and dead-lettered: failed events and dead letters per stage;
- finished files: completed by the last stage, or failed or dead-lettered in a stage after the
  first, each file once.

The run is complete when the finished files reach the discovered count, or at once when discovery
itself failed. Files are told apart by their ``file_path``, so a record the pipeline writes twice
(at-least-once delivery) is not a second file.

Everything happens before one deadline, the tool's --timeout: errors that pass by themselves (a
leader election after a broker failed, a coordinator loading) are asked again until then, and the
request is given until then to be written, however long the election takes.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from pipeline.config import Config
from pipeline.events import correlation_id as record_correlation_id
from pipeline.events import decode_json_object, parse_dead_letter, payload_of
from pipeline.kafka import (
    KafkaSession,
    OutgoingRecord,
    Partition,
    fetch_committed_offsets,
    kafka_session,
    produce_and_confirm,
    record_timestamp_seconds,
)
from pipeline.kafka_errors import DEFAULT_RETRY_SECONDS, RetriesExhausted, all_watermarks, error_text, partitions_of
from tools import ToolError

log = logging.getLogger("treewatch.request_journey")

FOLLOWED_ROLES = ("completed", "failed", "dlq")
# How long one read waits for new records: the only pause while following.
POLL_SECONDS = 0.5
# After completion, how long to wait at most for the stages to commit what they were working on
# (see RequestFollower.settle).
SETTLE_SECONDS = 15.0


@dataclass(frozen=True)
class Progress:
    correlation_id: str
    discovered: int | None  # None until discovery (the first stage) has reported
    discovery_failed: bool
    # Every stage after the first, in the pipeline's order → files it completed; the last one's are
    # the finished files.
    completed: dict[str, int]
    failed_files: int  # files that failed or were dead-lettered after discovery, each once
    failed: dict[str, int]  # every stage, in the pipeline's order → failed events
    dead_lettered: dict[str, int]  # every stage, in the pipeline's order → dead letters
    unreadable: int  # records of this correlation id without the fields counted here
    records_read: int  # every record read while following, whatever its correlation id

    @property
    def finished(self) -> int:
        """Files the last stage completed."""
        return list(self.completed.values())[-1] if self.completed else 0

    @property
    def finished_files(self) -> int:
        return self.finished + self.failed_files

    @property
    def done(self) -> bool:
        return self.discovery_failed or (self.discovered is not None and self.finished_files >= self.discovered)

    @property
    def waiting_on(self) -> str | None:
        """The first stage that has not produced an outcome for every file yet."""
        if self.done:
            return None
        if self.discovered is None:
            return self.first_stage
        for stage, files in self.completed.items():
            if files + self.failed_files < self.discovered:
                return stage
        return list(self.completed)[-1]

    @property
    def first_stage(self) -> str:
        """The stage discovery requests go to: the first of every stage's (``failed`` has them all)."""
        return next(iter(self.failed))

    @property
    def dead_lettered_total(self) -> int:
        return sum(self.dead_lettered.values())

    @property
    def percent_indexed(self) -> float | None:
        """Finished files as a share of the discovered ones (the guide's "indexed")."""
        if self.discovered is None:
            return None
        return 100.0 if self.discovered == 0 else 100.0 * self.finished / self.discovered


def file_path_of(message: Message, role: str) -> str | None:
    """The file a record of a stage's topic (``role``: request, completed, failed, dlq) is about."""
    if role == "dlq":
        original = parse_dead_letter(message.value()).original_payload
        payload = payload_of(original if isinstance(original, dict) else None)
    else:
        payload = payload_of(decode_json_object(message.value()))
    path = payload.get("file_path")
    return path if isinstance(path, str) and path else None


class RequestFollower:
    """``with RequestFollower(config, cid, deadline) as follower:`` start() before publishing, then wait()."""

    def __init__(self, config: Config, correlation_id: str, deadline: float | None = None) -> None:
        self.config = config
        self.correlation_id = correlation_id
        # Until when (time.monotonic()) start() asks again for partitions that have no leader yet.
        self.deadline = deadline
        self._roles = {topic: (stage.name, role) for topic, (stage, role) in config.pipeline_topics.items()
                       if role in FOLLOWED_ROLES}
        self._stages = tuple(stage.name for stage in config.stages)
        self._first, self._last = config.stages[0], config.stages[-1]
        self.kafka: KafkaSession | None = None  # the follower's clients, from start() to close()
        self._consumer: Consumer | None = None
        self._positions: dict[Partition, int] = {}
        self.missing_topics: tuple[str, ...] = ()
        self._discovered: int | None = None
        self._discovery_failed = False
        self._completed: dict[str, set[str]] = {name: set() for name in self._stages[1:]}  # stage → files
        self._finished: dict[str, float | None] = {}  # file → its first last-stage completed record's timestamp
        self._failed_files: set[str] = set()
        self._failed: Counter[str] = Counter()
        self._dead_lettered: Counter[str] = Counter()
        self._unreadable = 0
        self._records_read = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> RequestFollower:
        """Take every followed partition's high watermark and read from there: only records written
        after this call are counted, so call it before publishing the request. Partitions without a
        leader for the moment are asked again until the deadline."""
        timeout = self.config.kafka.request_timeout_seconds
        deadline = time.monotonic() + DEFAULT_RETRY_SECONDS if self.deadline is None else self.deadline
        self.kafka = KafkaSession(self.config.kafka)
        try:
            admin = self.kafka.admin
            partitions = partitions_of(admin, self._roles, deadline=deadline, request_timeout=timeout)
            required = [self._first.completed_topic, self._last.completed_topic]
            absent = [topic for topic in required if topic not in partitions]
            if absent:
                raise ToolError(f"topic {absent[0]} does not exist: is the pipeline deployed on "
                                f"{self.config.kafka.bootstrap_servers}?")
            self.missing_topics = tuple(sorted(set(self._roles) - set(partitions)))
            keys = [(topic, p) for topic, ids in partitions.items() for p in ids]
            watermarks = all_watermarks(admin, keys, deadline=deadline, request_timeout=timeout)
            if watermarks.errors:
                (topic, partition), error = next(iter(watermarks.errors.items()))
                raise ToolError(f"cannot read where {topic}[{partition}] ends: {error_text(error)}")
            self._positions = dict(watermarks.high)
            self._consumer = self.kafka.reader()
            self._consumer.assign([TopicPartition(t, p, offset) for (t, p), offset in self._positions.items()])
        except BaseException:  # the caller's `with` never gets to close what was opened
            self.close()
            raise
        return self

    def close(self) -> None:
        if self.kafka is not None:
            self.kafka.close()
            self.kafka = None
        self._consumer = None

    def __enter__(self) -> RequestFollower:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------------

    def poll(self, timeout: float = POLL_SECONDS) -> bool:
        """Read what has arrived (waiting up to ``timeout`` for the first record); True when a record
        of this correlation id was among it."""
        if self._consumer is None:
            raise RuntimeError("the follower is not started: start() it first")
        changed = False
        for message in self._consumer.consume(num_messages=500, timeout=timeout):
            key = (message.topic(), message.partition())
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._positions[key] = max(self._positions.get(key, 0), message.offset())
                elif error.fatal():
                    raise KafkaException(error)
                continue
            self._positions[key] = message.offset() + 1
            self._records_read += 1
            if record_correlation_id(message.value()) == self.correlation_id:
                self.count(message)
                changed = True
        return changed

    def count(self, message: Message) -> None:
        """Count one record of this correlation id from a followed topic (a completed, failed or dead
        letter topic of a stage)."""
        stage, role = self._roles[message.topic()]
        first = stage == self._first.name
        if first:
            if role == "completed":
                files = payload_of(decode_json_object(message.value())).get("files_discovered")
                if isinstance(files, int) and not isinstance(files, bool) and files >= 0:
                    self._discovered = files
                else:
                    self._unreadable += 1
            else:
                self._discovery_failed = True
        if role == "failed":
            self._failed[stage] += 1
        elif role == "dlq":
            self._dead_lettered[stage] += 1
        if first:
            return
        path = file_path_of(message, role)
        if path is None:
            self._unreadable += 1
            return
        if role != "completed":
            self._failed_files.add(path)
            return
        self._completed[stage].add(path)
        if stage == self._last.name:
            self._finished.setdefault(path, record_timestamp_seconds(message))

    def progress(self) -> Progress:
        return Progress(
            correlation_id=self.correlation_id,
            discovered=self._discovered,
            discovery_failed=self._discovery_failed,
            completed={name: len(files) for name, files in self._completed.items()},
            # A file dead-lettered and then replayed through the last stage counts once, as finished.
            failed_files=len(self._failed_files - self._finished.keys()),
            failed={name: self._failed[name] for name in self._stages},
            dead_lettered={name: self._dead_lettered[name] for name in self._stages},
            unreadable=self._unreadable,
            records_read=self._records_read,
        )

    def finished_timestamps(self) -> list[float]:
        """Record timestamps (seconds since the epoch) of each finished file's first completed event
        of the last stage."""
        return [stamp for stamp in self._finished.values() if stamp is not None]

    def wait(self, deadline: float, on_progress: Callable[[Progress], None] | None = None) -> Progress:
        """Read until the run is complete or ``deadline`` (time.monotonic()) passes; ``on_progress``
        is called with every change."""
        progress = self.progress()
        while not progress.done:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if self.poll(min(POLL_SECONDS, left)):
                progress = self.progress()
                if on_progress is not None:
                    on_progress(progress)
        return progress

    def settle(self, timeout_seconds: float = SETTLE_SECONDS) -> Progress:
        """After completion, count what was written alongside the last outcomes too.

        A stage writes all outputs of a request (a failed event and its dead letter, say) before it
        commits the request, but they reach Kafka one by one, so the last file's outcome can be seen
        before its companions. Wait (up to ``timeout_seconds``) until every stage's group has
        committed past the requests written so far, then read every followed partition to its end
        (again up to ``timeout_seconds``). The run is complete already: when Kafka cannot tell where
        the topics end within that time, the counts so far stand (and a warning says so).
        """
        try:
            return self._settle(timeout_seconds)
        except RetriesExhausted as error:
            log.warning("the counts may miss the last records: %s", error)
            return self.progress()

    def _settle(self, timeout_seconds: float) -> Progress:
        if self.kafka is None:
            raise RuntimeError("the follower is not started: start() it first")
        timeout = self.config.kafka.request_timeout_seconds
        admin = self.kafka.admin
        until = time.monotonic() + timeout_seconds
        requests = partitions_of(admin, [s.request_topic for s in self.config.stages], deadline=until,
                                 request_timeout=timeout)
        keys = [(topic, p) for topic, ids in requests.items() for p in ids]
        written = all_watermarks(admin, keys, deadline=until, request_timeout=timeout).high
        group_of = {stage.request_topic: stage.group for stage in self.config.stages}
        while time.monotonic() < until:
            committed = fetch_committed_offsets(admin, set(group_of.values()), timeout, concurrency=4)
            if all(self._committed_past(committed.get(group_of[topic]), (topic, p), end)
                   for (topic, p), end in written.items()):
                break
            self.poll(min(POLL_SECONDS, max(0.0, until - time.monotonic())))
        until = time.monotonic() + timeout_seconds
        ends = all_watermarks(admin, list(self._positions), deadline=until, request_timeout=timeout).high
        while time.monotonic() < until and any(self._positions[key] < end for key, end in ends.items()):
            self.poll(min(POLL_SECONDS, max(0.0, until - time.monotonic())))
        return self.progress()

    @staticmethod
    def _committed_past(offsets: dict[Partition, int] | BaseException | None, key: Partition, end: int) -> bool:
        if end == 0:
            return True
        return isinstance(offsets, dict) and offsets.get(key, -1) >= end


def publish_discovery_request(config: Config, request: dict[str, Any], deadline: float | None = None,
                              kafka: KafkaSession | None = None) -> float:
    """Write ``request`` (see pipeline.events.discovery_request) to the first stage's request
    topic with an idempotent producer and wait until Kafka confirms it; returns the record's
    timestamp (seconds since the epoch), the start of every file's end-to-end latency.

    The producer retries by itself (a leader election, a broker restarting) for as long as
    message.timeout.ms allows: that is the time left before ``deadline`` (time.monotonic()), at
    least the request timeout. Being idempotent, its retries never write the request twice.
    ``kafka``: a session to make the producer in (the follower's), else one of its own.
    """
    topic = config.stages[0].request_topic
    timeout = config.kafka.request_timeout_seconds
    if deadline is not None:
        timeout = max(timeout, deadline - time.monotonic())
    sent_at = time.time()
    record = OutgoingRecord(topic, json.dumps(request).encode(), key=request["payload"]["correlation_id"].encode())
    with kafka_session(config.kafka, kafka) as session:
        sender = session.producer(**{"message.timeout.ms": int(timeout * 1000)})
        try:
            # A little past the producer's own timeout, so its verdict on the record is the one reported.
            (written,) = produce_and_confirm(sender, [record], deadline=time.monotonic() + timeout + 5)
        except KafkaException as error:  # ProduceFailed, or no answer to the topic's lookup
            raise ToolError(f"the discovery request was not written: {error_text(error)}") from None
    stamp = record_timestamp_seconds(written)
    return stamp if stamp is not None else sent_at


@dataclass(frozen=True)
class FollowedRequest:
    correlation_id: str
    progress: Progress
    requested_at: float  # the request record's timestamp, seconds since the epoch
    elapsed_seconds: float  # from publishing to completion (or to giving up)
    finished_timestamps: tuple[float, ...]  # each finished file's first last-stage completed record's timestamp
    missing_topics: tuple[str, ...]  # followed topics that did not exist when the request was published

    @property
    def completed(self) -> bool:
        return self.progress.done and not self.progress.discovery_failed


def follow_request(config: Config, request: dict[str, Any], timeout_seconds: float,
                   on_progress: Callable[[Progress], None] | None = None) -> FollowedRequest:
    """Publish a discovery request and follow it until complete or ``timeout_seconds`` have passed;
    ``on_progress`` is called once when the request is written, then with every change."""
    correlation_id = request["payload"]["correlation_id"]
    deadline = time.monotonic() + timeout_seconds
    with RequestFollower(config, correlation_id, deadline) as follower:
        started = time.monotonic()
        requested_at = publish_discovery_request(config, request, deadline, follower.kafka)
        if on_progress is not None:
            on_progress(follower.progress())  # published: nothing counted yet
        progress = follower.wait(deadline, on_progress)
        elapsed = time.monotonic() - started
        if progress.done:
            progress = follower.settle()
        return FollowedRequest(correlation_id, progress, requested_at, elapsed,
                               tuple(follower.finished_timestamps()), follower.missing_topics)
