"""Consumer groups: describe one (committed offset, high watermark, lag, owner per partition) and
move its committed offsets, the way ``kafka-consumer-groups.sh --reset-offsets`` does.

A reset is planned first (current → new per partition, nothing changed) and only executed on
request; it is refused while the group has members, because a live consumer would overwrite the
new offsets with its own next commit. The broker refuses such a commit too; the check here gives
the operator the reason and the members instead of a bare error code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from pipeline.config import Config
from pipeline.kafka import (
    Partition,
    admin_client,
    fetch_committed_offsets,
    fetch_watermarks,
    group_state_name,
    lag,
    result_of,
    topic_partitions,
)
from tools import ToolError

# States in which no consumer can commit over a reset (as kafka-consumer-groups.sh requires).
RESETTABLE_STATES = ("Empty", "Dead")
_RETRY_BACKOFF_SECONDS = 0.2
_COORDINATOR_NOT_READY = (KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                          KafkaError.COORDINATOR_NOT_AVAILABLE)


class GroupToolError(ToolError):
    """A request the tool cannot carry out, phrased for the operator."""


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


def group_state(admin: AdminClient, group: str, request_timeout: float) -> tuple[str, tuple[Member, ...]]:
    """The group's state name and members; a group the coordinator does not know is "Dead".

    A coordinator that is moving or still loading (NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS,
    common right after a broker starts) is asked again until ``request_timeout`` has passed.
    """
    deadline = time.monotonic() + request_timeout
    while True:
        future = admin.describe_consumer_groups([group], request_timeout=request_timeout)[group]
        try:
            description = result_of(future, request_timeout)
            break
        except KafkaException as error:
            reason = error.args[0] if error.args else None
            if isinstance(reason, KafkaError) and reason.code() == KafkaError.GROUP_ID_NOT_FOUND:
                return "Dead", ()
            if not (isinstance(reason, KafkaError) and reason.code() in _COORDINATOR_NOT_READY
                    and time.monotonic() < deadline):
                raise
            time.sleep(_RETRY_BACKOFF_SECONDS)  # the coordinator gives no event to wait on
    members = tuple(
        Member(m.member_id, m.client_id, m.host,
               tuple((tp.topic, tp.partition) for tp in (m.assignment.topic_partitions if m.assignment else ())))
        for m in description.members)
    return group_state_name(description.state), members


def describe_group(config: Config, group: str) -> GroupDescription:
    timeout = config.kafka.request_timeout_seconds
    admin = admin_client(config.kafka)
    state, members = group_state(admin, group, timeout)
    committed = _committed(admin, group, timeout)
    owners = {tp: m.member_id for m in members for tp in m.assigned}
    keys = sorted(set(committed) | set(owners))
    watermarks = fetch_watermarks(admin, keys, timeout) if keys else None
    partitions = tuple(
        PartitionPosition(topic, partition, committed.get((topic, partition)),
                          watermarks.high.get((topic, partition)) if watermarks else None,
                          watermarks.low.get((topic, partition)) if watermarks else None,
                          owners.get((topic, partition)))
        for topic, partition in keys)
    return GroupDescription(group, state, members, partitions)


def _committed(admin: AdminClient, group: str, timeout: float) -> dict[Partition, int]:
    result = fetch_committed_offsets(admin, [group], timeout, concurrency=1)[group]
    if isinstance(result, BaseException):
        raise result
    return result


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
            try:
                moment = datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(f"{value!r} is not an ISO 8601 time (e.g. 2026-01-31T12:00:00Z)") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)  # a time without zone is read as UTC
            return cls("timestamp", timestamp_ms=int(moment.timestamp() * 1000))
        raise ValueError(f"{text!r}: expected earliest, latest, offset:N or timestamp:ISO-8601")


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
    topic: str
    target: ResetTarget
    state: str
    members: tuple[Member, ...]
    partitions: tuple[PlannedReset, ...]


@dataclass(frozen=True)
class ResetResult:
    plan: ResetPlan
    # Partitions whose committed offset read back after the reset differs from the plan.
    mismatched: dict[Partition, int | None]


def plan_reset(config: Config, group: str, topic: str, target: ResetTarget) -> ResetPlan:
    """Current and new committed offset of every partition of ``topic``; changes nothing.

    An ``offset:N`` outside a partition's retained range is clamped into it (log start … high
    watermark), as kafka-consumer-groups.sh does; a time after the last record gives the high
    watermark.
    """
    timeout = config.kafka.request_timeout_seconds
    admin = admin_client(config.kafka)
    partitions = topic_partitions(admin, [topic], timeout).get(topic)
    if not partitions:
        raise GroupToolError(f"topic {topic!r} does not exist")
    keys = [(topic, p) for p in partitions]
    watermarks = fetch_watermarks(admin, keys, timeout)
    if watermarks.errors:
        unread = ", ".join(f"{t}[{p}]" for t, p in sorted(watermarks.errors))
        raise GroupToolError(f"cannot read the offsets of {unread}: {next(iter(watermarks.errors.values()))}")
    at_time = _offsets_for_time(admin, keys, target.timestamp_ms, timeout) if target.kind == "timestamp" else {}
    state, members = group_state(admin, group, timeout)
    committed = _committed(admin, group, timeout)
    planned = []
    for key in keys:
        low, high = watermarks.low[key], watermarks.high[key]
        if target.kind == "earliest":
            new = low
        elif target.kind == "latest":
            new = high
        elif target.kind == "offset":
            new = min(max(target.offset, low), high)
        else:
            found = at_time[key]
            new = high if found < 0 else found
        planned.append(PlannedReset(key[0], key[1], committed.get(key), new, low, high))
    return ResetPlan(group, topic, target, state, members, tuple(planned))


def _offsets_for_time(admin: AdminClient, keys: list[Partition], timestamp_ms: int, timeout: float
                      ) -> dict[Partition, int]:
    futures = admin.list_offsets({TopicPartition(t, p): OffsetSpec.for_timestamp(timestamp_ms) for t, p in keys},
                                 request_timeout=timeout)
    return {(tp.topic, tp.partition): result_of(future, timeout).offset for tp, future in futures.items()}


def execute_reset(config: Config, plan: ResetPlan) -> ResetResult:
    """Commit the plan's offsets for the group, then read them back.

    Refused unless the group is Empty or Dead right now (checked again, not taken from the plan).
    """
    timeout = config.kafka.request_timeout_seconds
    admin = admin_client(config.kafka)
    state, members = group_state(admin, plan.group, timeout)
    if state not in RESETTABLE_STATES:
        who = ", ".join(f"{m.client_id}@{m.host}" for m in members) or "none listed"
        raise GroupToolError(f"group {plan.group!r} is {state} with {len(members)} member(s) ({who}); "
                             f"stop its consumers first: a live consumer would commit over the reset")
    request = ConsumerGroupTopicPartitions(
        plan.group, [TopicPartition(p.topic, p.partition, p.new) for p in plan.partitions])
    future = admin.alter_consumer_group_offsets([request], request_timeout=timeout)[plan.group]
    answer = result_of(future, timeout)
    failed = [f"{tp.topic}[{tp.partition}]: {tp.error.str()}" for tp in answer.topic_partitions if tp.error]
    if failed:
        raise GroupToolError(f"the broker refused the reset of {plan.group!r}: {'; '.join(failed)}")
    committed = _committed(admin, plan.group, timeout)
    mismatched = {(p.topic, p.partition): committed.get((p.topic, p.partition)) for p in plan.partitions
                  if committed.get((p.topic, p.partition)) != p.new}
    return ResetResult(plan, mismatched)
