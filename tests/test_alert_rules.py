"""The generated Prometheus rules: up to date, valid for promtool, passing the promtool unit tests
in alerts/tests, complete in labels and annotations, linked to runbook sections that exist, and
reading only metrics the exporter defines."""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts import generate
from alerts.config import CONFIG, GROUPS_DLQ_DASHBOARD_UID, OVERVIEW_DASHBOARD_UID, runbook_anchor
from alerts.promql import metric_names
from exporter import metrics

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "generated" / generate.RULES_FILE
PROMTOOL_TESTS = sorted((ROOT / "alerts" / "tests").glob("*.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"
PROMTOOL = "/usr/bin/promtool"
GUIDE_ALERTS = ("HighConsumerLag", "DLQOverflow", "LowThroughput", "HighErrorRate")
# Alerts whose value says nothing (absent() is always 1, Watchdog is vector(1)).
VALUELESS = {"StageSLIMissing", "TreewatchExporterMissing", "Watchdog"}


def _rules_file() -> dict[str, Any]:
    return yaml.safe_load(RULES.read_text())


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in _rules_file()["groups"] for rule in group["rules"] if "alert" in rule]


def _recording_rules() -> list[dict[str, Any]]:
    return [rule for group in _rules_file()["groups"] for rule in group["rules"] if "record" in rule]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smhd])", duration))


def _runbook_anchors() -> set[str]:
    """GitHub's anchors for the runbook's headings."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    return {runbook_anchor(heading) for heading in headings}


def _promtool_cases() -> list[dict[str, Any]]:
    """Every alert_rule_test case with its test group's index, across all promtool test files."""
    cases = []
    for path in PROMTOOL_TESTS:
        for index, group in enumerate(yaml.safe_load(path.read_text())["tests"]):
            for case in group.get("alert_rule_test", []):
                cases.append({**case, "group": (path.name, index)})
    return cases


def test_generated_files_are_up_to_date() -> None:
    for name, content in generate.render(CONFIG).items():
        committed = ROOT / "alerts" / "generated" / name
        assert committed.read_text() == content, f"{committed} is stale: run `make generate`"
        assert "do not edit" in content.splitlines()[0]


