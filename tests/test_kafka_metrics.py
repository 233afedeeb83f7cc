"""The exporter's Kafka metrics against a real broker, checked partition by partition against the
truth the test itself wrote: records with known partitions, keys and timestamps, offsets a real
consumer group committed, dead letters of known kinds (malformed ones included).

The source's clock is fixed per gather, so lag in seconds is compared exactly with "now minus the
timestamp the test gave the record" instead of within a timing tolerance.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import NewTopic
from prometheus_client.parser import text_string_to_metric_families

from devkafka import KafkaCluster, free_port
from exporter.app import build_exporter
from exporter.dlq_tail import KNOWN_ERROR_TYPES, DlqTail
from exporter.group_series import GroupSeriesBuilder, OffsetChangeTracker
from exporter.kafka_groups import GroupInfo, GroupsRead, PartialFailureLog
from exporter.kafka_metadata import ClusterView, PartitionInfo
from exporter.kafka_source import GatherInterrupted, KafkaSource
from exporter.metrics import GROUP_STATES, KAFKA_BROKERS, METRICS, TREEWATCH_COLLECTOR_SUCCESS, Part, SeriesBlock
from exporter.pipeline_counters import LastKnownWatermarks, pipeline_samples
from exporter.record_age import Lookup
from exporter.refresh import Refresher
from exporter.settings import PartitionSeries
from exporter.snapshot import Sample, unfolded
from pipeline.config import Config, parse_config
from pipeline.kafka import (
    READER_GROUP_ID,
    Watermarks,
    admin_client,
    fetch_committed_offsets,
    fetch_watermarks,
    offsets_by_topic,
)

KAFKA_COLLECTORS = ("kafka_cluster", "kafka_topics", "kafka_groups", "pipeline", "dlq")
# Record timestamps a few minutes in the past: old enough to give a visible age, young enough that
# the broker's 7-day time retention never deletes them during the test.
BASE_MS = int(time.time() * 1000) - 10 * 60 * 1000


class FixedClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_config(kafka: KafkaCluster, unique: str, **exporter: object) -> Config:
    """Default stages under a unique env (so no other test's topics count), plus the groups and
    topics filters narrowed to this test's names."""
    return parse_config({
        "env": f"t{unique}",
        "kafka": {"bootstrap_servers": kafka.bootstrap_servers, "request_timeout_seconds": 10},
        "services": {},
        "exporter": {"groups": {"allow": [f".*{unique}.*"]}, "topics": {"allow": [f".*{unique}.*"]},
                     **exporter},
    }, source=f"test-{unique}")


def create_topics(kafka: KafkaCluster, partitions: dict[str, int]) -> None:
    admin = kafka.admin()
    futures = admin.create_topics([NewTopic(name, count, 1) for name, count in partitions.items()])
    for future in futures.values():
        future.result(timeout=30)
    def created() -> bool:
        return all(len(admin.list_topics(topic=name, timeout=5).topics[name].partitions) == count
                   for name, count in partitions.items())

    kafka.wait_until(created, timeout=30, what="topics to exist")


def produce(kafka: KafkaCluster, records: list[tuple[str, int, bytes, bytes, int]]) -> None:
    """(topic, partition, key, value, timestamp ms) in order; waits until every one is written."""
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "enable.idempotence": True})
    failures: list[str] = []
    for topic, partition, key, value, timestamp in records:
        producer.produce(topic, value, key=key, partition=partition, timestamp=timestamp,
                         on_delivery=lambda err, _msg: failures.append(str(err)) if err else None)
    assert producer.flush(30) == 0
    assert not failures


def values(results: dict, collector: Part, metric: str) -> dict[tuple[str, ...], float]:
    gathered = results[collector]
    assert not isinstance(gathered, BaseException), f"{collector.value} failed: {gathered!r}"
    return {s.labels: s.value for s in unfolded(gathered) if s.metric.name == metric}


def group_values(results: dict, metric: str) -> dict[tuple[str, ...], float]:
    return values(results, Part.KAFKA_GROUPS, metric)


