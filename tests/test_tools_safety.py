"""Operator tools that cannot do harm, each through the real ``treewatch`` command line against real
brokers: a misspelled group is refused (never described as Dead, never created), a reset saves what
it changes and ``--from-file`` undoes it, a wrong bootstrap address is named with what answers
there, a leader election is waited out instead of failing (or planning from offset -1001), and
output cut short by ``| head -1`` ends quietly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

# The TLS and SASL broker of the security tests and its certificates: pytest fixtures, found by name.
from test_security import KAFKA_USER, certs, secure_kafka  # noqa: F401

from devkafka import KafkaCluster, free_port
from pipeline.config import DEFAULT_SERVICES, DEFAULT_STAGES, Config, load_config, parse_config
from pipeline.events import envelope
from pipeline.kafka import admin_client, fetch_committed_offsets, result_of
from pipeline.kafka_errors import is_transient
from simulator import Simulator, SimulatorSettings
from simulator.topics import pipeline_topic_names
from tools.saved_offsets import FORMAT, MAX_FILE_BYTES
from treewatch.cli import EXIT_BROKEN_PIPE, build_parser, main

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*argv: str) -> int:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    return exited.value.code


def treewatch(*argv: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """The command in its own process, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "treewatch", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def write_config(path: Path, bootstrap: str, unique: str, request_timeout: float = 10) -> Path:
    stages = {name: {"request_topic": f"{unique}.{name}.v1", "completed_topic": f"{unique}.{name}-completed.v1",
                     "failed_topic": f"{unique}.{name}-failed.v1", "dlq_topic": f"{unique}.{name}.v1.dlq",
                     "group": f"{unique}-{name}-group"} for name in ("discover", "stamp", "index")}
    path.write_text(yaml.safe_dump({"kafka": {"bootstrap_servers": bootstrap,
                                              "request_timeout_seconds": request_timeout},
                                    "stages": stages, "services": {}}))
    return path


def commit(config: Config, group: str, offsets: dict[tuple[str, int], int]) -> None:
    """Commit as a consumer that never joins the group (a group left Empty with these offsets)."""
    consumer = Consumer({**config.kafka.client_config(), "group.id": group, "enable.auto.commit": False})
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                asynchronous=False)
                return
            except KafkaException as error:  # a fresh cluster's coordinator may still be loading
                if not is_transient(error) or time.monotonic() > deadline:
                    raise
                consumer.poll(0.2)  # serves the coordinator lookup the failed commit started
    finally:
        consumer.close()


def committed(config: Config, group: str) -> dict[tuple[str, int], int]:
    result = fetch_committed_offsets(admin_client(config.kafka), [group], 10, 1)[group]
    assert not isinstance(result, BaseException), result
    return result


def listed_groups(admin: AdminClient) -> set[str]:
    listing = result_of(admin.list_consumer_groups(request_timeout=10), 10)
    assert not listing.errors, listing.errors
    return {g.group_id for g in listing.valid}


# -- a group with committed offsets on the session broker -------------------------------------------


@pytest.fixture
def group_on_topic(kafka: KafkaCluster, unique: str, tmp_path: Path) -> tuple[Path, Config, str, str]:
    """(config file, config, topic, group): 3 partitions of 10 records, the group Empty at 5, 8, 3."""
    config_file = write_config(tmp_path / "treewatch.yaml", kafka.bootstrap_servers, unique)
    config = load_config(config_file)
    topic, group = config.stage("stamp").request_topic, config.stage("stamp").group
    admin = admin_client(config.kafka)
    result_of(admin.create_topics([NewTopic(topic, 3, 1)])[topic], 30)
    sender = Producer(config.kafka.client_config())
    for partition in range(3):
        for _ in range(10):
            sender.produce(topic, b"{}", partition=partition)
    assert sender.flush(30) == 0
    commit(config, group, {(topic, 0): 5, (topic, 1): 8, (topic, 2): 3})
    return config_file, config, topic, group


