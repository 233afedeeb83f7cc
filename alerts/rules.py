"""Prometheus recording and alerting rules for the tree stamping pipeline, built from MonitoringConfig.

The guide's four alerts keep their names, thresholds, ``for`` and severities; where the guide's
expression misbehaves the fix is here and the reason is in ``docs/runbooks.md``. Consumer-group
metrics carry no ``stage``: the exporter's ``tree_pipeline_stage_info{stage, group, request_topic,
dlq_topic}`` (the running pipeline's configuration) is joined to them, so a group alert says which
stage is stuck and a renamed group or topic needs no change here.

Group rules read the exporter's per-topic series (``kafka_consumer_group_topic_*``), which it reports
for every group whatever ``exporter.partition_series`` says, never the optional per-partition ones: they
give the same answers with per-partition series on, lag only, or off (docs/scale.md).

Recording rules are named level:metric:operations (level = the labels kept besides ``job``, ``env``
and ``cluster``; the names are in alerts/config.py because the dashboards query them too). Every
aggregation and join keeps ``env`` and ``cluster`` (alerts/environments.py): one Prometheus may watch
the pipelines of several environments, and their numbers must never add up or match. Two
exporter replicas scrape the same Kafka and report the same numbers, so the rules take the max over
``instance`` before they add anything up.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from alerts.config import (
    DLQ_RECORDS_WRITTEN,
    GROUPS_DLQ_DASHBOARD_UID,
    OVERVIEW_DASHBOARD_UID,
    STAGE_CONSUMER_LAG,
    STAGE_PROCESSED_RATE,
    MonitoringConfig,
    error_ratio_rule,
)
from alerts.environments import ENV_LABEL, except_in, keeping_environment, only_in
from exporter.metrics import TREE_EVENT_PROCESSING_SECONDS

SEVERITIES = ("critical", "warning", "info")

STAGE_INFO = "tree_pipeline_stage_info"
# The SLO's windows: 5m..6h for the fast burn pairs, 2h..3d for the slow ones.
ERROR_RATIO_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")


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
    # False only where the expression's value carries no information (vector(1), info series).
    shows_value: bool = True

    def to_dict(self, config: MonitoringConfig) -> dict[str, Any]:
        rule: dict[str, Any] = {"alert": self.name, "expr": self.expr}
        if self.for_ != "0m":
            rule["for"] = config.duration(self.for_)
        rule["labels"] = {"severity": self.severity, **self.labels, **config.extra_labels}
        rule["annotations"] = {
            "summary": self.summary,
            "description": self.description,
            "runbook_url": config.runbook_url(self.name),
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


def _one_replica(expr: str) -> str:
    """One value per series whatever the number of exporter replicas (see the module docstring)."""
    return f"max without (instance) ({expr})"


def _stage_info(config: MonitoringConfig) -> str:
    return f"{STAGE_INFO}{{{config.exporter_selector}}}"


def _with_stage(expr: str, config: MonitoringConfig) -> str:
    """Attach the stage of a consumer group: only the pipeline's groups remain."""
    info = f"group by ({keeping_environment('job', 'instance', 'group', 'stage')}) ({_stage_info(config)})"
    return f"({expr}) * on ({keeping_environment('job', 'instance', 'group')}) group_left (stage) {info}"


def _error_ratio(config: MonitoringConfig, window: str) -> str:
    job = config.exporter_selector
    window = config.duration(window)
    by_stage = keeping_environment("job", "stage")
    processed = f"sum by ({by_stage}) ({_one_replica(f'rate(tree_events_processed_total{{{job}}}[{window}])')})"
    failed = _one_replica(f'rate(tree_events_processed_total{{{job}, status="failed"}}[{window}])')
    # A stage without failed series counts 0 failures; a stage that processed nothing has no
    # ratio at all (never 0/0 = NaN).
    return f"(sum by ({by_stage}) ({failed}) or {processed} * 0) / ({processed} > 0)"


