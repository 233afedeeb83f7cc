"""The guide's quick status check: services' health, the Kafka cluster, lag per stage group and
dead letters retained per stage, each read from the source of truth (health endpoints, cluster
metadata, committed offsets against high watermarks, DLQ watermarks).

Every part is gathered even when another fails, so one down broker or service never hides the
rest; ``Status.problems`` lists what makes the pipeline unhealthy (the command's exit code). A
cluster that cannot be reached at all is described once (what answers at the bootstrap address,
pipeline.kafka_probe); errors that pass by themselves, such as a leader election, are asked again
until the deadline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pipeline import health
from pipeline.config import Config
from pipeline.kafka import KafkaSession
from pipeline.kafka_errors import (
    DEFAULT_RETRY_SECONDS,
    all_watermarks,
    describe_cluster,
    error_text,
    partitions_of,
)
from pipeline.kafka_probe import KafkaUnreachable, check_reachable
from tools.groups import UnknownGroup, describe_group


@dataclass(frozen=True)
class ClusterStatus:
    cluster_id: str | None
    controller_id: int | None
    brokers: tuple[str, ...]  # "id host:port"
    error: str | None = None


@dataclass(frozen=True)
class GroupLag:
    stage: str
    group: str
    state: str | None
    members: int
    lag: int | None  # summed over the partitions with a committed offset
    partitions_without_commit: int  # partitions of the request topic the group never committed on
    error: str | None = None
    exists: bool = True  # False: Kafka knows no such group (the stage never committed)


@dataclass(frozen=True)
class DlqDepth:
    stage: str
    topic: str
    retained: int | None  # high watermark − log start, summed over partitions
    error: str | None = None


@dataclass(frozen=True)
class Status:
    services: tuple[health.ProbeResult, ...]
    cluster: ClusterStatus
    groups: tuple[GroupLag, ...]
    dlqs: tuple[DlqDepth, ...]

    @property
    def problems(self) -> list[str]:
        """What is unhealthy, one line each; empty when all is well. Retained dead letters and lag
        with consumers at work are warnings (see ``warnings``), not problems."""
        found = [f"service {s.service}: {s.status if s.success else s.failure_reason} ({s.detail})"
                 for s in self.services if not (s.success and s.status == health.HEALTHY)]
        if self.cluster.error:
            # Groups and DLQs were not read then; the one cause is reported once.
            return [*found, f"kafka: {self.cluster.error}"]
        for g in self.groups:
            if g.error:
                found.append(f"group {g.group}: {g.error}")
            elif g.lag and g.members == 0:
                found.append(f"group {g.group}: {g.lag} records waiting and no consumer ({g.state})")
        found += [f"dlq {d.topic}: {d.error}" for d in self.dlqs if d.error]
        return found

    @property
    def warnings(self) -> list[str]:
        absent = [f"group {g.group} does not exist: the {g.stage} stage has never committed"
                  for g in self.groups if not g.exists]
        return absent + [f"dlq {d.stage}: {d.retained} dead letters retained" for d in self.dlqs if d.retained]


def gather_status(config: Config, *, deadline: float | None = None) -> Status:
    """Everything the quick status check shows; Kafka reads retry passing errors until ``deadline``
    (time.monotonic(); default DEFAULT_RETRY_SECONDS from now). Every Kafka read goes through one
    admin client."""
    deadline = time.monotonic() + DEFAULT_RETRY_SECONDS if deadline is None else deadline
    services = tuple(health.probe_all(health.targets(config.services),
                                      timeout_seconds=config.exporter.health_timeout_seconds,
                                      max_body_bytes=config.exporter.health_max_body_bytes))
    with KafkaSession(config.kafka) as kafka:
        cluster = _cluster(config, kafka, deadline)
        if cluster.error:
            unreachable = "not read: Kafka unreachable"
            groups = tuple(GroupLag(s.name, s.group, None, 0, None, 0, unreachable) for s in config.stages)
            dlqs = tuple(DlqDepth(s.name, s.dlq_topic, None, unreachable) for s in config.stages)
            return Status(services, cluster, groups, dlqs)
        return Status(services, cluster, tuple(_group_lag(config, kafka, s, deadline) for s in config.stages),
                      _dlq_depths(config, kafka, deadline))


def _cluster(config: Config, kafka: KafkaSession, deadline: float) -> ClusterStatus:
    try:
        check_reachable(config, session=kafka)  # what the other tools check first, with the same description
    except KafkaUnreachable as unreachable:
        return ClusterStatus(None, None, (), str(unreachable))
    try:
        description = describe_cluster(kafka, deadline=deadline)
    except Exception as error:  # KafkaException, TimeoutError: the cluster is what is unhealthy
        return ClusterStatus(None, None, (), f"the cluster does not answer: {error_text(error)}")
    controller = description.controller.id if description.controller is not None else None
    brokers = tuple(f"{node.id} {node.host}:{node.port}" for node in sorted(description.nodes, key=lambda n: n.id))
    return ClusterStatus(description.cluster_id, controller, brokers)


def _group_lag(config: Config, kafka: KafkaSession, stage, deadline: float) -> GroupLag:
    timeout = config.kafka.request_timeout_seconds
    try:
        partitions = partitions_of(kafka.admin, [stage.request_topic], deadline=deadline,
                                   request_timeout=timeout).get(stage.request_topic, [])
        described = describe_group(config, stage.group, deadline=deadline, session=kafka)
    except UnknownGroup:
        return GroupLag(stage.name, stage.group, None, 0, None, len(partitions), exists=False)
    except Exception as error:  # this group only; the others are still read
        return GroupLag(stage.name, stage.group, None, 0, None, 0, error_text(error))
    committed = {(p.topic, p.partition) for p in described.partitions if p.committed is not None}
    without = sum(1 for p in partitions if (stage.request_topic, p) not in committed)
    lag = sum(p.lag for p in described.partitions if p.lag is not None) if committed else None
    return GroupLag(stage.name, stage.group, described.state, len(described.members), lag, without)


def _dlq_depths(config: Config, kafka: KafkaSession, deadline: float) -> tuple[DlqDepth, ...]:
    timeout = config.kafka.request_timeout_seconds
    admin = kafka.admin
    try:
        partitions = partitions_of(admin, [s.dlq_topic for s in config.stages], deadline=deadline,
                                   request_timeout=timeout)
        keys = [(topic, p) for topic, ids in partitions.items() for p in ids]
        watermarks = all_watermarks(admin, keys, deadline=deadline, request_timeout=timeout)
    except Exception as error:
        return tuple(DlqDepth(s.name, s.dlq_topic, None, error_text(error)) for s in config.stages)
    depths = []
    for stage in config.stages:
        keys = [(stage.dlq_topic, p) for p in partitions.get(stage.dlq_topic, [])]
        if not keys:
            depths.append(DlqDepth(stage.name, stage.dlq_topic, None, "topic does not exist"))
        elif any(key in watermarks.errors for key in keys):
            depths.append(DlqDepth(stage.name, stage.dlq_topic, None, "offsets of some partitions not read"))
        else:
            depths.append(DlqDepth(stage.name, stage.dlq_topic,
                                   sum(watermarks.high[k] - watermarks.low[k] for k in keys)))
    return tuple(depths)
