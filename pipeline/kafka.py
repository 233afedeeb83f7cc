"""Kafka access for everything above the ground floor: clients built from the configuration (with
librdkafka's own log routed to Python logging, so a down broker is one warning, not a stream of
stderr lines), and the batched reads the exporter and the operator tools share: watermarks of many
partitions, committed offsets of many groups, records at given offsets."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from pipeline.config import KafkaSettings

log = logging.getLogger("treewatch.kafka")

# Parts of a librdkafka log line that change from one repeat of the same event to the next.
_VARYING = re.compile(r"rdkafka#\w+-\d+"
                      r"|\(after \d+ms in state \w+(?:, \d+ identical error\(s\) suppressed)?\)"
                      r"|\d+ identical error\(s\) suppressed")


class LibrdkafkaLog:
    """librdkafka's log lines into Python logging, each distinct event at its own level once per
    ``repeat_seconds``, repeats in between at DEBUG: a broker that stays down (librdkafka retries
    every second or so, per client) is one error line, not a stream of them."""

    _MAX_REMEMBERED = 1000

    def __init__(self, logger: logging.Logger, repeat_seconds: float = 300.0) -> None:
        self._logger = logger
        self._repeat_seconds = repeat_seconds
        self._last_logged: dict[str, float] = {}
        self._lock = threading.Lock()

    @staticmethod
    def event_key(line: str) -> str:
        """The line without what changes between repeats of one event (client name, timings)."""
        return _VARYING.sub("", line)

    def log(self, level: int, fmt: str, *args: object) -> None:
        line = fmt % args if args else fmt
        key = self.event_key(line)
        now = time.monotonic()
        with self._lock:
            last = self._last_logged.get(key)
            fresh = last is None or now - last >= self._repeat_seconds
            if fresh:
                if len(self._last_logged) >= self._MAX_REMEMBERED:
                    self._last_logged.clear()
                self._last_logged[key] = now
        self._logger.log(level if fresh else logging.DEBUG, "%s", line)


client_log = LibrdkafkaLog(log)


class ClientErrors:
    """An ``error_cb`` that keeps the last client-level error librdkafka reported.

    A request that fails because the client could not authenticate or agree on TLS only says
    "broker transport failure"; the reason arrives here. ``explain`` puts the two together, so the
    failure an operator reads names the wrong password or the untrusted certificate.
    """

    _EXPLAINING = (KafkaError._AUTHENTICATION, KafkaError._SSL)

    def __init__(self) -> None:
        # Only a reason that explains a failure is kept: librdkafka follows an authentication
        # error with "all brokers down", which would otherwise hide it.
        self.latest: KafkaError | None = None

    def __call__(self, error: KafkaError) -> None:
        if error.code() in self._EXPLAINING:
            self.latest = error

    def explain(self, error: KafkaException) -> KafkaException:
        latest = self.latest
        if latest is None:
            return error
        cause = error.args[0].str() if error.args and isinstance(error.args[0], KafkaError) else str(error)
        reason = _VARYING.sub("", latest.str()).strip()
        return KafkaException(KafkaError(latest.code(), f"{cause}: {reason}"))


# librdkafka backs off reconnecting to a down broker up to 10 s by default; a client that should
# notice a returning broker within a refresh or two must retry sooner. client_properties win.
_RECONNECT_DEFAULTS = {"reconnect.backoff.ms": 100, "reconnect.backoff.max.ms": 1000}


def _base(settings: KafkaSettings, extra: dict[str, Any]) -> dict[str, Any]:
    return {**_RECONNECT_DEFAULTS, **settings.client_config(), "logger": client_log, **extra}


def admin_client(settings: KafkaSettings, **extra: Any) -> AdminClient:
    return AdminClient(_base(settings, extra))


# librdkafka wants a group.id even for assign(); nothing is ever committed under it, so the
# broker never holds a group of this name.
READER_GROUP_ID = "treewatch-reader"


def reader(settings: KafkaSettings, **extra: Any) -> Consumer:
    """A consumer for assign()-and-read only: it never joins a group and never commits."""
    config = {
        "group.id": READER_GROUP_ID,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        **extra,
    }
    return Consumer(_base(settings, config))


class LazyReader:
    """A reader() made on first use and kept for the next, so a collector that is never needed
    (no DLQ yet, no lag) opens no connection, and one that is needed opens one, not one per refresh."""

    def __init__(self, settings: KafkaSettings, **extra: Any) -> None:
        self._settings = settings
        self._extra = extra
        self._consumer: Consumer | None = None

    def get(self) -> Consumer:
        if self._consumer is None:
            self._consumer = reader(self._settings, **self._extra)
        return self._consumer

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def producer(settings: KafkaSettings, **extra: Any) -> Producer:
    """An idempotent producer: a retried send never writes a record twice."""
    config = {"enable.idempotence": True, "acks": "all", **extra}
    return Producer(_base(settings, config))


# -- reading the cluster in batches (the exporter and the operator tools both need these) ---------

Partition = tuple[str, int]  # (topic, partition)

# A future is given this much beyond its own request timeout before it counts as lost, so the
# broker's answer (or librdkafka's own timeout error) wins over ours when both are near.
_FUTURE_GRACE_SECONDS = 2.0


# Consumer group states by the names Kafka itself uses (kafka-consumer-groups.sh, the admin API).
GROUP_STATE_NAMES: dict[ConsumerGroupState, str] = {
    ConsumerGroupState.STABLE: "Stable",
    ConsumerGroupState.PREPARING_REBALANCING: "PreparingRebalance",
    ConsumerGroupState.COMPLETING_REBALANCING: "CompletingRebalance",
    ConsumerGroupState.EMPTY: "Empty",
    ConsumerGroupState.DEAD: "Dead",
    ConsumerGroupState.UNKNOWN: "Unknown",
}


def group_state_name(state: ConsumerGroupState) -> str:
    return GROUP_STATE_NAMES.get(state, "Unknown")


def lag(committed: int, log_start: int, high: int) -> int:
    """Records a group has still to consume: from its committed offset (or the log start, when
    retention already removed the records there) up to the high watermark; never negative."""
    return max(0, high - max(committed, log_start))


def time_left(deadline: float | None, request_timeout: float) -> float:
    """The request timeout, shortened to what is left before ``deadline`` (time.monotonic())."""
    if deadline is None:
        return request_timeout
    return max(0.0, min(request_timeout, deadline - time.monotonic()))


def result_of(future: Future, request_timeout: float, deadline: float | None = None) -> Any:
    """The future's result, or TimeoutError: an admin call never blocks a caller forever, nor
    beyond ``deadline`` when one is given."""
    wait_for = request_timeout + _FUTURE_GRACE_SECONDS
    if deadline is not None:
        wait_for = min(wait_for, max(0.0, deadline - time.monotonic()))
    try:
        return future.result(timeout=wait_for)
    except FutureTimeout:
        if wait_for < request_timeout + _FUTURE_GRACE_SECONDS:
            raise TimeoutError("Kafka did not answer before the deadline") from None
        raise TimeoutError(f"Kafka did not answer within {request_timeout:g}s") from None


@dataclass(frozen=True)
class Watermarks:
    """High watermark and log start offset per partition, and the partitions neither was read for."""

    high: dict[Partition, int]
    low: dict[Partition, int]
    errors: dict[Partition, BaseException]


def fetch_watermarks(admin: AdminClient, partitions: Iterable[Partition],
                     request_timeout: float, *, deadline: float | None = None) -> Watermarks:
    """Latest and earliest offsets of every partition: one ListOffsets round each, both in flight at
    once. A partition the broker cannot answer for (no leader) is left out and named in ``errors``;
    when no partition at all could be read, the first error is raised. Nothing waits beyond
    ``deadline`` (time.monotonic()) when one is given."""
    wanted = [TopicPartition(topic, partition) for topic, partition in partitions]
    if not wanted:
        return Watermarks({}, {}, {})
    request_timeout = time_left(deadline, request_timeout)
    if request_timeout <= 0:
        raise TimeoutError("no time left to ask for the partitions' offsets")
    latest = admin.list_offsets({tp: OffsetSpec.latest() for tp in wanted}, request_timeout=request_timeout)
    earliest = admin.list_offsets({tp: OffsetSpec.earliest() for tp in wanted},
                                  request_timeout=request_timeout)
    deadline = time.monotonic() + request_timeout + _FUTURE_GRACE_SECONDS
    high: dict[Partition, int] = {}
    low: dict[Partition, int] = {}
    errors: dict[Partition, BaseException] = {}
    for target, futures in ((high, latest), (low, earliest)):
        for tp, future in futures.items():
            key = (tp.topic, tp.partition)
            try:
                offset = future.result(timeout=max(0.0, deadline - time.monotonic())).offset
                if offset < 0:
                    # While a partition has no leader, librdkafka can answer an offset of -1001
                    # (OFFSET_INVALID) with no error at all: unknown, not an offset.
                    errors[key] = KafkaException(KafkaError(KafkaError.LEADER_NOT_AVAILABLE,
                                                            f"no valid offset for {tp.topic}[{tp.partition}]"
                                                            f" (got {offset}): no leader?"))
                    continue
                target[key] = offset
            except FutureTimeout:
                errors[key] = TimeoutError(f"no offsets for {tp.topic}[{tp.partition}]"
                                           f" within {request_timeout:g}s")
            except KafkaException as error:
                errors[key] = error
    for key in errors:
        high.pop(key, None)
        low.pop(key, None)
    if errors and not high:
        raise next(iter(errors.values()))
    return Watermarks(high, low, errors)


def fetch_committed_offsets(admin: AdminClient, groups: Iterable[str], request_timeout: float,
                            concurrency: int, *, deadline: float | None = None,
                            ) -> dict[str, dict[Partition, int] | BaseException]:
    """Every committed offset of every group, or the error met for that group.

    librdkafka answers one group per OffsetFetch request, so requests are kept ``concurrency`` in
    flight at a time: fast for hundreds of groups without flooding the coordinators. Partitions
    without a committed offset are not in the result. When ``deadline`` (time.monotonic()) passes,
    the groups not answered by then get a TimeoutError: the whole call is bounded, not each round.
    """
    pending = deque(groups)
    in_flight: dict[Future, str] = {}
    results: dict[str, dict[Partition, int] | BaseException] = {}
    while pending or in_flight:
        timeout = time_left(deadline, request_timeout)
        while pending and len(in_flight) < concurrency and timeout > 0:
            group = pending.popleft()
            try:
                future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                                           request_timeout=timeout)[group]
            except KafkaException as error:
                results[group] = error
                continue
            in_flight[future] = group
        if not in_flight and not pending:
            break
        wait_for = request_timeout + _FUTURE_GRACE_SECONDS
        if deadline is not None:
            wait_for = min(wait_for, max(0.0, deadline - time.monotonic()))
        done, _ = wait(in_flight, timeout=wait_for, return_when=FIRST_COMPLETED) if in_flight else (set(), set())
        if not done:
            # Nothing answered in a whole request timeout (or the deadline came): the cluster is not
            # responding; give up on this round rather than wait once more per remaining group.
            lost = TimeoutError(f"no committed offsets within {request_timeout:g}s" if wait_for > request_timeout
                                else "no committed offsets before the deadline")
            for group in [*in_flight.values(), *pending]:
                results[group] = lost
            break
        for future in done:
            group = in_flight.pop(future)
            try:
                answer = future.result()
            except KafkaException as error:
                results[group] = error
                continue
            results[group] = {(tp.topic, tp.partition): tp.offset for tp in answer.topic_partitions
                              if tp.offset >= 0 and tp.error is None}
    return results


def read_records(consumer: Consumer, starts: Mapping[Partition, int], ends: Mapping[Partition, int], *,
                 deadline: float, max_records: int | None = None, max_bytes: int | None = None,
                 first_only: bool = False, drained: set[Partition] | None = None) -> list[Message]:
    """Records of each partition from ``starts`` (inclusive) up to ``ends`` (exclusive), read in one
    batched assign()/consume() pass over all partitions together (``iter_records``, collected).

    ``first_only``: only the first record at or after each start (the record at an offset, or the
    next one when compaction or a transaction marker took that offset). Stops at ``deadline``
    (time.monotonic()), after ``max_records``, or after the record that brings the values read to
    ``max_bytes``; whatever was read by then is returned. A start below the log start is moved to
    the log start by the consumer (auto.offset.reset=earliest).

    ``drained``, when given, receives the partitions whose end was reached with no further record
    returned: what is left below their end is only transaction markers (or aborted records), which
    a consumer never sees. An open transaction stops the read below the end: not drained.
    """
    batch_size = 500 if max_records is None else max(1, min(500, max_records))
    records: list[Message] = []
    read_bytes = 0
    with contextlib.closing(iter_records(consumer, starts, ends, deadline=deadline, batch_size=batch_size,
                                         first_only=first_only, drained=drained)) as scan:
        for message in scan:
            records.append(message)
            read_bytes += len(message)
            if len(records) == max_records or (max_bytes is not None and read_bytes >= max_bytes):
                break
    return records


def iter_records(consumer: Consumer, starts: Mapping[Partition, int], ends: Mapping[Partition, int], *,
                 deadline: float, batch_size: int = 10_000, first_only: bool = False,
                 drained: set[Partition] | None = None) -> Iterator[Message]:
    """The records ``read_records`` returns, one at a time as they arrive, so a long range is never
    held in memory: one assign() for the whole range, then consume() ``batch_size`` records at a time
    until every partition reached its end or ``deadline`` passed. One assignment for the whole
    range keeps librdkafka's fetches running ahead of the reader; assigning again every few thousand
    records throws its prefetched records away each time, which made reading several times slower.

    Close it (contextlib.closing) when leaving it early: closing unassigns the consumer.
    """
    remaining = {key: ends[key] for key, start in starts.items() if key in ends and start < ends[key]}
    if not remaining:
        return
    consumer.assign([TopicPartition(topic, partition, starts[(topic, partition)])
                     for topic, partition in remaining])
    try:
        while remaining:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for message in consumer.consume(num_messages=batch_size, timeout=min(0.5, left)):
                key = (message.topic(), message.partition())
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        end = remaining.pop(key, None)
                        if drained is not None and end is not None and message.offset() >= end:
                            drained.add(key)
                    elif error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                        remaining.pop(key, None)
                    elif error.fatal():
                        raise KafkaException(error)
                    else:
                        log.debug("reading %s: %s", key, error)
                    continue
                end = remaining.get(key)
                if end is None or message.offset() < starts[key]:
                    continue  # a partition already finished, or a record before the start in its batch
                if message.offset() >= end:
                    remaining.pop(key)
                    if drained is not None:
                        drained.add(key)
                    continue
                if first_only or message.offset() + 1 >= end:
                    remaining.pop(key)
                yield message
    finally:
        consumer.unassign()


def record_timestamp_seconds(message: Message) -> float | None:
    kind, milliseconds = message.timestamp()
    return None if kind == TIMESTAMP_NOT_AVAILABLE or milliseconds < 0 else milliseconds / 1000.0


def topic_partitions(admin: AdminClient, topics: Iterable[str], request_timeout: float) -> dict[str, list[int]]:
    """Partition ids of each of ``topics`` that exists, from one metadata request; a topic that does
    not exist (or whose metadata carries an error) is left out."""
    metadata = admin.list_topics(timeout=request_timeout)
    found: dict[str, list[int]] = {}
    for topic in topics:
        described = metadata.topics.get(topic)
        if described is not None and described.error is None:
            found[topic] = sorted(described.partitions)
    return found
