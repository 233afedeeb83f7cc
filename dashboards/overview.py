"""Tree Stamping: Overview — the first screen on call: the alerts firing now, services, Kafka, the
three stages, ingestion speed, consumer lag, dead letter queues and the exporter's own health, with the alert
thresholds drawn in.

Each threshold panel computes what its alert computes (the same recording rule where the alert
uses one, otherwise the same aggregation), so a line crossed on the panel is an alert firing."""

from __future__ import annotations

from alerts.config import STAGE_PROCESSED_RATE, error_ratio_rule
from dashboards import common as c
from dashboards.common import CONFIG, GREEN, ORANGE, RED
from exporter.metrics import SERVICE_STATES, STAMPING_LATENCY_MS_P95, TREE_EVENT_PROCESSING_SECONDS

PROCESSED = c.sel("tree_events_processed_total")
PROCESSED_RATE = f"rate({PROCESSED}[$__rate_interval])"


def slo_error_budget() -> float:
    """The share of events the SLO lets fail, e.g. 0.001 for 99.9 %; rounded so 1 - 0.999 prints as 0.001."""
    return round(1 - CONFIG.slo_objective, 12)


def service_status_mappings() -> list:
    colors = {"healthy": GREEN, "degraded": ORANGE, "unhealthy": RED, "unknown": "purple"}
    states = ((code, state, colors[state]) for code, state in enumerate(SERVICE_STATES, start=1))
    return c.value_mappings((0, "no status", "text"), *states)


def firing_alerts(layout: c.Layout) -> None:
    layout.row("Alerts")
    # ALERTS is Prometheus' own series of its alerting rules' state, not an exporter metric.
    firing = f'ALERTS{{alertstate="firing", alertname!="Watchdog", {c.ENVIRONMENT_MATCHERS}}}'
    layout.add(c.table(
        "Firing alerts",
        "The alerts Prometheus evaluates as firing now (the Watchdog left out), with their labels; each "
        "alert's runbook is linked from the panels below and from its Slack message.",
        [c.target(firing, instant=True, table=True)], unit="none",
        hidden_columns=("Time", "Value", "__name__", "alertstate")), w=24, h=6)


def services(layout: c.Layout) -> None:
    layout.row("Services")
    status = c.one_hot_code("tree_service_status", "status", SERVICE_STATES, by="service")
    status_runbooks = c.runbooks("TreeServiceDown", "TreeServiceDegraded")
    layout.add(c.stat(
        "Service status",
        "What each service's GET /health reported on the last probe; 'unknown' means the probe failed "
        "(see 'Failing health probes' for why).",
        [c.target(status, "{{service}}")], unit="none", mappings=service_status_mappings(),
        links=status_runbooks), w=8, h=6)
    layout.add(c.state_timeline(
        "Service status over time", "The status each service reported over the selected time range.",
        [c.target(status, "{{service}}")], mappings=service_status_mappings(), links=status_runbooks),
        w=16, h=6)
    layout.add(c.table(
        "Failing health probes",
        "Services whose last health probe failed, with the reason: timeout, connection refused, HTTP "
        "error, body not JSON, no status field... Empty while every probe answers.",
        [c.target(c.sel("tree_service_probe_failure") + " == 1", instant=True, table=True)], unit="none",
        hidden_columns=("Time", "Value", "__name__", "job"), links=c.runbooks("TreeServiceDown")), w=8)
    layout.add(c.stat(
        "HTTP status of the last probe",
        "The HTTP status each health endpoint answered; 0 when nothing answered. Services report "
        "'unhealthy' with a 5xx and a JSON body.",
        [c.target(c.sel("tree_service_probe_http_status_code"), "{{service}}")], unit="none",
        thresholds=c.steps(RED, (200, GREEN), (300, ORANGE), (500, RED)),
        links=c.runbooks("TreeServiceDown")), w=8)
    layout.add(c.timeseries(
        "Health probe duration", "How long each service took to answer its health probe.",
        [c.target(c.sel("tree_service_probe_duration_seconds"), "{{service}}")], unit="s",
        links=c.runbooks("TreeServiceDown")), w=8)