def recording_rules(config: MonitoringConfig) -> RuleGroup:
    job = config.exporter_selector
    lag = _one_replica(_with_stage(f"kafka_consumer_group_topic_lag{{{job}}}", config))
    processed = _one_replica(f"rate(tree_events_processed_total{{{job}}}[{config.duration('5m')}])")
    # Which topic is a stage's DLQ comes from the running configuration, not from the topic's name.
    dlq_topics = (f'group by ({keeping_environment("job", "topic", "stage")}) (label_replace({_stage_info(config)},'
                  f' "topic", "$1", "dlq_topic", "(.*)"))')
    dlq_window = config.duration(config.dlq_window)
    written = _one_replica(f"increase(kafka_topic_partition_current_offset{{{job}}}[{dlq_window}])")
    ratios = tuple(Recording(error_ratio_rule(window), _error_ratio(config, window))
                   for window in ERROR_RATIO_WINDOWS)
    return RuleGroup("treewatch.recording", (
        Recording(STAGE_CONSUMER_LAG, f"sum by ({keeping_environment('job', 'stage')}) ({lag})"),
        Recording(STAGE_PROCESSED_RATE, f"sum by ({keeping_environment('job', 'stage')}) ({processed})"),
        Recording(
            DLQ_RECORDS_WRITTEN,
            # The DLQ's high watermark counts every dead letter ever written, whatever retention
            # or reprocessing did since, and needs only the topics collector (not the DLQ tail).
            f"sum by ({keeping_environment('job', 'stage', 'topic')})"
            f" ({written} * on ({keeping_environment('job', 'topic')}) group_left (stage) {dlq_topics})",
        ),
        *ratios,
    ))


def slo_budget_rules(config: MonitoringConfig) -> RuleGroup:
    """The error ratio over the whole SLO window, for the error budget panel: a range of 30 days of
    raw counters is too heavy to compute on every dashboard refresh, so it is recorded, rarely."""
    return RuleGroup(
        "treewatch.slo-budget",
        (Recording(error_ratio_rule(config.slo_window), _error_ratio(config, config.slo_window)),),
        interval="5m",
    )


