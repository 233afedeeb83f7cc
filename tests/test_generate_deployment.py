"""``treewatch generate``: a deployment's values from its configuration file's ``monitoring:`` section
into every generated file, checked by the real promtool and amtool; without a file, exactly the
committed generated files; the Kubernetes objects are the same content as the plain files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts import deployment, rule_tests
from alerts.config import CONFIG, GROUPS_DLQ_DASHBOARD_UID, SERVICES_JOB, runbook_anchor
from alerts.kubernetes import GRAFANA_DASHBOARD_LABEL
from alerts.rules import alerts
from dashboards import generate as dashboards_generate
from pipeline.config import load_config

ROOT = Path(__file__).resolve().parent.parent
PROMTOOL = "/usr/bin/promtool"
AMTOOL = "/usr/bin/amtool"

RUNBOOKS = "https://git.example.com/ops/treewatch/-/blob/v2/"
GRAFANA = "https://grafana.example.com"
DEPLOYMENT_CONFIG = f"""
env: prod
exporter:
  listen_address: 0.0.0.0:9900
monitoring:
  consumer_lag_records: 25000
  high_consumer_lag_for: 7m
  dlq_overflow_records_5m: 3
  consumer_lag_max_age_seconds: 1800
  data_stale_seconds: 120
  treewatch_data_stale_for: 90s
  kafka_brokers_down_for: 0s
  error_ratio: 0.2
  low_throughput_events_per_second: 5
  low_throughput_exempt_stages: [discover, stamp]
  slo_objective: 0.995
  burn_rate_fast_1h: 10
  slack_oncall_channel: "#prod-pages"
  slack_alerts_channel: "#prod-warnings"
  docs_base_url: {RUNBOOKS}
  grafana_url: {GRAFANA}/
  alertmanager_url: https://alertmanager.example.com:9443/am
  prometheus_url: https://prometheus.example.com
  extra_labels:
    team: search
  disabled_alerts: [TreeServiceDegraded]
"""


def _run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(arg) for arg in args], capture_output=True, text=True, timeout=300, cwd=cwd)


def _treewatch(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return _run(sys.executable, "-m", "treewatch", "generate", *args)


def _alerts(rules: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                found.setdefault(rule["alert"], []).append(rule)
    return found


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dashboard["panels"] if panel.get("type") != "row"]


def _threshold_values(panel: dict[str, Any]) -> set[float]:
    steps = panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
    return {step["value"] for step in steps if step.get("value") is not None}


def _panels_linking(dashboards: dict[str, dict[str, Any]], alert: str) -> list[dict[str, Any]]:
    anchor = f"#{runbook_anchor(alert)}"
    return [panel for dashboard in dashboards.values() for panel in _panels(dashboard)
            if any(link["url"].endswith(anchor) for link in panel.get("links", []))]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deployment's files, written by the command a user runs."""
    folder = tmp_path_factory.mktemp("deployment")
    config = folder / "treewatch.yaml"
    config.write_text(DEPLOYMENT_CONFIG)
    result = _treewatch("--config", config, "--out", folder / "out", "--cluster", "kafka-eu-1",
                        "--kubernetes-label", "release=kube-prometheus-stack")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "every changed alert has a generated promtool test"
    return folder / "out"


@pytest.fixture(scope="module")
def rules(generated: Path) -> dict[str, Any]:
    return yaml.safe_load((generated / deployment.RULES_PATH).read_text())


@pytest.fixture(scope="module")
def dashboards(generated: Path) -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in (generated / deployment.DASHBOARDS_DIR).glob("*.json")}


# -- without a configuration file: the committed files ----------------------------------------------

def test_without_a_file_it_writes_exactly_the_committed_files(tmp_path: Path) -> None:
    result = _treewatch("--out", tmp_path)
    assert result.returncode == 0, result.stderr
    committed = {**{path: tmp_path / deployment.ALERTS_DIR / path.name
                    for path in (ROOT / "alerts" / "generated").iterdir()},
                 **{path: tmp_path / deployment.DASHBOARDS_DIR / path.name
                    for path in (ROOT / "dashboards" / "generated").iterdir()}}
    assert len(committed) == 5
    for path, written in committed.items():
        assert written.read_bytes() == path.read_bytes(), f"{written} differs from {path}"


