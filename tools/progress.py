"""Publish a discovery request and follow its correlation id through the stages while the
pipeline works on it (``treewatch bench`` and ``treewatch reindex``).

``ProgressFollower.start()`` takes the high watermark of every stage's completed, failed and dead
letter topic *before* the request is published, and reads on from there as records arrive: one
consumer, assigned once, remembering its position, so each record is read once however long the
wait (the guide's scripts re-read whole topics every few seconds). It counts the records that
carry the correlation id:

- discovered: ``files_discovered`` of the discover stage's completed event;
- stamped / indexed: files with a completed event of the stamp / index stage;
- failed and dead-lettered: failed events and dead letters per stage;
- finished files: indexed, or failed or dead-lettered in a later stage, each file once.

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

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from pipeline.config import Config
from pipeline.events import correlation_id as correlation_id_of
from pipeline.events import decode_json_object, parse_dead_letter
from pipeline.kafka import (
    Partition,
    admin_client,
    fetch_committed_offsets,
    producer,
    reader,
    record_timestamp_seconds,
)
from pipeline.kafka_errors import DEFAULT_RETRY_SECONDS, RetriesExhausted, all_watermarks, error_text, partitions_of
from tools import ToolError

log = logging.getLogger("treewatch.progress")

DISCOVER, STAMP, INDEX = "discover", "stamp", "index"
FOLLOWED_ROLES = ("completed", "failed", "dlq")
# How long one read waits for new records: the only pause while following.
POLL_SECONDS = 0.5
# After completion, how long to wait at most for the stages to commit what they were working on
# (see ProgressFollower.settle).
SETTLE_SECONDS = 15.0


@dataclass(frozen=True)
class Progress:
    correlation_id: str
    discovered: int | None  # None until discovery has reported
    discovery_failed: bool
    stamped: int
    indexed: int
    failed_files: int  # files that failed or were dead-lettered after discovery, each once
    failed: dict[str, int]  # stage → failed events
    dead_lettered: dict[str, int]  # stage → dead letters
    unreadable: int  # records of this correlation id without the fields counted here
    records_read: int  # every record read while following, whatever its correlation id

    @property
    def finished_files(self) -> int:
        return self.indexed + self.failed_files

    @property
    def done(self) -> bool:
        return self.discovery_failed or (self.discovered is not None and self.finished_files >= self.discovered)

    @property
    def waiting_on(self) -> str | None:
        """The first stage that has not produced an outcome for every file yet."""
        if self.done:
            return None
        if self.discovered is None:
            return DISCOVER
        if self.stamped + self.failed_files < self.discovered:
            return STAMP
        return INDEX

    @property
    def dead_lettered_total(self) -> int:
        return sum(self.dead_lettered.values())

    @property
    def percent_indexed(self) -> float | None:
        if self.discovered is None:
            return None
        return 100.0 if self.discovered == 0 else 100.0 * self.indexed / self.discovered


def _payload(event: dict[str, Any] | None) -> dict[str, Any]:
    if event is None:
        return {}
    payload = event.get("payload")
    return payload if isinstance(payload, dict) else event


def _file_path(message: Message, role: str) -> str | None:
    if role == "dlq":
        original = parse_dead_letter(message.value()).original_payload
        payload = _payload(original if isinstance(original, dict) else None)
    else:
        payload = _payload(decode_json_object(message.value()))
    path = payload.get("file_path")
    return path if isinstance(path, str) and path else None


class ProgressFollower:
    """``with ProgressFollower(config, cid, deadline) as follower:`` start() before publishing, then wait()."""

    def __init__(self, config: Config, correlation_id: str, deadline: float | None = None) -> None:
        self.config = config
        self.correlation_id = correlation_id
        # Until when (time.monotonic()) start() asks again for partitions that have no leader yet.
        self.deadline = deadline
        self._roles = {topic: (stage.name, role) for topic, (stage, role) in config.pipeline_topics.items()
                       if role in FOLLOWED_ROLES}
        self._consumer = None
        self._positions: dict[Partition, int] = {}
        self.missing_topics: tuple[str, ...] = ()
        self._discovered: int | None = None
        self._discovery_failed = False
        self._stamped: set[str] = set()
        self._indexed: dict[str, float | None] = {}  # file → first index-completed record timestamp
        self._failed_files: set[str] = set()
        self._failed: Counter[str] = Counter()
        self._dead_lettered: Counter[str] = Counter()
        self._unreadable = 0
        self._records_read = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> ProgressFollower:
        """Take every followed partition's high watermark and read from there: only records written
        after this call are counted, so call it before publishing the request. Partitions without a
        leader for the moment are asked again until the deadline."""
        timeout = self.config.kafka.request_timeout_seconds
        deadline = time.monotonic() + DEFAULT_RETRY_SECONDS if self.deadline is None else self.deadline
        admin = admin_client(self.config.kafka)
        partitions = partitions_of(admin, self._roles, deadline=deadline, request_timeout=timeout)
        required = [self.config.stage(DISCOVER).completed_topic, self.config.stage(INDEX).completed_topic]
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
        self._consumer = reader(self.config.kafka)
        self._consumer.assign([TopicPartition(t, p, offset) for (t, p), offset in self._positions.items()])
        return self

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def __enter__(self) -> ProgressFollower:
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
            if correlation_id_of(message.value()) == self.correlation_id:
                self._count(message)
                changed = True
        return changed

    def _count(self, message: Message) -> None:
        stage, role = self._roles[message.topic()]
        if stage == DISCOVER:
            if role == "completed":
                files = _payload(decode_json_object(message.value())).get("files_discovered")
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
        if stage == DISCOVER:
            return
        path = _file_path(message, role)
        if path is None:
            self._unreadable += 1
            return
        if role != "completed":
            self._failed_files.add(path)
        elif stage == STAMP:
            self._stamped.add(path)
        elif stage == INDEX:
            self._indexed.setdefault(path, record_timestamp_seconds(message))

    def progress(self) -> Progress:
        stages = [s.name for s in self.config.stages]
        return Progress(
            correlation_id=self.correlation_id,
            discovered=self._discovered,
            discovery_failed=self._discovery_failed,
            stamped=len(self._stamped),
            indexed=len(self._indexed),
            # A file dead-lettered and then replayed into the index counts once, as indexed.
            failed_files=len(self._failed_files - self._indexed.keys()),
            failed={name: self._failed[name] for name in stages},
            dead_lettered={name: self._dead_lettered[name] for name in stages},
            unreadable=self._unreadable,
            records_read=self._records_read,
        )

    def index_timestamps(self) -> list[float]:
        """Record timestamps (seconds since the epoch) of each indexed file's first completed event."""
        return [stamp for stamp in self._indexed.values() if stamp is not None]

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
        timeout = self.config.kafka.request_timeout_seconds
        admin = admin_client(self.config.kafka)
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