def gather_until(source: KafkaSource, condition: Callable[[dict], bool], what: str,
                 timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        results = source.gather()
        if condition(results):
            return results
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last results: {results}")
        time.sleep(0.3)


@pytest.fixture
def source_factory() -> Iterator[Callable[..., KafkaSource]]:
    sources: list[KafkaSource] = []

    def make(config: Config, clock: Callable[[], float] = time.time) -> KafkaSource:
        sources.append(KafkaSource(config, clock=clock))
        return sources[-1]

    yield make
    for source in sources:
        source.close()


def group_consumer(kafka: KafkaCluster, group: str, topics: list[str], expected_partitions: int) -> Consumer:
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.subscribe(topics)
    deadline = time.monotonic() + 30
    while len(consumer.assignment()) < expected_partitions:
        assert time.monotonic() < deadline, "the consumer was never assigned its partitions"
        consumer.poll(0.2)
    return consumer


def test_group_lag_offsets_ages_and_state_partition_by_partition(kafka, unique, source_factory):
    orders, audit = f"orders-{unique}", f"audit-{unique}"
    group = f"billing-{unique}"
    create_topics(kafka, {orders: 3, audit: 2})
    # Partition p of orders gets 4 + p records; record i of partition p is stamped BASE + p*100 s + i s.
    timestamps = {p: [BASE_MS + p * 100_000 + i * 1000 for i in range(4 + p)] for p in range(3)}
    produce(kafka, [(orders, p, f"key-{p}-{i}".encode(), f"value-{p}-{i}".encode(), ts)
                    for p, stamps in timestamps.items() for i, ts in enumerate(stamps)])
    produce(kafka, [(audit, p, b"k", b"v", BASE_MS) for p in range(2)])

    consumer = group_consumer(kafka, group, [orders, audit], expected_partitions=5)
    committed = {0: 1, 1: 5}  # partition 2 of orders and both of audit: never committed
    consumer.commit(offsets=[TopicPartition(orders, p, o) for p, o in committed.items()], asynchronous=False)

    clock = FixedClock(time.time())
    source = source_factory(make_config(kafka, unique), clock)
    results = gather_until(
        source, lambda r: group_values(r, "kafka_consumer_group_state").get((group, "Stable")) == 1,
        "the group to be Stable")

    high = {p: len(stamps) for p, stamps in timestamps.items()}
    lag = group_values(results, "kafka_consumer_group_lag")
    assert lag == {(group, orders, str(p)): high[p] - offset for p, offset in committed.items()}
    assert lag[(group, orders, "0")] == 3 and lag[(group, orders, "1")] == 0
    assert group_values(results, "kafka_consumer_group_committed_offset") == {
        (group, orders, str(p)): offset for p, offset in committed.items()}
    ages = group_values(results, "kafka_consumer_group_lag_seconds")
    assert ages == {
        # the oldest unconsumed record of partition 0 is the one at the committed offset, 1
        (group, orders, "0"): pytest.approx(clock.now - timestamps[0][1] / 1000),
        (group, orders, "1"): 0.0,  # nothing unconsumed
    }
    assert group_values(results, "kafka_consumer_group_uncommitted_partitions") == {
        (group, orders): 1, (group, audit): 2}
    assert group_values(results, "kafka_consumer_group_members") == {(group,): 1}
    assert group_values(results, "kafka_consumer_group_read_errors") == {(): 0}
    states = group_values(results, "kafka_consumer_group_state")
    assert states == {(group, state): (1 if state == "Stable" else 0) for state in GROUP_STATES}
    first_seen = clock.now
    assert values(results, Part.KAFKA_GROUPS,
                  "kafka_consumer_group_committed_offset_change_timestamp_seconds") == {
        (group, orders, "0"): first_seen, (group, orders, "1"): first_seen}
    # The topic series, from the same watermarks.
    assert values(results, Part.KAFKA_TOPICS, "kafka_topic_partition_current_offset") == {
        **{(orders, str(p)): n for p, n in high.items()}, (audit, "0"): 1, (audit, "1"): 1}
    assert values(results, Part.KAFKA_TOPICS, "kafka_topic_partitions") == {(orders,): 3, (audit,): 2}

    # The group moves partition 0 on; only that partition's change time moves with it.
    consumer.commit(offsets=[TopicPartition(orders, 0, 3)], asynchronous=False)
    clock.now += 60
    results = gather_until(
        source, lambda r: group_values(r, "kafka_consumer_group_committed_offset")
        .get((group, orders, "0")) == 3, "the new commit to be seen")
    assert group_values(results, "kafka_consumer_group_lag")[(group, orders, "0")] == 1
    assert group_values(results, "kafka_consumer_group_lag_seconds")[(group, orders, "0")] == \
        pytest.approx(clock.now - timestamps[0][3] / 1000)
    assert values(results, Part.KAFKA_GROUPS,
                  "kafka_consumer_group_committed_offset_change_timestamp_seconds") == {
        (group, orders, "0"): clock.now, (group, orders, "1"): first_seen}

    # The consumer leaves: the group is Empty with no members; its commits and lag remain.
    consumer.close()
    results = gather_until(
        source, lambda r: group_values(r, "kafka_consumer_group_state").get((group, "Empty")) == 1,
        "the group to be Empty")
    assert group_values(results, "kafka_consumer_group_members") == {(group,): 0}
    assert group_values(results, "kafka_consumer_group_lag") == {
        (group, orders, "0"): 1, (group, orders, "1"): 0}
    # No member is assigned audit any more and it has no commit: the group no longer consumes it.
    assert group_values(results, "kafka_consumer_group_uncommitted_partitions") == {
        (group, orders): 1}


def test_dlq_depth_age_error_types_and_pipeline_counters(kafka, unique, source_factory):
    config = make_config(kafka, unique, topics={"allow": ["^nothing-matches-this$"]})
    stage = config.stage("stamp")
    other = f"unrelated-{unique}"
    create_topics(kafka, {stage.request_topic: 2, stage.completed_topic: 2, stage.failed_topic: 1,
                          stage.dlq_topic: 2, other: 1})

    def letter(error_type: str | None) -> bytes:
        body = {"original_topic": stage.request_topic,
                "original_payload": {"payload": {"correlation_id": "c"}}, "error_message": "boom"}
        if error_type is not None:
            body["error_type"] = error_type
        return json.dumps(body).encode()

    # (partition, value, timestamp): two malformed records, one dead letter naming no error_type.
    dead_letters = [
        (0, letter("FILE_NOT_FOUND"), BASE_MS + 5_000),
        (0, letter("FILE_NOT_FOUND"), BASE_MS + 6_000),
        (0, b"\xff\xfe not utf-8 at all", BASE_MS + 7_000),
        (1, letter("ENCODING_ERROR"), BASE_MS + 2_000),
        (1, b"{not json", BASE_MS + 3_000),
        (1, letter("FILE_NOT_FOUND"), BASE_MS + 4_000),
        (1, letter(None), BASE_MS + 8_000),
    ]
    produce(kafka, [(stage.dlq_topic, p, None, value, ts) for p, value, ts in dead_letters])
    produce(kafka, [(stage.request_topic, i % 2, b"k", b"{}", BASE_MS) for i in range(7)])
    produce(kafka, [(stage.completed_topic, i % 2, b"k", b"{}", BASE_MS) for i in range(4)])
    produce(kafka, [(stage.failed_topic, 0, b"k", b"{}", BASE_MS) for _ in range(2)])
    produce(kafka, [(other, 0, b"k", b"{}", BASE_MS)])

    results = source_factory(config).gather()
    source = source_factory(config)  # a second exporter starting later (a restart) must say the same
    first = source.gather()
    retained_by_type = {("stamp", "FILE_NOT_FOUND"): 3, ("stamp", "ENCODING_ERROR"): 1,
                        ("stamp", "unparseable"): 2, ("stamp", "UNKNOWN"): 1,
                        ("stamp", "INTELLIGENCE_SERVICE_ERROR"): 0}
    for gathered in (results, first):
        assert values(gathered, Part.PIPELINE, "tree_events_processed_total") == {
            ("stamp", "completed"): 4, ("stamp", "failed"): 2}
        assert values(gathered, Part.PIPELINE, "tree_events_requested_total") == {("stamp",): 7}
        assert values(gathered, Part.PIPELINE, "tree_events_in_flight") == {("stamp",): 1}
        assert values(gathered, Part.DLQ, "tree_dlq_retained_records") == {("stamp", stage.dlq_topic): 7}
        # the oldest retained dead letter: the one at the log start of partition 1
        assert values(gathered, Part.DLQ, "tree_dlq_oldest_record_timestamp_seconds") == {
            ("stamp", stage.dlq_topic): (BASE_MS + 2_000) / 1000}
        assert values(gathered, Part.DLQ, "tree_dlq_retained_records_by_error_type") == retained_by_type
        # The counter counts what is written from now on: a restart does not count the DLQ again.
        assert values(gathered, Part.DLQ, "tree_dlq_records_total") == {
            ("stamp", error_type): 0 for error_type in KNOWN_ERROR_TYPES}
    # The topic filter matches nothing, yet the pipeline's topics are always watched; others are not.
    topics = {labels[0] for labels in values(results, Part.KAFKA_TOPICS, "kafka_topic_partitions")}
    assert topics == {stage.request_topic, stage.completed_topic, stage.failed_topic, stage.dlq_topic}
    # Stages whose topics were never created give no series at all, not zeros.
    processed = values(results, Part.PIPELINE, "tree_events_processed_total")
    assert {labels[0] for labels in processed} == {"stamp"}

    # New dead letters are counted once, by the counter and in what is retained: the tail remembers.
    produce(kafka, [(stage.dlq_topic, 0, None, letter("INTELLIGENCE_SERVICE_ERROR"), BASE_MS + 9_000),
                    (stage.dlq_topic, 1, None, b"", BASE_MS + 9_000)])
    later = source.gather()
    assert values(later, Part.DLQ, "tree_dlq_records_total") == {
        ("stamp", "FILE_NOT_FOUND"): 0, ("stamp", "ENCODING_ERROR"): 0, ("stamp", "unparseable"): 1,
        ("stamp", "INTELLIGENCE_SERVICE_ERROR"): 1}
    assert values(later, Part.DLQ, "tree_dlq_retained_records_by_error_type") == {
        **retained_by_type, ("stamp", "unparseable"): 3, ("stamp", "INTELLIGENCE_SERVICE_ERROR"): 1}
    assert values(later, Part.DLQ, "tree_dlq_retained_records") == {("stamp", stage.dlq_topic): 9}
    again = source.gather()
    assert values(again, Part.DLQ, "tree_dlq_records_total") == values(later, Part.DLQ,
                                                                            "tree_dlq_records_total")

    # Retention removes the three oldest records of partition 1 (ENCODING_ERROR, "{not json" and a
    # FILE_NOT_FOUND): what is retained falls by exactly those; the counter never falls.
    admin = kafka.admin()  # kept referenced: a collected admin client never completes its futures
    for future in admin.delete_records([TopicPartition(stage.dlq_topic, 1, 3)]).values():
        future.result(timeout=30)
    trimmed = source.gather()
    assert values(trimmed, Part.DLQ, "tree_dlq_retained_records_by_error_type") == {
        ("stamp", "FILE_NOT_FOUND"): 2, ("stamp", "ENCODING_ERROR"): 0, ("stamp", "unparseable"): 2,
        ("stamp", "UNKNOWN"): 1, ("stamp", "INTELLIGENCE_SERVICE_ERROR"): 1}
    assert values(trimmed, Part.DLQ, "tree_dlq_retained_records") == {("stamp", stage.dlq_topic): 6}
    assert values(trimmed, Part.DLQ, "tree_dlq_records_total") == values(later, Part.DLQ,
                                                                              "tree_dlq_records_total")
    # The tail reads with assign() only: it never joined, created or committed a consumer group.
    listed = kafka.admin().list_consumer_groups(request_timeout=10).result(timeout=15)
    assert READER_GROUP_ID not in {g.group_id for g in listed.valid}


def test_the_dlq_tail_reads_a_bounded_number_of_records_per_refresh(kafka, unique):
    config = make_config(kafka, unique)
    stage = config.stage("index")
    create_topics(kafka, {stage.dlq_topic: 1})
    letter = json.dumps({"error_type": "FILE_NOT_FOUND"}).encode()
    produce(kafka, [(stage.dlq_topic, 0, None, letter, BASE_MS) for _ in range(7)])
    admin = kafka.admin()
    key = (stage.dlq_topic, 0)
    tail = DlqTail(config.kafka, config.stages, max_records_per_refresh=3, read_timeout_seconds=10)

    def advance() -> tuple[float | None, float]:
        tail.advance([key], fetch_watermarks(admin, [key], 10))
        by_type = {(metric.name, labels): value for metric, labels, value in tail.samples()}
        return (by_type.get(("tree_dlq_retained_records_by_error_type", ("index", "FILE_NOT_FOUND"))),
                by_type[("tree_dlq_records_total", ("index", "FILE_NOT_FOUND"))])

    try:
        # 3 records a refresh: the breakdown appears once all 7 retained at first sight are read.
        seen = [advance() for _ in range(4)]
        produce(kafka, [(stage.dlq_topic, 0, None, letter, BASE_MS) for _ in range(5)])
        seen += [advance() for _ in range(3)]
    finally:
        tail.close()
    assert seen == [(None, 0), (None, 0), (7, 0), (7, 0), (10, 3), (12, 5), (12, 5)]


def test_records_deleted_below_the_committed_offset_keep_lag_true(kafka, unique, source_factory):
    topic, group = f"retained-{unique}", f"slow-{unique}"
    create_topics(kafka, {topic: 1})
    stamps = [BASE_MS + i * 1000 for i in range(10)]
    produce(kafka, [(topic, 0, f"k{i}".encode(), b"v", ts) for i, ts in enumerate(stamps)])
    committer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group,
                          "enable.auto.commit": False})
    committer.commit(offsets=[TopicPartition(topic, 0, 3)], asynchronous=False)
    committer.close()

    clock = FixedClock(time.time())
    source = source_factory(make_config(kafka, unique), clock)
    before = source.gather()
    assert group_values(before, "kafka_consumer_group_lag") == {(group, topic, "0"): 7}

    admin = kafka.admin()
    for future in admin.delete_records([TopicPartition(topic, 0, 6)]).values():
        future.result(timeout=30)
    after = source.gather()
    assert values(after, Part.KAFKA_TOPICS, "kafka_topic_partition_oldest_offset") == {(topic, "0"): 6}
    # Only records 6..9 are left to consume: lag counts from the log start, not from offset 3.
    assert group_values(after, "kafka_consumer_group_lag") == {(group, topic, "0"): 4}
    assert group_values(after, "kafka_consumer_group_committed_offset") == {(group, topic, "0"): 3}
    assert group_values(after, "kafka_consumer_group_lag_seconds") == {
        (group, topic, "0"): pytest.approx(clock.now - stamps[6] / 1000)}

    for future in admin.delete_records([TopicPartition(topic, 0, 10)]).values():
        future.result(timeout=30)
    emptied = source.gather()
    assert group_values(emptied, "kafka_consumer_group_lag") == {(group, topic, "0"): 0}
    assert group_values(emptied, "kafka_consumer_group_lag_seconds") == {(group, topic, "0"): 0}


