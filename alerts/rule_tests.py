"""promtool unit tests of a deployment's rule file, as its ``monitoring:`` section configures it.

The committed tests (alerts/tests/) are written for the shipped values: their inputs sit on either
side of the default thresholds and their expected annotations carry the default links. A
deployment's suite is made of two parts:

- the committed tests of every alert the deployment left as shipped (same expression, ``for`` and
  text), with its links and extra labels in the expected alerts, its disabled alerts left out;
- tests generated from the thresholds (THRESHOLD_CASES): for each alert, an input just past its
  threshold that fires exactly when its ``for`` has elapsed (and is still pending one evaluation
  before), and an input at the threshold, or healthy, that never fires. A firing alert is checked
  through Prometheus' ALERTS series (its labels, not its annotations, which the committed tests
  check), so they hold for any threshold, ``for``, link or label.

An alert changed by the deployment and without a generated case is reported by ``untested_alerts``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from alerts.config import CONFIG, EXPORTER_JOB, SERVICES_JOB, MonitoringConfig, parse_duration
from alerts.environments import CLUSTER_LABEL, ENV_LABEL
from alerts.generate import rule_file

COMMITTED_TESTS = Path(__file__).resolve().parent / "tests"
EVALUATION_INTERVAL = 60  # seconds; every generated test group steps (and evaluates) once a minute

ENV, CLUSTER = "prod", "kafka-prod"
INSTANCE = "exporter:9847"
GROUP = "tree-discovery-group"
STAGE = "discover"
TOPIC = "prod.archon-intelligence.tree.discover.v1"
DLQ_TOPIC = f"{TOPIC}.dlq"
# Where a shared rule is tested when some environments have thresholds of their own: none of theirs.
SHARED_ENV = "an-environment-without-thresholds-of-its-own"


@dataclass(frozen=True)
class Series:
    metric: str
    labels: Mapping[str, str]
    values: str  # promtool's expanding notation, e.g. '5x30' or '0+60x30'


# (the monitoring values, samples per series) -> the input series of one test group
Inputs = Callable[[MonitoringConfig, int], list[Series]]


@dataclass(frozen=True)
class ThresholdCase:
    """How to make one alert fire and how to keep it quiet, for the given monitoring values."""

    firing: Inputs
    quiet: Inputs
    # The firing alert's labels that its expression gives (the rule's own labels are added to them).
    labels: Callable[[MonitoringConfig], Mapping[str, str]]
    # Seconds after the start at which the condition first holds: rates and increases need two samples.
    holds_from: int = 0


def _job(**labels: str) -> dict[str, str]:
    """Labels an aggregation over the exporter's instances keeps: the target labels of the generated
    scrape configuration (alerts.environments), the job, and ``labels``."""
    return {ENV_LABEL: ENV, CLUSTER_LABEL: CLUSTER, "job": EXPORTER_JOB, **labels}


def _target(**labels: str) -> dict[str, str]:
    """Labels of a series as Prometheus scrapes it from the exporter."""
    return _job(instance=INSTANCE, **labels)


def _labels(**labels: str) -> Callable[[MonitoringConfig], Mapping[str, str]]:
    return lambda config: labels


def _stage_info(config: MonitoringConfig, n: int) -> list[Series]:
    return [Series("tree_pipeline_stage_info", _target(stage=STAGE, group=GROUP, request_topic=TOPIC,
                                                        dlq_topic=DLQ_TOPIC), f"1x{n}")]


def _constant(metric: str, value: float | Callable[[MonitoringConfig], float], **labels: str) -> Inputs:
    def series(config: MonitoringConfig, n: int) -> list[Series]:
        number = value(config) if callable(value) else value
        return [Series(metric, _target(**labels), f"{_number(number)}x{n}")]
    return series


def _age(metric: str, seconds: Callable[[MonitoringConfig], float], extra: float, **labels: str) -> Inputs:
    """A timestamp series that is always ``seconds(config) + extra`` old: time() - it is that age."""
    def series(config: MonitoringConfig, n: int) -> list[Series]:
        start = -(seconds(config) + extra)
        return [Series(metric, _target(**labels), f"{_number(start)}+{EVALUATION_INTERVAL}x{n}")]
    return series


def _counter(metric: str, per_minute: Callable[[MonitoringConfig], float], **labels: str) -> Inputs:
    # Starting far from 0 lets increase() extrapolate to its whole window from the second sample on.
    return lambda config, n: [Series(metric, _target(**labels), f"1000+{_number(per_minute(config))}x{n}")]


def _all(*parts: Inputs) -> Inputs:
    return lambda config, n: [series for part in parts for series in part(config, n)]


_TOPIC_LAG = "kafka_consumer_group_topic_lag"
_TOPIC_MAX_LAG = "kafka_consumer_group_topic_max_lag"
_GROUP_TOPIC = {"group": GROUP, "topic": TOPIC}


def _lag(value: Callable[[MonitoringConfig], float]) -> Inputs:
    """The group's lag on TOPIC, all of it on one partition, as the per-topic series the exporter reports at
    every granularity tell it (the rules read no per-partition series)."""
    return _all(_constant(_TOPIC_LAG, value, **_GROUP_TOPIC), _constant(_TOPIC_MAX_LAG, value, **_GROUP_TOPIC),
                _constant("kafka_consumer_group_topic_partitions_lagging", lambda c: 1 if value(c) > 0 else 0,
                          **_GROUP_TOPIC))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _dead_letters_per_minute(config: MonitoringConfig) -> float:
    # increase() over the window of a counter growing this fast is several times the threshold.
    return max(config.dlq_overflow_records_5m, 1)


def _slow_stage(config: MonitoringConfig) -> str:
    exempt = config.low_throughput_exempt_stages
    return next(name for name in ("stamp", "index", *(f"{name}-x" for name in exempt)) if name not in exempt)


def _low_throughput(lag: Callable[[MonitoringConfig], float]) -> Inputs:
    """A stage that processes nothing (a counter that does not move) while ``lag`` records wait for it."""
    def series(config: MonitoringConfig, n: int) -> list[Series]:
        stage = _slow_stage(config)
        group = f"{stage}-group"
        return [
            Series("tree_pipeline_stage_info", _target(stage=stage, group=group, request_topic=f"{stage}.requests",
                                                        dlq_topic=f"{stage}.dlq"), f"1x{n}"),
            Series(_TOPIC_LAG, _target(group=group, topic=f"{stage}.requests"), f"{_number(lag(config))}x{n}"),
            Series("tree_events_processed_total", _target(stage=stage, status="completed"), f"100x{n}"),
        ]
    return series


def _backlog(config: MonitoringConfig) -> float:
    return config.low_throughput_events_per_second * config.low_throughput_backlog_seconds


def _events(failed_per_minute: int) -> Inputs:
    def series(config: MonitoringConfig, n: int) -> list[Series]:
        # Enough events that the stage is above error_ratio_min_events_per_second.
        per_minute = max(120, math.ceil(config.error_ratio_min_events_per_second * 60 * 2))
        failed = min(failed_per_minute, per_minute) if failed_per_minute >= 0 else per_minute
        return [Series("tree_events_processed_total", _target(stage=STAGE, status="completed"),
                       f"0+{per_minute - failed}x{n}"),
                Series("tree_events_processed_total", _target(stage=STAGE, status="failed"), f"0+{failed}x{n}")]
    return series


_COLLECTOR_SUCCESS = "treewatch_collector_success"
_LAST_SUCCESS = "treewatch_collector_last_success_timestamp_seconds"
# An exporter that reads the topics (unsharded, or shard 0): StageSLIMissing counts only its stages.
_topics_read = _constant(_COLLECTOR_SUCCESS, 1, collector="kafka_topics")

# alert name -> how to fire it and keep it quiet, from the thresholds. (The always-firing Watchdog is the
# committed tests' alone.)
_OFFSETS = "kafka_topic_partition_current_offset"
_STALLED = "kafka_consumer_group_topic_oldest_progress_timestamp_seconds"
_TOPIC_MAX_LAG_SECONDS = "kafka_consumer_group_topic_max_lag_seconds"
_DLQ_OLDEST = "tree_dlq_oldest_record_timestamp_seconds"
_BRIDGE = {"service": "bridge"}
_INTELLIGENCE = {ENV_LABEL: ENV, CLUSTER_LABEL: CLUSTER, "job": SERVICES_JOB, "service": "intelligence"}


def _processing_time(upper: Callable[[MonitoringConfig], float]) -> Inputs:
    """The intelligence service's own histogram (scraped from it, job SERVICES_JOB), every event taking
    more than the per-file budget but at most ``upper(config)`` seconds; at the budget, none is slower."""
    def series(config: MonitoringConfig, n: int) -> list[Series]:
        labels = {**_INTELLIGENCE, "instance": "intelligence:8053"}
        budget, bound = config.ingestion_seconds_per_file, upper(config)
        # 60 events a minute, all at most `bound` seconds; within the budget only when `bound` is the budget.
        buckets = {_number(budget): "0+60" if bound <= budget else "0", _number(bound): "0+60", "+Inf": "0+60"}
        return [Series("tree_event_processing_seconds_bucket", {**labels, "le": le}, f"{values}x{n}")
                for le, values in buckets.items()]
    return series


def _store_probe(success: int) -> Inputs:
    """The first of the stores' probes, failing (0) or good (1) throughout."""
    return lambda config, n: _constant("tree_service_probe_success", success, service=config.stores[0])(config, n)


