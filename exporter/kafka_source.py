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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaException

from exporter.dlq_tail import DlqTail, depth_samples, log_starts
from exporter.group_reader import IsolatedGroupReader
from exporter.kafka_groups import (
    GroupsRead,
    HeldGroups,
    Lag,
    OffsetChangeTracker,
    PartialFailureLog,
    group_samples,
    lag_positions,
    lags,
)
from exporter.kafka_metadata import ClusterView, cluster_samples, topic_samples
from exporter.metrics import Part, Sample
from exporter.pipeline_counters import LastKnownWatermarks, pipeline_samples
from exporter.record_age import Lookup, Position, RecordTimestamps
from pipeline.config import Config
from pipeline.kafka import ClientErrors, Partition, Watermarks, admin_client, fetch_watermarks

log = logging.getLogger("treewatch.kafka_source")

Results = dict[Part, Sequence[Sample] | BaseException]

GROUPS_SHARE_OF_BUDGET = 0.7


class GatherInterrupted(Exception):
    """The exporter is stopping: the gather ended between two of its steps."""


@dataclass(frozen=True)
class OffsetsRead:
    """What a gather read once it had the watermarks."""

    marks: Watermarks  # this refresh's
    pipeline_marks: Watermarks  # the pipeline topics', the last known ones filling in those not read now
    offsets_changed_at: Mapping[tuple[str, str, int], float]  # (group, topic, partition) -> when it last moved
    group_lags: list[Lag]
    dlq_partitions: list[Partition]
    record_times: Mapping[Position, float]  # at the groups' positions and the DLQs' log starts
    dlq_tail_error: BaseException | None  # why the DLQ tail could not read, if it could not


@dataclass(frozen=True)
class ClusterRead:
    """What one gather read of the cluster; a part that could not be read holds its error, and
    fails only the collectors that need it."""

    view: ClusterView
    topics: list[str]  # the topics whose own series are exposed
    groups: GroupsRead | BaseException
    offsets: OffsetsRead | BaseException  # without watermarks nothing offset-based can be told


class KafkaSource:
    name = "kafka"
    collectors = (Part.KAFKA_CLUSTER, Part.KAFKA_TOPICS, Part.KAFKA_GROUPS, Part.PIPELINE, Part.DLQ)

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
        """Read the cluster, then build each collector's samples from what was read."""
        read = self._read_cluster()
        cluster = cluster_samples(read.view, read.topics)
        offsets, groups, stages = read.offsets, read.groups, self.config.stages
        if isinstance(offsets, BaseException):
            return {Part.KAFKA_CLUSTER: cluster} | dict.fromkeys(self.collectors[1:], offsets)
        return {
            Part.KAFKA_CLUSTER: cluster,
            Part.KAFKA_TOPICS: topic_samples(read.view, read.topics, offsets.marks),
            Part.PIPELINE: pipeline_samples(stages, read.view, offsets.pipeline_marks),
            Part.KAFKA_GROUPS: groups if isinstance(groups, BaseException)
            else group_samples(groups, read.view, offsets.offsets_changed_at, offsets.group_lags),
            Part.DLQ: offsets.dlq_tail_error if offsets.dlq_tail_error is not None
            else depth_samples(stages, offsets.dlq_partitions, offsets.pipeline_marks, offsets.marks,
                               offsets.record_times) + self._dlq.samples(),
        }

    def close(self) -> None:
        self._groups.close()
        self._record_times.close()
        self._dlq.close()

    # -- reading, one step after the other -------------------------------------------------------

    def _read_cluster(self) -> ClusterRead:
        deadline = time.monotonic() + self.gather_budget_seconds
        view = self._read_metadata()
        self._step()
        topics = view.selected_topics(self.config.exporter.topics, self.config.pipeline_topics)
        groups = self._read_groups(deadline)
        self._step()
        group_topics = set() if isinstance(groups, BaseException) else {
            topic for info in groups.groups for topic in info.consumed_topics}
        try:
            marks = fetch_watermarks(self._admin, view.partitions(sorted(set(topics) | group_topics)),
                                     self._timeout, deadline=deadline)
        except Exception as error:  # the watermarks' failure is every offset-based collector's
            return ClusterRead(view, topics, groups, error)
        self._step()
        return ClusterRead(view, topics, groups, self._read_beyond_watermarks(view, groups, marks, deadline))

    def _read_metadata(self) -> ClusterView:
        # Serve the client errors queued since the last gather first, so what explains a failure
        # below is only what this gather met.
        self._admin.poll(0)
        self._client_errors.latest = None
        try:
            metadata = self._admin.list_topics(timeout=self._timeout)
        except KafkaException as error:
            self._admin.poll(0)  # serves error_cb: why the client could not reach the cluster
            raise self._client_errors.explain(error) from None
        return ClusterView.from_metadata(metadata)

    def _read_groups(self, deadline: float) -> GroupsRead | BaseException:
        try:
            # The groups get most of the budget, not all: a wedged reader must leave time for the
            # watermarks and what follows, or one stuck client would fail every collector.
            read = self._groups.read(time.monotonic() + GROUPS_SHARE_OF_BUDGET * (deadline - time.monotonic()))
            self._group_failures.report(read.errors)
            return self._held_groups.fill(read, time.monotonic())
        except Exception as error:  # the groups' failure is theirs alone
            return error

    def _read_beyond_watermarks(self, view: ClusterView, groups: GroupsRead | BaseException, marks: Watermarks,
                                deadline: float) -> OffsetsRead:
        now = self._clock()
        pipeline_marks = self._pipeline_marks.fill(view.partitions(self.config.pipeline_topics), marks,
                                                   time.monotonic())
        read_groups = [] if isinstance(groups, BaseException) else groups.groups
        positions = lag_positions(read_groups, marks)
        dlq_partitions = view.partitions(stage.dlq_topic for stage in self.config.stages)
        wanted = [(p.topic, p.partition, p.position) for p in positions if p.lag > 0]
        try:
            record_times = self._record_times.lookup(wanted + log_starts(dlq_partitions, marks), marks.high, deadline)
        except Exception as error:  # ages are left out; the offsets themselves are still true
            log.warning("reading record timestamps failed: %s", error)
            record_times = Lookup({}, frozenset())
        self._step()
        # Groups not read at all leave the history alone: a stalled consumer must not look as if it
        # had just moved once they are read again.
        changed_at = {} if isinstance(groups, BaseException) else self._offset_changes.observe(
            (((info.group, topic, partition), offset) for info in read_groups
             for (topic, partition), offset in info.committed.items()), now)
        dlq_tail_error = None
        try:
            self._dlq.advance(dlq_partitions, marks, deadline)
        except Exception as error:  # the tail's failure must not drop the offsets gathered above
            dlq_tail_error = error
        return OffsetsRead(marks, pipeline_marks, changed_at, lags(positions, record_times, now), dlq_partitions,
                           record_times.timestamps, dlq_tail_error)
