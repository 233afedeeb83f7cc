"""``make soak MINUTES=30``: the exporter under random production faults, its invariants watched.

A 3-node Kafka, the simulated pipeline, the exporter (a real process) scraped by four scrapers, and
faults injected at random times, one at a time: a broker stopped, or killed, and started again;
poison dead letters (huge, binary, deeply nested, endless JSON); a health endpoint that hangs;
a burst of consumer groups that come and go. Watched all the time:

- the exporter never exits, and every scrape is answered;
- no collector stays failed more than two refreshes after its cause is gone (the cluster answers
  again, the endpoint stops hanging);
- the lag of groups whose offsets are known here (committed once, on topics nobody writes to) is
  exactly the truth whenever the cluster is whole;
- the exporter's memory (its process and its group reader's) stays bounded.

A benchmark, not a test: it runs for minutes and measures. Its summary replaces the soak section
of docs/benchmarks.md (the rest of the page is ``make bench``'s).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic
from prometheus_client.parser import text_string_to_metric_families

from devkafka import KafkaCluster, free_ports
from devkafka.processes import stop_processes
from pipeline.config import parse_config
from pipeline.kafka import result_of

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "benchmarks.md"
SECTION_START = "<!-- soak: written by `make soak`; the rest of the page by `make bench` -->"
SECTION_END = "<!-- /soak -->"

REFRESH = 2.0
REQUEST_TIMEOUT = 3.0
# "Two refreshes" after a cause is gone, each of which may still be finishing a request that was
# made while the cause was there.
RECOVERY_BOUND = 2 * (REFRESH + REQUEST_TIMEOUT)
MEMORY_BOUND_BYTES = 400 * 2**20
TRUTH_GROUPS = 8
TRUTH_PARTITIONS = 3
TRUTH_RECORDS = 50
COLLECTORS = ("kafka_cluster", "kafka_topics", "kafka_groups", "pipeline", "dlq", "services")

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


class HangableHealth:
    """A /health endpoint of our own that can be made to hang, as a service stuck in a deadlock."""

    def __init__(self, port: int) -> None:
        self.hanging = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                while owner.hanging.is_set():
                    owner.hanging.wait(0.5)
                    if owner.hanging.is_set():
                        time.sleep(0.5)  # holding the connection, as a hung service does
                body = b'{"status": "healthy"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the exporter gave up on the hung probe first, as it should

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.hanging.clear()
        self.server.shutdown()
        self.server.server_close()


def scrape(url: str, timeout: float = 5.0) -> Series:
    response = httpx.get(url + "/metrics", timeout=timeout)
    response.raise_for_status()
    return {(item.name, frozenset(item.labels.items())): item.value
            for family in text_string_to_metric_families(response.text) for item in family.samples}


def value(series: Series, name: str, **labels: str) -> float | None:
    return series.get((name, frozenset(labels.items())))


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children (the group reader)."""
    total = 0
    for candidate in [pid, *_children(pid)]:
        try:
            match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{candidate}/status").read_text())
        except OSError:
            continue
        total += int(match.group(1)) * 1024 if match else 0
    return total


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def poison_values(rng: random.Random) -> list[bytes]:
    depth = rng.randint(10_000, 200_000)
    return [
        os.urandom(rng.randint(1, 4096)),
        b"[" * depth + b"]" * depth,
        b'{"a":' * depth + b"1" + b"}" * depth,
        b'{"error_type": "' + b"E" * rng.randint(1000, 200_000) + b'"}',
        b"\x00\xff\xfe" * rng.randint(1, 10_000),
        b"1" * rng.randint(5000, 100_000),
        b'{"error_type": "ENCODING_ERROR", "original_payload": ' + b'"' + b"x" * 900_000 + b'"}',
        b'{"error_type": ' + b'"unterminated' * 10_000,
    ]


