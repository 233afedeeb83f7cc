"""The metric contract: every series treewatch exposes is defined here, once.

The exporter renders from these definitions, ``docs/metrics.md`` is generated from them, and the
alert rules' and dashboards' tests check every metric they use against them. The three names the
operators' guide queries (``kafka_consumer_group_lag``, ``kafka_topic_partition_current_offset``,
``tree_events_processed_total``) are kept exactly so its PromQL works verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


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
    help: str
    collector: Collector

    @property
    def family_name(self) -> str:
        """The name prometheus_client wants for the family (counters without _total)."""
        return self.name.removesuffix("_total") if self.kind is Kind.COUNTER else self.name


G, C = Kind.GAUGE, Kind.COUNTER
_K_CLUSTER, _K_TOPICS, _K_GROUPS = Collector.KAFKA_CLUSTER, Collector.KAFKA_TOPICS, Collector.KAFKA_GROUPS
_PIPELINE, _DLQ, _SERVICES, _SELF = Collector.PIPELINE, Collector.DLQ, Collector.SERVICES, Collector.EXPORTER

GROUP_STATES = ("Stable", "PreparingRebalance", "CompletingRebalance", "Empty", "Dead", "Unknown")
SERVICE_STATES = ("healthy", "degraded", "unhealthy", "unknown")
PROBE_FAILURE_REASONS = (
    "timeout", "connection_refused", "connection_error", "http_error", "too_many_redirects",
    "body_too_large", "invalid_json", "missing_status", "tls_error",
)
PROCESSED_STATUSES = ("completed", "failed")

METRICS: tuple[MetricDef, ...] = (
    # -- consumer groups ------------------------------------------------------------------------
    MetricDef("kafka_consumer_group_lag", G, ("group", "topic", "partition"),
              "Records the group has not consumed yet: high watermark minus committed offset (a committed "
              "offset below the log start counts from the log start); never negative.", _K_GROUPS),
    MetricDef("kafka_consumer_group_lag_seconds", G, ("group", "topic", "partition"),
              "Age of the oldest record the group has not consumed: now minus the timestamp of the record at "
              "the committed offset; 0 when the lag is 0.", _K_GROUPS),
    MetricDef("kafka_consumer_group_committed_offset", G, ("group", "topic", "partition"),
              "The group's committed offset (the next record it will read).", _K_GROUPS),
    MetricDef("kafka_consumer_group_committed_offset_change_timestamp_seconds", G, ("group", "topic", "partition"),
              "When the exporter last saw the committed offset move (at first sight: when it was first seen). "
              "A stalled consumer has lag and an old change time; a slow one has lag and a recent one.", _K_GROUPS),
    MetricDef("kafka_consumer_group_uncommitted_partitions", G, ("group", "topic"),
              "Partitions of a topic the group consumes (or is assigned) with no committed offset; "
              "not reported as lag.", _K_GROUPS),
    MetricDef("kafka_consumer_group_state", G, ("group", "state"),
              "The group's state, one-hot over " + ", ".join(GROUP_STATES) + ".", _K_GROUPS),
    MetricDef("kafka_consumer_group_members", G, ("group",),
              "Members currently in the group.", _K_GROUPS),
    # -- topics ---------------------------------------------------------------------------------
    MetricDef("kafka_topic_partition_current_offset", G, ("topic", "partition"),
              "High watermark: the offset the next record written to the partition will get.", _K_TOPICS),
    MetricDef("kafka_topic_partition_oldest_offset", G, ("topic", "partition"),
              "Log start offset: the oldest offset still retained.", _K_TOPICS),
    MetricDef("kafka_topic_partitions", G, ("topic",),
              "Partitions of the topic.", _K_TOPICS),
    # -- cluster --------------------------------------------------------------------------------
    MetricDef("kafka_brokers", G, (),
              "Brokers the cluster reports as live.", _K_CLUSTER),
    MetricDef("kafka_cluster_brokers_down", G, (),
              "Brokers that host replicas but are not live (rpk cluster health's nodes down).", _K_CLUSTER),
    MetricDef("kafka_cluster_controller_known", G, (),
              "1 when the cluster reports an active controller.", _K_CLUSTER),
    MetricDef("kafka_topic_leaderless_partitions", G, ("topic",),
              "Partitions of the topic without a leader.", _K_CLUSTER),
    MetricDef("kafka_topic_under_replicated_partitions", G, ("topic",),
              "Partitions of the topic whose in-sync replicas are fewer than their replicas.", _K_CLUSTER),
    MetricDef("kafka_cluster_healthy", G, (),
              "1 when no broker is down, no partition is leaderless and a controller is known "
              "(the meaning of rpk cluster health's 'Healthy').", _K_CLUSTER),
    # -- pipeline -------------------------------------------------------------------------------
    MetricDef("tree_events_processed_total", C, ("stage", "status"),
              "Events that finished a stage, counted from its completed and failed topics.", _PIPELINE),
    MetricDef("tree_events_requested_total", C, ("stage",),
              "Requests written to a stage's request topic.", _PIPELINE),
    MetricDef("tree_events_in_flight", G, ("stage",),
              "Requests of a stage not yet completed or failed: requested minus processed, never negative.",
              _PIPELINE),
    # -- dead letter queues ---------------------------------------------------------------------
    MetricDef("tree_dlq_retained_records", G, ("stage", "topic"),
              "Records retained in the stage's dead letter queue (high watermark minus log start).", _DLQ),
    MetricDef("tree_dlq_oldest_record_timestamp_seconds", G, ("stage", "topic"),
              "Timestamp of the oldest record retained in the stage's dead letter queue; absent when empty.",
              _DLQ),
    MetricDef("tree_dlq_records_total", C, ("stage", "error_type"),
              "Dead letters read from the stage's queue by error_type since the exporter started; a record "
              "that is not a JSON object counts as error_type=\"unparseable\".", _DLQ),
    # -- services -------------------------------------------------------------------------------
    MetricDef("tree_service_probe_success", G, ("service",),
              "1 when the last GET of the service's health URL answered with a readable status.", _SERVICES),
    MetricDef("tree_service_status", G, ("service", "status"),
              "The status the service reported, one-hot over " + ", ".join(SERVICE_STATES)
              + " (unknown when the probe failed or the status is not one of these).", _SERVICES),
    MetricDef("tree_service_probe_duration_seconds", G, ("service",),
              "How long the last health probe took.", _SERVICES),
    MetricDef("tree_service_probe_http_status_code", G, ("service",),
              "HTTP status of the last health probe; 0 when there was no response.", _SERVICES),
    MetricDef("tree_service_probe_failure", G, ("service", "reason"),
              "Why the last health probe failed, one-hot over " + ", ".join(PROBE_FAILURE_REASONS)
              + "; all 0 after a successful probe.", _SERVICES),
    # -- the exporter itself --------------------------------------------------------------------
    MetricDef("treewatch_collector_success", G, ("collector",),
              "1 when the collector's last run succeeded.", _SELF),
    MetricDef("treewatch_collector_duration_seconds", G, ("collector",),
              "How long the collector's last run took.", _SELF),
    MetricDef("treewatch_collector_last_success_timestamp_seconds", G, ("collector",),
              "When the collector last succeeded; the age of the data it serves.", _SELF),
    MetricDef("treewatch_collector_errors_total", C, ("collector",),
              "Failed collector runs.", _SELF),
    MetricDef("treewatch_series_dropped", G, ("collector",),
              "Series the collector's last run left out because of the max_series cap.", _SELF),
    MetricDef("treewatch_build_info", G, ("version", "python_version", "librdkafka_version"),
              "Always 1; the labels say which treewatch is running.", _SELF),
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
