"""The exporter at three cluster sizes, up to a million committed group-partitions (issue 12).

One section of ``make bench`` (``python -m bench``). Each size gets a fresh single-node Kafka
(devkafka, its data in /dev/shm), built as fast as the broker takes it: topics created in batches,
a few records produced per partition with timestamps an hour old (so lag in seconds is meaningful),
and every group's offsets committed with AlterConsumerGroupOffsets, one group per request, many
requests in flight, each committed offset behind the high watermark (so every committed partition
has lag). The sizes:

- bench: the shape of the exporter benchmark: 200 topics of 10 partitions, 250 groups each on one
  topic (2,500 committed group-partitions);
- large: 10,000 partitions in topics of 10 to 50, 1,000 groups each on all partitions of one topic;
- extreme: 11,200 partitions, 1,000 groups each on 1,000 partitions (1,000,000 committed
  group-partitions).

The pipeline's topics exist too, and each stage's group commits on its request topic.

Then a real ``treewatch exporter`` process is started with the series cap out of the way, and after
a few warm refreshes measured: its own ``treewatch_collector_duration_seconds`` of the Kafka source
(the gather) over several refreshes; scrape latency with 4 scrapers at once, scraping back to back,
with ``Accept-Encoding: gzip`` as Prometheus sends it and without; the exposition's size; the
resident memory of the exporter and of its consumer-group reader child. The issue's goals are
checked against the results, and the growth of each measure with the committed group-partitions
is fitted over the sizes.

``python -m bench.scale_bench [--sizes bench,large,extreme] [--detail all|lag|none]`` runs it alone
and prints the numbers as JSON, then its section.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, get_args

import httpx
import yaml
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench.exporter_bench import (
    _latency,
    _process_status,
    _ready,
    commit_group_offsets,
    config_data,
    wait_for,
)
from devkafka import KafkaCluster, free_port
from devkafka.processes import stop_processes
from exporter.settings import PartitionDetail
from pipeline.config import Config, Stage, parse_config
from pipeline.events import dead_letter
from pipeline.kafka import admin_client, producer

ROOT = Path(__file__).resolve().parent.parent

DETAILS: tuple[str, ...] = get_args(PartitionDetail)
RECORDS_PER_PARTITION = 5  # committed offsets fall between 1 and 4: a lag of 1 to 4 records everywhere
RECORD_SPACING_MS = 60_000  # records a minute apart, the first an hour old
PIPELINE_PARTITIONS = 3
# Kafka refuses a CreateTopics request of more than 10,000 partitions in all ("Excessively large number
# of partitions per request", KAFKA-17870); smaller requests also keep each controller write short.
PARTITIONS_PER_CREATE = 2_000
GROUPS_PER_COMMIT_ROUND = 100  # AlterConsumerGroupOffsets requests in flight at once
SCRAPERS = 4
SCRAPES_PER_SCRAPER_AT_LEAST = 2  # so a size whose scrape takes a minute still gives a p99 of 8
SCRAPE_SOCKET_TIMEOUT_SECONDS = 600.0
MB = 1_000_000  # the units: decimal megabytes and gigabytes


# -- the shapes ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """A cluster state: topics of the given partition counts, and ``groups`` groups, group g committing
    on every partition of ``topics_per_group`` consecutive topics (wrapping round) from topic
    g × topics_per_group."""

    name: str
    topic_partitions: tuple[int, ...]
    groups: int
    topics_per_group: int

    def __post_init__(self) -> None:
        if not 1 <= self.topics_per_group <= len(self.topic_partitions):
            raise ValueError(f"{self.name}: topics_per_group must be 1 to {len(self.topic_partitions)} "
                             f"(the topics there are), got {self.topics_per_group}")

    def topic(self, index: int) -> str:
        return f"scale-{self.name}-{index:05d}"

    def group(self, index: int) -> str:
        return f"scale-{self.name}-group-{index:04d}"

    def group_topics(self, group_index: int) -> list[int]:
        first = group_index * self.topics_per_group
        return [(first + i) % len(self.topic_partitions) for i in range(self.topics_per_group)]

    @property
    def partitions(self) -> int:
        return sum(self.topic_partitions)


def varied_topic_sizes(total: int, smallest: int, largest: int) -> tuple[int, ...]:
    """Topic partition counts cycling from ``smallest`` to ``largest`` and summing to exactly ``total``."""
    if total < smallest or largest < 2 * smallest:
        raise ValueError(f"cannot split {total} partitions into topics of {smallest} to {largest}")
    sizes: list[int] = []
    left = total
    while left > largest:
        size = smallest + len(sizes) % (largest - smallest + 1)
        if left - size < smallest:  # the last topic must not come out smaller than the smallest
            size = left - smallest
        sizes.append(size)
        left -= size
    sizes.append(left)
    return tuple(sizes)


def committed_offset(group_index: int, partition: int) -> int:
    """Where group ``group_index`` commits on ``partition``: 1 to RECORDS_PER_PARTITION - 1, varying
    over groups and partitions, so every committed partition has a lag and a record to read the age of."""
    return 1 + (group_index + partition) % (RECORDS_PER_PARTITION - 1)


def planned_groups(shape: Shape, stages: Sequence[Stage]) -> Iterator[tuple[int, str, list[tuple[str, int]]]]:
    """(index, group, [(topic, partitions)]) of every group the state commits for: the shape's, then each
    stage's on its request topic."""
    for g in range(shape.groups):
        yield g, shape.group(g), [(shape.topic(t), shape.topic_partitions[t]) for t in shape.group_topics(g)]
    for i, stage in enumerate(stages):
        yield shape.groups + i, stage.group, [(stage.request_topic, PIPELINE_PARTITIONS)]


