"""The monitoring values of a deployment, the ``monitoring:`` section of the configuration file: the
one object of thresholds, ``for`` durations, links and channels that the alert rules, Alertmanager's
configuration and the dashboards all read, so a threshold line on a panel is always the number an
alert fires at (one number, one place) and a deployment sets its values in a file, not in Python.

Every field is declared once below (type, bounds, default, description); the loader of
pipeline/config.py validates the section with the rest of the file and builds it as
``config.monitoring``. Every default is the operators' guide's (and the committed generated files').
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, fields, replace
from typing import Annotated, Any, get_args, get_type_hints

from pydantic import Field, WithJsonSchema
from pydantic.fields import FieldInfo

from alerts.environments import EnvironmentPolicy, environment_policies, environments_schema
from pipeline.config import NAME_PATTERN, ConfigError, NotInFile, build_document, config_section

# The dashboards' uids are fixed because every alert's dashboard_url and the dashboards' links to
# each other name them.
OVERVIEW_DASHBOARD_UID = "tree-stamping-overview"
GROUPS_DLQ_DASHBOARD_UID = "tree-stamping-groups-dlq"

# Recording rules the alerts and the dashboards both query (level:metric:operations; level = the
# labels kept besides job), so a panel shows exactly the number its alert compares.
STAGE_CONSUMER_LAG = "stage:kafka_consumer_group_lag:sum"
STAGE_PROCESSED_RATE = "stage:tree_events_processed:rate5m"
DLQ_RECORDS_WRITTEN = "stage_topic:kafka_topic_partition_current_offset:increase5m"

# Prometheus' job of the treewatch exporter: every rule selects the exporter's series by it, and the
# generated scrape configuration and ServiceMonitor give the exporter's targets this job.
EXPORTER_JOB = "treewatch"
# Prometheus' job of the pipeline's services' own /metrics (scraped directly, not through the exporter):
# the generated scrape configuration gives every configured service's host:port this job and a `service` label.
SERVICES_JOB = "tree-services"

# A Prometheus duration: "30s", "5m", "1h30m".
DURATION_PATTERN = "^([0-9]+(ms|[ywdhms]))+$"
LABEL_NAME_PATTERN = "^[a-zA-Z_][a-zA-Z0-9_]*$"
# Labels an alert's identity and routing rest on; an extra label of the same name would change them.
RESERVED_LABELS = ("alertname", "severity", "burn")


def error_ratio_rule(window: str) -> str:
    """The recording rule of a stage's failed / processed events over ``window``."""
    return f"stage:tree_events_error_ratio:rate{window}"


# A pattern field's description is what the loader's message says was expected, so it starts with the form.
def _duration(description: str) -> FieldInfo:
    return Field(pattern=DURATION_PATTERN, description=f"a Prometheus duration (30s, 5m, 1h30m): {description}")


def _for(alert: str, why: str = "") -> FieldInfo:
    return _duration(f"how long {alert}'s condition must hold before it fires{why}")


def _url(description: str) -> FieldInfo:
    return Field(pattern="^https?://", description=f"an http:// or https:// URL: {description}")


def _text(description: str) -> FieldInfo:
    return Field(min_length=1, description=description)


@config_section("monitoring", "The deployment's monitoring values: alert thresholds and `for` durations, the SLO, "
                "links, Slack channels, extra alert labels, the heartbeat and the alerts turned off. "
                "`treewatch generate --config FILE` writes the rules, Alertmanager's configuration, the dashboards "
                "and the Kubernetes objects from them.")
