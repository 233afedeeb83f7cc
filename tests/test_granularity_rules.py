"""The generated rules and dashboards at every granularity of ``exporter.partition_series`` (issue 12).

The exporter always reports a consumer group per group and topic (kafka_consumer_group_topic_*) and,
when the detail allows, per partition too. The rules read only the per-topic series, so they must give
the same answers with the per-partition series all there, lag only, or none: checked with promtool on
one scenario rendered at each detail (each alert fires exactly once per group and topic, from the
per-topic series alone or with the per-partition ones beside them), by breaking each rule back into a
per-partition one (the committed promtool tests, the generated threshold tests and the scenario must
all catch it), and on a real Prometheus holding the dashboards' test history without any
per-partition series (every per-topic panel and variable still has data; the per-partition panels say
they may be empty, and are)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts import rule_tests
from alerts.config import CONFIG, EXPORTER_JOB, STAGE_CONSUMER_LAG
from alerts.generate import RULES_FILE, rule_file
from alerts.promql import metric_names
from dashboards import common
from exporter import metrics
from tests.test_dashboards import (
    BUILTINS,
    DASHBOARDS,
    LABEL_VALUES,
    QUERIES,
    Prometheus,
    Query,
    _binary,
    data_panels,
    history_prometheus,
    metrics_read,
    query_variables,
    substitute,
)

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "alerts" / "generated" / RULES_FILE
COMMITTED_TESTS = sorted((ROOT / "alerts" / "tests").glob("*.yml"))

PER_PARTITION = frozenset(metric.name for metric in metrics.METRICS if metric.per_partition)
# exporter.partition_series.detail -> the per-partition series a group then has.
DETAILS: dict[str, frozenset[str]] = {
    "all": PER_PARTITION,
    "lag": frozenset({metrics.KAFKA_CONSUMER_GROUP_LAG.name}),
    "none": frozenset(),
}
# The alerts that read a consumer group's lag, directly or through the stage's recorded lag.
GROUP_ALERTS = ("HighConsumerLag", "LowThroughput", "ConsumerGroupStalled", "ConsumerGroupNoMembers",
                "ConsumerLagTooOld")


def test_the_per_partition_series_are_the_four_the_granularity_makes_optional() -> None:
    """Every check below compares with PER_PARTITION: an empty one would pass them all."""
    assert PER_PARTITION == {"kafka_consumer_group_lag", "kafka_consumer_group_lag_seconds",
                             "kafka_consumer_group_committed_offset",
                             "kafka_consumer_group_committed_offset_change_timestamp_seconds"}


def _rules(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_no_rule_reads_a_per_partition_series() -> None:
    for rule in _rules(rule_file(CONFIG)):
        read = metric_names(rule["expr"])
        assert not read & PER_PARTITION, f"{rule.get('alert') or rule['record']} reads {read & PER_PARTITION}"


# -- one scenario at every granularity -------------------------------------------------------------

INSTANCE = "exporter:9847"
SAMPLES = 16  # one a minute
EVALUATED_AT = "12m"  # past every group alert's condition plus its `for`


@dataclass(frozen=True)
class PartitionState:
    """One committed partition of a group, constant over the scenario."""

    lag: int
    lag_seconds: float
    # None: the committed offset moves every refresh; otherwise it last moved this long before the start.
    still_for: float | None = None

    def change_timestamp(self, t: int) -> float:
        return t - 5 if self.still_for is None else -self.still_for


@dataclass(frozen=True)
class GroupTopic:
    group: str
    topic: str
    partitions: tuple[PartitionState, ...]


@dataclass(frozen=True)
class StageState:
    name: str
    group: str
    members: int
    processed_per_minute: int


def _seconds(t_index: int) -> int:
    return 60 * t_index


def per_topic_values(topic: GroupTopic, t: int) -> dict[str, float | None]:
    """The per-topic series as the exporter's metric help defines them from the partitions; None: absent."""
    lags = [partition.lag for partition in topic.partitions]
    lagging = [partition for partition in topic.partitions if partition.lag > 0]
    return {
        metrics.KAFKA_CONSUMER_GROUP_TOPIC_LAG.name: sum(lags),
        metrics.KAFKA_CONSUMER_GROUP_TOPIC_MAX_LAG.name: max(lags),
        metrics.KAFKA_CONSUMER_GROUP_TOPIC_MAX_LAG_SECONDS.name: max(p.lag_seconds for p in topic.partitions),
        metrics.KAFKA_CONSUMER_GROUP_TOPIC_PARTITIONS_LAGGING.name: len(lagging),
        metrics.KAFKA_CONSUMER_GROUP_TOPIC_OLDEST_PROGRESS_TIMESTAMP_SECONDS.name:
            min(p.change_timestamp(t) for p in lagging) if lagging else None,
    }


