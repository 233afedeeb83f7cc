"""Kafka access for everything above the ground floor: clients built from the configuration (with
librdkafka's own log routed to Python logging, so a down broker is one warning, not a stream of
stderr lines), a tool's clients opened and closed together (``KafkaSession``), records produced and
confirmed (``produce_and_confirm``), and the batched reads the exporter and the operator tools
share: watermarks of many partitions, committed offsets of many groups, records at given offsets."""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar

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
    """An idempotent producer: a retried send never writes a record twice. It never asks the broker
    to create a topic it writes to (librdkafka's producer does by default, and a broker with
    auto.create.topics.enable would then make a misspelt topic with the broker's defaults)."""
    config = {"enable.idempotence": True, "acks": "all", "allow.auto.create.topics": False, **extra}
    return Producer(_base(settings, config))


class KafkaSession:
    """The Kafka clients one tool run needs, made from one configuration on first use and closed
    together: ``with KafkaSession(settings) as kafka:``.

    One admin client however many steps ask for it (each admin client keeps its own connections to
    every broker and its own metadata), readers made on demand, and one producer per producer
    configuration. Client-level errors of the admin client (a refused password, a broker down) go to
    the listeners ``client_errors_to`` registers, since librdkafka takes its error_cb only when the
    client is made.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._admin: AdminClient | None = None
        self._readers: list[Consumer] = []
        self._producers: dict[frozenset[tuple[str, Any]], Producer] = {}
        self._error_listeners: list[Callable[[KafkaError], None]] = []
        self._closed = False

    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            self._admin = admin_client(self._open().settings, error_cb=self._client_error)
        return self._admin

    def renew_admin(self) -> AdminClient:
        """A new admin client in place of the session's, for a retry that needs the cluster as it is
        now: a client keeps what it learnt before a broker crashed (the controller, the brokers to
        ask), and waits on the crashed broker. The old client is dropped; librdkafka closes it once
        nothing references it (an admin client has no close())."""
        self._open()._admin = None
        return self.admin

    def reader(self, **extra: Any) -> Consumer:
        """A new reader() (assign-only consumer), closed with the session."""
        consumer = reader(self._open().settings, **extra)
        self._readers.append(consumer)
        return consumer

    def producer(self, **extra: Any) -> Producer:
        """The session's producer() with these extra settings, made on first use."""
        key = frozenset(extra.items())
        if key not in self._open()._producers:
            self._producers[key] = producer(self.settings, **extra)
        return self._producers[key]

    @contextlib.contextmanager
    def client_errors_to(self, listener: Callable[[KafkaError], None]) -> Iterator[None]:
        """``listener`` gets the admin client's client-level errors while inside (served by its poll())."""
        self._error_listeners.append(listener)
        try:
            yield
        finally:
            self._error_listeners.remove(listener)

    def _client_error(self, error: KafkaError) -> None:
        for listener in tuple(self._error_listeners):
            listener(error)

    def _open(self) -> KafkaSession:
        if self._closed:
            raise RuntimeError("the Kafka session is closed")
        return self

    def close(self) -> None:
        """Close every client. Records a producer still holds unconfirmed (produce_and_confirm leaves
        none) are purged first, with a warning: closing would otherwise wait for them without end
        while no broker answers."""
        if self._closed:
            return
        self._closed = True
        for consumer in self._readers:
            with contextlib.suppress(RuntimeError):  # closed already by its user
                consumer.close()
        for sender in self._producers.values():
            try:
                unconfirmed = len(sender)
                if unconfirmed:
                    log.warning("closing a producer holding %d unconfirmed record(s): purged, they may or may not "
                                "have been written", unconfirmed)
                    sender.purge()
                    sender.poll(0)
                sender.close()
            except KafkaException as error:
                # A producer in a fatal state (a fenced transactional one) can neither purge nor abort;
                # the error that put it there is the one its user reports. Dropped, it is destroyed all the same.
                log.debug("closing a producer: %s", error)
        self._readers.clear()
        self._producers.clear()
        self._admin = None

    def __enter__(self) -> KafkaSession:
        return self._open()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def kafka_session(settings: KafkaSettings, shared: KafkaSession | None = None) -> Iterator[KafkaSession]:
    """``shared`` when a caller passes its session along (its owner closes it), else a session of
    its own, closed on leaving: a tool that is also a step of another tool opens no second clients."""
    if shared is not None:
        yield shared
        return
    with KafkaSession(settings) as session:
        yield session


# -- producing and confirming --------------------------------------------------------------------


@dataclass(frozen=True)
class OutgoingRecord:
    """A record to produce; records of one key go to one partition (the default partitioner)."""

    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


class ProduceFailed(KafkaException):
    """Records Kafka refused or did not confirm before the deadline. The message names the topic
    and says which of the records may have been written all the same. The KafkaError keeps the
    cause's code (a fenced transactional producer stays recognisable) but is never flagged
    retriable: producing the records again could write them twice."""

    def __init__(self, cause: KafkaError, topic: str, detail: str) -> None:
        super().__init__(KafkaError(cause.code(), f"producing to {topic}: {detail}", fatal=cause.fatal(),
                                    retriable=False, txn_requires_abort=cause.txn_requires_abort()))
        self.topic = topic