def kafka(layout: c.Layout) -> None:
    layout.row("Kafka cluster")
    healthy = c.value_mappings((0, "Unhealthy", RED), (1, "Healthy", GREEN))
    known = c.value_mappings((0, "None", RED), (1, "Known", GREEN))
    layout.add(c.stat(
        "Cluster health",
        "Healthy when no broker is down, no partition lacks a leader and a controller is known: what "
        "'rpk cluster health' calls healthy.",
        [c.target(c.sel("kafka_cluster_healthy"), "cluster")], unit="none", mappings=healthy,
        thresholds=c.below(1), text_mode="value", links=c.runbooks("KafkaUnavailable")), w=4, h=4)
    layout.add(c.stat(
        "Live brokers", "Brokers the cluster reports as live.",
        [c.target(c.sel("kafka_brokers"), "brokers")], unit="short", text_mode="value",
        links=c.runbooks("KafkaBrokersDown")), w=4, h=4)
    layout.add(c.stat(
        "Brokers down", "Brokers that host replicas but are not live ('rpk cluster health' nodes down).",
        [c.target(c.sel("kafka_cluster_brokers_down"), "down")], unit="short", thresholds=c.above(1),
        text_mode="value", links=c.runbooks("KafkaBrokersDown")), w=4, h=4)
    layout.add(c.stat(
        "Controller", "Whether the cluster reports an active controller.",
        [c.target(c.sel("kafka_cluster_controller_known"), "controller")], unit="none", mappings=known,
        thresholds=c.below(1), text_mode="value", links=c.runbooks("KafkaUnavailable")), w=4, h=4)
    layout.add(c.stat(
        "Leaderless partitions", "Partitions without a leader, over every topic the exporter watches.",
        [c.target(f"sum by ({c.by()}) ({c.one_replica(c.sel('kafka_topic_leaderless_partitions'))})", "leaderless")],
        unit="short",
        thresholds=c.above(1), text_mode="value", links=c.runbooks("KafkaLeaderlessPartitions")), w=4, h=4)
    under_replicated = c.sel("kafka_topic_under_replicated_partitions")
    layout.add(c.stat(
        "Under-replicated partitions",
        "Partitions whose in-sync replicas are fewer than their replicas, over every topic the exporter "
        "watches.",
        [c.target(f"sum by ({c.by()}) ({c.one_replica(under_replicated)})", "under-replicated")], unit="short",
        thresholds=c.above(1, ORANGE), text_mode="value",
        links=c.runbooks("KafkaUnderReplicatedPartitions")), w=4, h=4)


