"""The metric contract: every series treewatch exposes is defined here, once.

The exporter renders from these definitions, ``docs/metrics.md`` is generated from them, and the
alert rules' and dashboards' tests check every metric they use against them. The three names the
operators' guide queries (``kafka_consumer_group_lag``, ``kafka_topic_partition_current_offset``,
``tree_events_processed_total``) are kept exactly so its PromQL works verbatim.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from pipeline.cache_metrics import FAILURE_REASONS as CACHE_FAILURE_REASONS
from pipeline.events import MAX_ERROR_TYPE_CHARS, TRUNCATED_MARKER
from pipeline.health import FAILURE_REASONS as PROBE_FAILURE_REASONS
from pipeline.health import STATES as SERVICE_STATES
from pipeline.kafka import GROUP_STATES


class Kind(StrEnum):
    GAUGE = "gauge"
    COUNTER = "counter"


class Part(StrEnum):
    """The part of the exporter that gathers a metric, by the value of its ``collector`` label; each
    part reports its own success."""

    KAFKA_CLUSTER = "kafka_cluster"
    KAFKA_TOPICS = "kafka_topics"
    KAFKA_GROUPS = "kafka_groups"
    PIPELINE = "pipeline"
    DLQ = "dlq"
    SERVICES = "services"
    EXPORTER = "exporter"


class Sample(NamedTuple):
    """One series: its metric, label values in the order of the metric's labels, value."""

    metric: MetricDef
    labels: tuple[str, ...]
    value: float


@dataclass(frozen=True, eq=False)
class SeriesBlock:
    """Series of one metric that share every label value but the last, as arrays: a consumer
    group's per-topic series (last label: the topic) or a group and topic's per-partition series
    (last label: the partition). At a million committed group-partitions, one Sample object per
    series would be gigabytes, and the renderer re-uses the text of a block that did not change
    (exporter/text_format.py)."""

    metric: MetricDef
    labels: tuple[str, ...]  # the values shared, all the metric's labels but the last
    last: Sequence[str] | array  # the last label's value of each series (topic names, or partitions as 'i')
    values: array  # of 'd', one per series

    def __len__(self) -> int:
        return len(self.last)

    def samples(self) -> list[Sample]:
        return [Sample(self.metric, (*self.labels, str(last)), value)
                for last, value in zip(self.last, self.values, strict=True)]