def test_make_generate_writes_through_the_same_code_path() -> None:
    recipe = re.search(r"^generate:\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), flags=re.MULTILINE)
    assert recipe and "-m treewatch generate\n" in recipe.group(1)
    assert "alerts.generate" not in recipe.group(1) and "dashboards.generate" not in recipe.group(1)
    for path, text in deployment.repository_files().items():
        assert path.read_text() == text, f"{path} is stale: run make generate"


def test_a_deployment_build_leaves_the_default_dashboards_alone(generated: Path) -> None:
    # The deployment's values are in force only while its dashboards are built.
    for name, text in dashboards_generate.rendered().items():
        assert (ROOT / "dashboards" / "generated" / name).read_text() == text


def test_a_configuration_file_needs_an_output_folder(tmp_path: Path) -> None:
    config = tmp_path / "treewatch.yaml"
    config.write_text(DEPLOYMENT_CONFIG)
    result = _treewatch("--config", config)
    assert result.returncode == 2 and "give --out DIR" in result.stderr


# -- the deployment's values, checked by the real tools --------------------------------------------

def test_the_rules_pass_promtool_check(generated: Path) -> None:
    result = _run(PROMTOOL, "check", "rules", generated / deployment.RULES_PATH)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_generated_promtool_tests_pass(generated: Path) -> None:
    tests = sorted((generated / deployment.TESTS_DIR).glob("*.yml"))
    assert (generated / deployment.TESTS_DIR / rule_tests.THRESHOLD_TESTS_FILE) in tests
    result = _run(PROMTOOL, "test", "rules", *tests, cwd=generated / deployment.TESTS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_generated_tests_check_the_configured_values(generated: Path, tmp_path: Path) -> None:
    """Run against the shipped rules, the deployment's threshold tests fail where its values differ."""
    shutil.copytree(generated, tmp_path / "out")
    shutil.copy(ROOT / "alerts" / "generated" / "treewatch-rules.yml", tmp_path / "out" / deployment.RULES_PATH)
    tests = tmp_path / "out" / deployment.TESTS_DIR
    result = _run(PROMTOOL, "test", "rules", tests / rule_tests.THRESHOLD_TESTS_FILE, cwd=tests)
    assert result.returncode == 1
    failed = set(re.findall(r'alertname="(\w+)"', result.stdout + result.stderr))
    assert {"HighConsumerLag", "TreewatchDataStale", "KafkaBrokersDown"} <= failed


def test_every_alert_but_the_watchdog_gets_threshold_tests(tmp_path: Path) -> None:
    config = tmp_path / "treewatch.yaml"
    config.write_text(DEPLOYMENT_CONFIG)
    monitoring = load_config(config, environ={}).monitoring
    assert rule_tests.untested_alerts(monitoring) == []
    generated_for = {test["name"].split()[0] for test in rule_tests.threshold_tests(monitoring)}
    assert generated_for == set(rule_tests.THRESHOLD_CASES) - {"TreeServiceDegraded"}  # disabled
    shipped = {test["name"].split()[0] for test in rule_tests.threshold_tests(CONFIG)}
    assert shipped == {rule.name for rule in alerts(CONFIG)} - {"Watchdog"}


def test_the_alertmanager_config_passes_amtool_and_routes_to_the_channels(generated: Path) -> None:
    path = generated / deployment.ALERTS_DIR / "alertmanager.yml"
    result = _run(AMTOOL, "check-config", path)
    assert result.returncode == 0, result.stdout + result.stderr
    channels = {receiver["name"]: receiver["slack_configs"][0]["channel"]
                for receiver in yaml.safe_load(path.read_text())["receivers"] if "slack_configs" in receiver}
    assert set(channels.values()) == {"#prod-pages", "#prod-warnings"}
    for severity, channel in (("critical", "#prod-pages"), ("warning", "#prod-warnings")):
        routed = _run(AMTOOL, "config", "routes", "test", "--config.file", path, "alertname=HighConsumerLag",
                      f"severity={severity}", "team=search")
        assert routed.returncode == 0, routed.stderr
        assert channels[routed.stdout.strip()] == channel


def test_the_prometheus_config_passes_promtool_and_wires_exporter_rules_and_alertmanager(generated: Path) -> None:
    path = generated / deployment.PROMETHEUS_FILE
    result = _run(PROMTOOL, "check", "config", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout
    config = yaml.safe_load(path.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"treewatch", SERVICES_JOB}
    job = jobs["treewatch"]
    assert CONFIG.exporter_selector == 'job="treewatch"'
    assert job["static_configs"] == [{"targets": ["localhost:9900"],
                                      "labels": {"env": "prod", "cluster": "kafka-eu-1"}}]
    # The services' own /metrics (the guide's issue 4), on each HTTP health URL's host:port, with the
    # service's name; the store probed over TCP has none to scrape.
    services = {entry["labels"]["service"]: entry for entry in jobs[SERVICES_JOB]["static_configs"]}
    assert CONFIG.services_selector == f'job="{SERVICES_JOB}"'
    assert services["intelligence"] == {"targets": ["localhost:8053"], "labels": {
        "env": "prod", "cluster": "kafka-eu-1", "service": "intelligence"}}
    assert services["metadata-stamping"]["targets"] == ["localhost:8057"]
    assert "memgraph" not in services
    assert config["alerting"]["alertmanagers"] == [
        {"scheme": "https", "path_prefix": "/am", "static_configs": [{"targets": ["alertmanager.example.com:9443"]}]}]


def test_the_readme_runs_prometheus_and_alertmanager_with_the_external_urls(generated: Path) -> None:
    readme = (generated / deployment.README_FILE).read_text()
    assert "prometheus --config.file=prometheus/prometheus.yml --web.external-url=https://prometheus.example.com\n" \
        in readme
    assert "--web.external-url=https://alertmanager.example.com:9443/am\n" in readme


def test_the_exporter_target_can_be_given(tmp_path: Path) -> None:
    result = _treewatch("--out", tmp_path, "--exporter-target", "treewatch-exporter.monitoring.svc:9847")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((tmp_path / deployment.PROMETHEUS_FILE).read_text())
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["treewatch-exporter.monitoring.svc:9847"]


def test_a_threshold_changes_the_rule_the_dashboard_line_and_the_runbook_text_together(
        rules: dict[str, Any], dashboards: dict[str, dict[str, Any]]) -> None:
    (lag,) = _alerts(rules)["HighConsumerLag"]
    assert lag["expr"].endswith("> 25000") and lag["for"] == "7m"
    assert "(threshold 25000)" in lag["annotations"]["description"]
    panels = _panels_linking(dashboards, "HighConsumerLag")
    lag_lines = [panel for panel in panels if 25000 in _threshold_values(panel)]
    assert len(lag_lines) >= 2 and not any(10_000 in _threshold_values(panel) for panel in panels)
    assert {panel["title"] for panel in lag_lines} >= {"Consumer lag, worst partition per group"}

    (stale,) = _alerts(rules)["TreewatchDataStale"]
    assert "> 120" in stale["expr"] and stale["for"] == "90s"
    assert "(threshold 120s)" in stale["annotations"]["description"]
    assert any(120 in _threshold_values(panel) for panel in _panels_linking(dashboards, "TreewatchDataStale"))

    (errors,) = _alerts(rules)["HighErrorRate"]
    assert "> 0.2 " in errors["expr"] and "(target: <20%)" in errors["annotations"]["description"]
    ratio_panels = [panel for panel in _panels_linking(dashboards, "HighErrorRate")
                    if panel["title"].startswith("Error ratio")]
    assert ratio_panels
    for panel in ratio_panels:
        assert _threshold_values(panel) == {0.005, 0.2}  # the SLO's 99.5 % and HighErrorRate's 20 %
        assert "(20%)" in panel["description"]


def test_links_channels_labels_and_disabled_alerts_reach_the_files(
        rules: dict[str, Any], dashboards: dict[str, dict[str, Any]]) -> None:
    alerts = _alerts(rules)
    assert "TreeServiceDegraded" not in alerts and "TreeServiceDown" in alerts
    for name, named in alerts.items():
        for rule in named:
            assert rule["labels"]["team"] == "search", name
            assert rule["annotations"]["runbook_url"] == f"{RUNBOOKS}docs/runbooks.md#{runbook_anchor(name)}"
            assert rule["annotations"]["dashboard_url"].startswith(f"{GRAFANA}/d/")
    assert alerts["HighConsumerLag"][0]["annotations"]["dashboard_url"] == f"{GRAFANA}/d/{GROUPS_DLQ_DASHBOARD_UID}"
    links = [link["url"] for dashboard in dashboards.values() for panel in _panels(dashboard)
             for link in panel.get("links", [])]
    assert links and all(link.startswith(f"{RUNBOOKS}docs/runbooks.md#") for link in links)
    (kept_burn, ) = [rule for rule in alerts["StageErrorBudgetBurn"] if rule["labels"]["burn"] == "fast"]
    assert "> 0.05 " in kept_burn["expr"]  # 10 x the 0.5 % budget of a 99.5 % objective


# -- bad values ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("monitoring", "expected"), [
    ("disabled_alerts: [HighConsumerLagg]",
     "monitoring.disabled_alerts: no alert named 'HighConsumerLagg' (known: ConsumerGroupNoMembers, "),
    ("high_consumer_lag_for: 5 minutes",
     "monitoring.high_consumer_lag_for: expected a Prometheus duration (30s, 5m, 1h30m)"),
    ("extra_labels: {severity: low}", "monitoring.extra_labels: severity is the rules' own label"),
    ("extra_labels: {team-name: x}", "monitoring.extra_labels: expected a label name"),
    ("slo_objective: 1", "monitoring.slo_objective: expected less than 1, got integer 1"),
    ("grafana_url: grafana.example.com", "monitoring.grafana_url: expected an http:// or https:// URL"),
])
def test_a_bad_value_names_the_file_and_field_and_writes_nothing(tmp_path: Path, monitoring: str,
                                                                 expected: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(f"monitoring:\n  {monitoring}\n")
    result = _treewatch("--config", config, "--out", tmp_path / "out")
    assert result.returncode == 2
    assert f"{config}: {expected}" in result.stderr
    assert not (tmp_path / "out").exists()


# -- Kubernetes ------------------------------------------------------------------------------------

DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# kubectl apply (client side) keeps the whole object in an annotation, which Kubernetes caps at 256 KiB.
MAX_APPLIED_BYTES = 262_144


@pytest.fixture(scope="module")
def manifests(generated: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted((generated / deployment.KUBERNETES_DIR).glob("*.yaml")):
        (manifest,) = list(yaml.safe_load_all(path.read_text()))
        found[path.name] = manifest
    return found


def test_every_manifest_is_a_kubernetes_object(manifests: dict[str, dict[str, Any]], generated: Path) -> None:
    kinds = sorted(manifest["kind"] for manifest in manifests.values())
    assert kinds == ["ConfigMap", "ConfigMap", "PrometheusRule", "ServiceMonitor"]
    for name, manifest in manifests.items():
        content = "data" if manifest["kind"] == "ConfigMap" else "spec"
        assert set(manifest) == {"apiVersion", "kind", "metadata", content}
        expected_api = "v1" if manifest["kind"] == "ConfigMap" else "monitoring.coreos.com/v1"
        assert manifest["apiVersion"] == expected_api, name
        metadata = manifest["metadata"]
        assert DNS_1123_SUBDOMAIN.fullmatch(metadata["name"]) and len(metadata["name"]) <= 253, name
        assert metadata["namespace"] == "monitoring"
        assert metadata["labels"]["release"] == "kube-prometheus-stack"
        assert all(LABEL_VALUE.fullmatch(value) and len(value) <= 63 for value in metadata["labels"].values()), name
        assert len((generated / deployment.KUBERNETES_DIR / name).read_bytes()) < MAX_APPLIED_BYTES, name


def test_the_prometheus_rule_spec_is_the_rule_file_promtool_checks(
        manifests: dict[str, dict[str, Any]], rules: dict[str, Any]) -> None:
    (rule,) = [manifest for manifest in manifests.values() if manifest["kind"] == "PrometheusRule"]
    assert rule["spec"] == rules
    assert all(set(group) <= {"name", "interval", "rules"} for group in rule["spec"]["groups"])


def test_the_service_monitor_scrapes_the_exporter_as_the_scrape_config_does(
        manifests: dict[str, dict[str, Any]], generated: Path) -> None:
    (monitor,) = [manifest for manifest in manifests.values() if manifest["kind"] == "ServiceMonitor"]
    spec = monitor["spec"]
    assert spec["selector"]["matchLabels"] and spec["namespaceSelector"] == {"matchNames": ["monitoring"]}
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics" and endpoint["scheme"] == "http"
    relabelled = {step["targetLabel"]: step["replacement"] for step in endpoint["relabelings"]}
    scrape = yaml.safe_load((generated / deployment.PROMETHEUS_FILE).read_text())["scrape_configs"][0]
    assert relabelled == {"job": scrape["job_name"], **scrape["static_configs"][0]["labels"]}
    assert endpoint["interval"] == scrape["scrape_interval"]


def test_the_dashboards_are_config_maps_for_the_grafana_sidecar(
        manifests: dict[str, dict[str, Any]], generated: Path) -> None:
    maps = [manifest for manifest in manifests.values() if manifest["kind"] == "ConfigMap"]
    dashboards = {path.name: path.read_text() for path in (generated / deployment.DASHBOARDS_DIR).glob("*.json")}
    assert {name for config_map in maps for name in config_map["data"]} == set(dashboards)
    for config_map in maps:
        assert config_map["metadata"]["labels"][GRAFANA_DASHBOARD_LABEL] == "1"
        for name, text in config_map["data"].items():
            assert text == dashboards[name]