def planned_group_partitions(shape: Shape, stages: Sequence[Stage]) -> int:
    """How many group-partitions the state commits on."""
    return sum(partitions for _, _, topics in planned_groups(shape, stages) for _, partitions in topics)


def planned_commits(shape: Shape, stages: Sequence[Stage]) -> Iterator[ConsumerGroupTopicPartitions]:
    """One AlterConsumerGroupOffsets request per group, every one of its partitions in it; made as
    they are sent (the extreme size's million TopicPartitions are never all held at once)."""
    for index, group, topics in planned_groups(shape, stages):
        yield ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p, committed_offset(index, p))
                                                   for topic, partitions in topics for p in range(partitions)])


# -- building it on a broker -----------------------------------------------------------------------

def build_state(config: Config, shape: Shape) -> dict[str, float]:
    """Create ``shape``'s topics and the pipeline's, fill every partition with RECORDS_PER_PARTITION
    records and commit every planned offset; the seconds each step took."""
    admin = admin_client(config.kafka)
    started = time.perf_counter()
    pipeline_topics = [topic for stage in config.stages for topic in stage.topics.values()]
    create_topics(admin, [NewTopic(shape.topic(i), n, 1) for i, n in enumerate(shape.topic_partitions)]
                  + [NewTopic(topic, PIPELINE_PARTITIONS, 1) for topic in pipeline_topics])
    created = time.perf_counter()
    produce_records(config, shape)
    produced = time.perf_counter()
    requests = planned_commits(shape, config.stages)
    while batch := list(islice(requests, GROUPS_PER_COMMIT_ROUND)):
        commit_group_offsets(admin, batch)
    committed = time.perf_counter()
    return {"build_seconds": committed - started, "build_topics_seconds": created - started,
            "build_produce_seconds": produced - created, "build_commit_seconds": committed - produced}


def create_topics(admin: AdminClient, topics: list[NewTopic]) -> None:
    """All ``topics``, in requests of about PARTITIONS_PER_CREATE partitions, all sent before any is awaited."""
    batches: list[list[NewTopic]] = [[]]
    for topic in topics:
        if batches[-1] and sum(t.num_partitions for t in batches[-1]) + topic.num_partitions > PARTITIONS_PER_CREATE:
            batches.append([])
        batches[-1].append(topic)
    futures = [future for batch in batches for future in admin.create_topics(batch, request_timeout=120).values()]
    for future in futures:
        future.result(timeout=300)


def produce_records(config: Config, shape: Shape) -> None:
    """RECORDS_PER_PARTITION records on every partition, a minute apart and the first an hour old;
    dead letters in the pipeline's DLQs. Only failed deliveries are reported (tens of thousands of
    records), and any fails the build: the lags the state promises need every record written."""
    refused: list[KafkaError] = []
    fast = producer(config.kafka, **{"enable.idempotence": False, "acks": 1, "linger.ms": 100,
                                     "batch.num.messages": 10_000, "queue.buffering.max.messages": 1_000_000,
                                     "delivery.report.only.error": True,
                                     "on_delivery": lambda error, _: refused.append(error)})
    oldest_ms = int(time.time() * 1000) - 3_600_000
    for index, partitions in enumerate(shape.topic_partitions):
        _produce(fast, shape.topic(index), partitions, [b'{"payload": {}}'] * RECORDS_PER_PARTITION, oldest_ms)
    for stage in config.stages:
        for topic in (stage.request_topic, stage.completed_topic, stage.failed_topic):
            _produce(fast, topic, PIPELINE_PARTITIONS, [b"{}"] * RECORDS_PER_PARTITION, oldest_ms)
        letters = [json.dumps(dead_letter(stage.request_topic, {"payload": {"correlation_id": str(i)}},
                                          "FILE_NOT_FOUND", "benchmark")).encode()
                   for i in range(RECORDS_PER_PARTITION)]
        _produce(fast, stage.dlq_topic, PIPELINE_PARTITIONS, letters, oldest_ms)
    if fast.flush(300) != 0:
        raise RuntimeError("records were still unsent after 300 s")
    if refused:
        raise RuntimeError(f"{len(refused)} records were refused, the first: {refused[0].str()}")