def per_partition_values(partition: PartitionState, t: int) -> dict[str, float]:
    return {
        metrics.KAFKA_CONSUMER_GROUP_LAG.name: partition.lag,
        metrics.KAFKA_CONSUMER_GROUP_LAG_SECONDS.name: partition.lag_seconds,
        metrics.KAFKA_CONSUMER_GROUP_COMMITTED_OFFSET.name: 1000 + (t if partition.still_for is None else 0),
        metrics.KAFKA_CONSUMER_GROUP_COMMITTED_OFFSET_CHANGE_TIMESTAMP_SECONDS.name: partition.change_timestamp(t),
    }


STAGES = (
    # Three partitions far over the lag threshold, committing (slowly): HighConsumerLag once, and the
    # stage processes nothing with a backlog: LowThroughput.
    StageState("stamp", "stamping-generator-group", members=2, processed_per_minute=0),
    # One lagging partition stuck for 10 minutes already and with an old unconsumed record, one idle
    # partition whose offset has not moved for long (no lag: it must not count as stalled), one lagging
    # partition that moves; no members.
    StageState("index", "indexing-processor-group", members=0, processed_per_minute=1200),
    # Healthy.
    StageState("discover", "tree-discovery-group", members=1, processed_per_minute=600),
)
TOPICS = (
    GroupTopic("stamping-generator-group", "stamp.requests",
               (PartitionState(20_000, 60), PartitionState(30_000, 90), PartitionState(12_000, 30))),
    GroupTopic("indexing-processor-group", "index.requests",
               (PartitionState(5, 2_000, still_for=600), PartitionState(0, 0, still_for=50_000),
                PartitionState(7, 40))),
    GroupTopic("tree-discovery-group", "discover.requests", (PartitionState(3, 2), PartitionState(0, 0))),
    # Outside the pipeline: HighConsumerLag only, without a stage.
    GroupTopic("someone-elses-group", "other", (PartitionState(50_000, 100), PartitionState(60_000, 100))),
)
# (alertname, group, topic, stage) of every group alert firing at EVALUATED_AT, each exactly once.
EXPECTED_FIRING = {
    ("HighConsumerLag", "stamping-generator-group", "stamp.requests", "stamp"),
    ("HighConsumerLag", "someone-elses-group", "other", None),
    ("LowThroughput", None, None, "stamp"),
    ("ConsumerGroupStalled", "indexing-processor-group", "index.requests", "index"),
    ("ConsumerGroupNoMembers", "indexing-processor-group", None, "index"),
    ("ConsumerLagTooOld", "indexing-processor-group", "index.requests", "index"),
}
# The stage's recorded lag, the same at every granularity.
EXPECTED_STAGE_LAG = {"stamp": 62_000, "index": 12, "discover": 3}


def _selector(metric: str, labels: Mapping[str, str]) -> str:
    pairs = {"job": EXPORTER_JOB, "instance": INSTANCE, **labels}
    return metric + "{" + ", ".join(f'{name}="{value}"' for name, value in pairs.items()) + "}"


def _series(metric: str, labels: Mapping[str, str], value: Callable[[int], float | None]) -> dict[str, str]:
    """An input series with one explicit sample a minute; promtool's ``_`` where it is absent."""
    samples = [value(_seconds(index)) for index in range(SAMPLES)]
    return {"series": _selector(metric, labels),
            "values": " ".join("_" if sample is None else f"{sample:.15g}" for sample in samples)}