def _store_stage(failing: bool) -> Inputs:
    """The stage writing into the stores: every event failed and dead-lettered, far past both
    thresholds IndexStoreDown reads (error ratio 1, 5 x the DLQ threshold in 5 minutes); or none."""
    def series(config: MonitoringConfig, n: int) -> list[Series]:
        stage = config.store_stage
        dlq = f"{stage}.dlq"
        per_minute = max(120, math.ceil(config.error_ratio_min_events_per_second * 60 * 2))
        dead_per_minute = max(config.dlq_overflow_records_5m, 1) if failing else 0
        return [
            Series("tree_pipeline_stage_info", _target(stage=stage, group=f"{stage}-group",
                                                        request_topic=f"{stage}.requests", dlq_topic=dlq), f"1x{n}"),
            Series("tree_events_processed_total", _target(stage=stage, status="failed"),
                   f"0+{per_minute if failing else 0}x{n}"),
            Series("tree_events_processed_total", _target(stage=stage, status="completed"),
                   f"0+{0 if failing else per_minute}x{n}"),
            Series(_OFFSETS, _target(topic=dlq, partition="0"), f"1000+{dead_per_minute}x{n}"),
        ]
    return series


def _store_labels(config: MonitoringConfig) -> Mapping[str, str]:
    return _target(service=config.stores[0])


