"""Consumer groups: who they are (listed, then described in batches), what they committed (fetched
concurrently with a cap), and the lag series built from that and the partitions' watermarks.

The group filter chooses the groups; a chosen group's lag is reported on every topic it consumes,
whether or not the topic filter exposes that topic's own series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from confluent_kafka import ConsumerGroupState, KafkaException
from confluent_kafka.admin import AdminClient

from exporter.metrics import GROUP_STATES
from exporter.snapshot import Sample
from pipeline.kafka import Partition, Watermarks, fetch_committed_offsets, result_of

# Groups per DescribeGroups call: large enough to be few calls, small enough for one response.
DESCRIBE_BATCH = 100

_STATE_NAMES = {
    ConsumerGroupState.STABLE: "Stable",
    ConsumerGroupState.PREPARING_REBALANCING: "PreparingRebalance",
    ConsumerGroupState.COMPLETING_REBALANCING: "CompletingRebalance",
    ConsumerGroupState.EMPTY: "Empty",
    ConsumerGroupState.DEAD: "Dead",
    ConsumerGroupState.UNKNOWN: "Unknown",
}
assert set(_STATE_NAMES.values()) == set(GROUP_STATES), "GROUP_STATES and the mapping must agree"


@dataclass(frozen=True)
class GroupInfo:
    group: str
    state: str  # one of GROUP_STATES
    members: int
    assigned_topics: frozenset[str]
    committed: Mapping[Partition, int]

    @property
    def consumed_topics(self) -> set[str]:
        """Topics the group is assigned or has committed on."""
        return set(self.assigned_topics) | {topic for topic, _ in self.committed}


def fetch_groups(admin: AdminClient, allowed: Callable[[str], bool], request_timeout: float,
                 concurrency: int) -> list[GroupInfo]:
    """Every group passing the filter, described and with its committed offsets.

    A group that vanished between listing and describing is left out; when no group at all could
    be described or read, the first error is raised.
    """
    listing = result_of(admin.list_consumer_groups(request_timeout=request_timeout), request_timeout)
    names = sorted({entry.group_id for entry in listing.valid if allowed(entry.group_id)})
    if not names:
        if listing.errors:
            # The listing's errors are KafkaError values, not exceptions: raising one as it is
            # escapes every except clause and ends the refresh thread.
            raise KafkaException(listing.errors[0])
        return []
    descriptions: dict[str, object] = {}
    errors: list[BaseException] = []
    futures = {}
    for start in range(0, len(names), DESCRIBE_BATCH):
        futures.update(admin.describe_consumer_groups(names[start:start + DESCRIBE_BATCH],
                                                      request_timeout=request_timeout))
    for group, future in futures.items():
        try:
            descriptions[group] = result_of(future, request_timeout)
        except Exception as error:  # KafkaException or TimeoutError: this group only
            errors.append(error)
    committed = fetch_committed_offsets(admin, descriptions, request_timeout, concurrency)
    groups = []
    for group, description in descriptions.items():
        offsets = committed.get(group)
        if isinstance(offsets, BaseException) or offsets is None:
            errors.append(offsets or RuntimeError(f"no committed offsets for {group}"))
            continue
        members = description.members
        assigned = frozenset(tp.topic for member in members
                             for tp in (member.assignment.topic_partitions if member.assignment else ()))
        groups.append(GroupInfo(group, _STATE_NAMES.get(description.state, "Unknown"), len(members),
                                assigned, offsets))
    if errors and not groups:
        raise errors[0]
    return groups


class OffsetChangeTracker:
    """When each committed offset was first seen or last moved.

    An offset missing from one refresh (its group could not be read this time) keeps its history
    for ``forget_after_seconds``: a hiccup must not make a stalled consumer look as if it had just
    moved. Offsets gone for longer (group deleted, topic gone) are forgotten.
    """

    def __init__(self, forget_after_seconds: float = 900.0) -> None:
        self._forget_after = forget_after_seconds
        # key -> (offset, changed at, last seen at)
        self._seen: dict[tuple[str, str, int], tuple[int, float, float]] = {}

    def observe(self, committed: Iterable[tuple[tuple[str, str, int], int]],
                now: float) -> dict[tuple[str, str, int], float]:
        changed_at = {}
        for key, offset in committed:
            before = self._seen.get(key)
            since = before[1] if before is not None and before[0] == offset else now
            self._seen[key] = (offset, since, now)
            changed_at[key] = since
        self._seen = {key: entry for key, entry in self._seen.items() if now - entry[2] <= self._forget_after}
        return changed_at


@dataclass(frozen=True)
class LagPosition:
    """Where a group's unconsumed records start in a partition: the committed offset, or the log
    start when retention already removed the records at the committed offset."""

    group: str
    topic: str
    partition: int
    committed: int
    position: int
    lag: int


def lag_positions(groups: Iterable[GroupInfo], marks: Watermarks) -> list[LagPosition]:
    positions = []
    for info in groups:
        for (topic, partition), committed in info.committed.items():
            high = marks.high.get((topic, partition))
            if high is None:
                continue  # topic gone or partition without a leader: no truthful lag to give
            position = max(committed, marks.low.get((topic, partition), 0))
            positions.append(LagPosition(info.group, topic, partition, committed, position,
                                         max(0, high - position)))
    return positions


def group_samples(groups: list[GroupInfo], positions: list[LagPosition], partition_counts: Mapping[str, int],
                  changed_at: Mapping[tuple[str, str, int], float],
                  record_times: Mapping[tuple[str, int, int], float], now: float) -> list[Sample]:
    """``record_times`` maps (topic, partition, offset) to the timestamp of the first record there."""
    samples: list[Sample] = []
    for info in groups:
        group = info.group
        for state in GROUP_STATES:
            samples.append(Sample("kafka_consumer_group_state", (group, state),
                                  1.0 if state == info.state else 0.0))
        samples.append(Sample("kafka_consumer_group_members", (group,), float(info.members)))
        for topic in sorted(info.consumed_topics):
            count = partition_counts.get(topic)
            if count is None:
                continue
            committed = sum(1 for t, _ in info.committed if t == topic)
            samples.append(Sample("kafka_consumer_group_uncommitted_partitions", (group, topic),
                                  float(max(0, count - committed))))
        for (topic, partition), offset in info.committed.items():
            labels = (group, topic, str(partition))
            samples.append(Sample("kafka_consumer_group_committed_offset", labels, float(offset)))
            since = changed_at.get((group, topic, partition))
            if since is not None:
                samples.append(Sample("kafka_consumer_group_committed_offset_change_timestamp_seconds",
                                      labels, since))
    for lag in positions:
        labels = (lag.group, lag.topic, str(lag.partition))
        samples.append(Sample("kafka_consumer_group_lag", labels, float(lag.lag)))
        if lag.lag == 0:
            samples.append(Sample("kafka_consumer_group_lag_seconds", labels, 0.0))
            continue
        timestamp = record_times.get((lag.topic, lag.partition, lag.position))
        if timestamp is not None:
            samples.append(Sample("kafka_consumer_group_lag_seconds", labels, max(0.0, now - timestamp)))
    return samples