def scenario_series(detail: str) -> list[dict[str, str]]:
    """What the exporter reports for STAGES and TOPICS at ``detail``: the per-topic series always."""
    series = []
    for stage in STAGES:
        info = {"stage": stage.name, "group": stage.group, "request_topic": f"{stage.name}.requests",
                "dlq_topic": f"{stage.name}.requests.dlq"}
        series.append(_series("tree_pipeline_stage_info", info, lambda t: 1))
        series.append(_series("kafka_consumer_group_members", {"group": stage.group}, lambda t, s=stage: s.members))
        series.append(_series("tree_events_processed_total", {"stage": stage.name, "status": "completed"},
                              lambda t, s=stage: 1000 + s.processed_per_minute * t / 60))
    for topic in TOPICS:
        labels = {"group": topic.group, "topic": topic.topic}
        for metric in per_topic_values(topic, 0):
            series.append(_series(metric, labels, lambda t, m=metric, g=topic: per_topic_values(g, t)[m]))
        for index, partition in enumerate(topic.partitions):
            for metric in DETAILS[detail]:
                series.append(_series(metric, {**labels, "partition": str(index)},
                                      lambda t, m=metric, p=partition: per_partition_values(p, t)[m]))
    return series


def _firing_sample(alertname: str, group: str | None, topic: str | None, stage: str | None) -> dict[str, Any]:
    labels = {"alertname": alertname, "group": group, "topic": topic, "stage": stage}
    text = ", ".join(f'{name}="{value}"' for name, value in labels.items() if value is not None)
    return {"labels": "{" + text + "}", "value": 1}


def scenario_test(detail: str, rules: Path) -> dict[str, Any]:
    alerts = "|".join(GROUP_ALERTS)
    firing = f'ALERTS{{alertstate="firing", alertname=~"{alerts}"}}'
    return {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "group_eval_order": [group["name"] for group in rule_file(CONFIG)["groups"]],
        "tests": [{
            "name": f"the group alerts at detail {detail}",
            "interval": "1m",
            "input_series": scenario_series(detail),
            "promql_expr_test": [
                # Counted per group, topic and stage: an alert firing once per partition shows as 2 or 3.
                {"expr": f"count by (alertname, group, topic, stage) ({firing})", "eval_time": EVALUATED_AT,
                 "exp_samples": [_firing_sample(*key) for key in sorted(EXPECTED_FIRING, key=str)]},
                {"expr": STAGE_CONSUMER_LAG, "eval_time": EVALUATED_AT,
                 "exp_samples": [{"labels": f'{STAGE_CONSUMER_LAG}{{job="{EXPORTER_JOB}", stage="{stage}"}}',
                                  "value": lag} for stage, lag in EXPECTED_STAGE_LAG.items()]},
            ],
        }],
    }


def _promtool_test(*files: Path) -> subprocess.CompletedProcess[str]:
    """promtool's unit tests of ``files``; it reports failures on stderr, so both streams are in stdout."""
    return subprocess.run([_binary("promtool"), "test", "rules", *map(str, files)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)


def _write_yaml(path: Path, document: Any) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False, width=1000, allow_unicode=True))
    return path


@pytest.mark.parametrize("detail", sorted(DETAILS))
def test_each_group_alert_fires_once_per_group_and_topic_at_every_detail(tmp_path: Path, detail: str) -> None:
    document = scenario_test(detail, RULES)
    inputs = {re.match(r"\w+", series["series"])[0] for series in document["tests"][0]["input_series"]}
    assert inputs & PER_PARTITION == DETAILS[detail], "the scenario holds exactly the detail's per-partition series"
    result = _promtool_test(_write_yaml(tmp_path / f"detail-{detail}.yml", document))
    assert result.returncode == 0, result.stdout


# -- a rule broken back into a per-partition one is caught ------------------------------------------

