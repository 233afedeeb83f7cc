"""The Kafka side of the exporter: one pass per refresh gathers every Kafka collector.

Per refresh: one metadata request (topics, partitions, brokers, controller); the consumer groups
(listed, described in batches, committed offsets fetched concurrently with a cap, all in a child
process of their own, see exporter/group_reader.py, while this process reads the watermarks); one
ListOffsets round for the high watermarks and one for the log starts of every partition watched,
both in flight together (and once more for topics only a group consumes); the groups' series built
in arrays per group and topic (exporter/group_series.py); one batched read of the record
timestamps not already known (lag seconds, the oldest dead letter); the DLQ tail. Nothing is asked
per partition. The whole pass shares one deadline, so a slow cluster costs one budget per refresh,
not one timeout per round of requests, and a stopping exporter interrupts it between two steps.

Each collector fails on its own: groups that cannot be listed do not take the topic offsets down,
and a DLQ tail that cannot read does not take the pipeline counters down. Without metadata nothing
can be said, so that failure fails them all (the Refresher then serves their last values for the
grace period).
"""

from __future__ import annotations

import logging
import threading
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaException

from exporter.dlq_tail import DlqTail, depth_samples, log_starts
from exporter.group_reader import IsolatedGroupReader
from exporter.group_series import GroupSeriesBuilder, GroupTopic, OffsetChangeTracker, lagging_positions, topic_lags
from exporter.kafka_groups import GroupsRead, HeldGroups, PartialFailureLog
from exporter.kafka_metadata import ClusterView, cluster_samples, topic_samples
from exporter.metrics import Part
from exporter.pipeline_counters import LastKnownWatermarks, pipeline_samples, stage_info_samples
from exporter.record_age import Lookup, Position, RecordTimestamps
from exporter.sharding import GROUP_SHARD_COLLECTORS, cluster_read_by, groups_read_by, reports_whole_cluster
from exporter.snapshot import Series
from pipeline.config import Config
from pipeline.kafka import ClientErrors, Partition, Watermarks, admin_client, fetch_watermarks

log = logging.getLogger("treewatch.kafka_source")

Results = dict[Part, Sequence[Series] | BaseException]

GROUPS_SHARE_OF_BUDGET = 0.7


class GatherInterrupted(Exception):
    """The exporter is stopping: the gather ended between two of its steps."""


