"""The generated Grafana dashboards: their structure, the metrics they name, and every query run
against a real Prometheus (Debian's 2.42) holding two hours of the exporter's metric families.

The data is built deterministically from exporter.metrics: every family with every label
combination the default pipeline has (three stages, their groups and topics, four services,
every collector), counters increasing, gauges varying, and a few incidents on purpose (a service
whose probe fails, a stalled partition, an empty group, alerts firing) so the panels that show
problems have something to show. promtool turns it into TSDB blocks, then backfills the generated
recording rules over it (``promtool tsdb create-blocks-from rules``), and one Prometheus serves the
whole module: panels that query a recording rule see what the alert sees.
"""

from __future__ import annotations

import ast
import json
import math
import re
import shutil
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from alerts import generate as alerts_generate
from alerts.config import CONFIG, SERVICES_JOB, runbook_anchor
from alerts.promql import metric_names
from alerts.rules import recordings
from dashboards import common, generate
from devkafka import free_port
from exporter import metrics
from exporter.metrics import Kind, MetricDef, Part
from pipeline.config import parse_config

REPO = Path(__file__).resolve().parents[1]
PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"

DASHBOARDS: dict[str, dict] = {name: json.loads(text) for name, text in generate.rendered().items()}
EXPECTED = {
    "tree-stamping-overview.json": ("tree-stamping-overview", "Tree Stamping: Overview"),
    "tree-stamping-groups-dlq.json": ("tree-stamping-groups-dlq", "Tree Stamping: Consumer groups and DLQ"),
}

# What Grafana puts in place of its own variables, for a 3h dashboard scraped every 15 s.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h",
            "datasource": common.DATASOURCE_UID}


# -- reading the dashboards -----------------------------------------------------------------------

def all_panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def data_panels(dashboard: dict) -> list[dict]:
    return [panel for panel in all_panels(dashboard) if panel["type"] != "row"]


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    ref_id: str
    expr: str

    @property
    def id(self) -> str:
        return f"{self.dashboard.removesuffix('.json')}:{self.panel}:{self.ref_id}"


QUERIES = [Query(name, panel["title"], target["refId"], target["expr"])
           for name, dashboard in DASHBOARDS.items() for panel in data_panels(dashboard)
           for target in panel["targets"]]

VARIABLE_REFERENCE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def referenced_variables(text: str) -> set[str]:
    return {braced or plain for braced, plain in VARIABLE_REFERENCE.findall(text)}


def query_variables(dashboard: dict) -> list[dict]:
    return [variable for variable in dashboard["templating"]["list"] if variable["type"] == "query"]


# Every variable as a dashboard opens: Grafana's own at BUILTINS, the query variables on "All".
OPENING_VALUES = {**BUILTINS, **{variable["name"]: common.ALL_VALUE for dashboard in DASHBOARDS.values()
                                 for variable in query_variables(dashboard)}}


def metrics_read(expr: str) -> set[str]:
    """The metrics a dashboard query reads: its PromQL once Grafana's variables are substituted
    (``[$__rate_interval]`` is no PromQL duration)."""
    return metric_names(substitute(expr, OPENING_VALUES))


LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$", re.DOTALL)

RECORDING_RULES = {rule.record for rule in recordings(CONFIG)}
# Prometheus' own series of its alerting rules' state, which the firing-alerts panel reads.
PROMETHEUS_ALERTS = "ALERTS"


# -- structure --------------------------------------------------------------------------------------

def _imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_grafanalib_is_used_only_through_common_and_its_public_modules():
    """Swapping or upgrading grafanalib touches one file, and no private module can change under it."""
    importers = {}
    for path in sorted((REPO / "dashboards").glob("*.py")):
        grafanalib = {module for module in _imported_modules(path) if module.split(".")[0] == "grafanalib"}
        if grafanalib:
            importers[path.name] = grafanalib
    assert set(importers) == {"common.py"}, importers
    assert not any(part.startswith("_") for module in importers["common.py"] for part in module.split("."))