def stages(layout: c.Layout) -> None:
    layout.row("Pipeline stages")
    requested = c.sel("tree_events_requested_total")
    layout.add(c.timeseries(
        "Requests per stage", "Requests written to each stage's request topic, per second.",
        [c.target(f"sum by ({c.by('stage')}) ({c.one_replica(f'rate({requested}[$__rate_interval])')})", "{{stage}}")],
        unit="reqps"), w=8)
    exempt_stages = "|".join(CONFIG.low_throughput_exempt_stages)
    backlog = CONFIG.low_throughput_events_per_second * CONFIG.low_throughput_backlog_seconds
    layout.add(c.timeseries(
        "Processed per stage",
        "Events that finished each stage (completed or failed), per second over 5 minutes. Below the line "
        f"(1,000 files a minute; not drawn for {', '.join(CONFIG.low_throughput_exempt_stages)}: their events are "
        f"not files) LowThroughput fires, but only while more than {backlog:.0f} records wait for the stage.",
        [c.target(c.sel(STAGE_PROCESSED_RATE), "{{stage}}")], unit="reqps",
        overrides=[c.threshold_override(f"^(?!({exempt_stages})$)", c.below(CONFIG.low_throughput_events_per_second))],
        links=c.runbooks("LowThroughput")), w=8)
    layout.add(c.timeseries(
        "Completed and failed per stage",
        "Events per second read from each stage's completed and failed topics.",
        [c.target(f"sum by ({c.by('stage', 'status')}) ({c.one_replica(PROCESSED_RATE)})", "{{stage}} {{status}}")],
        unit="reqps"), w=8)
    error_ratio = c.sel(error_ratio_rule("5m"))
    layout.add(c.timeseries(
        "Error ratio per stage",
        "Failed / processed events over 5 minutes, as HighErrorRate computes it. Orange above the SLO's "
        f"allowed error ratio ({slo_error_budget():.1%}), "
        f"red above HighErrorRate's threshold ({CONFIG.error_ratio:.0%}). No line while a stage processes "
        "nothing.",
        [c.target(error_ratio, "{{stage}}")], unit="percentunit",
        thresholds=c.steps(GREEN, (slo_error_budget(), ORANGE), (CONFIG.error_ratio, RED)),
        links=c.runbooks("HighErrorRate", "StageErrorBudgetBurn")), w=8)
    window = CONFIG.slo_window
    layout.add(c.stat(
        f"Error budget left ({window})",
        f"Share of the error budget still unspent over the last {window}: the SLO lets "
        f"{slo_error_budget():.1%} of a stage's events fail ({CONFIG.slo_objective:.1%} must complete). "
        "Below 0 the SLO is missed. Recorded every 5 minutes.",
        [c.target(f"1 - {c.sel(error_ratio_rule(window))} / {slo_error_budget()}", "{{stage}}", instant=True)],
        unit="percentunit", thresholds=c.steps(RED, (0, ORANGE), (0.25, GREEN)),
        links=c.runbooks("StageErrorBudgetBurn", "StageSLIMissing")), w=8)
    layout.add(c.timeseries(
        "Events in flight per stage",
        "Requests of each stage not yet completed or failed (requested minus processed).",
        [c.target(f"sum by ({c.by('stage')}) ({c.one_replica(c.sel('tree_events_in_flight'))})", "{{stage}}")],
        unit="short"), w=8)


def ingestion_speed(layout: c.Layout) -> None:
    """The guide's issue 4, "Slow project ingestion": the services' own numbers it reads."""
    layout.row("Ingestion speed")
    buckets = c.services_sel(f"{TREE_EVENT_PROCESSING_SECONDS.name}_bucket")
    by_bucket = f"sum by ({c.by('service', 'le')}) (rate({buckets}[$__rate_interval]))"
    budget = CONFIG.ingestion_seconds_per_file
    layout.add(c.timeseries(
        "Event processing time (p50, p95)",
        "Seconds the intelligence service takes per event, from its own tree_event_processing_seconds "
        f"histogram. SlowProjectIngestion fires while p95 stays above the line ({budget:g} s: "
        f"{CONFIG.ingestion_target_files:,} files in {CONFIG.ingestion_target_seconds:g} s).",
        [c.target(f"histogram_quantile(0.5, {by_bucket})", "{{service}} p50"),
         c.target(f"histogram_quantile(0.95, {by_bucket})", "{{service}} p95", ref_id="B")],
        unit="s", thresholds=c.above(budget), links=c.runbooks("SlowProjectIngestion")), w=8)
    stamping = c.services_sel(STAMPING_LATENCY_MS_P95.name)
    layout.add(c.timeseries(
        "Stamping latency p95",
        "The 95th percentile of metadata-stamping's recent stampings, as it reports it "
        "(stamping_latency_ms_p95): the downstream latency the guide checks when ingestion is slow.",
        [c.target(f"max by ({c.by('service')}) ({stamping})", "{{service}}")], unit="ms",
        links=c.runbooks("SlowProjectIngestion")), w=8)
    layout.add(c.timeseries(
        "Cache hit rate",
        "The hit_rate each service's /cache/metrics answered (tree_service_cache_hit_ratio); a cold cache "
        "makes every event slower: warm it before a big ingestion. No line while the read fails "
        "(tree_service_cache_metrics_failure says why).",
        [c.target(c.one_replica(c.sel("tree_service_cache_hit_ratio")), "{{service}}")], unit="percentunit",
        links=c.runbooks("SlowProjectIngestion")), w=8)


