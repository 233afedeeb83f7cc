"""The exporter's cost at scale, against a real broker (one section of ``make bench``, ``python -m bench``).

Starts a Kafka broker (devkafka), creates TOPICS × PARTITIONS_PER_TOPIC partitions with records,
GROUPS consumer groups with committed offsets behind the high watermark (so every committed
partition has lag and a record age to read) and dead letters in each stage's DLQ. Then measures:

- refresh time: ``KafkaSource.gather()`` in this process, the first (cold: every record timestamp
  is read) and the median of the following ones (warm: timestamps come from the per-offset cache);
- render time: the snapshot rendered to the exposition format (once per snapshot);
- scrape time and memory: a real ``treewatch exporter`` process, scraped over HTTP; its resident
  memory from /proc after several refreshes.

Then, without Kafka, scrapes under slow clients (``measure_slow_clients``): an exporter process
serving a synthetic 7 MB exposition that changes every few seconds, scraped by one well-behaved
client while SLOW_CLIENTS others send their requests or read their answers one byte a second.

``measure()`` runs it all; ``section(results)`` is its part of docs/benchmarks.md.
``python -m bench.exporter_bench slow-clients`` runs only the slow-client part and prints its section.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import version
from pathlib import Path

import httpx
import yaml
from confluent_kafka import ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from devkafka import KafkaCluster, free_port
from devkafka.processes import stop_processes
from exporter.kafka_source import KafkaSource
from exporter.metrics import (
    KAFKA_CONSUMER_GROUP_COMMITTED_OFFSET,
    KAFKA_CONSUMER_GROUP_COMMITTED_OFFSET_CHANGE_TIMESTAMP_SECONDS,
    KAFKA_CONSUMER_GROUP_LAG,
    KAFKA_CONSUMER_GROUP_LAG_SECONDS,
    Part,
)
from exporter.refresh import Refresher, default_build_info
from exporter.render import Renderer, render
from exporter.server import Endpoints, ExporterHTTPServer, Limits
from exporter.snapshot import Sample
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

SYNTHETIC_PARTITIONS = 16_000  # x 4 metrics: 64,000 series, about 7 MB of exposition
SYNTHETIC_REFRESH_SECONDS = 5.0  # each refresh a new snapshot, rendered while scrapes go on
SLOW_CLIENTS = 50  # half send their request a byte a second, half read their answer a byte a second
TIMED_SCRAPES = 100
SCRAPE_PAUSE_SECONDS = 0.2


def measure() -> dict[str, float]:
    started = time.monotonic()
    with KafkaCluster(nodes=1, heap="1g") as kafka:
        print(f"broker up at {kafka.bootstrap_servers}; loading data", flush=True)
        load = populate(kafka)
        config = bench_config(kafka.bootstrap_servers)
        refresh = measure_refreshes(config)
        served = measure_exporter_process(config)
    slow_clients = measure_slow_clients()
    return {**load, **refresh, **served, **slow_clients, "total_seconds": time.monotonic() - started}


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
    lag_series = len(snapshot.values(KAFKA_CONSUMER_GROUP_LAG))
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
            stop_processes(process, grace_seconds=30)
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


# -- scrapes under slow clients ----------------------------------------------------------------

class SyntheticGroups:
    """A source of SYNTHETIC_PARTITIONS consumer-group partitions whose values change every run."""

    name = "synthetic"
    collectors = (Part.KAFKA_GROUPS,)
    metrics = (KAFKA_CONSUMER_GROUP_LAG, KAFKA_CONSUMER_GROUP_LAG_SECONDS, KAFKA_CONSUMER_GROUP_COMMITTED_OFFSET,
               KAFKA_CONSUMER_GROUP_COMMITTED_OFFSET_CHANGE_TIMESTAMP_SECONDS)

    def __init__(self) -> None:
        self.runs = 0

    def gather(self) -> Mapping[Part, Sequence[Sample]]:
        self.runs += 1
        return {Part.KAFKA_GROUPS: [
            Sample(metric, (f"bench-group-{p // 10:04d}", f"bench-topic-{p // 10:04d}", str(p % 10)),
                   float(p + self.runs))
            for metric in self.metrics for p in range(SYNTHETIC_PARTITIONS)]}

    def close(self) -> None:
        pass


def serve_synthetic(port: int) -> None:
    """An exporter as ``build_exporter`` wires it, over SyntheticGroups instead of Kafka; until SIGTERM."""
    renderer = Renderer(lambda: refresher.current)
    refresher = Refresher([SyntheticGroups()], interval_seconds=SYNTHETIC_REFRESH_SECONDS, stale_grace_seconds=60,
                          max_series=1_000_000, build_info=default_build_info(version("treewatch")),
                          on_snapshot=renderer.prerender)
    endpoints = Endpoints(renderer=renderer, ready=lambda: refresher.ready, landing_page=lambda: "synthetic")
    server = ExporterHTTPServer(("127.0.0.1", port), endpoints, limits=Limits())
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    refresher.start()
    server.serve_forever()
    server.server_close()
    refresher.stop()


def measure_slow_clients() -> dict[str, float]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.exporter_bench", "serve-synthetic", str(port)],
                               cwd=ROOT)
    stop = threading.Event()
    try:
        wait_for(lambda: _synthetic_ready(port), timeout=300, what="the synthetic exporter to be ready")
        plain_bytes, gzip_bytes = len(_scrape(port)[1]), len(_scrape(port, gzip=True)[1])
        quiet = _timed_scrapes(port, gzip=False)
        slow = [threading.Thread(target=_slow_client, args=(port, stop, i % 2 == 0), daemon=True)
                for i in range(SLOW_CLIENTS)]
        for thread in slow:
            thread.start()
        threads: list[int] = []

        def count_threads() -> int:
            threads.append(_process_threads(process.pid))
            return threads[-1]

        wait_for(lambda: count_threads() > SLOW_CLIENTS, timeout=120,
                 what=f"the exporter to hold {SLOW_CLIENTS} slow connections")
        crowded = _timed_scrapes(port, gzip=False, after_each=count_threads)
        crowded_gzip = _timed_scrapes(port, gzip=True, after_each=count_threads)
        peak_rss = _process_status(process.pid)["VmHWM"] / 1024
        load_average = os.getloadavg()[0]
    finally:
        stop.set()
        stop_processes(process, grace_seconds=60)
    return {"synthetic_exposition_bytes": plain_bytes, "synthetic_gzip_bytes": gzip_bytes,
            **_latency("quiet", quiet), **_latency("slow_clients", crowded),
            **_latency("slow_clients_gzip", crowded_gzip),
            "slow_clients_exporter_threads_max": max(threads), "slow_clients_exporter_peak_rss_mib": peak_rss,
            "slow_clients_load_average": load_average}


def _synthetic_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(b"GET /-/ready HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            return connection.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _scrape(port: int, gzip: bool = False) -> tuple[float, bytes]:
    """Seconds from connecting to the last byte of /metrics, and the body; a bare socket, so that
    the client's own parsing stays out of the time."""
    request = b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
    request += b"Accept-Encoding: gzip\r\n\r\n" if gzip else b"\r\n"
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as connection:
        connection.sendall(request)
        chunks = []
        while chunk := connection.recv(1 << 20):
            chunks.append(chunk)
    elapsed = time.perf_counter() - started
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"scrape answered {head[:40]!r}")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    if len(body) != length:
        raise RuntimeError(f"scrape cut short: {len(body)} of {length} bytes")
    return elapsed, body


