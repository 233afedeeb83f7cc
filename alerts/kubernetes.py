"""The objects kube-prometheus-stack users apply, from the same generated content as the plain files:
a PrometheusRule whose ``spec`` is the rule file promtool checks, a ServiceMonitor that scrapes the
exporter under the job, environment and cluster the rules select, and each dashboard as a ConfigMap
labelled for Grafana's dashboard sidecar.

The Prometheus Operator picks up PrometheusRules and ServiceMonitors whose labels match its
Prometheus' ruleSelector and serviceMonitorSelector: with kube-prometheus-stack that is usually
``release: <the Helm release>``, given with ``treewatch generate --kubernetes-label release=...``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from alerts.config import EXPORTER_JOB
from alerts.environments import CLUSTER_LABEL, ENV_LABEL
from alerts.prometheus_config import SCRAPE_INTERVAL, SCRAPE_TIMEOUT, exporter_scheme
from exporter.settings import ExporterSettings

MONITORING_API = "monitoring.coreos.com/v1"
# The label kube-prometheus-stack's Grafana sidecar looks for (grafana.sidecar.dashboards.label and
# labelValue, whose defaults are these).
GRAFANA_DASHBOARD_LABEL = "grafana_dashboard"
GRAFANA_DASHBOARD_LABEL_VALUE = "1"
# The exporter's Service, which the ServiceMonitor selects: these labels and a port of this name.
EXPORTER_SERVICE_LABELS = {"app.kubernetes.io/name": "treewatch-exporter"}
EXPORTER_PORT_NAME = "metrics"
# A Secret with the keys username and password, when the exporter asks for basic auth.
EXPORTER_BASIC_AUTH_SECRET = "treewatch-exporter-basic-auth"
COMMON_LABELS = {"app.kubernetes.io/part-of": "treewatch"}


def _metadata(name: str, namespace: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": {**COMMON_LABELS, **labels}}


def prometheus_rule(rules: Mapping[str, Any], namespace: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """``rules``: the rule file's content, which becomes the spec unchanged."""
    return {"apiVersion": MONITORING_API, "kind": "PrometheusRule",
            "metadata": _metadata("treewatch-rules", namespace, labels), "spec": dict(rules)}


def service_monitor(exporter: ExporterSettings, *, env: str, cluster: str, namespace: str,
                    labels: Mapping[str, str]) -> dict[str, Any]:
    endpoint: dict[str, Any] = {
        "port": EXPORTER_PORT_NAME, "path": "/metrics", "scheme": exporter_scheme(exporter),
        "interval": SCRAPE_INTERVAL, "scrapeTimeout": SCRAPE_TIMEOUT,
        # The operator names the job after the Service; the rules select the exporter's job, and keep
        # the environment and cluster every exporter's series carry (alerts/environments.py).
        "relabelings": [{"action": "replace", "targetLabel": label, "replacement": value}
                        for label, value in (("job", EXPORTER_JOB), (ENV_LABEL, env), (CLUSTER_LABEL, cluster))],
    }
    if exporter.web.basic_auth_users:
        endpoint["basicAuth"] = {key: {"name": EXPORTER_BASIC_AUTH_SECRET, "key": key}
                                 for key in ("username", "password")}
    return {"apiVersion": MONITORING_API, "kind": "ServiceMonitor",
            "metadata": _metadata("treewatch-exporter", namespace, labels),
            "spec": {"selector": {"matchLabels": dict(EXPORTER_SERVICE_LABELS)},
                     "namespaceSelector": {"matchNames": [namespace]}, "endpoints": [endpoint]}}


def dashboard_config_map(file_name: str, dashboard_json: str, namespace: str,
                         labels: Mapping[str, str]) -> dict[str, Any]:
    name = "treewatch-dashboard-" + file_name.removesuffix(".json")
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _metadata(name, namespace, {**labels, GRAFANA_DASHBOARD_LABEL: GRAFANA_DASHBOARD_LABEL_VALUE}),
            "data": {file_name: dashboard_json}}