def guide_alerts(config: MonitoringConfig) -> RuleGroup:
    """The guide's four, under the guide's group name."""
    job = config.exporter_selector
    # The guide's per-partition "kafka_consumer_group_lag > 10000" as its largest partition per group and
    # topic: one alert per group and topic, however many of its partitions are over, at any granularity.
    lag = f"kafka_consumer_group_topic_max_lag{{{job}}}"
    # Groups outside the pipeline keep the guide's alert, without a stage.
    other_groups = (f'kafka_consumer_group_topic_max_lag{{{job}, group!~"{config.lag_ignored_groups}"}}'
                    f" unless on ({keeping_environment('job', 'instance', 'group')}) {_stage_info(config)}")
    backlog = config.low_throughput_events_per_second * config.seconds(config.low_throughput_backlog_seconds)
    exempt_stages = "|".join(config.low_throughput_exempt_stages)
    return RuleGroup("tree_stamping_alerts", (
        Alert(
            "HighConsumerLag",
            f"({_with_stage(lag, config)} or {other_groups}) > {config.consumer_lag_records}",
            config.high_consumer_lag_for, "warning",
            "High consumer lag detected",
            "Consumer group {{ $labels.group }}{{ with $labels.stage }} (stage {{ . }}){{ end }} has lag of"
            " {{ $value | humanize }} records on a partition of topic {{ $labels.topic }}"
            f" (threshold {config.consumer_lag_records}). Which partitions: the 'Lag per partition' panel or"
            " `treewatch groups describe {{ $labels.group }}`.",
            GROUPS_DLQ_DASHBOARD_UID,
        ),
        Alert(
            "DLQOverflow",
            f"{DLQ_RECORDS_WRITTEN} > {config.dlq_overflow_records_5m}",
            config.dlq_overflow_for, "critical",
            "Dead Letter Queue overflow",
            "DLQ topic {{ $labels.topic }} (stage {{ $labels.stage }}) has {{ $value | humanize }} new"
            f" failures in the last {config.duration(config.dlq_window)} (threshold {config.dlq_overflow_records_5m}).",
            GROUPS_DLQ_DASHBOARD_UID,
        ),
        Alert(
            "LowThroughput",
            f'{STAGE_PROCESSED_RATE}{{stage!~"{exempt_stages}"}} < {_num(config.low_throughput_events_per_second)}'
            f" and on ({keeping_environment('job', 'stage')}) {STAGE_CONSUMER_LAG} > {_num(backlog)}",
            config.low_throughput_for, "warning",
            "Low event processing throughput",
            "Stage {{ $labels.stage }} throughput is {{ $value | humanize }} events/sec while more than"
            f" {_num(backlog)} records wait for it"
            f" (target: ≥{_num(config.low_throughput_events_per_second)} events/sec).",
            OVERVIEW_DASHBOARD_UID,
        ),
        Alert(
            "HighErrorRate",
            f"{error_ratio_rule('5m')} > {_num(config.error_ratio)}"
            f" and on ({keeping_environment('job', 'stage')}) {STAGE_PROCESSED_RATE}"
            f" >= {_num(config.error_ratio_min_events_per_second)}",
            config.high_error_rate_for, "critical",
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

    job = config.exporter_selector
    # A stage the running pipeline has (its info series) but no processed counters for. The stages are
    # those of an exporter that reads the topics (the counters' source): with shards every shard tells
    # the stages, but only shard 0 the counters, and a shard 0 gone must silence this as one exporter gone does.
    counting = f'treewatch_collector_success{{{job}, collector="kafka_topics"}}'
    missing = (f"group by ({keeping_environment('job', 'stage')}) ({_stage_info(config)}"
               f" and on ({keeping_environment('job', 'instance')}) {counting})"
               f" unless on ({keeping_environment('job', 'stage')}) tree_events_processed_total{{{job}}}")
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
            config.fast_burn_for, "critical",
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
            config.slow_burn_for, "warning",
            "A stage is burning its error budget slowly",
            description(f"{_num(config.burn_rate_slow_3d)} to {_num(config.burn_rate_slow_1d)}",
                               "the 30-day budget will not last the month"),
            OVERVIEW_DASHBOARD_UID,
            labels={"burn": "slow"},
        ),
        Alert(
            "StageSLIMissing",
            missing,
            config.stage_sli_missing_for, "warning",
            "A stage's SLI has no data",
            "Prometheus has no tree_events_processed_total series for stage {{ $labels.stage }}, so its error"
            " ratio and error budget cannot be computed and the SLO alerts for it are blind.",
            OVERVIEW_DASHBOARD_UID,
            shows_value=False,
        ),
    ))


def _collector_failing(matchers: str) -> str:
    """A collector whose last run failed, valued by the age of its last success; 0 when it has not
    succeeded since the exporter started (the exporter has no last-success series for it then)."""
    success = f"treewatch_collector_success{{{matchers}}}"
    last_success = f"treewatch_collector_last_success_timestamp_seconds{{{matchers}}}"
    same_collector = keeping_environment("job", "instance", "collector")
    return (f"(time() - {last_success} and on ({same_collector}) {success} == 0)"
            f" or ({success} == 0 unless on ({same_collector}) {last_success})")


# For the value _collector_failing gives: an age, or 0 for "never".
_LAST_SUCCESS = ("{{ if $value }}it last succeeded {{ $value | humanizeDuration }} ago"
                 "{{ else }}it has not succeeded since the exporter started{{ end }}")