def _produce(sender: Producer, topic: str, partitions: int, values: Sequence[bytes], oldest_ms: int) -> None:
    """``values`` on each partition of ``topic``, in order, RECORD_SPACING_MS apart from ``oldest_ms``."""
    for partition in range(partitions):
        for i, value in enumerate(values):
            sender.produce(topic, value, partition=partition, timestamp=oldest_ms + i * RECORD_SPACING_MS)
    sender.poll(0)


# -- the sizes -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Size:
    """A shape and how its exporter is run and watched."""

    shape: Shape
    detail: str  # exporter.partition_series.detail unless --detail says otherwise
    broker_heap: str
    refresh_interval_seconds: float
    request_timeout_seconds: float
    first_refresh_timeout_seconds: float  # past it, the exporter is taken as unable to serve this size
    warm_refreshes: int  # after the first one seen, before any is measured
    timed_refreshes: int
    scrape_seconds: float  # each scraper scrapes back to back for this long (and at least twice)

    @property
    def name(self) -> str:
        return self.shape.name


SIZES: dict[str, Size] = {size.name: size for size in (
    Size(Shape("bench", (10,) * 200, groups=250, topics_per_group=1), detail="all", broker_heap="1g",
         refresh_interval_seconds=2, request_timeout_seconds=30, first_refresh_timeout_seconds=120,
         warm_refreshes=2, timed_refreshes=5, scrape_seconds=10),
    Size(Shape("large", varied_topic_sizes(10_000, 10, 50), groups=1_000, topics_per_group=1), detail="all",
         broker_heap="2g", refresh_interval_seconds=5, request_timeout_seconds=30, first_refresh_timeout_seconds=180,
         warm_refreshes=2, timed_refreshes=5, scrape_seconds=15),
    Size(Shape("extreme", (100,) * 112, groups=1_000, topics_per_group=10), detail="lag", broker_heap="3g",
         refresh_interval_seconds=30, request_timeout_seconds=60, first_refresh_timeout_seconds=180,
         warm_refreshes=1, timed_refreshes=3, scrape_seconds=60),
)}


def exporter_config_data(bootstrap: str, listen: str, size: Size, detail: str) -> dict[str, Any]:
    """The exporter benchmark's configuration with the series cap out of the way and the size's refresh."""
    data = config_data(bootstrap, listen)
    data["kafka"]["request_timeout_seconds"] = size.request_timeout_seconds
    data["exporter"].update(max_series=10_000_000, refresh_interval_seconds=size.refresh_interval_seconds,
                            partition_series={"detail": detail})
    return data


@contextmanager
def scratch_broker(heap: str) -> Iterator[KafkaCluster]:
    """A single-node Kafka whose data is kept in memory (/dev/shm) where the machine has it, and thrown
    away afterwards. Made leader of a new partition, the broker fsyncs its leader-epoch checkpoint file
    and its directory: on this machine's virtual disk that more than doubled the broker's work of
    creating partitions (32 s of CPU time for 5,000 on the disk, 14 s in /dev/shm), none of which is
    what the exporter is measured on."""
    shm = Path("/dev/shm")
    workdir = Path(tempfile.mkdtemp(prefix="treewatch-scale-kafka-", dir=shm if shm.is_dir() else None))
    cluster = KafkaCluster(nodes=1, heap=heap, workdir=workdir)
    try:
        yield cluster.start()
    finally:
        if cluster.nodes:
            cluster.kill_node(0)  # no graceful shutdown of thousands of partitions whose data goes anyway
        shutil.rmtree(workdir, ignore_errors=True)


# -- measuring -------------------------------------------------------------------------------------