def test_generated_files_are_committed_and_up_to_date():
    for name, text in generate.rendered().items():
        path = generate.GENERATED_DIR / name
        assert path.exists(), f"{path} is missing: run `make generate`"
        assert path.read_text(encoding="utf-8") == text, f"{path} is out of date: run `make generate`"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_identity_and_links(name):
    dashboard = DASHBOARDS[name]
    assert (dashboard["uid"], dashboard["title"]) == EXPECTED[name]
    assert "do not edit" in dashboard["description"]
    other = {uid for uid, _ in EXPECTED.values()} - {dashboard["uid"]}
    urls = {link["url"] for link in dashboard["links"]}
    assert {f"/d/{uid}" for uid in other} <= urls, "each dashboard links to the other"
    assert CONFIG.runbook_base_url in urls


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panel_ids_are_unique(name):
    ids = [panel["id"] for panel in all_panels(DASHBOARDS[name])]
    assert all(isinstance(panel_id, int) for panel_id in ids)
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels_do_not_overlap_on_the_grid(name):
    boxes = [(panel["title"], panel["gridPos"]) for panel in all_panels(DASHBOARDS[name])]
    for title, pos in boxes:
        assert pos["x"] >= 0 and pos["y"] >= 0 and pos["w"] > 0 and pos["h"] > 0, title
        assert pos["x"] + pos["w"] <= common.GRID_WIDTH, f"{title} sticks out of the grid"
    for index, (title, a) in enumerate(boxes):
        for other, b in boxes[index + 1:]:
            apart = (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
                     or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"])
            assert apart, f"{title!r} overlaps {other!r}"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_has_datasource_unit_description_and_queries(name):
    for panel in data_panels(DASHBOARDS[name]):
        title = panel["title"]
        assert panel["datasource"] == common.DATASOURCE, title
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{title} has no unit"
        assert panel["description"] and len(panel["description"]) > 20, f"{title} has no description"
        assert panel["targets"], f"{title} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == common.DATASOURCE, title
            assert target["expr"].strip(), title


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_datasource_is_a_variable_referenced_by_uid(name):
    variables = {variable["name"]: variable for variable in DASHBOARDS[name]["templating"]["list"]}
    datasource = variables["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    assert datasource["current"]["value"] == common.DATASOURCE_UID
    assert common.DATASOURCE == {"type": "prometheus", "uid": "${datasource}"}
    for variable in query_variables(DASHBOARDS[name]):
        assert variable["datasource"] == common.DATASOURCE, variable["name"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_variable_reference_resolves(name):
    dashboard = DASHBOARDS[name]
    defined = {variable["name"] for variable in dashboard["templating"]["list"]} | set(BUILTINS)
    texts = [json.dumps(panel) for panel in all_panels(dashboard)]
    texts += [variable["query"] for variable in query_variables(dashboard)]
    used = set().union(*(referenced_variables(text) for text in texts))
    assert used - defined == set(), "undefined variables"
    # A chained variable may only use the ones defined before it (Grafana resolves them in order).
    seen = {"datasource"}
    for variable in query_variables(dashboard):
        assert referenced_variables(variable["query"]) <= seen, variable["name"]
        seen.add(variable["name"])


def test_rates_use_rate_interval():
    for query in QUERIES:
        for function, window in re.findall(r"\b(rate|irate|deriv)\((?:[^()\[]|\([^()]*\))*\[([^\]]+)\]",
                                           query.expr):
            assert window == "$__rate_interval", f"{query.id}: {function}() over {window}"


def test_every_metric_is_one_the_exporter_defines():
    exprs = [(query.id, query.expr) for query in QUERIES]
    for name, dashboard in DASHBOARDS.items():
        for variable in query_variables(dashboard):
            match = LABEL_VALUES.match(variable["query"])
            assert match, f"{name} ${variable['name']}: not a label_values() query"
            exprs.append((f"{name} ${variable['name']}", match["selector"]))
    known = metrics.names() | metrics.service_metric_names() | RECORDING_RULES | {PROMETHEUS_ALERTS}
    for where, expr in exprs:
        names = metrics_read(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        unknown = names - known
        assert not unknown, (f"{where}: neither in exporter/metrics.py (treewatch's or the services' own) nor a "
                             f"recording rule: {unknown}")


def _threshold_steps(panel: dict) -> Iterator[dict]:
    """The panel's threshold steps, its own and those of its per-series overrides."""
    yield from panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    for override in panel["fieldConfig"].get("overrides", []):
        for prop in override["properties"]:
            if prop["id"] == "thresholds":
                yield from prop["value"]["steps"]


def test_thresholds_come_from_the_monitoring_config():
    steps = [step["value"] for dashboard in DASHBOARDS.values() for panel in data_panels(dashboard)
             for step in _threshold_steps(panel)]
    for field in ("consumer_lag_records", "dlq_overflow_records_5m", "low_throughput_events_per_second",
                  "error_ratio", "consumer_lag_max_age_seconds", "consumer_stalled_seconds",
                  "dlq_oldest_record_max_age_seconds", "data_stale_seconds"):
        assert getattr(CONFIG, field) in steps, f"no panel draws CONFIG.{field}"
    assert round(1 - CONFIG.slo_objective, 12) in steps


def test_panels_link_to_runbook_sections():
    links = [link["url"] for dashboard in DASHBOARDS.values() for panel in data_panels(dashboard)
             for link in panel["links"]]
    assert links
    for url in links:
        assert url.startswith(CONFIG.runbook_base_url + "#"), url


def test_low_throughput_line_is_drawn_only_for_the_stages_it_applies_to():
    overview = DASHBOARDS["tree-stamping-overview.json"]
    (panel,) = [panel for panel in data_panels(overview) if panel["title"] == "Processed per stage"]
    assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "off"
    (override,) = panel["fieldConfig"]["overrides"]
    pattern = re.compile(override["matcher"]["options"])
    assert {stage.name for stage in PIPELINE.stages if not pattern.search(stage.name)} == set(
        CONFIG.low_throughput_exempt_stages)
    assert pattern.search("a-stage-added-in-the-configuration")


def _queries_reading(metric: str) -> list[Query]:
    return [query for query in QUERIES if metric in metrics_read(query.expr)]


def test_dlq_retained_and_partial_group_reads_are_shown():
    (retained,) = _queries_reading("tree_dlq_retained_records_by_error_type")
    assert (retained.dashboard, retained.panel) == ("tree-stamping-groups-dlq.json", "DLQ retained by error type")
    assert 'stage=~"$stage"' in retained.expr
    (partial,) = _queries_reading("kafka_consumer_group_read_errors")
    assert (partial.dashboard, partial.panel) == ("tree-stamping-overview.json", "Partial consumer-group reads")
    panels = {panel["title"]: panel for dashboard in DASHBOARDS.values() for panel in data_panels(dashboard)}
    links = {panel: {link["url"] for link in panels[panel]["links"]} for panel in (retained.panel, partial.panel)}
    assert links[retained.panel] & {CONFIG.runbook_url("DLQRecordsUnhandled"), CONFIG.runbook_url("DLQOverflow")}
    assert CONFIG.runbook_url("KafkaConsumerGroupsPartiallyRead") in links[partial.panel]


def test_panels_of_new_dead_letters_say_what_the_counter_counts():
    """tree_dlq_records_total counts only what was written since the exporter first saw the queue;
    a panel that rates it must not pass for the queue's content."""
    counted = _queries_reading("tree_dlq_records_total")
    assert counted
    panels = {panel["title"]: panel for dashboard in DASHBOARDS.values() for panel in data_panels(dashboard)}
    for query in counted:
        assert "since the exporter first saw the queue" in panels[query.panel]["description"], query.id


def test_runbook_links_point_at_existing_sections():
    runbook = (REPO / "docs" / "runbooks.md").read_text(encoding="utf-8")
    anchors = {runbook_anchor(line.lstrip("#")) for line in runbook.splitlines() if line.startswith("#")}
    for dashboard in DASHBOARDS.values():
        for panel in data_panels(dashboard):
            for link in panel["links"]:
                anchor = link["url"].partition("#")[2]
                assert anchor in anchors, f"{panel['title']}: docs/runbooks.md has no section #{anchor}"


def test_grafana_provisioning_matches_the_dashboards():
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (datasource,) = datasources["datasources"]
    assert (datasource["uid"], datasource["type"], datasource["url"]) == (
        common.DATASOURCE_UID, "prometheus", "http://prometheus:9090")
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "treewatch.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")


# -- a real Prometheus -----------------------------------------------------------------------------

PIPELINE = parse_config({}, "<defaults>", environ={})
PARTITIONS = ("0", "1", "2")
ERROR_TYPES = ("FILE_NOT_FOUND", "INTELLIGENCE_SERVICE_ERROR", "ENCODING_ERROR", "unparseable")
STEP_SECONDS = 15
HISTORY_SECONDS = 2 * 3600
# env and cluster: the target labels a scrape configuration of several environments adds
# (alerts/environments.py), so $env and $cluster have values and every query is filtered by them.
SCRAPE_LABELS = {"job": "treewatch", "instance": "treewatch:9847", "env": "prod", "cluster": "kafka-prod"}

# The incidents the data holds: one service's probe fails, one is degraded, one group is empty and
# has a stalled partition, the exporter read the consumer groups only partly for a while, and the
# DLQs were purged once (delete_records) halfway.
FAILING_SERVICE, DEGRADED_SERVICE = "bridge", "metadata-stamping"
EMPTY_GROUP = PIPELINE.stage("index").group
STALLED = (EMPTY_GROUP, PIPELINE.stage("index").request_topic, "0")
PARTIAL_GROUP_READS = range(3000, 3900)  # seconds into the data
DLQ_PURGED_AT = HISTORY_SECONDS // 2

LabelSet = dict[str, str]

FIRING_ALERTS: list[LabelSet] = [
    {"alertname": "Watchdog", "alertstate": "firing", "severity": "info"},
    {"alertname": "TreeServiceDown", "alertstate": "firing", "severity": "critical", "service": FAILING_SERVICE},
    {"alertname": "ConsumerGroupStalled", "alertstate": "firing", "severity": "critical", "group": STALLED[0],
     "topic": STALLED[1], "stage": "index"},
]


def _label_sets() -> dict[tuple[str, ...], list[LabelSet]]:
    stages = PIPELINE.stages
    topics = [topic for stage in stages for topic in stage.topics.values()]
    services = [service.name for service in PIPELINE.services]
    return {
        ("group", "topic", "partition"): [{"group": s.group, "topic": s.request_topic, "partition": p}
                                          for s in stages for p in PARTITIONS],
        ("group", "topic"): [{"group": s.group, "topic": s.request_topic} for s in stages],
        ("group", "state"): [{"group": s.group, "state": state} for s in stages
                             for state in metrics.GROUP_STATES],
        ("group",): [{"group": s.group} for s in stages],
        ("topic", "partition"): [{"topic": topic, "partition": p} for topic in topics for p in PARTITIONS],
        ("topic",): [{"topic": topic} for topic in topics],
        (): [{}],
        ("stage", "status"): [{"stage": s.name, "status": status} for s in stages
                              for status in metrics.PROCESSED_STATUSES],
        ("stage",): [{"stage": s.name} for s in stages],
        ("stage", "topic"): [{"stage": s.name, "topic": s.dlq_topic} for s in stages],
        ("stage", "group", "request_topic", "dlq_topic"): [
            {"stage": s.name, "group": s.group, "request_topic": s.request_topic, "dlq_topic": s.dlq_topic}
            for s in stages],
        ("stage", "error_type"): [{"stage": s.name, "error_type": e} for s in stages for e in ERROR_TYPES],
        ("service",): [{"service": name} for name in services],
        ("service", "status"): [{"service": name, "status": status} for name in services
                                for status in metrics.SERVICE_STATES],
        ("service", "reason"): [{"service": name, "reason": reason} for name in services
                                for reason in metrics.PROBE_FAILURE_REASONS],
        ("collector",): [{"collector": collector.value} for collector in Part],
        ("version", "python_version", "librdkafka_version"): [
            {"version": "0.1.0", "python_version": "3.11.7", "librdkafka_version": "2.6.0"}],
    }


LABEL_SETS = _label_sets()


def _weight(labels: LabelSet) -> float:
    """A stable number in [0.5, 1.5) per label set, so series differ but every run is the same."""
    return 0.5 + zlib.crc32(json.dumps(labels, sort_keys=True).encode()) % 1000 / 1000


def _wave(labels: LabelSet, t: float, period: float = 1800) -> float:
    """Between 0 and 1, a different phase per label set."""
    return 0.5 + 0.5 * math.sin(2 * math.pi * t / period + 10 * _weight(labels))


def _counter(metric: MetricDef, labels: LabelSet, t: float) -> float:
    rate = {"tree_events_requested_total": 25.0, "tree_events_processed_total": 24.0,
            "tree_dlq_records_total": 0.02, "treewatch_collector_errors_total": 0.002}[metric.name]
    if labels.get("status") == "failed":
        rate *= 0.06 if labels["stage"] == "stamp" else 0.0005
    rate *= _weight(labels)
    # Increasing always: the wave's slope never outweighs the base rate.
    return math.floor(rate * t + rate * 60 * (1 - math.cos(t / 600)))


def _lag(labels: LabelSet, t: float) -> float:
    if (labels["group"], labels["topic"], labels["partition"]) == STALLED:
        return 200 + 2 * t
    return math.floor(20_000 * _wave(labels, t) * _weight(labels))


def _change_timestamp(labels: LabelSet, t: float, start: int) -> float:
    key = (labels["group"], labels["topic"], labels["partition"])
    return start - 600 if key == STALLED else start + t - 5


def _partitions_of(labels: LabelSet) -> list[LabelSet]:
    """The per-partition label sets of a group and topic: what the exporter's per-topic series summarise."""
    return [{**labels, "partition": partition} for partition in PARTITIONS]


def _lagging(labels: LabelSet, t: float) -> list[LabelSet]:
    return [partition for partition in _partitions_of(labels) if _lag(partition, t) > 0]


def _gauge(metric: MetricDef, labels: LabelSet, t: float, start: int) -> float | None:
    now = start + t
    service = labels.get("service")
    failing = service == FAILING_SERVICE
    match metric.name:
        case "kafka_consumer_group_lag":
            return _lag(labels, t)
        case "kafka_consumer_group_lag_seconds":
            return _lag(labels, t) / 30
        case "kafka_consumer_group_committed_offset":
            key = (labels["group"], labels["topic"], labels["partition"])
            return 5_000 if key == STALLED else 5_000 + math.floor(25 * _weight(labels) * t)
        case "kafka_consumer_group_committed_offset_change_timestamp_seconds":
            return _change_timestamp(labels, t, start)
        case "kafka_consumer_group_topic_lag":
            return sum(_lag(partition, t) for partition in _partitions_of(labels))
        case "kafka_consumer_group_topic_max_lag":
            return max(_lag(partition, t) for partition in _partitions_of(labels))
        case "kafka_consumer_group_topic_max_lag_seconds":
            return max(_lag(partition, t) for partition in _partitions_of(labels)) / 30
        case "kafka_consumer_group_topic_partitions_lagging":
            return len(_lagging(labels, t))
        case "kafka_consumer_group_topic_oldest_progress_timestamp_seconds":
            # Absent, as the exporter has it, while no partition of the topic lags.
            lagging = _lagging(labels, t)
            return min(_change_timestamp(partition, t, start) for partition in lagging) if lagging else None
        case "kafka_consumer_group_uncommitted_partitions":
            return 1 if labels["group"] == EMPTY_GROUP else 0
        case "kafka_consumer_group_state":
            state = "Empty" if labels["group"] == EMPTY_GROUP else "Stable"
            return 1 if labels["state"] == state else 0
        case "kafka_consumer_group_members":
            return 0 if labels["group"] == EMPTY_GROUP else 2
        case "kafka_consumer_group_read_errors":
            return 2 if t in PARTIAL_GROUP_READS else 0
        case "kafka_topic_partition_current_offset":
            rate = 0.01 if labels["topic"].endswith(".dlq") else 25
            return 10_000 + math.floor(rate * _weight(labels) * t)
        case "kafka_topic_partition_oldest_offset":
            return 1_000 if labels["topic"].endswith(".dlq") else 1_000 + math.floor(5 * _weight(labels) * t)
        case "kafka_topic_partitions":
            return len(PARTITIONS)
        case "kafka_brokers":
            return 3
        case "kafka_cluster_brokers_down" | "kafka_topic_leaderless_partitions":
            return 0
        case "kafka_topic_under_replicated_partitions":
            return 1 if labels["topic"] == PIPELINE.stage("stamp").request_topic and t > 3600 else 0
        case "kafka_cluster_controller_known" | "kafka_cluster_healthy":
            return 1
        case "tree_events_in_flight":
            return math.floor(500 * _wave(labels, t))
        case "tree_dlq_retained_records":
            return 10 + math.floor(t / 60 * _weight(labels))
        case "tree_dlq_retained_records_by_error_type":
            # Grows with new dead letters, drops when the handled ones are deleted.
            return math.floor(_weight(labels) * (5 + (t % DLQ_PURGED_AT) / 120))
        case "tree_dlq_oldest_record_timestamp_seconds":
            return start - 3600
        case "tree_service_probe_success":
            return 0 if failing else 1
        case "tree_service_status":
            status = "unknown" if failing else "degraded" if service == DEGRADED_SERVICE else "healthy"
            return 1 if labels["status"] == status else 0
        case "tree_service_probe_duration_seconds":
            return 0.005 + 0.05 * _wave(labels, t)
        case "tree_service_probe_http_status_code":
            return 0 if failing else 200
        case "tree_service_probe_failure":
            return 1 if failing and labels["reason"] == "connection_refused" else 0
        case "tree_service_cache_hit_ratio":
            return 0.6 + 0.3 * _wave(labels, t)
        case "tree_service_cache_metrics_failure":
            return 0
        case "treewatch_collector_success" | "treewatch_build_info" | "tree_pipeline_stage_info":
            return 1
        case "treewatch_collector_duration_seconds":
            return 0.01 + 0.2 * _wave(labels, t)
        case "treewatch_collector_last_success_timestamp_seconds":
            return now - 3
        case "treewatch_series_dropped":
            return 0
    raise AssertionError(f"{metric.name}: the test data has no values for this gauge; add them above")


def _value(metric: MetricDef, labels: LabelSet, t: float, start: int) -> float | None:
    return _counter(metric, labels, t) if metric.kind is Kind.COUNTER else _gauge(metric, labels, t, start)


def _format_labels(labels: LabelSet, scrape_labels: LabelSet = SCRAPE_LABELS) -> str:
    pairs = {**labels, **scrape_labels}
    return ",".join(f'{key}="{value}"' for key, value in pairs.items())


def write_openmetrics(path: Path, start: int) -> None:
    """Every metric family of exporter.metrics, every label set, one sample per STEP_SECONDS."""
    times = range(0, HISTORY_SECONDS + 1, STEP_SECONDS)
    with path.open("w", encoding="utf-8") as out:
        for metric in metrics.METRICS:
            if metric.labels not in LABEL_SETS:
                raise AssertionError(f"{metric.name}: no test label sets for labels {metric.labels}")
            out.write(f"# TYPE {metric.family_name} {metric.kind.value}\n")
            for labels in LABEL_SETS[metric.labels]:
                series = f"{metric.name}{{{_format_labels(labels)}}}"
                values = ((t, _value(metric, labels, t, start)) for t in times)
                out.writelines(f"{series} {value} {start + t}\n" for t, value in values if value is not None)
        write_services_own_metrics(out, times, start)
        # What Prometheus itself would have recorded while the incidents above fire.
        out.write(f"# TYPE {PROMETHEUS_ALERTS} gauge\n")
        for labels in FIRING_ALERTS:
            series = f"{PROMETHEUS_ALERTS}{{{_format_labels(labels)}}}"
            out.writelines(f"{series} 1 {start + t}\n" for t in times)
        out.write("# EOF\n")


# The services' own metrics (exporter.metrics.SERVICES_OWN_METRICS), as Prometheus scrapes them from
# each service directly: job tree-services and the service's label, no exporter in between.
SERVICE_SCRAPE_LABELS = {"job": SERVICES_JOB, "env": SCRAPE_LABELS["env"], "cluster": SCRAPE_LABELS["cluster"]}
EVENTS_PER_SECOND = 20.0
# The share of events that took at most `le` seconds: a p95 between 0.2 and 0.3 s.
PROCESSING_TIME_SHARES = {"0.01": 0.1, "0.05": 0.35, "0.1": 0.6, "0.2": 0.85, "0.3": 0.97, "0.5": 0.99,
                          "1.0": 1.0, "+Inf": 1.0}


def write_services_own_metrics(out, times: range, start: int) -> None:
    for metric in metrics.SERVICES_OWN_METRICS:
        series_labels = _format_labels({**SERVICE_SCRAPE_LABELS, "instance": f"{metric.service}:8000",
                                        "service": metric.service}, scrape_labels={})
        out.write(f"# TYPE {metric.name} {metric.kind}\n")
        for t in times:
            if metric.kind == "histogram":
                for le, share in PROCESSING_TIME_SHARES.items():
                    count = math.floor(EVENTS_PER_SECOND * share * t)
                    out.write(f'{metric.name}_bucket{{{series_labels},le="{le}"}} {count} {start + t}\n')
                out.write(f"{metric.name}_count{{{series_labels}}} {math.floor(EVENTS_PER_SECOND * t)} {start + t}\n")
                out.write(f"{metric.name}_sum{{{series_labels}}} {EVENTS_PER_SECOND * 0.08 * t} {start + t}\n")
            else:
                out.write(f"{metric.name}{{{series_labels}}} {120 + 50 * _wave({'service': metric.service}, t)}"
                          f" {start + t}\n")


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (Debian package 'prometheus'; see scripts/setup.sh)")
    return path


@dataclass
class Prometheus:
    url: str
    time: int  # a query time inside the data, at its last sample

    def get(self, path: str, **params) -> dict:
        response = httpx.get(f"{self.url}{path}", params={**params, "time": self.time}, timeout=30)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", body
        return body


RULES_FILE = REPO / "alerts" / "generated" / alerts_generate.RULES_FILE


def _start_prometheus(workdir: Path, storage: Path, log_name: str) -> tuple[subprocess.Popen, str]:
    config = workdir / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 15s\nscrape_configs: []\n")
    port = free_port()
    log = workdir / log_name
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [_binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={storage}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=30d"],
            stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _await_ready(process, url, log)
    except BaseException:
        _stop(process)
        raise
    return process, url


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _backfill_recording_rules(workdir: Path, storage: Path, start: int, end: int) -> None:
    """Evaluate the generated recording rules over the data with promtool (a Prometheus serving
    the raw data answers its queries) and add the resulting blocks to the storage."""
    process, url = _start_prometheus(workdir, storage, "prometheus-raw.log")
    output = workdir / "rule-blocks"
    try:
        backfilled = subprocess.run(
            [_binary("promtool"), "tsdb", "create-blocks-from", "rules", f"--url={url}", f"--start={start}",
             f"--end={end}", f"--output-dir={output}", "--eval-interval=60s", str(RULES_FILE)],
            capture_output=True, text=True, timeout=300)
    finally:
        _stop(process)
    assert backfilled.returncode == 0, f"promtool failed:\n{backfilled.stdout}\n{backfilled.stderr}"
    blocks = [block for block in output.iterdir() if (block / "meta.json").exists()]
    assert blocks, f"promtool wrote no blocks:\n{backfilled.stdout}\n{backfilled.stderr}"
    for block in blocks:
        shutil.move(str(block), storage / block.name)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory) -> Iterator[Prometheus]:
    with history_prometheus(tmp_path_factory.mktemp("prometheus")) as served:
        yield served


@contextmanager
def history_prometheus(workdir: Path, edit: Callable[[Path, Path], None] | None = None) -> Iterator[Prometheus]:
    """A Prometheus serving the test history and its recording rules; ``edit(written, served)``, when
    given, makes the history served from the one written."""
    end = int(time.time()) // 60 * 60 - 60
    start = end - HISTORY_SECONDS
    data = workdir / "data.om"
    if edit is None:
        write_openmetrics(data, start)
    else:
        write_openmetrics(workdir / "full.om", start)
        edit(workdir / "full.om", data)
    storage = workdir / "tsdb"
    created = subprocess.run([_binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", str(data),
                              str(storage)], capture_output=True, text=True, timeout=300)
    assert created.returncode == 0, f"promtool failed:\n{created.stdout}\n{created.stderr}"
    _backfill_recording_rules(workdir, storage, start, end)
    process, url = _start_prometheus(workdir, storage, "prometheus.log")
    try:
        yield Prometheus(url=url, time=end)
    finally:
        _stop(process)


def _await_ready(process: subprocess.Popen, url: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"prometheus exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"prometheus not ready after {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)  # polling readiness: Prometheus offers nothing to wait on


def substitute(text: str, values: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"${name} has no value to substitute in {text!r}")
        return values[name]
    return VARIABLE_REFERENCE.sub(replace, text)


def regex_literal(value: str) -> str:
    """A value as Grafana writes it into a regex matcher: regex-escaped, inside a PromQL string."""
    escaped = re.sub(r"([\\.*+?^${}()|\[\]])", r"\\\1", value)
    return escaped.replace("\\", "\\\\")


@pytest.fixture(scope="module")
def variable_values(prometheus) -> dict[str, dict[str, list[str]]]:
    """dashboard -> variable -> values, resolved in order as Grafana does, each later variable with
    the earlier ones set to their first value."""
    resolved: dict[str, dict[str, list[str]]] = {}
    for name, dashboard in DASHBOARDS.items():
        first = dict(BUILTINS)
        resolved[name] = {}
        for variable in query_variables(dashboard):
            match = LABEL_VALUES.match(variable["query"])
            assert match, variable["query"]
            selector = substitute(match["selector"], first)
            body = prometheus.get("/api/v1/series", **{"match[]": selector, "start": prometheus.time - 3600,
                                                       "end": prometheus.time})
            values = sorted({series[match["label"]] for series in body["data"]})
            resolved[name][variable["name"]] = values
            if values:
                first[variable["name"]] = regex_literal(values[0])
    return resolved


def test_every_variable_has_values(variable_values):
    for name, variables in variable_values.items():
        for variable, values in variables.items():
            assert values, f"{name}: ${variable} resolves to nothing"
    drill_down = variable_values["tree-stamping-groups-dlq.json"]
    assert drill_down["stage"] == sorted(stage.name for stage in PIPELINE.stages)
    # $group follows $stage: only the first stage's group; $topic follows $group: only its topics.
    first_stage = PIPELINE.stage(drill_down["stage"][0])
    assert drill_down["group"] == [first_stage.group]
    assert drill_down["topic"] == [first_stage.request_topic]


def test_query_variables_offer_all():
    for dashboard in DASHBOARDS.values():
        for variable in query_variables(dashboard):
            assert variable["includeAll"] and variable["multi"] and variable["allValue"] == common.ALL_VALUE


def _assert_returns_data(prometheus: Prometheus, query: Query, expr: str) -> None:
    body = prometheus.get("/api/v1/query", query=expr)
    assert not body.get("warnings"), f"{query.id}: warnings {body['warnings']}"
    result = body["data"]["result"]
    assert body["data"]["resultType"] == "vector", f"{query.id}: {body['data']['resultType']}"
    assert result, f"{query.id}: no series for\n{expr}"
    values = [float(sample["value"][1]) for sample in result]
    assert any(math.isfinite(value) for value in values), f"{query.id}: only {values} for\n{expr}"


@pytest.mark.parametrize("query", QUERIES, ids=[query.id for query in QUERIES])
def test_query_returns_series(prometheus, variable_values, query):
    dashboard = DASHBOARDS[query.dashboard]
    names = [variable["name"] for variable in query_variables(dashboard)]
    # "All" selected, as a dashboard opens; then each variable at its first value, as in a drill-down.
    _assert_returns_data(prometheus, query, substitute(query.expr, {**BUILTINS, **dict.fromkeys(
        names, common.ALL_VALUE)}))
    if referenced_variables(query.expr) & set(names):
        chosen = {name: regex_literal(variable_values[query.dashboard][name][0]) for name in names}
        _assert_returns_data(prometheus, query, substitute(query.expr, {**BUILTINS, **chosen}))


# The operators' guide's PromQL ("Monitoring & Alerts": its four dashboard queries and its four alert
# expressions), copied verbatim (only Python doubles the backslashes). The metric contract keeps their
# names so they keep working; the rules fix their semantics (docs/runbooks.md), not their syntax.
GUIDE_DASHBOARD_QUERIES = (
    'kafka_consumer_group_lag{group=~"tree-.*-group"}',
    "rate(tree_events_processed_total[1m])",
    'rate(tree_events_processed_total{status="failed"}[1m]) / rate(tree_events_processed_total[1m])',
    'kafka_topic_partition_current_offset{topic=~".*\\\\.dlq"}',
)
GUIDE_ALERT_EXPRESSIONS = (
    "kafka_consumer_group_lag > 10000",
    'increase(kafka_topic_partition_current_offset{topic=~".*\\\\.dlq"}[5m]) > 10',
    "rate(tree_events_processed_total[5m]) < 16.67",
    '(rate(tree_events_processed_total{status="failed"}[5m]) / rate(tree_events_processed_total[5m])) > 0.05',
)


@pytest.mark.parametrize("expr", GUIDE_DASHBOARD_QUERIES + GUIDE_ALERT_EXPRESSIONS)
def test_the_guides_promql_works_verbatim(prometheus, expr):
    body = prometheus.get("/api/v1/query", query=expr)
    assert not body.get("warnings"), body["warnings"]
    assert body["data"]["resultType"] == "vector"
    if expr in GUIDE_DASHBOARD_QUERIES:
        assert body["data"]["result"], f"no series for the guide's {expr}"
    if "dlq" in expr and expr in GUIDE_DASHBOARD_QUERIES:
        topics = {series["metric"]["topic"] for series in body["data"]["result"]}
        assert topics == {stage.dlq_topic for stage in PIPELINE.stages}