def kafka_alerts(config: MonitoringConfig) -> RuleGroup:
    job = config.exporter_selector
    return RuleGroup("treewatch.kafka", (
        Alert(
            "KafkaUnavailable",
            _collector_failing(f'{job}, collector="kafka_cluster"'),
            config.kafka_unavailable_for, "critical",
            "Kafka is unavailable",
            "The treewatch exporter at {{ $labels.instance }} cannot read the Kafka cluster's metadata;"
            f" {_LAST_SUCCESS}.",
            OVERVIEW_DASHBOARD_UID,
        ),
        Alert(
            "KafkaBrokersDown",
            f"kafka_cluster_brokers_down{{{job}}} > 0",
            config.kafka_brokers_down_for, "critical",
            "Kafka brokers are down",
            "{{ $value | humanize }} Kafka broker(s) host replicas but are not live.",
            OVERVIEW_DASHBOARD_UID,
        ),
        Alert(
            "KafkaLeaderlessPartitions",
            f"kafka_topic_leaderless_partitions{{{job}}} > 0",
            config.kafka_leaderless_partitions_for, "critical",
            "Kafka partitions have no leader",
            "Topic {{ $labels.topic }} has {{ $value | humanize }} partition(s) without a leader: nothing"
            " can be written to or read from them.",
            OVERVIEW_DASHBOARD_UID,
        ),
        Alert(
            "KafkaUnderReplicatedPartitions",
            f"kafka_topic_under_replicated_partitions{{{job}}} > 0",
            config.kafka_under_replicated_partitions_for, "warning",
            "Kafka partitions are under-replicated",
            "Topic {{ $labels.topic }} has {{ $value | humanize }} under-replicated partition(s): one more"
            " broker failure can make them unavailable or lose data.",
            OVERVIEW_DASHBOARD_UID,
        ),
    ))


def consumer_group_alerts(config: MonitoringConfig) -> RuleGroup:
    job = config.exporter_selector
    lag = f"kafka_consumer_group_topic_lag{{{job}}}"
    one_group = keeping_environment("job", "instance", "group")
    return RuleGroup("treewatch.consumer-groups", (
        Alert(
            "ConsumerGroupStalled",
            _with_stage(
                # The earliest last move among the topic's lagging partitions: the stalest one decides.
                f"time() - kafka_consumer_group_topic_oldest_progress_timestamp_seconds{{{job}}}"
                f" > {_num(config.seconds(config.consumer_stalled_seconds))} and {lag} > 0",
                config,
            ),
            config.consumer_group_stalled_for, "critical",
            "A consumer group makes no progress",
            "Consumer group {{ $labels.group }} (stage {{ $labels.stage }}) has not committed progress on a"
            " partition of topic {{ $labels.topic }} for {{ $value | humanizeDuration }} although records wait"
            " there. Which partitions: the 'Partitions with lag: time since the committed offset moved' panel or"
            " `treewatch groups describe {{ $labels.group }}`.",
            GROUPS_DLQ_DASHBOARD_UID,
        ),
        Alert(
            "ConsumerGroupNoMembers",
            _with_stage(
                f"sum by ({one_group}) ({lag}) > 0 and on ({one_group}) kafka_consumer_group_members{{{job}}} == 0",
                config,
            ),
            config.consumer_group_no_members_for, "critical",
            "A stage's consumer group has no members while work waits",
            "Consumer group {{ $labels.group }} of stage {{ $labels.stage }} has no members while"
            " {{ $value | humanize }} records wait for it.",
            GROUPS_DLQ_DASHBOARD_UID,
        ),
        Alert(
            "ConsumerLagTooOld",
            _with_stage(f"max by ({keeping_environment('job', 'instance', 'group', 'topic')})"
                        f" (kafka_consumer_group_topic_max_lag_seconds{{{job}}})", config)
            + f" > {_num(config.seconds(config.consumer_lag_max_age_seconds))}",
            config.consumer_lag_too_old_for, "warning",
            "The oldest unconsumed record is too old",
            "The oldest record consumer group {{ $labels.group }} (stage {{ $labels.stage }}) has not"
            " consumed from {{ $labels.topic }} is {{ $value | humanizeDuration }} old"
            f" (threshold {_num(config.seconds(config.consumer_lag_max_age_seconds))}s).",
            GROUPS_DLQ_DASHBOARD_UID,
        ),
        Alert(
            "KafkaConsumerGroupsPartiallyRead",
            # The exporter sets this only when the kafka_groups collector as a whole succeeded; a
            # collector that fails outright is TreewatchCollectorFailing's (or KafkaUnavailable's).
            f"kafka_consumer_group_read_errors{{{job}}} > {config.consumer_group_read_errors}",
            config.consumer_group_read_errors_for, "warning",
            "The exporter reads some consumer groups only partly",
            "The treewatch exporter at {{ $labels.instance }} failed {{ $value | humanize }} consumer-group"
            " read(s) (listing, describe or committed offsets) in its last refresh: some groups' lag,"
            " state or members may be missing, and their alerts blind. Its log names the step and error.",
            OVERVIEW_DASHBOARD_UID,
        ),
    ))