def test_describe_refuses_an_unknown_group_naming_the_closest(group_on_topic, capsys) -> None:
    config_file, _, topic, group = group_on_topic
    misspelled = group.replace("-stamp-", "-stmp-")

    assert run_cli("groups", "describe", "--config", str(config_file), "--group", misspelled) == 2
    captured = capsys.readouterr()
    assert f"treewatch groups: no such group: {misspelled}; did you mean {group}" in captured.err
    assert "Dead" not in captured.out

    # An Empty group with committed offsets is a real group.
    assert run_cli("groups", "describe", "--config", str(config_file), "--group", group, "--json") == 0
    described = json.loads(capsys.readouterr().out)
    assert described["state"] == "Empty"
    assert [(p["partition"], p["committed"], p["high_watermark"]) for p in described["partitions"]] == [
        (0, 5, 10), (1, 8, 10), (2, 3, 10)]
    assert described["total_lag"] == 14


def test_a_misspelled_reset_creates_no_group(group_on_topic, tmp_path: Path, capsys) -> None:
    config_file, config, topic, group = group_on_topic
    misspelled = f"{group}s"
    saved = tmp_path / "saved.json"

    code = run_cli("groups", "reset", "--config", str(config_file), "--group", misspelled, "--topic", topic,
                   "--to", "earliest", "--execute", "--save-to", str(saved))

    assert code == 2
    assert f"no such group: {misspelled}; did you mean {group}" in capsys.readouterr().err
    admin = admin_client(config.kafka)
    assert misspelled not in listed_groups(admin)
    assert committed(config, misspelled) == {}
    assert not saved.exists()
    assert committed(config, group) == {(topic, 0): 5, (topic, 1): 8, (topic, 2): 3}


def test_a_reset_saves_what_it_changes_and_from_file_puts_it_back(group_on_topic, tmp_path: Path,
                                                                  monkeypatch, capsys) -> None:
    config_file, config, topic, group = group_on_topic
    before = {(topic, 0): 5, (topic, 1): 8, (topic, 2): 3}
    monkeypatch.chdir(tmp_path)

    assert run_cli("groups", "reset", "--config", str(config_file), "--group", group, "--topic", topic,
                   "--to", "earliest", "--execute") == 0
    out = capsys.readouterr().out
    [saved] = list(tmp_path.glob(f"treewatch-reset-{group}-*.json"))  # the default: ./, named and timed
    assert f"saved the current offsets to {saved.name}; to undo this reset: treewatch groups reset --group {group} " \
           f"--from-file {saved.name} --execute" in out
    assert committed(config, group) == {(topic, 0): 0, (topic, 1): 0, (topic, 2): 0}
    document = json.loads(saved.read_text())
    assert (document["format"], document["version"], document["group"]) == (FORMAT, 1, group)
    assert document["cluster_id"] == result_of(admin_client(config.kafka).describe_cluster(), 10).cluster_id
    assert document["saved_before"] == f"reset of {topic} to earliest"
    assert document["offsets"] == [{"topic": topic, "partition": p, "offset": o} for (_, p), o in before.items()]

    # Like every reset, putting the offsets back is a dry run until --execute.
    assert run_cli("groups", "reset", "--config", str(config_file), "--group", group,
                   "--from-file", str(saved)) == 0
    assert f"{topic}[1]: 0 -> 8" in capsys.readouterr().out
    assert committed(config, group) == {(topic, 0): 0, (topic, 1): 0, (topic, 2): 0}

    undo_of_undo = tmp_path / "undo.json"
    assert run_cli("groups", "reset", "--config", str(config_file), "--group", group, "--from-file", str(saved),
                   "--execute", "--save-to", str(undo_of_undo)) == 0
    assert committed(config, group) == before
    assert [e["offset"] for e in json.loads(undo_of_undo.read_text())["offsets"]] == [0, 0, 0]

    # An existing file is never overwritten: the reset is refused before anything changes.
    assert run_cli("groups", "reset", "--config", str(config_file), "--group", group, "--topic", topic,
                   "--to", "latest", "--execute", "--save-to", str(saved)) == 2
    assert f"{saved} already exists: not overwritten" in capsys.readouterr().err
    assert committed(config, group) == before
    assert json.loads(saved.read_text()) == document