def consumer_lag(layout: c.Layout) -> None:
    layout.row("Consumer lag")
    # The per-topic series: the exporter reports them for every group, whatever exporter.partition_series says.
    max_lag = c.sel("kafka_consumer_group_topic_max_lag")
    layout.add(c.timeseries(
        "Consumer lag, worst partition per group",
        "Records each group has not consumed yet, on its most lagging partition "
        "(kafka_consumer_group_topic_max_lag): HighConsumerLag fires per group and topic above the line. Per "
        "topic and per partition on 'Tree Stamping: Consumer groups and DLQ'.",
        [c.target(f"max by ({c.by('group')}) ({max_lag})", "{{group}}")], unit="short",
        thresholds=c.above(CONFIG.consumer_lag_records), links=c.runbooks("HighConsumerLag")), w=8)
    max_lag_seconds = c.sel("kafka_consumer_group_topic_max_lag_seconds")
    layout.add(c.timeseries(
        "Consumer lag in seconds per group",
        "Age of the oldest record each group has not consumed yet, on its most lagging partition "
        "(kafka_consumer_group_topic_max_lag_seconds); ConsumerLagTooOld fires above the line.",
        [c.target(f"max by ({c.by('group')}) ({max_lag_seconds})", "{{group}}")], unit="s",
        thresholds=c.above(CONFIG.consumer_lag_max_age_seconds), links=c.runbooks("ConsumerLagTooOld")), w=8)
    layout.add(c.stat(
        "Consumer group members",
        "Members in each consumer group; a group without members consumes nothing "
        "(ConsumerGroupNoMembers fires when records wait for it).",
        [c.target(c.sel("kafka_consumer_group_members"), "{{group}}")], unit="short", thresholds=c.below(1),
        links=c.runbooks("ConsumerGroupNoMembers")), w=8)


def dead_letters(layout: c.Layout) -> None:
    layout.row("Dead letter queues")
    layout.add(c.timeseries(
        "DLQ depth per stage", "Records retained in each stage's dead letter queue.",
        [c.target(f"sum by ({c.by('stage')}) ({c.one_replica(c.sel('tree_dlq_retained_records'))})", "{{stage}}")],
        unit="short",
        links=c.runbooks("DLQNewRecords", "DLQRecordsUnhandled")), w=8)
    window = c.DLQ_OVERFLOW_WINDOW
    layout.add(c.timeseries(
        f"New DLQ records in {window}",
        f"Records written to each stage's dead letter queue topic in the last {window} (growth of its high "
        "watermark), as DLQOverflow counts them; it fires above the line.",
        [c.target(c.dlq_records_written(), "{{stage}}")], unit="short",
        thresholds=c.above(CONFIG.dlq_overflow_records_5m), links=c.runbooks("DLQOverflow")), w=8)
    records = c.sel("tree_dlq_records_total")
    layout.add(c.timeseries(
        "New DLQ records by error type",
        "New dead letters per second by stage and error_type (FILE_NOT_FOUND, INTELLIGENCE_SERVICE_ERROR, "
        f"ENCODING_ERROR...; 'unparseable' when a record is not a JSON object): {c.DLQ_RECORDS_SINCE_FIRST_SEEN} "
        "What each queue holds now, by error type, is on 'Tree Stamping: Consumer groups and DLQ'.",
        [c.target(f"sum by ({c.by('stage', 'error_type')}) ({c.one_replica(f'rate({records}[$__rate_interval])')})",
                  "{{stage}} {{error_type}}")],
        unit="cps", stacked=True, bars=True, links=c.runbooks("DLQNewRecords")), w=8)


