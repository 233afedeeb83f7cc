"""Consumer groups: who they are (listed, then described in batches), what they committed (fetched
concurrently with a cap), and the lag series built from that and the partitions' watermarks.

The group filter chooses the groups; a chosen group's lag is reported on every topic it consumes,
whether or not the topic filter exposes that topic's own series.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from exporter.kafka_metadata import ClusterView
from exporter.metrics import (
    KAFKA_CONSUMER_GROUP_COMMITTED_OFFSET,
    KAFKA_CONSUMER_GROUP_COMMITTED_OFFSET_CHANGE_TIMESTAMP_SECONDS,
    KAFKA_CONSUMER_GROUP_LAG,
    KAFKA_CONSUMER_GROUP_LAG_SECONDS,
    KAFKA_CONSUMER_GROUP_MEMBERS,
    KAFKA_CONSUMER_GROUP_READ_ERRORS,
    KAFKA_CONSUMER_GROUP_STATE,
    KAFKA_CONSUMER_GROUP_UNCOMMITTED_PARTITIONS,
    Sample,
)
from exporter.record_age import Lookup
from pipeline.kafka import (
    GROUP_STATES,
    Partition,
    Watermarks,
    fetch_committed_offsets,
    group_state_name,
    lag,
    result_of,
)

log = logging.getLogger("treewatch.kafka_groups")

# Groups per DescribeGroups call: large enough to be few calls, small enough for one response.
DESCRIBE_BATCH = 100


@dataclass(frozen=True)
class GroupInfo:
    group: str
    state: str  # one of GROUP_STATES
    members: int
    assigned_topics: frozenset[str]
    committed: Mapping[Partition, int]
    # False when the committed offsets could not be read this time: state and members are still
    # true, but nothing can be said about its offsets, lag or uncommitted partitions.
    committed_read: bool = True

    @property
    def consumed_topics(self) -> set[str]:
        """Topics the group is assigned or has committed on."""
        return set(self.assigned_topics) | {topic for topic, _ in self.committed}


@dataclass
class GroupsRead:
    """The groups read in one refresh, and what could not be read on the way per step (list,
    describe, committed_offsets), so a partial failure is visible instead of groups silently
    vanishing."""

    groups: list[GroupInfo]
    errors: dict[str, list[BaseException]] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return sum(len(errors) for errors in self.errors.values())


def fetch_groups(admin: AdminClient, allowed: Callable[[str], bool], request_timeout: float,
                 concurrency: int, *, deadline: float | None = None) -> GroupsRead:
    """Every group passing the filter, described and with its committed offsets, all within
    ``deadline`` (time.monotonic()) when one is given.

    A listing error (a coordinator that did not answer), a group that could not be described and a
    group whose offsets could not be read are recorded in the result's errors; a group whose
    offsets alone failed keeps its state and members. When nothing at all could be read, the first
    error is raised.
    """
    listing = result_of(admin.list_consumer_groups(request_timeout=request_timeout), request_timeout, deadline)
    # The listing's errors are KafkaError values, not exceptions: raising one as it is escapes
    # every except clause and ends the refresh thread.
    read = GroupsRead([], {"list": [KafkaException(error) for error in listing.errors]})
    names = sorted({entry.group_id for entry in listing.valid if allowed(entry.group_id)})
    if not names:
        if read.errors["list"]:
            raise read.errors["list"][0]
        return read
    descriptions: dict[str, object] = {}
    futures = {}
    for start in range(0, len(names), DESCRIBE_BATCH):
        futures.update(admin.describe_consumer_groups(names[start:start + DESCRIBE_BATCH],
                                                      request_timeout=request_timeout))
    for group, future in futures.items():
        try:
            # All batches are in flight together; the shared deadline bounds the wait for all of
            # them, not each one after the other.
            descriptions[group] = result_of(future, request_timeout, deadline)
        except Exception as error:  # KafkaException or TimeoutError: this group only
            read.errors.setdefault("describe", []).append(error)
    committed = fetch_committed_offsets(admin, descriptions, request_timeout, concurrency, deadline=deadline)
    for group, description in descriptions.items():
        offsets = committed.get(group)
        if isinstance(offsets, BaseException) or offsets is None:
            read.errors.setdefault("committed_offsets", []).append(
                offsets or RuntimeError(f"no committed offsets for {group}"))
        members = description.members
        assigned = frozenset(tp.topic for member in members
                             for tp in (member.assignment.topic_partitions if member.assignment else ()))
        if isinstance(offsets, dict):
            info = GroupInfo(group, group_state_name(description.state), len(members), assigned, offsets)
        else:
            info = GroupInfo(group, group_state_name(description.state), len(members), assigned, {},
                             committed_read=False)
        read.groups.append(info)
    if not read.groups:
        first = next((errors[0] for errors in read.errors.values() if errors), None)
        if first is not None:
            raise first
    return read


class HeldGroups:
    """Groups a refresh could not read, served at their last known state for ``keep_seconds``,
    as every other collector's data is held for the grace period.

    A group whose coordinator is down is missing from the listing (ListGroups asks every broker,
    and that one cannot answer) or cannot be described or have its offsets read: without this it
    would vanish at once, and come back as a new series when its coordinator returns. A group is
    only held while the read met errors: one missing from a complete read was deleted.
    """

    def __init__(self, keep_seconds: float) -> None:
        self._keep = keep_seconds
        self._seen: dict[str, tuple[GroupInfo, float]] = {}  # group -> (last complete info, read at)

    def fill(self, read: GroupsRead, now: float) -> GroupsRead:
        groups: list[GroupInfo] = []
        for info in read.groups:
            if info.committed_read:
                self._seen[info.group] = (info, now)
            else:
                held = self._held(info.group, now)
                if held is not None:
                    # State and members are this refresh's; only the offsets are the last known.
                    info = GroupInfo(info.group, info.state, info.members, info.assigned_topics, held.committed)
            groups.append(info)
        if read.error_count == 0:
            present = {info.group for info in read.groups}
            self._seen = {group: entry for group, entry in self._seen.items() if group in present}
            return read
        read_now = {info.group for info in groups}
        groups += [held for group in sorted(self._seen) if group not in read_now
                   and (held := self._held(group, now)) is not None]
        self._seen = {group: entry for group, entry in self._seen.items() if now - entry[1] <= self._keep}
        return GroupsRead(groups, read.errors)

    def _held(self, group: str, now: float) -> GroupInfo | None:
        entry = self._seen.get(group)
        return entry[0] if entry is not None and now - entry[1] <= self._keep else None


class PartialFailureLog:
    """Logs the errors of a partial read when they start or change, not on every refresh."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._reported: tuple[str, ...] = ()

    def report(self, errors: Mapping[str, Collection[BaseException]]) -> None:
        described = tuple(sorted({f"{step}: {error}" for step, found in errors.items() for error in found}))
        if described == self._reported:
            return
        self._reported = described
        if described:
            self._logger.warning("reading the consumer groups partly failed (%d error(s); counted in "
                                 "kafka_consumer_group_read_errors; logged again when they change): %s",
                                 sum(len(found) for found in errors.values()), "; ".join(described[:5]))
        else:
            self._logger.info("consumer groups read completely again")


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
            low = marks.low.get((topic, partition), 0)
            positions.append(LagPosition(info.group, topic, partition, committed, max(committed, low),
                                         lag(committed, low, high)))
    return positions