def dlq_alerts(config: MonitoringConfig) -> RuleGroup:
    job = config.exporter_selector
    return RuleGroup("treewatch.dlq", (
        Alert(
            "DLQNewRecords",
            f"{DLQ_RECORDS_WRITTEN} > 0",
            config.dlq_new_records_for, "warning",
            "New records in a dead letter queue",
            "{{ $value | humanize }} new dead letter(s) arrived in {{ $labels.topic }}"
            f" (stage {{{{ $labels.stage }}}}) in the last {config.duration(config.dlq_window)}.",
            GROUPS_DLQ_DASHBOARD_UID,
        ),
        Alert(
            "DLQRecordsUnhandled",
            f"time() - tree_dlq_oldest_record_timestamp_seconds{{{job}}}"
            f" > {_num(config.seconds(config.dlq_oldest_record_max_age_seconds))}",
            config.dlq_records_unhandled_for, "warning",
            "Dead letters are left unhandled",
            "The oldest dead letter in {{ $labels.topic }} (stage {{ $labels.stage }}) is"
            " {{ $value | humanizeDuration }} old: nobody has reprocessed or purged it.",
            GROUPS_DLQ_DASHBOARD_UID,
        ),
    ))


def _store_names(config: MonitoringConfig) -> str:
    """The stores' service names as one regular expression (an empty one matches no service)."""
    return "|".join(config.stores)


def _probe_down(config: MonitoringConfig, selector: str) -> str:
    """Services whose last probe failed, valued by the share of good probes over the probe window, so a
    flapping service reads differently from a dead one."""
    probe = f"tree_service_probe_success{{{selector}}}"
    return f"avg_over_time({probe}[{config.duration(config.service_probe_window)}]) and {probe} == 0"


def service_alerts(config: MonitoringConfig) -> RuleGroup:
    job = config.exporter_selector
    not_healthy = f'tree_service_status{{{job}, status=~"degraded|unhealthy"}}'
    return RuleGroup("treewatch.services", (
        Alert(
            "TreeServiceDown",
            # The stores have their own alerts (store_alerts).
            _probe_down(config, f'{job}, service!~"{_store_names(config)}"'),
            config.tree_service_down_for, "critical",
            "A tree stamping service is down",
            "Service {{ $labels.service }} does not answer its health check;"
            " {{ $value | humanizePercentage }} of its probes succeeded over the last"
            f" {config.duration(config.service_probe_window)}.",
            OVERVIEW_DASHBOARD_UID,
        ),
        Alert(
            "TreeServiceDegraded",
            f"avg_over_time({not_healthy}[{config.duration(config.service_degraded_window)}]) and {not_healthy} == 1",
            config.tree_service_degraded_for, "warning",
            "A tree stamping service reports itself degraded",
            "Service {{ $labels.service }} reports status {{ $labels.status }}; it did for"
            f" {{{{ $value | humanizePercentage }}}} of the last {config.duration(config.service_degraded_window)}.",
            OVERVIEW_DASHBOARD_UID,
        ),
    ))


