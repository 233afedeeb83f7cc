"""``treewatch demo`` (what ``make demo`` runs): the whole bundle on one machine, for real.

A Kafka broker from the pinned jars, the simulated pipeline on it (real topics, consumer groups
and health endpoints), the exporter watching both, and, when installed, Prometheus loading the
generated alert rules plus Alertmanager. A scripted scenario gives every panel something to
show: projects flowing through, failures landing in the DLQs, a stage pausing so its lag grows,
a service degrading. A short summary read from the exporter's own snapshot is printed every
few seconds until Ctrl-C (or ``--duration``), then everything stops in reverse order.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from devkafka import KafkaCluster, free_port
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

            urls = {"exporter metrics": f"{exporter.url}/metrics",
                    "exporter landing page": f"{exporter.url}/"}
            if PROMETHEUS.exists() and ALERTMANAGER.exists():
                alertmanager_url = stack.enter_context(_alertmanager(workdir, options.free_ports, out))
                urls["prometheus"] = stack.enter_context(
                    _prometheus(workdir, exporter, alertmanager_url, options.free_ports, out))
                urls["alertmanager"] = alertmanager_url
            else:
                out(f"({PROMETHEUS} or {ALERTMANAGER} not installed: running without them; "
                    "`make setup` installs them)")
            for service in config.services:
                urls[f"service {service.name}"] = service.url
            width = max(map(len, urls))
            for name, url in urls.items():
                out(f"  {name:<{width}}  {url}")

            _run_scenario(sim, exporter, config, options, stop, out)
            out("stopping ...")
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
    out("running" + (f" for {options.duration_seconds:g}s" if options.duration_seconds else "; Ctrl-C stops"))
    while not stop.is_set():
        now = time.monotonic()
        elapsed = now - started
        if options.duration_seconds is not None and elapsed >= options.duration_seconds:
            break
        if now >= next_project:
            project = sim.publish_project(options.files_per_project)
            out(f"[{elapsed:5.0f}s] published project {project.project_name}: {project.files} files, "
                f"correlation_id {project.correlation_id}")
            next_project = now + options.project_interval_seconds
        while steps and elapsed >= steps[0].at_seconds:
            step = steps.pop(0)
            step.does(sim)
            out(f"[{elapsed:5.0f}s] {step.says}")
        if now >= next_summary:
            first, *rest = summary(exporter.refresher.current, config)
            out(f"[{elapsed:5.0f}s] {first}")
            for line in rest:
                out(f"{'':9}{line}")
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


# -- Prometheus and Alertmanager ------------------------------------------------------------------

@contextlib.contextmanager
def _alertmanager(workdir: Path, free_ports: bool, out: Callable[[str], None]) -> Iterator[str]:
    port = _port(DEFAULT_PORTS["alertmanager"], free_ports)
    # The generated configuration sends to Slack; the demo has no Slack, so alerts are only shown.
    config = workdir / "alertmanager.yml"
    config.write_text(yaml.safe_dump({
        "route": {"receiver": "demo", "group_by": ["alertname", "stage"], "group_wait": "10s"},
        "receivers": [{"name": "demo"}],
    }))
    (workdir / "alertmanager").mkdir()
    url = f"http://127.0.0.1:{port}"
    with _process("alertmanager", [
        str(ALERTMANAGER), f"--config.file={config}", f"--storage.path={workdir / 'alertmanager'}",
        f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
    ], workdir, f"{url}/-/ready"):
        out("alertmanager ready (demo receiver: alerts are listed in its UI, not sent to Slack)")
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
    (workdir / "prometheus").mkdir()
    url = f"http://127.0.0.1:{port}"
    with _process("prometheus", [
        str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={workdir / 'prometheus'}",
        f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d",
    ], workdir, f"{url}/-/ready"):
        loaded = f"{len(rule_files)} rule file" + ("" if len(rule_files) == 1 else "s")
        out(f"prometheus ready (scraping the exporter every {SCRAPE_SECONDS}s, {loaded})")
        yield url


def _rules_valid(out: Callable[[str], None]) -> bool:
    if not PROMTOOL.exists():
        return True
    result = subprocess.run([str(PROMTOOL), "check", "rules", str(RULES_FILE)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        out((result.stdout + result.stderr).strip())
    return result.returncode == 0


@contextlib.contextmanager
def _process(name: str, command: list[str], workdir: Path, ready_url: str,
             timeout: float = 60.0) -> Iterator[subprocess.Popen]:
    """Run ``command`` until the block ends; wait until ``ready_url`` answers 200 first."""
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise DemoError(f"{name} exited with {process.returncode}:\n{_tail(log_path)}")
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise DemoError(f"{name} not ready at {ready_url} within {timeout}s:\n{_tail(log_path)}")
            time.sleep(0.2)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def _host_port(url: str) -> str:
    return url.split("//", 1)[1].rstrip("/")


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