THRESHOLD_CASES: dict[str, ThresholdCase] = {
    "HighConsumerLag": ThresholdCase(
        _all(_stage_info, _lag(lambda c: c.consumer_lag_records + 1)),
        _all(_stage_info, _lag(lambda c: c.consumer_lag_records)),
        _labels(**_target(stage=STAGE, **_GROUP_TOPIC))),
    "DLQOverflow": ThresholdCase(
        _all(_stage_info, _counter(_OFFSETS, _dead_letters_per_minute, topic=DLQ_TOPIC, partition="0")),
        _all(_stage_info, _constant(_OFFSETS, 1000, topic=DLQ_TOPIC, partition="0")),
        _labels(**_job(stage=STAGE, topic=DLQ_TOPIC)), holds_from=EVALUATION_INTERVAL),
    "DLQNewRecords": ThresholdCase(
        _all(_stage_info, _counter(_OFFSETS, lambda c: 1, topic=DLQ_TOPIC, partition="0")),
        _all(_stage_info, _constant(_OFFSETS, 1000, topic=DLQ_TOPIC, partition="0")),
        _labels(**_job(stage=STAGE, topic=DLQ_TOPIC)), holds_from=EVALUATION_INTERVAL),
    "LowThroughput": ThresholdCase(
        _low_throughput(lambda c: math.floor(_backlog(c)) + 1),
        _low_throughput(lambda c: math.floor(_backlog(c))),
        lambda c: _job(stage=_slow_stage(c)), holds_from=EVALUATION_INTERVAL),
    "HighErrorRate": ThresholdCase(
        _events(failed_per_minute=-1), _events(failed_per_minute=0),
        _labels(**_job(stage=STAGE)), holds_from=EVALUATION_INTERVAL),
    # Every event failing burns any budget in every window, fast and slow; none failing, none.
    "StageErrorBudgetBurn": ThresholdCase(
        _events(failed_per_minute=-1), _events(failed_per_minute=0),
        _labels(**_job(stage=STAGE)), holds_from=EVALUATION_INTERVAL),
    "StageSLIMissing": ThresholdCase(
        _all(_stage_info, _topics_read),
        _all(_stage_info, _topics_read,
             _counter("tree_events_processed_total", lambda c: 10, stage=STAGE, status="completed")),
        _labels(**_job(stage=STAGE))),
    "KafkaUnavailable": ThresholdCase(
        _constant(_COLLECTOR_SUCCESS, 0, collector="kafka_cluster"),
        _constant(_COLLECTOR_SUCCESS, 1, collector="kafka_cluster"),
        _labels(**_target(collector="kafka_cluster"))),
    "KafkaBrokersDown": ThresholdCase(
        _constant("kafka_cluster_brokers_down", 1), _constant("kafka_cluster_brokers_down", 0),
        _labels(**_target())),
    "KafkaLeaderlessPartitions": ThresholdCase(
        _constant("kafka_topic_leaderless_partitions", 1, topic=TOPIC),
        _constant("kafka_topic_leaderless_partitions", 0, topic=TOPIC), _labels(**_target(topic=TOPIC))),
    "KafkaUnderReplicatedPartitions": ThresholdCase(
        _constant("kafka_topic_under_replicated_partitions", 1, topic=TOPIC),
        _constant("kafka_topic_under_replicated_partitions", 0, topic=TOPIC), _labels(**_target(topic=TOPIC))),
    "ConsumerGroupStalled": ThresholdCase(
        _all(_stage_info, _lag(lambda c: 5),
             _age(_STALLED, lambda c: c.consumer_stalled_seconds, EVALUATION_INTERVAL, **_GROUP_TOPIC)),
        _all(_stage_info, _lag(lambda c: 5), _age(_STALLED, lambda c: c.consumer_stalled_seconds, 0, **_GROUP_TOPIC)),
        _labels(**_target(stage=STAGE, **_GROUP_TOPIC))),
    "ConsumerGroupNoMembers": ThresholdCase(
        _all(_stage_info, _lag(lambda c: 5), _constant("kafka_consumer_group_members", 0, group=GROUP)),
        _all(_stage_info, _lag(lambda c: 5), _constant("kafka_consumer_group_members", 1, group=GROUP)),
        _labels(**_target(group=GROUP, stage=STAGE))),
    "ConsumerLagTooOld": ThresholdCase(
        _all(_stage_info, _constant(_TOPIC_MAX_LAG_SECONDS, lambda c: c.consumer_lag_max_age_seconds + 1,
                                    **_GROUP_TOPIC)),
        _all(_stage_info, _constant(_TOPIC_MAX_LAG_SECONDS, lambda c: c.consumer_lag_max_age_seconds,
                                    **_GROUP_TOPIC)),
        _labels(**_target(group=GROUP, stage=STAGE, topic=TOPIC))),
    "KafkaConsumerGroupsPartiallyRead": ThresholdCase(
        _constant("kafka_consumer_group_read_errors", lambda c: c.consumer_group_read_errors + 1),
        _constant("kafka_consumer_group_read_errors", lambda c: c.consumer_group_read_errors),
        _labels(**_target())),
    "DLQRecordsUnhandled": ThresholdCase(
        _age(_DLQ_OLDEST, lambda c: c.dlq_oldest_record_max_age_seconds, EVALUATION_INTERVAL, topic=DLQ_TOPIC,
             stage=STAGE),
        _age(_DLQ_OLDEST, lambda c: c.dlq_oldest_record_max_age_seconds, 0, topic=DLQ_TOPIC, stage=STAGE),
        _labels(**_target(topic=DLQ_TOPIC, stage=STAGE))),
    "TreeServiceDown": ThresholdCase(
        _constant("tree_service_probe_success", 0, **_BRIDGE), _constant("tree_service_probe_success", 1, **_BRIDGE),
        _labels(**_target(**_BRIDGE))),
    "TreeServiceDegraded": ThresholdCase(
        _constant("tree_service_status", 1, status="degraded", **_BRIDGE),
        _constant("tree_service_status", 0, status="degraded", **_BRIDGE),
        _labels(**_target(status="degraded", **_BRIDGE))),
    "StoreUnavailable": ThresholdCase(_store_probe(0), _store_probe(1), _store_labels),
    "IndexStoreDown": ThresholdCase(
        _all(_store_probe(0), _store_stage(failing=True)), _all(_store_probe(0), _store_stage(failing=False)),
        _store_labels, holds_from=EVALUATION_INTERVAL),
    "TreewatchExporterDown": ThresholdCase(_constant("up", 0), _constant("up", 1), _labels(**_target())),
    "TreewatchExporterMissing": ThresholdCase(
        lambda c, n: [Series("up", {"job": "another-job", "instance": "x:1"}, f"1x{n}")],
        _constant("up", 1), _labels(job=EXPORTER_JOB)),
    "TreewatchCollectorFailing": ThresholdCase(
        _constant(_COLLECTOR_SUCCESS, 0, collector="services"),
        _constant(_COLLECTOR_SUCCESS, 1, collector="services"), _labels(**_target(collector="services"))),
    "TreewatchDataStale": ThresholdCase(
        _all(_constant(_COLLECTOR_SUCCESS, 1, collector="services"),
             _age(_LAST_SUCCESS, lambda c: c.data_stale_seconds, EVALUATION_INTERVAL, collector="services")),
        _all(_constant(_COLLECTOR_SUCCESS, 1, collector="services"),
             _age(_LAST_SUCCESS, lambda c: c.data_stale_seconds, 0, collector="services")),
        _labels(**_target(collector="services"))),
    "SlowProjectIngestion": ThresholdCase(
        _processing_time(lambda c: 2 * c.ingestion_seconds_per_file),
        _processing_time(lambda c: c.ingestion_seconds_per_file),
        _labels(**_INTELLIGENCE), holds_from=EVALUATION_INTERVAL),
}