def test_metrics_endpoint_serves_the_gathered_kafka_series(kafka, unique):
    topic, group = f"served-{unique}", f"served-{unique}"
    create_topics(kafka, {topic: 2})
    produce(kafka, [(topic, p, b"k", b"v", BASE_MS) for p in (0, 1, 1)])
    committer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group,
                          "enable.auto.commit": False})
    committer.commit(offsets=[TopicPartition(topic, 1, 1)], asynchronous=False)
    committer.close()

    exporter = build_exporter(make_config(kafka, unique), port=0).start()
    try:
        assert exporter.refresher.wait_ready(timeout=60)
        response = httpx.get(f"{exporter.url}/metrics", timeout=10)
    finally:
        exporter.stop()
    assert response.status_code == 200
    parsed: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for item in family.samples:
            parsed.setdefault(item.name, {})[tuple(sorted(item.labels.items()))] = item.value
    assert parsed["kafka_consumer_group_lag"] == {
        (("group", group), ("partition", "1"), ("topic", topic)): 1}
    assert parsed["kafka_topic_partition_current_offset"] == {
        (("partition", "0"), ("topic", topic)): 1, (("partition", "1"), ("topic", topic)): 2}
    assert parsed["kafka_consumer_group_uncommitted_partitions"] == {(("group", group), ("topic", topic)): 1}
    for collector in KAFKA_COLLECTORS:
        assert parsed["treewatch_collector_success"][(("collector", collector),)] == 1, collector


