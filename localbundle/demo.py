"""``treewatch demo`` (what ``make demo`` runs): the whole bundle on one machine, for real.

A Kafka broker from the pinned jars, the simulated pipeline on it (real topics, consumer groups
and health endpoints) under a steady load, the exporter watching both and, when installed,
Prometheus with the generated rules plus Alertmanager with the generated routing and Slack
template, posting to a local stand-in for Slack that prints each message on-call would get.

Then a short story of the guide's incidents (simulator/incidents.py) plays out: a stage stalls
while a service degrades, then a burst of dead letters. The rules and the routing run time-scaled
(every `for`, window and Alertmanager wait multiplied by the same factor, said on screen), so the
pages, in both channels, and their resolved messages arrive within minutes. ``--incident NAME``
plays one incident instead; while the demo runs, ``treewatch incident start|stop`` starts more.
Every link printed works with Debian's Prometheus (classic UI) and Alertmanager (amtool, no UI).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from dashboards import generate as dashboards_generate
from dashboards import overview
from devkafka import KafkaCluster, free_port
from devkafka.processes import ProcessStartError
from exporter.app import Exporter, build_exporter
from exporter.metrics import (
    KAFKA_CONSUMER_GROUP_LAG,
    TREE_DLQ_RETAINED_RECORDS,
    TREE_EVENTS_PROCESSED_TOTAL,
    TREE_SERVICE_STATUS,
)
from exporter.snapshot import Snapshot
from localbundle import stack as chain
from localbundle.drill import Drill
from localbundle.incident_alerts import EXPECTED
from pipeline.config import Config, default_services_at, load_config
from simulator import Simulator, SimulatorSettings
from simulator.control import ControlServer, IncidentControl
from simulator.incidents import CATALOGUE, Incident, IncidentUnavailable, incident

DEFAULT_PORTS = {"exporter": 9847, "prometheus": 9090, "alertmanager": 9093}
# Every duration of the rules and the routing times this: 5 minutes are 15 s, 15 minutes 45 s.
DEFAULT_TIME_SCALE = 0.05
# The exporter gathers, and Prometheus scrapes it, this often (production: 15 s and 15-30 s).
REFRESH_SECONDS = 1.0
# A healthy span before the first incident, in real minutes (times the scale).
HEALTHY_MINUTES = 5
# Longest an act of the story may take, in real minutes (times the scale): far more than any
# alert's threshold, `for` and Alertmanager's waits together.
ACT_MINUTES = 60
# The summary is printed when lag, DLQ depth or health change, and at least this often.
SUMMARY_AT_LEAST_SECONDS = 30.0
# The overview dashboard's panels whose queries the demo links to in Prometheus' graph page.
KEY_PANELS = ("Firing alerts", "Service status", "Processed per stage", "Error ratio per stage",
              "Consumer lag, worst partition per group", "Consumer lag in seconds per group",
              "New DLQ records in 5m", "Brokers down")


class DemoError(RuntimeError):
    """A part of the demo could not start or stopped; the message says which and why."""


@dataclass(frozen=True)
class DemoOptions:
    duration_seconds: float | None = None  # None: until Ctrl-C
    files_per_project: int = 40
    project_interval_seconds: float = 2.0
    summary_interval_seconds: float = 5.0
    # Tests set this: every port is a free one, never the guide's defaults.
    free_ports: bool = False
    time_scale: float = DEFAULT_TIME_SCALE
    # One incident of the catalogue instead of the story.
    incident: str | None = None
    # Where the incident control listens (when free), so that `treewatch incident` finds it without
    # being told; None: any free port.
    control_port: int | None = None


@dataclass(frozen=True)
class Act:
    says: str
    incidents: tuple[Incident, ...]


STORY = (
    Act("the index stage's consumer stalls (it stays in its group but stops fetching) while "
        "metadata-stamping reports itself degraded",
        (incident("stage-stalled", stage="index"), incident("service-degraded", service="metadata-stamping"))),
    Act("a burst of ENCODING_ERROR dead letters, one of them malformed, lands in stamping's DLQ",
        (incident("dlq-burst", stage="stamp", error_type="ENCODING_ERROR"),)),
)


def run_demo(options: DemoOptions, out: Callable[[str], None]) -> int:
    acts = _acts(options)
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set())
                for signum in (signal.SIGINT, signal.SIGTERM)}
    workdir = Path(tempfile.mkdtemp(prefix="treewatch-demo-"))
    cluster = any(fault.acts_on == "cluster" for act in acts for fault in act.incidents)
    clock = Clock()
    try:
        with contextlib.ExitStack() as stack:
            nodes = 3 if cluster else 1
            out(f"starting Kafka (KRaft, {nodes} node{'s' if nodes > 1 else ''}, from the pinned jars) ...")
            kafka = stack.enter_context(KafkaCluster(nodes=nodes))
            config = _write_config(workdir, kafka.bootstrap_servers, options.free_ports)
            out(f"kafka: {kafka.bootstrap_servers}; configuration: {config.source}")
            # With three brokers the DLQs get one replica, as when made by hand: a broker's stop then
            # leaves some of their partitions without a leader.
            settings = SimulatorSettings(dlq_replication_factor=1 if cluster else -1)
            sim = stack.enter_context(Simulator(config, settings))
            env = DemoEnvironment(sim, config, kafka)
            stack.callback(env.stop_exporter)
            env.start_exporter()

            if not chain.installed():
                out(f"({chain.PROMETHEUS} or {chain.ALERTMANAGER} not installed: running without alerts; "
                    "`make setup` installs them)")
                _where_to_look(config, env.exporter, None, None, out)
                _keep_running(env, config, options, stop, clock, out)
                return 0
            try:
                monitoring = stack.enter_context(chain.monitoring_stack(
                    workdir, exporter_url=env.exporter.url,
                    prometheus_port=_port(DEFAULT_PORTS["prometheus"], options.free_ports),
                    alertmanager_port=_port(DEFAULT_PORTS["alertmanager"], options.free_ports),
                    time_scale=options.time_scale, scrape_seconds=REFRESH_SECONDS))
            except ProcessStartError as error:
                raise DemoError(str(error)) from error
            for note in monitoring.notes:
                out(f"({note})")
            control = _control(stack, env, options, out)
            _say_how_alerts_run(monitoring, options.time_scale, out)
            printer = SlackPrinter(monitoring, clock, out)
            monitoring.sink.on_message.append(printer.message)
            monitoring.sink.on_heartbeat.append(printer.heartbeat)
            _where_to_look(config, env.exporter, monitoring, control, out)

            steady = SteadyLoad(env, config, options, clock, out)
            _play(acts, Drill(monitoring, env, on_event=lambda line: out(clock.stamp(f"incident: {line}"))),
                  steady, stop, options.time_scale)
            if not stop.is_set() and not steady.over():
                out(clock.stamp(f"the story is over: {printer.count('firing')} page(s) and "
                                f"{printer.count('resolved')} resolved message(s) in Slack. The pipeline keeps "
                                "running; start more incidents from another terminal (see above), Ctrl-C ends."))
            _keep_running(env, config, options, stop, clock, out, steady)
            out("stopping ...")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        shutil.rmtree(workdir, ignore_errors=True)
    out("demo stopped")
    return 0


def _play(acts: tuple[Act, ...], drill: Drill, steady: SteadyLoad, stop: threading.Event, scale: float) -> None:
    """A healthy span, then each act: its incidents started together, each stopped once it paged."""
    out, clock = steady.out, steady.clock
    out(clock.stamp("waiting until Prometheus sees every stage processing ..."))
    while not stop.is_set() and steady.tick():
        if drill.stack.prometheus.sees_the_pipeline_flowing(len(steady.config.stages))[0]:
            break
        stop.wait(0.5)
    healthy_until = time.monotonic() + HEALTHY_MINUTES * 60 * scale
    out(clock.stamp(f"the pipeline flows and nothing pages; the first incident starts in "
                    f"{healthy_until - time.monotonic():.0f}s"))
    while not stop.is_set() and time.monotonic() < healthy_until and steady.tick():
        stop.wait(0.25)
    for number, act in enumerate(acts, start=1):
        if stop.is_set() or steady.over():
            return
        out(clock.stamp(f"act {number} of {len(acts)}: {act.says}"))
        for fault in act.incidents:
            expected = EXPECTED[fault.name]
            held_back = (f"{', '.join(expected.silenced)} to be held back by an inhibition; "
                         if expected.silenced else "")
            out(f"{'':8}expect {', '.join(expected.pages)} to page; {held_back}"
                "then the resolved messages once it is over")
        result = drill.run(act.incidents, timeout=ACT_MINUTES * 60 * scale,
                           tick=lambda: not stop.is_set() and steady.tick())
        if result.timed_out:
            out(clock.stamp("this act took longer than it should; the machine may be busy"))


def _acts(options: DemoOptions) -> tuple[Act, ...]:
    if options.incident is None:
        return STORY
    if options.incident not in CATALOGUE:
        raise DemoError(f"no incident named {options.incident!r}; the catalogue has {', '.join(CATALOGUE)}")
    fault = incident(options.incident)
    return (Act(fault.describe(), (fault,)),)


# -- what the demo runs ----------------------------------------------------------------------------

class Clock:
    """Seconds since the demo started, in front of the lines that happen over time."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def stamp(self, line: str, at: float | None = None) -> str:
        seconds = (at if at is not None else time.monotonic()) - self.started
        return f"[{seconds:4.0f}s] {line}"


