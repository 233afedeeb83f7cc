"""The Kafka side of the exporter: one pass per refresh gathers every Kafka collector.

Per refresh: one metadata request (topics, partitions, brokers, controller); the consumer groups
(listed, described in batches, committed offsets fetched concurrently with a cap, all in a child
process of their own: see exporter/group_reader.py); one ListOffsets
round for the high watermarks and one for the log starts of every partition needed, both in
flight together; one batched read of the record timestamps not already known (lag seconds, the
oldest dead letter); the DLQ tail. Nothing is asked per partition. The whole pass shares one
deadline, so a slow cluster costs one budget per refresh, not one timeout per round of requests,
and a stopping exporter interrupts it between two steps.

Each collector fails on its own: groups that cannot be listed do not take the topic offsets down,
and a DLQ tail that cannot read does not take the pipeline counters down. Without metadata nothing
can be said, so that failure fails them all (the Refresher then serves their last values for the
grace period).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from confluent_kafka import KafkaException

from exporter.dlq_tail import DlqTail
from exporter.group_reader import IsolatedGroupReader
from exporter.kafka_groups import (
    GroupsRead,
    HeldGroups,
    OffsetChangeTracker,
    PartialFailureLog,
    group_samples,
    lag_positions,
)
from exporter.kafka_metadata import ClusterView, cluster_samples
from exporter.metrics import Collector
from exporter.record_age import Lookup, Position, RecordTimestamps
from exporter.snapshot import Sample
from pipeline.config import Config
from pipeline.kafka import ClientErrors, Partition, Watermarks, admin_client, fetch_watermarks

log = logging.getLogger("treewatch.kafka_source")

Results = dict[Collector, Sequence[Sample] | BaseException]

GROUPS_SHARE_OF_BUDGET = 0.7


class GatherInterrupted(Exception):
    """The exporter is stopping: the gather ended between two of its steps."""


class LastKnownWatermarks:
    """Watermarks of the partitions a refresh could not read (no leader, a timeout), taken from the
    last refresh that read them, for up to ``keep_seconds``.

    The pipeline counters are sums over partitions: a partition missing from one refresh would make
    a counter drop, which Prometheus takes for a reset (and increase() for a burst of events).
    Beyond ``keep_seconds`` the partition counts as unknown and the sums that need it are left out.
    """

    def __init__(self, keep_seconds: float) -> None:
        self._keep = keep_seconds
        self._seen: dict[Partition, tuple[int, int, float]] = {}  # (high, low, read at)

    def fill(self, partitions: Iterable[Partition], marks: Watermarks, now: float) -> Watermarks:
        wanted = list(partitions)
        high: dict[Partition, int] = {}
        low: dict[Partition, int] = {}
        for key in wanted:
            if key in marks.high:
                self._seen[key] = (marks.high[key], marks.low.get(key, 0), now)
            entry = self._seen.get(key)
            if entry is not None and now - entry[2] <= self._keep:
                high[key], low[key] = entry[0], entry[1]
        asked = set(wanted)
        self._seen = {key: entry for key, entry in self._seen.items() if key in asked}
        return Watermarks(high, low, {key: error for key, error in marks.errors.items() if key not in high})


class KafkaSource:
    name = "kafka"
    collectors = (Collector.KAFKA_CLUSTER, Collector.KAFKA_TOPICS, Collector.KAFKA_GROUPS,
                  Collector.PIPELINE, Collector.DLQ)

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._timeout = config.kafka.request_timeout_seconds
        # One budget for a whole gather, whatever the number of groups and partitions: a refresh
        # may take the interval, or two request timeouts when those are longer (one for the
        # metadata, one for everything in flight after it).
        self.gather_budget_seconds = max(config.exporter.refresh_interval_seconds, 2 * self._timeout)
        self._client_errors = ClientErrors()
        self._admin = admin_client(config.kafka, error_cb=self._client_errors)
        self._offset_changes = OffsetChangeTracker()
        self._record_times = RecordTimestamps(config.kafka, read_timeout_seconds=self._timeout)
        self._dlq = DlqTail(config.kafka, config.stages, read_timeout_seconds=self._timeout)
        self._pipeline_marks = LastKnownWatermarks(config.exporter.stale_grace_seconds)
        self._group_failures = PartialFailureLog(log)
        self._held_groups = HeldGroups(config.exporter.stale_grace_seconds)
        self._interrupted = threading.Event()
        self._groups = IsolatedGroupReader(config.kafka, config.exporter.groups, self._timeout,
                                           config.exporter.committed_offsets_concurrency,
                                           interrupted=self._interrupted)
        self._groups.start()

    def interrupt(self) -> None:
        """Make a gather in progress end at its next step (called from another thread on stop)."""
        self._interrupted.set()

    def _step(self) -> None:
        if self._interrupted.is_set():
            raise GatherInterrupted("the exporter is stopping")

    def gather(self) -> Results:
        settings = self.config.exporter
        deadline = time.monotonic() + self.gather_budget_seconds
        # Serve the client errors queued since the last gather first, so what explains a failure
        # below is only what this gather met.
        self._admin.poll(0)
        self._client_errors.latest = None
        try:
            metadata = self._admin.list_topics(timeout=self._timeout)
        except KafkaException as error:
            self._admin.poll(0)  # serves error_cb: why the client could not reach the cluster
            raise self._client_errors.explain(error) from None
        self._step()
        view = ClusterView.from_metadata(metadata)
        topics = view.selected_topics(settings.topics, self.config.pipeline_topics)
        results: Results = {Collector.KAFKA_CLUSTER: cluster_samples(view, topics)}

        groups: GroupsRead | BaseException
        try:
            # The groups get most of the budget, not all: a wedged reader must leave time for the
            # watermarks and what follows, or one stuck client would fail every collector.
            read = self._groups.read(time.monotonic() + GROUPS_SHARE_OF_BUDGET * (deadline - time.monotonic()))
            self._group_failures.report(read.errors)
            groups = self._held_groups.fill(read, time.monotonic())
        except Exception as error:  # the groups' failure is theirs alone
            groups = error
        self._step()
        group_topics = set() if isinstance(groups, BaseException) else {
            topic for info in groups.groups for topic in info.consumed_topics}

        try:
            marks = fetch_watermarks(self._admin, view.partitions(sorted(set(topics) | group_topics)),
                                     self._timeout, deadline=deadline)
        except Exception as error:  # without watermarks no offset-based series can be told
            for collector in self.collectors[1:]:
                results[collector] = error
            return results
        self._step()

        now = self._clock()
        pipeline_marks = self._pipeline_marks.fill(view.partitions(self.config.pipeline_topics), marks,
                                                   time.monotonic())
        results[Collector.KAFKA_TOPICS] = self._topic_samples(view, topics, marks)
        results[Collector.PIPELINE] = self._pipeline_samples(view, pipeline_marks)

        positions = [] if isinstance(groups, BaseException) else lag_positions(groups.groups, marks)
        dlq_partitions = view.partitions(stage.dlq_topic for stage in self.config.stages)
        wanted: list[Position] = [(p.topic, p.partition, p.position) for p in positions if p.lag > 0]
        wanted += [(topic, partition, marks.low[(topic, partition)]) for topic, partition in dlq_partitions
                   if marks.high.get((topic, partition), 0) > marks.low.get((topic, partition), 0)]
        try:
            record_times = self._record_times.lookup(wanted, marks.high, deadline)
        except Exception as error:  # ages are left out; the offsets themselves are still true
            log.warning("reading record timestamps failed: %s", error)
            record_times = Lookup({}, frozenset())
        self._step()

        if isinstance(groups, BaseException):
            results[Collector.KAFKA_GROUPS] = groups
        else:
            changed_at = self._offset_changes.observe(
                (((info.group, topic, partition), offset) for info in groups.groups
                 for (topic, partition), offset in info.committed.items()), now)
            partition_counts = {topic: len(view.topics[topic]) for topic in group_topics
                                if topic in view.topics}
            results[Collector.KAFKA_GROUPS] = group_samples(groups, positions, partition_counts, changed_at,
                                                            record_times.timestamps, record_times.only_markers,
                                                            now)

        try:
            self._dlq.advance(dlq_partitions, marks, deadline)
            results[Collector.DLQ] = (self._dlq_depth_samples(view, pipeline_marks, marks, record_times.timestamps)
                                      + self._dlq.samples())
        except Exception as error:  # the tail's failure must not drop the offsets gathered above
            results[Collector.DLQ] = error
        return results

    def close(self) -> None:
        self._groups.close()
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
        """Counts from the high watermarks: every offset written to a topic is one event (a
        transaction's commit marker takes an offset too). ``marks`` holds every partition of the
        pipeline's topics that is known; a stage sum that would need an unknown one is left out."""
        unknown = object()

        def written(topic: str) -> int | None | object:
            if topic not in view.topics:
                return None  # not created yet: no series rather than a made-up zero
            keys = view.partitions([topic])
            if any(key not in marks.high for key in keys):
                return unknown
            return sum(marks.high[key] for key in keys)

        samples = [Sample("tree_pipeline_stage_info", (stage.name, stage.group, stage.request_topic, stage.dlq_topic),
                          1.0) for stage in self.config.stages]
        for stage in self.config.stages:
            requested = written(stage.request_topic)
            completed = written(stage.completed_topic)
            failed = written(stage.failed_topic)
            for status, count in (("completed", completed), ("failed", failed)):
                if isinstance(count, int):
                    samples.append(Sample("tree_events_processed_total", (stage.name, status), float(count)))
            if isinstance(requested, int):
                samples.append(Sample("tree_events_requested_total", (stage.name,), float(requested)))
                if completed is not unknown and failed is not unknown:
                    in_flight = max(0, requested - (completed or 0) - (failed or 0))
                    samples.append(Sample("tree_events_in_flight", (stage.name,), float(in_flight)))
        return samples

    def _dlq_depth_samples(self, view: ClusterView, known: Watermarks, read_now: Watermarks,
                           record_times: Mapping[Position, float]) -> list[Sample]:
        """``known``: watermarks including the last known ones of partitions not read this time;
        ``read_now``: only this refresh's. A stage with a partition unknown gets no depth, and one
        with a partition not read now no oldest timestamp: a part of the DLQ would be a wrong answer."""
        samples = []
        for stage in self.config.stages:
            if stage.dlq_topic not in view.topics:
                continue
            labels = (stage.name, stage.dlq_topic)
            keys = view.partitions([stage.dlq_topic])
            if any(key not in known.high for key in keys):
                continue
            retained = 0
            oldest: float | None = None
            complete = True
            for key in keys:
                high, low = known.high[key], known.low[key]
                if high <= low:
                    continue
                retained += high - low
                if key not in read_now.high:
                    complete = False
                    continue
                timestamp = record_times.get((key[0], key[1], low))
                if timestamp is not None and (oldest is None or timestamp < oldest):
                    oldest = timestamp
            samples.append(Sample("tree_dlq_retained_records", labels, float(retained)))
            if oldest is not None and complete:
                samples.append(Sample("tree_dlq_oldest_record_timestamp_seconds", labels, oldest))
        return samples