# Each per-topic series and the per-partition one it summarises: the rules as they were before issue 12.
AS_PER_PARTITION = {
    "kafka_consumer_group_topic_oldest_progress_timestamp_seconds":
        "kafka_consumer_group_committed_offset_change_timestamp_seconds",
    "kafka_consumer_group_topic_max_lag_seconds": "kafka_consumer_group_lag_seconds",
    "kafka_consumer_group_topic_max_lag": "kafka_consumer_group_lag",
    "kafka_consumer_group_topic_lag": "kafka_consumer_group_lag",
}
# The rule to break for each alert: LowThroughput reads the stage's lag through the recording rule.
BROKEN_RULE = {alert: alert for alert in GROUP_ALERTS} | {"LowThroughput": STAGE_CONSUMER_LAG}


def _per_partition(expr: str) -> str:
    pattern = re.compile(r"\b(" + "|".join(sorted(AS_PER_PARTITION, key=len, reverse=True)) + r")\b")
    return pattern.sub(lambda match: AS_PER_PARTITION[match[1]], expr)


def _broken_rules(tmp_path: Path, name: str, breaking: Callable[[str], str]) -> Path:
    document = yaml.safe_load(RULES.read_text())
    broken = 0
    for rule in _rules(document):
        if name in (rule.get("alert"), rule.get("record")):
            rule["expr"], before = breaking(rule["expr"]), rule["expr"]
            broken += rule["expr"] != before
    assert broken, f"nothing to break in {name}"
    return _write_yaml(tmp_path / "broken-rules.yml", document)


def _failed_alerts(output: str) -> set[str]:
    """The alerts promtool names in its failures: alert_rule_test cases and ALERTS{alertname=...} queries."""
    return set(re.findall(r'alertname(?:: |=\\?")(\w+)', output))


def _committed_tests_against(rules: Path, folder: Path) -> list[Path]:
    paths = []
    for path in COMMITTED_TESTS:
        document = yaml.safe_load(path.read_text())
        paths.append(_write_yaml(folder / path.name, {**document, "rule_files": [str(rules)]}))
    return paths


def _threshold_tests_against(rules: Path, folder: Path) -> Path:
    (content,) = [content for name, content in rule_tests.test_files(CONFIG, str(rules)).items()
                  if name == rule_tests.THRESHOLD_TESTS_FILE]
    return _write_yaml(folder / rule_tests.THRESHOLD_TESTS_FILE, content)


def test_the_suites_pass_on_the_generated_rules(tmp_path: Path) -> None:
    """The baseline the breaking tests below compare with: the same files, unbroken, pass."""
    result = _promtool_test(*_committed_tests_against(RULES, tmp_path), _threshold_tests_against(RULES, tmp_path))
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize("alert", GROUP_ALERTS)
def test_a_rule_reading_per_partition_series_again_fails_every_suite(tmp_path: Path, alert: str) -> None:
    rules = _broken_rules(tmp_path, BROKEN_RULE[alert], _per_partition)
    committed = _promtool_test(*_committed_tests_against(rules, tmp_path))
    assert committed.returncode != 0 and alert in _failed_alerts(committed.stdout), committed.stdout[-3000:]
    thresholds = _promtool_test(_threshold_tests_against(rules, tmp_path))
    assert thresholds.returncode != 0 and alert in _failed_alerts(thresholds.stdout), thresholds.stdout[-3000:]
    # Without per-partition series (detail none) the per-partition rule is blind.
    blind = _promtool_test(_write_yaml(tmp_path / "detail-none.yml", scenario_test("none", rules)))
    assert blind.returncode != 0, blind.stdout


def test_high_consumer_lag_per_partition_fires_once_per_partition(tmp_path: Path) -> None:
    """The guide's per-partition rule, with every per-partition series there, pages once per lagging
    partition (three for the stamping group): the scenario's count per group and topic catches it."""
    rules = _broken_rules(tmp_path, "HighConsumerLag", _per_partition)
    duplicated = _promtool_test(_write_yaml(tmp_path / "detail-all.yml", scenario_test("all", rules)))
    assert duplicated.returncode != 0, duplicated.stdout
    assert re.search(r'\{alertname="HighConsumerLag", group="stamping-generator-group", stage="stamp", '
                     r'topic="stamp.requests"\} 3E\+00', duplicated.stdout), duplicated.stdout