class DemoEnvironment:
    """What the incidents act on in the demo: the simulator, the exporter and the broker it runs."""

    def __init__(self, simulator: Simulator, config: Config, kafka: KafkaCluster) -> None:
        self.simulator = simulator
        self.config = config
        self.kafka = kafka
        self.exporter: Exporter | None = None
        self._port: int | None = None
        # The broker broker-down stops: the last one, so the bootstrap's first address still answers.
        self.broker = len(kafka.nodes) - 1

    def start_exporter(self) -> None:
        try:
            self.exporter = build_exporter(self.config, port=self._port).start()
        except OSError as error:
            raise DemoError(f"cannot serve the exporter on {self.config.exporter.listen_address}: "
                            f"{error.strerror}") from error
        self._port = self.exporter.server.port

    def stop_exporter(self) -> None:
        if self.exporter is not None:
            self.exporter.stop()

    def stop_broker(self) -> None:
        if len(self.kafka.nodes) < 3:
            raise IncidentUnavailable("broker-down needs a three-node cluster: `treewatch demo --incident "
                                      "broker-down` starts one")
        self.kafka.stop_node(self.broker)

    def start_broker(self) -> None:
        self.kafka.start_node(self.broker)

    # The drill's injector: every incident acts on this environment directly.
    def start(self, fault: Incident) -> None:
        fault.start(self)

    def stop(self, fault: Incident) -> None:
        fault.stop(self)