def _timed_scrapes(port: int, gzip: bool, after_each: Callable[[], object] = lambda: None) -> list[float]:
    times = []
    for _ in range(TIMED_SCRAPES):
        times.append(_scrape(port, gzip)[0])
        after_each()
        time.sleep(SCRAPE_PAUSE_SECONDS)  # a scraper's pace, not a wait for anything
    return times


def _slow_client(port: int, stop: threading.Event, drips_request: bool) -> None:
    """Sends its request, or reads its answer, one byte a second; connects again when cut off."""
    while not stop.is_set():
        try:
            with socket.socket() as connection:
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                connection.connect(("127.0.0.1", port))
                if drips_request:
                    for byte in b"GET /metrics HTTP/1.1\r\nHost: bench\r\nX-Slow: " + b"a" * 100_000:
                        connection.send(bytes([byte]))
                        if stop.wait(1):
                            return
                else:
                    connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
                    while connection.recv(1) and not stop.wait(1):
                        pass
        except OSError:  # cut off by the exporter: a slow client comes back
            pass


def _process_status(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines()
            if line.startswith(("VmRSS", "VmHWM", "Threads"))}


def _process_threads(pid: int) -> int:
    return _process_status(pid)["Threads"]


def _latency(name: str, times: list[float]) -> dict[str, float]:
    return {f"{name}_p50_seconds": statistics.median(times),
            f"{name}_p99_seconds": statistics.quantiles(times, n=100)[98], f"{name}_max_seconds": max(times)}


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
        "serves the snapshot's text, rendered once per refresh on the refresh side (no scrape pays the",
        "render time above), so it costs the same however slow Kafka is.",
        "",
        slow_clients_section(results),
        f"This benchmark took {results['total_seconds']:.0f} s in total, loading the broker included.",
        "",
    ]
    return "\n".join(lines)


