"""Consumer groups: list them all (state, members, lag), describe some (committed offset, high
watermark, lag, owner per partition, each member's assignment, idle members and partitions nobody
owns), move a group's committed offsets the way ``kafka-consumer-groups.sh --reset-offsets`` does,
and undo a move.

What keeps these from doing harm:

- The group must exist: described by its coordinator in a state other than Dead, or named by the
  cluster's group listing. Describing a group id the coordinator does not know gives state "Dead",
  and committing offsets for it creates it; a misspelled name would be described as a dead group
  and "reset" into a new one. It is refused instead, with the closest existing names.
- A reset is planned first (current → new per partition, nothing changed) and only executed on
  request; it is refused while the group has members, because a live consumer would overwrite the
  new offsets with its own next commit. The broker refuses such a commit too; the check here gives
  the operator the reason and the members instead of a bare error code.
- Before an executed reset changes anything, the group's committed offsets on the partitions it
  moves are saved to a file (tools.saved_offsets); ``plan_restore`` plans putting them back, the
  undo, refused for a file of another group or another cluster.
- Errors that pass by themselves (a leader election, a coordinator moving) are asked again until
  the deadline (pipeline.kafka_errors), not reported as failures.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.config import Config
from pipeline.kafka import (
    KafkaSession,
    Partition,
    fetch_committed_offsets,
    group_state_name,
    kafka_session,
    lag,
    result_of,
    time_left,
)
from pipeline.kafka_errors import (
    DEFAULT_RETRY_SECONDS,
    all_watermarks,
    as_exception,
    committed_offsets,
    describe_cluster,
    error_text,
    kafka_error_of,
    offsets_for_time,
    partitions_of,
    retry_transient,
)
from tools import ToolError
from tools.saved_offsets import SavedOffsets, SavedOffsetsError, utc_now, write_saved
from tools.times import utc_moment

# The only state in which no consumer can commit over a reset (as kafka-consumer-groups.sh requires).
RESETTABLE_STATES = ("Empty",)
# How close a name must be to be offered for a misspelled group (difflib's ratio).
SIMILAR_NAME_CUTOFF = 0.6


class GroupToolError(ToolError):
    """A request the tool cannot carry out, phrased for the operator."""


class UnknownGroup(GroupToolError):
    """The group does not exist; the message offers the closest existing names."""

    exit_code = 2  # bad input: nothing was looked up or changed


@dataclass(frozen=True)
class Member:
    member_id: str
    client_id: str
    host: str
    assigned: tuple[Partition, ...]


@dataclass(frozen=True)
class PartitionPosition:
    topic: str
    partition: int
    committed: int | None  # None: the group never committed here
    high_watermark: int | None  # None: the partition's offsets could not be read
    log_start: int | None
    owner: str | None  # member id of the consumer assigned this partition

    @property
    def lag(self) -> int | None:
        """Records still to consume, as the exporter counts them (from the log start when retention
        removed the committed offset's records); None when an offset is unknown."""
        if self.committed is None or self.high_watermark is None or self.log_start is None:
            return None
        return lag(self.committed, self.log_start, self.high_watermark)


@dataclass(frozen=True)
class GroupDescription:
    group: str
    state: str
    members: tuple[Member, ...]
    partitions: tuple[PartitionPosition, ...]

    @property
    def total_lag(self) -> int:
        return sum(p.lag or 0 for p in self.partitions)

    @property
    def consumed_topics(self) -> tuple[str, ...]:
        """The topics some member is assigned: what the group consumes now (the subscription itself
        is not in a group's description; committed offsets may be of topics it no longer reads)."""
        return tuple(sorted({topic for m in self.members for topic, _ in m.assigned}))

    @property
    def idle_members(self) -> tuple[Member, ...]:
        """Members of a Stable group assigned no partition: a group never gives one partition to two
        members, so those beyond the partition count wait idle (during a rebalance an empty
        assignment means nothing yet, so only a Stable group has them)."""
        return tuple(m for m in self.members if not m.assigned) if self.state == "Stable" else ()

    @property
    def unowned_partitions(self) -> tuple[Partition, ...]:
        """Partitions of the topics the group consumes that no member is assigned, while the group is
        Stable: nobody reads them until the next rebalance (typically partitions added to a topic,
        which consumers notice only at their next metadata refresh)."""
        if self.state != "Stable" or not self.members:
            return ()
        consumed = set(self.consumed_topics)
        return tuple((p.topic, p.partition) for p in self.partitions if p.owner is None and p.topic in consumed)

    @property
    def findings(self) -> tuple[str, ...]:
        """What the assignment tells an operator scaling the group, in words."""
        said = []
        consumed = sum(1 for p in self.partitions if p.topic in set(self.consumed_topics))
        if self.idle_members:
            said.append(f"{len(self.idle_members)} idle consumer(s), assigned no partition: {len(self.members)} "
                        f"member(s) for {consumed} partition(s) of {', '.join(self.consumed_topics) or 'no topic'}; "
                        f"a partition goes to one member at most, so scaling out will not help (more partitions "
                        f"would)")
        if self.unowned_partitions:
            said.append(f"{len(self.unowned_partitions)} partition(s) assigned to nobody while the group is "
                        f"{self.state} with {len(self.members)} member(s): {partition_list(self.unowned_partitions)}; "
                        f"their records are not consumed until the next rebalance (partitions added to the topic "
                        f"since? the consumers see them at their next metadata refresh)")
        return tuple(said)


def partition_list(partitions: Iterable[Partition]) -> str:
    """``topic[0,1,2], other[0]``: partitions by topic, as an operator reads an assignment."""
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(partitions):
        by_topic.setdefault(topic, []).append(partition)
    return ", ".join(f"{topic}[{','.join(map(str, ids))}]" for topic, ids in by_topic.items())


def _deadline(deadline: float | None) -> float:
    return time.monotonic() + DEFAULT_RETRY_SECONDS if deadline is None else deadline


def existing_groups(kafka: KafkaSession, *, deadline: float) -> list[str]:
    """Every consumer group id the cluster knows. Each broker lists the groups it coordinates, so a
    listing with a broker missing is incomplete: it is asked again rather than trusted, each time by
    a new client (KafkaSession.renew_admin), which asks only the brokers the cluster lists now (a
    crashed broker drops out of the metadata once the controller fences it; a client knowing it from
    before would wait on it)."""
    attempts = 0

    def attempt(timeout: float) -> list[str]:
        nonlocal attempts
        attempts += 1
        admin = kafka.admin if attempts == 1 else kafka.renew_admin()
        listing = result_of(admin.list_consumer_groups(request_timeout=timeout), timeout)
        if listing.errors:
            raise as_exception(listing.errors[0])
        return sorted(g.group_id for g in listing.valid)

    return retry_transient(attempt, what="listing the consumer groups", deadline=deadline,
                           request_timeout=kafka.settings.request_timeout_seconds)


def existing_group_state(config: Config, kafka: KafkaSession, group: str, *, deadline: float
                         ) -> tuple[str, tuple[Member, ...]]:
    """State and members of ``group``; UnknownGroup, with the closest existing names, when the
    cluster does not know it.

    A state other than Dead comes from the group's coordinator, which has the group. Dead is also
    what a coordinator that just took over says of a group it has not loaded yet, so then the
    cluster's listing decides (an Empty group with committed offsets is listed), and a listed group
    is asked again until its coordinator has it.
    """
    timeout = config.kafka.request_timeout_seconds
    state, members = group_state(kafka.admin, group, timeout, deadline=deadline)
    if state != "Dead":
        return state, members
    names = existing_groups(kafka, deadline=deadline)
    if group not in names:
        similar = difflib.get_close_matches(group, names, n=3, cutoff=SIMILAR_NAME_CUTOFF)
        hint = (f"; did you mean {' or '.join(similar)}?" if similar
                else f" ({len(names)} group(s) exist, none with a similar name)")
        raise UnknownGroup(f"no such group: {group}{hint}")
    while state == "Dead":
        if time.monotonic() >= deadline:
            raise GroupToolError(f"group {group} is listed, but its coordinator still describes it as Dead (it "
                                 f"has not loaded the group yet): try again in a moment")
        time.sleep(0.5)  # the new coordinator's loading announces nothing: look again shortly
        state, members = group_state(kafka.admin, group, timeout, deadline=deadline)
    return state, members


def group_state(admin: AdminClient, group: str, request_timeout: float, *, deadline: float | None = None
                ) -> tuple[str, tuple[Member, ...]]:
    """The group's state name and members; a group the coordinator does not know is "Dead".

    A coordinator that is moving or still loading (NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS,
    common right after a broker starts) is asked again until ``deadline``.
    """

    def attempt(timeout: float):
        future = admin.describe_consumer_groups([group], request_timeout=timeout)[group]
        try:
            return result_of(future, timeout)
        except KafkaException as error:
            reason = kafka_error_of(error)
            if reason is not None and reason.code() == KafkaError.GROUP_ID_NOT_FOUND:
                return None
            raise

    description = retry_transient(attempt, what=f"describing group {group!r}", deadline=_deadline(deadline),
                                  request_timeout=request_timeout)
    if description is None:
        return "Dead", ()
    members = tuple(
        Member(m.member_id, m.client_id, m.host,
               tuple((tp.topic, tp.partition) for tp in (m.assignment.topic_partitions if m.assignment else ())))
        for m in description.members)
    return group_state_name(description.state), members


def describe_group(config: Config, group: str, *, deadline: float | None = None,
                   session: KafkaSession | None = None) -> GroupDescription:
    """The group's state, members and position on every partition it committed on or is assigned;
    ``session``: the caller's Kafka clients, when it has them open."""
    timeout = config.kafka.request_timeout_seconds
    deadline = _deadline(deadline)
    with kafka_session(config.kafka, session) as kafka:
        state, members = existing_group_state(config, kafka, group, deadline=deadline)
        committed = committed_offsets(kafka.admin, group, deadline=deadline, request_timeout=timeout)
        owners = {tp: m.member_id for m in members for tp in m.assigned}
        # Every partition of the topics the group is assigned, so one assigned to nobody shows too.
        consumed = partitions_of(kafka.admin, sorted({topic for topic, _ in owners}), deadline=deadline,
                                 request_timeout=timeout) if owners else {}
        keys = sorted(set(committed) | set(owners) | {(t, p) for t, ids in consumed.items() for p in ids})
        watermarks = (all_watermarks(kafka.admin, keys, deadline=deadline, request_timeout=timeout)
                      if keys else None)
    partitions = tuple(
        PartitionPosition(topic, partition, committed.get((topic, partition)),
                          watermarks.high.get((topic, partition)) if watermarks else None,
                          watermarks.low.get((topic, partition)) if watermarks else None,
                          owners.get((topic, partition)))
        for topic, partition in keys)
    return GroupDescription(group, state, members, partitions)


def describe_groups(config: Config, groups: Iterable[str] | None, *, deadline: float | None = None
                    ) -> tuple[GroupDescription, ...]:
    """``describe_group`` of each of ``groups`` (None: every group the cluster lists), through one
    session; UnknownGroup for the first that does not exist, before anything is described."""
    deadline = _deadline(deadline)
    with KafkaSession(config.kafka) as kafka:
        if groups is not None:
            names = list(dict.fromkeys(groups))  # a group named twice is described once
            for name in names:
                existing_group_state(config, kafka, name, deadline=deadline)
            return tuple(describe_group(config, name, deadline=deadline, session=kafka) for name in names)
        described = []
        for name in existing_groups(kafka, deadline=deadline):
            try:
                described.append(describe_group(config, name, deadline=deadline, session=kafka))
            except UnknownGroup:
                continue  # deleted (or its offsets expired) since the listing
        return tuple(described)


# -- listing ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupSummary:
    """One line of ``groups list``: a group as kafka-consumer-groups.sh --list --state shows it, with
    its lag (records behind the high watermark over every partition it committed on)."""

    group: str
    stage: str | None  # the pipeline stage whose group this is, per the configuration
    state: str
    members: int
    partitions: int  # partitions with a committed offset
    lag: int | None  # None: the committed offsets could not be read (see error)
    unread_partitions: int = 0  # partitions whose watermarks could not be read, left out of the lag
    error: str | None = None


@dataclass(frozen=True)
class GroupListing:
    groups: tuple[GroupSummary, ...]  # by lag, largest first; unknown lag last
    missing_stage_groups: dict[str, str]  # stage → its configured group, which the cluster does not have


# Groups whose committed offsets are asked at once: many groups fast, without flooding the coordinators.
_LIST_CONCURRENCY = 10


def list_groups(config: Config, *, deadline: float | None = None) -> GroupListing:
    """Every consumer group the cluster lists, with state, member count and lag, largest lag first."""
    timeout = config.kafka.request_timeout_seconds
    deadline = _deadline(deadline)
    stage_of = {stage.group: stage.name for stage in config.stages}
    with KafkaSession(config.kafka) as kafka:
        names = existing_groups(kafka, deadline=deadline)
        described = _describe_all(kafka.admin, names, timeout, deadline=deadline)
        committed = fetch_committed_offsets(kafka.admin, names, timeout, _LIST_CONCURRENCY, deadline=deadline)
        keys = sorted({key for offsets in committed.values() if isinstance(offsets, dict) for key in offsets})
        watermarks = all_watermarks(kafka.admin, keys, deadline=deadline, request_timeout=timeout) if keys else None
    summaries = []
    for name in names:
        state, members = described.get(name, ("Unknown", 0))
        offsets = committed.get(name)
        if not isinstance(offsets, dict):
            summaries.append(GroupSummary(name, stage_of.get(name), state, members, 0, None,
                                          error=error_text(offsets) if offsets is not None else "not answered"))
            continue
        known = [key for key in offsets if watermarks is not None and key in watermarks.high]
        total = sum(lag(offsets[key], watermarks.low[key], watermarks.high[key]) for key in known)
        summaries.append(GroupSummary(name, stage_of.get(name), state, members, len(offsets), total,
                                      unread_partitions=len(offsets) - len(known)))
    summaries.sort(key=lambda g: (g.lag is None, -(g.lag or 0), g.group))
    missing = {stage.name: stage.group for stage in config.stages if stage.group not in names}
    return GroupListing(tuple(summaries), missing)


def _describe_all(admin: AdminClient, groups: list[str], request_timeout: float, *, deadline: float
                  ) -> dict[str, tuple[str, int]]:
    """group → (state, member count), from one DescribeConsumerGroups round (per coordinator); a
    group whose coordinator does not answer is left out (the listing shows it as Unknown)."""
    if not groups:
        return {}
    # However late it is, the round gets a moment: without it, every group would say Unknown.
    futures = admin.describe_consumer_groups(groups, request_timeout=max(1.0, time_left(deadline, request_timeout)))
    found = {}
    for group, future in futures.items():
        try:
            description = result_of(future, request_timeout)
        except (KafkaException, TimeoutError):
            continue
        found[group] = (group_state_name(description.state), len(description.members))
    return found


# -- resetting -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResetTarget:
    """Where to move the group: "earliest", "latest", an offset, or the first record at/after a time."""

    kind: str  # earliest | latest | offset | timestamp
    offset: int | None = None
    timestamp_ms: int | None = None

    @classmethod
    def parse(cls, text: str) -> ResetTarget:
        kind, _, value = text.partition(":")
        if kind in ("earliest", "latest") and not value:
            return cls(kind)
        if kind == "offset" and value.isdigit():
            return cls("offset", offset=int(value))
        if kind == "timestamp" and value:
            return cls("timestamp", timestamp_ms=int(utc_moment(value).timestamp() * 1000))
        raise ValueError(f"{text!r}: expected earliest, latest, offset:N or timestamp:ISO-8601")

    def __str__(self) -> str:
        if self.kind == "offset":
            return f"offset:{self.offset}"
        if self.kind == "timestamp":
            moment = datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)
            return f"timestamp:{moment.isoformat(timespec='milliseconds').replace('+00:00', 'Z')}"
        return self.kind