class SteadyLoad:
    """A project every few seconds, and the exporter's summary when lag, DLQs or health changed
    (event counts change all the time: they are shown with the rest, at least every half minute)."""

    def __init__(self, env: DemoEnvironment, config: Config, options: DemoOptions, clock: Clock,
                 out: Callable[[str], None]) -> None:
        self.env, self.config, self.options, self.clock, self.out = env, config, options, clock, out
        self.next_project = time.monotonic()
        self.next_summary = time.monotonic() + options.summary_interval_seconds
        self.last_summary: list[str] = []
        self.last_printed = 0.0

    def over(self) -> bool:
        return self.options.duration_seconds is not None and self.clock.elapsed() >= self.options.duration_seconds

    def tick(self) -> bool:
        """Publish and print what is due; False once the demo's --duration has passed."""
        if self.over():
            return False
        now = time.monotonic()
        if now >= self.next_project:
            self.env.simulator.publish_project(self.options.files_per_project)
            self.next_project = now + self.options.project_interval_seconds
        if now >= self.next_summary and self.env.exporter is not None:
            lines = summary(self.env.exporter.refresher.current, self.config)
            changed = [line for line in lines if not line.startswith("events")] != [
                line for line in self.last_summary if not line.startswith("events")]
            # The same numbers again would only bury the Slack messages.
            if changed or now - self.last_printed >= SUMMARY_AT_LEAST_SECONDS:
                first, *rest = lines
                self.out(self.clock.stamp(first))
                for line in rest:
                    self.out(f"{'':8}{line}")
                self.last_summary, self.last_printed = lines, now
            self.next_summary = now + self.options.summary_interval_seconds
        dead = self.env.simulator.failed_workers()
        if dead:
            raise DemoError("simulated stage(s) stopped: " + "; ".join(f"{k}: {v}" for k, v in dead.items()))
        return True


