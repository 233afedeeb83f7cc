"""The guide's incidents end to end, on real components: a fault injected into the simulated
pipeline (or the exporter, or a broker) → the exporter → Prometheus evaluating the generated rules
→ Alertmanager routing with the generated config → the Slack stand-in; then the fault stopped →
the resolved message.

The rules and the routing are generated from the same code with every duration multiplied by
TIME_SCALE (``python -m alerts.generate --time-scale``), so waits of 5 to 15 minutes take seconds;
promtool's tests (tests/test_alert_rules.py) prove the real durations. The simulator and the
exporter run as their own processes (``treewatch simulate --control``, ``treewatch exporter``),
the incidents are started through the simulator's control API, and incidents that do not share a
fault run together. docs/incidents.md says what each one pages and how long it takes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from alerts import generate
from alerts.config import CONFIG, MonitoringConfig, format_duration, parse_duration, runbook_anchor
from devkafka import KafkaCluster, free_ports
from devkafka.processes import running_process
from localbundle.drill import Drill, DrillResult, IncidentRun
from localbundle.incident_alerts import EXPECTED, channels, severities, unknown_alertnames
from localbundle.stack import MonitoringStack, SlackMessage, monitoring_stack
from pipeline.config import Config, load_config
from simulator.control import ControlClient
from simulator.incidents import CATALOGUE, Incident, incident
from tests.config_files import own_pipeline, write_config_file

REPO = Path(__file__).resolve().parents[1]
RUNBOOKS = REPO / "docs" / "runbooks.md"
INCIDENTS_DOC = REPO / "docs" / "incidents.md"

# The first test of each pipeline runs all of its incidents (the module fixture): minutes, not seconds.
pytestmark = pytest.mark.timeout(900)

# Every duration of the rules and the routing is this share of the real one: 5 minutes are 6 s.
TIME_SCALE = 0.02
# The exporter gathers, and Prometheus scrapes it, this often (production: 15 s and 15-30 s).
REFRESH_SECONDS = 1.0
# A healthy pipeline runs this long (30 minutes of real time) paging nobody before any incident: as
# long as a wave of incidents takes, and twice any alert's threshold plus its `for`
# (ConsumerGroupStalled: 10 + 5 minutes).
HEALTHY_SECONDS = 30 * 60 * TIME_SCALE
# The steady load: a project of FILES files every PROJECT_SECONDS (20 files/s through stamp and
# index, above the guide's floor of 1,000 a minute, in projects small enough to never leave a
# backlog of LowThroughput's size behind a healthy stage).
FILES = 40
PROJECT_SECONDS = 2.0
# Bounds on waiting, never expected durations: generous for a busy 2-core machine.
READY_WITHIN_SECONDS = 180.0
DRILL_WITHIN_SECONDS = 180.0

# Incidents that share no fault run together: each its own stage or service. failure-rate runs
# last on the main pipeline: the error budget it burns keeps its SLO alerts firing for minutes.
WAVE_A = (incident("stage-slow", stage="stamp"), incident("dlq-burst", stage="discover"),
          incident("service-down", service="intelligence"),
          incident("service-degraded", service="metadata-stamping"),
          incident("service-unhealthy", service="onextree"))
WAVE_B = (incident("stage-stalled", stage="index"), incident("failure-rate", stage="stamp"))


# -- the pieces: processes that can be stopped and started again ----------------------------------

class Server:
    """A server process (the simulator, the exporter) the tests can stop and start again."""

    def __init__(self, name: str, command: list[str], ready_url: str, log: Path) -> None:
        self.name, self.command, self.ready_url, self.log = name, command, ready_url, log
        self._running: contextlib.ExitStack | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        stack = contextlib.ExitStack()
        # A log per start, so a restart does not truncate what the first run said.
        log = self.log.with_name(f"{self.log.stem}-{self.starts}{self.log.suffix}")
        stack.enter_context(running_process(self.name, self.command, self.ready_url, log,
                                            timeout=READY_WITHIN_SECONDS))
        self._running = stack

    def stop(self) -> None:
        if self._running is not None:
            self._running.close()
            self._running = None

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def treewatch(*args: str) -> list[str]:
    return [sys.executable, "-m", "treewatch", "--log-level", "WARNING", *args]


@dataclass
class Bench:
    """One pipeline under watch: Kafka, the simulator, the exporter and the alert chain."""

    config: Config
    kafka: KafkaCluster
    simulator: Server
    exporter: Server
    control: ControlClient
    stack: MonitoringStack
    workdir: Path
    broker_down: int = 2  # the node broker-down stops (three-node bench only)

    # -- the Environment faults act on (those the simulator cannot do itself) -------------------
    def stop_exporter(self) -> None:
        self.exporter.stop()

    def start_exporter(self) -> None:
        self.exporter.start()

    def stop_broker(self) -> None:
        self.kafka.stop_node(self.broker_down)

    def start_broker(self) -> None:
        self.kafka.start_node(self.broker_down)
        self.kafka.wait_ready(len(self.kafka.nodes), timeout=READY_WITHIN_SECONDS)

    # -- the Injector the drill uses --------------------------------------------------------------
    def start(self, fault: Incident) -> None:
        if fault.acts_on == "simulator":
            self.control.start(fault.name, **fault.parameters)
        else:
            fault.start(self)

    def stop(self, fault: Incident) -> None:
        if fault.acts_on == "simulator":
            self.control.stop(fault.name)
        else:
            fault.stop(self)

    def drill(self, faults: tuple[Incident, ...]) -> DrillResult:
        return Drill(self.stack, self).run(faults, timeout=DRILL_WITHIN_SECONDS)

    def await_flowing(self) -> None:
        """Every collector succeeds and every stage processes events, as Prometheus sees it."""
        deadline = time.monotonic() + READY_WITHIN_SECONDS
        while True:
            flowing, seen = self.stack.prometheus.sees_the_pipeline_flowing(len(self.config.stages))
            if flowing:
                return
            assert time.monotonic() < deadline, (
                f"the pipeline is not flowing after {READY_WITHIN_SECONDS}s ({seen}); logs in {self.workdir}")
            time.sleep(0.5)


def write_config(workdir: Path, bootstrap_servers: str) -> Path:
    """The guide's pipeline with its own topics, groups and ports, and an exporter watching only them
    (the session broker carries every other test's topics and groups too)."""
    data = own_pipeline("incidents", bootstrap_servers, exporter_refresh_seconds=REFRESH_SECONDS)
    return write_config_file(workdir / "treewatch.yaml", data)


@contextlib.contextmanager
def bench(kafka: KafkaCluster, workdir: Path, *simulator_options: str) -> Iterator[Bench]:
    config_file = write_config(workdir, kafka.bootstrap_servers)
    config = load_config(config_file, environ={})
    control_port, prometheus_port, alertmanager_port = free_ports(3)
    control_url = f"http://127.0.0.1:{control_port}"
    simulator = Server("simulator", treewatch(
        "simulate", "--config", str(config_file), "--files", str(FILES), "--project-interval", str(PROJECT_SECONDS),
        "--error-rate", "0", "--seed", "7", "--control", f"127.0.0.1:{control_port}", *simulator_options),
        f"{control_url}/incidents", workdir / "simulator.log")
    exporter_url = f"http://{config.exporter.listen_address}"
    exporter = Server("exporter", treewatch("exporter", "--config", str(config_file)), f"{exporter_url}/-/ready",
                      workdir / "exporter.log")
    with simulator, exporter, monitoring_stack(workdir, exporter_url=exporter_url, prometheus_port=prometheus_port,
                                               alertmanager_port=alertmanager_port, time_scale=TIME_SCALE,
                                               scrape_seconds=REFRESH_SECONDS) as stack:
        yield Bench(config, kafka, simulator, exporter, ControlClient(control_url), stack, workdir)


# -- the main pipeline: a healthy run, then the incidents ---------------------------------------------

@dataclass
class MainRun:
    bench: Bench
    healthy: list[SlackMessage] = field(default_factory=list)
    heartbeats_while_healthy: int = 0
    drills: dict[str, DrillResult] = field(default_factory=dict)

    def result(self, name: str) -> tuple[DrillResult, IncidentRun]:
        for drill in self.drills.values():
            for run in drill.runs:
                if run.name == name:
                    return drill, run
        raise KeyError(name)


@pytest.fixture(scope="module")
def main_run(kafka: KafkaCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MainRun]:
    with bench(kafka, tmp_path_factory.mktemp("incidents")) as main:
        run = MainRun(main)
        main.await_flowing()
        heartbeats = main.stack.sink.heartbeats()
        time.sleep(HEALTHY_SECONDS)  # the healthy run is a span of time: nothing to await
        run.healthy = main.stack.sink.messages()
        run.heartbeats_while_healthy = main.stack.sink.heartbeats() - heartbeats
        # The exporter first: stopping it blinds every alert, so it runs alone, while nothing fires.
        run.drills["exporter"] = main.drill((incident("exporter-down"),))
        main.await_flowing()
        run.drills["a"] = main.drill(WAVE_A)
        run.drills["b"] = main.drill(WAVE_B)
        yield run
        print_timings(run.drills.values())


@pytest.fixture(scope="module")
def cluster_run(kafka_cluster3: KafkaCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MainRun]:
    workdir = tmp_path_factory.mktemp("incidents-cluster")
    # DLQs made by hand with one replica (a common shortcut): their three partitions, one on each
    # broker, have no leader while that broker is down. The other topics get the cluster's default
    # of three replicas.
    with bench(kafka_cluster3, workdir, "--dlq-replication-factor", "1") as cluster:
        run = MainRun(cluster)
        cluster.await_flowing()
        run.drills["cluster"] = cluster.drill((incident("broker-down"),))
        yield run
        print_timings(run.drills.values())


def print_timings(drills: Any) -> None:
    for drill in drills:
        for run in drill.runs:
            print(f"{run.name}: {run.timings()}")


# -- what every incident must show in Slack ------------------------------------------------------------

def assert_incident(drill: DrillResult, run: IncidentRun, config: MonitoringConfig) -> None:
    where = f"{run.incident.describe()}; Slack got: {[m.title for m in run.messages]}"
    assert not run.missing_pages(), f"no page for {run.missing_pages()} ({where})"
    assert not run.missing_inhibitions(), (
        f"{run.missing_inhibitions()} never seen held back by an inhibition ({where})")
    channel_of = channels(config)
    severity_of = severities(config)
    for message in run.messages:
        # Each message in the channel its severity routes to, about the incident's stage or service.
        assert message.severity in severity_of[message.alertname], message.title
        assert message.channel == channel_of[message.severity], message.title
        assert message.buttons["Runbook"] == config.runbook_url(message.alertname), message.buttons
        for value in run.incident.subject.values():
            assert value in message.text, f"{message.title}: the text does not name {value}: {message.text!r}"
        assert "<no value>" not in message.text and "{{" not in message.text, message.text
        assert message.text.strip().startswith("•"), message.text
    for name in run.expected.pages:
        # Never resolved while the fault lasted: a resolved message then would be a lie.
        early = [m for m in run.messages if m.alertname == name and m.status == "resolved"
                 and m.received_at < run.stopped_at]
        assert not early, f"{name} resolved while {run.name} was still going on ({where})"
    for name in run.expected.silenced:
        leaked = [m.title for m in run.messages if m.alertname == name]
        assert not leaked, f"{name} reached Slack although the inhibition should hold it back ({where})"
    assert not run.missing_resolved(), f"no resolved message for {run.missing_resolved()} ({where})"
    for name in run.must_resolve():
        resolved = run.last(name)
        assert resolved.title.startswith("[RESOLVED]") and resolved.color == "good", resolved.title
        assert "resolved:" in resolved.text, resolved.text
        assert resolved.buttons["Runbook"] == config.runbook_url(name)
    assert not drill.unexplained, f"pages no incident explains: {[m.title for m in drill.unexplained]}"


def test_the_catalogue_and_its_expectations_agree() -> None:
    assert set(EXPECTED) == set(CATALOGUE)
    named = {name for expected in EXPECTED.values() for name in expected.alertnames}
    assert unknown_alertnames(CONFIG, named) == []
    incidents = {fault.name for fault in (*WAVE_A, *WAVE_B)} | {"exporter-down", "broker-down"}
    assert incidents == set(CATALOGUE), "an incident of the catalogue has no end-to-end test"


def test_a_healthy_pipeline_pages_nobody(main_run: MainRun) -> None:
    assert main_run.healthy == [], [m.title for m in main_run.healthy]
    # Not silence for want of a chain: the Watchdog went Prometheus → Alertmanager → its receiver.
    assert main_run.heartbeats_while_healthy > 0


def test_exporter_down(main_run: MainRun) -> None:
    drill, run = main_run.result("exporter-down")
    assert_incident(drill, run, main_run.bench.stack.config)


@pytest.mark.parametrize("name", [fault.name for fault in (*WAVE_A, *WAVE_B)])
def test_incident(main_run: MainRun, name: str) -> None:
    drill, run = main_run.result(name)
    assert_incident(drill, run, main_run.bench.stack.config)


def test_broker_down(cluster_run: MainRun) -> None:
    drill, run = cluster_run.result("broker-down")
    assert_incident(drill, run, cluster_run.bench.stack.config)


def test_the_incident_command_starts_and_stops_faults_in_a_running_simulator(main_run: MainRun) -> None:
    main = main_run.bench
    url = main.control.url

    def command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(treewatch("incident", *args, "--simulator", url), capture_output=True, text=True,
                              timeout=60)

    listed = command("list")
    assert listed.returncode == 0, listed.stderr
    assert all(name in listed.stdout for name in CATALOGUE)
    bridge = next(service.url for service in main.config.services if service.name == "bridge")
    started = command("start", "service-down", "--service", "bridge")
    assert started.returncode == 0 and "started service-down (service bridge)" in started.stdout, started.stderr
    try:
        assert "ACTIVE service-down" in command("list").stdout
        with pytest.raises(httpx.ConnectError):
            httpx.get(bridge, timeout=5)
        again = command("start", "service-down")
        assert again.returncode == 1 and "service-down is already active" in again.stderr
    finally:
        stopped = command("stop", "service-down")
    assert stopped.returncode == 0, stopped.stderr
    assert httpx.get(bridge, timeout=5).json()["status"] == "healthy"
    for args, error in ((("start", "nope"), "no incident named 'nope'"),
                        (("start", "failure-rate", "--share", "2"), "share must be in (0, 1]"),
                        (("start", "dlq-burst", "--service", "bridge"), "has no parameter 'service'"),
                        (("start", "exporter-down"), "this simulator runs no exporter"),
                        (("stop", "stage-slow"), "incident stage-slow is not active")):
        result = command(*args)
        assert result.returncode == 1 and error in result.stderr, (args, result.stderr)
    # The API itself: what is not a request of it is refused, and says what would be.
    for method, path, body, status in (("POST", "/incidents/stage-slow/start", b"{not json", 400),
                                       ("POST", "/incidents/stage-slow/start", b"[1, 2]", 400),
                                       ("POST", "/incidents/stage-slow/start", b"x" * 5000, 400),
                                       ("POST", "/incidents/stage-slow/pause", b"", 404),
                                       ("GET", "/", b"", 404)):
        answer = httpx.request(method, url + path, content=body, timeout=10)
        assert answer.status_code == status and answer.json()["error"], (path, body[:10], answer.text)
    assert httpx.get(f"{url}/incidents", timeout=10).json()["active"] == []


# -- time-scaled rules: the shipped ones, with durations scaled ------------------------------------------

NUMBER_OR_DURATION = re.compile(r"(?<![\w:])(\d+(?:\.\d+)?(?:ms|[smhdwy])?)(?![\w:])")


def scaled_numbers(shipped: str, scaled: str, factor: float) -> None:
    """``scaled`` is ``shipped`` with each duration and each seconds threshold times ``factor``,
    and every other word the same."""
    assert NUMBER_OR_DURATION.sub("N", shipped) == NUMBER_OR_DURATION.sub("N", scaled), (shipped, scaled)
    for real, small in zip(NUMBER_OR_DURATION.findall(shipped), NUMBER_OR_DURATION.findall(scaled), strict=True):
        if not real.replace(".", "").isdigit():  # a duration: always scaled
            assert small == format_duration(parse_duration(real) * factor), (real, small, shipped)
        elif real != small:  # a number: the same, or a threshold in seconds scaled
            assert small == f"{float(real) * factor:.6g}", (real, small, shipped)


def test_time_scaled_rules_are_the_shipped_ones_with_every_duration_scaled() -> None:
    factor = TIME_SCALE
    shipped = yaml.safe_load(generate.render(CONFIG)[generate.RULES_FILE])
    scaled = yaml.safe_load(generate.render(dataclasses.replace(CONFIG, time_scale=factor))[generate.RULES_FILE])
    assert [g["name"] for g in scaled["groups"]] == [g["name"] for g in shipped["groups"]]
    changed = 0
    for real_group, small_group in zip(shipped["groups"], scaled["groups"], strict=True):
        assert small_group["interval"] == format_duration(parse_duration(real_group["interval"]) * factor)
        for real, small in zip(real_group["rules"], small_group["rules"], strict=True):
            assert real.keys() == small.keys()
            assert real.get("alert") == small.get("alert") and real.get("record") == small.get("record")
            assert real.get("labels") == small.get("labels")
            if "for" in real:
                assert small["for"] == format_duration(parse_duration(real["for"]) * factor)
            scaled_numbers(real["expr"], small["expr"], factor)
            changed += real["expr"] != small["expr"]
            for key in ("summary", "runbook_url", "dashboard_url"):
                assert real.get("annotations", {}).get(key) == small.get("annotations", {}).get(key)
    # Every expression with a range moved with the scale, not only the `for`s.
    ranged = sum("[" in rule["expr"] for group in shipped["groups"] for rule in group["rules"])
    assert changed >= ranged > 10
    text = generate.render(dataclasses.replace(CONFIG, time_scale=factor))[generate.RULES_FILE]
    assert text.startswith(f"# {generate.notice(CONFIG)}. TIME-SCALED: every duration is {factor:g} x the real one")


def test_time_scaled_routing_is_the_shipped_one_with_every_wait_scaled() -> None:
    shipped = generate.render(CONFIG)
    scaled = generate.render(dataclasses.replace(CONFIG, time_scale=TIME_SCALE))
    real, small = (yaml.safe_load(files[generate.ALERTMANAGER_FILE]) for files in (shipped, scaled))
    assert small["route"]["group_wait"] == "600ms" and small["route"]["group_interval"] == "6s"
    assert small["global"]["resolve_timeout"] == "6s"
    assert [r["matchers"] for r in small["route"]["routes"]] == [r["matchers"] for r in real["route"]["routes"]]
    assert small["inhibit_rules"] == real["inhibit_rules"] and small["receivers"] == real["receivers"]
    # The template is the shipped one below its header.
    body = [files[generate.SLACK_TEMPLATE_FILE].split("\n", 1)[1] for files in (shipped, scaled)]
    assert body[0] == body[1]
    # Unscaled, nothing changes: the committed files are what `make generate` writes.
    assert generate.render(dataclasses.replace(CONFIG, time_scale=1.0)) == shipped


def test_time_scaled_files_never_overwrite_the_committed_ones(tmp_path: Path) -> None:
    refused = subprocess.run([sys.executable, "-m", "alerts.generate", "--time-scale", "0.02"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "give an --out folder" in refused.stderr
    for bad in ("0", "1.5", "fast"):
        result = subprocess.run([sys.executable, "-m", "alerts.generate", "--time-scale", bad, "--out",
                                 str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "--time-scale" in result.stderr, bad
    written = subprocess.run([sys.executable, "-m", "alerts.generate", "--time-scale", "0.02", "--out",
                              str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert written.returncode == 0, written.stderr
    checked = subprocess.run(["promtool", "check", "rules", str(tmp_path / generate.RULES_FILE)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(("text", "seconds", "scaled"), [
    ("5m", 300, "6s"), ("1m", 60, "1200ms"), ("30s", 30, "600ms"), ("1h30m", 5400, "108s"), ("3d", 259_200, "5184s"),
    ("0m", 0, "0s"),
])
def test_durations_parse_and_scale(text: str, seconds: float, scaled: str) -> None:
    assert parse_duration(text) == seconds
    assert dataclasses.replace(CONFIG, time_scale=0.02).duration(text) == scaled
    assert CONFIG.duration(text) == text


@pytest.mark.parametrize("text", ["", "5", "m5", "5 m", "5min", "1.5m"])
def test_a_malformed_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a Prometheus duration"):
        parse_duration(text)


def test_the_runbooks_and_the_incidents_doc_cover_every_alert_an_incident_pages() -> None:
    headings = {runbook_anchor(line[3:]) for line in RUNBOOKS.read_text().splitlines() if line.startswith("## ")}
    named = {name for expected in EXPECTED.values() for name in expected.alertnames}
    assert {runbook_anchor(name) for name in named} <= headings
    doc = INCIDENTS_DOC.read_text()
    for name, expected in EXPECTED.items():
        section = doc.split(f"## {name}\n", 1)
        assert len(section) == 2, f"docs/incidents.md has no section for {name}"
        body = section[1].split("\n## ", 1)[0]
        for alert in expected.pages:
            assert f"**{alert}**" in body, f"docs/incidents.md, {name}: does not say {alert} pages"
        for alert in expected.silenced:
            assert alert in body, f"docs/incidents.md, {name}: does not say {alert} is held back"