def exporter_health(layout: c.Layout) -> None:
    layout.row("treewatch exporter")
    failing = c.runbooks("TreewatchCollectorFailing")
    layout.add(c.stat(
        "Collectors", "Whether each of the exporter's collectors succeeded on its last run.",
        [c.target(c.sel("treewatch_collector_success"), "{{collector}}")], unit="none",
        mappings=c.value_mappings((0, "failing", RED), (1, "ok", GREEN)), thresholds=c.below(1),
        links=failing), w=8)
    last_success = c.sel("treewatch_collector_last_success_timestamp_seconds")
    layout.add(c.timeseries(
        "Data age per collector",
        "Seconds since each collector last succeeded: the age of the data the exporter serves. "
        "TreewatchDataStale fires above the line.",
        [c.target(f"time() - {last_success}", "{{collector}}")], unit="s",
        thresholds=c.above(CONFIG.data_stale_seconds), links=c.runbooks("TreewatchDataStale")), w=8)
    layout.add(c.timeseries(
        "Collector run time", "How long each collector's last run took.",
        [c.target(c.sel("treewatch_collector_duration_seconds"), "{{collector}}")], unit="s",
        links=failing), w=8)
    errors = c.sel("treewatch_collector_errors_total")
    layout.add(c.stat(
        "Failed collector runs in range", "Collector runs that failed during the selected time range.",
        [c.target(f"sum by ({c.by('collector')}) (increase({errors}[$__range]))", "{{collector}}", instant=True)],
        unit="short",
        thresholds=c.above(1, ORANGE), links=failing), w=6)
    layout.add(c.stat(
        "Series dropped by max_series",
        "Series each collector left out of its last run because of the max_series cap: consumer groups lose "
        "their per-partition series first, then whole groups. Raise the cap, narrow the topic filters or lower "
        "exporter.partition_series (docs/scale.md).",
        [c.target(c.sel("treewatch_series_dropped"), "{{collector}}")], unit="short",
        thresholds=c.above(1, ORANGE)), w=6)
    # The gauge counts whole reads, so "more than N" is "N + 1 or more" on Grafana's >= steps.
    partial_reads = c.above(CONFIG.consumer_group_read_errors + 1, ORANGE)
    layout.add(c.stat(
        "Partial consumer-group reads",
        "Consumer-group reads (listing, describe, committed offsets) that failed in each exporter's last "
        "refresh while the kafka_groups collector still succeeded: some groups' lag may be missing. "
        f"KafkaConsumerGroupsPartiallyRead fires when it stays above {CONFIG.consumer_group_read_errors} "
        f"for {CONFIG.consumer_group_read_errors_for}; the exporter's log names the failed step.",
        [c.target(c.sel("kafka_consumer_group_read_errors"), "{{instance}}")], unit="short",
        thresholds=partial_reads, links=c.runbooks("KafkaConsumerGroupsPartiallyRead")), w=4)
    layout.add(c.table(
        "Exporter build", "Which treewatch, Python and librdkafka each exporter runs.",
        [c.target(c.sel("treewatch_build_info"), instant=True, table=True)], unit="none",
        hidden_columns=("Time", "Value", "__name__", "job")), w=8)


def build() -> c.Dashboard:
    layout = c.Layout()
    firing_alerts(layout)
    services(layout)
    kafka(layout)
    stages(layout)
    ingestion_speed(layout)
    consumer_lag(layout)
    dead_letters(layout)
    exporter_health(layout)
    return c.dashboard(
        uid=c.OVERVIEW_UID,
        title="Tree Stamping: Overview",
        description="The tree stamping pipeline at a glance: firing alerts, services, Kafka, stages, consumer "
        "lag, DLQs and the treewatch exporter. Threshold lines are the alert thresholds.",
        layout=layout,
        variables=[],
        links=[c.dashboard_link("Consumer groups and DLQ", c.GROUPS_DLQ_UID), c.runbook_dashboard_link()],
    )