# Delivery reports of records produce_and_confirm took back from the producer itself.
_PURGED = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)


def _keep_report(reports: list[tuple[KafkaError | None, Message] | None], index: int,
                 error: KafkaError | None, message: Message) -> None:
    reports[index] = (error, message)


def produce_and_confirm(sender: Producer, records: Sequence[OutgoingRecord], *, deadline: float,
                        known_topics: Collection[str] = ()) -> list[Message]:
    """Produce ``records`` and wait until Kafka confirms each one, before ``deadline``
    (time.monotonic()); the records as written (partition, offset, timestamp), in order.

    A record counts as written only once its delivery report says so; otherwise ProduceFailed,
    naming the topic and what became of the records:

    - a topic that does not exist fails before anything is produced. Topics not in ``known_topics``
      are looked up first with one metadata request for all topics, which creates none: librdkafka
      would otherwise hold the records for topic.metadata.propagation.max.ms (30 s) before failing
      them, and a producer allowed to would have the broker create the topic;
    - a record refused (by the producer or the broker) fails with the refusal; records confirmed
      before it stay written (inside a transaction, the caller's abort removes them);
    - records unconfirmed at the deadline are purged from the producer's queue, so those never
      sent are never written; those already sent may still be, and the message says how many.

    Nothing is produced twice: the only retries are the idempotent producer's own, which the broker
    deduplicates. The whole producer is waited on (its delivery reports served, its queue purged at
    the deadline): one producer, one writer at a time (KafkaSession.producer gives a tool its own).
    """
    if not records:
        return []
    started = time.monotonic()
    _require_topics(sender, records, known_topics, deadline)
    reports: list[tuple[KafkaError | None, Message] | None] = [None] * len(records)
    produced = 0
    refusal: KafkaError | None = None
    for index, record in enumerate(records):
        options: dict[str, Any] = {"headers": list(record.headers)} if record.headers else {}
        try:
            while True:
                try:
                    sender.produce(record.topic, record.value, record.key,
                                   on_delivery=functools.partial(_keep_report, reports, index), **options)
                    break
                except BufferError:
                    # The producer's queue is full (queue.buffering.max.*): deliveries make room.
                    if time.monotonic() >= deadline:
                        raise KafkaException(KafkaError(KafkaError._QUEUE_FULL)) from None
                    sender.poll(0.05)
        except KafkaException as error:
            refusal = error.args[0] if error.args and isinstance(error.args[0], KafkaError) else KafkaError(
                KafkaError._FAIL, str(error))
            break
        produced += 1
        _serve(sender.poll, 0)  # serves the reports that came in, so they do not pile up over a long batch
    # A producer in a fatal state (fenced, say) confirms nothing more: waiting would only use up the deadline.
    fatal = refusal is not None and (refusal.fatal() or refusal.code() == KafkaError._FATAL)
    _serve(sender.flush, 0 if fatal else max(0.0, deadline - time.monotonic()))
    if any(report is None for report in reports[:produced]):
        # Records still queued are never sent; those in flight are left to their fate (and counted as
        # such), unless the producer is in a fatal state and can deliver nothing more.
        with contextlib.suppress(KafkaException):  # a producer in a fatal state may refuse this too
            sender.purge(in_queue=True, in_flight=fatal, blocking=True)
        sender.poll(0)  # serves the purged records' reports
    total = len(records)
    confirmed = sum(1 for report in reports if report is not None and report[0] is None)
    failed = [(index, report[0]) for index, report in enumerate(reports) if report is not None and report[0] is not None
              and report[0].code() not in _PURGED]
    if failed:
        index, error = failed[0]
        raise ProduceFailed(error, records[index].topic, f"{len(failed)} of {total} record(s) refused: {error.str()}"
                                                         f"; {confirmed} confirmed written")
    if refusal is not None:
        raise ProduceFailed(refusal, records[produced].topic,
                            f"record {produced + 1} of {total} refused by the producer: {refusal.str()}; "
                            f"{confirmed} of the {produced} before it confirmed written, none after it produced")
    unconfirmed = [index for index, report in enumerate(reports) if report is None or report[0] is not None]
    if unconfirmed:
        in_flight = sum(1 for index in unconfirmed if reports[index] is None)
        raise ProduceFailed(KafkaError(KafkaError._TIMED_OUT), records[unconfirmed[0]].topic,
                            f"{len(unconfirmed)} of {total} record(s) not confirmed within "
                            f"{time.monotonic() - started:.1f}s: {len(unconfirmed) - in_flight} never sent "
                            f"(not written), {in_flight} sent and may or may not have been written")
    return [report[1] for report in reports]  # type: ignore[index]


