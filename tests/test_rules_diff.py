"""``treewatch rules diff`` through the real command line: on rule files derived from the generated one
(a threshold, a `for` and a severity changed, an alert removed, one added), on git refs of a temporary
repository (rules and Alertmanager routes), and on inputs that are not rule files at all."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts import generate
from alerts.rules_diff import thresholds

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "alerts" / "generated"
GENERATED_RULES = yaml.safe_load((GENERATED / generate.RULES_FILE).read_text())
GENERATED_ALERTMANAGER = yaml.safe_load((GENERATED / generate.ALERTMANAGER_FILE).read_text())

NEW_ALERT = {
    "alert": "StampQueueGrowing",
    "expr": "deriv(stage:kafka_consumer_group_lag:sum{stage=~\"stamp|index\"}[15m]) > 5",
    "for": "15m",
    "labels": {"severity": "warning"},
    "annotations": {"summary": "The stamp stage's backlog grows"},
}


def treewatch(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "treewatch", "rules", "diff", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd, env=_environment())


def _environment() -> dict[str, str]:
    import os

    # The command runs from other folders (the temporary repository): it still imports this checkout.
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _rule(document: dict[str, Any], name: str) -> dict[str, Any]:
    (rule,) = [rule for group in document["groups"] for rule in group["rules"] if rule.get("alert") == name]
    return rule


def _changed_rules(document: dict[str, Any]) -> dict[str, Any]:
    """The generated rules with what a pull request typically does to them."""
    changed = copy.deepcopy(document)
    lag = _rule(changed, "HighConsumerLag")
    assert lag["expr"].endswith("> 10000")
    lag["expr"] = lag["expr"].removesuffix("> 10000") + "> 20000"
    _rule(changed, "DLQOverflow")["for"] = "3m"
    _rule(changed, "LowThroughput")["labels"]["severity"] = "critical"
    _rule(changed, "TreeServiceDown")["annotations"]["summary"] = "A tree stamping service is unreachable"
    stalled = _rule(changed, "ConsumerGroupStalled")
    stalled["expr"] = stalled["expr"].replace("> 600", "> 900").replace(" and ", " and on (job, group) ", 1)
    for group in changed["groups"]:
        group["rules"] = [rule for rule in group["rules"] if rule.get("alert") != "DLQNewRecords"]
        if group["name"] == "tree_stamping_alerts":
            group["rules"].append(NEW_ALERT)
        if group["name"] == "treewatch.recording":
            group["rules"][0]["expr"] = group["rules"][0]["expr"].replace("max without", "min without")
    return changed


def _write(path: Path, document: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False, width=1000))
    return path


def _changes(section: dict[str, Any], name: str) -> dict[str, tuple[str | None, str | None]]:
    (entry,) = [entry for entry in section["changed"] if entry["name"] == name]
    return {change["field"]: (change["old"], change["new"]) for change in entry["changes"]}


# -- two rule files -------------------------------------------------------------------------------------


@pytest.fixture
def rule_files(tmp_path: Path) -> tuple[Path, Path]:
    return _write(tmp_path / "old.yml", GENERATED_RULES), _write(tmp_path / "new.yml", _changed_rules(GENERATED_RULES))


def test_identical_rule_files_differ_in_nothing() -> None:
    result = treewatch(str(GENERATED / generate.RULES_FILE), str(GENERATED / generate.RULES_FILE))
    assert result.returncode == 0, result.stderr
    assert "No change to alerts" in result.stdout


def test_json_names_every_change_a_reviewer_looks_for(rule_files: tuple[Path, Path]) -> None:
    result = treewatch(*map(str, rule_files), "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    alerts = report["alerts"]
    assert report["differences"] is True
    assert [entry["name"] for entry in alerts["added"]] == ["StampQueueGrowing"]
    assert alerts["added"][0]["fields"]["for"] == "15m"
    assert [entry["name"] for entry in alerts["removed"]] == ["DLQNewRecords"]
    assert _changes(alerts, "HighConsumerLag") == {"threshold": ("> 10000", "> 20000")}
    assert _changes(alerts, "DLQOverflow") == {"for": ("1m", "3m")}
    assert _changes(alerts, "LowThroughput") == {"labels.severity": ("warning", "critical")}
    assert _changes(alerts, "TreeServiceDown") == {
        "annotations.summary": ("A tree stamping service is down", "A tree stamping service is unreachable")}
    # A threshold that moved in an expression that changed otherwise too: the expression, shown whole.
    (old_stalled, new_stalled), = _changes(alerts, "ConsumerGroupStalled").values()
    assert "> 600 and kafka_consumer_group_topic_lag" in old_stalled
    assert "> 900 and on (job, group) kafka_consumer_group_topic_lag" in new_stalled
    assert {entry["name"] for entry in alerts["changed"]} == {
        "HighConsumerLag", "DLQOverflow", "LowThroughput", "TreeServiceDown", "ConsumerGroupStalled"}
    (recording,) = report["recording_rules"]["changed"]
    assert recording["name"] == GENERATED_RULES["groups"][0]["rules"][0]["record"]
    assert [change["field"] for change in recording["changes"]] == ["expr"]
    # Two files of rules: nothing of Alertmanager's is compared, so nothing of it is reported.
    assert all(not report[name][kind] for name in ("routes", "receivers", "inhibit_rules")
               for kind in ("added", "removed", "changed"))


def test_markdown_reads_as_a_pull_request_summary(rule_files: tuple[Path, Path]) -> None:
    result = treewatch(*map(str, rule_files))
    assert result.returncode == 1, result.stderr
    text = result.stdout
    assert text.startswith(f"## Alert rules and routing: `{rule_files[0]}` → `{rule_files[1]}`")
    assert "**Alerts**: 1 added, 1 removed, 5 changed · **Recording rules**: 1 changed" in text
    # Outside a table PromQL's `|` stays as it is.
    assert ('### Alerts added\n\n- `StampQueueGrowing` (warning, for 15m): '
            '`deriv(stage:kafka_consumer_group_lag:sum{stage=~"stamp|index"}[15m]) > 5`') in text
    assert "### Alerts removed\n\n- `DLQNewRecords` (warning, for 1m): " in text
    assert "#### `HighConsumerLag`\n\n| | old | new |\n|---|---|---|\n| threshold | `> 10000` | `> 20000` |" in text
    assert "| `for` | `1m` | `3m` |" in text
    assert "| severity | `warning` | `critical` |" in text
    assert "```diff\n- " in text and "min without" in text  # the recording rule's old and new expression
    # A table cell never breaks on PromQL's `|` (regex alternatives, the humanize pipe).
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| |"):
            assert line.replace("\\|", "").count("|") == 4, line


def test_a_label_beside_severity_pairs_rules_of_one_name(tmp_path: Path) -> None:
    """StageErrorBudgetBurn exists twice (fast and slow burn): each pairs with its own."""
    changed = copy.deepcopy(GENERATED_RULES)
    for group in changed["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "StageErrorBudgetBurn" and rule["labels"]["burn"] == "slow":
                rule["for"] = "30m"
    result = treewatch(str(_write(tmp_path / "old.yml", GENERATED_RULES)),
                       str(_write(tmp_path / "new.yml", changed)), "--json")
    assert result.returncode == 1, result.stderr
    alerts = json.loads(result.stdout)["alerts"]
    assert _changes(alerts, 'StageErrorBudgetBurn{burn="slow"}') == {"for": ("15m", "30m")}
    assert not alerts["added"] and not alerts["removed"] and len(alerts["changed"]) == 1


def test_two_alertmanager_configs_compare_their_routes(tmp_path: Path) -> None:
    changed = copy.deepcopy(GENERATED_ALERTMANAGER)
    routes = changed["route"]["routes"]
    critical = next(route for route in routes if route.get("matchers") == ['severity="critical"'])
    critical["repeat_interval"] = "30m"
    routes.remove(next(route for route in routes if route.get("matchers") == ['severity="info"']))
    result = treewatch(str(_write(tmp_path / "old.yml", GENERATED_ALERTMANAGER)),
                       str(_write(tmp_path / "new.yml", changed)), "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert _changes(report["routes"], 'severity="critical"') == {"repeat_interval": ("1h", "30m")}
    assert [entry["name"] for entry in report["routes"]["removed"]] == ['severity="info"']
    assert not report["alerts"]["changed"]


def test_threshold_finder_ignores_comparisons_inside_strings() -> None:
    assert thresholds('rate(x{le=">5", a=~"b|c"}[5m]) > bool 0.5 and y < 16.67 or z == -1e3') == [
        "> bool 0.5", "< 16.67", "== -1e3"]
    assert thresholds("a > b") == []


# -- git refs -------------------------------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _commit(repo: Path, rules: Any, alertmanager: Any, message: str) -> str:
    _write(repo / "alerts" / "generated" / generate.RULES_FILE, rules)
    _write(repo / "alerts" / "generated" / generate.ALERTMANAGER_FILE, alertmanager)
    _git(repo, "add", "alerts")
    _git(repo, "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    repo = tmp_path / "deployment"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "README").write_text("before the generated files\n")
    _git(repo, "add", "README")
    _git(repo, "commit", "-q", "-m", "start")
    _git(repo, "tag", "start")
    _commit(repo, GENERATED_RULES, GENERATED_ALERTMANAGER, "generated files")
    _git(repo, "tag", "base")
    changed_am = copy.deepcopy(GENERATED_ALERTMANAGER)
    routes = changed_am["route"]["routes"]
    warning = next(route for route in routes if route.get("matchers") == ['severity="warning"'])
    warning["receiver"] = "slack-oncall"
    routes.append({"matchers": ['team="storage"'], "receiver": "slack-oncall", "continue": True})
    _commit(repo, _changed_rules(GENERATED_RULES), changed_am, "a pull request")
    return repo


def test_git_refs_compare_rules_and_routes(repository: Path) -> None:
    result = treewatch("base", "HEAD", "--json", cwd=repository)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert _changes(report["alerts"], "HighConsumerLag") == {"threshold": ("> 10000", "> 20000")}
    assert [entry["name"] for entry in report["alerts"]["removed"]] == ["DLQNewRecords"]
    assert _changes(report["routes"], 'severity="warning"') == {"receiver": ("slack-alerts", "slack-oncall")}
    (added,) = report["routes"]["added"]
    assert (added["name"], added["fields"]) == ('team="storage"', {"receiver": "slack-oncall", "continue": "true"})
    markdown = treewatch("base", "HEAD", cwd=repository).stdout
    assert "### Alertmanager routes added\n\n- `team=\"storage\"` → `slack-oncall`" in markdown
    assert "| receiver | `slack-alerts` | `slack-oncall` |" in markdown


def test_git_refs_from_another_folder_with_repo(repository: Path, tmp_path: Path) -> None:
    head = _git(repository, "rev-parse", "HEAD")
    result = treewatch(head, head, "--repo", str(repository), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "No change" in result.stdout


def test_a_base_without_the_generated_files_adds_everything(repository: Path) -> None:
    result = treewatch("start", "base", "--json", cwd=repository)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    alert_count = sum("alert" in rule for group in GENERATED_RULES["groups"] for rule in group["rules"])
    assert len(report["alerts"]["added"]) == alert_count and not report["alerts"]["removed"]
    assert {entry["name"] for entry in report["routes"]["added"]} >= {"(root)", 'severity="critical"'}


def test_a_file_and_a_ref_compare_the_rules(repository: Path) -> None:
    base_rules = repository / "base-rules.yml"
    _write(base_rules, GENERATED_RULES)
    result = treewatch(str(base_rules), "HEAD", "--json", cwd=repository)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert _changes(report["alerts"], "DLQOverflow") == {"for": ("1m", "3m")}
    assert not report["routes"]["changed"] and not report["routes"]["added"]


# -- bad input -------------------------------------------------------------------------------------------------


def _bad(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(("content", "message"), [
    (b"\x00\xff\xfe binary \x89PNG", "not UTF-8 text"),
    (b"groups: [\n  {name: x, rules: [", "not valid YAML at line"),
    (b"a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + b"".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n".encode()
        for i in range(9)), "with its aliases expanded has more than"),
    (b"[" * 10_000 + b"]" * 10_000, "nested more than 50 levels deep"),
    (b"just: a mapping\n", "neither a Prometheus rule file"),
    (b"groups:\n- name: g\n  rules:\n  - expr: up\n", "groups[0].rules[0]: neither `alert` nor `record`"),
    (b"groups:\n- name: g\n  rules:\n  - alert: A\n    expr: {x: 1}\n", "groups[0].rules[0].expr: expected text"),
    (b"groups: 7\n", "groups: expected a list"),
    (b"x" * (2 << 20), "larger than 1 MiB"),
], ids=["binary", "broken-yaml", "billion-laughs", "deep-nesting", "not-rules", "rule-without-name",
        "expr-not-text", "groups-not-a-list", "huge"])
def test_bad_input_exits_2_with_a_clear_message(tmp_path: Path, content: bytes, message: str) -> None:
    bad = _bad(tmp_path, "bad.yml", content)
    result = treewatch(str(GENERATED / generate.RULES_FILE), str(bad))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("treewatch rules diff: ") and str(bad) in line and message in line, line


def test_a_missing_file_or_unknown_ref_exits_2(tmp_path: Path) -> None:
    result = treewatch(str(tmp_path / "nope.yml"), "HEAD")
    assert result.returncode == 2
    assert "nope.yml: no such file or folder, and not a git ref" in result.stderr


def test_an_endless_input_is_refused_after_its_limit() -> None:
    result = treewatch(str(GENERATED / generate.RULES_FILE), "/dev/zero")
    assert result.returncode == 2
    assert "/dev/zero: cannot read: larger than 1 MiB; refused" in result.stderr


def test_a_rule_file_against_an_alertmanager_config_is_a_usage_error() -> None:
    result = treewatch(str(GENERATED / generate.RULES_FILE), str(GENERATED / generate.ALERTMANAGER_FILE))
    assert result.returncode == 2
    assert "nothing to compare" in result.stderr


def test_missing_arguments_are_a_usage_error() -> None:
    result = treewatch(str(GENERATED / generate.RULES_FILE))
    assert result.returncode == 2
    assert "NEW" in result.stderr
