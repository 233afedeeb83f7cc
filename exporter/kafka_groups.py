"""Consumer groups: who they are (listed, then described in batches) and what they committed
(fetched concurrently with a cap, kept as arrays per topic); exporter/group_series.py builds their
series.

The group filter chooses the groups; a chosen group's lag is reported on every topic it consumes,
whether or not the topic filter exposes that topic's own series.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from pipeline.kafka import TopicOffsets, fetch_committed_offsets_by_topic, group_state_name, result_of

log = logging.getLogger("treewatch.kafka_groups")

# Groups per DescribeGroups call: large enough to be few calls, small enough for one response.
DESCRIBE_BATCH = 100


@dataclass(frozen=True)
class GroupInfo:
    group: str
    state: str  # one of GROUP_STATES
    members: int
    assigned_topics: frozenset[str]
    committed: Mapping[str, TopicOffsets]  # topic -> its partitions' committed offsets
    # False when the committed offsets could not be read this time: state and members are still
    # true, but nothing can be said about its offsets, lag or uncommitted partitions.
    committed_read: bool = True

    @property
    def consumed_topics(self) -> set[str]:
        """Topics the group is assigned or has committed on."""
        return set(self.assigned_topics) | set(self.committed)


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
    committed = fetch_committed_offsets_by_topic(admin, descriptions, request_timeout, concurrency,
                                                 deadline=deadline)
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