class Soak:
    def __init__(self, minutes: float, seed: int, workdir: Path) -> None:
        self.deadline = time.monotonic() + minutes * 60
        self.minutes = minutes
        self.rng = random.Random(seed)
        self.seed = seed
        self.workdir = workdir
        self.faults: Counter[str] = Counter()
        self.violations: list[str] = []
        self.recoveries: dict[str, list[float]] = {}
        self.truth_checks = 0
        self.peak_rss = 0
        self.scrapes = 0
        self.scrape_failures: list[str] = []
        self.simulator_restarts = 0
        self._stop = threading.Event()

    # -- set-up ---------------------------------------------------------------------------------

    def run(self) -> dict:
        with KafkaCluster(nodes=3) as cluster:
            self.cluster = cluster
            ports = free_ports(5)
            self.health = HangableHealth(ports[4])
            names = ("intelligence", "bridge", "onextree", "metadata-stamping")
            services = {name: {"url": f"http://127.0.0.1:{port}/health"}
                        for name, port in zip(names, ports[:4], strict=True)}
            services["soak-probe"] = {"url": f"http://127.0.0.1:{ports[4]}/health"}
            exporter_port = free_ports(1)[0]
            data = {"env": "soak",
                    "kafka": {"bootstrap_servers": cluster.bootstrap_servers,
                              "request_timeout_seconds": REQUEST_TIMEOUT},
                    "services": services,
                    "exporter": {"listen_address": f"127.0.0.1:{exporter_port}", "refresh_interval_seconds": REFRESH,
                                 "stale_grace_seconds": 300, "health_timeout_seconds": 2}}
            self.config_file = self.workdir / "treewatch.yaml"
            self.config_file.write_text(yaml.safe_dump(data))
            self.config = parse_config(data, source=str(self.config_file), environ={})
            simulator_config = self.workdir / "simulator.yaml"
            simulator_config.write_text(yaml.safe_dump({**data, "services": {
                name: spec for name, spec in services.items() if name != "soak-probe"}}))
            self.simulator_config = simulator_config
            self.truth = self._truth_groups()
            self.url = f"http://127.0.0.1:{exporter_port}"
            self.simulator = self._start_simulator()
            self.exporter = self._start("exporter", [sys.executable, "-m", "treewatch", "exporter",
                                                     "--config", str(self.config_file)])
            try:
                self._await(lambda: self._whole(scrape(self.url)), 120, "the exporter's first whole view")
                threads = [threading.Thread(target=self._scraper, daemon=True) for _ in range(4)]
                threads.append(threading.Thread(target=self._watch, daemon=True))
                for thread in threads:
                    thread.start()
                while time.monotonic() < self.deadline and not self._stop.is_set():
                    self._inject(self.rng.choice(["stop_broker", "kill_broker", "poison", "hang_health",
                                                  "group_burst"]))
                    self._rest(self.rng.uniform(5, 20))
                self._stop.set()
                for thread in threads:
                    thread.join(15)
            finally:
                self._stop.set()
                stop_processes(self.exporter, self.simulator, grace_seconds=30)
                self.health.close()
        return self.summary()

    def _start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = (self.workdir / f"{name}.log").open("ab")
        return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})

    def _start_simulator(self) -> subprocess.Popen:
        return self._start("simulator", [sys.executable, "-m", "treewatch", "simulate", "--config",
                                         str(self.simulator_config), "--files", "40", "--project-interval", "5",
                                         "--seed", str(self.seed)])

    def _truth_groups(self) -> dict[tuple[str, str, int], float]:
        """Groups committed once on a topic nobody writes to: their lag is known exactly here."""
        topic = "soak.truth.v1"
        admin = self.cluster.admin()
        result_of(admin.create_topics([NewTopic(topic, num_partitions=TRUTH_PARTITIONS, replication_factor=3)])[topic],
                  30)
        producer = Producer({"bootstrap.servers": self.cluster.bootstrap_servers})
        for partition in range(TRUTH_PARTITIONS):
            for _ in range(TRUTH_RECORDS):
                producer.produce(topic, b"{}", partition=partition)
        producer.flush(30)
        truth = {}
        for index in range(TRUTH_GROUPS):
            group = f"soak-truth-{index}"
            offsets = {p: (index * 11 + p * 5) % TRUTH_RECORDS for p in range(TRUTH_PARTITIONS)}
            self._commit(group, [TopicPartition(topic, p, o) for p, o in offsets.items()])
            truth.update({(group, topic, p): float(TRUTH_RECORDS - o) for p, o in offsets.items()})
        return truth

    def _commit(self, group: str, offsets: list[TopicPartition]) -> None:
        consumer = Consumer({"bootstrap.servers": self.cluster.bootstrap_servers, "group.id": group,
                             "enable.auto.commit": False, "log_level": 0})
        try:
            for _ in range(100):
                try:
                    consumer.commit(offsets=offsets, asynchronous=False)
                    return
                except Exception:  # a coordinator still loading or moving: try again
                    time.sleep(0.5)
        finally:
            consumer.close()

    # -- faults ---------------------------------------------------------------------------------

    def _inject(self, fault: str) -> None:
        self.faults[fault] += 1
        print(f"[{time.strftime('%H:%M:%S')}] fault: {fault}", flush=True)
        if fault in ("stop_broker", "kill_broker"):
            node = self.rng.randrange(3)
            (self.cluster.stop_node if fault == "stop_broker" else self.cluster.kill_node)(node)
            self._rest(self.rng.uniform(5, 30))
            self.cluster.start_node(node)
            self.cluster.wait_ready(3, timeout=180)
            self._await(lambda: self.cluster.groups_answer(sorted({g for g, _, _ in self.truth})), 180,
                        "the cluster answers again")
            self._recovery(fault, lambda s: self._whole(s) and self._lag_is_true(s))
        elif fault == "poison":
            stage = self.rng.choice(self.config.stages)
            producer = Producer({"bootstrap.servers": self.cluster.bootstrap_servers, "message.max.bytes": 2_000_000,
                                 "log_level": 0})
            for poison in poison_values(self.rng):
                producer.produce(stage.dlq_topic, poison)
            producer.flush(30)
            self._recovery(fault, lambda s: self._whole(s)
                           and (value(s, "tree_dlq_retained_records", stage=stage.name, topic=stage.dlq_topic)
                                or 0) > 0)
        elif fault == "hang_health":
            self.health.hanging.set()
            self._rest(self.rng.uniform(10, 30))
            self.health.hanging.clear()
            self._recovery(fault, lambda s: self._whole(s)
                           and value(s, "tree_service_probe_success", service="soak-probe") == 1)
        elif fault == "group_burst":
            topic = "soak.truth.v1"
            burst = [f"soak-burst-{self.faults[fault]}-{n}" for n in range(self.rng.randint(20, 60))]
            for group in burst:
                self._commit(group, [TopicPartition(topic, 0, 1)])
            self._recovery(fault, lambda s: self._whole(s)
                           and all(value(s, "kafka_consumer_group_members", group=g) is not None for g in burst))
            admin = self.cluster.admin()  # kept referenced: a collected client cancels its futures
            result_of_all(admin.delete_consumer_groups(burst, request_timeout=30))
            self._recovery("group_burst_deleted", lambda s: self._whole(s) and all(
                value(s, "kafka_consumer_group_members", group=g) is None for g in burst))

    def _recovery(self, fault: str, recovered: Callable[[Series], bool]) -> None:
        """The cause is gone now: the exporter must show a whole, true view within the bound."""
        started = time.monotonic()
        try:
            self._await(lambda: recovered(scrape(self.url)), RECOVERY_BOUND + 60, f"recovery after {fault}")
        except TimeoutError as error:
            self.violations.append(str(error))
            return
        took = time.monotonic() - started
        self.recoveries.setdefault(fault, []).append(took)
        if took > RECOVERY_BOUND:
            self.violations.append(f"{fault}: recovered after {took:.1f}s, beyond two refreshes "
                                   f"({RECOVERY_BOUND:.0f}s)")

    # -- invariants -----------------------------------------------------------------------------

    def _whole(self, series: Series) -> bool:
        return (all(value(series, "treewatch_collector_success", collector=c) == 1 for c in COLLECTORS)
                and value(series, "kafka_consumer_group_read_errors") == 0 and value(series, "kafka_brokers") == 3)

    def _lag_is_true(self, series: Series) -> bool:
        self.truth_checks += 1
        wrong = {key: value(series, "kafka_consumer_group_lag", group=key[0], topic=key[1], partition=str(key[2]))
                 for key, lag in self.truth.items()
                 if value(series, "kafka_consumer_group_lag", group=key[0], topic=key[1],
                          partition=str(key[2])) != lag}
        return not wrong

    def _scraper(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                try:
                    client.get(self.url + "/metrics", headers={"Accept-Encoding": "gzip"}).raise_for_status()
                    self.scrapes += 1
                except httpx.HTTPError as error:
                    self.scrape_failures.append(f"{time.strftime('%H:%M:%S')} {error!r}")
                self._stop.wait(0.25)

    def _watch(self) -> None:
        while not self._stop.is_set():
            if self.exporter.poll() is not None:
                self.violations.append(f"the exporter exited with {self.exporter.returncode}")
                self._stop.set()
                return
            if self.simulator.poll() is not None:
                # The stand-in pipeline may give up on a broker restart; it is not what is measured.
                self.simulator_restarts += 1
                self.simulator = self._start_simulator()
            rss = rss_bytes(self.exporter.pid)
            self.peak_rss = max(self.peak_rss, rss)
            if rss > MEMORY_BOUND_BYTES:
                self.violations.append(f"exporter memory {rss / 2**20:.0f} MiB beyond {MEMORY_BOUND_BYTES / 2**20:.0f}")
            self._stop.wait(1.0)

    def _await(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if condition():
                    return
            except httpx.HTTPError:
                pass  # counted by the scrapers; the condition is asked again
            if time.monotonic() > deadline:
                raise TimeoutError(f"not within {timeout:.0f}s: {what}")
            time.sleep(0.25)

    def _rest(self, seconds: float) -> None:
        self._stop.wait(max(0.0, min(seconds, self.deadline - time.monotonic())))

    # -- results --------------------------------------------------------------------------------

    def summary(self) -> dict:
        replaced = (self.workdir / "exporter.log").read_text(errors="replace").count("reader process died")
        return {
            "minutes": self.minutes, "seed": self.seed,
            "faults": dict(sorted(self.faults.items())), "faults_total": sum(self.faults.values()),
            "violations": self.violations + [f"scrape failed: {f}" for f in self.scrape_failures[:20]],
            "recovery_seconds": {fault: {"count": len(times), "median": round(statistics.median(times), 1),
                                         "max": round(max(times), 1)} for fault, times in self.recoveries.items()},
            "truth_checks": self.truth_checks, "scrapes": self.scrapes,
            "peak_exporter_rss_mib": round(self.peak_rss / 2**20, 1),
            "group_reader_replaced": replaced, "simulator_restarts": self.simulator_restarts,
            "load_average": " ".join(f"{load:.2f}" for load in os.getloadavg()),
        }


def result_of_all(futures: dict) -> None:
    for future in futures.values():
        result_of(future, 30)


def section(results: dict) -> str:
    rows = "\n".join(f"| {fault} | {r['count']} | {r['median']} | {r['max']} |"
                     for fault, r in sorted(results["recovery_seconds"].items()))
    violations = "\n".join(f"- {v}" for v in results["violations"]) or "- none"
    return "\n".join([
        SECTION_START,
        "## Soak: random production faults",
        "",
        f"`make soak MINUTES={results['minutes']:g}` (seed {results['seed']}): a 3-node Kafka, the simulator, the "
        "exporter (refresh every 2 s) under four scrapers, and one fault at a time at random: a broker stopped or "
        "killed and restarted, poison dead letters (random bytes, 10k–200k levels of nesting, 200 kB error "
        "types, 900 kB records, endless JSON), a hung health endpoint, bursts of 20–60 consumer groups created "
        "then deleted.",
        "",
        "| | |",
        "|---|---|",
        f"| faults injected | {results['faults_total']} ({', '.join(f'{k} {n}' for k, n in results['faults'].items())})"
        " |",
        f"| invariant violations | {len(results['violations'])} |",
        f"| scrapes answered | {results['scrapes']} |",
        f"| lag checked against the truth | {results['truth_checks']} times |",
        f"| peak exporter memory (with its group reader) | {results['peak_exporter_rss_mib']} MiB |",
        f"| group reader replaced (librdkafka abort or wedge) | {results['group_reader_replaced']} |",
        f"| simulator restarted | {results['simulator_restarts']} |",
        f"| load average at the end (1/5/15 min) | {results['load_average']} |",
        "",
        f"Recovery, from the cause gone to a whole and true view (bound: two refreshes, {RECOVERY_BOUND:.0f} s):",
        "",
        "| fault | count | median s | max s |",
        "|---|---|---|---|",
        rows,
        "",
        "Violations:",
        "",
        violations,
        "",
        SECTION_END,
    ])


def current_section(path: Path) -> str | None:
    """The soak section the page holds now, markers included, if any."""
    page = path.read_text() if path.exists() else ""
    if SECTION_START not in page or SECTION_END not in page:
        return None
    return SECTION_START + page.split(SECTION_START, 1)[1].split(SECTION_END, 1)[0] + SECTION_END


def replace_section(path: Path, text: str) -> None:
    """Put the soak section into the page in place of the previous one (or before the machine)."""
    page = path.read_text() if path.exists() else ""
    if SECTION_START in page and SECTION_END in page:
        before, rest = page.split(SECTION_START, 1)
        after = rest.split(SECTION_END, 1)[1]
        page = before + text + after
    elif "## Machine" in page:
        before, after = page.split("## Machine", 1)
        page = before + text + "\n\n## Machine" + after
    else:
        page += "\n" + text + "\n"
    path.write_text(page)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="treewatch-soak-") as workdir:
        results = Soak(args.minutes, args.seed, Path(workdir)).run()
    print(json.dumps(results, indent=2))
    replace_section(args.output, section(results))
    print(f"wrote the soak section of {args.output}")
    sys.exit(1 if results["violations"] else 0)


if __name__ == "__main__":
    main()