@dataclass(frozen=True)
class PlannedReset:
    topic: str
    partition: int
    current: int | None
    new: int
    log_start: int
    high_watermark: int


@dataclass(frozen=True)
class ResetPlan:
    group: str
    description: str  # in words: "of <topic> to earliest", "back to the offsets saved in <file> ..."
    state: str
    members: tuple[Member, ...]
    partitions: tuple[PlannedReset, ...]
    cluster_id: str
    bootstrap_servers: str
    # Restoring: partitions the saved file shows without a committed offset. Kafka's admin API
    # offers no way to remove a committed offset here, so they are left as they are.
    not_restorable: tuple[Partition, ...] = ()

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(sorted({p.topic for p in self.partitions}))


@dataclass(frozen=True)
class ResetResult:
    plan: ResetPlan
    # Partitions whose committed offset read back after the reset differs from the plan.
    mismatched: dict[Partition, int | None]
    saved_to: Path | None  # where the offsets before the reset were saved


def cluster_id(kafka: KafkaSession, *, deadline: float) -> str:
    return describe_cluster(kafka, deadline=deadline).cluster_id


def plan_reset(config: Config, group: str, topic: str, target: ResetTarget, *, deadline: float | None = None
               ) -> ResetPlan:
    """Current and new committed offset of every partition of ``topic``; changes nothing.

    An ``offset:N`` outside a partition's retained range is clamped into it (log start … high
    watermark), as kafka-consumer-groups.sh does; a time after the last record gives the high
    watermark.
    """
    timeout = config.kafka.request_timeout_seconds
    deadline = _deadline(deadline)
    at_time: dict[Partition, int] = {}

    def new_offset(key: Partition, low: int, high: int) -> int:
        if target.kind == "earliest":
            return low
        if target.kind == "latest":
            return high
        if target.kind == "offset":
            return min(max(target.offset, low), high)
        return high if at_time[key] < 0 else at_time[key]

    with KafkaSession(config.kafka) as kafka:
        existing_group_state(config, kafka, group, deadline=deadline)  # a misspelled group is said first
        partitions = partitions_of(kafka.admin, [topic], deadline=deadline, request_timeout=timeout).get(topic)
        if not partitions:
            raise GroupToolError(f"topic {topic!r} does not exist")
        keys = [(topic, p) for p in partitions]
        if target.kind == "timestamp":
            at_time = offsets_for_time(kafka.admin, keys, target.timestamp_ms, deadline=deadline,
                                       request_timeout=timeout)
        return _plan(config, kafka, group, keys, new_offset, f"of {topic} to {target}", deadline=deadline)


