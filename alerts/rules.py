"""Prometheus recording and alerting rules for the tree stamping pipeline, built from MonitoringConfig.

The guide's four alerts keep their names, thresholds, ``for`` and severities; where the guide's
expression misbehaves the fix is here and the reason is in ``docs/runbooks.md``. Consumer-group
metrics carry no ``stage``: the recording rule ``treewatch:consumer_group_stage:info`` holds the
(group, stage) pairs of the config and the group rules join it (``group_left (stage)``), so a
group alert says which stage is stuck. Groups outside the pipeline are therefore not alerted on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alerts.config import GROUPS_DLQ_DASHBOARD_UID, OVERVIEW_DASHBOARD_UID, MonitoringConfig

SEVERITIES = ("critical", "warning", "info")

CONSUMER_GROUP_STAGE = "treewatch:consumer_group_stage:info"
STAGE_CONSUMER_LAG = "treewatch:stage_consumer_lag:sum"
STAGE_PROCESSED_RATE = "treewatch:stage_events_processed:rate5m"
DLQ_RECORDS_WRITTEN = "treewatch:dlq_records_written:increase5m"
# The SLO's windows: 5m..6h for the fast burn pairs, 2h..3d for the slow ones.
ERROR_RATIO_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")


def error_ratio_rule(window: str) -> str:
    return f"treewatch:stage_error_ratio:rate{window}"


@dataclass(frozen=True)
class Recording:
    record: str
    expr: str

    def to_dict(self) -> dict[str, Any]:
        return {"record": self.record, "expr": self.expr}


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    dashboard_uid: str
    labels: dict[str, str] = field(default_factory=dict)
    # False only where the expression's value carries no information (absent(), vector(1)).
    shows_value: bool = True

    @property
    def anchor(self) -> str:
        """The runbook section: GitHub's anchor of a heading that is the alert's name."""
        return self.name.lower()

    def to_dict(self, config: MonitoringConfig) -> dict[str, Any]:
        rule: dict[str, Any] = {"alert": self.name, "expr": self.expr}
        if self.for_ != "0m":
            rule["for"] = self.for_
        rule["labels"] = {"severity": self.severity, **self.labels}
        rule["annotations"] = {
            "summary": self.summary,
            "description": self.description,
            "runbook_url": config.runbook_url(self.anchor),
            "dashboard_url": config.dashboard_url(self.dashboard_uid),
        }
        return rule


@dataclass(frozen=True)
class RuleGroup:
    name: str
    rules: tuple[Recording | Alert, ...]
    interval: str = "30s"


def _num(value: float) -> str:
    """A threshold as PromQL reads it, without float noise (14.4 * 0.001 -> 0.0144)."""
    return f"{value:.6g}"


def _with_stage(expr: str) -> str:
    """Attach the stage of a consumer group (see the module docstring)."""
    return f"({expr}) * on (group) group_left (stage) {CONSUMER_GROUP_STAGE}"


def recording_rules(config: MonitoringConfig) -> RuleGroup:
    job = config.exporter_selector
    stage_pairs = " or ".join(
        f'label_replace(label_replace(vector(1), "group", "{group}", "", ""), "stage", "{stage}", "", "")'
        for group, stage in config.stage_groups
    )
    processed = f"tree_events_processed_total{{{job}}}"
    failed = f'tree_events_processed_total{{{job}, status="failed"}}'
    lag = f"kafka_consumer_group_lag{{{job}}}"
    ratios = tuple(
        Recording(
            error_ratio_rule(window),
            # A stage without failed series counts 0 failures; a stage that processed nothing
            # has no ratio at all (never 0/0 = NaN).
            f"(sum by (stage) (rate({failed}[{window}])) or sum by (stage) (rate({processed}[{window}])) * 0)"
            f" / (sum by (stage) (rate({processed}[{window}])) > 0)",
        )
        for window in ERROR_RATIO_WINDOWS
    )
    return RuleGroup("treewatch.recording", (
        Recording(CONSUMER_GROUP_STAGE, stage_pairs),
        Recording(STAGE_CONSUMER_LAG, f"sum by (stage) ({_with_stage(lag)})"),
        Recording(STAGE_PROCESSED_RATE, f"sum by (stage) (rate({processed}[5m]))"),
        Recording(
            DLQ_RECORDS_WRITTEN,
            # The DLQ's high watermark counts every dead letter ever written, whatever retention
            # or reprocessing did since; the exporter's DLQ series say which stage a topic is.
            f"sum by (stage, topic) (increase(kafka_topic_partition_current_offset"
            f"{{{job}, {config.dlq_topic_selector}}}[5m])"
            f" * on (topic) group_left (stage) group by (topic, stage) (tree_dlq_retained_records{{{job}}}))",
        ),
        *ratios,
    ))


def guide_alerts(config: MonitoringConfig) -> RuleGroup:
    """The guide's four, under the guide's group name."""
    job = config.exporter_selector
    lag = _with_stage(f"kafka_consumer_group_lag{{{job}}}")
    return RuleGroup("tree_stamping_alerts", (
        Alert(
            "HighConsumerLag",
            f"{lag} > {config.consumer_lag_records}",
            "5m", "warning",
            "High consumer lag detected",
            "Consumer group {{ $labels.group }} (stage {{ $labels.stage }}) has lag of"
            " {{ $value | humanize }} records on {{ $labels.topic }} partition {{ $labels.partition }}"
            f" (threshold {config.consumer_lag_records}).",
            GROUPS_DLQ_DASHBOARD_UID,
        ),
        Alert(
            "DLQOverflow",
            f"{DLQ_RECORDS_WRITTEN} > {config.dlq_overflow_records_5m}",
            "1m", "critical",
            "Dead Letter Queue overflow",
            "DLQ topic {{ $labels.topic }} (stage {{ $labels.stage }}) has {{ $value | humanize }} new"
            f" failures in the last 5 minutes (threshold {config.dlq_overflow_records_5m}).",
            GROUPS_DLQ_DASHBOARD_UID,
        ),
        Alert(
            "LowThroughput",
            f"{STAGE_PROCESSED_RATE} < {_num(config.low_throughput_events_per_second)}"
            f" and on (stage) {STAGE_CONSUMER_LAG} > 0",
            "5m", "warning",
            "Low event processing throughput",
            "Stage {{ $labels.stage }} throughput is {{ $value | humanize }} events/sec while records wait"
            f" for it (target: ≥{_num(config.low_throughput_events_per_second)} events/sec).",
            OVERVIEW_DASHBOARD_UID,
        ),
        Alert(
            "HighErrorRate",
            f"{error_ratio_rule('5m')} > {_num(config.error_ratio)}",
            "5m", "critical",
            "High event processing error rate",
            "Stage {{ $labels.stage }} error rate is {{ $value | humanizePercentage }}"
            f" (target: <{_num(config.error_ratio * 100)}%).",
            OVERVIEW_DASHBOARD_UID,
        ),
    ))


def slo_alerts(config: MonitoringConfig) -> RuleGroup:
    budget = 1 - config.slo_objective
    objective = f"{_num(config.slo_objective * 100)}%"

    def burning(long: str, short: str, factor: float) -> str:
        threshold = _num(factor * budget)
        return f"({error_ratio_rule(long)} > {threshold} and {error_ratio_rule(short)} > {threshold})"

    absent = " or ".join(
        f"absent(tree_events_processed_total{{{config.exporter_selector}, stage=\"{stage}\"}})"
        for _, stage in config.stage_groups
    )
    def description(factors: str, consequence: str) -> str:
        return (
            "Stage {{ $labels.stage }} fails {{ $value | humanizePercentage }} of its events, burning its"
            f" {objective} error budget {factors} times faster than allowed: {consequence}."
        )

    return RuleGroup("treewatch.slo", (
        Alert(
            "StageErrorBudgetBurn",
            f"{burning('1h', '5m', config.burn_rate_fast_1h)}"
            f" or {burning('6h', '30m', config.burn_rate_fast_6h)}",
            "2m", "critical",
            "A stage is burning its error budget fast",
            description(f"{_num(config.burn_rate_fast_6h)} to {_num(config.burn_rate_fast_1h)}",
                               "at this rate the 30-day budget is gone within days"),
            OVERVIEW_DASHBOARD_UID,
            labels={"burn": "fast"},
        ),
        Alert(
            "StageErrorBudgetBurn",
            f"{burning('1d', '2h', config.burn_rate_slow_1d)}"
            f" or {burning('3d', '6h', config.burn_rate_slow_3d)}",
            "15m", "warning",
            "A stage is burning its error budget slowly",
            description(f"{_num(config.burn_rate_slow_3d)} to {_num(config.burn_rate_slow_1d)}",
                               "the 30-day budget will not last the month"),
            OVERVIEW_DASHBOARD_UID,
            labels={"burn": "slow"},
        ),
        Alert(
            "StageSLIMissing",
            absent,
            "10m", "warning",
            "A stage's SLI has no data",
            "Prometheus has no tree_events_processed_total series for stage {{ $labels.stage }}, so its error"
            " ratio and error budget cannot be computed and the SLO alerts for it are blind.",
            OVERVIEW_DASHBOARD_UID,
            shows_value=False,
        ),
    ))


def kafka_alerts(config: MonitoringConfig) -> RuleGroup:
    job = config.exporter_selector
    cluster = f'{job}, collector="kafka_cluster"'
    return RuleGroup("treewatch.kafka", (
        Alert(
            "KafkaUnavailable",
            f"time() - treewatch_collector_last_success_timestamp_seconds{{{cluster}}}"
            f" and treewatch_collector_success{{{cluster}}} == 0",
            "1m", "critical",
            "Kafka is unavailable",
            "The treewatch exporter at {{ $labels.instance }} cannot read the Kafka cluster's metadata; its"
            " last successful read was {{ $value | humanizeDuration }} ago.",
            OVERVIEW_DASHBOARD_UID,
        ),
        Alert(
            "KafkaBrokersDown",
            f"kafka_cluster_brokers_down{{{job}}} > 0",
            "1m", "critical",
            "Kafka brokers are down",
            "{{ $value | humanize }} Kafka broker(s) host replicas but are not live.",
            OVERVIEW_DASHBOARD_UID,
        ),
        Alert(
            "KafkaLeaderlessPartitions",
            f"kafka_topic_leaderless_partitions{{{job}}} > 0",
            "1m", "critical",
            "Kafka partitions have no leader",
            "Topic {{ $labels.topic }} has {{ $value | humanize }} partition(s) without a leader: nothing"
            " can be written to or read from them.",
            OVERVIEW_DASHBOARD_UID,
        ),
        Alert(
            "KafkaUnderReplicatedPartitions",
            f"kafka_topic_under_replicated_partitions{{{job}}} > 0",
            "5m", "warning",
            "Kafka partitions are under-replicated",
            "Topic {{ $labels.topic }} has {{ $value | humanize }} under-replicated partition(s): one more"
            " broker failure can make them unavailable or lose data.",
            OVERVIEW_DASHBOARD_UID,
        ),
    ))


def consumer_group_alerts(config: MonitoringConfig) -> RuleGroup:
    job = config.exporter_selector
    lag = f"kafka_consumer_group_lag{{{job}}}"
    return RuleGroup("treewatch.consumer-groups", (
        Alert(
            "ConsumerGroupStalled",
            _with_stage(
                f"time() - kafka_consumer_group_committed_offset_change_timestamp_seconds{{{job}}}"
                f" > {config.consumer_stalled_seconds} and {lag} > 0"
            ),
            "5m", "critical",
            "A consumer group makes no progress",
            "Consumer group {{ $labels.group }} (stage {{ $labels.stage }}) has not committed progress on"
            " {{ $labels.topic }} partition {{ $labels.partition }} for {{ $value | humanizeDuration }}"
            " although records wait there.",
            GROUPS_DLQ_DASHBOARD_UID,
        ),
        Alert(
            "ConsumerGroupNoMembers",
            _with_stage(
                f"sum by (job, instance, group) ({lag}) > 0"
                f" and on (job, instance, group) kafka_consumer_group_members{{{job}}} == 0"
            ),
            "5m", "critical",
            "A stage's consumer group has no members while work waits",
            "Consumer group {{ $labels.group }} of stage {{ $labels.stage }} has no members while"
            " {{ $value | humanize }} records wait for it.",
            GROUPS_DLQ_DASHBOARD_UID,
        ),
        Alert(
            "ConsumerLagTooOld",
            _with_stage(f"max by (job, instance, group, topic) (kafka_consumer_group_lag_seconds{{{job}}})")
            + f" > {config.consumer_lag_max_age_seconds}",
            "5m", "warning",
            "The oldest unconsumed record is too old",
            "The oldest record consumer group {{ $labels.group }} (stage {{ $labels.stage }}) has not"
            " consumed from {{ $labels.topic }} is {{ $value | humanizeDuration }} old"
            f" (threshold {config.consumer_lag_max_age_seconds}s).",
            GROUPS_DLQ_DASHBOARD_UID,
        ),
    ))


def dlq_alerts(config: MonitoringConfig) -> RuleGroup:
    job = config.exporter_selector
    return RuleGroup("treewatch.dlq", (
        Alert(
            "DLQNewRecords",
            f"{DLQ_RECORDS_WRITTEN} > 0",
            "1m", "warning",
            "New records in a dead letter queue",
            "{{ $value | humanize }} new dead letter(s) arrived in {{ $labels.topic }}"
            " (stage {{ $labels.stage }}) in the last 5 minutes.",
            GROUPS_DLQ_DASHBOARD_UID,
        ),
        Alert(
            "DLQRecordsUnhandled",
            f"time() - tree_dlq_oldest_record_timestamp_seconds{{{job}}}"
            f" > {config.dlq_oldest_record_max_age_seconds}",
            "5m", "warning",
            "Dead letters are left unhandled",
            "The oldest dead letter in {{ $labels.topic }} (stage {{ $labels.stage }}) is"
            " {{ $value | humanizeDuration }} old: nobody has reprocessed or purged it.",
            GROUPS_DLQ_DASHBOARD_UID,
        ),
    ))


def service_alerts(config: MonitoringConfig) -> RuleGroup:
    job = config.exporter_selector
    not_healthy = f'tree_service_status{{{job}, status=~"degraded|unhealthy"}}'
    return RuleGroup("treewatch.services", (
        Alert(
            "TreeServiceDown",
            # The value is the share of good probes, so a flapping service reads differently
            # from a dead one.
            f"avg_over_time(tree_service_probe_success{{{job}}}[5m])"
            f" and tree_service_probe_success{{{job}}} == 0",
            "2m", "critical",
            "A tree stamping service is down",
            "Service {{ $labels.service }} does not answer its health check;"
            " {{ $value | humanizePercentage }} of its probes succeeded over the last 5 minutes.",
            OVERVIEW_DASHBOARD_UID,
        ),
        Alert(
            "TreeServiceDegraded",
            f"avg_over_time({not_healthy}[15m]) and {not_healthy} == 1",
            "5m", "warning",
            "A tree stamping service reports itself degraded",
            "Service {{ $labels.service }} reports status {{ $labels.status }}; it did for"
            " {{ $value | humanizePercentage }} of the last 15 minutes.",
            OVERVIEW_DASHBOARD_UID,
        ),
    ))


def meta_alerts(config: MonitoringConfig) -> RuleGroup:
    job = config.exporter_selector
    return RuleGroup("treewatch.meta", (
        Alert(
            "TreewatchExporterDown",
            f"avg_over_time(up{{{job}}}[5m]) and up{{{job}}} == 0",
            "2m", "critical",
            "The treewatch exporter is down",
            "Prometheus cannot scrape the treewatch exporter at {{ $labels.instance }}; {{ $value |"
            " humanizePercentage }} of scrapes succeeded over the last 5 minutes. Every other pipeline"
            " alert is blind meanwhile.",
            OVERVIEW_DASHBOARD_UID,
        ),
        Alert(
            "TreewatchExporterMissing",
            f"absent(up{{{job}}})",
            "5m", "critical",
            "Prometheus does not scrape the treewatch exporter",
            "Prometheus has no target for job {{ $labels.job }}: the scrape configuration lost the exporter,"
            " and every other pipeline alert is blind.",
            OVERVIEW_DASHBOARD_UID,
            shows_value=False,
        ),
        Alert(
            "TreewatchCollectorFailing",
            f"time() - treewatch_collector_last_success_timestamp_seconds{{{job}}}"
            f" and treewatch_collector_success{{{job}}} == 0",
            "5m", "warning",
            "A treewatch collector is failing",
            "Collector {{ $labels.collector }} of the exporter at {{ $labels.instance }} keeps failing;"
            " it last succeeded {{ $value | humanizeDuration }} ago.",
            OVERVIEW_DASHBOARD_UID,
        ),
        Alert(
            "TreewatchDataStale",
            f"time() - treewatch_collector_last_success_timestamp_seconds{{{job}}}"
            f" > {config.data_stale_seconds}",
            "2m", "warning",
            "treewatch serves stale data",
            "Collector {{ $labels.collector }} of the exporter at {{ $labels.instance }} last succeeded"
            " {{ $value | humanizeDuration }} ago"
            f" (threshold {config.data_stale_seconds}s); its panels and alerts show old numbers.",
            OVERVIEW_DASHBOARD_UID,
        ),
        Alert(
            "Watchdog",
            "vector(1)",
            "0m", "info",
            "The alerting pipeline is alive",
            "This alert always fires (vector({{ $value }})); the heartbeat receiver alarms when it stops"
            " arriving, which means Prometheus, its rules or Alertmanager are broken.",
            OVERVIEW_DASHBOARD_UID,
            shows_value=False,
        ),
    ))


def rule_groups(config: MonitoringConfig) -> tuple[RuleGroup, ...]:
    return (
        recording_rules(config),
        guide_alerts(config),
        slo_alerts(config),
        kafka_alerts(config),
        consumer_group_alerts(config),
        dlq_alerts(config),
        service_alerts(config),
        meta_alerts(config),
    )


def alerts(config: MonitoringConfig) -> tuple[Alert, ...]:
    return tuple(rule for group in rule_groups(config) for rule in group.rules if isinstance(rule, Alert))


def recordings(config: MonitoringConfig) -> tuple[Recording, ...]:
    return tuple(rule for group in rule_groups(config) for rule in group.rules if isinstance(rule, Recording))


def prometheus_rules(config: MonitoringConfig) -> dict[str, Any]:
    """The rule file's content, as Prometheus reads it."""
    return {"groups": [
        {
            "name": group.name,
            "interval": group.interval,
            "rules": [
                rule.to_dict(config) if isinstance(rule, Alert) else rule.to_dict() for rule in group.rules
            ],
        }
        for group in rule_groups(config)
    ]}
