"""The operator tools (status, trace, dlq, groups) against a real broker, each test on its own
topics and groups."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import NewTopic

from devkafka import KafkaCluster, free_port
from pipeline.config import Config, parse_config
from pipeline.events import dead_letter, envelope
from pipeline.kafka import admin_client, fetch_committed_offsets, producer, read_records, reader
from tools.dlq import REPLAYED_FROM_HEADER, ReplayFilter, inspect_dlq, replay_dlq, replay_group
from tools.groups import GroupToolError, ResetTarget, describe_group, execute_reset, plan_reset
from tools.status import gather_status
from tools.trace import trace
from treewatch.cli import main

STAGES = ("discover", "stamp", "index")
ROLES = ("request", "completed", "failed", "dlq")


def config_data(kafka: KafkaCluster, unique: str, services: dict[str, str] | None = None) -> dict:
    stages = {
        name: {
            "request_topic": f"{unique}.{name}.v1",
            "completed_topic": f"{unique}.{name}-completed.v1",
            "failed_topic": f"{unique}.{name}-failed.v1",
            "dlq_topic": f"{unique}.{name}.v1.dlq",
            "group": f"{unique}-{name}-group",
        }
        for name in STAGES
    }
    return {
        "kafka": {"bootstrap_servers": kafka.bootstrap_servers, "request_timeout_seconds": 10},
        "stages": stages,
        "services": {name: {"url": url} for name, url in (services or {}).items()},
    }


def create_topics(config: Config, partitions: int = 2) -> None:
    """Every stage topic; dead letter queues get one partition so replay order is the write order."""
    topics = [NewTopic(topic, 1 if role == "dlq" else partitions, 1)
              for stage in config.stages for role, topic in stage.topics.items()]
    admin = admin_client(config.kafka)  # kept referenced until the futures resolve
    for future in admin.create_topics(topics).values():
        future.result(timeout=30)


@pytest.fixture
def pipeline(kafka: KafkaCluster, unique: str) -> Config:
    config = parse_config(config_data(kafka, unique), source="test")
    create_topics(config)
    return config


def publish(config: Config, records: list[tuple[str, object, int | None]]) -> None:
    """(topic, value, timestamp ms or None) each; values that are not bytes are sent as JSON."""
    sender = producer(config.kafka)
    for topic, value, timestamp in records:
        data = value if isinstance(value, bytes) else json.dumps(value).encode()
        sender.produce(topic, value=data, partition=0, **({"timestamp": timestamp} if timestamp else {}))
    assert sender.flush(30) == 0


def committed_records(config: Config, topic: str, partitions: int = 2) -> list:
    """Every committed record of the topic (read_committed: aborted transactions are not read)."""
    admin = admin_client(config.kafka)
    from pipeline.kafka import fetch_watermarks
    keys = [(topic, p) for p in range(partitions)]
    watermarks = fetch_watermarks(admin, keys, 10)
    consumer = reader(config.kafka, **{"isolation.level": "read_committed"})
    try:
        return read_records(consumer, watermarks.low, watermarks.high, deadline=time.monotonic() + 30)
    finally:
        consumer.close()


def run_cli(*argv: str) -> int:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    return exited.value.code


# -- trace -----------------------------------------------------------------------------------------


def test_trace_finds_one_correlation_ids_events_across_stages_in_time_order(pipeline: Config, capsys) -> None:
    discover, stamp = pipeline.stage("discover"), pipeline.stage("stamp")
    t0 = int(time.time() * 1000) - 60_000

    def event(cid: str, kind: str) -> dict:
        return envelope(kind, {"correlation_id": cid, "file_path": f"/src/{cid}.py"})

    request = event("cid-a", "stamp.requested")
    # Written out of time order (and mixed with another correlation id and garbage): the trace sorts.
    publish(pipeline, [
        (stamp.dlq_topic, dead_letter(stamp.request_topic, request, "INTELLIGENCE_SERVICE_ERROR", "503"), t0 + 5000),
        (discover.request_topic, event("cid-a", "tree.discover"), t0 + 1000),
        (discover.request_topic, event("cid-b", "tree.discover"), t0 + 1500),
        (stamp.failed_topic, event("cid-a", "stamp.failed"), t0 + 4000),
        (discover.completed_topic, event("cid-a", "tree.discovered"), t0 + 2000),
        (stamp.request_topic, request, t0 + 3000),
        (stamp.completed_topic, event("cid-b", "stamp.completed"), t0 + 3500),
        (stamp.request_topic, b"\x00 not an event", t0 + 3600),
    ])

    result = trace(pipeline, "cid-a", timeout_seconds=60)

    assert result.complete
    assert result.records_scanned == 8
    assert [(e.stage, e.role) for e in result.events] == [
        ("discover", "request"), ("discover", "completed"), ("stamp", "request"),
        ("stamp", "failed"), ("stamp", "dlq")]
    assert [e.timestamp for e in result.events] == sorted(e.timestamp for e in result.events)
    assert result.summary["discover"] == {"requested": 1, "completed": 1, "failed": 0, "dead_lettered": 0}
    assert result.summary["stamp"] == {"requested": 1, "completed": 0, "failed": 1, "dead_lettered": 1}
    assert result.summary["index"] == {"requested": 0, "completed": 0, "failed": 0, "dead_lettered": 0}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("treewatch.tools_cli.load_config", lambda path: pipeline)
        assert run_cli("trace", "--correlation-id", "cid-a", "--json") == 0
    document = json.loads(capsys.readouterr().out)
    assert [e["topic"] for e in document["events"]] == [e.topic for e in result.events]
    assert document["summary"]["stamp"]["dead_lettered"] == 1


# -- dlq -------------------------------------------------------------------------------------------


def test_dlq_inspect_counts_by_error_type_including_malformed(pipeline: Config) -> None:
    stamp = pipeline.stage("stamp")

    def letter(cid: str, error_type: str) -> dict:
        original = envelope("stamp.requested", {"correlation_id": cid})
        return dead_letter(stamp.request_topic, original, error_type, f"{error_type} for {cid}")

    publish(pipeline, [
        (stamp.dlq_topic, letter("c1", "INTELLIGENCE_SERVICE_ERROR"), None),
        (stamp.dlq_topic, letter("c2", "FILE_NOT_FOUND"), None),
        (stamp.dlq_topic, b"{broken json", None),
        (stamp.dlq_topic, letter("c3", "INTELLIGENCE_SERVICE_ERROR"), None),
    ])

    result = inspect_dlq(pipeline, "stamp")

    assert result.retained == 4 and result.read == 4 and result.complete
    assert result.by_error_type == {"INTELLIGENCE_SERVICE_ERROR": 2, "FILE_NOT_FOUND": 1, "unparseable": 1}
    assert result.malformed == 1
    first = next(s for s in result.samples if s.error_type == "FILE_NOT_FOUND")
    assert (first.correlation_id, first.original_topic, first.error_message) == (
        "c2", stamp.request_topic, "FILE_NOT_FOUND for c2")
    assert inspect_dlq(pipeline, "stamp", limit=2).read == 2


def test_dlq_replay_republishes_matching_dead_letters_exactly_once(pipeline: Config) -> None:
    stamp = pipeline.stage("stamp")
    originals = {cid: envelope("stamp.requested", {"correlation_id": cid}) for cid in ("c1", "c2", "c3", "c4", "c5")}

    def letter(cid: str, error_type: str) -> dict:
        return dead_letter(stamp.request_topic, originals[cid], error_type, "failed")

    publish(pipeline, [
        (stamp.dlq_topic, letter("c1", "INTELLIGENCE_SERVICE_ERROR"), None),  # offset 0
        (stamp.dlq_topic, letter("c2", "INTELLIGENCE_SERVICE_ERROR"), None),  # 1
        (stamp.dlq_topic, b"garbage", None),  # 2: malformed, reported and passed
        (stamp.dlq_topic, letter("c3", "INTELLIGENCE_SERVICE_ERROR"), None),  # 3
        (stamp.dlq_topic, letter("c4", "FILE_NOT_FOUND"), None),  # 4: does not match: stops
        (stamp.dlq_topic, letter("c5", "INTELLIGENCE_SERVICE_ERROR"), None),  # 5
    ])
    service_errors = ReplayFilter(error_type="INTELLIGENCE_SERVICE_ERROR")

    def replayed_ids() -> list[str]:
        # Sorted: the request topic has two partitions, and a record without key may land in either.
        return sorted(json.loads(r.value())["payload"]["correlation_id"]
                      for r in committed_records(pipeline, stamp.request_topic))

    preview = replay_dlq(pipeline, "stamp", service_errors, dry_run=True)
    assert preview.replayed_total == 3 and preview.end == {0: 4}
    assert replayed_ids() == []
    assert fetch_committed_offsets(admin_client(pipeline.kafka), [replay_group(stamp)], 10, 1)[
        replay_group(stamp)] == {}

    first = replay_dlq(pipeline, "stamp", service_errors, limit=1, dry_run=False)
    assert first.replayed_total == 1 and first.limit_reached and first.end == {0: 1}
    assert replayed_ids() == ["c1"]

    second = replay_dlq(pipeline, "stamp", service_errors, dry_run=False)
    assert second.replayed == {stamp.request_topic: 2}
    assert [(s.offset, s.reason) for s in second.malformed] == [(2, "not a JSON object")]
    assert [s.offset for s in second.stopped] == [4]
    assert replayed_ids() == ["c1", "c2", "c3"]

    again = replay_dlq(pipeline, "stamp", service_errors, dry_run=False)
    assert again.replayed_total == 0 and again.start == {0: 4} and [s.offset for s in again.stopped] == [4]
    assert replayed_ids() == ["c1", "c2", "c3"]

    discarding = ReplayFilter(error_type="INTELLIGENCE_SERVICE_ERROR",
                              discard_error_types=frozenset({"FILE_NOT_FOUND"}))
    third = replay_dlq(pipeline, "stamp", discarding, dry_run=False)
    assert third.replayed_total == 1 and third.discarded == {"FILE_NOT_FOUND": 1} and third.left == 0
    republished = {json.loads(r.value())["payload"]["correlation_id"]: r
                   for r in committed_records(pipeline, stamp.request_topic)}
    assert {cid: json.loads(r.value()) for cid, r in republished.items()} == {
        cid: originals[cid] for cid in ("c1", "c2", "c3", "c5")}
    assert dict(republished["c5"].headers())[REPLAYED_FROM_HEADER] == f"{stamp.dlq_topic}/0/5".encode()
    assert replay_dlq(pipeline, "stamp", ReplayFilter(), dry_run=False).replayed_total == 0
    assert len(committed_records(pipeline, stamp.request_topic)) == 4


def test_dlq_replay_command_requires_dry_run_or_confirm(pipeline: Config, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["dlq", "replay", "--stage", "stamp"])
    assert exited.value.code == 2
    assert "--dry-run" in capsys.readouterr().err


# -- groups ----------------------------------------------------------------------------------------


def _commit(config: Config, group: str, topic: str, offsets: dict[int, int]) -> None:
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p, o) for p, o in offsets.items()])
    admin = admin_client(config.kafka)
    admin.alter_consumer_group_offsets([request])[group].result(timeout=30)


def _committed(config: Config, group: str) -> dict:
    return fetch_committed_offsets(admin_client(config.kafka), [group], 10, 1)[group]


def test_groups_describe_and_reset(pipeline: Config, kafka: KafkaCluster) -> None:
    stamp = pipeline.stage("stamp")
    topic, group = stamp.request_topic, stamp.group
    t0 = int(time.time() * 1000) - 100_000
    sender = producer(pipeline.kafka)
    for partition in (0, 1):
        for i in range(10):
            sender.produce(topic, value=b"{}", partition=partition, timestamp=t0 + i * 1000)
    assert sender.flush(30) == 0
    _commit(pipeline, group, topic, {0: 5, 1: 8})

    described = describe_group(pipeline, group)
    assert described.state == "Empty" and described.members == ()
    assert [(p.partition, p.committed, p.high_watermark, p.lag) for p in described.partitions] == [
        (0, 5, 10, 5), (1, 8, 10, 2)]
    assert described.total_lag == 7

    plan = plan_reset(pipeline, group, topic, ResetTarget.parse("earliest"))
    assert [(p.current, p.new) for p in plan.partitions] == [(5, 0), (8, 0)]
    config_file = kafka.workdir / f"{group}.yaml"
    config_file.write_text(yaml.safe_dump(config_data(kafka, topic.split(".")[0])))
    assert run_cli("groups", "reset", "--config", str(config_file), "--group", group, "--topic", topic,
                   "--to", "earliest") == 0
    assert _committed(pipeline, group) == {(topic, 0): 5, (topic, 1): 8}  # the dry run changed nothing

    assert execute_reset(pipeline, plan).mismatched == {}
    assert _committed(pipeline, group) == {(topic, 0): 0, (topic, 1): 0}
    execute_reset(pipeline, plan_reset(pipeline, group, topic, ResetTarget.parse("offset:7")))
    assert _committed(pipeline, group) == {(topic, 0): 7, (topic, 1): 7}
    execute_reset(pipeline, plan_reset(pipeline, group, topic, ResetTarget.parse("offset:99")))
    assert _committed(pipeline, group) == {(topic, 0): 10, (topic, 1): 10}  # clamped to the end
    moment = datetime.fromtimestamp((t0 + 3000) / 1000, UTC).isoformat()
    assert run_cli("groups", "reset", "--config", str(config_file), "--group", group, "--topic", topic,
                   "--to", f"timestamp:{moment}", "--execute", "--save-to", str(kafka.workdir / f"{group}.json")) == 0
    assert _committed(pipeline, group) == {(topic, 0): 3, (topic, 1): 3}

    active = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group,
                       "enable.auto.commit": False, "session.timeout.ms": 6000})
    try:
        active.subscribe([topic])
        deadline = time.monotonic() + 60
        while not active.assignment() and time.monotonic() < deadline:
            active.poll(0.2)
        assert active.assignment(), "the consumer never joined the group"
        with pytest.raises(GroupToolError, match="stop its consumers first"):
            execute_reset(pipeline, plan_reset(pipeline, group, topic, ResetTarget.parse("latest")))
        assert _committed(pipeline, group) == {(topic, 0): 3, (topic, 1): 3}
    finally:
        active.close()


def test_reset_target_parsing() -> None:
    assert ResetTarget.parse("offset:12") == ResetTarget("offset", offset=12)
    assert ResetTarget.parse("timestamp:2026-01-31T12:00:00Z").timestamp_ms == 1_769_860_800_000
    assert ResetTarget.parse("timestamp:2026-01-31T12:00:00").timestamp_ms == 1_769_860_800_000  # UTC
    for bad in ("offset:-1", "timestamp:yesterday", "newest", "earliest:3"):
        with pytest.raises(ValueError):
            ResetTarget.parse(bad)


# -- status ----------------------------------------------------------------------------------------


@pytest.fixture
def healthy_service() -> Iterator[str]:
    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            body = b'{"status": "healthy"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/health"
    finally:
        server.shutdown()
        server.server_close()


def test_status_exit_code_reflects_services_and_reports_lag_and_dlq_depth(
        kafka: KafkaCluster, unique: str, healthy_service: str, tmp_path, capsys) -> None:
    healthy_file = tmp_path / "healthy.yaml"
    healthy_file.write_text(yaml.safe_dump(config_data(kafka, unique, {"bridge": healthy_service})))
    config = parse_config(config_data(kafka, unique), source="test")
    create_topics(config)

    assert run_cli("status", "--config", str(healthy_file)) == 0
    out = capsys.readouterr().out
    assert "status: OK" in out and "1 broker(s)" in out

    down_file = tmp_path / "down.yaml"
    closed = f"http://127.0.0.1:{free_port()}/health"
    down_file.write_text(yaml.safe_dump(config_data(kafka, unique, {"bridge": healthy_service, "onextree": closed})))
    assert run_cli("status", "--config", str(down_file)) == 1
    out = capsys.readouterr().out
    assert "UNHEALTHY: service onextree: connection_refused" in out and "bridge" not in out.split("UNHEALTHY")[1]

    stamp = config.stage("stamp")
    publish(config, [(stamp.request_topic, {"payload": {}}, None)] * 4 + [(stamp.dlq_topic, {}, None)] * 2)
    _commit(config, stamp.group, stamp.request_topic, {0: 1})
    status = gather_status(config)
    lag = next(g for g in status.groups if g.stage == "stamp")
    assert (lag.lag, lag.members, lag.partitions_without_commit) == (3, 0, 1)
    assert {d.stage: d.retained for d in status.dlqs} == {"discover": 0, "stamp": 2, "index": 0}
    assert status.cluster.controller_id is not None and len(status.cluster.brokers) == 1
    # Records wait and nobody consumes them: unhealthy even with every service up.
    assert [p for p in status.problems if p.startswith("group")] == [
        f"group {stamp.group}: 3 records waiting and no consumer (Empty)"]


def test_dlq_replay_after_a_crash_mid_transaction_replays_each_record_once(pipeline: Config) -> None:
    stamp = pipeline.stage("stamp")
    originals = [envelope("stamp.requested", {"correlation_id": f"c{i}"}) for i in range(3)]
    publish(pipeline, [(stamp.dlq_topic, dead_letter(stamp.request_topic, original, "INTELLIGENCE_SERVICE_ERROR",
                                                     "503"), None) for original in originals])
    # A replay that died after producing and sending its offsets, before committing: same
    # transactional id and group as the tool's, transaction left open.
    group = replay_group(stamp)
    crashed = producer(pipeline.kafka, **{"transactional.id": group})
    crashed.init_transactions(30)
    crashed.begin_transaction()
    crashed.produce(stamp.request_topic, value=json.dumps(originals[0]).encode())
    position = reader(pipeline.kafka, **{"group.id": group})
    crashed.send_offsets_to_transaction([TopicPartition(stamp.dlq_topic, 0, 1)],
                                        position.consumer_group_metadata(), 30)
    crashed.flush(30)
    position.close()

    report = replay_dlq(pipeline, "stamp", ReplayFilter(), dry_run=False)

    assert report.start == {0: 0} and report.replayed_total == 3
    ids = sorted(json.loads(r.value())["payload"]["correlation_id"]
                 for r in committed_records(pipeline, stamp.request_topic))
    assert ids == ["c0", "c1", "c2"]
    assert replay_dlq(pipeline, "stamp", ReplayFilter(), dry_run=False).replayed_total == 0
