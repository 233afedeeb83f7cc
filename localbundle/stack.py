"""The alert chain on loopback: Prometheus loading the generated rules, Alertmanager loading the
generated routing and Slack template, and a stand-in for Slack that records (and can print) every
message Alertmanager posts. The demo, the Alertmanager tests and the incident tests all run it
from here.

Debian's packages are what ``make setup`` installs: Prometheus 2.42 serves only its classic UI
(``/classic/alerts``, ``/classic/graph``; ``/alerts`` and ``/graph`` answer 404), and Alertmanager
has no web UI at all, so alerts and silences are looked at with ``amtool``.

With ``time_scale`` below 1 the rules and the routing are generated with every duration scaled
(``python -m alerts.generate --time-scale``): the same rules, expressions, routes and template,
waits of seconds instead of minutes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import yaml

from alerts import generate as alerts_generate
from alerts.config import CONFIG, MonitoringConfig
from alerts.environments import ScrapeTarget, scrape_job
from devkafka.processes import running_process
from pipeline.http_serving import BackgroundHTTPServer

PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
ALERTMANAGER = Path("/usr/bin/prometheus-alertmanager")

SLACK_PATH = "/slack"
HEARTBEAT_PATH = "/heartbeat"
# Prometheus' job for the exporter: every generated rule selects job="treewatch".
EXPORTER_JOB = "treewatch"

# The title the generated Slack template writes (alerts/alertmanager.py, "treewatch.slack.title").
_TITLE = re.compile(
    r"^\[(?P<status>FIRING|RESOLVED)(?::(?P<count>\d+))?\]"
    r"(?: (?P<severity>[A-Z]+))? (?P<alertname>\S+)(?: · env (?P<env>\S+))?"
    r"(?: · stage (?P<stage>\S+))?(?: · service (?P<service>\S+))?$"
)


def installed() -> bool:
    """Whether Prometheus and Alertmanager are installed (``make setup`` installs them)."""
    return PROMETHEUS.exists() and ALERTMANAGER.exists()


# -- the stand-in for Slack -------------------------------------------------------------------------

@dataclass(frozen=True)
class SlackMessage:
    """One message Alertmanager posted to Slack, as on-call would read it."""

    received_at: float  # time.monotonic() when it arrived
    channel: str
    title: str
    text: str
    color: str
    buttons: dict[str, str]
    status: str  # "firing" or "resolved"
    severity: str | None
    alertname: str
    stage: str | None
    service: str | None
    env: str | None = None  # the environment the alerts are from, when their series carry one

    @classmethod
    def from_webhook(cls, body: dict[str, Any], received_at: float) -> SlackMessage:
        attachment = (body.get("attachments") or [{}])[0]
        title = str(attachment.get("title", ""))
        match = _TITLE.match(title)
        if match is None:
            raise ValueError(f"not a title the generated Slack template writes: {title!r}")
        return cls(
            received_at=received_at,
            channel=str(body.get("channel", "")),
            title=title,
            text=str(attachment.get("text", "")),
            color=str(attachment.get("color", "")),
            buttons={str(a.get("text")): str(a.get("url")) for a in attachment.get("actions", [])},
            status=match["status"].lower(),
            severity=match["severity"].lower() if match["severity"] else None,
            alertname=match["alertname"],
            stage=match["stage"],
            service=match["service"],
            env=match["env"],
        )

    @property
    def subject(self) -> dict[str, str]:
        """The stage and service labels the message is about (its Alertmanager group's)."""
        return {key: value for key, value in (("stage", self.stage), ("service", self.service)) if value}


@dataclass(frozen=True)
class Post:
    path: str
    body: dict[str, Any]
    received_at: float


class SlackSink(BackgroundHTTPServer):
    """Slack's (and the heartbeat service's) stand-in on loopback: it answers every POST with "ok",
    records it, and hands each Slack message to the ``on_message`` callbacks."""

    def __init__(self) -> None:
        self._posts: list[Post] = []
        self._lock = threading.Lock()
        self.on_message: list[Callable[[SlackMessage], None]] = []
        self.on_heartbeat: list[Callable[[int], None]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")
                sink._received(self.path, body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
                pass  # every post is recorded instead

        super().__init__(("127.0.0.1", 0), Handler, name="slack-sink")

    def url(self, path: str) -> str:
        return self.base_url + path

    def posts(self, path: str | None = None) -> list[Post]:
        with self._lock:
            return [post for post in self._posts if path is None or post.path == path]

    def messages(self) -> list[SlackMessage]:
        """Every Slack message so far, oldest first."""
        return [SlackMessage.from_webhook(post.body, post.received_at) for post in self.posts(SLACK_PATH)]

    def heartbeats(self) -> int:
        return len(self.posts(HEARTBEAT_PATH))

    def _received(self, path: str, raw: bytes) -> None:
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"unreadable": raw[:200].decode("utf-8", errors="replace")}
        post = Post(path, body, time.monotonic())
        with self._lock:
            self._posts.append(post)
            heartbeats = sum(1 for p in self._posts if p.path == HEARTBEAT_PATH)
        if path == SLACK_PATH:
            message = SlackMessage.from_webhook(body, post.received_at)
            for callback in self.on_message:
                callback(message)
        elif path == HEARTBEAT_PATH:
            for heartbeat in self.on_heartbeat:
                heartbeat(heartbeats)



# -- Alertmanager ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Alertmanager:
    """A running Alertmanager and its v2 API (there is no web UI in Debian's package)."""

    url: str
    config_file: Path
    log: Path

    def post(self, alerts: list[dict[str, Any]]) -> None:
        response = httpx.post(f"{self.url}/api/v2/alerts", json=alerts, timeout=10)
        response.raise_for_status()

    def alerts(self, *matchers: str) -> list[dict[str, Any]]:
        """The alerts it holds now (firing or resolved, inhibited or not), filtered by matchers."""
        response = httpx.get(f"{self.url}/api/v2/alerts", params=[("filter", m) for m in matchers], timeout=10)
        response.raise_for_status()
        return response.json()

    def groups(self, *matchers: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v2/alerts/groups", params=[("filter", m) for m in matchers],
                             timeout=10)
        response.raise_for_status()
        return response.json()

    def amtool_commands(self, alertname: str = "<alertname>", **labels: str) -> dict[str, str]:
        """What to type instead of the web UI, by purpose."""
        matchers = " ".join(shlex.quote(f"{k}={v}") for k, v in {"alertname": alertname, **labels}.items())
        url = f"--alertmanager.url={self.url}"
        return {
            "alerts firing now, with their labels": f"amtool alert query --output=extended {url}",
            "silence one for an hour": (f"amtool silence add {matchers} --duration=1h "
                                        f"--comment='investigating' {url}"),
            "the silences": f"amtool silence query {url}",
        }


def monitoring_config(sink: SlackSink, workdir: Path, base: MonitoringConfig = CONFIG, **changes: Any
                      ) -> MonitoringConfig:
    """``base`` posting to the sink: Slack's webhook URL from a file, as a deployment mounts it, and
    the Watchdog's heartbeat to the sink too; ``changes`` (e.g. time_scale) on top."""
    secret = workdir / "slack-api-url"
    # Written the way a mounted secret usually is, trailing newline included.
    secret.write_text(sink.url(SLACK_PATH) + "\n")
    return dataclasses.replace(base, slack_api_url_file=str(secret), heartbeat_url=sink.url(HEARTBEAT_PATH),
                               **changes)


@contextlib.contextmanager
def running_alertmanager(folder: Path, config: MonitoringConfig, port: int) -> Iterator[Alertmanager]:
    """Alertmanager with the routing, inhibitions and Slack template generated from ``config``
    (written into ``folder``, beside the rules Prometheus loads)."""
    alerts_generate.write(folder, config)
    url = f"http://127.0.0.1:{port}"
    config_file = folder / alerts_generate.ALERTMANAGER_FILE
    log = folder / "alertmanager.log"
    with running_process("alertmanager", [
        str(ALERTMANAGER), f"--config.file={config_file}", f"--storage.path={folder / 'alertmanager-data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
        # What the Slack messages' Silence button links to.
        f"--web.external-url={url}",
    ], f"{url}/-/ready", log):
        yield Alertmanager(url, config_file, log)


# -- Prometheus ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prometheus:
    """A running Prometheus; links go to the classic UI, the only one Debian's package serves."""

    url: str
    rules_file: Path | None
    log: Path

    def alerts_page(self) -> str:
        return f"{self.url}/classic/alerts"

    def graph(self, expr: str, range_input: str = "15m") -> str:
        return f"{self.url}/classic/graph?g0.expr={quote(expr, safe='')}&g0.tab=0&g0.range_input={range_input}"

    def classic(self, generator_url: str) -> str:
        """An alert's source link (its Slack Query button, /graph?g0.expr=...) in the classic UI."""
        return re.sub(r"^(https?://[^/]+)/graph\?", r"\1/classic/graph?", generator_url)

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        response.raise_for_status()
        return response.json()["data"]["result"]

    def sees_the_pipeline_flowing(self, stages: int) -> tuple[bool, str]:
        """Whether every collector of the exporter succeeds and ``stages`` stages process events, as
        Prometheus sees it (a healthy start to measure incidents against), and what it sees."""
        try:
            collectors = self.query(f'min(treewatch_collector_success{{job="{EXPORTER_JOB}"}})')
            processing = self.query(f'count(stage:tree_events_processed:rate5m{{job="{EXPORTER_JOB}"}} > 0)')
        except httpx.HTTPError as error:
            return False, f"Prometheus did not answer: {error}"
        ok = bool(collectors) and collectors[0]["value"][1] == "1"
        flowing = bool(processing) and int(processing[0]["value"][1]) >= stages
        seen = (f"collectors {'all succeed' if ok else 'failing or not scraped yet'}; "
                f"{processing[0]['value'][1] if processing else 0} of {stages} stages processing")
        return ok and flowing, seen


def rules_pass_promtool(rules_file: Path) -> tuple[bool, str]:
    if not PROMTOOL.exists():
        return True, ""
    result = subprocess.run([str(PROMTOOL), "check", "rules", str(rules_file)], capture_output=True, text=True)
    return result.returncode == 0, (result.stdout + result.stderr).strip()


@contextlib.contextmanager
def running_prometheus(folder: Path, *, exporter: str | Sequence[ScrapeTarget], alertmanager: str, port: int,
                       rules_file: Path | None, scrape_seconds: float,
                       resend_delay: str = "1m") -> Iterator[Prometheus]:
    """Prometheus scraping the exporter at ``exporter`` (host:port; or several, each with its
    environment's labels) as job treewatch, evaluating ``rules_file`` and sending alerts to
    ``alertmanager`` (host:port).

    ``resend_delay`` is how often a firing alert is sent again (Prometheus' default: 1m). An alert
    that fires before Prometheus has found its Alertmanager (the Watchdog, at the first
    evaluation) reaches it only with the next resend, so it is scaled with the rules."""
    interval = f"{round(scrape_seconds * 1000)}ms"
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        # A rule group's own interval (scaled with the rules) takes precedence over this one.
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "rule_files": [str(rules_file)] if rules_file else [],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [{"job_name": EXPORTER_JOB, "static_configs": [{"targets": [exporter]}]}
                           if isinstance(exporter, str) else scrape_job(EXPORTER_JOB, exporter)],
    }, sort_keys=False))
    url = f"http://127.0.0.1:{port}"
    log = folder / "prometheus.log"
    with running_process("prometheus", [
        str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={folder / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d",
        f"--rules.alert.resend-delay={resend_delay}",
        # What the alerts' source links (a Slack message's Query button) point at.
        f"--web.external-url={url}",
    ], f"{url}/-/ready", log):
        yield Prometheus(url, rules_file, log)


# -- all of it --------------------------------------------------------------------------------------

@dataclass
class MonitoringStack:
    config: MonitoringConfig
    sink: SlackSink
    alertmanager: Alertmanager
    prometheus: Prometheus
    notes: list[str] = field(default_factory=list)  # what could not be loaded, for the caller to say


@contextlib.contextmanager
def monitoring_stack(workdir: Path, *, exporter_url: str, prometheus_port: int, alertmanager_port: int,
                     time_scale: float = 1.0, scrape_seconds: float = 1.0) -> Iterator[MonitoringStack]:
    """The sink, Alertmanager and Prometheus, started in that order and stopped in reverse."""
    folder = workdir / "monitoring"
    folder.mkdir(parents=True, exist_ok=True)
    with SlackSink() as sink:
        config = monitoring_config(sink, folder, time_scale=time_scale)
        with running_alertmanager(folder, config, alertmanager_port) as alertmanager:
            rules_file = folder / alerts_generate.RULES_FILE
            notes = []
            valid, output = rules_pass_promtool(rules_file)
            if not valid:
                notes.append(f"the generated rules do not pass promtool; Prometheus runs without them:\n{output}")
            with running_prometheus(folder, exporter=host_port(exporter_url), alertmanager=host_port(alertmanager.url),
                                    port=prometheus_port, rules_file=rules_file if valid else None,
                                    scrape_seconds=scrape_seconds,
                                    resend_delay=config.duration("1m")) as prometheus:
                yield MonitoringStack(config, sink, alertmanager, prometheus, notes)


def host_port(url: str) -> str:
    return url.split("//", 1)[-1].split("/", 1)[0]
