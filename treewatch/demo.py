"""``treewatch demo`` (what ``make demo`` runs): the whole bundle on one machine, for real.

A Kafka broker from the pinned jars, the simulated pipeline on it (real topics, consumer groups
and health endpoints), the exporter watching both, and, when installed, Prometheus loading the
generated alert rules plus Alertmanager with the generated routing and Slack template, posting to
a local stand-in for Slack that prints each message on-call would get. A scripted scenario gives
every panel something to show: projects flowing through, failures landing in the DLQs, a stage
pausing so its lag grows, a service degrading. A short summary read from the exporter's own
snapshot is printed whenever it changes until Ctrl-C (or ``--duration``), then everything stops
in reverse order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from alerts import generate as alerts_generate
from alerts.config import CONFIG as MONITORING
from devkafka import KafkaCluster, free_port
from devkafka.processes import ProcessStartError, running_process
from exporter.app import Exporter, build_exporter
from exporter.snapshot import Snapshot
from pipeline.config import DEFAULT_SERVICES, Config, load_config
from simulator import Simulator, SimulatorSettings, StageBehaviour

REPO = Path(__file__).resolve().parents[1]
RULES_FILE = REPO / "alerts" / "generated" / "treewatch-rules.yml"
PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
ALERTMANAGER = Path("/usr/bin/prometheus-alertmanager")

DEFAULT_PORTS = {"exporter": 9847, "prometheus": 9090, "alertmanager": 9093}
# The scrape and refresh intervals are short so the demo moves while one watches.
REFRESH_SECONDS = 2.0
SCRAPE_SECONDS = 5
# Alertmanager waits this long before a new group's first message and between updates to it
# (production: alerts.config); shorter so a message arrives while one watches.
DEMO_GROUP_WAIT = "10s"
DEMO_GROUP_INTERVAL = "1m"
SLACK_PATH = "/slack"
# When the first Slack message (DLQOverflow) arrives, as measured (137 s): the DLQ rules are
# evaluated every 30 s, hold for `for: 1m`, then Alertmanager waits DEMO_GROUP_WAIT.
FIRST_SLACK_MESSAGE_AFTER = "2 to 3 minutes"
HEARTBEAT_PATH = "/heartbeat"


class DemoError(RuntimeError):
    """A part of the demo could not start or stopped; the message says which and why."""


@dataclass(frozen=True)
class DemoOptions:
    duration_seconds: float | None = None  # None: until Ctrl-C
    files_per_project: int = 300
    project_interval_seconds: float = 30.0
    summary_interval_seconds: float = 5.0
    # Tests set this: every port is a free one, never the guide's defaults.
    free_ports: bool = False
    stamp_error_rate: float = 0.08


@dataclass(frozen=True)
class Step:
    at_seconds: float
    says: str
    does: Callable[[Simulator], None]


# What happens when, so the dashboards and alerts have a story to tell: the second project (at
# 30 s) meets a paused index stage, so that group's lag builds up for half a minute, then drains.
# A project every 30 s with 8% of stamping failing keeps DLQOverflow's 10-in-5-minutes busy.
SCENARIO = (
    Step(25, "pausing the index stage: watch indexing-processor-group's lag grow",
         lambda sim: sim.pause("index")),
    Step(27, "metadata-stamping reports degraded",
         lambda sim: sim.set_health("metadata-stamping", "degraded")),
    Step(60, "resuming the index stage: its lag drains", lambda sim: sim.resume("index")),
    Step(65, "metadata-stamping healthy again", lambda sim: sim.set_health("metadata-stamping", "healthy")),
)


def run_demo(options: DemoOptions, out: Callable[[str], None]) -> int:
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set())
                for signum in (signal.SIGINT, signal.SIGTERM)}
    workdir = Path(tempfile.mkdtemp(prefix="treewatch-demo-"))
    try:
        with contextlib.ExitStack() as stack:
            out("starting Kafka (KRaft, one node, from the pinned jars) ...")
            kafka = stack.enter_context(KafkaCluster(nodes=1))
            config = _write_config(workdir, kafka.bootstrap_servers, options.free_ports)
            out(f"kafka: {kafka.bootstrap_servers}; configuration: {config.source}")

            behaviours = {"stamp": StageBehaviour(error_rate=options.stamp_error_rate, delay_seconds=0.002),
                          "index": StageBehaviour(delay_seconds=0.005)}
            sim = stack.enter_context(Simulator(config, SimulatorSettings(behaviours=behaviours)))
            try:
                exporter = build_exporter(config).start()
            except OSError as error:
                raise DemoError(f"cannot serve the exporter on {config.exporter.listen_address}: "
                                f"{error.strerror}") from error
            stack.callback(exporter.stop)

            where: list[tuple[str, str, str]] = [
                ("exporter", f"{exporter.url}/metrics", "what Prometheus scrapes; a landing page at "
                                                        f"{exporter.url}/"),
            ]
            sink: SlackSink | None = None
            if PROMETHEUS.exists() and ALERTMANAGER.exists():
                try:
                    sink = stack.enter_context(SlackSink(out))
                    alertmanager_url = stack.enter_context(
                        _alertmanager(workdir, sink, options.free_ports, out))
                    prometheus_url = stack.enter_context(
                        _prometheus(workdir, exporter, alertmanager_url, options.free_ports, out))
                except ProcessStartError as error:
                    raise DemoError(str(error)) from error
                where += [
                    ("prometheus", f"{prometheus_url}/alerts", "the generated alert rules: inactive, pending, "
                                                               "firing"),
                    ("alertmanager", alertmanager_url, "firing alerts after routing and inhibition; silences"),
                ]
            else:
                out(f"({PROMETHEUS} or {ALERTMANAGER} not installed: running without them; "
                    "`make setup` installs them)")
            where += [(service.name, service.url, "the simulated service's health")
                      for service in config.services]
            out("")
            out("where to look:")
            width = max(len(name) for name, _, _ in where)
            url_width = max(len(url) for _, url, _ in where)
            for name, url, what in where:
                out(f"  {name:<{width}}  {url:<{url_width}}  {what}")
            out(f"  the operator tools, from another terminal: treewatch status --config {config.source}")
            out("  (and trace, dlq, groups with the same --config; trace takes a correlation_id printed below)")
            out("  Grafana's dashboards are not part of the demo: `docker compose up -d` runs the full stack.")
            out("")

            _run_scenario(sim, exporter, config, options, stop, out)
            out("stopping ...")
            if sink is not None:
                out(f"{sink.slack_messages} Slack message(s) would have been posted"
                    + ("" if sink.slack_messages else
                       f"; the first one comes {FIRST_SLACK_MESSAGE_AFTER} in"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    out("demo stopped")
    return 0


def _run_scenario(sim: Simulator, exporter: Exporter, config: Config, options: DemoOptions,
                  stop: threading.Event, out: Callable[[str], None]) -> None:
    started = time.monotonic()
    steps = list(SCENARIO)
    next_project = started
    next_summary = started + options.summary_interval_seconds
    last_summary: list[str] = []
    until = f"for {options.duration_seconds:g}s" if options.duration_seconds else "until Ctrl-C"
    out(f"running the scenario {until}. A new project every {options.project_interval_seconds:g}s, "
        f"{options.stamp_error_rate:.0%} of stamping fails into its DLQ.")
    out(f"Every {options.summary_interval_seconds:g}s, when something changed, what the exporter reports:")
    out("  lag: records each consumer group is behind; dlq: dead letters per stage;")
    out("  events: completed/failed per stage; health: each service's /health status; - : no data yet.")
    out("An alert fires once its condition has held for its `for` (a minute for the DLQ alerts): expect the "
        f"first Slack message {FIRST_SLACK_MESSAGE_AFTER} in.")
    while not stop.is_set():
        now = time.monotonic()
        elapsed = now - started
        if options.duration_seconds is not None and elapsed >= options.duration_seconds:
            break
        if now >= next_project:
            project = sim.publish_project(options.files_per_project)
            out(f"[{elapsed:4.0f}s] published project {project.project_name}: {project.files} files, "
                f"correlation_id {project.correlation_id}")
            next_project = now + options.project_interval_seconds
        while steps and elapsed >= steps[0].at_seconds:
            step = steps.pop(0)
            step.does(sim)
            out(f"[{elapsed:4.0f}s] {step.says}")
        if now >= next_summary:
            lines = summary(exporter.refresher.current, config)
            if lines != last_summary:  # the same numbers again would only bury what changed
                first, *rest = lines
                out(f"[{elapsed:4.0f}s] {first}")
                for line in rest:
                    out(f"{'':8}{line}")
                last_summary = lines
            next_summary = now + options.summary_interval_seconds
        dead = sim.failed_workers()
        if dead:
            raise DemoError("simulated stage(s) stopped: " + "; ".join(f"{k}: {v}" for k, v in dead.items()))
        stop.wait(0.5)


def summary(snapshot: Snapshot, config: Config) -> list[str]:
    """A few lines from the exporter's snapshot: what its /metrics says right now."""
    lag: dict[str, float] = {}
    for (group, _topic, _partition), value in snapshot.values("kafka_consumer_group_lag").items():
        lag[group] = lag.get(group, 0) + value
    dlq: dict[str, float] = {}
    for (stage, _topic), value in snapshot.values("tree_dlq_retained_records").items():
        dlq[stage] = dlq.get(stage, 0) + value
    health = {service: status for (service, status), value in snapshot.values("tree_service_status").items()
              if value == 1}
    processed = snapshot.values("tree_events_processed_total")

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