def test_unreachable_kafka_fails_every_kafka_collector_without_hanging(unique):
    config = parse_config({"kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}",
                                     "request_timeout_seconds": 1}}, source=f"test-{unique}")
    source = KafkaSource(config)
    refresher = Refresher([source], interval_seconds=60, stale_grace_seconds=0, max_series=1000,
                          build_info={"version": "t", "python_version": "t", "librdkafka_version": "t"})
    try:
        snapshot = refresher.run_once()
    finally:
        refresher.stop()
    assert snapshot.values(TREEWATCH_COLLECTOR_SUCCESS) == {(c,): 0 for c in KAFKA_COLLECTORS}
    assert not snapshot.values(KAFKA_BROKERS)
    status = refresher.collector_status()
    assert all(status[c]["error"] for c in KAFKA_COLLECTORS)


def test_samples_name_only_defined_metrics_with_their_labels(kafka, unique, source_factory):
    results = source_factory(make_config(kafka, unique)).gather()
    for collector, gathered in results.items():
        assert not isinstance(gathered, BaseException), collector
        for item in gathered:
            assert isinstance(item, Sample | SeriesBlock)
            assert item.metric in METRICS, item
            assert item.metric.collector is collector, item
            assert len(item.labels) == len(item.metric.labels), item


def test_offset_change_times_survive_a_refresh_that_missed_the_group():
    tracker = OffsetChangeTracker(forget_after_seconds=600)

    def seen(*offsets: tuple[int, int]) -> list[GroupInfo]:
        return [GroupInfo("g", "Stable", 1, frozenset({"t"}), offsets_by_topic(("t", p, o) for p, o in offsets))]

    def observed(groups: list[GroupInfo], now: float) -> dict[tuple[str, str], list[float]]:
        return {key: list(since) for key, since in tracker.observe(groups, now).items()}

    key = ("g", "t")
    assert observed(seen((0, 5), (1, 3)), now=100.0) == {key: [100.0, 100.0]}
    assert observed(seen((0, 5), (1, 3)), now=115.0) == {key: [100.0, 100.0]}  # unchanged: still the first sight
    assert observed([], now=130.0) == {}  # the group could not be read this time
    assert observed(seen((0, 5), (1, 3)), now=145.0) == {key: [100.0, 100.0]}  # ...which kept its history
    assert observed(seen((0, 9), (1, 3)), now=160.0) == {key: [160.0, 100.0]}  # only partition 0 moved
    assert observed(seen((1, 3), (2, 1)), now=175.0) == {key: [100.0, 175.0]}  # 0 gone, 2 new
    observed([], now=1000.0)  # gone for longer than forget_after: forgotten
    assert observed(seen((0, 9)), now=1015.0) == {key: [1015.0]}