def plan_restore(config: Config, group: str, saved: SavedOffsets, *, source: str,
                 deadline: float | None = None) -> ResetPlan:
    """The offsets ``saved`` (read from ``source``) as a plan: the undo of the reset they preceded.
    Refused for a file of another group or another cluster, or naming partitions that are gone."""
    timeout = config.kafka.request_timeout_seconds
    deadline = _deadline(deadline)
    if saved.group != group:
        raise SavedOffsetsError(f"{source} holds the offsets of group {saved.group!r}, not of {group!r}: refused")
    with KafkaSession(config.kafka) as kafka:
        here = cluster_id(kafka, deadline=deadline)
        if saved.cluster_id != here:
            raise SavedOffsetsError(f"{source} was saved on cluster {saved.cluster_id} ({saved.bootstrap_servers}); "
                                    f"this is cluster {here} ({config.kafka.bootstrap_servers}): refused")
        existing_group_state(config, kafka, group, deadline=deadline)
        topics = sorted({topic for topic, _ in saved.offsets})
        existing = partitions_of(kafka.admin, topics, deadline=deadline, request_timeout=timeout)
        gone = [f"{t}[{p}]" for t, p in sorted(saved.offsets) if p not in existing.get(t, ())]
        if gone:
            raise GroupToolError(f"{source} names partitions that do not exist (any more): {', '.join(gone[:10])}")
        restorable = sorted(key for key, offset in saved.offsets.items() if offset is not None)
        not_restorable = tuple(sorted(key for key, offset in saved.offsets.items() if offset is None))
        return _plan(config, kafka, group, restorable, lambda key, low, high: saved.offsets[key],
                     f"back to the offsets saved in {source} at {saved.saved_at} (before the {saved.saved_before})",
                     deadline=deadline, not_restorable=not_restorable)