@dataclass(frozen=True)
class MonitoringConfig:
    # -- the guide's four alerts ----------------------------------------------------------------
    consumer_lag_records: Annotated[int, Field(ge=0, description=(
        "HighConsumerLag (guide): records a partition of a consumer group may be behind."))] = 10_000
    high_consumer_lag_for: Annotated[str, _for("HighConsumerLag")] = "5m"
    dlq_overflow_records_5m: Annotated[int, Field(ge=0, description=(
        "DLQOverflow (guide): new dead letters in 5 minutes, per DLQ topic, above which it pages."))] = 10
    dlq_overflow_for: Annotated[str, _for("DLQOverflow")] = "1m"
    low_throughput_events_per_second: Annotated[float, Field(gt=0, description=(
        "LowThroughput (guide): events per second a stage must finish (16.67: 1,000 files a minute)."))] = 16.67
    low_throughput_backlog_seconds: Annotated[int, Field(ge=0, description=(
        "LowThroughput needs a real backlog: more records waiting than this many seconds of work at the target "
        "speed (16.67/s * 300 s = 5,000), so a lightly loaded stage whose commits trail its batches by a few "
        "records is not slow."))] = 300
    low_throughput_exempt_stages: Annotated[tuple[Annotated[str, Field(min_length=1)], ...], Field(description=(
        "Stages LowThroughput leaves out because their events are not files: discover counts projects. Every "
        "other stage, one added in the configuration included, must finish files at the target speed."))] = (
        "discover",)
    low_throughput_for: Annotated[str, _for("LowThroughput")] = "5m"
    error_ratio: Annotated[float, Field(gt=0, le=1, description=(
        "HighErrorRate (guide): failed / processed events over 5 minutes above which it pages."))] = 0.05
    error_ratio_min_events_per_second: Annotated[float, Field(ge=0, description=(
        "HighErrorRate and the SLO burn alerts ignore a stage processing fewer events per second than this over "
        "the alert's short window: 1 failure in 3 events is noise, not a 33 % error rate."))] = 0.1
    high_error_rate_for: Annotated[str, _for("HighErrorRate")] = "5m"

    # -- ingestion speed (the guide's issue 4) ---------------------------------------------------
    ingestion_target_files: Annotated[int, Field(gt=0, description=(
        "SlowProjectIngestion (guide, issue 4): a project of this many files must be ingested within "
        "ingestion_target_seconds; their ratio (0.3 s) is the p95 processing time of one event above which "
        "it fires. Throughput (1,000 files a minute) is LowThroughput's."))] = 1000
    ingestion_target_seconds: Annotated[float, Field(gt=0, description=(
        "SlowProjectIngestion: the seconds a project of ingestion_target_files files may take (the guide: "
        "under 5 minutes). A speed, not a wait: never time-scaled."))] = 300
    slow_project_ingestion_for: Annotated[str, _for("SlowProjectIngestion")] = "5m"

    # -- the SLO ---------------------------------------------------------------------------------
    slo_objective: Annotated[float, Field(gt=0, lt=1, description=(
        "SLO target: the share of a stage's events that must complete rather than fail."))] = 0.999
    slo_window: Annotated[str, _duration(
        "the SLO window the dashboards count the error budget left over (the burn rates assume 30 days)")] = "30d"
    burn_rate_fast_1h: Annotated[float, Field(gt=0, description=(
        "Page when the 1h and 5m windows both burn the error budget this many times faster than allowed "
        "(Google SRE workbook, 30-day budget)."))] = 14.4
    burn_rate_fast_6h: Annotated[float, Field(gt=0, description=(
        "Page when the 6h and 30m windows both burn this fast."))] = 6.0
    burn_rate_slow_1d: Annotated[float, Field(gt=0, description=(
        "Ticket when the 1d and 2h windows both burn this fast."))] = 3.0
    burn_rate_slow_3d: Annotated[float, Field(gt=0, description=(
        "Ticket when the 3d and 6h windows both burn this fast."))] = 1.0
    fast_burn_for: Annotated[str, _for("StageErrorBudgetBurn (fast burn, critical)")] = "2m"
    slow_burn_for: Annotated[str, _for("StageErrorBudgetBurn (slow burn, warning)")] = "15m"
    stage_sli_missing_for: Annotated[str, _for("StageSLIMissing")] = "10m"

    # -- Kafka -----------------------------------------------------------------------------------
    kafka_unavailable_for: Annotated[str, _for("KafkaUnavailable")] = "1m"
    kafka_brokers_down_for: Annotated[str, _for("KafkaBrokersDown")] = "1m"
    kafka_leaderless_partitions_for: Annotated[str, _for("KafkaLeaderlessPartitions")] = "1m"
    kafka_under_replicated_partitions_for: Annotated[str, _for("KafkaUnderReplicatedPartitions")] = "5m"

    # -- consumer groups -------------------------------------------------------------------------
    lag_ignored_groups: Annotated[str, Field(min_length=1, json_schema_extra={"format": "regex"}, description=(
        "Consumer groups HighConsumerLag leaves alone (a regular expression): treewatch's own DLQ replay groups "
        "lag behind their DLQ by design until someone replays it."))] = "treewatch-.*"
    consumer_lag_max_age_seconds: Annotated[int, Field(ge=0, description=(
        "ConsumerLagTooOld: age in seconds of the oldest unconsumed record above which it fires."))] = 900
    consumer_lag_too_old_for: Annotated[str, _for("ConsumerLagTooOld")] = "5m"
    consumer_stalled_seconds: Annotated[int, Field(ge=0, description=(
        "ConsumerGroupStalled: seconds a partition with lag may keep its committed offset unmoved."))] = 600
    consumer_group_stalled_for: Annotated[str, _for("ConsumerGroupStalled")] = "5m"
    consumer_group_no_members_for: Annotated[str, _for("ConsumerGroupNoMembers")] = "5m"
    consumer_group_read_errors: Annotated[int, Field(ge=0, description=(
        "KafkaConsumerGroupsPartiallyRead: consumer-group reads that failed in the exporter's last refresh while "
        "others succeeded, above which the lag of some groups may be missing; 0: any failed read counts."))] = 0
    consumer_group_read_errors_for: Annotated[str, _for(
        "KafkaConsumerGroupsPartiallyRead", ": a coordinator moving (broker restart, rebalance) fails a refresh or "
        "two and heals within minutes; a failure that persists is an ACL, a dead coordinator or a broken group")] = (
        "10m")

    # -- dead letter queues ----------------------------------------------------------------------
    dlq_new_records_for: Annotated[str, _for("DLQNewRecords")] = "1m"
    dlq_oldest_record_max_age_seconds: Annotated[int, Field(ge=0, description=(
        "DLQRecordsUnhandled: age in seconds of the oldest record still in a DLQ above which it fires (a day "
        "of neglect)."))] = 86_400
    dlq_records_unhandled_for: Annotated[str, _for("DLQRecordsUnhandled")] = "5m"

    # -- services --------------------------------------------------------------------------------
    service_probe_window: Annotated[str, _duration(
        "TreeServiceDown's value is the share of good probes over this window")] = "5m"
    tree_service_down_for: Annotated[str, _for("TreeServiceDown")] = "2m"
    service_degraded_window: Annotated[str, _duration(
        "TreeServiceDegraded's value is the share of this window the service reported itself not healthy")] = "15m"
    tree_service_degraded_for: Annotated[str, _for("TreeServiceDegraded")] = "5m"

    # -- the index stage's stores (the guide's issue 3, "Missing files in search results") --------
    stores: Annotated[tuple[Annotated[str, Field(pattern=NAME_PATTERN)], ...], Field(description=(
        "Services (their names under services:) that are the index stage's stores: StoreUnavailable and "
        "IndexStoreDown watch them and TreeServiceDown leaves them out."))] = ("qdrant", "memgraph")
    store_stage: Annotated[str, Field(pattern=NAME_PATTERN, description=(
        "The stage that writes into the stores: IndexStoreDown pages when a store is down while this stage fails "
        "events (HighErrorRate's error_ratio) or dead-letters them (DLQOverflow's dlq_overflow_records_5m)."))] = (
        "index")
    store_unavailable_for: Annotated[str, _for("StoreUnavailable")] = "2m"
    index_store_down_for: Annotated[str, _for("IndexStoreDown")] = "2m"

    # -- the exporter ----------------------------------------------------------------------------
    exporter_scrape_window: Annotated[str, _duration(
        "TreewatchExporterDown's value is the share of good scrapes over this window")] = "5m"
    treewatch_exporter_down_for: Annotated[str, _for("TreewatchExporterDown")] = "2m"
    treewatch_exporter_missing_for: Annotated[str, _for("TreewatchExporterMissing")] = "5m"
    treewatch_collector_failing_for: Annotated[str, _for("TreewatchCollectorFailing")] = "5m"
    data_stale_seconds: Annotated[int, Field(ge=0, description=(
        "TreewatchDataStale: seconds since a collector's last success above which it fires (the exporter "
        "refreshes every 15 s by default)."))] = 300
    treewatch_data_stale_for: Annotated[str, _for("TreewatchDataStale")] = "2m"

    # -- alerts as a whole -----------------------------------------------------------------------
    extra_labels: Annotated[Mapping[str, str], Field(
        json_schema_extra={"propertyNames": {"pattern": LABEL_NAME_PATTERN, "description": (
            "a label name (letters, digits and _, not starting with a digit)")}}, description=(
            "Labels added to every alert (team, cluster, ...), for routing and silencing in a shared "
            "Alertmanager; alertname, severity and burn are the rules' own."))] = field(default_factory=dict)
    disabled_alerts: Annotated[tuple[Annotated[str, Field(min_length=1)], ...], Field(description=(
        "Alerts left out of the rule file, by name (their recording rules stay)."))] = ()

    # -- links -----------------------------------------------------------------------------------
    docs_base_url: Annotated[str, _url(
        "where the repository's files are browsable; an alert's runbook_url is this + "
        "docs/runbooks.md#<alert>")] = "https://github.com/tree-stamping/treewatch/blob/main/"
    grafana_url: Annotated[str, _url("Grafana's external URL; an alert's dashboard_url is this + /d/<uid>")] = (
        "http://localhost:3000")
    prometheus_url: Annotated[str, _url(
        "Prometheus' external URL (its --web.external-url), which alerts link their query to")] = (
        "http://localhost:9090")
    alertmanager_url: Annotated[str, _url(
        "Alertmanager's external URL (its --web.external-url): where Prometheus sends alerts, and what a "
        "Slack message's Silence button opens")] = "http://localhost:9093"

    # -- Alertmanager ----------------------------------------------------------------------------
    slack_oncall_channel: Annotated[str, _text("Slack channel that pages on-call (severity critical).")] = (
        "#tree-stamping-oncall")
    slack_alerts_channel: Annotated[str, _text("Slack channel for automated warnings (severity warning, and "
                                               "any severity no route knows).")] = "#tree-stamping-alerts"
    slack_api_url_file: Annotated[str, _text(
        "File holding the Slack webhook URL (a secret: mounted at deploy time, never in the repository).")] = (
        "/etc/alertmanager/secrets/slack-api-url")
    heartbeat_url: Annotated[str | None, _url(
        "Dead man's switch that expects the Watchdog heartbeat (a healthchecks.io check, ...); left out, the "
        "Watchdog goes nowhere. A token it needs goes in heartbeat_credentials_file")] = None
    heartbeat_credentials_file: Annotated[str | None, _text(
        "File with a bearer token for the heartbeat service; left out when it needs none.")] = None
    heartbeat_repeat_interval: Annotated[str, _duration(
        "how often the Watchdog heartbeat is re-sent; the heartbeat service alarms when it stops")] = "1m"
    group_wait: Annotated[str, _duration(
        "wait this long for more alerts of a new group before the first notification")] = "30s"
    group_interval: Annotated[str, _duration(
        "wait this long before notifying about alerts added to (or resolved in) a group")] = "5m"
    critical_repeat_interval: Annotated[str, _duration(
        "re-send a still-firing critical alert this often (on-call must not lose it)")] = "1h"
    warning_repeat_interval: Annotated[str, _duration("re-send a still-firing warning this often")] = "4h"
    resolve_timeout: Annotated[str, _duration(
        "Alertmanager resolves an alert its sender stopped updating after this long")] = "5m"
    environments: Annotated[Mapping[str, EnvironmentPolicy], WithJsonSchema(environments_schema(
        "What each environment's alerts do, by their env label (alerts/environments.py), e.g. "
        "dev: {pages: false}; an environment not named here pages."))] = field(default_factory=dict)

    # -- not a deployment's to set ---------------------------------------------------------------
    # The selector of the exporter's series; the generated scrape configuration gives them this job.
    exporter_selector: Annotated[str, NotInFile()] = f'job="{EXPORTER_JOB}"'
    # The selector of the services' own series (SERVICES_JOB).
    services_selector: Annotated[str, NotInFile()] = f'job="{SERVICES_JOB}"'
    # DLQOverflow (guide) and DLQNewRecords count the dead letters written in this window (the guide's
    # threshold is per 5 minutes: dlq_overflow_records_5m).
    dlq_window: Annotated[str, NotInFile()] = "5m"
    # Template files, relative to alertmanager.yml (Alertmanager resolves them from its directory).
    alertmanager_templates: Annotated[tuple[str, ...], NotInFile()] = ("slack.tmpl",)
    # Every duration the generated files hold (each `for`, range window, evaluation and Alertmanager
    # interval, and the thresholds counted in seconds) is multiplied by this, so a chain whose alerts
    # wait 15 minutes in production runs in seconds (end-to-end tests and the demo only). The rules'
    # names, expressions and routing stay the shipped ones; 1 (the default) changes nothing.
    time_scale: Annotated[float, NotInFile()] = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.time_scale <= 1:
            raise ValueError(f"time_scale must be in (0, 1], got {self.time_scale}")

    def settle(self, given: Mapping[str, Any], path: str, source: str) -> MonitoringConfig:
        """What the schema cannot say: the alerts to disable exist, and the extra labels leave the rules'
        own labels alone."""
        # alerts.rules builds its alerts from this object, so it is imported only once one exists.
        from alerts.rules import alerts

        for env, policy in self.environments.items():
            _check_thresholds(policy.thresholds if isinstance(policy, EnvironmentPolicy)
                              else dict(policy.get("thresholds", {})), f"{path}.environments.{env}.thresholds", source)
        # The file gives lists; the object holds tuples, like its defaults.
        settled = replace(self, low_throughput_exempt_stages=tuple(self.low_throughput_exempt_stages),
                          stores=tuple(self.stores), disabled_alerts=tuple(self.disabled_alerts),
                          extra_labels=dict(self.extra_labels), environments=environment_policies(self.environments))
        known = sorted({alert.name for alert in alerts(settled)})
        unknown = [name for name in self.disabled_alerts if name not in known]
        if unknown:
            raise ConfigError(f"{source}: {path}.disabled_alerts: no alert named {', '.join(map(repr, unknown))} "
                              f"(known: {', '.join(known)})")
        reserved = sorted(set(self.extra_labels) & set(RESERVED_LABELS))
        if reserved:
            raise ConfigError(f"{source}: {path}.extra_labels: {', '.join(reserved)} is the rules' own label; "
                              f"choose another name")
        return settled

    def for_environment(self, env: str) -> MonitoringConfig:
        """This configuration with the thresholds and `for` durations ``env`` sets otherwise."""
        return replace(self, **self.environments[env].thresholds)

    @property
    def threshold_environments(self) -> tuple[str, ...]:
        """The environments that set a threshold or `for` duration of their own."""
        return tuple(sorted(env for env, policy in self.environments.items() if policy.thresholds))

    @property
    def time_scaled(self) -> bool:
        return self.time_scale != 1

    def duration(self, text: str) -> str:
        """A Prometheus/Alertmanager duration ("5m", "1h30m") as this config writes it: unchanged,
        or multiplied by ``time_scale``."""
        if not self.time_scaled:
            return text
        return format_duration(parse_duration(text) * self.time_scale)

    def seconds(self, value: float) -> float:
        """A threshold counted in seconds, multiplied by ``time_scale``."""
        return value * self.time_scale if self.time_scaled else value

    @property
    def ingestion_seconds_per_file(self) -> float:
        """SlowProjectIngestion's threshold: the p95 seconds one file's event may take."""
        return self.ingestion_target_seconds / self.ingestion_target_files

    @property
    def runbook_base_url(self) -> str:
        """The URL of docs/runbooks.md; an alert's runbook_url adds "#<anchor>"."""
        return self.docs_base_url + "docs/runbooks.md"

    def runbook_url(self, alert: str) -> str:
        """The runbook section of an alert (its "## <AlertName>" heading)."""
        return f"{self.runbook_base_url}#{runbook_anchor(alert)}"

    def dashboard_url(self, uid: str) -> str:
        return f"{self.grafana_url.rstrip('/')}/d/{uid}"


