"""The metric contract: every series treewatch exposes is defined here, once.

The exporter renders from these definitions, ``docs/metrics.md`` is generated from them, and the
alert rules' and dashboards' tests check every metric they use against them. The three names the
operators' guide queries (``kafka_consumer_group_lag``, ``kafka_topic_partition_current_offset``,
``tree_events_processed_total``) are kept exactly so its PromQL works verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pipeline.events import MAX_ERROR_TYPE_CHARS, TRUNCATED_MARKER


class Kind(StrEnum):
    GAUGE = "gauge"
    COUNTER = "counter"


class Collector(StrEnum):
    """Which part of the exporter gathers a metric; each reports its own success."""

    KAFKA_CLUSTER = "kafka_cluster"
    KAFKA_TOPICS = "kafka_topics"
    KAFKA_GROUPS = "kafka_groups"
    PIPELINE = "pipeline"
    DLQ = "dlq"
    SERVICES = "services"
    EXPORTER = "exporter"


@dataclass(frozen=True)
class MetricDef:
    name: str  # as exposed; counters end in _total
    kind: Kind
    labels: tuple[str, ...]
    collector: Collector
    help: str

    @property
    def family_name(self) -> str:
        """The name prometheus_client wants for the family (counters without _total)."""
        return self.name.removesuffix("_total") if self.kind is Kind.COUNTER else self.name



GROUP_STATES = ("Stable", "PreparingRebalance", "CompletingRebalance", "Empty", "Dead", "Unknown")
SERVICE_STATES = ("healthy", "degraded", "unhealthy", "unknown")
PROBE_FAILURE_REASONS = (
    "timeout", "connection_refused", "connection_error", "http_error", "too_many_redirects",
    "body_too_large", "invalid_json", "missing_status", "tls_error",
)
PROCESSED_STATUSES = ("completed", "failed")

METRICS: tuple[MetricDef, ...] = (
    # -- consumer groups ------------------------------------------------------------------------
    MetricDef("kafka_consumer_group_lag", Kind.GAUGE, ("group", "topic", "partition"), Collector.KAFKA_GROUPS,
              "Records the group has not consumed yet: high watermark minus committed offset (a "
              "committed offset below the log start counts from the log start); never negative. 0 when "
              "only transaction markers are left after the committed offset (nothing left to consume)."),
    MetricDef("kafka_consumer_group_lag_seconds", Kind.GAUGE, ("group", "topic", "partition"), Collector.KAFKA_GROUPS,
              "Age of the oldest record the group has not consumed: now minus the timestamp of the "
              "record at the committed offset; 0 when the lag is 0."),
    MetricDef("kafka_consumer_group_committed_offset",
              Kind.GAUGE, ("group", "topic", "partition"), Collector.KAFKA_GROUPS,
              "The group's committed offset (the next record it will read)."),
    MetricDef("kafka_consumer_group_committed_offset_change_timestamp_seconds",
              Kind.GAUGE, ("group", "topic", "partition"), Collector.KAFKA_GROUPS,
              "When the exporter last saw the committed offset move (at first sight: when it was "
              "first seen). A stalled consumer has lag and an old change time; a slow one has lag and"
              " a recent one."),
    MetricDef("kafka_consumer_group_uncommitted_partitions", Kind.GAUGE, ("group", "topic"), Collector.KAFKA_GROUPS,
              "Partitions of a topic the group consumes (or is assigned) with no committed offset; "
              "not reported as lag."),
    MetricDef("kafka_consumer_group_state", Kind.GAUGE, ("group", "state"), Collector.KAFKA_GROUPS,
              "The group's state, one-hot over " + ", ".join(GROUP_STATES) + "."),
    MetricDef("kafka_consumer_group_members", Kind.GAUGE, ("group",), Collector.KAFKA_GROUPS,
              "Members currently in the group."),
    MetricDef("kafka_consumer_group_read_errors", Kind.GAUGE, (), Collector.KAFKA_GROUPS,
              "Errors the last refresh met reading the consumer groups while it still read others: a "
              "coordinator that did not list its groups (they may be missing), a group that could not be "
              "described (missing), or one whose committed offsets could not be read (state and members "
              "only). The exporter's log names them."),
    # -- topics ---------------------------------------------------------------------------------
    MetricDef("kafka_topic_partition_current_offset", Kind.GAUGE, ("topic", "partition"), Collector.KAFKA_TOPICS,
              "High watermark: the offset the next record written to the partition will get."),
    MetricDef("kafka_topic_partition_oldest_offset", Kind.GAUGE, ("topic", "partition"), Collector.KAFKA_TOPICS,
              "Log start offset: the oldest offset still retained."),
    MetricDef("kafka_topic_partitions", Kind.GAUGE, ("topic",), Collector.KAFKA_TOPICS,
              "Partitions of the topic."),
    # -- cluster --------------------------------------------------------------------------------
    MetricDef("kafka_brokers", Kind.GAUGE, (), Collector.KAFKA_CLUSTER,
              "Brokers the cluster reports as live."),
    MetricDef("kafka_cluster_brokers_down", Kind.GAUGE, (), Collector.KAFKA_CLUSTER,
              "Brokers that host replicas but are not live (rpk cluster health's nodes down)."),
    MetricDef("kafka_cluster_controller_known", Kind.GAUGE, (), Collector.KAFKA_CLUSTER,
              "1 when the cluster reports an active controller."),
    MetricDef("kafka_topic_leaderless_partitions", Kind.GAUGE, ("topic",), Collector.KAFKA_CLUSTER,
              "Partitions of the topic without a leader."),
    MetricDef("kafka_topic_under_replicated_partitions", Kind.GAUGE, ("topic",), Collector.KAFKA_CLUSTER,
              "Partitions of the topic whose in-sync replicas are fewer than their replicas."),
    MetricDef("kafka_cluster_healthy", Kind.GAUGE, (), Collector.KAFKA_CLUSTER,
              "1 when no broker is down, no partition is leaderless and a controller is known (the "
              "meaning of rpk cluster health's 'Healthy')."),
    # -- pipeline -------------------------------------------------------------------------------
    MetricDef("tree_events_processed_total", Kind.COUNTER, ("stage", "status"), Collector.PIPELINE,
              "Events that finished a stage, counted from the offsets of its completed and failed topics "
              "(a transactional producer's commit marker takes an offset too: at most one per "
              "transaction). A partition that cannot be read counts with its last known offset."),
    MetricDef("tree_events_requested_total", Kind.COUNTER, ("stage",), Collector.PIPELINE,
              "Requests written to a stage's request topic, counted from its offsets like "
              "tree_events_processed_total (transaction markers included, e.g. after a DLQ replay)."),
    MetricDef("tree_events_in_flight", Kind.GAUGE, ("stage",), Collector.PIPELINE,
              "Requests of a stage not yet completed or failed: requested minus processed, never "
              "negative."),
    MetricDef("tree_pipeline_stage_info",
              Kind.GAUGE, ("stage", "group", "request_topic", "dlq_topic"), Collector.PIPELINE,
              "Always 1: the configured pipeline, so rules and dashboards can join a consumer group "
              "or a topic to its stage."),
    # -- dead letter queues ---------------------------------------------------------------------
    MetricDef("tree_dlq_retained_records", Kind.GAUGE, ("stage", "topic"), Collector.DLQ,
              "Records retained in the stage's dead letter queue (high watermark minus log start)."),
    MetricDef("tree_dlq_oldest_record_timestamp_seconds", Kind.GAUGE, ("stage", "topic"), Collector.DLQ,
              "Timestamp of the oldest record retained in the stage's dead letter queue; absent when "
              "empty."),
    MetricDef("tree_dlq_records_total", Kind.COUNTER, ("stage", "error_type"), Collector.DLQ,
              "Dead letters written to the stage's queue since the exporter first saw it, by error_type; "
              "what was retained before is not counted again when the exporter restarts (see "
              "tree_dlq_retained_records_by_error_type). A record that cannot be read as a JSON object, "
              "whatever its bytes, counts as error_type=\"unparseable\". error_type is cut to "
              f"{MAX_ERROR_TYPE_CHARS} characters (ending in {TRUNCATED_MARKER}); too many distinct types retained "
              "at once count as \"other\"; a type's series go once the queue retains none of it, and its "
              "counter starts again from 0 if it comes back."),
    MetricDef("tree_dlq_retained_records_by_error_type", Kind.GAUGE, ("stage", "error_type"), Collector.DLQ,
              "Dead letters retained in the stage's queue now, by error_type (unparseable as in "
              "tree_dlq_records_total); falls when retention or delete_records removes them. Absent until "
              "the exporter has read the records retained when it started."),
    # -- services -------------------------------------------------------------------------------
    MetricDef("tree_service_probe_success", Kind.GAUGE, ("service",), Collector.SERVICES,
              "1 when the last GET of the service's health URL answered with a readable status."),
    MetricDef("tree_service_status", Kind.GAUGE, ("service", "status"), Collector.SERVICES,
              "The status the service reported, one-hot over " + ", ".join(SERVICE_STATES)
              + " (unknown when the probe failed or the status is not one of these)."),
    MetricDef("tree_service_probe_duration_seconds", Kind.GAUGE, ("service",), Collector.SERVICES,
              "How long the last health probe took."),
    MetricDef("tree_service_probe_http_status_code", Kind.GAUGE, ("service",), Collector.SERVICES,
              "HTTP status of the last health probe; 0 when there was no response."),
    MetricDef("tree_service_probe_failure", Kind.GAUGE, ("service", "reason"), Collector.SERVICES,
              "Why the last health probe failed, one-hot over " + ", ".join(PROBE_FAILURE_REASONS)
              + "; all 0 after a successful probe."),
    # -- the exporter itself --------------------------------------------------------------------
    MetricDef("treewatch_collector_success", Kind.GAUGE, ("collector",), Collector.EXPORTER,
              "1 when the collector's last run succeeded."),
    MetricDef("treewatch_collector_duration_seconds", Kind.GAUGE, ("collector",), Collector.EXPORTER,
              "How long the collector's last run took."),
    MetricDef("treewatch_collector_last_success_timestamp_seconds", Kind.GAUGE, ("collector",), Collector.EXPORTER,
              "When the collector last succeeded; the age of the data it serves."),
    MetricDef("treewatch_collector_errors_total", Kind.COUNTER, ("collector",), Collector.EXPORTER,
              "Failed collector runs."),
    MetricDef("treewatch_series_dropped", Kind.GAUGE, ("collector",), Collector.EXPORTER,
              "Series the collector's last run left out because of the max_series cap."),
    MetricDef("treewatch_build_info",
              Kind.GAUGE, ("version", "python_version", "librdkafka_version"), Collector.EXPORTER,
              "Always 1; the labels say which treewatch is running."),
)

BY_NAME: dict[str, MetricDef] = {metric.name: metric for metric in METRICS}


def names() -> frozenset[str]:
    """Every name a PromQL expression may use for treewatch's series (counters with _total)."""
    return frozenset(BY_NAME)


def get(name: str) -> MetricDef:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name} is not a treewatch metric; see exporter/metrics.py") from None
