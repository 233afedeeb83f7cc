"""Everything one deployment needs, from its configuration file (``treewatch generate``): the rule
file, Alertmanager's configuration and template, the dashboards, a Prometheus configuration for the
exporter, promtool tests of the rules as configured, and the Kubernetes objects.

Every file comes from the ``monitoring:`` section (alerts.config.MonitoringConfig) through the same
builders as the repository's generated files, so without a configuration file the rules,
Alertmanager files and dashboards are exactly the committed ones (``make generate`` writes them
through here, ``make check-generated`` compares).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alerts import generate as alerts_generate
from alerts import kubernetes, rule_tests
from alerts.prometheus_config import exporter_target, prometheus_config
from dashboards import generate as dashboards_generate
from pipeline.config import Config

REPOSITORY = Path(__file__).resolve().parent.parent

# Where each kind of file goes under the output folder; the rule file is referenced relatively from
# the Prometheus configuration and the tests, so the folder can be moved as a whole.
ALERTS_DIR = "alerts"
DASHBOARDS_DIR = "dashboards"
PROMETHEUS_FILE = "prometheus/prometheus.yml"
TESTS_DIR = "tests"
KUBERNETES_DIR = "kubernetes"
RULES_PATH = f"{ALERTS_DIR}/{alerts_generate.RULES_FILE}"
README_FILE = "README.md"


@dataclass(frozen=True)
class Deployment:
    config: Config
    # The configuration file it came from, named in every file's header; None: the defaults.
    origin: str | None = None
    # host:port Prometheus scrapes the exporter at; None: from the exporter's listen address.
    exporter_target: str | None = None
    # The Kafka cluster label of the exporter's series; None: the environment's name.
    cluster: str | None = None
    namespace: str = "monitoring"
    # Labels of every Kubernetes object (e.g. release: kube-prometheus-stack, for its selectors).
    kubernetes_labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def cluster_label(self) -> str:
        return self.cluster or self.config.env


def _yaml(data: Any, header: str | None = None) -> str:
    text = yaml.safe_dump(data, sort_keys=False, width=1_000, allow_unicode=True)
    return f"# {header}\n{text}" if header else text


def repository_files() -> dict[Path, str]:
    """The repository's generated rules, Alertmanager files and dashboards (the defaults), by path."""
    alerts_dir = alerts_generate.GENERATED
    dashboards_dir = dashboards_generate.GENERATED_DIR
    files = {alerts_dir / name: text for name, text in alerts_generate.render(alerts_generate.CONFIG).items()}
    files.update({dashboards_dir / name: text for name, text in dashboards_generate.rendered().items()})
    return files


def deployment_files(deployment: Deployment) -> dict[str, str]:
    """Path relative to the output folder -> content, for every file of the deployment."""
    config = deployment.config
    monitoring = config.monitoring
    notice = alerts_generate.notice(monitoring, deployment.origin)
    rules = alerts_generate.rule_file(monitoring)
    dashboards = dashboards_generate.rendered(monitoring)
    files = {f"{ALERTS_DIR}/{name}": text
             for name, text in alerts_generate.render(monitoring, deployment.origin).items()}
    files.update({f"{DASHBOARDS_DIR}/{name}": text for name, text in dashboards.items()})
    target = deployment.exporter_target or exporter_target(config.exporter)
    files[PROMETHEUS_FILE] = _yaml(prometheus_config(
        monitoring, config.exporter, target=target, env=config.env, cluster=deployment.cluster_label,
        rule_file=_relative(RULES_PATH, PROMETHEUS_FILE), services=config.services), notice)
    for name, content in rule_tests.test_files(monitoring, _relative(RULES_PATH, f"{TESTS_DIR}/x")).items():
        files[f"{TESTS_DIR}/{name}"] = _yaml(content, notice)
    namespace, labels = deployment.namespace, deployment.kubernetes_labels
    manifests = {
        "prometheusrule.yaml": kubernetes.prometheus_rule(rules, namespace, labels),
        "servicemonitor.yaml": kubernetes.service_monitor(config.exporter, env=config.env,
                                                          cluster=deployment.cluster_label, namespace=namespace,
                                                          labels=labels),
        **{f"dashboard-{name.removesuffix('.json')}.yaml": kubernetes.dashboard_config_map(name, text, namespace,
                                                                                           labels)
           for name, text in dashboards.items()},
    }
    files.update({f"{KUBERNETES_DIR}/{name}": _yaml(manifest, notice) for name, manifest in manifests.items()})
    files[README_FILE] = _readme(deployment, notice)
    return files


def _readme(deployment: Deployment, notice: str) -> str:
    """How to run and check what was written: the external URLs are flags of Prometheus and
    Alertmanager, not part of their configuration files."""
    monitoring = deployment.config.monitoring
    return f"""<!-- {notice} -->
# treewatch for this deployment

```bash
prometheus --config.file={PROMETHEUS_FILE} --web.external-url={monitoring.prometheus_url}
alertmanager --config.file={ALERTS_DIR}/{alerts_generate.ALERTMANAGER_FILE} \\
  --web.external-url={monitoring.alertmanager_url}
promtool check config {PROMETHEUS_FILE}
(cd {TESTS_DIR} && promtool test rules *.yml)
amtool check-config {ALERTS_DIR}/{alerts_generate.ALERTMANAGER_FILE}
kubectl apply -f {KUBERNETES_DIR}/   # kube-prometheus-stack: PrometheusRule, ServiceMonitor, dashboards
```

Grafana: import the dashboards in {DASHBOARDS_DIR}/ (or let its sidecar load the ConfigMaps); it is
expected at {monitoring.grafana_url}. Alertmanager reads the Slack webhook URL from
{monitoring.slack_api_url_file}. See docs/deployment.md in treewatch.
"""


def _relative(path: str, from_file: str) -> str:
    """``path`` (relative to the output folder) as seen from the folder of ``from_file``."""
    depth = from_file.count("/")
    return "../" * depth + path


def write(files: Mapping[Path, str] | Mapping[str, str], root: Path) -> list[Path]:
    """Write ``files`` (paths relative to ``root``, or absolute) and return their paths."""
    written = []
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written