def _plan(config: Config, kafka: KafkaSession, group: str, keys: list[Partition], new_offset, description: str, *,
          deadline: float, not_restorable: tuple[Partition, ...] = ()) -> ResetPlan:
    timeout = config.kafka.request_timeout_seconds
    watermarks = all_watermarks(kafka.admin, keys, deadline=deadline, request_timeout=timeout)
    if watermarks.errors:
        unread = ", ".join(f"{t}[{p}]" for t, p in sorted(watermarks.errors))
        raise GroupToolError(f"cannot read the offsets of {unread}: "
                             f"{error_text(next(iter(watermarks.errors.values())))}")
    state, members = existing_group_state(config, kafka, group, deadline=deadline)
    committed = committed_offsets(kafka.admin, group, deadline=deadline, request_timeout=timeout)
    planned = []
    for key in keys:
        low, high = watermarks.low[key], watermarks.high[key]
        planned.append(PlannedReset(key[0], key[1], committed.get(key), new_offset(key, low, high), low, high))
    return ResetPlan(group, description, state, members, tuple(planned),
                     cluster_id(kafka, deadline=deadline),
                     config.kafka.bootstrap_servers, not_restorable)


def execute_reset(config: Config, plan: ResetPlan, *, save_to: Path | None = None, deadline: float | None = None,
                  on_saved: Callable[[Path], None] | None = None) -> ResetResult:
    """Save the group's current offsets of the plan's partitions to ``save_to`` (when given: the
    command line always gives it; ``on_saved`` is told once the file is durable, before anything
    changes), commit the plan's offsets, then read them back.

    Refused unless the group is Empty right now (checked again, not taken from the plan). The
    offsets saved are read now too, so the file undoes exactly this reset.
    """
    with KafkaSession(config.kafka) as kafka:
        return _execute_reset(config, kafka, plan, save_to, _deadline(deadline), on_saved)


