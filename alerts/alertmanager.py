"""Alertmanager's configuration and Slack template, built from MonitoringConfig.

critical pages #tree-stamping-oncall, warning goes to #tree-stamping-alerts, info goes nowhere,
Watchdog goes to a heartbeat webhook when ``heartbeat_url`` is set (and nowhere otherwise). The
Slack webhook URL is read from a file that deployment mounts (``slack_api_url_file``), so no secret
ever lives in the repository.

One Alertmanager may serve several environments (alerts/environments.py): alerts are grouped by
``env`` and ``cluster``, an inhibition mutes only alerts of its own environment and cluster, and an
environment whose policy does not page (``environments`` in the config) sends its critical alerts
to the warnings channel.
"""

from __future__ import annotations

from typing import Any

from alerts.config import MonitoringConfig
from alerts.environments import ENVIRONMENT_LABELS, non_paging_routes

ONCALL_RECEIVER = "slack-oncall"
ALERTS_RECEIVER = "slack-alerts"
HEARTBEAT_RECEIVER = "heartbeat"
NULL_RECEIVER = "null"

# Alerts of one name, environment and stage (or service) make one Slack message; partitions and
# topics of the same problem are listed in it rather than paging once each, and two environments'
# incidents never share a message.
GROUP_BY = ("alertname", *ENVIRONMENT_LABELS, "stage", "service")

# What a Kafka outage makes fire on its own: lag grows, throughput drops, the exporter's
# Kafka-backed collectors fail and the SLI's counters go stale. The per-exporter ones carry the
# exporter's instance; the per-stage ones are summed over an exporter job's replicas, which all
# watch the same cluster, so they carry only the job.
KAFKA_CONSEQUENCES_PER_EXPORTER = (
    "HighConsumerLag", "ConsumerLagTooOld", "ConsumerGroupStalled", "ConsumerGroupNoMembers",
    "KafkaConsumerGroupsPartiallyRead",
)
KAFKA_CONSEQUENCES_PER_STAGE = ("LowThroughput", "StageSLIMissing")
KAFKA_BACKED_COLLECTORS = "kafka_.*|pipeline|dlq"

SLACK_TEMPLATE = r"""
{{/* Title: status and count, severity, alert, and the environment, stage or service it is about. */}}
{{ define "treewatch.slack.title" -}}
[{{ .Status | toUpper }}{{ if eq .Status "firing" }}:{{ .Alerts.Firing | len }}{{ end }}]
{{- if .CommonLabels.severity }} {{ .CommonLabels.severity | toUpper }}{{ end }} {{ .CommonLabels.alertname }}
{{- if .CommonLabels.env }} · env {{ .CommonLabels.env }}{{ end }}
{{- if .CommonLabels.stage }} · stage {{ .CommonLabels.stage }}{{ end }}
{{- if .CommonLabels.service }} · service {{ .CommonLabels.service }}{{ end }}
{{- end }}

{{/* Text: one line per alert, its description carrying the value; resolved ones say so. */}}
{{ define "treewatch.slack.text" -}}
{{ range .Alerts.Firing -}}
• {{ if .Labels.severity }}*{{ .Labels.severity }}* {{ end }}{{ .Annotations.description }}
{{ end -}}
{{ range .Alerts.Resolved -}}
• resolved: {{ .Annotations.description }}
{{ end -}}
{{- end }}

{{ define "treewatch.slack.color" -}}
{{ if eq .Status "resolved" }}good
{{- else if eq .CommonLabels.severity "critical" }}danger
{{- else }}warning{{ end }}
{{- end }}

{{ define "treewatch.slack.runbook_url" }}{{ (index .Alerts 0).Annotations.runbook_url }}{{ end }}
{{ define "treewatch.slack.dashboard_url" }}{{ (index .Alerts 0).Annotations.dashboard_url }}{{ end }}
{{ define "treewatch.slack.query_url" }}{{ (index .Alerts 0).GeneratorURL }}{{ end }}

{{/* A new silence prefilled with the group's labels, so it covers exactly this message. */}}
{{ define "treewatch.slack.silence_url" -}}
{{ $matchers := "" -}}
{{ range .GroupLabels.SortedPairs -}}
{{ if $matchers }}{{ $matchers = printf "%s," $matchers }}{{ end -}}
{{ $matchers = printf "%s%s=%q" $matchers .Name .Value -}}
{{ end -}}
{{ .ExternalURL }}/#/silences/new?filter={{ printf "{%s}" $matchers | urlquery }}
{{- end }}
""".lstrip()


def _template(name: str) -> str:
    """A reference to one of SLACK_TEMPLATE's definitions."""
    return '{{ template "treewatch.slack.' + name + '" . }}'


def _slack(channel: str) -> dict[str, Any]:
    return {
        "channel": channel,
        "send_resolved": True,
        "title": _template("title"),
        "title_link": _template("dashboard_url"),
        "text": _template("text"),
        "color": _template("color"),
        "actions": [
            {"type": "button", "text": text, "url": _template(name)}
            for text, name in (("Runbook", "runbook_url"), ("Dashboard", "dashboard_url"),
                               ("Silence", "silence_url"), ("Query", "query_url"))
        ],
    }


