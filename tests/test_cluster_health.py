"""Kafka cluster health (the exporter's ``rpk cluster health``) on a real 3-broker cluster.

One broker is stopped under a topic replicated three times: the exporter must see two brokers,
one down, under-replicated partitions and an unhealthy cluster; started again, all recovers.
The same stop leaves a pipeline topic with one replica per partition without the leader of one of
its partitions: the pipeline counters summed over its partitions must not go backwards meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic

from devkafka import KafkaCluster
from exporter.kafka_source import KafkaSource
from exporter.metrics import Part
from pipeline.config import Config, parse_config
from pipeline.kafka import result_of

# Stopped brokers are noticed within devkafka's 6 s session timeout; this leaves room on a busy box.
CHANGE_DEADLINE = 60.0


@pytest.fixture(scope="module")
def topic(kafka_cluster3: KafkaCluster) -> str:
    name = "health.replicated.v1"
    admin = kafka_cluster3.admin()  # kept referenced: a collected client cancels its futures
    futures = admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=3)])
    result_of(futures[name], 30)
    kafka_cluster3.wait_until(lambda: _cluster_values(_gather(kafka_cluster3)).get(
        ("kafka_topic_under_replicated_partitions", (name,))) == 0, CHANGE_DEADLINE, "topic fully replicated")
    return name


def _config(cluster: KafkaCluster) -> Config:
    return parse_config({"env": "health", "kafka": {"bootstrap_servers": cluster.bootstrap_servers,
                                                    "request_timeout_seconds": 5}}, source="test", environ={})


@pytest.fixture(scope="module")
def request_topic(kafka_cluster3: KafkaCluster) -> str:
    """The discover stage's request topic, partition p on node p only, with p + 1 records."""
    name = _config(kafka_cluster3).stage("discover").request_topic
    admin = kafka_cluster3.admin()
    replicas = [[node.node_id] for node in kafka_cluster3.nodes]
    result_of(admin.create_topics([NewTopic(name, num_partitions=len(replicas), replication_factor=-1,
                                            replica_assignment=replicas)])[name], 30)
    producer = Producer({"bootstrap.servers": kafka_cluster3.bootstrap_servers})
    for partition in range(len(replicas)):
        for _ in range(partition + 1):
            producer.produce(name, b"{}", partition=partition)
    assert producer.flush(30) == 0
    return name


def _gather(cluster: KafkaCluster) -> dict:
    source = KafkaSource(_config(cluster))
    try:
        return source.gather()
    finally:
        source.close()


def _cluster_values(results: dict) -> dict[tuple[str, tuple[str, ...]], float]:
    samples = results[Part.KAFKA_CLUSTER]
    if isinstance(samples, BaseException):
        return {}
    return {(s.metric.name, s.labels): s.value for s in samples}


def _await_values(cluster: KafkaCluster, wanted: Callable[[dict], bool], what: str) -> dict:
    """Gather again and again until ``wanted`` holds for the cluster samples; return them."""
    seen: dict = {}

    def holds() -> bool:
        seen.clear()
        seen.update(_cluster_values(_gather(cluster)))
        return bool(seen) and wanted(seen)

    try:
        cluster.wait_until(holds, CHANGE_DEADLINE, what)
    except TimeoutError as error:
        raise AssertionError(f"{error}; last seen {seen}") from None
    return seen


def test_healthy_cluster(kafka_cluster3: KafkaCluster, topic: str) -> None:
    values = _cluster_values(_gather(kafka_cluster3))
    assert values[("kafka_brokers", ())] == 3
    assert values[("kafka_cluster_brokers_down", ())] == 0
    assert values[("kafka_cluster_controller_known", ())] == 1
    assert values[("kafka_topic_leaderless_partitions", (topic,))] == 0
    assert values[("kafka_topic_under_replicated_partitions", (topic,))] == 0
    assert values[("kafka_cluster_healthy", ())] == 1


def _requested(results: dict) -> float | None:
    samples = results[Part.PIPELINE]
    assert not isinstance(samples, BaseException), samples
    return {s.labels: s.value for s in samples if s.metric.name == "tree_events_requested_total"}.get(("discover",))


def test_stopped_broker_shows_and_recovers(kafka_cluster3: KafkaCluster, topic: str, request_topic: str) -> None:
    # One source for the whole test, as in a running exporter: it remembers the last offsets read.
    pipeline = KafkaSource(_config(kafka_cluster3))
    requested = [_requested(pipeline.gather())]
    assert requested == [1 + 2 + 3]
    kafka_cluster3.stop_node(2)
    try:
        leaderless = _await_values(kafka_cluster3, lambda v: v.get(
            ("kafka_topic_leaderless_partitions", (request_topic,))) == 1, "the request topic's partition 2 leaderless")
        assert leaderless[("kafka_topic_leaderless_partitions", (request_topic,))] == 1
        results = pipeline.gather()
        assert (request_topic, "2") not in {
            s.labels for s in results[Part.KAFKA_TOPICS] if s.metric.name == "kafka_topic_partition_current_offset"}
        # The partition without a leader counts with its last known offset: no drop, no reset.
        requested.append(_requested(results))
        down = _await_values(kafka_cluster3, lambda v: v[("kafka_brokers", ())] == 2
                             and v[("kafka_topic_under_replicated_partitions", (topic,))] > 0,
                             "broker count 2 and under-replicated partitions")
        assert down[("kafka_cluster_brokers_down", ())] == 1
        assert down[("kafka_cluster_healthy", ())] == 0
        assert down[("kafka_cluster_controller_known", ())] == 1  # two of three voters remain
        assert down[("kafka_topic_leaderless_partitions", (topic,))] == 0  # leaders moved away
    finally:
        kafka_cluster3.start_node(2)
    kafka_cluster3.wait_ready(3)
    requested.append(_requested(pipeline.gather()))
    pipeline.close()
    assert requested == [6, 6, 6]
    up = _await_values(kafka_cluster3, lambda v: v[("kafka_cluster_healthy", ())] == 1
                       and v[("kafka_topic_under_replicated_partitions", (topic,))] == 0,
                       "healthy and fully replicated again")
    assert up[("kafka_brokers", ())] == 3
    assert up[("kafka_cluster_brokers_down", ())] == 0
