"""What each of the simulator's incidents makes page, where, and what must stay silent: the
contract the incident tests hold the generated rules and routing to, and what docs/incidents.md
tells on-call.

- ``pages``: alerts that must reach Slack while the incident lasts, in the channel their severity
  routes to, and send their resolved message once the fault is stopped.
- ``silenced``: alerts that fire too but that the generated inhibitions must keep out of Slack
  while the incident lasts (Alertmanager holds them as inhibited).
- ``may_follow``: consequences that may page as well, depending on how long the fault lasts and
  on how much history Prometheus has (the SLO's long windows); when they page, they resolve too,
  except those in ``lingering``, whose windows outlast the incident on purpose.

Anything else that reaches Slack during an incident is a false page.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from alerts.config import MonitoringConfig
from alerts.rules import alerts as alert_rules


@dataclass(frozen=True)
class Expected:
    pages: tuple[str, ...]
    silenced: tuple[str, ...] = ()
    may_follow: tuple[str, ...] = ()
    lingering: tuple[str, ...] = ()
    why: str = ""

    @property
    def alertnames(self) -> frozenset[str]:
        return frozenset((*self.pages, *self.silenced, *self.may_follow))


EXPECTED: dict[str, Expected] = {
    "service-down": Expected(
        pages=("TreeServiceDown",),
        why="its probe fails (connection refused); its status is 'unknown', not degraded",
    ),
    "service-degraded": Expected(
        pages=("TreeServiceDegraded",),
        why="it answers, with status degraded: a warning, not a page",
    ),
    "service-unhealthy": Expected(
        pages=("TreeServiceDegraded",),
        why="it answers (HTTP 503 with a JSON status), so the probe succeeds and reads 'unhealthy'",
    ),
    "stage-stalled": Expected(
        pages=("LowThroughput", "ConsumerGroupStalled"),
        silenced=("ConsumerLagTooOld",),
        may_follow=("HighConsumerLag",),
        why="nothing is processed while the backlog grows (LowThroughput first); once no offset has moved for"
            " 10 minutes ConsumerGroupStalled pages, and inhibits the lag alerts of the same group",
    ),
    "stage-slow": Expected(
        pages=("LowThroughput",),
        may_follow=("ConsumerLagTooOld",),
        why="the stage keeps committing, below the floor, while its backlog grows; left long enough its oldest"
            " waiting record gets too old as well",
    ),
    "failure-rate": Expected(
        pages=("HighErrorRate", "DLQOverflow"),
        may_follow=("DLQNewRecords", "StageErrorBudgetBurn"),
        lingering=("StageErrorBudgetBurn",),
        why="every failure is a failed event and a dead letter; the new dead letters warn before they overflow,"
            " and the failures burn the stage's error budget (its 6-hour window outlasts the incident)",
    ),
    "dlq-burst": Expected(
        pages=("DLQOverflow",),
        silenced=("DLQNewRecords",),
        why="more than 10 dead letters at once: the page inhibits the warning about the same topic",
    ),
    "broker-down": Expected(
        pages=("KafkaBrokersDown", "KafkaUnderReplicatedPartitions", "KafkaLeaderlessPartitions"),
        may_follow=("TreewatchCollectorFailing", "TreewatchDataStale", "KafkaConsumerGroupsPartiallyRead",
                    "ConsumerGroupStalled"),
        why="the broker still hosts replicas: partitions it replicated are under-replicated, those it was the only"
            " replica of have no leader; reading them fails for the exporter's DLQ reader meanwhile; a stage whose"
            " consumer cannot commit while its coordinator moves or its group rebalances may stall for real",
    ),
    "exporter-down": Expected(
        pages=("TreewatchExporterDown",),
        why="Prometheus' scrapes fail; every other series goes stale at once, so nothing else fires (or resolves"
            " falsely: what was firing resolves and fires again when the exporter is back)",
    ),
}


def severities(config: MonitoringConfig) -> dict[str, set[str]]:
    """alertname -> the severities its rules give it (StageErrorBudgetBurn has two)."""
    found: dict[str, set[str]] = {}
    for rule in alert_rules(config):
        found.setdefault(rule.name, set()).add(rule.severity)
    return found


def channels(config: MonitoringConfig) -> dict[str, str]:
    """severity -> the Slack channel the generated routing sends it to."""
    return {"critical": config.slack_oncall_channel, "warning": config.slack_alerts_channel}


def unknown_alertnames(config: MonitoringConfig, names: Iterable[str]) -> list[str]:
    known = severities(config)
    return sorted(name for name in names if name not in known)