def store_alerts(config: MonitoringConfig) -> RuleGroup:
    """The index stage's stores (the guide's issue 3): a store that is down is a warning while indexing
    copes (retries, a replica), and pages once the stage that writes into it fails or dead-letters
    events, which is files going missing from search. Alertmanager's inhibition mutes the warning of
    a store that pages."""
    job = config.exporter_selector
    down = _probe_down(config, f'{job}, service=~"{_store_names(config)}"')
    stage = f'stage="{config.store_stage}"'
    failing = (f"{error_ratio_rule('5m')}{{{stage}}} > {_num(config.error_ratio)}"
               f" or {DLQ_RECORDS_WRITTEN}{{{stage}}} > {config.dlq_overflow_records_5m}")
    window = config.duration(config.service_probe_window)
    return RuleGroup("treewatch.stores", (
        Alert(
            "StoreUnavailable",
            down,
            config.store_unavailable_for, "warning",
            "A store of the index stage is unavailable",
            "Store {{ $labels.service }} does not answer its probe; {{ $value | humanizePercentage }} of its"
            f" probes succeeded over the last {window}. Stage {config.store_stage} cannot write into it"
            " until it is back.",
            OVERVIEW_DASHBOARD_UID,
        ),
        Alert(
            "IndexStoreDown",
            f"({down}) and on ({keeping_environment('job')}) ({failing})",
            config.index_store_down_for, "critical",
            "A store is down while the index stage fails",
            "Store {{ $labels.service }} does not answer its probe ({{ $value | humanizePercentage }} of its"
            f" probes succeeded over the last {window}) while stage {config.store_stage} fails or"
            " dead-letters its events: files are going missing from search.",
            OVERVIEW_DASHBOARD_UID,
        ),
    ))


def ingestion_alerts(config: MonitoringConfig) -> RuleGroup:
    """The guide's issue 4, "Slow project ingestion", from the services' own metrics: Prometheus scrapes
    them directly (job SERVICES_JOB), so they carry a ``service`` label and no ``instance`` of the exporter."""
    window = config.duration("5m")
    buckets = f"rate({TREE_EVENT_PROCESSING_SECONDS.name}_bucket{{{config.services_selector}}}[{window}])"
    budget = _num(config.ingestion_seconds_per_file)
    return RuleGroup("treewatch.ingestion", (
        Alert(
            "SlowProjectIngestion",
            # Summed over the service's replicas (instance), by bucket, before the quantile is taken.
            f"histogram_quantile(0.95, sum by ({keeping_environment('job', 'service', 'le')}) ({buckets}))"
            f" > {budget}",
            config.slow_project_ingestion_for, "warning",
            "Project ingestion is slower than the guide's target",
            "Service {{ $labels.service }} takes {{ $value | humanizeDuration }} per event at the 95th"
            f" percentile over {window}: above {budget}s, a project of {config.ingestion_target_files} files"
            f" takes longer than {_num(config.ingestion_target_seconds)}s.",
            OVERVIEW_DASHBOARD_UID,
        ),
    ))


