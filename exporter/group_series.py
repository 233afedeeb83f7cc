"""The consumer groups' series, built from what was read: their committed offsets, the partitions'
watermarks, the timestamps of the records at the groups' positions, and when each offset last moved.

Per group and topic, always: summed lag, max lag, max lag in seconds, partitions lagging and
uncommitted, and when the stalest lagging partition last moved. Per partition (lag, lag in seconds,
committed offset, when it moved), as ``exporter.partition_series`` says for the group. All in
blocks of arrays (SeriesBlock). Everything here works on arrays per (group, topic), one pass each: at a
million committed group-partitions, objects per partition would cost gigabytes and seconds.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import repeat
from operator import sub

from exporter.kafka_groups import GroupInfo, GroupsRead
from exporter.kafka_metadata import ClusterView
from exporter.metrics import (
    KAFKA_CONSUMER_GROUP_COMMITTED_OFFSET,
    KAFKA_CONSUMER_GROUP_COMMITTED_OFFSET_CHANGE_TIMESTAMP_SECONDS,
    KAFKA_CONSUMER_GROUP_LAG,
    KAFKA_CONSUMER_GROUP_LAG_SECONDS,
    KAFKA_CONSUMER_GROUP_MEMBERS,
    KAFKA_CONSUMER_GROUP_READ_ERRORS,
    KAFKA_CONSUMER_GROUP_STATE,
    KAFKA_CONSUMER_GROUP_TOPIC_LAG,
    KAFKA_CONSUMER_GROUP_TOPIC_MAX_LAG,
    KAFKA_CONSUMER_GROUP_TOPIC_MAX_LAG_SECONDS,
    KAFKA_CONSUMER_GROUP_TOPIC_OLDEST_PROGRESS_TIMESTAMP_SECONDS,
    KAFKA_CONSUMER_GROUP_TOPIC_PARTITIONS_LAGGING,
    KAFKA_CONSUMER_GROUP_UNCOMMITTED_PARTITIONS,
    MetricDef,
)
from exporter.record_age import Lookup, Position
from exporter.settings import PartitionSeries
from exporter.snapshot import Series
from pipeline.kafka import GROUP_STATES, TopicOffsets, Watermarks

GroupTopic = tuple[str, str]  # (group, topic)


class OffsetChangeTracker:
    """When each committed offset was first seen or last moved, per (group, topic) as an array
    aligned with its TopicOffsets.

    A group-topic missing from one refresh (its group could not be read this time) keeps its
    history for ``forget_after_seconds``: a hiccup must not make a stalled consumer look as if it
    had just moved. Those gone for longer (group deleted, topic gone) are forgotten.
    """

    def __init__(self, forget_after_seconds: float = 900.0) -> None:
        self._forget_after = forget_after_seconds
        # (group, topic) -> (offsets as last seen, when each last moved, last seen at)
        self._seen: dict[GroupTopic, tuple[TopicOffsets, array, float]] = {}

    def observe(self, groups: Iterable[GroupInfo], now: float) -> dict[GroupTopic, array]:
        changed_at: dict[GroupTopic, array] = {}
        for info in groups:
            for topic, offsets in info.committed.items():
                key = (info.group, topic)
                before = self._seen.get(key)
                since = _since(before[0], before[1], offsets, now) if before is not None else (
                    array("d", [now]) * len(offsets))
                self._seen[key] = (offsets, since, now)
                changed_at[key] = since
        self._seen = {key: entry for key, entry in self._seen.items() if now - entry[2] <= self._forget_after}
        return changed_at


def _since(before: TopicOffsets, before_since: array, now_offsets: TopicOffsets, now: float) -> array:
    if before.partitions == now_offsets.partitions:
        if before.offsets == now_offsets.offsets:  # compared in C: the common case costs nothing
            return before_since
        return array("d", [since if old == new else now for since, old, new
                           in zip(before_since, before.offsets, now_offsets.offsets, strict=True)])
    previous = {partition: (offset, since) for partition, offset, since
                in zip(before.partitions, before.offsets, before_since, strict=True)}
    moved = []
    for partition, offset in now_offsets.items():
        seen = previous.get(partition)
        moved.append(seen[1] if seen is not None and seen[0] == offset else now)
    return array("d", moved)


@dataclass(frozen=True)
class TopicLag:
    """A group's lag on one topic, on the partitions whose high watermark was read (a topic gone or
    a partition without a leader has no truthful lag to give)."""

    group: str
    topic: str
    partitions: array  # of 'i'
    positions: array  # of 'q': where the unconsumed records start (the committed offset or the log start)
    records: array  # of 'q': the lag, high watermark minus position, never negative


def topic_lags(groups: Iterable[GroupInfo], marks: Watermarks) -> list[TopicLag]:
    """Every group's lag on every topic it committed on. A committed offset below the log start
    counts from the log start (retention removed what it had not read)."""
    high_of, low_of = _by_topic(marks.high), _by_topic(marks.low)
    found = []
    for info in groups:
        for topic, offsets in info.committed.items():
            highs = high_of.get(topic)
            if highs is None:
                continue
            partitions, committed = offsets.partitions, offsets.offsets
            known = list(map(highs.get, partitions))
            if None in known:  # rare: keep only the partitions whose high watermark was read
                kept = [index for index, high in enumerate(known) if high is not None]
                partitions = array("i", [partitions[index] for index in kept])
                committed = array("q", [committed[index] for index in kept])
                known = [known[index] for index in kept]
            lows = low_of.get(topic)
            # map() over C callables: a million partitions in a fraction of a second, where a Python
            # loop per partition takes seconds.
            positions = array("q", map(max, committed, map(lows.get, partitions, repeat(0)))) if lows else committed
            records = array("q", map(sub, known, positions))
            if records and min(records) < 0:  # committed beyond the high watermark: nothing to consume
                records = array("q", [behind if behind > 0 else 0 for behind in records])
            found.append(TopicLag(info.group, topic, partitions, positions, records))
    return found


def _by_topic(offsets: Mapping[tuple[str, int], int]) -> dict[str, dict[int, int]]:
    found: dict[str, dict[int, int]] = {}
    for (topic, partition), offset in offsets.items():
        found.setdefault(topic, {})[partition] = offset
    return found


def lagging_positions(lags: Iterable[TopicLag]) -> set[Position]:
    """The positions whose record timestamps the lag in seconds needs: each once, however many
    groups wait there."""
    wanted: set[Position] = set()
    for lag in lags:
        if any(lag.records):
            wanted.update(position for position, behind
                          in zip(zip(repeat(lag.topic), lag.partitions, lag.positions), lag.records, strict=False)
                          if behind)
    return wanted


@dataclass
class _TopicColumns:
    """One metric's per-topic values of one group, gathered topic by topic."""

    topics: list[str] = field(default_factory=list)
    values: array = field(default_factory=lambda: array("d"))

    def add(self, topic: str, value: float) -> None:
        self.topics.append(topic)
        self.values.append(value)