def _serve(call: Callable[[float], Any], timeout: float) -> None:
    """``sender.poll`` or ``sender.flush``, raising a producer's fatal error (fenced by a newer
    transactional producer, say) as the KafkaException it is: confluent-kafka (2.16) raises it inside
    the delivery callbacks the call serves, which Python then reports as a SystemError caused by it."""
    try:
        call(timeout)
    except SystemError as error:
        if isinstance(error.__cause__, KafkaException):
            raise error.__cause__ from None
        raise


def _require_topics(sender: Producer, records: Sequence[OutgoingRecord], known_topics: Collection[str],
                    deadline: float) -> None:
    wanted = sorted({record.topic for record in records} - set(known_topics))
    if not wanted:
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise ProduceFailed(KafkaError(KafkaError._TIMED_OUT), wanted[0], "no time left to look the topic up; "
                                                                          "nothing written")
    try:
        # All topics, not the wanted ones by name: a request naming a topic may have the broker create it.
        listed = sender.list_topics(timeout=left).topics
    except KafkaException as error:
        cause = error.args[0] if error.args and isinstance(error.args[0], KafkaError) else KafkaError(KafkaError._FAIL)
        raise ProduceFailed(cause, wanted[0], f"could not look the topic up ({cause.str()}); "
                                              f"none of the {len(records)} record(s) written") from error
    missing = [topic for topic in wanted if topic not in listed]
    if missing:
        raise ProduceFailed(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART), missing[0],
                            f"the topic does not exist; none of the {len(records)} record(s) written")


# -- reading the cluster in batches (the exporter and the operator tools both need these) ---------

Partition = tuple[str, int]  # (topic, partition)
T = TypeVar("T")

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
GROUP_STATES = tuple(GROUP_STATE_NAMES.values())  # every state group_state_name() gives, in Kafka's order


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

    def merged(self, other: Watermarks) -> Watermarks:
        """These and ``other``'s, of other partitions."""
        return Watermarks(self.high | other.high, self.low | other.low, self.errors | other.errors)


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


@dataclass(frozen=True)
class TopicOffsets:
    """Offsets of some partitions of one topic: two parallel arrays, sorted by partition.

    A thousand consumer groups committing on a thousand partitions each are a million offsets; as
    ``{(topic, partition): offset}`` entries they cost about 150 bytes each, as arrays 12, and they
    pickle (to and from the exporter's group reader process) as two blocks of bytes.
    """

    partitions: array  # of 'i'
    offsets: array  # of 'q'

    def __len__(self) -> int:
        return len(self.partitions)

    def items(self) -> Iterator[tuple[int, int]]:
        return zip(self.partitions, self.offsets, strict=True)


def offsets_by_topic(entries: Iterable[tuple[str, int, int]]) -> dict[str, TopicOffsets]:
    """(topic, partition, offset) entries as TopicOffsets per topic, topics and partitions sorted."""
    per_topic: dict[str, list[tuple[int, int]]] = {}
    for topic, partition, offset in entries:
        per_topic.setdefault(topic, []).append((partition, offset))
    found = {}
    for topic in sorted(per_topic):
        pairs = sorted(per_topic[topic])
        found[topic] = TopicOffsets(array("i", [p for p, _ in pairs]), array("q", [o for _, o in pairs]))
    return found


def fetch_committed_offsets(admin: AdminClient, groups: Iterable[str], request_timeout: float,
                            concurrency: int, *, deadline: float | None = None,
                            ) -> dict[str, dict[Partition, int] | BaseException]:
    """Every committed offset of every group, or the error met for that group.

    librdkafka answers one group per OffsetFetch request, so requests are kept ``concurrency`` in
    flight at a time: fast for hundreds of groups without flooding the coordinators. Partitions
    without a committed offset are not in the result. When ``deadline`` (time.monotonic()) passes,
    the groups not answered by then get a TimeoutError: the whole call is bounded, not each round.
    """
    return _fetch_committed(admin, groups, request_timeout, concurrency, deadline,
                            lambda found: {(topic, partition): offset for topic, partition, offset in found})


def fetch_committed_offsets_by_topic(admin: AdminClient, groups: Iterable[str], request_timeout: float,
                                     concurrency: int, *, deadline: float | None = None,
                                     ) -> dict[str, dict[str, TopicOffsets] | BaseException]:
    """``fetch_committed_offsets``, each group's answer kept as TopicOffsets per topic (compact: for
    the exporter, which reads every group of the cluster on every refresh)."""
    return _fetch_committed(admin, groups, request_timeout, concurrency, deadline, offsets_by_topic)


def _fetch_committed(admin: AdminClient, groups: Iterable[str], request_timeout: float, concurrency: int,
                     deadline: float | None, keep: Callable[[Iterator[tuple[str, int, int]]], T],
                     ) -> dict[str, T | BaseException]:
    pending = deque(groups)
    in_flight: dict[Future, str] = {}
    results: dict[str, T | BaseException] = {}
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
            results[group] = keep((tp.topic, tp.partition, tp.offset) for tp in answer.topic_partitions
                                  if tp.offset >= 0 and tp.error is None)
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
