"""Several environments watched by one Prometheus and one Alertmanager (alerts/environments.py).

End to end: two exporters, env=dev and env=prod, each watching its own real Kafka cluster, scraped
by ONE Prometheus whose scrape configuration gives each target its env and cluster labels, with the
generated (time-scaled) rules, and ONE Alertmanager routed by the generated config in which dev does
not page. A burst of dead letters in prod pages on-call with prod's labels while dev stays quiet;
the same burst in dev fires with dev's labels and reaches the warnings channel, never on-call.

Beside it, what needs no Kafka: the routes a policy implies (amtool), an inhibition in one
environment that leaves another's alerts alone (a real Alertmanager), and the policy read from
the configuration file.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from alerts import generate
from alerts.alertmanager import ALERTS_RECEIVER, ONCALL_RECEIVER, alertmanager_config
from alerts.config import CONFIG
from alerts.environments import EnvironmentPolicy, ScrapeTarget, scrape_job
from devkafka import KafkaCluster, free_port, free_ports
from devkafka.processes import running_process
from localbundle.stack import (
    ALERTMANAGER,
    EXPORTER_JOB,
    Prometheus,
    SlackMessage,
    SlackSink,
    host_port,
    monitoring_config,
    running_alertmanager,
    running_prometheus,
)
from pipeline.config import DEFAULT_SERVICES, Config, load_config, parse_config
from pipeline.kafka import OutgoingRecord, admin_client, produce_and_confirm, producer
from simulator.topics import ensure_topics
from tests.config_files import exporter_watching, write_config_file
from tests.http_stubs import AlwaysHealthy, serving

pytestmark = pytest.mark.timeout(600)

# Every duration of the rules and the routing is this share of the real one: DLQOverflow counts
# dead letters over 15 s instead of 5 minutes and fires after 3 s instead of 1 minute.
TIME_SCALE = 0.05
# The exporters gather, and Prometheus scrapes them, this often.
REFRESH_SECONDS = 1.0
# Bounds on waiting, never expected durations: generous for a busy 2-core machine.
READY_WITHIN_SECONDS = 180.0
PAGE_WITHIN_SECONDS = 120.0

# The stage whose dead letter queue gets the burst, and how many: more than DLQOverflow's threshold.
BURST_STAGE = "stamp"
BURST_RECORDS = CONFIG.dlq_overflow_records_5m + 5
DEV_POLICY = {"dev": EnvironmentPolicy(pages=False)}

T = TypeVar("T")


def await_value(what: str, read: Callable[[], T | None], timeout: float) -> T:
    """The first value ``read`` returns that is not None, polled until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if value is not None:
            return value
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.25)  # polling Prometheus and the Slack stand-in: neither offers anything to wait on


# -- the pipelines under watch --------------------------------------------------------------------

@dataclass(frozen=True)
class Environment:
    """One environment's pipeline: its Kafka cluster, configuration and exporter."""

    name: str
    cluster: str
    kafka: KafkaCluster
    config: Config
    exporter_address: str

    @property
    def target(self) -> ScrapeTarget:
        return ScrapeTarget(self.exporter_address, env=self.name, cluster=self.cluster)

    def dlq_burst(self, stage: str, records: int) -> None:
        topic = self.config.stage(stage).dlq_topic
        value = json.dumps({"error_type": "FILE_NOT_FOUND", "error": "no such file"}).encode()
        produce_and_confirm(producer(self.config.kafka), [OutgoingRecord(topic, value) for _ in range(records)],
                            deadline=time.monotonic() + 30)


def write_config(workdir: Path, env: str, bootstrap_servers: str, services_url: str) -> Path:
    """The guide's pipeline in environment ``env``, an exporter watching only its topics."""
    data = {
        "env": env,
        "kafka": {"bootstrap_servers": bootstrap_servers},
        "services": {name: {"url": f"{services_url}/{name}/health"} for name in DEFAULT_SERVICES},
        "exporter": exporter_watching(env, REFRESH_SECONDS),
    }
    return write_config_file(workdir / f"treewatch-{env}.yaml", data)


def start_environment(stack: ExitStack, workdir: Path, name: str, kafka: KafkaCluster,
                      services_url: str) -> Environment:
    config_file = write_config(workdir, name, kafka.bootstrap_servers, services_url)
    config = load_config(config_file, environ={})
    ensure_topics(admin_client(config.kafka), config, partitions=1)
    address = config.exporter.listen_address
    stack.enter_context(running_process(
        f"exporter {name}", [sys.executable, "-m", "treewatch", "--log-level", "WARNING", "exporter", "--config",
                             str(config_file)],
        f"http://{address}/-/ready", workdir / f"exporter-{name}.log", timeout=READY_WITHIN_SECONDS))
    return Environment(name, f"kafka-{name}", kafka, config, address)


