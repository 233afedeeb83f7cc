"""One metadata pass over the cluster: which topics and partitions exist, the cluster's health, and
the topics' offsets.

The health series mean what ``rpk cluster health`` means by "Healthy": every broker that hosts a
replica is live, every partition has a leader, a controller is known.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from confluent_kafka.admin import ClusterMetadata

from exporter.metrics import (
    KAFKA_BROKERS,
    KAFKA_CLUSTER_BROKERS_DOWN,
    KAFKA_CLUSTER_CONTROLLER_KNOWN,
    KAFKA_CLUSTER_HEALTHY,
    KAFKA_TOPIC_LEADERLESS_PARTITIONS,
    KAFKA_TOPIC_PARTITION_CURRENT_OFFSET,
    KAFKA_TOPIC_PARTITION_OLDEST_OFFSET,
    KAFKA_TOPIC_PARTITIONS,
    KAFKA_TOPIC_UNDER_REPLICATED_PARTITIONS,
    Sample,
)
from pipeline.kafka import Partition, Watermarks


@dataclass(frozen=True)
class PartitionInfo:
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


@dataclass(frozen=True)
class ClusterView:
    brokers: frozenset[int]
    controller_id: int
    topics: dict[str, dict[int, PartitionInfo]]

    @classmethod
    def from_metadata(cls, metadata: ClusterMetadata) -> ClusterView:
        topics = {
            name: {
                pid: PartitionInfo(p.leader, tuple(p.replicas), tuple(p.isrs))
                for pid, p in topic.partitions.items()
            }
            for name, topic in metadata.topics.items()
            if topic.partitions  # a topic the broker does not know comes back empty, with an error
        }
        return cls(frozenset(metadata.brokers), metadata.controller_id, topics)

    def partitions(self, topics: Iterable[str]) -> list[Partition]:
        return [(topic, pid) for topic in topics for pid in sorted(self.topics.get(topic, ()))]

    def selected_topics(self, allowed: Callable[[str], bool], always: Iterable[str]) -> list[str]:
        """Topics passing the filter, plus ``always`` (the pipeline's) where they exist."""
        chosen = {name for name in self.topics if allowed(name)}
        chosen.update(name for name in always if name in self.topics)
        return sorted(chosen)

    def brokers_down(self) -> frozenset[int]:
        """Brokers that partitions name as replicas but the cluster does not report as live."""
        referenced = {replica for partitions in self.topics.values() for info in partitions.values()
                      for replica in info.replicas}
        return frozenset(referenced - self.brokers)


def cluster_samples(view: ClusterView, topics: Iterable[str]) -> list[Sample]:
    """Cluster health; the per-topic counts for ``topics``, the health verdict over every topic."""
    down = view.brokers_down()
    controller_known = view.controller_id >= 0
    samples = [
        KAFKA_BROKERS.sample(len(view.brokers)),
        KAFKA_CLUSTER_BROKERS_DOWN.sample(len(down)),
        KAFKA_CLUSTER_CONTROLLER_KNOWN.sample(1 if controller_known else 0),
    ]
    for topic in topics:
        partitions = view.topics[topic].values()
        leaderless = sum(1 for info in partitions if info.leader < 0)
        under_replicated = sum(1 for info in partitions if len(info.isr) < len(info.replicas))
        samples.append(KAFKA_TOPIC_LEADERLESS_PARTITIONS.sample(leaderless, topic=topic))
        samples.append(KAFKA_TOPIC_UNDER_REPLICATED_PARTITIONS.sample(under_replicated, topic=topic))
    any_leaderless = any(info.leader < 0 for partitions in view.topics.values()
                         for info in partitions.values())
    healthy = not down and not any_leaderless and controller_known
    samples.append(KAFKA_CLUSTER_HEALTHY.sample(1 if healthy else 0))
    return samples


def topic_samples(view: ClusterView, topics: Iterable[str], marks: Watermarks) -> list[Sample]:
    """Partitions and offsets of ``topics``; a partition whose watermarks were not read is left out."""
    samples = []
    for topic in topics:
        partitions = view.topics[topic]
        samples.append(KAFKA_TOPIC_PARTITIONS.sample(len(partitions), topic=topic))
        for partition in sorted(partitions):
            key = (topic, partition)
            if key not in marks.high:
                continue
            labels = (topic, str(partition))
            samples.append(KAFKA_TOPIC_PARTITION_CURRENT_OFFSET.at(labels, marks.high[key]))
            samples.append(KAFKA_TOPIC_PARTITION_OLDEST_OFFSET.at(labels, marks.low[key]))
    return samples
