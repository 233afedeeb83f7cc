"""The Kafka side of the exporter: one pass per refresh gathers every Kafka collector.

Per refresh: one metadata request (topics, partitions, brokers, controller); the consumer groups
(listed, described in batches, committed offsets fetched concurrently with a cap); one ListOffsets
round for the high watermarks and one for the log starts of every partition needed, both in
flight together; one batched read of the record timestamps not already known (lag seconds, the
oldest dead letter); the DLQ tail. Nothing is asked per partition.

Each collector fails on its own: groups that cannot be listed do not take the topic offsets down,
and a DLQ tail that cannot read does not take the pipeline counters down. Without metadata nothing
can be said, so that failure fails them all (the Refresher then serves their last values for the
grace period).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from confluent_kafka import KafkaException

from exporter.dlq_tail import DlqTail
from exporter.kafka_groups import (
    GroupInfo,
    OffsetChangeTracker,
    fetch_groups,
    group_samples,
    lag_positions,
)
from exporter.kafka_metadata import ClusterView, cluster_samples
from exporter.metrics import Collector
from exporter.record_age import Position, RecordTimestamps
from exporter.snapshot import Sample
from pipeline.config import Config
from pipeline.kafka import ClientErrors, Watermarks, admin_client, fetch_watermarks

log = logging.getLogger("treewatch.kafka_source")

Results = dict[Collector, Sequence[Sample] | BaseException]


class KafkaSource:
    name = "kafka"
    collectors = (Collector.KAFKA_CLUSTER, Collector.KAFKA_TOPICS, Collector.KAFKA_GROUPS,
                  Collector.PIPELINE, Collector.DLQ)

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._timeout = config.kafka.request_timeout_seconds
        self._client_errors = ClientErrors()
        self._admin = admin_client(config.kafka, error_cb=self._client_errors)
        self._offset_changes = OffsetChangeTracker()
        self._record_times = RecordTimestamps(config.kafka, read_timeout_seconds=self._timeout)
        self._dlq = DlqTail(config.kafka, config.stages, read_timeout_seconds=self._timeout)

    def gather(self) -> Results:
        settings = self.config.exporter
        # Serve the client errors queued since the last gather first, so what explains a failure
        # below is only what this gather met.
        self._admin.poll(0)
        self._client_errors.latest = None
        try:
            metadata = self._admin.list_topics(timeout=self._timeout)
        except KafkaException as error:
            self._admin.poll(0)  # serves error_cb: why the client could not reach the cluster
            raise self._client_errors.explain(error) from None
        view = ClusterView.from_metadata(metadata)
        topics = view.selected_topics(settings.topics, self.config.pipeline_topics)
        results: Results = {Collector.KAFKA_CLUSTER: cluster_samples(view, topics)}

        groups: list[GroupInfo] | BaseException
        try:
            groups = fetch_groups(self._admin, settings.groups, self._timeout,
                                  settings.committed_offsets_concurrency)
        except Exception as error:  # the groups' failure is theirs alone
            groups = error
        group_topics = set() if isinstance(groups, BaseException) else {
            topic for info in groups for topic in info.consumed_topics}

        try:
            marks = fetch_watermarks(self._admin, view.partitions(sorted(set(topics) | group_topics)),
                                     self._timeout)
        except Exception as error:  # without watermarks no offset-based series can be told
            for collector in self.collectors[1:]:
                results[collector] = error
            return results

        now = self._clock()
        results[Collector.KAFKA_TOPICS] = self._topic_samples(view, topics, marks)
        results[Collector.PIPELINE] = self._pipeline_samples(view, marks)

        positions = [] if isinstance(groups, BaseException) else lag_positions(groups, marks)
        dlq_partitions = view.partitions(stage.dlq_topic for stage in self.config.stages)
        wanted: list[Position] = [(p.topic, p.partition, p.position) for p in positions if p.lag > 0]
        wanted += [(topic, partition, marks.low[(topic, partition)]) for topic, partition in dlq_partitions
                   if marks.high.get((topic, partition), 0) > marks.low.get((topic, partition), 0)]
        try:
            record_times = self._record_times.lookup(wanted, marks.high)
        except Exception as error:  # ages are left out; the offsets themselves are still true
            log.warning("reading record timestamps failed: %s", error)
            record_times = {}

        if isinstance(groups, BaseException):
            results[Collector.KAFKA_GROUPS] = groups
        else:
            changed_at = self._offset_changes.observe(
                (((info.group, topic, partition), offset) for info in groups
                 for (topic, partition), offset in info.committed.items()), now)
            partition_counts = {topic: len(view.topics[topic]) for topic in group_topics
                                if topic in view.topics}
            results[Collector.KAFKA_GROUPS] = group_samples(groups, positions, partition_counts, changed_at,
                                                            record_times, now)

        try:
            self._dlq.advance(dlq_partitions, marks)
            results[Collector.DLQ] = self._dlq_depth_samples(view, marks, record_times) + self._dlq.samples()
        except Exception as error:  # the tail's failure must not drop the offsets gathered above
            results[Collector.DLQ] = error
        return results

    def close(self) -> None:
        self._record_times.close()
        self._dlq.close()

    # -- per collector ---------------------------------------------------------------------------

    @staticmethod
    def _topic_samples(view: ClusterView, topics: list[str], marks: Watermarks) -> list[Sample]:
        samples = []
        for topic in topics:
            partitions = view.topics[topic]
            samples.append(Sample("kafka_topic_partitions", (topic,), float(len(partitions))))
            for partition in sorted(partitions):
                key = (topic, partition)
                if key not in marks.high:
                    continue
                labels = (topic, str(partition))
                samples.append(Sample("kafka_topic_partition_current_offset", labels, float(marks.high[key])))
                samples.append(Sample("kafka_topic_partition_oldest_offset", labels, float(marks.low[key])))
        return samples

    def _pipeline_samples(self, view: ClusterView, marks: Watermarks) -> list[Sample]:
        """Counts from the high watermarks: every record ever written to a topic is one event."""

        def written(topic: str) -> int | None:
            if topic not in view.topics:
                return None  # not created yet: no series rather than a made-up zero
            return sum(marks.high.get(key, 0) for key in view.partitions([topic]))

        samples = []
        for stage in self.config.stages:
            requested = written(stage.request_topic)
            completed = written(stage.completed_topic)
            failed = written(stage.failed_topic)
            for status, count in (("completed", completed), ("failed", failed)):
                if count is not None:
                    samples.append(Sample("tree_events_processed_total", (stage.name, status), float(count)))
            if requested is not None:
                samples.append(Sample("tree_events_requested_total", (stage.name,), float(requested)))
                in_flight = max(0, requested - (completed or 0) - (failed or 0))
                samples.append(Sample("tree_events_in_flight", (stage.name,), float(in_flight)))
        return samples

    def _dlq_depth_samples(self, view: ClusterView, marks: Watermarks,
                           record_times: Mapping[Position, float]) -> list[Sample]:
        samples = []
        for stage in self.config.stages:
            if stage.dlq_topic not in view.topics:
                continue
            labels = (stage.name, stage.dlq_topic)
            retained = 0
            oldest: float | None = None
            for topic, partition in view.partitions([stage.dlq_topic]):
                high, low = marks.high.get((topic, partition)), marks.low.get((topic, partition))
                if high is None or low is None or high <= low:
                    continue
                retained += high - low
                timestamp = record_times.get((topic, partition, low))
                if timestamp is not None and (oldest is None or timestamp < oldest):
                    oldest = timestamp
            samples.append(Sample("tree_dlq_retained_records", labels, float(retained)))
            if oldest is not None:
                samples.append(Sample("tree_dlq_oldest_record_timestamp_seconds", labels, oldest))
        return samples