def measure(sizes: Sequence[str] = tuple(SIZES), detail: str | None = None) -> dict[str, Any]:
    """Every size of ``sizes`` on a broker of its own, at ``detail`` or the size's own; the goals and growth."""
    started = time.monotonic()
    measured = {}
    for name in sizes:
        print(f"== scale: {name}", flush=True)
        measured[name] = measure_size(SIZES[name], detail or SIZES[name].detail)
        print(json.dumps(measured[name], indent=2), flush=True)
    growth = growth_exponents(measured)
    checked = goals(measured, growth)
    return {"sizes": measured, "growth": growth, "goals": checked,
            "targets_met": all(goal["passed"] for goal in checked), "total_seconds": time.monotonic() - started}


def measure_size(size: Size, detail: str) -> dict[str, Any]:
    """Build ``size`` on a fresh broker and measure an exporter serving it."""
    shape = size.shape
    with scratch_broker(size.broker_heap) as kafka:
        port = free_port()
        data = exporter_config_data(kafka.bootstrap_servers, f"127.0.0.1:{port}", size, detail)
        config = parse_config(data, source="scale bench")
        pipeline_topics = sum(len(stage.topics) for stage in config.stages)
        facts: dict[str, Any] = {
            "detail": detail, "refresh_interval_seconds": size.refresh_interval_seconds,
            "topics": len(shape.topic_partitions) + pipeline_topics,
            "partitions": shape.partitions + pipeline_topics * PIPELINE_PARTITIONS,
            "groups": shape.groups + len(config.stages),
            "committed_group_partitions": planned_group_partitions(shape, config.stages),
        }
        print(f"broker up at {kafka.bootstrap_servers}; building {facts['committed_group_partitions']:,} "
              f"committed group-partitions", flush=True)
        facts |= build_state(config, shape)
        print(f"built in {facts['build_seconds']:.0f} s; starting the exporter", flush=True)
        facts |= measure_exporter(data, port, size)
    return facts


def measure_exporter(data: dict[str, Any], port: int, size: Size) -> dict[str, Any]:
    """A real ``treewatch exporter`` process: its gathers, scrapes under 4 scrapers, its memory."""
    with tempfile.TemporaryDirectory(prefix="treewatch-scale-") as folder:
        config_file = Path(folder) / "treewatch.yaml"
        config_file.write_text(yaml.safe_dump(data))
        process = subprocess.Popen([sys.executable, "-m", "treewatch", "--log-level", "WARNING", "exporter",
                                    "--config", str(config_file)], cwd=ROOT)
        started = time.monotonic()
        try:
            try:
                _await_first_refresh(process, port, size.first_refresh_timeout_seconds)
            except TimeoutError as error:
                return {"completed": False, "failure": str(error), **memory(process.pid)}
            first_refresh_seconds = time.monotonic() - started
            print(f"first refresh {first_refresh_seconds:.0f} s after the start", flush=True)
            scrape(port, gzip=True)  # gzip asked once, as by Prometheus: from now on each refresh compresses
            refreshes = watch_refreshes(port, size)
            idle = {f"idle_{key}": value for key, value in memory(process.pid).items()}
            print(f"gathers {[round(r.gather_seconds, 2) for r in refreshes]}; scraping", flush=True)
            gzip_times, gzip_bytes = scrape_concurrently(port, gzip=True, seconds=size.scrape_seconds)
            plain_times, plain_bytes = scrape_concurrently(port, gzip=False, seconds=size.scrape_seconds)
            used = memory(process.pid)
        finally:
            readers = _reader_pids(process.pid)
            stop_processes(process, grace_seconds=30)
            _stop_orphaned_readers(readers)
    gathers = [refresh.gather_seconds for refresh in refreshes]
    last = refreshes[-1]
    return {
        "completed": True, "failure": None, "first_refresh_seconds": first_refresh_seconds,
        "series": last.series, "series_dropped": last.dropped,
        "exposition_bytes": plain_bytes, "exposition_gzip_bytes": gzip_bytes,
        "gather_median_seconds": statistics.median(gathers), "gather_max_seconds": max(gathers),
        "gather_refreshes": len(gathers),
        **_latency("scrape_gzip", gzip_times), "scrapes_gzip": len(gzip_times),
        **_latency("scrape_plain", plain_times), "scrapes_plain": len(plain_times),
        **idle, **used,
    }


def _await_first_refresh(process: subprocess.Popen, port: int, timeout: float) -> None:
    with httpx.Client(timeout=30) as client:
        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"the exporter exited with {process.returncode} before its first refresh")
            return _ready(client, f"http://127.0.0.1:{port}")

        wait_for(ready, timeout=timeout, what="the exporter's first refresh")


