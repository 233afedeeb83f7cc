"""The flags people bring from kafka-consumer-groups.sh, rpk and kcat, through the real ``treewatch``
command line against real brokers: -b/--bootstrap-server over the configuration, --command-config
with a Java client properties file (SASL against a SASL broker, clear refusals for what librdkafka
cannot do), groups list and describe (several, --all, each member's assignment, idle members and
partitions nobody owns, with real consumers in the group), trace --max-events/--summary, and dlq
inspect --error-type/--since."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import NewPartitions, NewTopic

# The SASL/TLS broker of the security tests and its certificates: pytest fixtures, found by name.
from test_security import KAFKA_PASSWORD, KAFKA_USER, PLAIN_PASSWORD, PLAIN_USER, certs, secure_kafka  # noqa: F401
from test_tools_safety import commit, treewatch, write_config

from devkafka import KafkaCluster, free_port
from pipeline.config import Config, load_config
from pipeline.events import dead_letter, envelope
from pipeline.kafka import admin_client, result_of
from simulator.topics import pipeline_topic_names

HOUR_MS = 3_600_000


def create_topic(config: Config, topic: str, partitions: int) -> None:
    admin = admin_client(config.kafka)
    result_of(admin.create_topics([NewTopic(topic, partitions, 1)])[topic], 30)


def fill(config: Config, topic: str, per_partition: dict[int, int]) -> None:
    sender = Producer(config.kafka.client_config())
    for partition, count in per_partition.items():
        for _ in range(count):
            sender.produce(topic, b"{}", partition=partition)
    assert sender.flush(30) == 0


def publish(config: Config, records: list[tuple[str, object, int | None]]) -> None:
    """(topic, value, timestamp ms or None) each, as JSON."""
    sender = Producer(config.kafka.client_config())
    for topic, value, timestamp in records:
        stamped = {"timestamp": timestamp} if timestamp else {}
        sender.produce(topic, json.dumps(value).encode(), partition=0, **stamped)
    assert sender.flush(30) == 0


def json_of(result) -> dict:
    assert result.stdout, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def config_file(kafka: KafkaCluster, unique: str, tmp_path: Path) -> Path:
    return write_config(tmp_path / "treewatch.yaml", kafka.bootstrap_servers, unique)


# -- -b/--bootstrap-server -------------------------------------------------------------------------


def test_bootstrap_server_overrides_a_config_pointing_elsewhere(kafka: KafkaCluster, unique: str,
                                                                 tmp_path: Path) -> None:
    closed = f"127.0.0.1:{free_port()}"
    elsewhere = write_config(tmp_path / "elsewhere.yaml", closed, unique, request_timeout=2)
    config = load_config(write_config(tmp_path / "real.yaml", kafka.bootstrap_servers, unique))
    topic, group = f"{unique}-b", f"{unique}-b-group"
    create_topic(config, topic, 2)
    fill(config, topic, {0: 4, 1: 6})
    commit(config, group, {(topic, 0): 1, (topic, 1): 6})

    without = treewatch("groups", "describe", group, "--config", str(elsewhere), "--json")
    assert without.returncode == 1
    assert f"cannot reach Kafka at {closed} (kafka.bootstrap_servers in {elsewhere})" in without.stderr

    described = treewatch("groups", "describe", group, "--config", str(elsewhere), "-b", kafka.bootstrap_servers,
                          "--json")
    assert described.returncode == 0, described.stderr
    assert json_of(described)["total_lag"] == 3

    # The long spelling, and a wrong address given on the command line is named as such.
    wrong = treewatch("groups", "describe", group, "--config", str(elsewhere), "--bootstrap-server", closed)
    assert wrong.returncode == 1
    assert f"cannot reach Kafka at {closed} (set by -b/--bootstrap-server, which overrides {elsewhere})" in wrong.stderr

    empty = treewatch("groups", "list", "--config", str(elsewhere), "-b", " , ")
    assert empty.returncode == 2 and "-b/--bootstrap-server" in empty.stderr


# -- --command-config --------------------------------------------------------------------------------


def test_command_config_carries_sasl_to_a_sasl_broker(secure_kafka: KafkaCluster,  # noqa: F811
                                                     tmp_path: Path, unique: str) -> None:
    sasl = secure_kafka.listener_bootstrap("SASL")
    # The configuration has the address but no security: as a file shared by people with other accounts.
    config_file = write_config(tmp_path / "treewatch.yaml", sasl, unique, request_timeout=3)
    scram = tmp_path / "scram.properties"
    # As kafka-consumer-groups.sh --command-config takes it: a JAAS line continued with a backslash.
    scram.write_text("# the Java client's settings\n"
                     "security.protocol=SASL_PLAINTEXT\n"
                     "sasl.mechanism=SCRAM-SHA-256\n"
                     "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \\\n"
                     f'    username="{KAFKA_USER}" password="{KAFKA_PASSWORD}";\n')
    plain = tmp_path / "plain.properties"
    plain.write_text(f"security.protocol: SASL_PLAINTEXT\nsasl.mechanisms = PLAIN\nsasl.username={PLAIN_USER}\n"
                     f"sasl.password={PLAIN_PASSWORD}\n")

    refused = treewatch("groups", "list", "--config", str(config_file))
    assert refused.returncode == 1

    for properties in (scram, plain):
        listed = treewatch("groups", "list", "--config", str(config_file), "--command-config", str(properties),
                           "--json")
        assert listed.returncode == 0, (properties.name, listed.stderr)
        assert "groups" in json_of(listed)

    # With -b as well: the configuration's address may be anything.
    elsewhere = write_config(tmp_path / "elsewhere.yaml", f"127.0.0.1:{free_port()}", unique, request_timeout=3)
    listed = treewatch("groups", "list", "--config", str(elsewhere), "-b", sasl, "--command-config", str(scram))
    assert listed.returncode == 0, listed.stderr

    wrong = tmp_path / "wrong.properties"
    wrong.write_text(scram.read_text().replace(KAFKA_PASSWORD, "not-the-password-91c2"))
    failed = treewatch("groups", "list", "--config", str(config_file), "--command-config", str(wrong))
    assert failed.returncode == 1
    assert f"--command-config {wrong}" in failed.stderr  # where to fix the credentials
    assert "not-the-password-91c2" not in failed.stdout + failed.stderr


BAD_FILES = {
    "jks truststore": ("security.protocol=SSL\nssl.truststore.location=/etc/kafka/truststore.jks\n"
                       "ssl.truststore.password=s3cret-trust\n", "line 2: ssl.truststore.location is a JKS truststore"),
    "keystore": ("security.protocol=SSL\nssl.keystore.location=/etc/kafka/keystore.p12\n",
                 "line 2: ssl.keystore.location is not supported (librdkafka reads PEM"),
    "unknown key": ("security.protocol=PLAINTEXT\nsasl.kerberos.service.name=kafka\n",
                    "line 2: sasl.kerberos.service.name is not supported (Kerberos"),
    "misspelt key": ("securty.protocol=SASL_SSL\n", "line 1: securty.protocol is not supported (supported: "),
    "gssapi": ("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=GSSAPI\n",
               "line 2: sasl.mechanism 'GSSAPI' is not supported"),
    "kerberos module": ('security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.jaas.config='
                        'com.sun.security.auth.module.Krb5LoginModule required keyTab="s3cret-tab";\n',
                        "line 3: sasl.jaas.config: login module com.sun.security.auth.module.Krb5LoginModule is not "
                        "supported"),
    "unterminated quote": ('sasl.mechanism=PLAIN\nsasl.jaas.config=org.apache.kafka.common.security.plain.'
                           'PlainLoginModule required username="u" password="s3cret-open\n',
                           "line 2: sasl.jaas.config: cannot be read"),
    "jaas without password": ('sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required '
                              'username="u";\n', "PlainLoginModule without password"),
    "scram without mechanism": ('sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required '
                                'username="u" password="s3cret-scram";\n', "ScramLoginModule needs sasl.mechanism"),
    "sasl with plaintext": ("security.protocol=PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.username=u\n"
                            "sasl.password=s3cret-plain\n", "security.protocol PLAINTEXT would not use them"),
    "password alone": ("sasl.password=s3cret-alone\n", "sasl.password without sasl.username"),
    "a stray secret line": ("security.protocol=SASL_PLAINTEXT\ns3cret-stray\n",
                            "line 2: not a property name (expected key=value; the line is not shown"),
    "given twice": ("security.protocol=SSL\nsecurity.protocol=SASL_SSL\n",
                    "line 2: security.protocol is given again (first on line 1)"),
    "missing ca file": ("security.protocol=SSL\nssl.ca.location=/nonexistent/ca.pem\n",
                        "line 2: ssl.ca.location: no such file: /nonexistent/ca.pem"),
    "bad protocol": ("security.protocol=TLS\n", "security.protocol 'TLS' is not one of"),
}


def test_a_bad_command_config_is_refused_naming_the_key_never_a_secret(tmp_path: Path, unique: str) -> None:
    # Refused before any connection: the configuration points at a closed port.
    config_file = write_config(tmp_path / "treewatch.yaml", f"127.0.0.1:{free_port()}", unique, request_timeout=1)
    cases = {name: (text.encode(), expected) for name, (text, expected) in BAD_FILES.items()}
    cases["not a file"] = (None, "cannot read it: not found")
    cases["binary"] = (b"security.protocol=SSL\n\xff\xfe\x00s3cret", "cannot read it: not UTF-8 text")
    cases["huge"] = (b"a=" + b"s3cret" * 20_000, "cannot read it: larger than 64 KiB; refused")
    for name, (content, expected) in cases.items():
        properties = tmp_path / f"{name.replace(' ', '-')}.properties"
        if content is not None:
            properties.write_bytes(content)
        result = treewatch("groups", "list", "--config", str(config_file), "--command-config", str(properties))
        assert result.returncode == 2, (name, result.stderr)
        assert f"--command-config {properties}" in result.stderr, (name, result.stderr)
        assert expected in result.stderr, (name, result.stderr)
        assert "s3cret" not in result.stdout + result.stderr, (name, result.stderr)
        assert "Traceback" not in result.stderr, (name, result.stderr)


# -- groups list and describe -----------------------------------------------------------------------


def test_groups_list_shows_every_group_by_lag_with_its_stage(config_file: Path, unique: str) -> None:
    config = load_config(config_file)
    topic = config.stage("stamp").request_topic
    stamp_group, other_group, caught_up = config.stage("stamp").group, f"{unique}-other", f"{unique}-caught-up"
    create_topic(config, topic, 2)
    fill(config, topic, {0: 10, 1: 10})
    commit(config, other_group, {(topic, 0): 2, (topic, 1): 3})  # lag 15
    commit(config, stamp_group, {(topic, 0): 9})  # lag 1
    commit(config, caught_up, {(topic, 0): 10, (topic, 1): 10})  # lag 0

    listed = json_of(treewatch("groups", "list", "--config", str(config_file), "--json"))
    mine = [g for g in listed["groups"] if g["group"].startswith(unique)]
    assert [(g["group"], g["stage"], g["state"], g["members"], g["partitions"], g["lag"]) for g in mine] == [
        (other_group, None, "Empty", 0, 2, 15), (stamp_group, "stamp", "Empty", 0, 1, 1),
        (caught_up, None, "Empty", 0, 2, 0)]
    lags = [g["lag"] for g in listed["groups"] if g["lag"] is not None]
    assert lags == sorted(lags, reverse=True)
    # The other stages' groups were never started on this cluster.
    assert listed["missing_stage_groups"] == {"discover": config.stage("discover").group,
                                              "index": config.stage("index").group}

    text = treewatch("groups", "list", "--config", str(config_file))
    assert text.returncode == 0, text.stderr
    lines = [line for line in text.stdout.splitlines() if line.startswith(unique)]
    assert [line.split()[0] for line in lines] == [other_group, stamp_group, caught_up]
    assert lines[1].split()[1:] == ["stamp", "Empty", "0", "1", "1"]
    assert f"note: stage index's group {config.stage('index').group} does not exist" in text.stdout


def test_groups_describe_several_and_all(config_file: Path, unique: str) -> None:
    config = load_config(config_file)
    topic = f"{unique}-several"
    create_topic(config, topic, 1)
    fill(config, topic, {0: 5})
    first, second = f"{unique}-first", f"{unique}-second"
    commit(config, first, {(topic, 0): 1})
    commit(config, second, {(topic, 0): 3})

    several = treewatch("groups", "describe", first, "--group", second, "--config", str(config_file), "--json")
    assert several.returncode == 0, several.stderr
    assert [(g["group"], g["total_lag"]) for g in json_of(several)["groups"]] == [(first, 4), (second, 2)]

    every = json_of(treewatch("groups", "describe", "--all", "--config", str(config_file), "--json"))
    assert {first, second} <= {g["group"] for g in every["groups"]}

    text = treewatch("groups", "describe", first, second, "--config", str(config_file))
    assert f"group {first}: Empty, 0 member(s), total lag 4" in text.stdout
    assert f"group {second}: Empty, 0 member(s), total lag 2" in text.stdout

    # One misspelt name among several: nothing is described, the name is said.
    misspelt = treewatch("groups", "describe", first, f"{unique}-secnd", "--config", str(config_file))
    assert misspelt.returncode == 2
    assert f"no such group: {unique}-secnd; did you mean {second}" in misspelt.stderr
    assert "group " not in misspelt.stdout
    for words in ([], [first, "--all"]):
        usage = treewatch("groups", "describe", *words, "--config", str(config_file))
        assert usage.returncode == 2 and "name the group(s) to describe, or --all" in usage.stderr


@contextmanager
def members_of(config: Config, group: str, topic: str, count: int, **settings: object) -> Iterator[list[str]]:
    """``count`` real consumers subscribed to ``topic`` in ``group``, polling (so they stay members)
    until the block ends; yields their client ids."""
    stop = threading.Event()
    client_ids = [f"{group}-consumer-{index}" for index in range(count)]
    consumers = [Consumer({**config.kafka.client_config(), "group.id": group, "client.id": client_id,
                           "auto.offset.reset": "earliest", **settings}) for client_id in client_ids]

    def run(consumer: Consumer) -> None:
        while not stop.is_set():
            consumer.poll(0.2)

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in consumers]
    for consumer in consumers:
        consumer.subscribe([topic])
    for thread in threads:
        thread.start()
    try:
        yield client_ids
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        for consumer in consumers:
            consumer.close()


def await_description(config_file: Path, group: str, condition, what: str) -> dict:
    deadline = time.monotonic() + 90
    while True:
        result = treewatch("groups", "describe", group, "--config", str(config_file), "--json")
        if result.returncode == 0 and condition(json.loads(result.stdout)):
            return json.loads(result.stdout)
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen within 90s: {result.stdout or result.stderr}")
        time.sleep(0.5)  # a rebalance completes without telling anyone outside the group


def test_describe_shows_member_assignments_and_idle_consumers(config_file: Path, unique: str) -> None:
    config = load_config(config_file)
    topic, group = f"{unique}-idle", f"{unique}-idle-group"
    create_topic(config, topic, 2)
    fill(config, topic, {0: 3, 1: 3})
    with members_of(config, group, topic, 3) as client_ids:
        described = await_description(
            config_file, group, lambda d: d["state"] == "Stable" and len(d["members"]) == 3
            and sum(len(m["assigned"]) for m in d["members"]) == 2, "3 members sharing 2 partitions")
        text = treewatch("groups", "describe", group, "--config", str(config_file))
    assert sorted(m["client_id"] for m in described["members"]) == client_ids
    assert sorted(tuple(p) for m in described["members"] for p in m["assigned"]) == [(topic, 0), (topic, 1)]
    idle = [m["member_id"] for m in described["members"] if not m["assigned"]]
    assert described["idle_members"] == idle and len(idle) == 1
    assert described["unowned_partitions"] == []
    assert len(described["findings"]) == 1
    assert "1 idle consumer(s), assigned no partition: 3 member(s) for 2 partition(s)" in described["findings"][0]
    assert "scaling out will not help" in described["findings"][0]

    assert text.returncode == 0, text.stderr
    for member in described["members"]:
        shown = f"  member {member['member_id']}  client {member['client_id']}  host {member['host']}: "
        assigned = f"{topic}[{member['assigned'][0][1]}]" if member["assigned"] else "no partition (idle)"
        assert shown + assigned in text.stdout, text.stdout
    assert "NOTE: 1 idle consumer(s)" in text.stdout


def test_describe_names_partitions_nobody_owns(config_file: Path, unique: str) -> None:
    config = load_config(config_file)
    topic, group = f"{unique}-grown", f"{unique}-grown-group"
    create_topic(config, topic, 2)
    # The consumer learns of new partitions at its next metadata refresh: not within this test.
    with members_of(config, group, topic, 1, **{"topic.metadata.refresh.interval.ms": 600_000}):
        await_description(config_file, group, lambda d: d["state"] == "Stable" and len(d["members"]) == 1
                          and len(d["members"][0]["assigned"]) == 2, "the member owning both partitions")
        admin = admin_client(config.kafka)
        result_of(admin.create_partitions([NewPartitions(topic, 4)])[topic], 30)
        described = await_description(config_file, group, lambda d: len(d["partitions"]) == 4,
                                       "the partitions added")
        text = treewatch("groups", "describe", group, "--config", str(config_file))
    assert described["state"] == "Stable"
    assert described["unowned_partitions"] == [{"topic": topic, "partition": 2}, {"topic": topic, "partition": 3}]
    assert described["idle_members"] == []
    assert [p["owner"] for p in described["partitions"]] == [described["members"][0]["member_id"]] * 2 + [None] * 2
    assert f"2 partition(s) assigned to nobody while the group is Stable with 1 member(s): {topic}[2,3]" in \
        described["findings"][0]
    assert "NOTE: 2 partition(s) assigned to nobody" in text.stdout


# -- trace --------------------------------------------------------------------------------------------


@pytest.fixture
def pipeline_topics(config_file: Path) -> Config:
    config = load_config(config_file)
    admin = admin_client(config.kafka)
    for name in pipeline_topic_names(config):
        result_of(admin.create_topics([NewTopic(name, 1, 1)])[name], 30)
    return config


def test_trace_max_events_and_summary(pipeline_topics: Config, config_file: Path) -> None:
    config = pipeline_topics
    discover, stamp = config.stage("discover"), config.stage("stamp")
    t0 = int(time.time() * 1000) - 60_000
    cid = f"cid-{uuid.uuid4().hex[:8]}"

    def event(kind: str) -> dict:
        return envelope(kind, {"correlation_id": cid, "file_path": "/src/secret-body.py"})

    publish(config, [(discover.request_topic, event("tree.discover"), t0),
                     (discover.completed_topic, event("tree.discovered"), t0 + 1000),
                     (stamp.request_topic, event("stamp.requested"), t0 + 2000),
                     (stamp.request_topic, event("stamp.requested"), t0 + 3000),
                     (stamp.failed_topic, event("stamp.failed"), t0 + 4000)])

    whole = treewatch("trace", "--correlation-id", cid, "--config", str(config_file), "--json")
    assert whole.returncode == 0, whole.stderr
    assert len(json_of(whole)["events"]) == 5

    capped = treewatch("trace", "--correlation-id", cid, "--config", str(config_file), "--max-events", "2", "--json")
    assert capped.returncode == 1  # as for an incomplete read
    document = json_of(capped)
    assert len(document["events"]) == 2 and document["max_events_reached"] and not document["complete"]
    text = treewatch("trace", "--correlation-id", cid, "--config", str(config_file), "--max-events", "2")
    assert text.returncode == 1
    assert "WARNING: incomplete, the read stopped at --max-events 2: more events may follow" in text.stdout

    summary = treewatch("trace", "--correlation-id", cid, "--config", str(config_file), "--summary", "--json")
    assert summary.returncode == 0, summary.stderr
    document = json_of(summary)
    assert "events" not in document and "secret-body" not in summary.stdout
    assert document["spans"]["stamp"]["request"] == {"count": 2, "first": (t0 + 2000) / 1000,
                                                     "last": (t0 + 3000) / 1000}
    assert document["spans"]["index"]["completed"] == {"count": 0, "first": None, "last": None}
    text = treewatch("trace", "--correlation-id", cid, "--config", str(config_file), "--summary")
    assert text.returncode == 0, text.stdout
    assert "secret-body" not in text.stdout and "stamp.requested" not in text.stdout
    line = next(line for line in text.stdout.splitlines() if line.split()[:2] == ["stamp", "request"])
    assert line.split()[2] == "2"
    assert "first 20" in line and "last 20" in line


# -- dlq inspect ------------------------------------------------------------------------------------


def test_dlq_inspect_by_error_type_and_since(pipeline_topics: Config, config_file: Path) -> None:
    config = pipeline_topics
    stamp = config.stage("stamp")
    now = int(time.time() * 1000)

    def letter(error_type: str, n: int) -> dict:
        return dead_letter(stamp.request_topic, {"correlation_id": f"c{n}"}, error_type, "failed")

    old = [(stamp.dlq_topic, letter("FILE_NOT_FOUND" if n % 2 else "ENCODING_ERROR", n), now - 3 * HOUR_MS + n)
           for n in range(6)]
    recent = [(stamp.dlq_topic, letter("INTELLIGENCE_SERVICE_ERROR", n), now - 60_000 + n) for n in range(6, 9)]
    recent.append((stamp.dlq_topic, letter("FILE_NOT_FOUND", 9), now - 30_000))
    publish(config, old + recent)

    def inspect(*words: str):
        return treewatch("dlq", "inspect", "--stage", "stamp", "--config", str(config_file), *words)

    only = inspect("--error-type", "FILE_NOT_FOUND", "--json")
    assert only.returncode == 0, only.stderr
    document = json_of(only)
    assert document["by_error_type"] == {"FILE_NOT_FOUND": 4} and document["matched"] == 4
    assert {s["error_type"] for s in document["samples"]} == {"FILE_NOT_FOUND"}
    assert document["read"] == 10

    nothing = inspect("--error-type", "NO_SUCH_TYPE")
    assert nothing.returncode == 1
    assert "no dead letters of error type 'NO_SUCH_TYPE' among the 10 read" in nothing.stdout
    assert inspect("--error-type", "NO_SUCH_TYPE", "--json").returncode == 1

    # Since an hour ago: the time index starts the read at the first recent dead letter.
    since = json_of(inspect("--since", "1h", "--json"))
    assert since["read"] == 4 and since["in_range"] == 4 and since["retained"] == 10
    assert since["by_error_type"] == {"INTELLIGENCE_SERVICE_ERROR": 3, "FILE_NOT_FOUND": 1}
    both = json_of(inspect("--since", "2h", "--error-type", "FILE_NOT_FOUND", "--json"))
    assert both["read"] == 4 and both["by_error_type"] == {"FILE_NOT_FOUND": 1}
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((now - 2 * HOUR_MS) / 1000))
    assert json_of(inspect("--since", iso, "--json"))["read"] == 4
    future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now / 1000 + 3600))
    later = json_of(inspect("--since", future, "--json"))
    assert later["read"] == 0 and later["in_range"] == 0

    bad = inspect("--since", "yesterday")
    assert bad.returncode == 2 and "expected a duration (30m, 2h, 1d" in bad.stderr


def test_every_kafka_command_takes_the_kafka_flags() -> None:
    from treewatch.cli import build_parser

    for words in (["status"], ["trace", "--correlation-id", "c"], ["dlq", "inspect", "--stage", "s"],
                  ["dlq", "replay", "--stage", "s", "--dry-run"], ["groups", "list"], ["groups", "describe", "g"],
                  ["groups", "reset", "--group", "g", "--topic", "t", "--to", "earliest"], ["bench", "--files", "3"],
                  ["reindex", "--project-path", "/p", "--project-name", "p"]):
        args = build_parser().parse_args([*words, "-b", "h:1", "--command-config", "f"])
        assert (args.bootstrap_server, args.command_config) == ("h:1", "f"), words


def test_kafka_flags_in_the_readme_table() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for flag in ("-b <host:port>", "--command-config F", "treewatch groups list", "treewatch groups describe <group>",
                 "--max-events N", "--summary", "--error-type T", "--since 30m"):
        assert flag in readme, flag
