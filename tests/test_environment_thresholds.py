"""Per-environment thresholds: `monitoring.environments.<env>.thresholds` (e.g. prod tolerates more
lag than dev) give each alert they change a copy that watches only that environment, while the
shared rule watches every other one. Checked with promtool on series of two environments, and the
generated threshold tests of such a deployment pass."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from alerts.config import CONFIG, overridable_fields
from alerts.rules import recordings

ROOT = Path(__file__).resolve().parent.parent

DEPLOYMENT = """\
monitoring:
  environments:
    prod:
      thresholds: {consumer_lag_records: 50000, high_consumer_lag_for: 1m}
    dev:
      pages: false
"""

# The lag of one group in each environment; dev keeps the shipped threshold (10000, for 5m). Counted
# per environment, so an alert firing twice (the shared rule and the copy) would show as 2.
UNIT_TEST = """\
rule_files: [{rules}]
evaluation_interval: 1m
tests:
- interval: 1m
  input_series:
{series}
  promql_expr_test:
  - expr: count by (env) (ALERTS{{alertname="HighConsumerLag", alertstate="firing"}})
    eval_time: 10m
    exp_samples:
{expected}
"""


def _lag_series(env: str, group: str, lag: int) -> str:
    labels = f'env="{env}", cluster="kafka-{env}", job="treewatch", instance="exporter-{env}:9847"'
    return (f"  - series: 'tree_pipeline_stage_info{{{labels}, stage=\"index\", group=\"{group}\", "
            f"request_topic=\"{env}.requests\", dlq_topic=\"{env}.dlq\"}}'\n    values: 1x15\n"
            f"  - series: 'kafka_consumer_group_topic_max_lag{{{labels}, group=\"{group}\", "
            f"topic=\"{env}.requests\"}}'\n    values: {lag}x15\n")


def _generate(tmp_path: Path, monitoring: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "treewatch.yaml"
    config.write_text(monitoring)
    return subprocess.run([sys.executable, "-m", "treewatch", "generate", "--config", str(config), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("environments")
    result = _generate(tmp_path, DEPLOYMENT)
    assert result.returncode == 0, result.stderr
    return tmp_path / "out"


def _rules_file(deployment: Path) -> Path:
    (rules,) = (deployment / "alerts").glob("*rules*.yml")
    return rules


def test_only_the_alerts_an_environment_changes_are_copied_for_it(deployment: Path) -> None:
    rules = yaml.safe_load(_rules_file(deployment).read_text())
    copies = [rule for group in rules["groups"] for rule in group["rules"] if rule.get("labels", {}).get("env")]
    assert {rule["alert"] for rule in copies} == {"HighConsumerLag"}
    (copy,) = copies
    assert copy["for"] == "1m" and "> 50000" in copy["expr"]
    assert 'label_replace(vector(1), "env", "prod"' in copy["expr"]
    shared = [rule for group in rules["groups"] for rule in group["rules"]
              if rule.get("alert") == "HighConsumerLag" and "env" not in rule.get("labels", {})]
    assert len(shared) == 1 and shared[0]["for"] == "5m" and "unless on (env)" in shared[0]["expr"]
    # Duplicate rules are an error with --lint-fatal: the copy's env label tells it apart.
    result = subprocess.run(["promtool", "check", "rules", "--lint=all", "--lint-fatal", str(_rules_file(deployment))],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("dev_lag", "prod_lag", "firing"), [
    (20_000, 20_000, ["dev"]),           # over dev's 10000, under prod's 50000
    (5_000, 60_000, ["prod"]),           # prod fires on its own threshold, once
    (20_000, 60_000, ["dev", "prod"]),   # each environment once, never twice
    (5_000, 5_000, []),
])
def test_each_environment_is_judged_by_its_own_threshold(deployment: Path, tmp_path: Path, dev_lag: int,
                                                         prod_lag: int, firing: list[str]) -> None:
    expected = "".join(f"    - labels: '{{env=\"{env}\"}}'\n      value: 1\n" for env in firing) or "      []"
    test = tmp_path / "lag.yml"
    test.write_text(UNIT_TEST.format(rules=_rules_file(deployment), expected=expected.rstrip("\n"),
                                     series=_lag_series("dev", "dev-index", dev_lag)
                                     + _lag_series("prod", "prod-index", prod_lag)))
    result = subprocess.run(["promtool", "test", "rules", str(test)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_generated_tests_of_such_a_deployment_pass(deployment: Path) -> None:
    tests = sorted((deployment / "tests").glob("*.yml"))
    assert any(path.name == "thresholds.yml" for path in tests)
    text = (deployment / "tests" / "thresholds.yml").read_text()
    assert "HighConsumerLag fires past its threshold once its for (1m)" in text  # prod's copy is tested too
    result = subprocess.run(["promtool", "test", "rules", *map(str, tests)], capture_output=True, text=True,
                            cwd=deployment / "tests")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


@pytest.mark.parametrize(("thresholds", "expected"), [
    ("{consumer_lag_recordz: 5}", "monitoring.environments.prod.thresholds.consumer_lag_recordz: not a threshold"),
    ("{slack_oncall_channel: '#x'}", "monitoring.environments.prod.thresholds.slack_oncall_channel: not a threshold"),
    ("{consumer_lag_records: -1}", "consumer_lag_records: expected at least 0, got integer -1"),
    ("{high_consumer_lag_for: soon}", "high_consumer_lag_for: expected"),
])
def test_a_bad_threshold_names_the_environment_and_field(tmp_path: Path, thresholds: str, expected: str) -> None:
    result = _generate(tmp_path, f"monitoring:\n  environments:\n    prod:\n      thresholds: {thresholds}\n")
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stderr
    assert not (tmp_path / "out").exists()


def test_no_threshold_an_environment_may_set_changes_a_recording_rule() -> None:
    # Recording rules are shared by every environment; the copies rule_groups makes are alerts only.
    shipped = recordings(CONFIG)
    for name in overridable_fields():
        value = getattr(CONFIG, name)
        other = "7m" if isinstance(value, str) else value / 2 if value else 1
        assert recordings(replace(CONFIG, **{name: other})) == shipped, name