def test_high_consumer_lag_on_the_summed_lag_is_caught(tmp_path: Path) -> None:
    """The guide's threshold is per partition: a topic whose partitions add up past it, none above it, is
    quiet. A rule on kafka_consumer_group_topic_lag instead of its max fails the committed tests."""
    rules = _broken_rules(tmp_path, "HighConsumerLag", lambda expr: expr.replace(
        "kafka_consumer_group_topic_max_lag{", "kafka_consumer_group_topic_lag{"))
    committed = _promtool_test(*_committed_tests_against(rules, tmp_path))
    assert committed.returncode != 0 and "HighConsumerLag" in _failed_alerts(committed.stdout), (
        committed.stdout[-3000:])


# -- the dashboards ------------------------------------------------------------------------------------

def _reads_per_partition(query: Query) -> bool:
    return bool(metrics_read(query.expr) & PER_PARTITION)


def _panels_by_title(dashboard: str) -> dict[str, dict[str, Any]]:
    return {panel["title"]: panel for panel in data_panels(DASHBOARDS[dashboard])}


def test_panels_reading_per_partition_series_say_so_and_sit_below_the_per_topic_ones() -> None:
    per_partition = [query for query in QUERIES if _reads_per_partition(query)]
    assert per_partition, "the consumer group dashboard keeps its per-partition panels"
    for query in per_partition:
        panels = _panels_by_title(query.dashboard)
        description = panels[query.panel]["description"]
        assert "exporter.partition_series" in description and "per-topic panels above" in description, query.id
        per_topic_rows = [panels[other.panel]["gridPos"]["y"] for other in QUERIES
                          if other.dashboard == query.dashboard and not _reads_per_partition(other)
                          and any(name.startswith("kafka_consumer_group_topic_") for name in metrics_read(other.expr))]
        assert per_topic_rows and panels[query.panel]["gridPos"]["y"] > max(per_topic_rows), query.id
    assert not any(query.dashboard == "tree-stamping-overview.json" for query in per_partition), (
        "the overview reads no per-partition series")


def test_no_variable_depends_on_per_partition_series() -> None:
    for name, dashboard in DASHBOARDS.items():
        for variable in query_variables(dashboard):
            assert not metrics_read(LABEL_VALUES.match(variable["query"])["selector"]) & PER_PARTITION, (
                f"{name} ${variable['name']}")


def _without_per_partition_series(source: Path, target: Path) -> None:
    """The OpenMetrics history without any per-partition family: every group at detail none."""
    def family(line: str) -> str:
        return line.split()[2] if line.startswith("# TYPE ") else re.match(r"[^{ ]*", line)[0]
    with source.open(encoding="utf-8") as lines, target.open("w", encoding="utf-8") as out:
        out.writelines(line for line in lines if family(line) not in PER_PARTITION)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """test_dashboards' history and recording rules, served without a single per-partition series."""
    with history_prometheus(tmp_path_factory.mktemp("prometheus-detail-none"), _without_per_partition_series) as served:
        yield served


def _opening_values(dashboard: str) -> dict[str, str]:
    """Every variable on "All", as the dashboard opens."""
    return {**BUILTINS, **dict.fromkeys((variable["name"] for variable in query_variables(DASHBOARDS[dashboard])),
                                        common.ALL_VALUE)}


def test_at_detail_none_every_other_panel_and_variable_still_has_data(prometheus: Prometheus) -> None:
    for name, dashboard in DASHBOARDS.items():
        for variable in query_variables(dashboard):
            selector = substitute(LABEL_VALUES.match(variable["query"])["selector"], _opening_values(name))
            found = prometheus.get("/api/v1/series", **{"match[]": selector, "start": prometheus.time - 3600,
                                                        "end": prometheus.time})["data"]
            assert found, f"{name} ${variable['name']} has no values without per-partition series"
    empty, quiet = [], []
    for query in QUERIES:
        result = prometheus.get("/api/v1/query", query=substitute(query.expr, _opening_values(query.dashboard)))
        if not result["data"]["result"]:
            (quiet if _reads_per_partition(query) else empty).append(query.id)
    assert empty == [], "panels that go blind without per-partition series"
    # The per-partition panels are the empty ones their descriptions warn of (and this history has none).
    assert quiet == [query.id for query in QUERIES if _reads_per_partition(query)]
