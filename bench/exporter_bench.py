"""The exporter's cost at scale, against a real broker (one section of ``make bench``, ``python -m bench``).

Starts a Kafka broker (devkafka), creates TOPICS × PARTITIONS_PER_TOPIC partitions with records,
GROUPS consumer groups with committed offsets behind the high watermark (so every committed
partition has lag and a record age to read) and dead letters in each stage's DLQ. Then measures:

- refresh time: ``KafkaSource.gather()`` in this process, the first (cold: every record timestamp
  is read) and the median of the following ones (warm: timestamps come from the per-offset cache);
- render time: the snapshot rendered to the exposition format (once per snapshot);
- scrape time and memory: a real ``treewatch exporter`` process, scraped over HTTP; its resident
  memory from /proc after several refreshes.

``measure()`` runs it; ``section(results)`` is its part of docs/benchmarks.md.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import httpx
import yaml
from confluent_kafka import ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from devkafka import KafkaCluster, free_port
from exporter.kafka_source import KafkaSource
from exporter.refresh import Refresher, default_build_info
from exporter.render import render
from pipeline.config import Config, parse_config
from pipeline.events import dead_letter

ROOT = Path(__file__).resolve().parent.parent

TOPICS = 200
PARTITIONS_PER_TOPIC = 10
RECORDS_PER_PARTITION = 20
GROUPS = 250
COMMITTED_AT = 12  # every group commits this offset on each partition of its topic: lag 8
DEAD_LETTERS_PER_STAGE = 1_000
WARM_REFRESHES = 7
SCRAPES = 20
EXPORTER_REFRESHES = 3
ENV = "bench"


def measure() -> dict[str, float]:
    started = time.monotonic()
    with KafkaCluster(nodes=1, heap="1g") as kafka:
        print(f"broker up at {kafka.bootstrap_servers}; loading data", flush=True)
        load = populate(kafka)
        config = bench_config(kafka.bootstrap_servers)
        refresh = measure_refreshes(config)
        served = measure_exporter_process(config)
    return {**load, **refresh, **served, "total_seconds": time.monotonic() - started}


# -- the data --------------------------------------------------------------------------------------

def populate(kafka: KafkaCluster) -> dict[str, float]:
    started = time.monotonic()
    admin = kafka.admin()
    config = bench_config(kafka.bootstrap_servers)
    data_topics = [f"bench-topic-{i:03d}" for i in range(TOPICS)]
    pipeline_topics = [topic for stage in config.stages for topic in stage.topics.values()]
    new = [NewTopic(topic, PARTITIONS_PER_TOPIC, 1) for topic in data_topics]
    new += [NewTopic(topic, 3, 1) for topic in pipeline_topics]
    for future in admin.create_topics(new, request_timeout=120).values():
        future.result(timeout=180)

    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 50,
                         "queue.buffering.max.messages": 200_000})
    base_ms = int(time.time() * 1000) - 3_600_000
    for topic in data_topics:
        for partition in range(PARTITIONS_PER_TOPIC):
            for i in range(RECORDS_PER_PARTITION):
                producer.produce(topic, b'{"payload": {}}', partition=partition,
                                 timestamp=base_ms + i * 60_000)
        producer.poll(0)
    error_types = ("FILE_NOT_FOUND", "INTELLIGENCE_SERVICE_ERROR", "ENCODING_ERROR")
    for stage in config.stages:
        for i in range(DEAD_LETTERS_PER_STAGE):
            value = json.dumps(dead_letter(stage.request_topic, {"payload": {"correlation_id": str(i)}},
                                           error_types[i % 3], "benchmark")).encode()
            producer.produce(stage.dlq_topic, value if i % 50 else b"not json", partition=i % 3)
        for topic, count in ((stage.request_topic, 3_000), (stage.completed_topic, 2_500),
                             (stage.failed_topic, 100)):
            for i in range(count):
                producer.produce(topic, b"{}", partition=i % 3)
        producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError("records were still unsent after 120 s")

    requests = [ConsumerGroupTopicPartitions(
        f"bench-group-{g:03d}",
        [TopicPartition(data_topics[g % TOPICS], p, COMMITTED_AT) for p in range(PARTITIONS_PER_TOPIC)])
        for g in range(GROUPS)]
    commit_group_offsets(admin, requests)
    return {"partitions": TOPICS * PARTITIONS_PER_TOPIC + len(pipeline_topics) * 3,
            "groups": GROUPS, "committed_partitions": GROUPS * PARTITIONS_PER_TOPIC,
            "load_seconds": time.monotonic() - started}


def commit_group_offsets(admin: AdminClient, requests: list[ConsumerGroupTopicPartitions]) -> None:
    """Commit every request's offsets, asking again for the partitions the broker refused.

    A successful AlterConsumerGroupOffsets can still carry an error per partition (a group
    coordinator still loading right after the broker started): those offsets were not written."""
    pending = requests
    deadline = time.monotonic() + 120
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"offsets of {len(pending)} groups still refused after 120 s")
        futures = [admin.alter_consumer_group_offsets([request], request_timeout=60) for request in pending]
        refused = []
        for request, future_map in zip(pending, futures, strict=True):
            answer = next(iter(future_map.values())).result(timeout=120)
            if any(tp.error is not None for tp in answer.topic_partitions):
                refused.append(request)
        pending = refused


def bench_config(bootstrap: str, listen: str = "127.0.0.1:0") -> Config:
    return parse_config(config_data(bootstrap, listen), source="bench")


def config_data(bootstrap: str, listen: str) -> dict:
    return {"env": ENV, "kafka": {"bootstrap_servers": bootstrap, "request_timeout_seconds": 30},
            "services": {}, "exporter": {"listen_address": listen, "refresh_interval_seconds": 2}}


# -- measurements ------------------------------------------------------------------------------

def measure_refreshes(config: Config) -> dict[str, float]:
    source = KafkaSource(config)
    try:
        started = time.perf_counter()
        first = source.gather()
        cold = time.perf_counter() - started
        failed = {c.value: repr(r) for c, r in first.items() if isinstance(r, BaseException)}
        if failed:
            raise RuntimeError(f"collectors failed during the benchmark: {failed}")
        warm = []
        for _ in range(WARM_REFRESHES):
            started = time.perf_counter()
            source.gather()
            warm.append(time.perf_counter() - started)
        refresher = Refresher([source], interval_seconds=60, stale_grace_seconds=120, max_series=1_000_000,
                              build_info=default_build_info(version("treewatch")))
        snapshot = refresher.run_once()
        renders = []
        for _ in range(5):
            started = time.perf_counter()
            text = render(snapshot)
            renders.append(time.perf_counter() - started)
    finally:
        source.close()
    lag_series = len(snapshot.values("kafka_consumer_group_lag"))
    if lag_series < GROUPS * PARTITIONS_PER_TOPIC:
        raise RuntimeError(f"expected lag for {GROUPS * PARTITIONS_PER_TOPIC} partitions, got {lag_series}")
    return {"refresh_cold_seconds": cold, "refresh_warm_median_seconds": statistics.median(warm),
            "refresh_warm_max_seconds": max(warm), "render_median_seconds": statistics.median(renders),
            "series": len(snapshot), "exposition_bytes": len(text)}


def measure_exporter_process(config: Config) -> dict[str, float]:
    """A real `treewatch exporter` process: HTTP scrape time and resident memory."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="treewatch-bench-") as folder:
        config_file = Path(folder) / "treewatch.yaml"
        data = config_data(config.kafka.bootstrap_servers, f"127.0.0.1:{port}")
        config_file.write_text(yaml.safe_dump(data))
        process = subprocess.Popen([sys.executable, "-m", "treewatch", "--log-level", "WARNING", "exporter",
                                    "--config", str(config_file)], cwd=ROOT)
        try:
            url = f"http://127.0.0.1:{port}"
            with httpx.Client(timeout=30) as client:
                wait_for(lambda: _ready(client, url), timeout=120, what="the exporter to be ready")
                seen: set[float] = set()

                def refreshed_enough() -> bool:
                    seen.add(_last_success(client.get(f"{url}/metrics").text))
                    return len(seen) >= EXPORTER_REFRESHES

                wait_for(refreshed_enough, timeout=180, what=f"{EXPORTER_REFRESHES} exporter refreshes")
                scrapes = []
                for _ in range(SCRAPES):
                    started = time.perf_counter()
                    response = client.get(f"{url}/metrics")
                    scrapes.append(time.perf_counter() - started)
                    response.raise_for_status()
            status = Path(f"/proc/{process.pid}/status").read_text()
        finally:
            process.terminate()
            process.wait(timeout=30)
    memory = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines()
              if line.startswith(("VmRSS", "VmHWM"))}
    return {"scrape_median_seconds": statistics.median(scrapes), "scrape_max_seconds": max(scrapes),
            "exporter_rss_mib": memory["VmRSS"] / 1024, "exporter_peak_rss_mib": memory["VmHWM"] / 1024}