def publish_discovery_request(config: Config, request: dict[str, Any], deadline: float | None = None) -> float:
    """Write ``request`` (see pipeline.events.discovery_request) to the discover stage's request
    topic with an idempotent producer and wait until Kafka confirms it; returns the record's
    timestamp (seconds since the epoch), the start of every file's end-to-end latency.

    The producer retries by itself (a leader election, a broker restarting) for as long as
    message.timeout.ms allows: that is the time left before ``deadline`` (time.monotonic()), at
    least the request timeout. Being idempotent, its retries never write the request twice.
    """
    topic = config.stage(DISCOVER).request_topic
    timeout = config.kafka.request_timeout_seconds
    if deadline is not None:
        timeout = max(timeout, deadline - time.monotonic())
    sent_at = time.time()
    outcome: dict[str, Any] = {}

    def delivered(error: KafkaError | None, message: Message) -> None:
        outcome["error"] = error
        outcome["timestamp"] = record_timestamp_seconds(message) if error is None else None

    sender = producer(config.kafka, **{"message.timeout.ms": int(timeout * 1000)})
    key = request["payload"]["correlation_id"].encode()
    sender.produce(topic, json.dumps(request).encode(), key=key, on_delivery=delivered)
    sender.flush(timeout + 5)
    if "error" not in outcome:
        raise ToolError(f"the discovery request was not confirmed by Kafka within {timeout:g}s ({topic})")
    if outcome["error"] is not None:
        raise ToolError(f"the discovery request was not written to {topic}: {outcome['error'].str()}")
    return outcome["timestamp"] if outcome["timestamp"] is not None else sent_at


@dataclass(frozen=True)
class FollowedRequest:
    correlation_id: str
    progress: Progress
    requested_at: float  # the request record's timestamp, seconds since the epoch
    elapsed_seconds: float  # from publishing to completion (or to giving up)
    index_timestamps: tuple[float, ...]  # each indexed file's first completed event's record timestamp
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
    with ProgressFollower(config, correlation_id, deadline) as follower:
        started = time.monotonic()
        requested_at = publish_discovery_request(config, request, deadline)
        if on_progress is not None:
            on_progress(follower.progress())  # published: nothing counted yet
        progress = follower.wait(deadline, on_progress)
        elapsed = time.monotonic() - started
        if progress.done:
            progress = follower.settle()
        return FollowedRequest(correlation_id, progress, requested_at, elapsed,
                               tuple(follower.index_timestamps()), follower.missing_topics)