@dataclass(frozen=True, eq=False)  # each metric is defined once, below: compared and hashed by identity
class MetricDef:
    """One metric of the contract, and the handle its samples are made with.

    A sample holds its metric, not a name: a misspelt metric is a NameError (ruff's F821) before
    anything runs, and a label set the metric does not define raises at the first sample.
    """

    name: str  # as exposed; counters end in _total
    kind: Kind
    labels: tuple[str, ...]
    collector: Part
    help: str
    # A consumer group's series per partition: optional detail (exporter.partition_series), the
    # first to go at the series cap; the group's per-topic series tell the same in aggregate.
    per_partition: bool = False

    @property
    def family_name(self) -> str:
        """The name prometheus_client wants for the family (counters without _total)."""
        return self.name.removesuffix("_total") if self.kind is Kind.COUNTER else self.name

    def sample(self, value: float, **labels: str | int) -> Sample:
        """A sample with its labels named; a label missing or not defined raises ValueError."""
        if labels.keys() != set(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {tuple(labels)}")
        return Sample(self, tuple(str(labels[name]) for name in self.labels), float(value))

    def at(self, labels: tuple[str, ...], value: float) -> Sample:
        """A sample with its label values in the order of ``self.labels``: the fast form for loops
        that build a sample per partition. Only their number can be checked; it is."""
        if len(labels) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got values {labels}")
        return Sample(self, labels, float(value))

    def block(self, labels: tuple[str, ...], last: Sequence[str] | array, values: array) -> SeriesBlock:
        """Series sharing the values ``labels`` of all labels but the last; ``last`` holds each
        one's value of the last label, ``values`` each one's value."""
        if len(labels) != len(self.labels) - 1 or len(last) != len(values):
            raise ValueError(f"{self.name} takes labels {self.labels}, got a block of {labels} and "
                             f"{len(last)} last values for {len(values)} values")
        return SeriesBlock(self, labels, last, values)


PROCESSED_STATUSES = ("completed", "failed")

# -- consumer groups ------------------------------------------------------------------------
KAFKA_CONSUMER_GROUP_LAG = MetricDef(
    "kafka_consumer_group_lag", Kind.GAUGE, ("group", "topic", "partition"), Part.KAFKA_GROUPS,
    "Records the group has not consumed yet: high watermark minus committed offset (a "
    "committed offset below the log start counts from the log start); never negative. 0 when "
    "only transaction markers are left after the committed offset (nothing left to consume).", per_partition=True)

KAFKA_CONSUMER_GROUP_LAG_SECONDS = MetricDef(
    "kafka_consumer_group_lag_seconds", Kind.GAUGE, ("group", "topic", "partition"), Part.KAFKA_GROUPS,
    "Age of the oldest record the group has not consumed: now minus the timestamp of the "
    "record at the committed offset; 0 when the lag is 0.", per_partition=True)

KAFKA_CONSUMER_GROUP_COMMITTED_OFFSET = MetricDef(
    "kafka_consumer_group_committed_offset",
    Kind.GAUGE, ("group", "topic", "partition"), Part.KAFKA_GROUPS,
    "The group's committed offset (the next record it will read).", per_partition=True)

KAFKA_CONSUMER_GROUP_COMMITTED_OFFSET_CHANGE_TIMESTAMP_SECONDS = MetricDef(
    "kafka_consumer_group_committed_offset_change_timestamp_seconds",
    Kind.GAUGE, ("group", "topic", "partition"), Part.KAFKA_GROUPS,
    "When the exporter last saw the committed offset move (at first sight: when it was "
    "first seen). A stalled consumer has lag and an old change time; a slow one has lag and"
    " a recent one.", per_partition=True)

KAFKA_CONSUMER_GROUP_TOPIC_LAG = MetricDef(
    "kafka_consumer_group_topic_lag", Kind.GAUGE, ("group", "topic"), Part.KAFKA_GROUPS,
    "Records the group has not consumed on the topic: kafka_consumer_group_lag summed over the partitions it "
    "committed on. Told whatever exporter.partition_series says.")

KAFKA_CONSUMER_GROUP_TOPIC_MAX_LAG = MetricDef(
    "kafka_consumer_group_topic_max_lag", Kind.GAUGE, ("group", "topic"), Part.KAFKA_GROUPS,
    "The largest kafka_consumer_group_lag among the topic's partitions the group committed on.")

KAFKA_CONSUMER_GROUP_TOPIC_MAX_LAG_SECONDS = MetricDef(
    "kafka_consumer_group_topic_max_lag_seconds", Kind.GAUGE, ("group", "topic"), Part.KAFKA_GROUPS,
    "Age of the oldest record the group has not consumed on the topic: the largest "
    "kafka_consumer_group_lag_seconds among its partitions; 0 when it has no lag there; absent when a "
    "lagging partition's record age could not be read.")

KAFKA_CONSUMER_GROUP_TOPIC_PARTITIONS_LAGGING = MetricDef(
    "kafka_consumer_group_topic_partitions_lagging", Kind.GAUGE, ("group", "topic"), Part.KAFKA_GROUPS,
    "Partitions of the topic where the group has lag.")

KAFKA_CONSUMER_GROUP_TOPIC_OLDEST_PROGRESS_TIMESTAMP_SECONDS = MetricDef(
    "kafka_consumer_group_topic_oldest_progress_timestamp_seconds",
    Kind.GAUGE, ("group", "topic"), Part.KAFKA_GROUPS,
    "Of the topic's partitions where the group has lag, the earliest time the exporter saw one's committed "
    "offset move (kafka_consumer_group_committed_offset_change_timestamp_seconds): time() minus it is how "
    "long the stalest lagging partition has made no progress. Absent when the group has no lag on the topic.")

KAFKA_CONSUMER_GROUP_UNCOMMITTED_PARTITIONS = MetricDef(
    "kafka_consumer_group_uncommitted_partitions", Kind.GAUGE, ("group", "topic"), Part.KAFKA_GROUPS,
    "Partitions of a topic the group consumes (or is assigned) with no committed offset; "
    "not reported as lag.")

KAFKA_CONSUMER_GROUP_STATE = MetricDef(
    "kafka_consumer_group_state", Kind.GAUGE, ("group", "state"), Part.KAFKA_GROUPS,
    "The group's state, one-hot over " + ", ".join(GROUP_STATES) + ".")

KAFKA_CONSUMER_GROUP_MEMBERS = MetricDef(
    "kafka_consumer_group_members", Kind.GAUGE, ("group",), Part.KAFKA_GROUPS,
    "Members currently in the group.")

KAFKA_CONSUMER_GROUP_READ_ERRORS = MetricDef(
    "kafka_consumer_group_read_errors", Kind.GAUGE, (), Part.KAFKA_GROUPS,
    "Errors the last refresh met reading the consumer groups while it still read others: a "
    "coordinator that did not list its groups (they may be missing), a group that could not be "
    "described (missing), or one whose committed offsets could not be read (state and members "
    "only). The exporter's log names them.")

# -- topics ---------------------------------------------------------------------------------
KAFKA_TOPIC_PARTITION_CURRENT_OFFSET = MetricDef(
    "kafka_topic_partition_current_offset", Kind.GAUGE, ("topic", "partition"), Part.KAFKA_TOPICS,
    "High watermark: the offset the next record written to the partition will get.")

KAFKA_TOPIC_PARTITION_OLDEST_OFFSET = MetricDef(
    "kafka_topic_partition_oldest_offset", Kind.GAUGE, ("topic", "partition"), Part.KAFKA_TOPICS,
    "Log start offset: the oldest offset still retained.")

KAFKA_TOPIC_PARTITIONS = MetricDef(
    "kafka_topic_partitions", Kind.GAUGE, ("topic",), Part.KAFKA_TOPICS,
    "Partitions of the topic.")

# -- cluster --------------------------------------------------------------------------------
KAFKA_BROKERS = MetricDef(
    "kafka_brokers", Kind.GAUGE, (), Part.KAFKA_CLUSTER,
    "Brokers the cluster reports as live.")

KAFKA_CLUSTER_BROKERS_DOWN = MetricDef(
    "kafka_cluster_brokers_down", Kind.GAUGE, (), Part.KAFKA_CLUSTER,
    "Brokers that host replicas but are not live (rpk cluster health's nodes down).")

KAFKA_CLUSTER_CONTROLLER_KNOWN = MetricDef(
    "kafka_cluster_controller_known", Kind.GAUGE, (), Part.KAFKA_CLUSTER,
    "1 when the cluster reports an active controller.")

KAFKA_TOPIC_LEADERLESS_PARTITIONS = MetricDef(
    "kafka_topic_leaderless_partitions", Kind.GAUGE, ("topic",), Part.KAFKA_CLUSTER,
    "Partitions of the topic without a leader.")

KAFKA_TOPIC_UNDER_REPLICATED_PARTITIONS = MetricDef(
    "kafka_topic_under_replicated_partitions", Kind.GAUGE, ("topic",), Part.KAFKA_CLUSTER,
    "Partitions of the topic whose in-sync replicas are fewer than their replicas.")

KAFKA_CLUSTER_HEALTHY = MetricDef(
    "kafka_cluster_healthy", Kind.GAUGE, (), Part.KAFKA_CLUSTER,
    "1 when no broker is down, no partition is leaderless and a controller is known (the "
    "meaning of rpk cluster health's 'Healthy').")

# -- pipeline -------------------------------------------------------------------------------
TREE_EVENTS_PROCESSED_TOTAL = MetricDef(
    "tree_events_processed_total", Kind.COUNTER, ("stage", "status"), Part.PIPELINE,
    "Events that finished a stage, counted from the offsets of its completed and failed topics "
    "(a transactional producer's commit marker takes an offset too: at most one per "
    "transaction). A partition that cannot be read counts with its last known offset.")

TREE_EVENTS_REQUESTED_TOTAL = MetricDef(
    "tree_events_requested_total", Kind.COUNTER, ("stage",), Part.PIPELINE,
    "Requests written to a stage's request topic, counted from its offsets like "
    "tree_events_processed_total (transaction markers included, e.g. after a DLQ replay).")

TREE_EVENTS_IN_FLIGHT = MetricDef(
    "tree_events_in_flight", Kind.GAUGE, ("stage",), Part.PIPELINE,
    "Requests of a stage not yet completed or failed: requested minus processed, never "
    "negative.")

TREE_PIPELINE_STAGE_INFO = MetricDef(
    "tree_pipeline_stage_info",
    Kind.GAUGE, ("stage", "group", "request_topic", "dlq_topic"), Part.PIPELINE,
    "Always 1: the configured pipeline, so rules and dashboards can join a consumer group "
    "or a topic to its stage.")

# -- dead letter queues ---------------------------------------------------------------------
TREE_DLQ_RETAINED_RECORDS = MetricDef(
    "tree_dlq_retained_records", Kind.GAUGE, ("stage", "topic"), Part.DLQ,
    "Records retained in the stage's dead letter queue (high watermark minus log start).")

TREE_DLQ_OLDEST_RECORD_TIMESTAMP_SECONDS = MetricDef(
    "tree_dlq_oldest_record_timestamp_seconds", Kind.GAUGE, ("stage", "topic"), Part.DLQ,
    "Timestamp of the oldest record retained in the stage's dead letter queue; absent when "
    "empty.")

TREE_DLQ_RECORDS_TOTAL = MetricDef(
    "tree_dlq_records_total", Kind.COUNTER, ("stage", "error_type"), Part.DLQ,
    "Dead letters written to the stage's queue since the exporter first saw it, by error_type; "
    "what was retained before is not counted again when the exporter restarts (see "
    "tree_dlq_retained_records_by_error_type). A record that cannot be read as a JSON object, "
    "whatever its bytes, counts as error_type=\"unparseable\". error_type is cut to "
    f"{MAX_ERROR_TYPE_CHARS} characters (ending in {TRUNCATED_MARKER}); too many distinct types retained "
    "at once count as \"other\"; a type's series go once the queue retains none of it, and its "
    "counter starts again from 0 if it comes back.")

TREE_DLQ_RETAINED_RECORDS_BY_ERROR_TYPE = MetricDef(
    "tree_dlq_retained_records_by_error_type", Kind.GAUGE, ("stage", "error_type"), Part.DLQ,
    "Dead letters retained in the stage's queue now, by error_type (unparseable as in "
    "tree_dlq_records_total); falls when retention or delete_records removes them. Absent until "
    "the exporter has read the records retained when it started.")

# -- services -------------------------------------------------------------------------------
TREE_SERVICE_PROBE_SUCCESS = MetricDef(
    "tree_service_probe_success", Kind.GAUGE, ("service",), Part.SERVICES,
    "1 when the last probe of the service succeeded as its kind says: a readable JSON status (json_status), "
    "any 2xx (http_ok) or an accepted TCP connection (tcp).")

TREE_SERVICE_STATUS = MetricDef(
    "tree_service_status", Kind.GAUGE, ("service", "status"), Part.SERVICES,
    "The status the service reported, one-hot over " + ", ".join(SERVICE_STATES)
    + " (unknown when the probe failed or the status is not one of these).")

TREE_SERVICE_PROBE_DURATION_SECONDS = MetricDef(
    "tree_service_probe_duration_seconds", Kind.GAUGE, ("service",), Part.SERVICES,
    "How long the last health probe took.")

TREE_SERVICE_PROBE_HTTP_STATUS_CODE = MetricDef(
    "tree_service_probe_http_status_code", Kind.GAUGE, ("service",), Part.SERVICES,
    "HTTP status of the last health probe; 0 when there was no response, and always for a tcp probe.")

TREE_SERVICE_PROBE_FAILURE = MetricDef(
    "tree_service_probe_failure", Kind.GAUGE, ("service", "reason"), Part.SERVICES,
    "Why the last health probe failed, one-hot over " + ", ".join(PROBE_FAILURE_REASONS)
    + "; all 0 after a successful probe.")

TREE_SERVICE_CACHE_HIT_RATIO = MetricDef(
    "tree_service_cache_hit_ratio", Kind.GAUGE, ("service",), Part.SERVICES,
    "The hit_rate (0 to 1) the service's cache metrics URL (its /cache/metrics) answered on the last "
    "read; absent when that read failed (see tree_service_cache_metrics_failure) and for services "
    "without one.")

TREE_SERVICE_CACHE_METRICS_FAILURE = MetricDef(
    "tree_service_cache_metrics_failure", Kind.GAUGE, ("service", "reason"), Part.SERVICES,
    "Why the last read of the service's cache metrics failed, one-hot over "
    + ", ".join(CACHE_FAILURE_REASONS) + "; all 0 after a good read.")

# -- the exporter itself --------------------------------------------------------------------
TREEWATCH_COLLECTOR_SUCCESS = MetricDef(
    "treewatch_collector_success", Kind.GAUGE, ("collector",), Part.EXPORTER,
    "1 when the collector's last run succeeded.")

TREEWATCH_COLLECTOR_DURATION_SECONDS = MetricDef(
    "treewatch_collector_duration_seconds", Kind.GAUGE, ("collector",), Part.EXPORTER,
    "How long the collector's last run took.")

TREEWATCH_COLLECTOR_LAST_SUCCESS_TIMESTAMP_SECONDS = MetricDef(
    "treewatch_collector_last_success_timestamp_seconds", Kind.GAUGE, ("collector",), Part.EXPORTER,
    "When the collector last succeeded; the age of the data it serves.")

TREEWATCH_COLLECTOR_ERRORS_TOTAL = MetricDef(
    "treewatch_collector_errors_total", Kind.COUNTER, ("collector",), Part.EXPORTER,
    "Failed collector runs.")

TREEWATCH_SERIES_DROPPED = MetricDef(
    "treewatch_series_dropped", Kind.GAUGE, ("collector",), Part.EXPORTER,
    "Series the collector's last run left out because of the max_series cap.")

TREEWATCH_BUILD_INFO = MetricDef(
    "treewatch_build_info",
    Kind.GAUGE, ("version", "python_version", "librdkafka_version"), Part.EXPORTER,
    "Always 1; the labels say which treewatch is running.")

# Every metric defined above, in that order: the order of the exposition and of docs/metrics.md.
METRICS: tuple[MetricDef, ...] = tuple(value for value in tuple(globals().values()) if isinstance(value, MetricDef))


def names() -> frozenset[str]:
    """Every name a PromQL expression may use for treewatch's series (counters with _total)."""
    return frozenset(metric.name for metric in METRICS)


class ServiceMetric(NamedTuple):
    """A metric a pipeline service exposes on its own /metrics, which Prometheus scrapes directly
    (job alerts.config.SERVICES_JOB, with a ``service`` label): not treewatch's, but the rules and
    dashboards read it, and the simulator serves it under this name."""

    name: str
    kind: str  # "histogram" or "gauge"
    service: str  # the service of the guide that exposes it
    help: str

    @property
    def series_names(self) -> tuple[str, ...]:
        """The names its series have in PromQL."""
        if self.kind == "histogram":
            return tuple(f"{self.name}{suffix}" for suffix in ("_bucket", "_count", "_sum"))
        return (self.name,)


# The services' own metrics the guide reads (issue 4, "Slow project ingestion").
TREE_EVENT_PROCESSING_SECONDS = ServiceMetric(
    "tree_event_processing_seconds", "histogram", "intelligence", "Time the service took to process one event.")
STAMPING_LATENCY_MS_P95 = ServiceMetric(
    "stamping_latency_ms_p95", "gauge", "metadata-stamping",
    "95th percentile of the time one stamping took recently, in milliseconds.")
SERVICES_OWN_METRICS: tuple[ServiceMetric, ...] = (TREE_EVENT_PROCESSING_SECONDS, STAMPING_LATENCY_MS_P95)


def service_metric_names() -> frozenset[str]:
    """Every name a PromQL expression may use for the services' own series."""
    return frozenset(name for metric in SERVICES_OWN_METRICS for name in metric.series_names)