@dataclass
class Watch:
    dev: Environment
    prod: Environment
    sink: SlackSink
    prometheus: Prometheus

    def dlq_overflow_envs(self) -> set[str]:
        """The environments DLQOverflow fires for now, as Prometheus evaluates it."""
        firing = self.prometheus.query('ALERTS{alertname="DLQOverflow", alertstate="firing"}')
        return {series["metric"].get("env", "") for series in firing}

    def firing_messages(self, alertname: str) -> list[SlackMessage]:
        return [m for m in self.sink.messages() if m.alertname == alertname and m.status == "firing"]


@pytest.fixture(scope="module")
def watch(kafka: KafkaCluster, tmp_path_factory) -> Iterator[Watch]:
    workdir = tmp_path_factory.mktemp("environments")
    with ExitStack() as stack:
        prod_kafka = stack.enter_context(KafkaCluster(nodes=1))
        # The pipeline's four /health endpoints, all healthy, so no service alert pages.
        services_url = stack.enter_context(serving(AlwaysHealthy, name="healthy-services"))
        dev = start_environment(stack, workdir, "dev", kafka, services_url)
        prod = start_environment(stack, workdir, "prod", prod_kafka, services_url)
        sink = stack.enter_context(SlackSink())
        folder = workdir / "monitoring"
        folder.mkdir()
        config = monitoring_config(sink, folder, time_scale=TIME_SCALE, environments=DEV_POLICY)
        prometheus_port, alertmanager_port = free_ports(2)
        alertmanager = stack.enter_context(running_alertmanager(folder, config, alertmanager_port))
        prometheus = stack.enter_context(running_prometheus(
            folder, exporter=[dev.target, prod.target], alertmanager=host_port(alertmanager.url),
            port=prometheus_port, rules_file=folder / generate.RULES_FILE, scrape_seconds=REFRESH_SECONDS,
            resend_delay=config.duration("1m")))
        yield Watch(dev, prod, sink, prometheus)


def dlq_offsets_seen(watch: Watch) -> set[str] | None:
    """The environments whose burst DLQ Prometheus has offsets of, once both have."""
    dlqs = "|".join(env.config.stage(BURST_STAGE).dlq_topic for env in (watch.dev, watch.prod))
    series = watch.prometheus.query(f'kafka_topic_partition_current_offset{{job="{EXPORTER_JOB}", topic=~"{dlqs}"}}')
    seen = {(s["metric"].get("env"), s["metric"].get("cluster")) for s in series}
    return {env for env, _ in seen} if seen == {("dev", "kafka-dev"), ("prod", "kafka-prod")} else None


def test_each_environments_incident_pages_with_its_own_labels_and_the_other_stays_quiet(watch):
    assert await_value("DLQ offsets of both environments in Prometheus", lambda: dlq_offsets_seen(watch),
                       READY_WITHIN_SECONDS) == {"dev", "prod"}

    watch.prod.dlq_burst(BURST_STAGE, BURST_RECORDS)
    prod_page = await_value("DLQOverflow page from prod", lambda: next(
        (m for m in watch.firing_messages("DLQOverflow") if m.env == "prod"), None), PAGE_WITHIN_SECONDS)
    assert prod_page.channel == CONFIG.slack_oncall_channel
    assert prod_page.stage == BURST_STAGE and "· env prod" in prod_page.title
    assert watch.prod.config.stage(BURST_STAGE).dlq_topic in prod_page.text
    # One Prometheus evaluates both environments' series: only prod's DLQ overflows.
    assert watch.dlq_overflow_envs() == {"prod"}
    firing = watch.prometheus.query('ALERTS{alertname="DLQOverflow", alertstate="firing"}')
    assert {(s["metric"]["env"], s["metric"]["cluster"]) for s in firing} == {("prod", "kafka-prod")}
    assert not [m for m in watch.firing_messages("DLQOverflow") if m.env != "prod"]

    watch.dev.dlq_burst(BURST_STAGE, BURST_RECORDS)
    dev_message = await_value("DLQOverflow message from dev", lambda: next(
        (m for m in watch.firing_messages("DLQOverflow") if m.env == "dev"), None), PAGE_WITHIN_SECONDS)
    # Dev does not page: its critical alert goes to the warnings channel, still saying how serious it is.
    assert dev_message.channel == CONFIG.slack_alerts_channel
    assert dev_message.severity == "critical" and dev_message.stage == BURST_STAGE
    assert watch.dev.config.stage(BURST_STAGE).dlq_topic in dev_message.text
    assert "dev" in watch.dlq_overflow_envs()
    # Nothing of dev's ever reached on-call, and no message mixed the two environments' alerts.
    assert not [m for m in watch.sink.messages() if m.env == "dev" and m.channel == CONFIG.slack_oncall_channel]
    assert all(m.env in ("dev", "prod") for m in watch.firing_messages("DLQOverflow"))