def _heartbeat(url: str, config: MonitoringConfig) -> dict[str, Any]:
    webhook: dict[str, Any] = {"url": url, "send_resolved": False}
    if config.heartbeat_credentials_file is not None:
        webhook["http_config"] = {"authorization": {"credentials_file": config.heartbeat_credentials_file}}
    return webhook


def _same(*labels: str) -> list[str]:
    """An inhibition's ``equal``: ``labels`` and the environment and cluster, so an incident in one
    environment never mutes another's (alerts without env and cluster labels match as before)."""
    return [*ENVIRONMENT_LABELS, *labels]


def inhibit_rules() -> list[dict[str, Any]]:
    return [
        # A page already says it; the warning of the same alert and stage would only repeat it.
        {"source_matchers": ['severity="critical"'], "target_matchers": ['severity="warning"'],
         "equal": _same("alertname", "stage")},
        # HighErrorRate already paged for the stage's failures; the fast burn is the same incident.
        {"source_matchers": ['alertname="HighErrorRate"'], "target_matchers": ['alertname="StageErrorBudgetBurn"'],
         "equal": _same("stage")},
        # An unreachable cluster mutes only what it causes through the exporter that cannot reach it.
        {"source_matchers": ['alertname="KafkaUnavailable"'],
         "target_matchers": [f'alertname=~"{"|".join(KAFKA_CONSEQUENCES_PER_EXPORTER)}"'],
         "equal": _same("job", "instance")},
        {"source_matchers": ['alertname="KafkaUnavailable"'],
         "target_matchers": [f'alertname=~"{"|".join(KAFKA_CONSEQUENCES_PER_STAGE)}"'],
         "equal": _same("job")},
        {"source_matchers": ['alertname="KafkaUnavailable"'],
         "target_matchers": ['alertname=~"TreewatchCollectorFailing|TreewatchDataStale"',
                             f'collector=~"{KAFKA_BACKED_COLLECTORS}"'],
         "equal": _same("job", "instance")},
        # A stalled group also has lag; the stall is the cause to act on.
        {"source_matchers": ['alertname="ConsumerGroupStalled"'],
         "target_matchers": ['alertname=~"HighConsumerLag|ConsumerLagTooOld"'], "equal": _same("group", "topic")},
        {"source_matchers": ['alertname="DLQOverflow"'], "target_matchers": ['alertname="DLQNewRecords"'],
         "equal": _same("topic")},
        # The store's page says it is down, and that files are being lost meanwhile.
        {"source_matchers": ['alertname="IndexStoreDown"'], "target_matchers": ['alertname="StoreUnavailable"'],
         "equal": _same("job", "service")},
        {"source_matchers": ['alertname="TreewatchExporterDown"'],
         "target_matchers": ['alertname="StageSLIMissing"'], "equal": _same("job")},
        # TreewatchExporterMissing is absent(): it carries no env or cluster (no exporter of the job
        # reports anywhere), so it mutes the job's StageSLIMissing in every environment.
        {"source_matchers": ['alertname="TreewatchExporterMissing"'],
         "target_matchers": ['alertname="StageSLIMissing"'], "equal": ["job"]},
    ]


def alertmanager_config(config: MonitoringConfig) -> dict[str, Any]:
    heartbeat = config.heartbeat_url
    duration = config.duration
    receivers: list[dict[str, Any]] = [
        {"name": ONCALL_RECEIVER, "slack_configs": [_slack(config.slack_oncall_channel)]},
        {"name": ALERTS_RECEIVER, "slack_configs": [_slack(config.slack_alerts_channel)]},
    ]
    if heartbeat:
        receivers.append({"name": HEARTBEAT_RECEIVER, "webhook_configs": [_heartbeat(heartbeat, config)]})
    receivers.append({"name": NULL_RECEIVER})
    return {
        "global": {"resolve_timeout": duration(config.resolve_timeout),
                   "slack_api_url_file": config.slack_api_url_file},
        "templates": list(config.alertmanager_templates),
        "route": {
            # Unknown severities land in the alerts channel rather than nowhere.
            "receiver": ALERTS_RECEIVER,
            "group_by": list(GROUP_BY),
            "group_wait": duration(config.group_wait),
            "group_interval": duration(config.group_interval),
            "repeat_interval": duration(config.warning_repeat_interval),
            "routes": [
                {"matchers": ['alertname="Watchdog"'], "receiver": HEARTBEAT_RECEIVER if heartbeat else NULL_RECEIVER,
                 "group_wait": "0s", "group_interval": duration(config.heartbeat_repeat_interval),
                 "repeat_interval": duration(config.heartbeat_repeat_interval)},
                # Before the on-call route: an environment that does not page only warns.
                *non_paging_routes(config.environments, ALERTS_RECEIVER, duration(config.warning_repeat_interval)),
                {"matchers": ['severity="critical"'], "receiver": ONCALL_RECEIVER,
                 "repeat_interval": duration(config.critical_repeat_interval)},
                {"matchers": ['severity="warning"'], "receiver": ALERTS_RECEIVER},
                {"matchers": ['severity="info"'], "receiver": NULL_RECEIVER},
            ],
        },
        "inhibit_rules": inhibit_rules(),
        "receivers": receivers,
    }
