"""The guide's issue 4, "Slow project ingestion", on real components.

- The cache hit rate gauge: the exporter's services collector reading ``/cache/metrics`` of a real
  HTTP server that answers a good body and every kind of poison (huge, endless, trickled, binary,
  deeply nested, not an object, a hit_rate that is no rate, an error status, a refused port): the
  good one becomes ``tree_service_cache_hit_ratio``, each bad one a failure with its reason, and
  none of them fails the collector or the health probes beside it.
- End to end: the simulator with a slow stage (``treewatch simulate --delay``) serves the services'
  own ``/metrics`` and ``/cache/metrics``; the exporter runs; a real Prometheus scrapes the jobs
  ``treewatch generate`` writes (alerts/prometheus_config.py) and evaluates the generated rules
  time-scaled (as tests/test_incidents.py does). SlowProjectIngestion fires, and the Overview
  dashboard's ingestion panels, their queries as generated, return the values the slow stage makes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

import treewatch  # noqa: F401 (registers the configuration's sections: exporter, monitoring)
from alerts import generate
from alerts.config import CONFIG, SERVICES_JOB
from alerts.prometheus_config import prometheus_config
from dashboards import generate as dashboards_generate
from devkafka import KafkaCluster, free_port, free_ports
from devkafka.processes import running_process
from exporter.metrics import TREE_SERVICE_CACHE_HIT_RATIO, TREE_SERVICE_CACHE_METRICS_FAILURE, Part
from exporter.services_source import ServicesSource
from pipeline import cache_metrics, health
from pipeline.config import DEFAULT_STAGES, Config, default_services_at, load_config, parse_config
from simulator.service_metrics import DEFAULT_CACHE_HIT_RATE
from tests.http_stubs import StubHandler, serving

PROMETHEUS = "/usr/bin/prometheus"
MAX_BODY_BYTES = 4096
TIMEOUT_SECONDS = 1.0

# -- the cache hit rate gauge against a real server ---------------------------------------------------

# path -> (HTTP status, body); the special bodies are written by the handler.
ANSWERS: dict[str, tuple[int, bytes | str]] = {
    "/good": (200, b'{"hit_rate": 0.42, "hits": 42, "misses": 58}'),
    "/zero": (200, b'{"hit_rate": 0}'),
    "/huge": (200, b'{"hit_rate": 0.5, "pad": "' + b"x" * (MAX_BODY_BYTES * 4) + b'"}'),
    "/endless": (200, "endless"),
    "/trickle": (200, "trickle"),
    "/binary": (200, bytes(range(256)) * 4),
    "/nested": (200, b"[" * 2000 + b"]" * 2000),  # within the cap, far deeper than any reader recurses
    "/array": (200, b"[0.5]"),
    "/string": (200, b'{"hit_rate": "0.9"}'),
    "/boolean": (200, b'{"hit_rate": true}'),
    "/above-one": (200, b'{"hit_rate": 1.5}'),
    "/nan": (200, b'{"hit_rate": NaN}'),
    "/missing": (200, b'{"hits": 3}'),
    "/error": (500, b'{"hit_rate": 0.9}'),
}
EXPECTED_REASONS = {
    "huge": health.BODY_TOO_LARGE, "endless": health.BODY_TOO_LARGE, "trickle": health.TIMEOUT,
    "binary": cache_metrics.NOT_A_JSON_OBJECT, "nested": cache_metrics.NOT_A_JSON_OBJECT,
    "array": cache_metrics.NOT_A_JSON_OBJECT, "string": cache_metrics.MISSING_HIT_RATE,
    "boolean": cache_metrics.MISSING_HIT_RATE, "above-one": cache_metrics.HIT_RATE_OUT_OF_RANGE,
    "nan": cache_metrics.HIT_RATE_OUT_OF_RANGE, "missing": cache_metrics.MISSING_HIT_RATE,
    "error": health.HTTP_ERROR, "refused": health.CONNECTION_REFUSED,
}


class _CacheHandler(StubHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/health":
            self.answer(200, b'{"status": "healthy"}')
            return
        status, body = ANSWERS[self.path]
        if body == "endless":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()  # no length: the body ends when the connection does, i.e. never
            with contextlib.suppress(ConnectionError):
                while True:
                    self.wfile.write(b'{"hit_rate": 0.5, "pad": "' + b"y" * 1024)
        elif body == "trickle":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            with contextlib.suppress(ConnectionError):
                for _ in range(1000):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.1)  # the slow sender the reader's timeout must cut off
        else:
            self.answer(status, body)


@pytest.fixture(scope="module")
def cache_server() -> Iterator[str]:
    with serving(_CacheHandler) as base_url:
        yield base_url


def _config(services: dict[str, dict[str, str]]) -> Config:
    return parse_config({"services": services, "exporter": {
        "health_timeout_seconds": TIMEOUT_SECONDS, "health_max_body_bytes": MAX_BODY_BYTES,
        "refresh_interval_seconds": 5}}, "<test>", environ={})


def test_the_cache_hit_rate_becomes_a_gauge_and_every_poison_answer_a_failure_with_its_reason(cache_server):
    refused = f"http://127.0.0.1:{free_port()}/cache/metrics"
    services = {name.removeprefix("/"): {"url": f"{cache_server}/health", "cache_metrics_url": cache_server + name}
                for name in ANSWERS}
    services["refused"] = {"url": f"{cache_server}/health", "cache_metrics_url": refused}
    services["no-cache"] = {"url": f"{cache_server}/health"}
    source = ServicesSource(_config(services))

    samples = source.gather()[Part.SERVICES]

    assert not isinstance(samples, BaseException)
    ratios = {sample.labels[0]: sample.value for sample in samples if sample.metric is TREE_SERVICE_CACHE_HIT_RATIO}
    assert ratios == {"good": 0.42, "zero": 0.0}
    failures = {sample.labels for sample in samples
                if sample.metric is TREE_SERVICE_CACHE_METRICS_FAILURE and sample.value == 1}
    assert failures == {(service, reason) for service, reason in EXPECTED_REASONS.items()}
    # One-hot: every reason of every service with a cache URL is written, 0 or 1; none for the one without.
    written = {sample.labels[0] for sample in samples if sample.metric is TREE_SERVICE_CACHE_METRICS_FAILURE}
    assert written == set(services) - {"no-cache"}
    assert len(samples) == len(source.gather()[Part.SERVICES])
    # The health probes beside the reads are unharmed by them: every service answered healthy.
    healthy = [sample for sample in samples if sample.metric.name == "tree_service_probe_success"]
    assert len(healthy) == len(services) and all(sample.value == 1 for sample in healthy)


def test_a_cache_metrics_url_must_be_a_url():
    with pytest.raises(Exception, match="cache_metrics_url"):
        _config({"intelligence": {"url": "http://localhost:8053/health", "cache_metrics_url": "localhost:8053"}})


def test_the_default_intelligence_service_reports_its_cache():
    (intelligence,) = [service for service in parse_config({}, "<defaults>", environ={}).services
                       if service.name == "intelligence"]
    assert intelligence.cache_metrics_url == "http://localhost:8053/cache/metrics"


# -- end to end: a slow stage, the simulator's own metrics, Prometheus, the alert and the panels -----

# Every duration of the rules is this share of the real one: SlowProjectIngestion's 5m `for` and window
# are 15 s.
TIME_SCALE = 0.05
SCRAPE = "1s"
# stamp takes about 20 ms per file, index 0.5 s: above the 0.3 s per file the guide's target allows.
STAMP_DELAY, INDEX_DELAY = 0.02, 0.5
FILES, PROJECT_SECONDS = 10, 2.0
WITHIN_SECONDS = 240.0  # bounds on waiting, never expected durations
RATE_INTERVAL = "15s"


@dataclasses.dataclass
class IngestionRun:
    config: Config
    prometheus_url: str
    workdir: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
        response.raise_for_status()
        return response.json()["data"]["result"]

    def await_result(self, expr: str, what: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + WITHIN_SECONDS
        while True:
            result = self.query(expr)
            if result:
                return result
            assert time.monotonic() < deadline, f"{what}: nothing for {expr} after {WITHIN_SECONDS}s; logs in " \
                                                f"{self.workdir}"
            time.sleep(0.5)  # polling Prometheus: it offers nothing to wait on


def _treewatch(*args: str) -> list[str]:
    return [sys.executable, "-m", "treewatch", "--log-level", "WARNING", *args]


def _write_config(workdir: Path, bootstrap_servers: str) -> Path:
    suffix = uuid.uuid4().hex[:8]
    env = f"ingestion-{suffix}"
    ports: dict[int, int] = {}
    services = default_services_at("127.0.0.1", lambda port: ports.setdefault(port, free_port()))
    intelligence = services["intelligence"]["url"]
    services["intelligence"]["cache_metrics_url"] = intelligence.replace("/health", "/cache/metrics")
    data = {
        "env": env,
        "kafka": {"bootstrap_servers": bootstrap_servers},
        "stages": {name: {"group": f"{stage['group']}-{suffix}"} for name, stage in DEFAULT_STAGES.items()},
        "services": services,
        "exporter": {"listen_address": f"127.0.0.1:{free_port()}", "refresh_interval_seconds": 1,
                     "health_timeout_seconds": 0.8, "groups": {"allow": [f".*-{suffix}"]},
                     "topics": {"allow": [rf"{env}\..*"]}},
    }
    path = workdir / "treewatch.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _prometheus_yml(config: Config, rules_file: Path) -> dict[str, Any]:
    """The configuration `treewatch generate` writes for this deployment, scraping every second."""
    monitoring = dataclasses.replace(CONFIG, time_scale=TIME_SCALE)
    generated = prometheus_config(monitoring, config.exporter, target=config.exporter.listen_address,
                                  env=config.env, cluster="test", rule_file=str(rules_file),
                                  services=config.services)
    generated.pop("alerting")  # no Alertmanager here: the alert's state is read from Prometheus
    generated["global"].update(scrape_interval=SCRAPE, evaluation_interval=SCRAPE)
    for job in generated["scrape_configs"]:
        job.update(scrape_interval=SCRAPE, scrape_timeout=SCRAPE)
    return generated


@pytest.fixture(scope="module")
def ingestion_run(kafka: KafkaCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IngestionRun]:
    if not Path(PROMETHEUS).exists():
        pytest.fail(f"{PROMETHEUS} is not installed (Debian package 'prometheus'; see scripts/setup.sh)")
    workdir = tmp_path_factory.mktemp("ingestion")
    config_file = _write_config(workdir, kafka.bootstrap_servers)
    config = load_config(config_file, environ={})
    monitoring = dataclasses.replace(CONFIG, time_scale=TIME_SCALE)
    rules_file = workdir / generate.RULES_FILE
    rules_file.write_text(generate.render(monitoring)[generate.RULES_FILE])
    (prometheus_yml := workdir / "prometheus.yml").write_text(yaml.safe_dump(_prometheus_yml(config, rules_file)))
    (prometheus_port,) = free_ports(1)
    prometheus_url = f"http://127.0.0.1:{prometheus_port}"
    intelligence = next(service.url for service in config.services if service.name == "intelligence")
    simulator = _treewatch("simulate", "--config", str(config_file), "--files", str(FILES), "--project-interval",
                           str(PROJECT_SECONDS), "--error-rate", "0", "--seed", "7",
                           "--delay", f"stamp={STAMP_DELAY}", "--delay", f"index={INDEX_DELAY}")
    exporter = _treewatch("exporter", "--config", str(config_file))
    with (running_process("simulator", simulator, intelligence, workdir / "simulator.log", timeout=WITHIN_SECONDS),
          running_process("exporter", exporter, f"http://{config.exporter.listen_address}/-/ready",
                          workdir / "exporter.log", timeout=WITHIN_SECONDS),
          running_process("prometheus", [PROMETHEUS, f"--config.file={prometheus_yml}",
                                         f"--storage.tsdb.path={workdir / 'prometheus-data'}",
                                         f"--web.listen-address=127.0.0.1:{prometheus_port}"],
                          f"{prometheus_url}/-/ready", workdir / "prometheus.log", timeout=WITHIN_SECONDS)):
        yield IngestionRun(config, prometheus_url, workdir)


def test_prometheus_scrapes_every_http_service_itself_under_the_services_job(ingestion_run):
    http_services = {service.name for service in ingestion_run.config.services if service.url.startswith("http")}
    assert {"intelligence", "metadata-stamping"} <= http_services
    deadline = time.monotonic() + WITHIN_SECONDS
    while True:
        up = ingestion_run.query(f'up{{job="{SERVICES_JOB}"}} == 1')
        scraped = {series["metric"]["service"] for series in up}
        if scraped == http_services:
            break
        assert time.monotonic() < deadline, f"services scraped: {scraped}, expected {http_services}"
        time.sleep(0.5)  # polling Prometheus: it offers nothing to wait on
    # The store probed over TCP (no /metrics) is no target at all.
    assert not ingestion_run.query(f'up{{job="{SERVICES_JOB}", service="memgraph"}}')


def test_a_slow_stage_fires_slow_project_ingestion(ingestion_run):
    firing = ingestion_run.await_result('ALERTS{alertname="SlowProjectIngestion", alertstate="firing"}',
                                        "SlowProjectIngestion firing")
    assert [(series["metric"]["service"], series["metric"]["job"], series["metric"]["env"]) for series in firing] \
        == [("intelligence", SERVICES_JOB, ingestion_run.config.env)]


def _panel_queries() -> dict[str, list[str]]:
    """The Overview dashboard's ingestion panels: title -> their queries as generated, with Grafana's
    variables as a dashboard opens (every environment) and a rate interval for a 1 s scrape."""
    overview = json.loads(dashboards_generate.rendered()["tree-stamping-overview.json"])
    panels = [panel for panel in overview["panels"] if panel["type"] != "row"]
    values = {"$env": ".*", "$cluster": ".*", "$__rate_interval": RATE_INTERVAL}

    def substituted(expr: str) -> str:
        for name, value in values.items():
            expr = expr.replace(name, value)
        return expr

    titles = ("Event processing time (p50, p95)", "Stamping latency p95", "Cache hit rate")
    return {panel["title"]: [substituted(target["expr"]) for target in panel["targets"]]
            for panel in panels if panel["title"] in titles}


def _values(run: IngestionRun, expr: str, what: str) -> dict[str, float]:
    return {series["metric"]["service"]: float(series["value"][1]) for series in run.await_result(expr, what)}


def test_the_ingestion_panels_show_what_the_slow_stage_does(ingestion_run):
    queries = _panel_queries()
    assert len(queries) == 3
    p50_query, p95_query = queries["Event processing time (p50, p95)"]
    # Most events are stampings of ~20 ms; more than 5 % are index events of 0.5 s, which make the p95.
    p50 = _values(ingestion_run, p50_query, "processing time p50")
    p95 = _values(ingestion_run, p95_query, "processing time p95")
    assert set(p50) == set(p95) == {"intelligence"}
    assert STAMP_DELAY / 2 <= p50["intelligence"] < INDEX_DELAY
    assert INDEX_DELAY <= p95["intelligence"] <= 2 * INDEX_DELAY
    assert p95["intelligence"] > CONFIG.ingestion_seconds_per_file
    (stamping_query,) = queries["Stamping latency p95"]
    stamping = _values(ingestion_run, stamping_query, "stamping latency p95")
    assert set(stamping) == {"metadata-stamping"}
    assert stamping["metadata-stamping"] >= STAMP_DELAY * 1000
    (cache_query,) = queries["Cache hit rate"]
    assert _values(ingestion_run, cache_query, "cache hit rate") == {"intelligence": DEFAULT_CACHE_HIT_RATE}