def _write_config(workdir: Path, bootstrap_servers: str, free_ports: bool) -> Config:
    services = {}
    for name, url in DEFAULT_SERVICES.items():
        default = int(url.rsplit(":", 1)[1].split("/", 1)[0])
        services[name] = {"url": f"http://127.0.0.1:{_port(default, free_ports)}/health"}
    data = {
        "env": "dev",
        "kafka": {"bootstrap_servers": bootstrap_servers},
        "services": services,
        "exporter": {
            "listen_address": f"127.0.0.1:{_port(DEFAULT_PORTS['exporter'], free_ports)}",
            "refresh_interval_seconds": REFRESH_SECONDS,
            "health_timeout_seconds": REFRESH_SECONDS / 2,
        },
    }
    path = workdir / "treewatch.yaml"
    path.write_text("# written by `treewatch demo` for this run\n" + yaml.safe_dump(data, sort_keys=False))
    return load_config(path, environ={})


# -- Prometheus, Alertmanager and the stand-in for Slack ------------------------------------------

class SlackSink:
    """Slack's (and the heartbeat service's) stand-in on loopback: Alertmanager posts the messages
    on-call would get here, and each one is printed as the Slack post it would have been."""

    def __init__(self, out: Callable[[str], None]) -> None:
        self.out = out
        self.slack_messages = 0
        self.heartbeats = 0
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")
                sink._received(self.path, body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # every post is reported by _received instead

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-slack-sink", daemon=True)

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{path}"

    def _received(self, path: str, body: bytes) -> None:
        try:
            message = json.loads(body)
        except ValueError:
            self.out(f"slack: unreadable post to {path} ({len(body)} bytes)")
            return
        if path == HEARTBEAT_PATH:
            with self._lock:
                self.heartbeats += 1
                first = self.heartbeats == 1
            if first:  # it repeats every minute; once shows the path works
                self.out("heartbeat: the Watchdog alert reached its receiver, so Prometheus → Alertmanager "
                         "works (the repeats are not shown)")
            return
        with self._lock:
            self.slack_messages += 1
        attachment = (message.get("attachments") or [{}])[0]
        self.out(f"slack: would post to {message.get('channel', '?')}: {attachment.get('title', '?')}")
        for line in str(attachment.get("text", "")).strip().splitlines():
            self.out(f"{'':7}{line}")
        # The one button that leads somewhere local; Runbook and Dashboard point at the real sites.
        silence = next((a.get("url") for a in attachment.get("actions", []) if a.get("text") == "Silence"), None)
        if silence:
            self.out(f"{'':7}its Silence button: {silence}")

    def __enter__(self) -> SlackSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@contextlib.contextmanager
def _alertmanager(workdir: Path, sink: SlackSink, free_ports: bool, out: Callable[[str], None]) -> Iterator[str]:
    """Alertmanager with the generated routing, inhibitions and Slack template; only where it
    posts (the local sink, for Slack and for the Watchdog heartbeat a deployment may set) and how
    long it groups (so the demo moves) differ from the committed alerts/generated/alertmanager.yml."""
    port = _port(DEFAULT_PORTS["alertmanager"], free_ports)
    url = f"http://127.0.0.1:{port}"
    folder = workdir / "alertmanager"
    secret = workdir / "slack-api-url"
    secret.write_text(sink.url(SLACK_PATH) + "\n")
    config = dataclasses.replace(MONITORING, slack_api_url_file=str(secret),
                                 heartbeat_url=sink.url(HEARTBEAT_PATH),
                                 group_wait=DEMO_GROUP_WAIT, group_interval=DEMO_GROUP_INTERVAL)
    alerts_generate.write(folder, config)
    with running_process("alertmanager", [
        str(ALERTMANAGER), f"--config.file={folder / alerts_generate.ALERTMANAGER_FILE}",
        f"--storage.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
        # The Slack messages' Silence button links here.
        f"--web.external-url={url}", "--cluster.listen-address=",
    ], f"{url}/-/ready", workdir / "alertmanager.log"):
        out(f"alertmanager ready: the generated routing and Slack template; messages for "
            f"{MONITORING.slack_oncall_channel} and {MONITORING.slack_alerts_channel} "
            f"are printed below as `slack: would post to ...`")
        yield url


@contextlib.contextmanager
def _prometheus(workdir: Path, exporter: Exporter, alertmanager_url: str, free_ports: bool,
                out: Callable[[str], None]) -> Iterator[str]:
    port = _port(DEFAULT_PORTS["prometheus"], free_ports)
    rule_files = []
    if not RULES_FILE.exists():
        out(f"(no {RULES_FILE.relative_to(REPO)} yet; `make generate` writes it. "
            "Prometheus runs without rules)")
    elif not _rules_valid(out):
        out(f"({RULES_FILE.relative_to(REPO)} does not pass promtool: Prometheus runs without rules)")
    else:
        rule_files.append(str(RULES_FILE))
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "rule_files": rule_files,
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [_host_port(alertmanager_url)]}]}]},
        # job="treewatch" is what every generated rule selects.
        "scrape_configs": [{"job_name": "treewatch",
                            "static_configs": [{"targets": [_host_port(exporter.url)]}]}],
    }, sort_keys=False))
    url = f"http://127.0.0.1:{port}"
    with running_process("prometheus", [
        str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={workdir / 'prometheus'}",
        f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d",
        # The alerts' source links (a Slack message's Query button) point here.
        f"--web.external-url={url}",
    ], f"{url}/-/ready", workdir / "prometheus.log"):
        if rule_files:
            out(f"prometheus ready: scraping the exporter every {SCRAPE_SECONDS}s and evaluating the "
                f"generated alert rules ({RULES_FILE.relative_to(REPO)})")
        else:
            out(f"prometheus ready: scraping the exporter every {SCRAPE_SECONDS}s, no alert rules loaded")
        yield url


def _rules_valid(out: Callable[[str], None]) -> bool:
    if not PROMTOOL.exists():
        return True
    result = subprocess.run([str(PROMTOOL), "check", "rules", str(RULES_FILE)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        out((result.stdout + result.stderr).strip())
    return result.returncode == 0


def _host_port(url: str) -> str:
    return url.split("//", 1)[1].rstrip("/")