_DURATION_UNITS = {"y": 365 * 86_400, "w": 7 * 86_400, "d": 86_400, "h": 3_600, "m": 60, "s": 1, "ms": 0.001}
_DURATION = re.compile(r"(?:(\d+)(ms|[ywdhms]))")


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration such as "5m", "1h30m" or "600ms"."""
    parts = _DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(number) * _DURATION_UNITS[unit] for number, unit in parts)


def format_duration(seconds: float) -> str:
    """A duration in the largest unit that holds it whole: 6 -> "6s", 1.2 -> "1200ms", 72 -> "72s".

    Never below a millisecond, and never 0 unless asked for 0 (a `for` of 0 means no wait at all).
    """
    milliseconds = round(seconds * 1000)
    if milliseconds == 0:
        return "0s" if seconds == 0 else "1ms"
    for unit in ("d", "h", "m", "s"):
        whole, rest = divmod(milliseconds, round(_DURATION_UNITS[unit] * 1000))
        if rest == 0:
            return f"{whole}{unit}"
    return f"{milliseconds}ms"


def runbook_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to '-'.
    An alert's runbook section is the heading that is its name."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


CONFIG = MonitoringConfig()

# The monitoring values the dashboards are being built for (see building_for).
_BUILDING_FOR: ContextVar[MonitoringConfig] = ContextVar("monitoring_values", default=CONFIG)


@contextmanager
def building_for(config: MonitoringConfig) -> Iterator[MonitoringConfig]:
    """Within this block, the dashboards read ``config``'s values (current_values()). The rule and
    Alertmanager builders take the object as an argument; the dashboards' panels read it as they are
    built, deep in their layout code, so one deployment's build sees that deployment's values only
    (a context variable: threads and other builds keep theirs)."""
    token = _BUILDING_FOR.set(config)
    try:
        yield config
    finally:
        _BUILDING_FOR.reset(token)


def current_values() -> MonitoringConfig:
    """The monitoring values of the build in progress (building_for), the defaults outside one."""
    return _BUILDING_FOR.get()


def overridable_fields() -> tuple[str, ...]:
    """The monitoring fields an environment may set otherwise: thresholds (numbers) and `for` durations."""
    hints = get_type_hints(MonitoringConfig, include_extras=True)
    return tuple(item.name for item in fields(MonitoringConfig)
                 if not any(isinstance(mark, NotInFile) for mark in getattr(hints[item.name], "__metadata__", ()))
                 and (item.name.endswith("_for") or get_args(hints[item.name])[:1] in ((int,), (float,))))


def _check_thresholds(thresholds: Mapping[str, Any], where: str, source: str) -> None:
    """An environment's thresholds name overridable fields and pass the checks the fields themselves
    have (the same messages as in the monitoring section)."""
    allowed = overridable_fields()
    unknown = sorted(set(thresholds) - set(allowed))
    if unknown:
        raise ConfigError(f"{source}: {where}.{unknown[0]}: not a threshold or `for` duration of the monitoring "
                          f"section (expected one of: {', '.join(allowed)})")
    build_document(MonitoringConfig, dict(thresholds), source, where)
