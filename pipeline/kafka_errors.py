"""Kafka failures the operator tools meet, understood in one place: which ones pass by themselves
(a leader election, a coordinator moving or loading, a broker restarting) and are worth another
try within the tool's time, how to retry them, and how to say any of them in words.

librdkafka flags an error retriable only on errors it raised itself (``KafkaError.retriable()``);
the same broker codes arriving in an admin result carry no flag, so the codes Kafka documents as
retriable are listed here too. After a broker crashes, its partitions have no leader until the
controller notices (broker.session.timeout.ms, seconds): meanwhile ListOffsets for them answers
NOT_LEADER_OR_FOLLOWER, times out, or (librdkafka 2.x) returns offset -1001 with no error at all.
``all_watermarks`` treats all three as "ask again".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from pipeline.kafka import (
    KafkaSession,
    Partition,
    ProduceFailed,
    Watermarks,
    fetch_committed_offsets,
    fetch_watermarks,
    result_of,
    time_left,
    topic_partitions,
)

log = logging.getLogger("treewatch.kafka.retry")

T = TypeVar("T")

# Broker error codes that describe a passing state of the cluster (Kafka's RetriableException
# subclasses), and librdkafka's local errors for a broker that is away for the moment.
TRANSIENT_CODES = frozenset({
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,  # NOT_LEADER_OR_FOLLOWER since Kafka 2.4
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NETWORK_EXCEPTION,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
    KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    KafkaError.KAFKA_STORAGE_ERROR,
    KafkaError.FENCED_LEADER_EPOCH,
    KafkaError.UNKNOWN_LEADER_EPOCH,
    KafkaError.OFFSET_NOT_AVAILABLE,
    KafkaError.PREFERRED_LEADER_NOT_AVAILABLE,
    KafkaError.ELIGIBLE_LEADERS_NOT_AVAILABLE,
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._WAIT_COORD,
})

# Between tries: short at first (a coordinator loads in a fraction of a second), never long (an
# election is over in seconds, and the tool should notice at once).
FIRST_BACKOFF_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 1.0
# An attempt given less time than this could not get an answer from any broker; stop instead.
MIN_ATTEMPT_SECONDS = 0.5
# Tools without a --timeout of their own (groups, status) retry for this long at most: longer than
# a leader election after a crash (broker.session.timeout.ms, 9 s by default, plus the metadata
# refresh), short enough for an operator waiting on a terminal.
DEFAULT_RETRY_SECONDS = 30.0


class RetriesExhausted(RuntimeError):
    """A transient error that did not pass before the deadline; ``__cause__`` is the last one."""

    def __init__(self, what: str, last: BaseException, tries: int, seconds: float) -> None:
        super().__init__(f"{what}: {error_text(last)} (still failing after {tries} tries over {seconds:.0f}s)")
        self.last = last


def kafka_error_of(error: object) -> KafkaError | None:
    """The KafkaError in ``error``: a KafkaException's, or the error itself (admin results list
    some failures as bare KafkaError objects)."""
    if isinstance(error, KafkaError):
        return error
    args = getattr(error, "args", None)
    if isinstance(args, tuple) and args and isinstance(args[0], KafkaError):
        return args[0]
    return None


def as_exception(error: object) -> BaseException:
    """Something raisable for an error an admin result lists, keeping its KafkaError."""
    reason = kafka_error_of(error)
    if reason is not None:
        return error if isinstance(error, KafkaException) else KafkaException(reason)
    return error if isinstance(error, BaseException) else RuntimeError(str(error))


def is_transient(error: object) -> bool:
    """Whether ``error`` may pass by itself: asking again later can succeed. Never for records not
    confirmed (ProduceFailed): producing them again could write them twice."""
    if isinstance(error, ProduceFailed):
        return False
    if isinstance(error, TimeoutError):
        return True
    reason = kafka_error_of(error)
    if reason is None or reason.fatal():
        return False
    return reason.retriable() or reason.code() in TRANSIENT_CODES


def error_text(error: BaseException) -> str:
    """The error in words: librdkafka's text and Kafka's name of the code, not the KafkaError repr."""
    reason = kafka_error_of(error)
    if reason is None:
        return str(error) or type(error).__name__
    return f"{reason.str()} ({reason.name()})"


def retry_transient(operation: Callable[[float], T], *, what: str, deadline: float, request_timeout: float) -> T:
    """``operation(timeout)``, asked again with backoff while it fails with a transient error, until
    ``deadline`` (time.monotonic()); then RetriesExhausted. Other errors pass through at once.

    Each attempt gets the request timeout, shortened to what is left before the deadline, so the
    whole call ends near the deadline whatever the cluster does.
    """
    started = time.monotonic()
    backoff = FIRST_BACKOFF_SECONDS
    tries = 0
    while True:
        tries += 1
        try:
            return operation(max(MIN_ATTEMPT_SECONDS, time_left(deadline, request_timeout)))
        except Exception as error:
            if not is_transient(error):
                raise
            if deadline - time.monotonic() < backoff + MIN_ATTEMPT_SECONDS:
                raise RetriesExhausted(what, error, tries, time.monotonic() - started) from error
            # The first failure of a run is news; its repeats while the cluster recovers are not.
            log.log(logging.WARNING if tries == 1 else logging.DEBUG, "%s: %s; retrying for up to %.0fs",
                    what, error_text(error), deadline - time.monotonic())
            time.sleep(backoff)  # nothing announces the end of an election: ask again a little later
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)


def no_answer(topic: str, partition: int) -> KafkaException:
    """The error for a partition whose offsets came back as -1001: its leader did not answer."""
    return KafkaException(KafkaError(KafkaError.LEADER_NOT_AVAILABLE,
                                     f"no offsets for {topic}[{partition}]: its leader did not answer",
                                     retriable=True))


def all_watermarks(admin: AdminClient, partitions: Iterable[Partition], *, deadline: float,
                   request_timeout: float) -> Watermarks:
    """High watermark and log start of every partition (see pipeline.kafka.fetch_watermarks), asked
    again while any partition is unanswered for a passing reason (no leader yet, a timeout,
    librdkafka's -1001). What is left in ``errors`` failed for good (e.g. the topic was deleted)."""
    wanted = list(partitions)
    attempts = 0

    def attempt(timeout: float) -> Watermarks:
        nonlocal attempts
        attempts += 1
        if attempts > 1:
            # librdkafka sends ListOffsets to the leaders it has cached and, when one does not answer,
            # does not look again by itself: a metadata request brings the new leaders in.
            admin.list_topics(timeout=timeout)
        found = fetch_watermarks(admin, wanted, timeout)
        for (topic, partition), high in found.high.items():
            if high < 0 or found.low[(topic, partition)] < 0:
                raise no_answer(topic, partition)
        passing = [error for error in found.errors.values() if is_transient(error)]
        if passing:
            raise passing[0]
        return found

    return retry_transient(attempt, what="reading the partitions' offsets", deadline=deadline,
                           request_timeout=request_timeout)


def offsets_for_time(admin: AdminClient, partitions: Iterable[Partition], timestamp_ms: int, *, deadline: float,
                     request_timeout: float) -> dict[Partition, int]:
    """Per partition, the offset of the first record with a timestamp at or after ``timestamp_ms``
    (Kafka's ListOffsets by time, the broker's time index: nothing before it is read), or -1 when
    no record is that recent; asked again while a leader is away."""
    wanted = list(partitions)

    def attempt(timeout: float) -> dict[Partition, int]:
        futures = admin.list_offsets({TopicPartition(t, p): OffsetSpec.for_timestamp(timestamp_ms) for t, p in wanted},
                                     request_timeout=timeout)
        return {(tp.topic, tp.partition): result_of(future, timeout).offset for tp, future in futures.items()}

    return retry_transient(attempt, what="finding the offsets for the time", deadline=deadline,
                           request_timeout=request_timeout)


def committed_offsets(admin: AdminClient, group: str, *, deadline: float, request_timeout: float
                      ) -> dict[Partition, int]:
    """Every committed offset of ``group``, asked again while its coordinator moves or loads."""

    def attempt(timeout: float) -> dict[Partition, int]:
        result = fetch_committed_offsets(admin, [group], timeout, concurrency=1)[group]
        if isinstance(result, BaseException):
            raise result
        return result

    return retry_transient(attempt, what=f"reading the committed offsets of {group!r}", deadline=deadline,
                           request_timeout=request_timeout)


def partitions_of(admin: AdminClient, topics: Iterable[str], *, deadline: float, request_timeout: float
                  ) -> dict[str, list[int]]:
    """Partition ids of each existing topic (see pipeline.kafka.topic_partitions), asked again while
    no broker answers the metadata request."""
    wanted = list(topics)
    return retry_transient(lambda timeout: topic_partitions(admin, wanted, timeout), what="reading the topics",
                           deadline=deadline, request_timeout=request_timeout)


def describe_cluster(kafka: KafkaSession, *, deadline: float) -> Any:
    """The cluster's description (id, controller, brokers), asked again while it does not come.

    The request waits on the broker the metadata names as controller, which right after a crash can
    be the crashed one: each retry is made by a new admin client (KafkaSession.renew_admin), with
    metadata as the cluster has it now.
    """
    attempts = 0

    def attempt(timeout: float) -> Any:
        nonlocal attempts
        attempts += 1
        admin = kafka.admin if attempts == 1 else kafka.renew_admin()
        return result_of(admin.describe_cluster(request_timeout=timeout), timeout)

    return retry_transient(attempt, what="describing the cluster", deadline=deadline,
                           request_timeout=kafka.settings.request_timeout_seconds)
