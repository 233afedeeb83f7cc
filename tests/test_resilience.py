"""The exporter keeps answering while Kafka is down, and recovers by itself when it returns.

The exporter runs over its own single-broker cluster (the session broker is shared; this one gets
stopped) and one real local health endpoint. Every scrape is a real HTTP request with a short
client timeout: an exporter that blocked on Kafka would fail it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from devkafka import KafkaCluster, free_port
from exporter.app import build_exporter
from exporter.metrics import Part
from pipeline.config import Config, parse_config
from pipeline.kafka import LibrdkafkaLog
from tests.http_stubs import AlwaysHealthy, serving

REFRESH = 0.5
REQUEST_TIMEOUT = 2.0
# Longer than a failed gather takes (about REQUEST_TIMEOUT), so the stale window can be seen.
GRACE = 8.0
# A scrape must answer within this, whatever Kafka does: the exporter never asks Kafka while serving.
SCRAPE_TIMEOUT = 2.0
KAFKA_COLLECTORS = [c.value for c in (Part.KAFKA_CLUSTER, Part.KAFKA_TOPICS, Part.KAFKA_GROUPS,
                                      Part.PIPELINE, Part.DLQ)]
REPO = Path(__file__).resolve().parent.parent

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def own_kafka() -> Iterator[KafkaCluster]:
    with KafkaCluster(nodes=1) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def health_url() -> Iterator[str]:
    with serving(AlwaysHealthy) as base_url:
        yield f"{base_url}/health"


def _config_data(kafka: KafkaCluster, health_url: str, listen: str = "127.0.0.1:0") -> dict:
    return {
        "kafka": {"bootstrap_servers": kafka.bootstrap_servers, "request_timeout_seconds": REQUEST_TIMEOUT},
        "services": {"intelligence": {"url": health_url}},
        "exporter": {"listen_address": listen, "refresh_interval_seconds": REFRESH,
                     "stale_grace_seconds": GRACE, "health_timeout_seconds": 0.4},
    }


def _config(kafka: KafkaCluster, health_url: str) -> Config:
    return parse_config(_config_data(kafka, health_url), source="test", environ={})


def scrape(url: str) -> Series:
    response = httpx.get(url + "/metrics", timeout=SCRAPE_TIMEOUT)
    response.raise_for_status()
    series: Series = {}
    for family in text_string_to_metric_families(response.text):
        for item in family.samples:
            series[(item.name, frozenset(item.labels.items()))] = item.value
    return series


def value(series: Series, name: str, **labels: str) -> float | None:
    return series.get((name, frozenset(labels.items())))


def await_scrape(url: str, condition: Callable[[Series], bool], timeout: float, what: str) -> Series:
    """Scrape until ``condition`` holds; every scrape on the way must itself answer promptly."""
    deadline = time.monotonic() + timeout
    series: Series = {}
    while time.monotonic() < deadline:
        series = scrape(url)
        if condition(series):
            return series
        time.sleep(0.1)  # between scrapes: the exporter's state is only visible through them
    raise AssertionError(f"not within {timeout}s: {what}")


def _kafka_ok(series: Series) -> bool:
    return all(value(series, "treewatch_collector_success", collector=c) == 1 for c in KAFKA_COLLECTORS)


def _kafka_failing(series: Series) -> bool:
    return all(value(series, "treewatch_collector_success", collector=c) == 0 for c in KAFKA_COLLECTORS)


def _exporter_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "http" or t.name.startswith(("refresh-", "http-"))}


def test_broker_down_then_back(own_kafka: KafkaCluster, health_url: str,
                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="treewatch")
    threads_before = _exporter_threads()
    exporter = build_exporter(_config(own_kafka, health_url), port=0).start()
    try:
        url = exporter.url
        before = await_scrape(url, lambda s: _kafka_ok(s) and value(s, "kafka_brokers") == 1
                              and value(s, "treewatch_collector_success", collector="services") == 1, 60,
                              "every collector succeeds")
        assert value(before, "tree_service_status", service="intelligence", status="healthy") == 1

        own_kafka.stop_node(0)
        failing = await_scrape(url, _kafka_failing, 30, "every kafka collector reports failure")
        # Within the grace period the last values stay, their age told by the last success.
        assert value(failing, "kafka_brokers") == 1
        failed_at = time.time()
        kafka_success = value(failing, "treewatch_collector_last_success_timestamp_seconds",
                              collector="kafka_cluster")
        assert kafka_success is not None and kafka_success < failed_at

        gone = await_scrape(url, lambda s: value(s, "kafka_brokers") is None, GRACE + 30,
                            "kafka series disappear after the grace period")
        assert not any(name.startswith("kafka_") for name, _ in gone)
        assert _kafka_failing(gone)
        # The health probes never stopped: their collector succeeds and its data is fresh.
        assert value(gone, "treewatch_collector_success", collector="services") == 1
        services_success = value(gone, "treewatch_collector_last_success_timestamp_seconds",
                                 collector="services")
        assert services_success is not None and services_success > failed_at
        assert value(gone, "tree_service_probe_success", service="intelligence") == 1
        # Failed runs keep being counted while the series are gone (awaited: how many fit into the
        # grace period depends on how busy the machine is).
        counted = await_scrape(url, lambda s: (value(s, "treewatch_collector_errors_total",
                                                     collector="kafka_cluster") or 0) >= 3,
                               30, "three failed kafka runs counted")
        errors = value(counted, "treewatch_collector_errors_total", collector="kafka_cluster")

        own_kafka.start_node(0)
        own_kafka.wait_ready(1)
        # Two refreshes, each of which may still be finishing a request made while Kafka was away.
        recovered = await_scrape(url, lambda s: _kafka_ok(s) and value(s, "kafka_brokers") == 1,
                                 2 * (REFRESH + REQUEST_TIMEOUT) + 2, "kafka collectors recover")
        assert value(recovered, "tree_service_probe_success", service="intelligence") == 1
    finally:
        exporter.stop()

    # A failure is logged when it starts or changes, never again while it repeats: far fewer
    # warnings than failed runs, and never the same one twice in a row. Recoveries are logged too.
    for collector in KAFKA_COLLECTORS:
        failures = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                    and r.getMessage().startswith(f"collector {collector} failed")]
        assert failures, f"the failure of {collector} was not logged"
        assert all(a != b for a, b in zip(failures, failures[1:], strict=False)), failures
        recoveries = [r for r in caplog.records if r.getMessage() == f"collector {collector} recovered"]
        assert recoveries, f"the recovery of {collector} was not logged"
    cluster_failures = [r for r in caplog.records
                        if r.getMessage().startswith("collector kafka_cluster failed")]
    assert len(cluster_failures) < errors
    # librdkafka retries a down broker every second or so per client; each distinct event is
    # logged once, its repeats only at DEBUG.
    client_lines = Counter(LibrdkafkaLog.event_key(r.getMessage()) for r in caplog.records
                           if r.name == "treewatch.kafka" and r.levelno >= logging.WARNING)
    assert all(count == 1 for count in client_lines.values()), client_lines
    # Nothing the exporter started is left running.
    leftover = {t for t in _exporter_threads() - threads_before if t.is_alive()}
    assert not leftover, leftover


def test_sigterm_stops_the_exporter_process(own_kafka: KafkaCluster, health_url: str, tmp_path: Path) -> None:
    own_kafka.wait_ready(1)
    port = free_port()
    config_file = tmp_path / "treewatch.yaml"
    config_file.write_text(yaml.safe_dump(_config_data(own_kafka, health_url, listen=f"127.0.0.1:{port}")))
    process = subprocess.Popen(
        [sys.executable, "-m", "treewatch", "exporter", "--config", str(config_file)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()
            try:
                if httpx.get(url + "/-/ready", timeout=SCRAPE_TIMEOUT).status_code == 200:
                    break
            except httpx.TransportError:
                pass  # not listening yet
            assert time.monotonic() < deadline, "exporter did not become ready"
            time.sleep(0.2)  # waiting for another process to bind its port
        # A keep-alive connection open at shutdown must not hold the process up.
        with httpx.Client(timeout=SCRAPE_TIMEOUT) as client:
            assert client.get(url + "/metrics").status_code == 200
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr
        assert "shutting down" in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    # The port is free again: nothing of the exporter is left listening.
    with httpx.Client(timeout=SCRAPE_TIMEOUT) as client, pytest.raises(httpx.ConnectError):
        client.get(url + "/-/healthy")