def test_promtool_check_rules() -> None:
    result = _run(PROMTOOL, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests() -> None:
    assert PROMTOOL_TESTS, "no promtool tests in alerts/tests"
    result = _run(PROMTOOL, "test", "rules", *map(str, PROMTOOL_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_has_labels_and_annotations(rule: dict[str, Any]) -> None:
    assert re.fullmatch(r"(?:[A-Z][a-z0-9]*|[A-Z]+(?=[A-Z][a-z]|$))+", rule["alert"]), "name is not CamelCase"
    assert rule["labels"]["severity"] in ("critical", "warning", "info")
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url", "dashboard_url"}
    assert "{{" not in annotations["summary"], "summary must be static"
    assert "{{" in annotations["description"], "description must be templated"
    if rule["alert"] not in VALUELESS:
        assert re.search(r"\$value \| humanize", annotations["description"]), "value not shown"
    assert annotations["runbook_url"] == f"{CONFIG.runbook_base_url}#{runbook_anchor(rule['alert'])}"
    assert runbook_anchor(rule["alert"]) in _runbook_anchors(), f"docs/runbooks.md has no section for {rule['alert']}"
    assert annotations["dashboard_url"] in {
        CONFIG.dashboard_url(OVERVIEW_DASHBOARD_UID), CONFIG.dashboard_url(GROUPS_DLQ_DASHBOARD_UID)
    }


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda rule: rule["alert"])
def test_annotations_use_only_labels_the_expression_keeps(rule: dict[str, Any]) -> None:
    """The labels an alert really carries are those promtool saw it fire with."""
    fired = [case for case in _promtool_cases() if case["alertname"] == rule["alert"] and case["exp_alerts"]]
    kept = {label for case in fired for alert in case["exp_alerts"] for label in alert["exp_labels"]}
    used = set(re.findall(r"\$labels\.(\w+)", rule["annotations"]["description"]))
    assert fired, f"{rule['alert']} never fires in a promtool test"
    assert used <= kept, f"{rule['alert']}'s description uses {used - kept}, which its expression drops"


def test_every_alert_fires_and_stays_quiet_on_both_sides_of_its_for() -> None:
    cases_by_group: dict[tuple[str, tuple[str, int]], list[dict[str, Any]]] = defaultdict(list)
    for case in _promtool_cases():
        cases_by_group[(case["alertname"], case["group"])].append(case)
    for rule in _alert_rules():
        hold = _seconds(rule.get("for", "0s"))
        name = rule["alert"]
        mine = [cases for (alert, _), cases in cases_by_group.items() if alert == name]
        assert any(c["exp_alerts"] for cases in mine for c in cases), f"{name}: no firing case"
        if name == "Watchdog":
            continue  # always fires, by design
        assert any(not c["exp_alerts"] for cases in mine for c in cases), f"{name}: no quiet case"
        # Quiet within `for` of a firing evaluation of the same series: the pending side.
        assert any(
            0 < _seconds(fire["eval_time"]) - _seconds(quiet["eval_time"]) <= hold
            for cases in mine for fire in cases if fire["exp_alerts"]
            for quiet in cases if not quiet["exp_alerts"]
        ), f"{name}: no quiet case within its `for` ({rule.get('for')}) before it fires"


def test_guide_alerts_check_rendered_annotations() -> None:
    for name in GUIDE_ALERTS:
        rendered = [alert["exp_annotations"] for case in _promtool_cases() if case["alertname"] == name
                    for alert in case["exp_alerts"]]
        assert rendered and all("{{" not in a["description"] for a in rendered), name


def test_guide_alerts_keep_their_names_thresholds_for_and_severity() -> None:
    rules = {rule["alert"]: rule for rule in _alert_rules()}
    expected = {
        "HighConsumerLag": ("5m", "warning", f"> {CONFIG.consumer_lag_records}"),
        "DLQOverflow": ("1m", "critical", f"> {CONFIG.dlq_overflow_records_5m}"),
        "LowThroughput": ("5m", "warning", f"< {CONFIG.low_throughput_events_per_second}"),
        "HighErrorRate": ("5m", "critical", f"> {CONFIG.error_ratio}"),
    }
    for name, (hold, severity, threshold) in expected.items():
        assert (rules[name]["for"], rules[name]["labels"]["severity"]) == (hold, severity), name
        assert threshold in rules[name]["expr"], name


def test_burn_rate_alerts_are_tested_fast_and_slow() -> None:
    burns = {alert["exp_labels"].get("burn") for case in _promtool_cases()
             if case["alertname"] == "StageErrorBudgetBurn" for alert in case["exp_alerts"]}
    assert burns == {"fast", "slow"}


def test_every_recording_rule_has_an_expression_test() -> None:
    tested = set()
    for path in PROMTOOL_TESTS:
        for group in yaml.safe_load(path.read_text())["tests"]:
            tested |= {case["expr"] for case in group.get("promql_expr_test", []) if case["exp_samples"]}
    missing = {rule["record"] for rule in _recording_rules()} - tested
    assert not missing, f"recording rules without a promql_expr_test: {missing}"


def test_every_metric_in_every_expression_is_defined() -> None:
    known = metrics.names() | metrics.service_metric_names() | {rule["record"] for rule in _recording_rules()} | {"up"}
    for rule in _alert_rules() + _recording_rules():
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('alert') or rule.get('record')} reads undefined metrics {unknown}"


def test_undefined_metric_is_caught() -> None:
    known = metrics.names()
    assert metric_names("rate(tree_events_procesed_total[5m]) > 0") - known == {"tree_events_procesed_total"}