def test_a_transactional_topic_consumed_to_its_end_has_no_lag(kafka, unique, source_factory, caplog):
    """A transaction's commit marker takes the offset after its last record; a consumer that
    commits after that record is "behind" by the marker for ever, though nothing is left to read.
    (treewatch dlq replay writes request topics this way.)"""
    config = make_config(kafka, unique)
    stage = config.stage("discover")
    topic, done, behind = stage.request_topic, f"done-{unique}", f"behind-{unique}"
    create_topics(kafka, {topic: 1})
    stamps = [BASE_MS + i * 1000 for i in range(3)]
    transactional = Producer({"bootstrap.servers": kafka.bootstrap_servers, "transactional.id": f"tx-{unique}"})
    transactional.init_transactions(30)
    transactional.begin_transaction()
    for i, timestamp in enumerate(stamps):
        transactional.produce(topic, b"{}", key=f"k{i}".encode(), partition=0, timestamp=timestamp)
    transactional.commit_transaction(30)
    committer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": done,
                          "enable.auto.commit": False})
    committer.commit(offsets=[TopicPartition(topic, 0, len(stamps))], asynchronous=False)
    committer.close()
    committer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": behind,
                          "enable.auto.commit": False})
    committer.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
    committer.close()

    clock = FixedClock(time.time())
    source = source_factory(config, clock)
    caplog.set_level(logging.WARNING, logger="treewatch")
    for _ in range(2):  # the second answer comes from the cache of "only markers from here"
        results = source.gather()
        high = values(results, Part.KAFKA_TOPICS, "kafka_topic_partition_current_offset")
        assert high == {(topic, "0"): len(stamps) + 1}, "the commit marker takes an offset"
        assert group_values(results, "kafka_consumer_group_lag") == {
            (done, topic, "0"): 0, (behind, topic, "0"): len(stamps) + 1 - 1}
        assert group_values(results, "kafka_consumer_group_lag_seconds") == {
            (done, topic, "0"): 0, (behind, topic, "0"): pytest.approx(clock.now - stamps[1] / 1000)}
        # The counters count offsets: the marker included, as their help says.
        assert values(results, Part.PIPELINE, "tree_events_requested_total") == {
            ("discover",): len(stamps) + 1}
    assert not [r for r in caplog.records if "no record timestamp" in r.getMessage()]