def slow_clients_section(results: dict[str, float]) -> str:
    def latency(name: str) -> str:
        return " / ".join(f"{results[f'{name}_{q}_seconds'] * 1000:.0f} ms" for q in ("p50", "p99", "max"))

    rows = [
        ("exposition (gzip)", f"{results['synthetic_exposition_bytes'] / 1024 / 1024:.1f} MiB "
                              f"({results['synthetic_gzip_bytes'] / 1024:.0f} KiB)"),
        ("scrape, no other client", latency("quiet")),
        (f"scrape, {SLOW_CLIENTS} slow clients", latency("slow_clients")),
        (f"scrape with gzip, {SLOW_CLIENTS} slow clients", latency("slow_clients_gzip")),
        ("exporter threads, at most", f"{results['slow_clients_exporter_threads_max']:.0f}"),
        ("exporter peak resident memory", f"{results['slow_clients_exporter_peak_rss_mib']:.0f} MiB"),
    ]
    lines = [
        "### Scrapes under slow clients",
        "",
        f"An exporter process serving {SYNTHETIC_PARTITIONS * len(SyntheticGroups.metrics):,} synthetic series "
        f"(a new snapshot every {SYNTHETIC_REFRESH_SECONDS:g} s, rendered",
        f"while scrapes go on) is scraped {TIMED_SCRAPES} times per line by one well-behaved client, "
        f"{SCRAPE_PAUSE_SECONDS:g} s apart,",
        f"while {SLOW_CLIENTS // 2} clients send their request and {SLOW_CLIENTS - SLOW_CLIENTS // 2} read "
        "their answer one byte a second (each",
        "connecting again when cut off). Times run from connecting to the last byte; p50 / p99 / max.",
        f"The 1-minute load average was {results['slow_clients_load_average']:.1f} at the end: the tail is the "
        "refresh side's",
        "own work (building and rendering 64,000 series, and the garbage collections it sets off, hold the",
        "GIL) on a busy machine, never a wait behind a slow client or a rendering.",
        "",
        "| what | result |",
        "|---|---|",
        *[f"| {what} | {value} |" for what, value in rows],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve-synthetic"]:
        serve_synthetic(int(sys.argv[2]))
    elif sys.argv[1:2] == ["slow-clients"]:
        slow_results = measure_slow_clients()
        print(json.dumps(slow_results, indent=2))
        print(slow_clients_section(slow_results))
    else:
        print(json.dumps(measure(), indent=2))