def _variant(document: dict, **changes) -> str:
    return json.dumps({**document, **changes})


def test_from_file_refuses_other_groups_other_clusters_and_any_bytes(group_on_topic, tmp_path: Path,
                                                                     capsys) -> None:
    config_file, config, topic, group = group_on_topic
    saved = tmp_path / "saved.json"
    assert run_cli("groups", "reset", "--config", str(config_file), "--group", group, "--topic", topic,
                   "--to", "latest", "--execute", "--save-to", str(saved)) == 0
    after_reset = committed(config, group)
    document = json.loads(saved.read_text())
    capsys.readouterr()

    other_group = f"{group}-other"
    commit(config, other_group, {(topic, 0): 1})
    cases = {
        "another group": (saved.read_text(), other_group, f"holds the offsets of group {group!r}, not of "
                                                          f"{other_group!r}: refused"),
        "another cluster": (_variant(document, cluster_id="AnotherClusterIdAAAAAA"), group,
                            "was saved on cluster AnotherClusterIdAAAAAA"),
        "newer version": (_variant(document, version=2), group, "format version 2 is newer than this treewatch"),
        "another format": (_variant(document, format="kafka-consumer-groups"), group, "not a saved offsets file"),
        "unknown field": (_variant(document, extra=1), group, "unknown field(s) extra"),
        "negative offset": (_variant(document, offsets=[{"topic": topic, "partition": 0, "offset": -1}]), group,
                            "offsets[0].offset: expected an offset"),
        "partition twice": (_variant(document, offsets=document["offsets"][:1] * 2), group, "is listed twice"),
        "gone partition": (_variant(document, offsets=[{"topic": topic, "partition": 7, "offset": 1}]), group,
                           f"names partitions that do not exist (any more): {topic}[7]"),
        "binary": (os.urandom(4096).decode("latin-1"), group, "not a saved offsets file (not JSON"),
        "nested": ("[" * 100_000 + "]" * 100_000, group, "not a saved offsets file (not JSON: nested too deeply)"),
    }
    for case, (text, as_group, expected) in cases.items():
        file = tmp_path / f"{case}.json"
        file.write_bytes(text.encode("latin-1") if case == "binary" else text.encode())
        code = run_cli("groups", "reset", "--config", str(config_file), "--group", as_group, "--from-file", str(file),
                       "--execute", "--save-to", str(tmp_path / f"{case}-undo.json"))
        err = capsys.readouterr().err
        assert code != 0 and expected in err, (case, err)
        assert "Traceback" not in err
        assert not (tmp_path / f"{case}-undo.json").exists(), case
    huge = tmp_path / "huge.json"
    with huge.open("wb") as file:
        file.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk needed
    assert run_cli("groups", "reset", "--config", str(config_file), "--group", group, "--from-file", str(huge)) == 2
    assert "larger than 16 MiB: not a saved offsets file" in capsys.readouterr().err
    assert committed(config, group) == after_reset
    assert committed(config, other_group) == {(topic, 0): 1}


def test_execute_is_the_documented_spelling_and_confirm_a_hidden_alias() -> None:
    for words in (["groups", "reset", "--group", "g", "--topic", "t", "--to", "earliest"],
                  ["dlq", "replay", "--stage", "stamp"]):
        parser = build_parser()
        executed = parser.parse_args([*words, "--execute"])
        confirmed = parser.parse_args([*words, "--confirm"])
        flag = "execute" if words[0] == "groups" else "confirm"
        assert getattr(executed, flag) is True and getattr(confirmed, flag) is True
        command = subprocess.run([sys.executable, "-m", "treewatch", *words[:2], "--help"], capture_output=True,
                                 text=True, cwd=ROOT, check=True).stdout
        assert "--execute" in command and "--confirm" not in command
    for doc in (ROOT / "README.md", ROOT / "docs" / "runbooks.md"):
        assert "--confirm" not in doc.read_text(), doc