def test_a_partition_missing_from_one_refresh_keeps_the_counters_from_going_backwards():
    """One partition without offsets this time (no leader, a timeout) counts with its last known
    offsets for the grace period, after which the sums that need it are left out, not made smaller."""
    known = LastKnownWatermarks(keep_seconds=60)
    a0, a1 = ("a", 0), ("a", 1)
    first = known.fill([a0, a1], Watermarks({a0: 10, a1: 7}, {a0: 0, a1: 2}, {}), now=100.0)
    assert (first.high, first.low) == ({a0: 10, a1: 7}, {a0: 0, a1: 2})
    missing = Watermarks({a0: 12}, {a0: 0}, {a1: TimeoutError("no leader")})
    during = known.fill([a0, a1], missing, now=130.0)
    assert (during.high, during.low, during.errors) == ({a0: 12, a1: 7}, {a0: 0, a1: 2}, {})
    later = known.fill([a0, a1], missing, now=161.0)
    assert later.high == {a0: 12} and set(later.errors) == {a1}
    assert known.fill([a0], missing, now=162.0).high == {a0: 12}  # a partition no longer asked is forgotten
    assert known.fill([a0, a1], missing, now=163.0).high == {a0: 12}


def test_a_stage_with_an_unknown_partition_leaves_its_sums_out(kafka, unique, source_factory):
    config = make_config(kafka, unique)
    stage = config.stage("index")
    create_topics(kafka, {stage.request_topic: 2, stage.completed_topic: 1, stage.failed_topic: 1})
    produce(kafka, [(stage.request_topic, p, b"k", b"{}", BASE_MS) for p in (0, 1, 1)])
    produce(kafka, [(stage.completed_topic, 0, b"k", b"{}", BASE_MS)])
    source = source_factory(config)
    results = source.gather()
    assert values(results, Part.PIPELINE, "tree_events_requested_total") == {("index",): 3}
    assert values(results, Part.PIPELINE, "tree_events_in_flight") == {("index",): 2}
    # The same view of the cluster, with partition 1 of the request topic and the whole completed
    # topic never read: the sums needing them are left out, the one that does not is still given.
    view = ClusterView.from_metadata(kafka.admin().list_topics(timeout=10))
    partial = Watermarks({(stage.request_topic, 0): 1, (stage.failed_topic, 0): 0},
                         {(stage.request_topic, 0): 0, (stage.failed_topic, 0): 0}, {})
    samples = pipeline_samples(config.stages, view, partial)
    counted = {(s.metric.name, s.labels): s.value for s in samples if s.metric.name != "tree_pipeline_stage_info"}
    assert counted == {("tree_events_processed_total", ("index", "failed")): 0}