class GroupSeriesBuilder:
    """Builds every consumer group series of one refresh, at the detail configured per group."""

    def __init__(self, detail: PartitionSeries) -> None:
        self._detail = detail

    def samples(self, read: GroupsRead, view: ClusterView, lags: Iterable[TopicLag], record_times: Lookup,
                changed_at: Mapping[GroupTopic, array], now: float) -> list[Series]:
        """``changed_at`` is OffsetChangeTracker's answer (empty when the groups' history is unknown);
        a topic missing from ``view`` gets no uncommitted partitions count."""
        found: list[Series] = [KAFKA_CONSUMER_GROUP_READ_ERRORS.sample(read.error_count)]
        lag_of = {(lag.group, lag.topic): lag for lag in lags}
        for info in read.groups:
            group = info.group
            for state in GROUP_STATES:
                found.append(KAFKA_CONSUMER_GROUP_STATE.at((group, state), 1 if state == info.state else 0))
            found.append(KAFKA_CONSUMER_GROUP_MEMBERS.at((group,), info.members))
            if not info.committed_read:
                continue
            detail = self._detail.detail if self._detail.groups(group) else "none"
            per_topic = {metric: _TopicColumns() for metric in _PER_TOPIC}
            per_partition: list[Series] = []
            for topic in sorted(info.consumed_topics):
                offsets = info.committed.get(topic)
                partitions = view.topics.get(topic)
                if partitions is not None:
                    per_topic[KAFKA_CONSUMER_GROUP_UNCOMMITTED_PARTITIONS].add(
                        topic, max(0, len(partitions) - (len(offsets) if offsets is not None else 0)))
                if offsets is None:
                    continue
                since = changed_at.get((group, topic))
                lag = lag_of.get((group, topic))
                if lag is not None:
                    summary = _summarise(lag, record_times, offsets, since, now)
                    summary.add_to(per_topic, topic)
                    if detail in ("all", "lag"):
                        per_partition.append(KAFKA_CONSUMER_GROUP_LAG.block((group, topic), lag.partitions,
                                                                            summary.records))
                    if detail == "all":
                        per_partition.append(KAFKA_CONSUMER_GROUP_LAG_SECONDS.block(
                            (group, topic), summary.aged_partitions, summary.ages))
                if detail == "all":
                    per_partition.append(KAFKA_CONSUMER_GROUP_COMMITTED_OFFSET.block(
                        (group, topic), offsets.partitions, array("d", offsets.offsets)))
                    if since is not None:
                        per_partition.append(KAFKA_CONSUMER_GROUP_COMMITTED_OFFSET_CHANGE_TIMESTAMP_SECONDS.block(
                            (group, topic), offsets.partitions, since))
            found += [metric.block((group,), tuple(columns.topics), columns.values)
                      for metric, columns in per_topic.items() if columns.topics]
            found += per_partition
        return found