def _keep_running(env: DemoEnvironment, config: Config, options: DemoOptions, stop: threading.Event, clock: Clock,
                  out: Callable[[str], None], steady: SteadyLoad | None = None) -> None:
    steady = steady or SteadyLoad(env, config, options, clock, out)
    while not stop.is_set() and steady.tick():
        stop.wait(0.25)


def summary(snapshot: Snapshot, config: Config) -> list[str]:
    """A few lines from the exporter's snapshot: what its /metrics says right now."""
    lag: dict[str, float] = {}
    for (group, _topic, _partition), value in snapshot.values(KAFKA_CONSUMER_GROUP_LAG).items():
        lag[group] = lag.get(group, 0) + value
    dlq: dict[str, float] = {}
    for (stage, _topic), value in snapshot.values(TREE_DLQ_RETAINED_RECORDS).items():
        dlq[stage] = dlq.get(stage, 0) + value
    health = {service: status for (service, status), value in snapshot.values(TREE_SERVICE_STATUS).items()
              if value == 1}
    processed = snapshot.values(TREE_EVENTS_PROCESSED_TOTAL)

    def number(mapping: dict[str, float], key: str) -> str:
        return f"{mapping[key]:.0f}" if key in mapping else "-"

    def done(stage: str) -> str:
        return f"{processed.get((stage, 'completed'), 0):.0f}/{processed.get((stage, 'failed'), 0):.0f}"

    return [
        "lag     " + " ".join(f"{s.group}={number(lag, s.group)}" for s in config.stages),
        "dlq     " + " ".join(f"{s.name}={number(dlq, s.name)}" for s in config.stages),
        "events  " + " ".join(f"{s.name}={done(s.name)}" for s in config.stages) + " (completed/failed)",
        "health  " + " ".join(f"{s.name}={health.get(s.name, '-')}" for s in config.services),
    ]


# -- what it prints --------------------------------------------------------------------------------

class SlackPrinter:
    """Each Slack message as on-call would read it, with what to click or type in this demo."""

    def __init__(self, monitoring: chain.MonitoringStack, clock: Clock, out: Callable[[str], None]) -> None:
        self.monitoring, self.clock, self.out = monitoring, clock, out
        self._counts = {"firing": 0, "resolved": 0}
        self._lock = threading.Lock()

    def count(self, status: str) -> int:
        return self._counts[status]

    def message(self, message: chain.SlackMessage) -> None:
        with self._lock:
            self._counts[message.status] += 1
            lines = [self.clock.stamp(f"slack → {message.channel}: {message.title}", at=message.received_at)]
            lines += [f"{'':8}{line}" for line in message.text.strip().splitlines()]
            if message.status == "firing":
                anchor = message.buttons.get("Runbook", "").rpartition("#")[2]
                lines.append(f"{'':8}runbook: docs/runbooks.md#{anchor} (its Runbook button links there on GitHub)")
                query = message.buttons.get("Query")
                if query:
                    lines.append(f"{'':8}query:   {self.monitoring.prometheus.classic(query)}")
                labels = {"alertname": message.alertname, **message.subject}
                silence = self.monitoring.alertmanager.amtool_commands(**labels)["silence one for an hour"]
                lines.append(f"{'':8}silence: {silence}")
            for line in lines:
                self.out(line)

    def heartbeat(self, count: int) -> None:
        if count == 1:  # it repeats; once shows the path works
            self.out(self.clock.stamp("heartbeat: the Watchdog alert reached its receiver, so Prometheus → "
                                      "Alertmanager works (the repeats are not shown)"))