def _execute_reset(config: Config, kafka: KafkaSession, plan: ResetPlan, save_to: Path | None, deadline: float,
                   on_saved: Callable[[Path], None] | None) -> ResetResult:
    timeout = config.kafka.request_timeout_seconds
    state, members = existing_group_state(config, kafka, plan.group, deadline=deadline)
    if state not in RESETTABLE_STATES:
        who = ", ".join(f"{m.client_id}@{m.host}" for m in members) or "none listed"
        raise GroupToolError(f"group {plan.group!r} is {state} with {len(members)} member(s) ({who}); "
                             f"stop its consumers first: a live consumer would commit over the reset")
    if not plan.partitions:
        return ResetResult(plan, {}, None)  # nothing to change, so nothing to save either
    if save_to is not None:
        before = committed_offsets(kafka.admin, plan.group, deadline=deadline, request_timeout=timeout)
        saved_at = utc_now().isoformat().replace("+00:00", "Z")
        write_saved(save_to, SavedOffsets(plan.group, plan.cluster_id, plan.bootstrap_servers, saved_at,
                                          f"reset {plan.description}",
                                          {(p.topic, p.partition): before.get((p.topic, p.partition))
                                           for p in plan.partitions}))
        if on_saved is not None:
            on_saved(save_to)
    request = ConsumerGroupTopicPartitions(
        plan.group, [TopicPartition(p.topic, p.partition, p.new) for p in plan.partitions])

    def alter(attempt_timeout: float):
        future = kafka.admin.alter_consumer_group_offsets([request], request_timeout=attempt_timeout)[plan.group]
        return result_of(future, attempt_timeout)

    # Committing the same offsets again is harmless, so an answer lost in an election is simply asked again.
    answer = retry_transient(alter, what=f"committing the new offsets of {plan.group!r}", deadline=deadline,
                             request_timeout=timeout)
    failed = [f"{tp.topic}[{tp.partition}]: {tp.error.str()}" for tp in answer.topic_partitions if tp.error]
    if failed:
        raise GroupToolError(f"the broker refused the reset of {plan.group!r}: {'; '.join(failed)}")
    committed = committed_offsets(kafka.admin, plan.group, deadline=deadline, request_timeout=timeout)
    mismatched = {(p.topic, p.partition): committed.get((p.topic, p.partition)) for p in plan.partitions
                  if committed.get((p.topic, p.partition)) != p.new}
    return ResetResult(plan, mismatched, save_to)