@dataclass(frozen=True)
class OffsetsRead:
    """What a gather read once it had the watermarks."""

    marks: Watermarks  # this refresh's
    pipeline_marks: Watermarks  # the pipeline topics', the last known ones filling in those not read now
    groups_series: list[Series]  # the consumer groups' ([] when they could not be read)
    dlq_partitions: list[Partition]
    record_times: Mapping[Position, float]  # at the DLQs' log starts (and the groups' positions)
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
    # Every collector, as shard 0 (or an unsharded exporter) runs them; another shard runs fewer.
    collectors: tuple[Part, ...] = (Part.KAFKA_CLUSTER, Part.KAFKA_TOPICS, Part.KAFKA_GROUPS, Part.PIPELINE, Part.DLQ)

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time) -> None:
        # A shard other than 0 reads and tells only its groups, and the stages they are joined to.
        self.config = cluster_read_by(config)
        self._whole_cluster = reports_whole_cluster(config.exporter.shard)
        self.collectors = KafkaSource.collectors if self._whole_cluster else GROUP_SHARD_COLLECTORS
        self._stage_info = stage_info_samples(config.stages)
        self._clock = clock
        self._timeout = config.kafka.request_timeout_seconds
        # One budget for a whole gather, whatever the number of groups and partitions: a refresh
        # may take the interval, or two request timeouts when those are longer (one for the
        # metadata, one for everything in flight after it).
        self.gather_budget_seconds = max(config.exporter.refresh_interval_seconds, 2 * self._timeout)
        self._client_errors = ClientErrors()
        self._admin = admin_client(config.kafka, error_cb=self._client_errors)
        self._offset_changes = OffsetChangeTracker()
        self._group_series = GroupSeriesBuilder(config.exporter.partition_series)
        self._record_times = RecordTimestamps(config.kafka, read_timeout_seconds=self._timeout)
        self._dlq = DlqTail(config.kafka, config.stages, read_timeout_seconds=self._timeout)
        self._pipeline_marks = LastKnownWatermarks(config.exporter.stale_grace_seconds)
        self._group_failures = PartialFailureLog(log)
        self._held_groups = HeldGroups(config.exporter.stale_grace_seconds)
        self._interrupted = threading.Event()
        self._groups = IsolatedGroupReader(config.kafka, groups_read_by(config.exporter), self._timeout,
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
            return self._told({Part.KAFKA_CLUSTER: cluster} | dict.fromkeys(KafkaSource.collectors[1:], offsets))
        return self._told({
            Part.KAFKA_CLUSTER: cluster,
            Part.KAFKA_TOPICS: topic_samples(read.view, read.topics, offsets.marks),
            Part.PIPELINE: pipeline_samples(stages, read.view, offsets.pipeline_marks),
            Part.KAFKA_GROUPS: groups if isinstance(groups, BaseException)
            else offsets.groups_series,
            Part.DLQ: offsets.dlq_tail_error if offsets.dlq_tail_error is not None
            else depth_samples(stages, offsets.dlq_partitions, offsets.pipeline_marks, offsets.marks,
                               offsets.record_times) + self._dlq.samples(),
        })

    def _told(self, results: Results) -> Results:
        """What this exporter tells of a gather: all of it, or its shard's groups and the stages."""
        if self._whole_cluster:
            return results
        return {Part.KAFKA_GROUPS: results[Part.KAFKA_GROUPS], Part.PIPELINE: self._stage_info}

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
        # The groups are read in the reader process while this one reads the topics' watermarks:
        # at ten thousand partitions and a thousand groups, each takes about a second.
        # The groups get most of the budget, not all: a wedged reader must leave time for what
        # follows, or one stuck client would fail every collector.
        self._groups.begin(time.monotonic() + GROUPS_SHARE_OF_BUDGET * (deadline - time.monotonic()))
        try:
            marks: Watermarks | BaseException = fetch_watermarks(self._admin, view.partitions(sorted(topics)),
                                                                 self._timeout, deadline=deadline)
        except Exception as error:  # the watermarks' failure is every offset-based collector's
            marks = error
        groups = self._read_groups()
        self._step()
        # A group's lag needs the watermarks of every topic it consumes, exposed or not.
        unread = sorted({topic for info in groups.groups for topic in info.consumed_topics} - set(topics)) \
            if not isinstance(groups, BaseException) else []
        if unread and not isinstance(marks, BaseException):
            try:
                marks = marks.merged(fetch_watermarks(self._admin, view.partitions(unread), self._timeout,
                                                      deadline=deadline))
            except Exception as error:
                marks = error
        if isinstance(marks, BaseException):
            return ClusterRead(view, topics, groups, marks)
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

    def _read_groups(self) -> GroupsRead | BaseException:
        try:
            read = self._groups.answer()
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
        lags = topic_lags(read_groups, marks)
        dlq_partitions = view.partitions(stage.dlq_topic for stage in self.config.stages)
        wanted = lagging_positions(lags)
        wanted.update(log_starts(dlq_partitions, marks))
        try:
            record_times = self._record_times.lookup(wanted, marks.high, deadline)
        except Exception as error:  # ages are left out; the offsets themselves are still true
            log.warning("reading record timestamps failed: %s", error)
            record_times = Lookup({}, frozenset())
        self._step()
        # Groups not read at all leave the history alone: a stalled consumer must not look as if it
        # had just moved once they are read again.
        changed_at: Mapping[GroupTopic, array] = {} if isinstance(groups, BaseException) else (
            self._offset_changes.observe(read_groups, now))
        groups_series = [] if isinstance(groups, BaseException) else self._group_series.samples(
            groups, view, lags, record_times, changed_at, now)
        dlq_tail_error = None
        try:
            self._dlq.advance(dlq_partitions, marks, deadline)
        except Exception as error:  # the tail's failure must not drop the offsets gathered above
            dlq_tail_error = error
        return OffsetsRead(marks, pipeline_marks, groups_series, dlq_partitions, record_times.timestamps,
                           dlq_tail_error)