def meta_alerts(config: MonitoringConfig) -> RuleGroup:
    job = config.exporter_selector
    scrapes = config.duration(config.exporter_scrape_window)
    stale = _num(config.seconds(config.data_stale_seconds))
    return RuleGroup("treewatch.meta", (
        Alert(
            "TreewatchExporterDown",
            f"avg_over_time(up{{{job}}}[{scrapes}]) and up{{{job}}} == 0",
            config.treewatch_exporter_down_for, "critical",
            "The treewatch exporter is down",
            "Prometheus cannot scrape the treewatch exporter at {{ $labels.instance }}; {{ $value |"
            f" humanizePercentage }}}} of scrapes succeeded over the last {scrapes}."
            " Every other pipeline alert is blind meanwhile.",
            OVERVIEW_DASHBOARD_UID,
        ),
        Alert(
            "TreewatchExporterMissing",
            # absent() can only say no exporter of the job reports in ANY environment: it knows no
            # env it has never seen. One environment's exporter that stops answering is
            # TreewatchExporterDown's, with its env and cluster.
            f"absent(up{{{job}}})",
            config.treewatch_exporter_missing_for, "critical",
            "Prometheus does not scrape the treewatch exporter",
            "Prometheus has no target for job {{ $labels.job }}: the scrape configuration lost the exporter,"
            " and every other pipeline alert is blind.",
            OVERVIEW_DASHBOARD_UID,
            shows_value=False,
        ),
        Alert(
            "TreewatchCollectorFailing",
            _collector_failing(job),
            config.treewatch_collector_failing_for, "warning",
            "A treewatch collector is failing",
            "Collector {{ $labels.collector }} of the exporter at {{ $labels.instance }} keeps failing;"
            f" {_LAST_SUCCESS}.",
            OVERVIEW_DASHBOARD_UID,
        ),
        Alert(
            "TreewatchDataStale",
            f"time() - treewatch_collector_last_success_timestamp_seconds{{{job}}}"
            f" > {stale}"
            f" or (treewatch_collector_success{{{job}}} == 0"
            f" unless on ({keeping_environment('job', 'instance', 'collector')})"
            f" treewatch_collector_last_success_timestamp_seconds{{{job}}})",
            config.treewatch_data_stale_for, "warning",
            "treewatch serves stale data",
            "Collector {{ $labels.collector }} of the exporter at {{ $labels.instance }}:"
            f" {_LAST_SUCCESS} (threshold {stale}s); its panels and alerts show old"
            " numbers or none.",
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
    """Every rule group; an alert that an environment's own thresholds change is there twice: as
    that environment's (only its series), and as everyone else's (all series but that environment's)."""
    shared = _rule_groups(config)
    if not config.threshold_environments:
        return shared
    own = {env: _rule_groups(config.for_environment(env)) for env in config.threshold_environments}
    groups = []
    for index, group in enumerate(shared):
        # Recording rules never differ: no threshold or `for` duration feeds one (tested).
        changed_by = [[env for env in own if own[env][index].rules[position] != rule]
                      for position, rule in enumerate(group.rules)]
        groups.append(replace(group, rules=tuple(replace(rule, expr=except_in(rule.expr, envs)) if envs else rule
                                                 for rule, envs in zip(group.rules, changed_by, strict=True))))
        for env, env_groups in own.items():
            # The env label also tells the copy apart from the shared rule (promtool lints identical ones).
            changed = tuple(replace(rule, expr=only_in(rule.expr, [env]), labels={**rule.labels, ENV_LABEL: env})
                            for rule, envs in zip(env_groups[index].rules, changed_by, strict=True) if env in envs)
            if changed:
                groups.append(replace(group, name=f"{group.name}.{ENV_LABEL}-{env}", rules=changed))
    return tuple(groups)


def _rule_groups(config: MonitoringConfig) -> tuple[RuleGroup, ...]:
    return (
        recording_rules(config),
        slo_budget_rules(config),
        guide_alerts(config),
        slo_alerts(config),
        kafka_alerts(config),
        consumer_group_alerts(config),
        dlq_alerts(config),
        service_alerts(config),
        store_alerts(config),
        ingestion_alerts(config),
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
            "interval": config.duration(group.interval),
            "rules": [
                rule.to_dict(config) if isinstance(rule, Alert) else rule.to_dict() for rule in group.rules
            ],
        }
        for group in rule_groups(config)
    ]}