# -- a wrong bootstrap address ----------------------------------------------------------------------


@pytest.fixture
def banner_listener() -> Iterator[int]:
    """A plain TCP service that greets every connection with its own banner, as SSH does."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                connection.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")
                connection.settimeout(5)
                try:
                    connection.recv(4096)  # until the client gives up on it
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        server.close()
        thread.join(10)


@pytest.fixture
def http_listener() -> Iterator[int]:
    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


TOOL_COMMANDS = {
    "status": ["status"],
    "groups describe": ["groups", "describe", "--group", "g"],
    "groups reset": ["groups", "reset", "--group", "g", "--topic", "t", "--to", "earliest", "--execute"],
    "dlq inspect": ["dlq", "inspect", "--stage", "stamp"],
    "dlq replay": ["dlq", "replay", "--stage", "stamp", "--execute"],
    "trace": ["trace", "--correlation-id", "c"],
    "bench": ["bench", "--files", "3", "--timeout", "30"],
    "reindex": ["reindex", "--project-path", "/p", "--project-name", "p", "--timeout", "30"],
}
FINDINGS = {
    "closed port": "refused the connection: nothing listens on that port",
    "tcp banner": "answered, but not in Kafka's protocol (it sent b'SSH-2.0-OpenSSH_9.2p1')",
    "http server": "answered like an HTTP server",
}


@pytest.mark.parametrize("listener", FINDINGS)
def test_every_tool_names_the_bootstrap_address_its_file_and_what_answers_there(
        listener: str, request: pytest.FixtureRequest, tmp_path: Path, unique: str, capsys) -> None:
    port = {"closed port": free_port, "tcp banner": lambda: request.getfixturevalue("banner_listener"),
            "http server": lambda: request.getfixturevalue("http_listener")}[listener]()
    config_file = write_config(tmp_path / "wrong.yaml", f"127.0.0.1:{port}", unique, request_timeout=1)
    for tool, words in TOOL_COMMANDS.items():
        code = run_cli(*words, "--config", str(config_file))
        captured = capsys.readouterr()
        said = captured.out if tool == "status" else captured.err  # status reports Kafka with the rest
        assert code == 1, (tool, said)
        where = f"cannot reach Kafka at 127.0.0.1:{port} (kafka.bootstrap_servers in {config_file})"
        assert where in said, (tool, said)
        assert f"127.0.0.1:{port}: {FINDINGS[listener]}" in said, (tool, said)
        assert "KafkaError{" not in said + captured.err, (tool, said)


def test_a_silent_listener_and_an_address_from_the_environment(tmp_path: Path, unique: str, kafka: KafkaCluster,
                                                                monkeypatch, capsys) -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel does), never answers
    port = silent.getsockname()[1]
    config_file = write_config(tmp_path / "treewatch.yaml", kafka.bootstrap_servers, unique, request_timeout=1)
    monkeypatch.setenv("TREEWATCH_KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{port}")
    try:
        assert run_cli("groups", "describe", "--config", str(config_file), "--group", "g") == 1
    finally:
        silent.close()
    err = capsys.readouterr().err
    assert (f"cannot reach Kafka at 127.0.0.1:{port} (set by TREEWATCH_KAFKA_BOOTSTRAP_SERVERS, which overrides "
            f"{config_file})") in err
    assert f"127.0.0.1:{port}: accepted the connection but sent nothing back within 1s: not a Kafka listener" in err


def test_a_tls_listener_and_refused_credentials_are_named(secure_kafka: KafkaCluster, certs,  # noqa: F811
                                                          tmp_path: Path, capsys) -> None:
    tls = secure_kafka.listener_bootstrap("SSL")
    sasl = secure_kafka.listener_bootstrap("SASL")
    cases = {
        "plain client, TLS listener": ({"bootstrap_servers": tls},
                                       f"{tls}: answered in TLS: a TLS listener, while the client speaks plain TCP "
                                       f"(set kafka.security_protocol to SSL or SASL_SSL)"),
        "wrong password": ({"bootstrap_servers": sasl, "security_protocol": "SASL_PLAINTEXT",
                            "sasl": {"mechanism": "SCRAM-SHA-256", "username": KAFKA_USER, "password": "wrong"}},
                           f"{sasl}: answers as a Kafka broker\n  the client's error: "),
    }
    for case, (kafka_settings, expected) in cases.items():
        config_file = tmp_path / "treewatch.yaml"
        config_file.write_text(yaml.safe_dump({"kafka": {**kafka_settings, "request_timeout_seconds": 3},
                                               "services": {}}))
        assert run_cli("groups", "describe", "--config", str(config_file), "--group", "g") == 1, case
        err = capsys.readouterr().err
        assert expected in err, (case, err)
    assert "Authentication failed" in err and "kafka.sasl" in err, err
    # Over TLS, as configured, the same tool reaches the cluster: the group is what is missing.
    config_file.write_text(yaml.safe_dump({"kafka": {"bootstrap_servers": tls, "tls": {"ca_file": str(certs.ca)}},
                                           "services": {}}))
    assert run_cli("groups", "describe", "--config", str(config_file), "--group", "g") == 2
    assert "no such group: g" in capsys.readouterr().err


# -- output cut short -------------------------------------------------------------------------------


def test_output_cut_short_by_head_ends_quietly(kafka: KafkaCluster, unique: str, tmp_path: Path) -> None:
    config_file = write_config(tmp_path / "treewatch.yaml", kafka.bootstrap_servers, unique)
    config = load_config(config_file)
    topic = config.stage("discover").request_topic
    admin = admin_client(config.kafka)
    for name in pipeline_topic_names(config):
        result_of(admin.create_topics([NewTopic(name, 1, 1)])[name], 30)
    # A trace prints a line per event: 3,000 lines are far more than a pipe holds, so the command is
    # still writing when head has its line and exits.
    sender = Producer(config.kafka.client_config())
    for i in range(3000):
        sender.produce(topic, json.dumps(envelope("tree.discover", {"correlation_id": "cut", "n": i})).encode())
    assert sender.flush(30) == 0

    tool = subprocess.Popen([sys.executable, "-m", "treewatch", "trace", "--config", str(config_file),
                             "--correlation-id", "cut"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    head = subprocess.Popen(["head", "-1"], stdin=tool.stdout, stdout=subprocess.PIPE)
    tool.stdout.close()  # head alone reads the pipe now, as in a shell
    first_line, _ = head.communicate(timeout=120)
    err = tool.stderr.read().decode()
    tool.stderr.close()
    code = tool.wait(timeout=120)

    assert first_line.startswith(b"correlation id cut: 3000 event(s)")
    assert code == EXIT_BROKEN_PIPE, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err


# -- leader elections, on three brokers -------------------------------------------------------------

# Kafka's default: a crashed broker's partitions get new leaders this long after its last heartbeat.
SESSION_TIMEOUT_MS = 9000
OFFSETS_TOPIC = "__consumer_offsets"
OFFSETS_TOPIC_PARTITIONS = 5  # devkafka's offsets.topic.num.partitions


@pytest.fixture(scope="module")
def kafka_cluster3() -> Iterator[KafkaCluster]:
    with KafkaCluster(nodes=3, broker_properties={"broker.session.timeout.ms": str(SESSION_TIMEOUT_MS)}) as cluster:
        # The first coordinator lookup creates the offsets topic, whose leaders are the coordinators.
        admin = cluster.admin()
        finder = Consumer({"bootstrap.servers": cluster.bootstrap_servers, "group.id": "treewatch-test-warm-up"})
        try:
            cluster.wait_until(lambda: _looked_up_coordinator(finder) and all(
                _leader(admin, OFFSETS_TOPIC, p) not in (None, -1) for p in range(OFFSETS_TOPIC_PARTITIONS)),
                90, "the offsets topic and its leaders")
        finally:
            finder.close()
        yield cluster
        for index in range(len(cluster.nodes)):
            cluster.kill_node(index)  # the data is thrown away: no graceful shutdown to wait for


def _looked_up_coordinator(consumer: Consumer) -> bool:
    try:
        consumer.committed([TopicPartition("treewatch-test-warm-up", 0)], timeout=5)
        return True
    except KafkaException:
        return False


def _coordinator(admin: AdminClient, group: str) -> int | None:
    """The node coordinating ``group``: the leader of its offsets topic partition, which Kafka picks as
    abs(groupId.hashCode()) % partitions (Java's String.hashCode). Read from metadata rather than
    asked of the coordinator, so finding it never waits on a coordinator still loading."""
    units = group.encode("utf-16-be")  # Java strings hash their UTF-16 code units
    code = 0
    for i in range(0, len(units), 2):
        code = (31 * code + int.from_bytes(units[i:i + 2], "big")) & 0xFFFFFFFF
    signed = code - (1 << 32) if code >= 1 << 31 else code
    return _leader(admin, OFFSETS_TOPIC, 0 if signed == -(1 << 31) else abs(signed) % OFFSETS_TOPIC_PARTITIONS)


def _spare_node(cluster: KafkaCluster, groups: list[str]) -> int | None:
    """A node coordinating none of ``groups``: their offsets stay reachable while it is down, so what
    a test sees is the leader election, not a coordinator failover."""
    admin = cluster.admin()
    busy = {_coordinator(admin, group) for group in groups}
    spare = [node.node_id for node in cluster.nodes if node.node_id not in busy]
    return spare[0] if spare else None


def _create_led_by(cluster: KafkaCluster, topics: list[str], leader: int, partitions: int = 1) -> None:
    """Three replicas per partition, ``leader`` first: the preferred leader, so it leads them all."""
    others = [node.node_id for node in cluster.nodes if node.node_id != leader]
    admin = cluster.admin()
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=-1,
                                            replica_assignment=[[leader, *others]] * partitions)
                                   for topic in topics])
    for future in futures.values():
        result_of(future, 30)
    cluster.wait_until(lambda: all(_leader(admin, topic) == leader for topic in topics), 60, "leaders elected")


def _leader(admin: AdminClient, topic: str, partition: int = 0) -> int | None:
    described = admin.list_topics(topic, timeout=10).topics.get(topic)
    if described is None or described.error is not None or partition not in described.partitions:
        return None
    return described.partitions[partition].leader


def _crash(cluster: KafkaCluster, node_id: int) -> int:
    index = next(i for i, node in enumerate(cluster.nodes) if node.node_id == node_id)
    # SIGKILL, not SIGTERM: a graceful shutdown hands leadership over before the broker exits, so
    # clients never see an election; after a crash the partitions have no leader for a session timeout.
    cluster.kill_node(index)
    return index


def test_a_reset_planned_during_a_leader_election_waits_for_the_new_leader(kafka_cluster3: KafkaCluster,
                                                                           tmp_path: Path) -> None:
    unique = uuid.uuid4().hex[:10]
    config_file = write_config(tmp_path / "treewatch.yaml", kafka_cluster3.bootstrap_servers, unique,
                               request_timeout=2)
    config = load_config(config_file)
    topic, group = config.stage("stamp").request_topic, config.stage("stamp").group
    victim = _spare_node(kafka_cluster3, [group])
    assert victim is not None  # one group has one coordinator, and there are three nodes
    _create_led_by(kafka_cluster3, [topic], victim, partitions=3)
    sender = Producer(config.kafka.client_config())
    for partition in range(3):
        for _ in range(10):
            sender.produce(topic, b"{}", partition=partition)
    assert sender.flush(30) == 0
    commit(config, group, {(topic, p): 4 for p in range(3)})

    index = _crash(kafka_cluster3, victim)
    try:
        reset = treewatch("groups", "reset", "--config", str(config_file), "--group", group, "--topic", topic,
                          "--to", "earliest", "--execute", "--save-to", str(tmp_path / "saved.json"))
    finally:
        kafka_cluster3.start_node(index)
        kafka_cluster3.wait_ready(3)

    assert reset.returncode == 0, reset.stdout + reset.stderr
    for partition in range(3):
        assert f"{topic}[{partition}]: 4 -> 0  (log start 0, high watermark 10)" in reset.stdout, reset.stdout
    assert committed(config, group) == {(topic, p): 0 for p in range(3)}
    assert [e["offset"] for e in json.loads((tmp_path / "saved.json").read_text())["offsets"]] == [4, 4, 4]


def test_bench_completes_through_a_crashed_leader_and_its_restart(kafka_cluster3: KafkaCluster,
                                                                  tmp_path: Path) -> None:
    # Names whose three groups leave a node coordinating none of them (two in three do).
    while True:
        suffix = uuid.uuid4().hex[:10]
        groups = [f"{stage['group']}-{suffix}" for stage in DEFAULT_STAGES.values()]
        victim = _spare_node(kafka_cluster3, groups)
        if victim is not None:
            break
    data = {
        "env": f"crash-{suffix}",
        # Shorter than an election: one request timeout is never enough to wait one out.
        "kafka": {"bootstrap_servers": kafka_cluster3.bootstrap_servers, "request_timeout_seconds": 2},
        "stages": {name: {"group": f"{stage['group']}-{suffix}"} for name, stage in DEFAULT_STAGES.items()},
        "services": {name: {"url": f"http://127.0.0.1:{free_port()}/health"} for name in DEFAULT_SERVICES},
    }
    config_file = tmp_path / "treewatch.yaml"
    config_file.write_text(yaml.safe_dump(data))
    config = parse_config(data, source=str(config_file), environ={})
    _create_led_by(kafka_cluster3, pipeline_topic_names(config), victim)
    discover_requests = config.stage("discover").request_topic
    admin = kafka_cluster3.admin()

    with Simulator(config, SimulatorSettings(partitions=1, seed=5)) as simulator:
        simulator.wait_assigned(timeout=60)
        # Indexing waits until the crashed broker is back, so the run spans the crash and the restart.
        simulator.pause("index")
        index = _crash(kafka_cluster3, victim)
        bench = subprocess.Popen([sys.executable, "-m", "treewatch", "bench", "--config", str(config_file),
                                  "--files", "10", "--timeout", "180", "--json"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            kafka_cluster3.wait_until(lambda: _leader(admin, discover_requests) not in (None, -1, victim), 60,
                                      "a new leader for the crashed broker's partitions")
            kafka_cluster3.start_node(index)
            kafka_cluster3.wait_ready(3)
            simulator.resume("index")
            out, err = bench.communicate(timeout=240)
        finally:
            if bench.poll() is None:
                bench.kill()
                bench.communicate()

    document = json.loads(out)
    assert document["completed"] is True
    # Completed: exit 0 unless it missed one of the guide's targets (a crash and a paused stage can).
    assert bench.returncode == (0 if document["targets_met"] else 1), err
    progress = document["progress"]
    assert (progress["discovered"], progress["completed"], progress["failed_files"]) == \
        (10, {"stamp": 10, "index": 10}, 0)
