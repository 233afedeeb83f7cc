"""One metadata pass over the cluster: which topics and partitions exist, and the cluster's health.

The health series mean what ``rpk cluster health`` means by "Healthy": every broker that hosts a
replica is live, every partition has a leader, a controller is known.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from confluent_kafka.admin import ClusterMetadata

from exporter.snapshot import Sample
from pipeline.kafka import Partition


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
        Sample("kafka_brokers", (), float(len(view.brokers))),
        Sample("kafka_cluster_brokers_down", (), float(len(down))),
        Sample("kafka_cluster_controller_known", (), 1.0 if controller_known else 0.0),
    ]
    for topic in topics:
        partitions = view.topics[topic].values()
        leaderless = sum(1 for info in partitions if info.leader < 0)
        under_replicated = sum(1 for info in partitions if len(info.isr) < len(info.replicas))
        samples.append(Sample("kafka_topic_leaderless_partitions", (topic,), float(leaderless)))
        samples.append(Sample("kafka_topic_under_replicated_partitions", (topic,), float(under_replicated)))
    any_leaderless = any(info.leader < 0 for partitions in view.topics.values()
                         for info in partitions.values())
    healthy = not down and not any_leaderless and controller_known
    samples.append(Sample("kafka_cluster_healthy", (), 1.0 if healthy else 0.0))
    return samples