def _ready(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(f"{url}/-/ready").status_code == 200
    except httpx.TransportError:
        return False


def _last_success(text: str) -> float:
    for line in text.splitlines():
        if line.startswith('treewatch_collector_last_success_timestamp_seconds{collector="kafka_groups"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.25)


# -- the report --------------------------------------------------------------------------------

def section(results: dict[str, float]) -> str:
    def ms(key: str) -> str:
        return f"{results[key] * 1000:.0f} ms"

    rows = [
        ("partitions", f"{results['partitions']:,}"),
        ("consumer groups", f"{results['groups']:,}"),
        ("committed partitions (each with lag)", f"{results['committed_partitions']:,}"),
        ("dead letters per stage (3 stages)", f"{DEAD_LETTERS_PER_STAGE:,}"),
        ("series exposed", f"{results['series']:,}"),
        ("exposition size", f"{results['exposition_bytes'] / 1024:.0f} KiB"),
        ("refresh, first (cold: every record age read, DLQ tailed from the start)",
         ms("refresh_cold_seconds")),
        (f"refresh, warm (median of {WARM_REFRESHES}; max {ms('refresh_warm_max_seconds')})",
         ms("refresh_warm_median_seconds")),
        ("render of one snapshot (median of 5)", ms("render_median_seconds")),
        (f"HTTP scrape of /metrics (median of {SCRAPES}; max {ms('scrape_max_seconds')})",
         ms("scrape_median_seconds")),
        (f"exporter resident memory after {EXPORTER_REFRESHES}+ refreshes",
         f"{results['exporter_rss_mib']:.0f} MiB"),
        ("exporter peak resident memory", f"{results['exporter_peak_rss_mib']:.0f} MiB"),
    ]
    lines = [
        "## Exporter against Kafka",
        "",
        "`make bench` starts a real single-node Kafka, loads it, and measures the exporter's Kafka side. The",
        "broker runs on the same machine as the exporter, so the times include the broker's own work. This",
        "is a measurement, not a timed test: nothing fails on a slow machine.",
        "",
        "| what | result |",
        "|---|---|",
        *[f"| {what} | {value} |" for what, value in rows],
        "",
        "Refresh time is `KafkaSource.gather()` end to end: metadata, groups (listed, described in batches,",
        "committed offsets fetched with the configured concurrency), one ListOffsets round each for high",
        "watermarks and log starts, record timestamps for lag in seconds, the DLQ tail. A scrape only",
        "serves the snapshot's text, rendered once per refresh (the first scrape after a refresh pays the",
        "render time above), so it costs the same however slow Kafka is.",
        "",
        f"This benchmark took {results['total_seconds']:.0f} s in total, loading the broker included.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