def test_a_group_whose_offsets_could_not_be_read_keeps_its_state_and_the_failure_shows(caplog):
    unread = GroupInfo("g", "Stable", 2, frozenset({"t"}), {}, committed_read=False)
    read = GroupsRead([unread], {"list": [], "committed_offsets": [TimeoutError("coordinator slow")]})
    view = ClusterView(frozenset({1}), 1, {"t": dict.fromkeys(range(3), PartitionInfo(1, (1,), (1,)))})
    samples = GroupSeriesBuilder(PartitionSeries()).samples(read, view, [], Lookup({}, frozenset()), {}, 1000.0)
    by_metric: dict[str, dict[tuple[str, ...], float]] = {}
    for item in samples:
        by_metric.setdefault(item.metric.name, {})[item.labels] = item.value
    assert by_metric.pop("kafka_consumer_group_state") == {("g", s): float(s == "Stable") for s in GROUP_STATES}
    assert by_metric.pop("kafka_consumer_group_members") == {("g",): 2}
    assert by_metric.pop("kafka_consumer_group_read_errors") == {(): 1}
    # Nothing is said about its offsets: not "all 3 partitions uncommitted", no lag.
    assert by_metric == {}

    caplog.set_level(logging.INFO, logger="treewatch")
    failures = PartialFailureLog(logging.getLogger("treewatch.test"))
    for _ in range(3):
        failures.report(read.errors)
    failures.report({"list": [KafkaException(KafkaError(KafkaError._TIMED_OUT, "broker 2 down"))]})
    failures.report({})
    failures.report({})
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "treewatch.test"]
    assert [level for level, _ in logged] == [logging.WARNING, logging.WARNING, logging.INFO]
    assert "coordinator slow" in logged[0][1] and "broker 2 down" in logged[1][1]