def _say_how_alerts_run(monitoring: chain.MonitoringStack, scale: float, out: Callable[[str], None]) -> None:
    config = monitoring.config
    out(f"alerts run TIME-SCALED by {scale:g}: every `for`, window and Alertmanager wait is {scale:g} x the "
        f"real one (a 5-minute `for` waits {config.duration('5m')}, Alertmanager groups for "
        f"{config.duration(config.group_wait)}); names, expressions, routing and template are the committed ones.")
    out(f"Slack messages for {config.slack_oncall_channel} (critical) and {config.slack_alerts_channel} (warning) "
        "are printed below as `slack → ...`, with the seconds since the demo started.")


def _where_to_look(config: Config, exporter: Exporter, monitoring: chain.MonitoringStack | None,
                   control: ControlServer | None, out: Callable[[str], None]) -> None:
    out("")
    out("where to look:")
    rows = [("exporter", f"{exporter.url}/metrics", "what Prometheus scrapes"),
            ("", f"{exporter.url}/", "the exporter's landing page: what it watches, each collector's state")]
    if monitoring is not None:
        prometheus = monitoring.prometheus
        rows.append(("prometheus", prometheus.alerts_page(), "the generated alert rules: inactive, pending, firing "
                                                             "(Debian's Prometheus has only this classic UI)"))
    rows += [(service.name, service.url, "the simulated service's health") for service in config.services]
    width = max(len(name) for name, _, _ in rows)
    for name, url, what in rows:
        out(f"  {name:<{width}}  {url}  {what}")
    if monitoring is not None:
        out("  the overview dashboard's key panels, as Prometheus graphs of their exact queries (no Grafana here):")
        for title, expr in dashboard_queries(KEY_PANELS):
            out(f"    {title}: {monitoring.prometheus.graph(expr)}")
        out("  alertmanager has no web UI in Debian's package; amtool shows the same:")
        for what, command in monitoring.alertmanager.amtool_commands().items():
            out(f"    {what}: {command}")
        out("    (a Slack message's Silence button opens Alertmanager's web UI: it works with the upstream "
            "Alertmanager, e.g. `docker compose up`'s, not with Debian's)")
    out(f"  the operator tools, from another terminal: treewatch status --config {config.source}")
    out("  (and trace, dlq, groups with the same --config)")
    if control is not None:
        out(f"  more incidents, from another terminal: treewatch incident list --simulator {control.url}")
    out("")


def dashboard_queries(titles: tuple[str, ...]) -> list[tuple[str, str]]:
    """(panel title, query) of the overview dashboard's panels named ``titles``, in that order."""
    panels = json.loads(dashboards_generate.render(overview.build()))["panels"]
    found = {panel["title"]: panel["targets"][0]["expr"] for panel in panels
             if panel.get("title") in titles and panel.get("targets")}
    missing = [title for title in titles if title not in found]
    if missing:
        raise DemoError(f"the overview dashboard has no panel {missing[0]!r} any more")
    return [(title, found[title]) for title in titles]


# -- configuration and ports --------------------------------------------------------------------

def _port(default: int, free_ports: bool) -> int:
    """The guide's port when it is free (so its curl commands work as written), else any."""
    if free_ports:
        return free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", default))
        except OSError:
            return free_port()
    return default


def _control(stack: contextlib.ExitStack, env: DemoEnvironment, options: DemoOptions,
             out: Callable[[str], None]) -> ControlServer | None:
    port = free_port() if options.control_port is None else _port(options.control_port, options.free_ports)
    try:
        return stack.enter_context(ControlServer(IncidentControl(env), ("127.0.0.1", port)))
    except OSError as error:
        out(f"(no incident control: {error.strerror})")
        return None


def _write_config(workdir: Path, bootstrap_servers: str, free_ports: bool) -> Config:
    services = default_services_at("127.0.0.1", lambda default: _port(default, free_ports))
    data = {
        "env": "dev",
        "kafka": {"bootstrap_servers": bootstrap_servers},
        "services": services,
        "exporter": {
            "listen_address": f"127.0.0.1:{_port(DEFAULT_PORTS['exporter'], free_ports)}",
            "refresh_interval_seconds": REFRESH_SECONDS,
            "health_timeout_seconds": REFRESH_SECONDS * 0.8,
        },
    }
    path = workdir / "treewatch.yaml"
    path.write_text("# written by `treewatch demo` for this run\n" + yaml.safe_dump(data, sort_keys=False))
    return load_config(path, environ={})


