"""The generated Alertmanager configuration and Slack template: valid for amtool, routing every
severity and the Watchdog to the right receiver, rendering the message on-call sees, and, through
a real Alertmanager on loopback (started as the demo and the incident tests start it), delivering
firing and resolved messages to a local Slack sink."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
import yaml

from alerts import generate
from alerts.alertmanager import ALERTS_RECEIVER, HEARTBEAT_RECEIVER, NULL_RECEIVER, ONCALL_RECEIVER
from alerts.config import CONFIG, OVERVIEW_DASHBOARD_UID
from devkafka import free_port
from localbundle.stack import Alertmanager, SlackSink, monitoring_config, running_alertmanager

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "alerts" / "generated"
AMTOOL = "/usr/bin/amtool"
DEADLINE_SECONDS = 30.0


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AMTOOL, *args], capture_output=True, text=True, timeout=60)


def _await(condition: Callable[[], Any], what: str, timeout: float = DEADLINE_SECONDS) -> Any:
    """Poll until condition() returns something truthy; fail naming what never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# -- the static checks ----------------------------------------------------------------------------


def test_amtool_check_config() -> None:
    result = _amtool("check-config", str(GENERATED / generate.ALERTMANAGER_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_no_webhook_url_in_the_repository() -> None:
    config = yaml.safe_load((GENERATED / generate.ALERTMANAGER_FILE).read_text())
    assert config["global"]["slack_api_url_file"] == CONFIG.slack_api_url_file
    text = (GENERATED / generate.ALERTMANAGER_FILE).read_text()
    assert "hooks.slack.com" not in text and "api_url:" not in text
    slack_configs = [c for r in config["receivers"] for c in r.get("slack_configs", [])]
    assert slack_configs and all(c["send_resolved"] is True for c in slack_configs)


@pytest.mark.parametrize(("labels", "receiver"), [
    ({"alertname": "HighErrorRate", "severity": "critical", "stage": "stamp"}, ONCALL_RECEIVER),
    ({"alertname": "HighConsumerLag", "severity": "warning", "stage": "index"}, ALERTS_RECEIVER),
    ({"alertname": "SomethingInformative", "severity": "info"}, NULL_RECEIVER),
    # The generated file has no heartbeat URL (deployments set one): the Watchdog goes nowhere then;
    # with one it reaches the heartbeat (test_watchdog_reaches_the_heartbeat_and_info_goes_nowhere).
    ({"alertname": "Watchdog", "severity": "info"}, HEARTBEAT_RECEIVER if CONFIG.heartbeat_url else NULL_RECEIVER),
    # A severity nobody expected is not dropped.
    ({"alertname": "Odd", "severity": "page-me-maybe"}, ALERTS_RECEIVER),
], ids=["critical", "warning", "info", "watchdog", "unknown-severity"])
def test_amtool_routes(labels: dict[str, str], receiver: str) -> None:
    result = _amtool(
        "config", "routes", "test", f"--config.file={GENERATED / generate.ALERTMANAGER_FILE}",
        f"--verify.receivers={receiver}", *(f"{name}={value}" for name, value in labels.items()),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def _template_data(status: str, alerts: list[dict[str, Any]]) -> dict[str, Any]:
    common = {k: v for k, v in alerts[0]["labels"].items() if all(a["labels"].get(k) == v for a in alerts)}
    return {
        "receiver": ONCALL_RECEIVER, "status": status, "externalURL": "http://alertmanager.example:9093",
        "groupLabels": {k: common[k] for k in ("alertname", "stage") if k in common},
        "commonLabels": common, "commonAnnotations": {},
        "alerts": alerts,
    }


def _sample_alert(partition: str, description: str, status: str = "firing") -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "HighConsumerLag", "severity": "warning", "stage": "stamp",
                   "group": "stamping-generator-group", "partition": partition},
        "annotations": {"summary": "High consumer lag detected", "description": description,
                        "runbook_url": CONFIG.runbook_url("HighConsumerLag"),
                        "dashboard_url": CONFIG.dashboard_url(OVERVIEW_DASHBOARD_UID)},
        "startsAt": "2026-01-01T00:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-01-01T00:10:00Z",
        "generatorURL": "http://prometheus.example:9090/graph?g0.expr=kafka_consumer_group_lag",
        "fingerprint": f"f{partition}",
    }


@pytest.fixture
def render(tmp_path: Path) -> Callable[[dict[str, Any], str], str]:
    def render_template(data: dict[str, Any], name: str) -> str:
        data_file = tmp_path / "data.json"
        data_file.write_text(json.dumps(data))
        result = _amtool(
            "template", "render", f"--template.glob={GENERATED / generate.SLACK_TEMPLATE_FILE}",
            f"--template.data={data_file}", f'--template.text={{{{ template "treewatch.slack.{name}" . }}}}',
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout
    return render_template


def test_amtool_renders_a_firing_message(render: Callable[[dict[str, Any], str], str]) -> None:
    data = _template_data("firing", [
        _sample_alert("0", "Consumer group stamping-generator-group (stage stamp) has lag of 20k records."),
        _sample_alert("1", "Consumer group stamping-generator-group (stage stamp) has lag of 15k records."),
    ])
    assert render(data, "title").strip() == "[FIRING:2] WARNING HighConsumerLag · stage stamp"
    text = render(data, "text")
    assert "• *warning* Consumer group stamping-generator-group (stage stamp) has lag of 20k records." in text
    assert "has lag of 15k records." in text
    assert render(data, "color").strip() == "warning"
    assert render(data, "runbook_url").strip() == CONFIG.runbook_url("HighConsumerLag")
    assert render(data, "dashboard_url").strip() == CONFIG.dashboard_url(OVERVIEW_DASHBOARD_UID)
    assert render(data, "query_url").strip() == data["alerts"][0]["generatorURL"]
    silence_filter = quote_plus('{alertname="HighConsumerLag",stage="stamp"}')
    assert render(data, "silence_url").strip() == (
        f"http://alertmanager.example:9093/#/silences/new?filter={silence_filter}"
    )


def test_amtool_renders_a_resolved_message(render: Callable[[dict[str, Any], str], str]) -> None:
    data = _template_data("resolved", [_sample_alert("0", "Lag was 20k records.", status="resolved")])
    assert render(data, "title").strip() == "[RESOLVED] WARNING HighConsumerLag · stage stamp"
    assert "resolved: Lag was 20k records." in render(data, "text")
    assert render(data, "color").strip() == "good"


# -- a real Alertmanager posting to a local Slack sink --------------------------------------------


@dataclass(frozen=True)
class RunningAlertmanager:
    """The Alertmanager the demo and the incident tests run (localbundle/stack.py), its sink beside it."""

    api: Alertmanager
    sink: SlackSink

    @property
    def url(self) -> str:
        return self.api.url

    def post(self, alerts: list[dict[str, Any]]) -> None:
        self.api.post(alerts)

    def alerts(self, *matchers: str) -> list[dict[str, Any]]:
        return self.api.alerts(*matchers)

    def groups(self, *matchers: str) -> list[dict[str, Any]]:
        return self.api.groups(*matchers)

    def await_message(self, path: str, matches: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        return _await(lambda: next((post.body for post in self.sink.posts(path) if matches(post.body)), None), what)


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAlertmanager]:
    directory = tmp_path_factory.mktemp("alertmanager")
    with SlackSink() as sink:
        # Short waits for this test only; the generated file keeps the real ones.
        config = monitoring_config(sink, directory, group_wait="1s", group_interval="1s")
        with running_alertmanager(directory, config, free_port()) as api:
            yield RunningAlertmanager(api, sink)


def _alert(
    alertname: str, severity: str, *, ends_at: datetime | None = None, **labels: str
) -> dict[str, Any]:
    alert: dict[str, Any] = {
        "labels": {"alertname": alertname, "severity": severity, **labels},
        "annotations": {
            "summary": f"{alertname} summary",
            "description": f"{alertname} for {labels} is at 42%.",
            "runbook_url": CONFIG.runbook_url(alertname),
            "dashboard_url": CONFIG.dashboard_url(OVERVIEW_DASHBOARD_UID),
        },
        "startsAt": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
        "generatorURL": f"http://prometheus.example:9090/graph?g0.expr={alertname}",
    }
    if ends_at is not None:
        alert["endsAt"] = ends_at.isoformat()
    return alert


def _attachment(message: dict[str, Any]) -> dict[str, Any]:
    return message["attachments"][0]


def test_critical_pages_oncall_and_resolves(alertmanager: RunningAlertmanager, unique: str) -> None:
    stage = f"stamp-{unique}"
    firing = _alert("HighErrorRate", "critical", stage=stage)
    alertmanager.post([firing])

    message = alertmanager.await_message(
        "/slack", lambda m: stage in _attachment(m)["title"], "the firing message in Slack")
    assert message["channel"] == CONFIG.slack_oncall_channel
    attachment = _attachment(message)
    assert attachment["title"] == f"[FIRING:1] CRITICAL HighErrorRate · stage {stage}"
    assert firing["annotations"]["description"] in attachment["text"]
    assert attachment["color"] == "danger"
    buttons = {action["text"]: action["url"] for action in attachment["actions"]}
    assert buttons["Runbook"] == CONFIG.runbook_url("HighErrorRate")
    assert buttons["Dashboard"] == CONFIG.dashboard_url(OVERVIEW_DASHBOARD_UID)
    assert buttons["Query"] == firing["generatorURL"]
    assert buttons["Silence"].startswith(f"{alertmanager.url}/#/silences/new?filter=")
    assert quote_plus(f'stage="{stage}"') in buttons["Silence"]

    alertmanager.post([{**firing, "endsAt": datetime.now(UTC).isoformat()}])
    resolved = alertmanager.await_message(
        "/slack", lambda m: _attachment(m)["title"] == f"[RESOLVED] CRITICAL HighErrorRate · stage {stage}",
        "the resolved message in Slack")
    assert resolved["channel"] == CONFIG.slack_oncall_channel
    assert _attachment(resolved)["color"] == "good"
    assert {a["text"]: a["url"] for a in _attachment(resolved)["actions"]}["Runbook"] == buttons["Runbook"]


def test_warning_goes_to_the_alerts_channel(alertmanager: RunningAlertmanager, unique: str) -> None:
    stage = f"discover-{unique}"
    alertmanager.post([_alert("DLQNewRecords", "warning", stage=stage, topic="t.dlq")])
    message = alertmanager.await_message(
        "/slack", lambda m: stage in _attachment(m)["title"], "the warning in Slack")
    assert message["channel"] == CONFIG.slack_alerts_channel
    assert _attachment(message)["title"] == f"[FIRING:1] WARNING DLQNewRecords · stage {stage}"
    resolve = _alert("DLQNewRecords", "warning", stage=stage, topic="t.dlq", ends_at=datetime.now(UTC))
    alertmanager.post([resolve])
    resolved = alertmanager.await_message(
        "/slack", lambda m: _attachment(m)["title"] == f"[RESOLVED] WARNING DLQNewRecords · stage {stage}",
        "the resolved warning in Slack")
    assert resolved["channel"] == CONFIG.slack_alerts_channel


def test_watchdog_reaches_the_heartbeat_and_info_goes_nowhere(
    alertmanager: RunningAlertmanager, unique: str
) -> None:
    alertmanager.post([_alert("Watchdog", "info"), _alert("InfoOnly", "info", stage=unique)])
    heartbeat = alertmanager.await_message(
        "/heartbeat", lambda m: m["commonLabels"].get("alertname") == "Watchdog", "the Watchdog heartbeat")
    assert heartbeat["receiver"] == HEARTBEAT_RECEIVER
    groups = _await(lambda: alertmanager.groups(f'stage="{unique}"'), "the info alert's group")
    assert [group["receiver"]["name"] for group in groups] == [NULL_RECEIVER]


def test_inhibitions(alertmanager: RunningAlertmanager, unique: str) -> None:
    burning, other, erring = f"stamp-{unique}", f"index-{unique}", f"discover-{unique}"
    # Unique per test run, so alerts left by another test never inhibit these.
    exporter = {"job": "treewatch", "instance": f"exporter-{unique}:9847"}
    elsewhere = {"job": "treewatch", "instance": f"other-cluster-{unique}:9847"}
    kafka_down = _alert("KafkaUnavailable", "critical", collector="kafka_cluster", **exporter)
    alertmanager.post([
        kafka_down,
        _alert("HighConsumerLag", "warning", stage=burning, group="g", topic="t", partition="0", **exporter),
        _alert("HighConsumerLag", "warning", stage=other, group="g", topic="t", partition="0", **elsewhere),
        _alert("StageErrorBudgetBurn", "critical", stage=burning, burn="fast"),
        _alert("StageErrorBudgetBurn", "warning", stage=burning, burn="slow"),
        _alert("StageErrorBudgetBurn", "warning", stage=other, burn="slow"),
        _alert("HighErrorRate", "critical", stage=erring),
        _alert("StageErrorBudgetBurn", "critical", stage=erring, burn="fast"),
    ])

    def state(*matchers: str) -> str | None:
        found = alertmanager.alerts(*matchers)
        if not found:
            return None
        status = found[0]["status"]
        # "suppressed" could also mean silenced; only an inhibition counts here.
        return "inhibited" if status["inhibitedBy"] else status["state"]

    # Kafka unavailable mutes the lag it causes through the same exporter only; a fast burn mutes the
    # slow burn of its own stage only; HighErrorRate mutes the fast burn of its stage (one page).
    _await(lambda: state('alertname="HighConsumerLag"', f'stage="{burning}"') == "inhibited",
           "KafkaUnavailable to inhibit HighConsumerLag")
    slow_burn = ('alertname="StageErrorBudgetBurn"', 'burn="slow"')
    _await(lambda: state(*slow_burn, f'stage="{burning}"') == "inhibited",
           "the fast burn to inhibit the slow burn of the same stage")
    _await(lambda: state('alertname="StageErrorBudgetBurn"', f'stage="{erring}"') == "inhibited",
           "HighErrorRate to inhibit the fast burn of the same stage")
    # Alerts start "unprocessed"; each one not inhibited must become "active".
    for matchers in (('alertname="StageErrorBudgetBurn"', 'burn="fast"', f'stage="{burning}"'),
                     (*slow_burn, f'stage="{other}"'),
                     ('alertname="HighConsumerLag"', f'stage="{other}"'),
                     ('alertname="HighErrorRate"', f'stage="{erring}"')):
        _await(lambda matchers=matchers: state(*matchers) == "active", f"{matchers} to be active")
    alertmanager.post([{**kafka_down, "endsAt": datetime.now(UTC).isoformat()}])