def test_calls_to_an_unreachable_cluster_end_at_the_gather_deadline(unique):
    """With a 30 s request timeout, per-round waits would take 30 s for each round of groups; the
    shared deadline ends the whole call at 1 s. The bound checked is far from both."""
    settings = parse_config({"kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}"}},
                            source=f"test-{unique}").kafka
    admin = admin_client(settings)
    groups = [f"g{i}-{unique}" for i in range(6)]
    started = time.monotonic()
    answers = fetch_committed_offsets(admin, groups, 30, concurrency=2, deadline=time.monotonic() + 1)
    with pytest.raises((TimeoutError, KafkaException), match="[Tt]imed out|no offsets"):
        fetch_watermarks(admin, [("t", 0)], 30, deadline=time.monotonic() + 1)
    assert time.monotonic() - started < 15
    assert set(answers) == set(groups)
    # Asked before the deadline: librdkafka's own timeout, shortened to it; not asked: ours.
    assert all(isinstance(answer, (TimeoutError, KafkaException)) and "imed out" in str(answer)
               or "before the deadline" in str(answer) for answer in answers.values()), answers


def test_an_interrupted_gather_ends_at_its_next_step(kafka, unique, source_factory):
    source = source_factory(make_config(kafka, unique))
    assert not isinstance(source.gather()[Part.KAFKA_CLUSTER], BaseException)
    source.interrupt()
    with pytest.raises(GatherInterrupted):
        source.gather()


def test_every_detail_tells_the_same_per_topic_lag_and_only_all_tells_everything_per_partition(
        kafka, unique, source_factory):
    """Against a real broker: the per-topic series do not depend on exporter.partition_series, and
    the per-partition ones follow it."""
    orders, group = f"orders-{unique}", f"reports-{unique}"
    create_topics(kafka, {orders: 3})
    produce(kafka, [(orders, p, b"k", b"v", BASE_MS + i * 1000) for p in range(3) for i in range(5)])
    offsets = [TopicPartition(orders, 0, 1), TopicPartition(orders, 1, 5), TopicPartition(orders, 2, 3)]
    admin = kafka.admin()  # held: a client collected while its request is in flight never answers
    admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, offsets)])[group].result(30)

    per_partition = [metric for metric in METRICS if metric.per_partition]
    per_topic = [metric for metric in METRICS if metric.collector is Part.KAFKA_GROUPS and len(metric.labels) == 2
                 and metric.labels[1] == "topic"]
    told: dict[str, dict[str, dict]] = {}
    clock = FixedClock(time.time())
    for detail in ("all", "lag", "none"):
        source = source_factory(make_config(kafka, unique, partition_series={"detail": detail}), clock)
        results = gather_until(source, lambda r: group_values(r, "kafka_consumer_group_topic_lag"),
                               "the group's lag")
        told[detail] = {metric.name: group_values(results, metric.name) for metric in per_partition + per_topic}
    assert told["all"]["kafka_consumer_group_topic_lag"] == {(group, orders): 4 + 0 + 2}
    assert told["all"]["kafka_consumer_group_topic_max_lag"] == {(group, orders): 4}
    assert told["all"]["kafka_consumer_group_topic_partitions_lagging"] == {(group, orders): 2}
    assert told["all"]["kafka_consumer_group_topic_max_lag_seconds"] == {
        (group, orders): pytest.approx(clock() - (BASE_MS + 1000) / 1000)}
    for detail in ("lag", "none"):
        assert {name: told[detail][name] for name in (m.name for m in per_topic)} == {
            name: told["all"][name] for name in (m.name for m in per_topic)}, detail
    assert all(told["all"][metric.name] for metric in per_partition)
    assert told["lag"]["kafka_consumer_group_lag"] == told["all"]["kafka_consumer_group_lag"] == {
        (group, orders, "0"): 4, (group, orders, "1"): 0, (group, orders, "2"): 2}
    assert not any(told["lag"][metric.name] for metric in per_partition if metric.name != "kafka_consumer_group_lag")
    assert not any(told["none"][metric.name] for metric in per_partition)
