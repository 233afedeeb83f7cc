"""The exporter survives brokers going away and coming back, and its consumer-group reads with it.

librdkafka can abort the process that runs a coordinator-targeted admin request at the moment a
broker's connection drops (see exporter/group_reader.py): the groups are read in a child process
that the exporter replaces when it dies or hangs. Tested three ways:
- the reader killed with SIGABRT (what librdkafka's failed assertion does) or frozen with SIGSTOP
  (a wedged client): that refresh's groups fail, the next ones are whole again;
- a group held at its last state while a read misses it (its coordinator away), dropped once a
  complete read no longer lists it;
- a real exporter process over a real 3-node cluster, every node stopped or killed and restarted
  in turn for two rounds while four scrapers keep it busy: it never exits, every group stays
  visible throughout, every collector is back within two refreshes of the cluster answering
  again, and the lag is then exactly the truth.
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from devkafka import KafkaCluster, free_port
from exporter.group_reader import GroupReaderLost, IsolatedGroupReader
from exporter.kafka_groups import GroupInfo, GroupsRead, HeldGroups
from exporter.kafka_source import KafkaSource
from exporter.metrics import KAFKA_CONSUMER_GROUP_LAG, Part
from exporter.snapshot import unfolded
from pipeline.config import parse_config
from pipeline.kafka import offsets_by_topic, result_of
from tests.test_resilience import KAFKA_COLLECTORS, Series, await_scrape, scrape, value

REPO = Path(__file__).resolve().parent.parent
RECORDS_PER_PARTITION = 40
PARTITIONS = 3


def _commit(bootstrap: str, group: str, offsets: list[TopicPartition]) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
                return
            except Exception:  # the group's coordinator may still be loading on a fresh cluster
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        consumer.close()


def _topic_with_records(cluster: KafkaCluster, name: str, replication: int) -> None:
    admin = cluster.admin()
    result_of(admin.create_topics([NewTopic(name, num_partitions=PARTITIONS, replication_factor=replication)])[name],
              30)
    producer = Producer({"bootstrap.servers": cluster.bootstrap_servers})
    for partition in range(PARTITIONS):
        for _ in range(RECORDS_PER_PARTITION):
            producer.produce(name, b"{}", partition=partition)
    assert producer.flush(30) == 0


def _committed(group_index: int) -> dict[int, int]:
    """What group number ``group_index`` commits on each partition: known here, so lag is known."""
    return {partition: (group_index * 7 + partition * 3) % RECORDS_PER_PARTITION for partition in range(PARTITIONS)}


# -- the reader process replaced ------------------------------------------------------------------


def _source(kafka: KafkaCluster) -> KafkaSource:
    return KafkaSource(parse_config({"env": "reader", "kafka": {"bootstrap_servers": kafka.bootstrap_servers,
                                                                "request_timeout_seconds": 2},
                                     "exporter": {"refresh_interval_seconds": 1}}, source="test", environ={}))


def _lag(results: dict, group: str) -> dict[int, float]:
    samples = results[Part.KAFKA_GROUPS]
    assert not isinstance(samples, BaseException), samples
    return {int(s.labels[2]): s.value for s in unfolded(samples)
            if s.metric is KAFKA_CONSUMER_GROUP_LAG and s.labels[0] == group}


def test_a_group_reader_that_dies_or_freezes_is_replaced(kafka: KafkaCluster, unique: str) -> None:
    topic, group = f"reader.{unique}", f"reader-{unique}"
    _topic_with_records(kafka, topic, 1)
    _commit(kafka.bootstrap_servers, group, [TopicPartition(topic, p, o) for p, o in _committed(1).items()])
    expected = {p: float(RECORDS_PER_PARTITION - o) for p, o in _committed(1).items()}
    source = _source(kafka)
    reader = source._groups
    try:
        assert _lag(source.gather(), group) == expected

        # Frozen (a wedged client): the refresh's groups fail at its deadline, not later, and the
        # other collectors are neither held up nor taken down with them.
        frozen = reader.pid
        os.kill(frozen, signal.SIGSTOP)
        results = source.gather()
        assert isinstance(results[Part.KAFKA_GROUPS], GroupReaderLost)
        assert "did not answer" in str(results[Part.KAFKA_GROUPS])
        for collector in (Part.KAFKA_CLUSTER, Part.KAFKA_TOPICS, Part.PIPELINE, Part.DLQ):
            assert not isinstance(results[collector], BaseException), results[collector]
        assert _lag(source.gather(), group) == expected
        assert reader.replacements == 1
        assert not _running(frozen), "the frozen reader was left behind"

        # Aborted in the middle of a read, as librdkafka's failed assertion does: the reader is
        # held still until the request is waiting in its socket, then aborted.
        aborting = reader.pid
        os.kill(aborting, signal.SIGSTOP)
        outcome: list[BaseException] = []
        reading = threading.Thread(target=_read_into, args=(reader, outcome))
        reading.start()
        _await(lambda: _unread_bytes(reader) > 0, "the request waits in the reader's socket")
        os.kill(aborting, signal.SIGABRT)  # pending while stopped; delivered first when it resumes
        os.kill(aborting, signal.SIGCONT)
        reading.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], GroupReaderLost), outcome
        assert "killed by SIGABRT" in str(outcome[0])
        assert _lag(source.gather(), group) == expected
        assert reader.replacements == 2

        # Found dead between two reads: replaced before the read, which loses nothing.
        os.kill(reader.pid, signal.SIGKILL)
        reader._process.wait(10)
        assert _lag(source.gather(), group) == expected
        assert reader.replacements == 3
    finally:
        source.close()
    assert reader.pid is None


def _read_into(reader: IsolatedGroupReader, outcome: list[BaseException]) -> None:
    try:
        reader.read(time.monotonic() + 20)
    except BaseException as error:  # handed to the test's thread, which asserts on it
        outcome.append(error)


def _unread_bytes(reader: IsolatedGroupReader) -> int:
    """Bytes the exporter sent to the reader that it has not read yet (the send queue of a Unix
    socket holds them until the peer reads)."""
    connection = reader._connection
    if connection is None:
        return 0
    return struct.unpack("i", fcntl.ioctl(connection.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]


def _await(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.01)


def _running(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def test_a_group_missed_by_a_partial_read_is_held_then_dropped() -> None:
    held = HeldGroups(keep_seconds=30)
    offsets = offsets_by_topic([("t", 0, 5)])
    full = GroupInfo("g", "Stable", 1, frozenset({"t"}), offsets)
    other = GroupInfo("h", "Stable", 1, frozenset({"t"}), offsets_by_topic([("t", 0, 1)]))
    assert held.fill(GroupsRead([full, other]), now=0).groups == [full, other]

    # Its coordinator is away: the listing misses it, a broker's error says the read is partial.
    partial = held.fill(GroupsRead([other], {"list": [TimeoutError("broker 2")]}), now=10)
    assert [info.group for info in partial.groups] == ["h", "g"] and partial.groups[1].committed == offsets
    # Listed but its offsets unreadable: this refresh's state, the last known offsets.
    unread = GroupInfo("g", "PreparingRebalance", 0, frozenset(), {}, committed_read=False)
    partial = held.fill(GroupsRead([unread, other], {"committed_offsets": [TimeoutError("slow")]}), now=20)
    assert partial.groups[0].committed == offsets and partial.groups[0].state == "PreparingRebalance"
    assert partial.groups[0].committed_read

    # Beyond the grace period it goes, like any collector's data.
    assert [i.group for i in held.fill(GroupsRead([other], {"list": [TimeoutError("x")]}), now=41).groups] == ["h"]
    # A complete read that no longer lists a group means it was deleted: gone at once.
    held.fill(GroupsRead([full, other]), now=50)
    assert [i.group for i in held.fill(GroupsRead([other]), now=51).groups] == ["h"]
    assert [i.group for i in held.fill(GroupsRead([other], {"list": [TimeoutError("x")]}), now=52).groups] == ["h"]


# -- a real exporter over a 3-node cluster whose nodes restart ---------------------------------------

GROUPS = 12
TOPICS = 2
REFRESH = 1.0
REQUEST_TIMEOUT = 3.0
ROUNDS = 2


class Scrapers:
    """Four scrapers on the exporter all the time, as busy Prometheus replicas and dashboards are;
    every scrape must be answered."""

    def __init__(self, url: str, count: int = 4) -> None:
        self.url = url
        self.failures: list[str] = []
        self.scrapes = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                try:
                    client.get(self.url + "/metrics").raise_for_status()
                    self.scrapes += 1
                except httpx.HTTPError as error:
                    self.failures.append(repr(error))
                self._stop.wait(0.05)

    def __enter__(self) -> Scrapers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)


def _groups_visible(series: Series, groups: list[str]) -> bool:
    return all(value(series, "kafka_consumer_group_members", group=group) is not None for group in groups)


def _collector_errors(series: Series) -> dict[str, float]:
    return {c: value(series, "treewatch_collector_errors_total", collector=c) or 0.0 for c in KAFKA_COLLECTORS}


def _watch_refreshes(url: str, refreshes: int, holds: Callable[[Series], bool], what: str) -> None:
    """Scrape until the exporter has finished ``refreshes`` more Kafka refreshes (each one moves the
    cluster collector's last success), asserting ``what`` on every scrape on the way."""
    seen: set[float | None] = set()
    deadline = time.monotonic() + 60 + refreshes * (REFRESH + REQUEST_TIMEOUT)
    while len(seen) <= refreshes:
        series = scrape(url)
        assert holds(series), what
        seen.add(value(series, "treewatch_collector_last_success_timestamp_seconds", collector="kafka_cluster"))
        assert time.monotonic() < deadline, f"fewer than {refreshes} refreshes within the deadline"
        time.sleep(0.1)  # between scrapes: the exporter's state is only visible through them


def _log_tail(log_file: Path) -> str:
    """The exporter's own lines (librdkafka's connection chatter left out), for a failure's report."""
    return "\n".join(line for line in log_file.read_text().splitlines()[-400:]
                     if "treewatch.kafka FAIL" not in line and not line.startswith("%"))[-6000:]


def test_exporter_rides_out_every_broker_restarting(kafka_cluster3: KafkaCluster, tmp_path: Path) -> None:
    cluster = kafka_cluster3
    topics = [f"restart.topic{t}.v1" for t in range(TOPICS)]
    for topic in topics:
        _topic_with_records(cluster, topic, 3)
    groups = [f"restart-group-{g}" for g in range(GROUPS)]
    truth: dict[tuple[str, str, int], float] = {}
    for index, group in enumerate(groups):
        topic = topics[index % TOPICS]
        committed = _committed(index)
        _commit(cluster.bootstrap_servers, group, [TopicPartition(topic, p, o) for p, o in committed.items()])
        truth.update({(group, topic, p): float(RECORDS_PER_PARTITION - o) for p, o in committed.items()})

    port = free_port()
    config_file = tmp_path / "treewatch.yaml"
    config_file.write_text(yaml.safe_dump({
        "env": "restart",
        "kafka": {"bootstrap_servers": cluster.bootstrap_servers, "request_timeout_seconds": REQUEST_TIMEOUT},
        "services": {},
        # A grace period longer than any outage here: nothing may vanish while a node is away.
        "exporter": {"listen_address": f"127.0.0.1:{port}", "refresh_interval_seconds": REFRESH,
                     "stale_grace_seconds": 120, "groups": {"allow": ["restart-group-.*"]}},
    }))
    log_file = tmp_path / "exporter.log"
    with log_file.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "treewatch", "exporter", "--config", str(config_file)],
                                   cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONPATH": str(REPO)})
    url = f"http://127.0.0.1:{port}"

    def alive() -> None:
        assert process.poll() is None, f"the exporter exited with {process.returncode}:\n{_log_tail(log_file)}"

    def whole_and_true(series: Series) -> bool:
        alive()
        if not all(value(series, "treewatch_collector_success", collector=c) == 1 for c in KAFKA_COLLECTORS):
            return False
        if value(series, "kafka_consumer_group_read_errors") != 0 or value(series, "kafka_brokers") != 3:
            return False
        return all(value(series, "kafka_consumer_group_lag", group=g, topic=t, partition=str(p)) == lag
                   for (g, t, p), lag in truth.items())

    try:
        deadline = time.monotonic() + 60
        while True:
            alive()
            try:
                if httpx.get(url + "/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass  # not listening yet
            assert time.monotonic() < deadline, "the exporter did not become ready"
            time.sleep(0.2)  # another process binding its port: nothing to await but its answer
        await_scrape(url, whole_and_true, 60, "every collector succeeds with the true lag")

        with Scrapers(url) as scrapers:
            for round_number in range(ROUNDS):
                for index in range(len(cluster.nodes)):
                    kill = (round_number + index) % 2 == 1
                    (cluster.kill_node if kill else cluster.stop_node)(index)
                    # While the node is away, every group stays visible (held while unreadable).
                    await_scrape(url, lambda s: (alive() or True) and value(s, "kafka_brokers") == 2
                                 and _groups_visible(s, groups), 60, "the exporter sees the node gone")
                    _watch_refreshes(url, 4, lambda s: (alive() or True) and _groups_visible(s, groups),
                                     "every group stays visible while a node is away")
                    cluster.start_node(index)
                    cluster.wait_ready(3)
                    cluster.wait_until(lambda: cluster.groups_answer(groups), 120, "the cluster answers again")
                    errors_when_whole = _collector_errors(scrape(url))
                    what = f"round {round_number}, node {index + 1} ({'killed' if kill else 'stopped'})"
                    try:
                        recovered = await_scrape(url, whole_and_true, 10 * (REFRESH + REQUEST_TIMEOUT),
                                                 f"{what}: recovered with the true lag")
                    except AssertionError as error:
                        raise AssertionError(f"{error}\n{_log_tail(log_file)}") from None
                    failed_after = {c: n - errors_when_whole[c] for c, n in _collector_errors(recovered).items()}
                    if not all(n <= 2 for n in failed_after.values()):
                        print(_log_tail(log_file))
                    assert all(n <= 2 for n in failed_after.values()), failed_after
                    assert _groups_visible(recovered, groups)
        alive()
        assert not scrapers.failures, scrapers.failures[:5]
        assert scrapers.scrapes > 0
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    output = log_file.read_text()
    assert "Traceback" not in output, output[-4000:]
    # How often librdkafka's abort hit the reader this run (it varies): shown, not asserted.
    print(f"group reader replaced {output.count('consumer-group reader process died')} time(s)")