# -- the test files -------------------------------------------------------------------------------

def _in_environment(case: ThresholdCase, env: str, values: MonitoringConfig) -> ThresholdCase:
    """``case`` with the thresholds of ``values`` and every input series in environment ``env``."""
    def inputs(make: Inputs) -> Inputs:
        return lambda _, n: [replace(series, labels={**series.labels, ENV_LABEL: env}) for series in make(values, n)]
    return replace(case, firing=inputs(case.firing), quiet=inputs(case.quiet),
                   labels=lambda _: _relabelled(case.labels(values), env))


def _relabelled(labels: Mapping[str, str], env: str) -> dict[str, str]:
    # An alert with no env label (TreewatchExporterMissing's absent()) keeps having none.
    return {**labels, ENV_LABEL: env} if ENV_LABEL in labels else dict(labels)


def _alert_rules(rules: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def _selector(metric: str, labels: Mapping[str, str]) -> str:
    return metric + "{" + ", ".join(f"{name}={json.dumps(value)}" for name, value in sorted(labels.items())) + "}"


def _input(series: list[Series]) -> list[dict[str, str]]:
    return [{"series": _selector(s.metric, s.labels), "values": s.values} for s in series]


def threshold_tests(config: MonitoringConfig) -> list[dict[str, Any]]:
    """Two test groups per alert of THRESHOLD_CASES the deployment keeps: fired just past its threshold,
    pending one evaluation before its ``for`` has elapsed and firing when it has; and quiet at it."""
    groups = []
    for rule in _alert_rules(rule_file(config)):
        case = THRESHOLD_CASES.get(rule["alert"])
        if case is None:
            continue
        # An environment's own copy of an alert (alerts.rules.rule_groups) is tested on its series with
        # its thresholds, the shared rule on the series of an environment without thresholds of its own.
        env = rule["labels"].get(ENV_LABEL)
        if env in config.threshold_environments:
            case = _in_environment(case, env, config.for_environment(env))
        elif config.threshold_environments:
            case = _in_environment(case, SHARED_ENV, config)
        hold = parse_duration(rule.get("for", "0s"))
        fires_at = case.holds_from + math.ceil(hold / EVALUATION_INTERVAL) * EVALUATION_INTERVAL
        samples = fires_at // EVALUATION_INTERVAL + 3
        firing = _selector("ALERTS", {**case.labels(config), **rule["labels"], "alertname": rule["alert"],
                                      "alertstate": "firing"})
        # The rule's own labels tell apart rules of one alert name (StageErrorBudgetBurn's fast and slow).
        query = _selector("ALERTS", {**rule["labels"], "alertname": rule["alert"], "alertstate": "firing"})
        checks = [{"expr": query, "eval_time": f"{fires_at}s", "exp_samples": [{"labels": firing, "value": 1}]}]
        if fires_at >= EVALUATION_INTERVAL:
            checks.insert(0, {"expr": query, "eval_time": f"{fires_at - EVALUATION_INTERVAL}s", "exp_samples": []})
        groups.append({"name": f"{rule['alert']} fires past its threshold once its for ({rule.get('for', '0s')}) "
                               "has elapsed",
                       "interval": f"{EVALUATION_INTERVAL}s", "input_series": _input(case.firing(config, samples)),
                       "promql_expr_test": checks})
        groups.append({"name": f"{rule['alert']} stays quiet at its threshold", "interval": f"{EVALUATION_INTERVAL}s",
                       "input_series": _input(case.quiet(config, samples)),
                       "promql_expr_test": [{"expr": query, "eval_time": f"{fires_at + EVALUATION_INTERVAL}s",
                                             "exp_samples": []}]})
    return groups


def _comparable(rule: Mapping[str, Any], config: MonitoringConfig) -> dict[str, Any]:
    """A rule without what a deployment changes around it: its links and the extra labels."""
    labels = {name: value for name, value in rule.get("labels", {}).items() if name not in config.extra_labels}
    annotations = {name: value for name, value in rule.get("annotations", {}).items()
                   if name not in ("runbook_url", "dashboard_url")}
    return {**rule, "labels": labels, "annotations": annotations}


def unchanged_alerts(config: MonitoringConfig) -> set[str]:
    """Alerts whose rules are the shipped ones but for links and extra labels: the committed tests hold for them."""
    def by_name(rules: dict[str, Any], values: MonitoringConfig) -> dict[str, list[dict[str, Any]]]:
        named: dict[str, list[dict[str, Any]]] = {}
        for rule in _alert_rules(rules):
            named.setdefault(rule["alert"], []).append(_comparable(rule, values))
        return named

    shipped, configured = by_name(rule_file(CONFIG), CONFIG), by_name(rule_file(config), config)
    return {name for name, rules in configured.items() if shipped.get(name) == rules}


def _changed_recordings(config: MonitoringConfig) -> set[str]:
    def recordings(rules: dict[str, Any]) -> set[tuple[str, str]]:
        return {(rule["record"], rule["expr"]) for group in rules["groups"] for rule in group["rules"]
                if "record" in rule}
    return {record for record, _ in recordings(rule_file(CONFIG)) - recordings(rule_file(config))}


def _adapted(case: dict[str, Any], config: MonitoringConfig) -> dict[str, Any]:
    """A committed alert_rule_test case with the deployment's links and extra labels expected."""
    shipped_grafana, grafana = CONFIG.grafana_url.rstrip("/"), config.grafana_url.rstrip("/")
    alerts = []
    for alert in case["exp_alerts"]:
        annotations = dict(alert.get("exp_annotations", {}))
        if "runbook_url" in annotations:
            annotations["runbook_url"] = config.runbook_url(case["alertname"])
        if "dashboard_url" in annotations:
            annotations["dashboard_url"] = grafana + annotations["dashboard_url"].removeprefix(shipped_grafana)
        alerts.append({**alert, "exp_labels": {**alert.get("exp_labels", {}), **config.extra_labels},
                       **({"exp_annotations": annotations} if "exp_annotations" in alert else {})})
    return {**case, "exp_alerts": alerts}


def committed_tests(config: MonitoringConfig) -> dict[str, dict[str, Any]]:
    """file name -> the committed test file's content as it holds for the deployment: the cases of the
    alerts it left as shipped, and of the recording rules it did not change."""
    unchanged = unchanged_alerts(config)
    changed_records = _changed_recordings(config)
    kept_groups = [group["name"] for group in rule_file(config)["groups"]]
    files = {}
    for path in sorted(COMMITTED_TESTS.glob("*.yml")):
        content = yaml.safe_load(path.read_text())
        tests = []
        for group in content["tests"]:
            alert_cases = [_adapted(case, config) for case in group.get("alert_rule_test", [])
                           if case["alertname"] in unchanged]
            expr_cases = [case for case in group.get("promql_expr_test", [])
                          if not any(record in case["expr"] for record in changed_records)]
            if alert_cases or expr_cases:
                tests.append({**{key: value for key, value in group.items()
                                 if key not in ("alert_rule_test", "promql_expr_test")},
                              **({"alert_rule_test": alert_cases} if alert_cases else {}),
                              **({"promql_expr_test": expr_cases} if expr_cases else {})})
        if tests:
            order = [name for name in content.get("group_eval_order", []) if name in kept_groups]
            files[path.name] = {**content, "group_eval_order": order, "tests": tests}
    return files


def untested_alerts(config: MonitoringConfig) -> list[str]:
    """The deployment's alerts no test of its suite makes fire: changed by it, and without a threshold case."""
    unchanged = unchanged_alerts(config)
    return sorted({rule["alert"] for rule in _alert_rules(rule_file(config))}
                  - unchanged - set(THRESHOLD_CASES))


THRESHOLD_TESTS_FILE = "thresholds.yml"


def test_files(config: MonitoringConfig, rules_path: str) -> dict[str, dict[str, Any]]:
    """file name -> promtool test file of the deployment's rule file, which is at ``rules_path``
    relative to the test files."""
    order = [group["name"] for group in rule_file(config)["groups"]]
    files = {name: {**content, "rule_files": [rules_path]} for name, content in committed_tests(config).items()}
    files[THRESHOLD_TESTS_FILE] = {"rule_files": [rules_path], "evaluation_interval": f"{EVALUATION_INTERVAL}s",
                                   "group_eval_order": order, "tests": threshold_tests(config)}
    return files