@dataclass(frozen=True)
class Lag:
    """A group's lag in one partition: records left to consume, and the age of the oldest of them
    (None when its timestamp could not be read)."""

    group: str
    topic: str
    partition: int
    records: int
    seconds: float | None


def lags(positions: Iterable[LagPosition], record_times: Lookup, now: float) -> list[Lag]:
    """The lag at each position, aged by the timestamps of the records there. A position from which
    only transaction markers are left below the high watermark has nothing left to read: lag 0."""
    found = []
    for position in positions:
        key = (position.topic, position.partition, position.position)
        if position.lag == 0 or key in record_times.only_markers:
            records, seconds = 0, 0.0
        else:
            timestamp = record_times.timestamps.get(key)
            records, seconds = position.lag, None if timestamp is None else max(0.0, now - timestamp)
        found.append(Lag(position.group, position.topic, position.partition, records, seconds))
    return found


def group_samples(read: GroupsRead, view: ClusterView, changed_at: Mapping[tuple[str, str, int], float],
                  group_lags: Iterable[Lag]) -> list[Sample]:
    """Every consumer group series. ``changed_at`` is when each committed offset last moved
    (OffsetChangeTracker); a topic missing from ``view`` gets no uncommitted partitions count."""
    samples: list[Sample] = [KAFKA_CONSUMER_GROUP_READ_ERRORS.sample(read.error_count)]
    for info in read.groups:
        group = info.group
        for state in GROUP_STATES:
            samples.append(KAFKA_CONSUMER_GROUP_STATE.at((group, state), 1 if state == info.state else 0))
        samples.append(KAFKA_CONSUMER_GROUP_MEMBERS.at((group,), info.members))
        if not info.committed_read:
            continue
        for topic in sorted(info.consumed_topics):
            if topic not in view.topics:
                continue
            committed = sum(1 for t, _ in info.committed if t == topic)
            samples.append(KAFKA_CONSUMER_GROUP_UNCOMMITTED_PARTITIONS.at(
                (group, topic), max(0, len(view.topics[topic]) - committed)))
        for (topic, partition), offset in info.committed.items():
            labels = (group, topic, str(partition))
            samples.append(KAFKA_CONSUMER_GROUP_COMMITTED_OFFSET.at(labels, offset))
            since = changed_at.get((group, topic, partition))
            if since is not None:
                samples.append(KAFKA_CONSUMER_GROUP_COMMITTED_OFFSET_CHANGE_TIMESTAMP_SECONDS.at(labels, since))
    for behind in group_lags:
        labels = (behind.group, behind.topic, str(behind.partition))
        samples.append(KAFKA_CONSUMER_GROUP_LAG.at(labels, behind.records))
        if behind.seconds is not None:
            samples.append(KAFKA_CONSUMER_GROUP_LAG_SECONDS.at(labels, behind.seconds))
    return samples