# The per-topic series of a group, in the order they are told.
_PER_TOPIC = (KAFKA_CONSUMER_GROUP_UNCOMMITTED_PARTITIONS, KAFKA_CONSUMER_GROUP_TOPIC_LAG,
              KAFKA_CONSUMER_GROUP_TOPIC_MAX_LAG, KAFKA_CONSUMER_GROUP_TOPIC_PARTITIONS_LAGGING,
              KAFKA_CONSUMER_GROUP_TOPIC_MAX_LAG_SECONDS, KAFKA_CONSUMER_GROUP_TOPIC_OLDEST_PROGRESS_TIMESTAMP_SECONDS)


@dataclass(frozen=True)
class _TopicSummary:
    records: array  # of 'd': the lag per partition of TopicLag.partitions, 0 where only markers are left
    aged_partitions: array  # of 'i': the partitions whose lag has an age (0 for those without lag)
    ages: array  # of 'd'
    lagging: int
    oldest_age: float | None  # None when a lagging partition's age is unknown
    oldest_progress: float | None  # None when nothing lags, or when offsets last moved is unknown

    def add_to(self, per_topic: Mapping[MetricDef, _TopicColumns], topic: str) -> None:
        per_topic[KAFKA_CONSUMER_GROUP_TOPIC_LAG].add(topic, sum(self.records))
        per_topic[KAFKA_CONSUMER_GROUP_TOPIC_MAX_LAG].add(topic, max(self.records, default=0))
        per_topic[KAFKA_CONSUMER_GROUP_TOPIC_PARTITIONS_LAGGING].add(topic, self.lagging)
        if self.oldest_age is not None:
            per_topic[KAFKA_CONSUMER_GROUP_TOPIC_MAX_LAG_SECONDS].add(topic, self.oldest_age)
        if self.oldest_progress is not None:
            per_topic[KAFKA_CONSUMER_GROUP_TOPIC_OLDEST_PROGRESS_TIMESTAMP_SECONDS].add(topic, self.oldest_progress)


def _summarise(lag: TopicLag, record_times: Lookup, offsets: TopicOffsets, since: array | None,
               now: float) -> _TopicSummary:
    """One group's lag on one topic: per partition (lag and its age) and in aggregate."""
    topic, only_markers, partitions = lag.topic, record_times.only_markers, lag.partitions
    records = array("d", lag.records)
    if only_markers:
        for index, position in enumerate(zip(repeat(topic), partitions, lag.positions)):
            if records[index] and position in only_markers:
                records[index] = 0  # only transaction markers left: nothing to consume
    if not any(records):
        return _TopicSummary(records, partitions, array("d", bytes(8 * len(records))), 0, 0.0, None)
    # Ages of every partition (0 without lag), None where the record's timestamp is unknown.
    timestamps = map(record_times.timestamps.get, zip(repeat(topic), partitions, lag.positions))
    ages = [(now - timestamp if timestamp < now else 0.0) if timestamp is not None else None if behind else 0.0
            for timestamp, behind in zip(timestamps, records, strict=False)]
    lagging = len(records) - records.count(0)
    unknown = ages.count(None)
    if unknown:
        aged = [index for index, age in enumerate(ages) if age is not None]
        aged_partitions, known_ages = array("i", [partitions[i] for i in aged]), array("d", [ages[i] for i in aged])
    else:
        aged_partitions, known_ages = partitions, array("d", ages)
    oldest_progress = None
    if since is not None:
        if partitions == offsets.partitions:  # the lag's partitions are the committed ones but those
            moved = since                      # without a high watermark: mostly all of them
        else:
            since_of = dict(zip(offsets.partitions, since, strict=True))
            moved = array("d", [since_of.get(partition, math.inf) for partition in partitions])
        oldest_progress = min(moved_at for moved_at, behind in zip(moved, records, strict=True) if behind)
        if oldest_progress == math.inf:
            oldest_progress = None
    return _TopicSummary(records, aged_partitions, known_ages, lagging,
                         None if unknown else max(known_ages), oldest_progress)