@dataclass(frozen=True)
class Refresh:
    """One snapshot of the exporter, as its plain exposition tells it."""

    finished_at: float  # treewatch_collector_last_success_timestamp_seconds of the groups collector
    gather_seconds: float  # treewatch_collector_duration_seconds: the Kafka source's whole pass
    dropped: float
    series: int


def watch_refreshes(port: int, size: Size) -> list[Refresh]:
    """The refreshes after the first one seen and ``size.warm_refreshes`` more; ``size.timed_refreshes``
    of them, or as many as came within the time those should take (at least one)."""
    wanted = 1 + size.warm_refreshes + size.timed_refreshes
    timeout = wanted * (size.refresh_interval_seconds + size.first_refresh_timeout_seconds)
    seen: dict[float, Refresh] = {}

    def seen_enough() -> bool:
        refresh = read_refresh(port)
        seen.setdefault(refresh.finished_at, refresh)
        return len(seen) >= wanted

    try:
        wait_for(seen_enough, timeout=timeout, what=f"{wanted} refreshes")
    except TimeoutError:  # a slow exporter is measured on the refreshes it made
        pass
    refreshes = list(seen.values())
    kept = refreshes[1 + size.warm_refreshes:] or refreshes[1:]
    if not kept:
        raise TimeoutError(f"the exporter made no second refresh within {timeout:g} s")
    return kept


GATHER_LINE = b'treewatch_collector_duration_seconds{collector="kafka_groups"} '
FINISHED_LINE = b'treewatch_collector_last_success_timestamp_seconds{collector="kafka_groups"} '
DROPPED_LINE = b'treewatch_series_dropped{collector="kafka_groups"} '


def read_refresh(port: int) -> Refresh:
    scan = ExpositionScan((GATHER_LINE, FINISHED_LINE, DROPPED_LINE))
    scrape(port, gzip=False, scan=scan)
    scan.finish()
    missing = [line.decode() for line in (GATHER_LINE, FINISHED_LINE, DROPPED_LINE) if line not in scan.values]
    if missing:
        raise RuntimeError(f"the exposition has no {', '.join(missing)}")
    return Refresh(scan.values[FINISHED_LINE], scan.values[GATHER_LINE], scan.values[DROPPED_LINE], scan.series)


class ExpositionScan:
    """A text exposition streamed in chunks: its series counted and the values of some lines picked
    out, never holding it whole (the extreme size's is hundreds of megabytes)."""

    def __init__(self, wanted: Sequence[bytes]) -> None:
        self.wanted = tuple(wanted)
        self.values: dict[bytes, float] = {}
        self.series = 0
        self._partial = b""

    def feed(self, chunk: bytes) -> None:
        data = self._partial + chunk
        end = data.rfind(b"\n") + 1
        complete, self._partial = data[:end], data[end:]
        if not complete:
            return
        # complete starts at a line's start and ends with a newline: a comment starts it or follows a newline
        comments = complete.count(b"\n#") + complete.startswith(b"#")
        self.series += complete.count(b"\n") - comments
        for prefix in self.wanted:
            at = complete.find(prefix)
            while at > 0 and complete[at - 1] != ord("\n"):
                at = complete.find(prefix, at + 1)
            if at >= 0:
                self.values[prefix] = float(complete[at + len(prefix):complete.index(b"\n", at)].split()[0])

    def finish(self) -> None:
        if self._partial:
            self.feed(b"\n")


def scrape(port: int, *, gzip: bool, scan: ExpositionScan | None = None) -> tuple[float, int]:
    """Seconds from connecting to the last byte of /metrics, and the body's length, over a bare socket
    (the client's own parsing stays out of the time); the body goes to ``scan``, or nowhere."""
    request = b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
    request += b"Accept-Encoding: gzip\r\n\r\n" if gzip else b"\r\n"
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=SCRAPE_SOCKET_TIMEOUT_SECONDS) as connection:
        connection.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = connection.recv(65536)
            if not chunk:
                raise RuntimeError(f"the exporter closed the connection before its headers: {head[:80]!r}")
            head += chunk
        head, _, body = head.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"scrape answered {head[:40]!r}")
        lengths = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length")]
        length = lengths[0] if lengths else None
        received = len(body)
        if scan is not None:
            scan.feed(body)
        sink = bytearray(1 << 20)
        while length is None or received < length:
            if scan is not None:
                chunk = connection.recv(1 << 20)
                scan.feed(chunk)
                count = len(chunk)
            else:
                count = connection.recv_into(sink)
            if not count:
                break
            received += count
    elapsed = time.perf_counter() - started
    if length is not None and received != length:
        raise RuntimeError(f"scrape cut short: {received} of {length} bytes")
    return elapsed, received


