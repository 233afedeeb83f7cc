"""A Prometheus configuration for one deployment: its exporter scraped under the job the rules select
(alerts.config.EXPORTER_JOB), the pipeline's services' own ``/metrics`` under theirs
(alerts.config.SERVICES_JOB), both with the environment and cluster labels every rule keeps
(alerts.environments), the generated rule file loaded and alerts sent to the deployment's
Alertmanager (``monitoring.alertmanager_url``). ``promtool check config`` accepts it as written."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from alerts.config import EXPORTER_JOB, SERVICES_JOB, MonitoringConfig
from alerts.environments import ScrapeTarget, scrape_job
from exporter.settings import ExporterSettings
from pipeline.config import Service

# The exporter refreshes every 15 s by default; scraping faster only reads the same snapshot again.
SCRAPE_INTERVAL = "15s"
SCRAPE_TIMEOUT = "10s"
# The rule groups set their own interval; this is Prometheus' default for any other.
EVALUATION_INTERVAL = "30s"
# Where Prometheus reads the exporter's basic auth password, when the exporter asks for one.
EXPORTER_PASSWORD_FILE = "/etc/prometheus/secrets/treewatch-exporter-password"

_WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def exporter_target(exporter: ExporterSettings) -> str:
    """host:port Prometheus scrapes, from the exporter's listen address: a wildcard address (every
    interface) is scraped on localhost, which only holds when both run on one host; anything else
    is the caller's to say (``treewatch generate --exporter-target``)."""
    host, port = exporter.listen_host_port
    if host in _WILDCARD_HOSTS:
        host = "localhost"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def exporter_scheme(exporter: ExporterSettings) -> str:
    return "https" if exporter.web.tls_cert_file else "http"


def _host_port(url: str) -> str:
    """host:port of a URL, its scheme's port when it names none."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"


def services_scrape_job(services: Sequence[Service], *, env: str, cluster: str, **settings: Any) -> dict[str, Any]:
    """The services' own /metrics (the guide's ``curl http://localhost:8053/metrics``), scraped on the
    host:port of each HTTP health URL, one target each with a ``service`` label the rules and panels keep
    (and its scheme, should it be https). Credentials in a health URL are not copied here."""
    static_configs = []
    # A store probed over TCP (Memgraph's Bolt port) has no /metrics to scrape.
    for service in (service for service in services if urlsplit(service.url).scheme in ("http", "https")):
        (entry,) = scrape_job(SERVICES_JOB, [ScrapeTarget(_host_port(service.url), env, cluster)])["static_configs"]
        entry["labels"]["service"] = service.name
        if urlsplit(service.url).scheme == "https":
            entry["labels"]["__scheme__"] = "https"
        static_configs.append(entry)
    return {"job_name": SERVICES_JOB, **settings, "static_configs": static_configs}


def alertmanager_endpoint(url: str) -> dict[str, Any]:
    """An ``alertmanagers`` entry for Alertmanager's external URL: scheme, host:port and path prefix."""
    parts = urlsplit(url)
    return {"scheme": parts.scheme, "path_prefix": parts.path or "/",
            "static_configs": [{"targets": [_host_port(url)]}]}


def prometheus_config(monitoring: MonitoringConfig, exporter: ExporterSettings, *, target: str, env: str,
                      cluster: str, rule_file: str, services: Sequence[Service] = ()) -> dict[str, Any]:
    """The configuration's content; ``rule_file`` is the rule file's path relative to it."""
    settings: dict[str, Any] = {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_TIMEOUT,
                                "scheme": exporter_scheme(exporter)}
    if exporter.web.basic_auth_users:
        settings["basic_auth"] = {"username": sorted(exporter.web.basic_auth_users)[0],
                                  "password_file": EXPORTER_PASSWORD_FILE}
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": EVALUATION_INTERVAL},
        "rule_files": [rule_file],
        "alerting": {"alertmanagers": [alertmanager_endpoint(monitoring.alertmanager_url)]},
        "scrape_configs": [
            scrape_job(EXPORTER_JOB, [ScrapeTarget(target, env, cluster)], **settings),
            *([services_scrape_job(services, env=env, cluster=cluster, scrape_interval=SCRAPE_INTERVAL,
                                   scrape_timeout=SCRAPE_TIMEOUT)] if services else []),
        ],
    }
