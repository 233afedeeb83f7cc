"""The one object of selectors and thresholds that both the alert rules and the dashboards read,
so a threshold line on a panel is always the number an alert fires at (one number, one place)."""

from __future__ import annotations

import re
from dataclasses import dataclass

# The dashboards' uids are fixed because every alert's dashboard_url and the dashboards' links to
# each other name them.
OVERVIEW_DASHBOARD_UID = "tree-stamping-overview"
GROUPS_DLQ_DASHBOARD_UID = "tree-stamping-groups-dlq"

# Recording rules the alerts and the dashboards both query (level:metric:operations; level = the
# labels kept besides job), so a panel shows exactly the number its alert compares.
STAGE_CONSUMER_LAG = "stage:kafka_consumer_group_lag:sum"
STAGE_PROCESSED_RATE = "stage:tree_events_processed:rate5m"
DLQ_RECORDS_WRITTEN = "stage_topic:kafka_topic_partition_current_offset:increase5m"


def error_ratio_rule(window: str) -> str:
    """The recording rule of a stage's failed / processed events over ``window``."""
    return f"stage:tree_events_error_ratio:rate{window}"


@dataclass(frozen=True)
class MonitoringConfig:
    # HighConsumerLag (guide): records behind, per group/topic/partition.
    consumer_lag_records: int = 10_000
    # DLQOverflow (guide): new dead letters in 5 minutes, per DLQ topic.
    dlq_overflow_records_5m: int = 10
    # LowThroughput (guide): events per second (1,000 files a minute).
    low_throughput_events_per_second: float = 16.67
    # LowThroughput needs a real backlog: more records waiting than this many seconds of work at the
    # target speed (16.67/s * 300 s = 5,000), so a lightly loaded stage whose commits trail its
    # batches by a few records is not "slow".
    low_throughput_backlog_seconds: int = 300
    # The stages whose events are files, where 1,000 a minute is the target; discover counts projects.
    low_throughput_stages: tuple[str, ...] = ("stamp", "index")
    # HighErrorRate (guide): failed / processed over 5 minutes.
    error_ratio: float = 0.05
    # HighErrorRate and the SLO burn alerts ignore a stage processing fewer events per second than
    # this over the alert's short window: 1 failure in 3 events is noise, not a 33 % error rate.
    error_ratio_min_events_per_second: float = 0.1
    # SLO: share of a stage's events that must complete rather than fail.
    slo_objective: float = 0.999
    # SLO window the dashboards count the error budget left over (the burn rates assume 30 days).
    slo_window: str = "30d"

    # -- selectors ------------------------------------------------------------------------------
    # Prometheus' job for the treewatch exporter; every rule selects the exporter's series by it.
    exporter_selector: str = 'job="treewatch"'
    # Consumer groups HighConsumerLag leaves alone: treewatch's own DLQ replay groups
    # (treewatch-dlq-replay-<topic>) lag behind their DLQ by design until someone replays it.
    # (Which groups and topics belong to which stage comes from tree_pipeline_stage_info.)
    lag_ignored_groups: str = "treewatch-.*"

    # -- consumer groups ------------------------------------------------------------------------
    # ConsumerLagTooOld: age of the oldest unconsumed record (kafka_consumer_group_lag_seconds).
    consumer_lag_max_age_seconds: int = 900
    # ConsumerGroupStalled: a partition with lag whose committed offset has not moved for this long.
    consumer_stalled_seconds: int = 600
    # KafkaConsumerGroupsPartiallyRead: consumer-group reads (listing, describe, committed offsets)
    # that failed in the exporter's last refresh while others succeeded; above this the lag of some
    # groups may be missing or partial. 0: any failed read counts.
    consumer_group_read_errors: int = 0
    # ...for this long: a coordinator moving (broker restart, rebalance) fails a refresh or two and
    # heals itself within a few minutes; a failure that persists is an ACL, a dead coordinator or
    # a broken group.
    consumer_group_read_errors_for: str = "10m"

    # -- windows --------------------------------------------------------------------------------
    # DLQOverflow (guide) and DLQNewRecords count the dead letters written in this window.
    dlq_window: str = "5m"
    # TreeServiceDown's value is the share of good probes over this window.
    service_probe_window: str = "5m"
    # TreeServiceDegraded's value is the share of this window the service reported itself not healthy.
    service_degraded_window: str = "15m"
    # TreewatchExporterDown's value is the share of good scrapes over this window.
    exporter_scrape_window: str = "5m"

    # -- dead letter queues ---------------------------------------------------------------------
    # DLQRecordsUnhandled: the oldest record still in a DLQ is older than this (a day of neglect).
    dlq_oldest_record_max_age_seconds: int = 86_400

    # -- the exporter ---------------------------------------------------------------------------
    # TreewatchDataStale: a collector's last success is older than this (default refresh is 15 s).
    data_stale_seconds: int = 300

    # -- SLO burn rates (Google SRE workbook, 30-day budget) ------------------------------------
    # Page when the 1h and 5m windows both burn the budget this many times faster than allowed.
    burn_rate_fast_1h: float = 14.4
    # Page when the 6h and 30m windows both burn this fast.
    burn_rate_fast_6h: float = 6.0
    # Ticket when the 1d and 2h windows both burn this fast.
    burn_rate_slow_1d: float = 3.0
    # Ticket when the 3d and 6h windows both burn this fast.
    burn_rate_slow_3d: float = 1.0

    # -- links ----------------------------------------------------------------------------------
    # Where the repository's files are browsable; runbook_url = this + "docs/runbooks.md#<anchor>".
    docs_base_url: str = "https://github.com/tree-stamping/treewatch/blob/main/"
    # Grafana's external URL; dashboard_url = this + "/d/<uid>".
    grafana_url: str = "http://localhost:3000"
    # Alertmanager's and Prometheus' external URLs are theirs to set (--web.external-url); not here.

    # -- Alertmanager ---------------------------------------------------------------------------
    # Slack channel that pages on-call (severity=critical).
    slack_oncall_channel: str = "#tree-stamping-oncall"
    # Slack channel for automated warnings (severity=warning).
    slack_alerts_channel: str = "#tree-stamping-alerts"
    # File holding the Slack webhook URL (a secret: mounted at deploy time, never in the repo).
    slack_api_url_file: str = "/etc/alertmanager/secrets/slack-api-url"
    # Template files, relative to alertmanager.yml (Alertmanager resolves them from its directory).
    alertmanager_templates: tuple[str, ...] = ("slack.tmpl",)
    # URL of the dead man's switch that expects the Watchdog heartbeat (e.g. a healthchecks.io
    # check); None sends the Watchdog nowhere, so a deployment without one logs no delivery errors.
    # Set it per deployment; a token it needs goes in heartbeat_credentials_file, never here.
    heartbeat_url: str | None = None
    # File with a bearer token for the heartbeat service; None when it needs none.
    heartbeat_credentials_file: str | None = None
    # How often the Watchdog heartbeat is re-sent; the heartbeat service alarms when it stops.
    heartbeat_repeat_interval: str = "1m"
    # Wait this long for more alerts of a new group before the first notification.
    group_wait: str = "30s"
    # Wait this long before notifying about alerts added to (or resolved in) a group.
    group_interval: str = "5m"
    # Re-send a still-firing critical alert this often (on-call must not lose it).
    critical_repeat_interval: str = "1h"
    # Re-send a still-firing warning this often.
    warning_repeat_interval: str = "4h"
    # Alertmanager resolves an alert its sender stopped updating after this long.
    resolve_timeout: str = "5m"

    # -- time scale (end-to-end tests and the demo only) ----------------------------------------
    # Every duration the generated files hold (each `for`, range window, evaluation and
    # Alertmanager interval, and the thresholds counted in seconds) is multiplied by this, so a
    # chain whose alerts wait 15 minutes in production runs in seconds. The rules' names,
    # expressions and routing stay the shipped ones; 1 (the default) changes nothing.
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.time_scale <= 1:
            raise ValueError(f"time_scale must be in (0, 1], got {self.time_scale}")

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