def scrape_concurrently(port: int, *, gzip: bool, seconds: float) -> tuple[list[float], int]:
    """SCRAPERS threads scraping back to back for ``seconds`` (and each at least
    SCRAPES_PER_SCRAPER_AT_LEAST times): every scrape's seconds, and the last body's length."""
    times: list[float] = []
    lengths: list[int] = []
    errors: list[BaseException] = []
    until = time.monotonic() + seconds

    def scraper() -> None:
        done = 0
        try:
            while done < SCRAPES_PER_SCRAPER_AT_LEAST or time.monotonic() < until:
                elapsed, length = scrape(port, gzip=gzip)
                times.append(elapsed)
                lengths.append(length)
                done += 1
        except Exception as error:  # carried to the caller: a failed scrape fails the measurement
            errors.append(error)

    threads = [threading.Thread(target=scraper, name=f"scraper-{i}") for i in range(SCRAPERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return times, lengths[-1]


# -- memory of the exporter and its reader ---------------------------------------------------------

def memory(exporter_pid: int) -> dict[str, int]:
    """Resident memory now (VmRSS) and at its peak (VmHWM), in bytes, of the exporter process and of its
    consumer-group reader child (exporter/group_reader.py), each and summed."""
    exporter = _process_status(exporter_pid)
    readers = [_process_status(pid) for pid in _reader_pids(exporter_pid)]  # one, unless being replaced
    found = {"exporter_rss_bytes": exporter["VmRSS"] * 1024, "exporter_peak_bytes": exporter["VmHWM"] * 1024,
             "reader_rss_bytes": sum(reader["VmRSS"] for reader in readers) * 1024,
             "reader_peak_bytes": sum(reader["VmHWM"] for reader in readers) * 1024}
    found["rss_sum_bytes"] = found["exporter_rss_bytes"] + found["reader_rss_bytes"]
    found["peak_sum_bytes"] = found["exporter_peak_bytes"] + found["reader_peak_bytes"]
    return found


def _reader_pids(exporter_pid: int) -> list[int]:
    """The exporter's ``python -m exporter.group_reader`` children, found by scanning /proc for their
    parent (/proc/<pid>/task/<tid>/children needs a kernel built with CONFIG_PROC_CHILDREN)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # the command name (field 2) is in parentheses and may hold spaces: count from the closing one
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == exporter_pid and b"exporter.group_reader" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
    return found


def _stop_orphaned_readers(pids: list[int]) -> None:
    """A reader leaves by itself once the exporter's end of their socket closes, after the read in
    progress; one that outlives that is ended here, by its id (it is this benchmark's grandchild)."""
    def running(pid: int) -> bool:
        try:  # an id that now names another process counts as gone
            return b"exporter.group_reader" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    try:
        wait_for(lambda: not any(map(running, pids)), timeout=120, what=f"the reader processes {pids} to leave")
    except TimeoutError:
        for pid in filter(running, pids):
            os.kill(pid, signal.SIGKILL)


# -- goals and growth ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Goal:
    size: str
    what: str
    key: str
    limit: float
    unit: str  # "s" or "B"

    def show(self, value: float) -> str:
        return _seconds(value) if self.unit == "s" else _bytes(value)


GOALS = (
    Goal("extreme", "gather (median)", "gather_median_seconds", 10.0, "s"),
    Goal("extreme", "scrape p99, gzip, 4 scrapers", "scrape_gzip_p99_seconds", 2.0, "s"),
    Goal("extreme", "scrape p99, uncompressed, 4 scrapers", "scrape_plain_p99_seconds", 10.0, "s"),
    Goal("extreme", "resident memory, exporter + reader (peak)", "peak_sum_bytes", 1_500 * MB, "B"),
    Goal("extreme", "exposition (kminion's at detail lag)", "exposition_bytes", 134 * MB, "B"),
    Goal("large", "gather (median)", "gather_median_seconds", 2.0, "s"),
    Goal("large", "scrape p99, gzip, 4 scrapers", "scrape_gzip_p99_seconds", 0.050, "s"),
    Goal("large", "resident memory, exporter + reader (peak)", "peak_sum_bytes", 250 * MB, "B"),
)

# What the growth is fitted for: the gather time, scrape time, exposition bytes and memory.
GROWTH_KEYS = {
    "gather_median_seconds": "gather (median)",
    "scrape_gzip_p50_seconds": "scrape p50, gzip",
    "scrape_plain_p50_seconds": "scrape p50, uncompressed",
    "exposition_bytes": "exposition bytes",
    "peak_sum_bytes": "resident memory (peak, sum)",
}
LINEAR = 1.0


def growth_exponent(xs: Sequence[float], ys: Sequence[float]) -> float:
    """k of the least-squares fit log(y) = a + k·log(x): y grows as x to the power k."""
    if len(xs) != len(ys) or len(set(xs)) < 2:
        raise ValueError(f"a fit needs two different x at least, got x={list(xs)}")
    if min(xs) <= 0 or min(ys) <= 0:
        raise ValueError(f"a log-log fit needs positive numbers, got x={list(xs)}, y={list(ys)}")
    log_x, log_y = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mean_x, mean_y = statistics.fmean(log_x), statistics.fmean(log_y)
    return (sum((x - mean_x) * (y - mean_y) for x, y in zip(log_x, log_y, strict=True))
            / sum((x - mean_x) ** 2 for x in log_x))


def growth_exponents(measured: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per measure of GROWTH_KEYS, its exponent over the sizes measured to the end (None with fewer than two)."""
    done = {name: facts for name, facts in measured.items() if facts.get("completed")}
    xs = [facts["committed_group_partitions"] for facts in done.values()]
    exponents = {key: growth_exponent(xs, [facts[key] for facts in done.values()]) if len(set(xs)) >= 2 else None
                 for key in GROWTH_KEYS}
    return {"sizes": list(done), "exponents": exponents}


def goals(measured: dict[str, dict[str, Any]], growth: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals for the sizes measured, and linear growth or better for each fitted measure.
    A size that did not finish its first refresh misses all of its goals."""
    checked = []
    for goal in GOALS:
        if goal.size not in measured:
            continue
        value = measured[goal.size].get(goal.key) if measured[goal.size].get("completed") else None
        checked.append({"size": goal.size, "name": goal.what, "target": f"<= {goal.show(goal.limit)}",
                        "measured": goal.show(value) if value is not None else "not measured",
                        "passed": value is not None and value <= goal.limit})
    for key, exponent in growth["exponents"].items():
        if exponent is not None:
            checked.append({"size": "growth", "name": f"{GROWTH_KEYS[key]} grows as committed^k",
                            "target": f"k <= {LINEAR:g}", "measured": f"k = {exponent:.2f}",
                            "passed": exponent <= LINEAR})
    return checked


# -- the report ------------------------------------------------------------------------------------

def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value >= 1 else f"{value * 1000:.0f} ms"


def _bytes(value: float) -> str:
    if value >= 1000 * MB:
        return f"{value / (1000 * MB):.2f} GB"
    return f"{value / MB:.1f} MB" if value >= MB else f"{value / 1000:.0f} kB"


def section(results: dict[str, Any]) -> str:
    sizes: dict[str, dict[str, Any]] = results["sizes"]
    names = list(sizes)

    def row(what: str, show) -> str:
        cells = []
        for facts in sizes.values():
            try:
                cells.append(show(facts))
            except KeyError:  # a size whose exporter never finished a refresh has no such number
                cells.append("–")
        return f"| {what} | " + " | ".join(cells) + " |"

    def latency(kind: str):
        return lambda f: " / ".join(_seconds(f[f"scrape_{kind}_{q}_seconds"]) for q in ("p50", "p99", "max"))

    def memory_trio(kind: str):  # "rss" or "peak"
        return lambda f: " / ".join(_bytes(f[key]) for key in (f"exporter_{kind}_bytes", f"reader_{kind}_bytes",
                                                                f"{kind}_sum_bytes"))

    rows = [
        row("topics / partitions", lambda f: f"{f['topics']:,} / {f['partitions']:,}"),
        row("consumer groups", lambda f: f"{f['groups']:,}"),
        row("committed group-partitions (each with lag)", lambda f: f"{f['committed_group_partitions']:,}"),
        row("build: total (create topics; produce, the broker making the partitions meanwhile; commit)",
            lambda f: f"{_seconds(f['build_seconds'])} ({_seconds(f['build_topics_seconds'])}, "
                      f"{_seconds(f['build_produce_seconds'])}, {_seconds(f['build_commit_seconds'])})"),
        row("`exporter.partition_series.detail`", lambda f: f"`{f['detail']}`"),
        row("refresh interval", lambda f: _seconds(f["refresh_interval_seconds"])),
        row("first refresh (cold), from the exporter's start",
            lambda f: _seconds(f["first_refresh_seconds"]) if f["completed"] else f"**not done**: {f['failure']}"),
        row("series exposed (dropped)", lambda f: f"{f['series']:,} ({f['series_dropped']:,.0f})"),
        row("exposition, plain / gzip", lambda f: f"{_bytes(f['exposition_bytes'])} / "
                                                  f"{_bytes(f['exposition_gzip_bytes'])}"),
        row("gather (Kafka source's pass): median / max",
            lambda f: f"{_seconds(f['gather_median_seconds'])} / {_seconds(f['gather_max_seconds'])} "
                      f"(of {f['gather_refreshes']})"),
        row(f"scrape, gzip, {SCRAPERS} scrapers: p50 / p99 / max", latency("gzip")),
        row(f"scrape, uncompressed, {SCRAPERS} scrapers: p50 / p99 / max", latency("plain")),
        row("scrapes timed, gzip / uncompressed", lambda f: f"{f['scrapes_gzip']} / {f['scrapes_plain']}"),
        row("resident memory, peak (VmHWM): exporter / reader / sum", memory_trio("peak")),
        row("resident memory after the scrapes (VmRSS): exporter / reader / sum", memory_trio("rss")),
        row("resident memory before the scrapes (VmRSS), sum", lambda f: _bytes(f["idle_rss_sum_bytes"])),
    ]
    goal_rows = [f"| {g['size']} | {g['name']} | {g['target']} | {g['measured']} | "
                 f"{'met' if g['passed'] else '**missed**'} |" for g in results["goals"]]
    growth = results["growth"]
    exponent_rows = [f"| {GROWTH_KEYS[key]} | {'–' if k is None else f'{k:.2f}'} |"
                     for key, k in growth["exponents"].items()]
    lines = [
        "## The exporter at scale: up to a million committed group-partitions",
        "",
        "Each size is built on a fresh single-node Kafka (topics created in batches, "
        f"{RECORDS_PER_PARTITION} records per partition",
        "a minute apart and the first an hour old, every group's offsets committed 1 to "
        f"{RECORDS_PER_PARTITION - 1} records behind the",
        "high watermark with AlterConsumerGroupOffsets), the pipeline's topics included and each stage's group",
        "committing on its request topic. The broker keeps its data in /dev/shm: made leader of a new partition,",
        "it fsyncs a checkpoint file and its directory, which on this machine's virtual disk more than doubled",
        "its work of creating the partitions. A real `treewatch exporter` process then serves the state with",
        "`exporter.max_series` at 10,000,000 (nothing dropped). The gather is the exporter's own",
        "`treewatch_collector_duration_seconds{collector=\"kafka_groups\"}` over several refreshes after warm ones.",
        f"Scrapes: {SCRAPERS} scrapers at once, each back to back, from connecting to the last byte, first all with",
        "`Accept-Encoding: gzip` (as Prometheus sends it), then all without. Memory is the exporter process's and",
        "its consumer-group reader child's (`python -m exporter.group_reader`). Sizes: bench 200 topics × 10",
        "partitions and 250 groups on one topic each; large 10,000 partitions in topics of 10 to 50 and 1,000",
        "groups on all partitions of one topic each; extreme 112 topics × 100 partitions and 1,000 groups on",
        "10 topics (1,000 partitions) each. MB and GB are 10^6 and 10^9 bytes, as in the issue. The machine is",
        "in the Machine section below; broker, exporter and scrapers share it.",
        "",
        "| what | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        *rows,
        "",
        "Goals (issue 12):",
        "",
        "| size | goal | target | measured | result |",
        "|---|---|---|---|---|",
        *goal_rows,
        "",
        f"Growth with committed group-partitions, fitted over {', '.join(growth['sizes']) or 'no size'}: the "
        "exponent k of",
        "log(y) = a + k·log(committed group-partitions) by least squares (k ≤ 1: linear or better). Each size",
        "runs at its own `detail` (above), which is part of what grows.",
        "",
        "| measure | k |",
        "|---|---|",
        *exponent_rows,
        "",
        f"This benchmark took {results['total_seconds']:.0f} s in total, building the states included.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES),
                        help=f"comma-separated, of {', '.join(SIZES)} (default: all)")
    parser.add_argument("--detail", choices=DETAILS,
                        help="exporter.partition_series.detail for every size (default: " +
                             ", ".join(f"{size.detail} for {name}" for name, size in SIZES.items()) + ")")
    args = parser.parse_args(argv)
    sizes = [name.strip() for name in args.sizes.split(",") if name.strip()]
    unknown = [name for name in sizes if name not in SIZES]
    if unknown or not sizes:
        parser.error(f"--sizes: expected some of {', '.join(SIZES)}, got {args.sizes!r}")
    results = measure(sizes, args.detail)
    print(json.dumps(results, indent=2))
    print(section(results))


if __name__ == "__main__":
    main()