# -- routing and inhibitions, without Kafka ------------------------------------------------------

def amtool_route(config_file: Path, **labels: str) -> str:
    result = subprocess.run(["amtool", "config", "routes", "test", f"--config.file={config_file}",
                             *(f"{key}={value}" for key, value in labels.items())],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize(("env", "severity", "receiver"), [
    ("dev", "critical", ALERTS_RECEIVER),
    ("dev", "warning", ALERTS_RECEIVER),
    ("prod", "critical", ONCALL_RECEIVER),
    ("staging", "critical", ONCALL_RECEIVER),
    ("", "critical", ONCALL_RECEIVER),  # a deployment without env labels pages as before
])
def test_an_environment_that_does_not_page_sends_critical_alerts_to_the_warnings_channel(
        tmp_path, env, severity, receiver):
    generate.write(tmp_path, dataclasses.replace(CONFIG, environments=DEV_POLICY))
    labels = {"alertname": "DLQOverflow", "severity": severity, **({"env": env} if env else {})}
    assert amtool_route(tmp_path / generate.ALERTMANAGER_FILE, **labels) == receiver


def test_without_environment_policies_the_routing_is_unchanged():
    routes = alertmanager_config(CONFIG)["route"]["routes"]
    assert not any("env" in matcher for route in routes for matcher in route["matchers"])
    with_policy = alertmanager_config(dataclasses.replace(CONFIG, environments=DEV_POLICY))["route"]["routes"]
    assert [route for route in with_policy if route not in routes] == [
        {"matchers": ['env="dev"', 'severity="critical"'], "receiver": ALERTS_RECEIVER,
         "repeat_interval": CONFIG.warning_repeat_interval}]


def test_the_policy_comes_from_the_monitoring_section_of_the_configuration_file():
    config = parse_config({"monitoring": {"environments": {"dev": {"pages": False}, "prod": {}}}}, "treewatch.yaml",
                          environ={})
    assert config.monitoring.environments == {"dev": EnvironmentPolicy(pages=False), "prod": EnvironmentPolicy()}


def test_scrape_job_labels_each_target_with_its_environment_and_cluster():
    job = scrape_job("treewatch", [ScrapeTarget("a:9847", "dev", "kafka-dev"), ScrapeTarget("b:9847", "prod", "k1"),
                                   ScrapeTarget("c:9847", "prod", "k1")], scrape_timeout="10s")
    assert job == {"job_name": "treewatch", "scrape_timeout": "10s", "static_configs": [
        {"targets": ["a:9847"], "labels": {"env": "dev", "cluster": "kafka-dev"}},
        {"targets": ["b:9847", "c:9847"], "labels": {"env": "prod", "cluster": "k1"}}]}


def _alert(alertname: str, severity: str, env: str, **labels: str) -> dict[str, Any]:
    return {"labels": {"alertname": alertname, "severity": severity, "job": "treewatch", "env": env,
                       "cluster": f"kafka-{env}", **labels}}


@pytest.mark.skipif(not ALERTMANAGER.exists(), reason="Alertmanager is not installed (make setup)")
def test_an_inhibition_in_one_environment_leaves_the_others_alerts_alone(tmp_path):
    """prod's DLQOverflow mutes prod's DLQNewRecords of the same topic, not dev's of the same name."""
    topic = "archon-intelligence.stamping.generate.v1.dlq"
    with SlackSink() as sink:
        config = monitoring_config(sink, tmp_path, time_scale=TIME_SCALE)
        with running_alertmanager(tmp_path, config, free_port()) as alertmanager:
            alertmanager.post([_alert("DLQOverflow", "critical", "prod", stage="stamp", topic=topic),
                               _alert("DLQNewRecords", "warning", "prod", stage="stamp", topic=topic),
                               _alert("DLQNewRecords", "warning", "dev", stage="stamp", topic=topic)])

            def inhibited() -> dict[str, bool] | None:
                alerts = alertmanager.alerts('alertname="DLQNewRecords"')
                states = {a["labels"]["env"]: bool(a["status"]["inhibitedBy"]) for a in alerts}
                return states if len(states) == 2 and states["prod"] else None

            assert await_value("prod's DLQNewRecords inhibited", inhibited, 30) == {"prod": True, "dev": False}
