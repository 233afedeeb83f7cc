"""``treewatch replay`` and ``treewatch reconcile`` (the guide's Issue 3, "Missing files in search
results") through the real command line, against the session's real Kafka broker and the real
simulator: files of a project stop at the index stage (requests lost while the stage was stalled,
others dead-lettered), reconcile names exactly those files and where they stopped, and the commands
it prints re-drive them until it exits 0.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from devkafka import KafkaCluster, free_port
from devkafka.processes import running_process
from pipeline.config import Config, load_config
from pipeline.events import discovery_request, envelope
from pipeline.kafka import KafkaSession, iter_records, reader
from pipeline.kafka_errors import all_watermarks
from simulator.control import ControlClient
from simulator.stages import ERROR_TYPES
from tests.config_files import own_pipeline, write_config_file
from tests.waiting import WITHIN_SECONDS, wait_for
from tools.dlq import REPLAYED_FROM_HEADER
from tools.event_scan import EventSelector
from tools.reconcile import reconcile
from tools.request_journey import publish_discovery_request

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(900)

FILES = 16


@dataclass
class Pipeline:
    config: Config
    config_file: Path
    control: ControlClient

    def treewatch(self, *args: str, config: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(treewatch_command(*args, *(["--config", str(self.config_file)] if config else [])),
                              capture_output=True, text=True, timeout=WITHIN_SECONDS, cwd=REPO)

    def reconcile_json(self, *args: str) -> tuple[int, dict[str, Any]]:
        done = self.treewatch("reconcile", *args, "--json")
        assert done.returncode in (0, 1), done.stderr
        return done.returncode, json.loads(done.stdout)

    def publish_project(self, project: str, files: int) -> str:
        correlation = f"cid-{uuid.uuid4().hex[:12]}"
        publish_discovery_request(self.config, discovery_request(f"/projects/{project}", project, correlation,
                                                                 synthetic_file_count=files))
        return correlation


def treewatch_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "treewatch", "--log-level", "WARNING", *args]


def write_config(workdir: Path, bootstrap_servers: str) -> Path:
    """The guide's pipeline with topics and groups of its own (the session broker carries other tests')."""
    return write_config_file(workdir / "treewatch.yaml", own_pipeline("replay", bootstrap_servers))


@pytest.fixture(scope="module")
def pipeline(kafka: KafkaCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    workdir = tmp_path_factory.mktemp("replay-reconcile")
    config_file = write_config(workdir, kafka.bootstrap_servers)
    control_url = f"http://127.0.0.1:{free_port()}"
    with running_process("simulator", treewatch_command(
            "simulate", "--config", str(config_file), "--files", "0", "--error-rate", "0", "--seed", "7",
            "--partitions", "2", "--control", control_url.removeprefix("http://")),
            f"{control_url}/incidents", workdir / "simulator.log", timeout=WITHIN_SECONDS):
        yield Pipeline(load_config(config_file, environ={}), config_file, ControlClient(control_url))


def end_offsets(config: Config, topics: list[str]) -> dict[tuple[str, int], int]:
    with KafkaSession(config.kafka) as kafka:
        metadata = kafka.admin.list_topics(timeout=10).topics
        keys = [(topic, p) for topic in topics for p in metadata[topic].partitions]
        return dict(all_watermarks(kafka.admin, keys, deadline=time.monotonic() + 30,
                                   request_timeout=10).high)


def read_topic(config: Config, topic: str, **settings: str) -> list[Any]:
    """Every record of ``topic`` now (read_committed, as the pipeline's consumers should read)."""
    consumer = reader(config.kafka, **{"isolation.level": "read_committed", **settings})
    try:
        with KafkaSession(config.kafka) as kafka:
            metadata = kafka.admin.list_topics(timeout=10).topics[topic]
            keys = [(topic, p) for p in metadata.partitions]
            marks = all_watermarks(kafka.admin, keys, deadline=time.monotonic() + 30, request_timeout=10)
        with contextlib.closing(iter_records(consumer, marks.low, marks.high, deadline=time.monotonic() + 60)) as rs:
            return list(rs)
    finally:
        consumer.close()


def replayed_requests(config: Config, correlation: str) -> list[Any]:
    """The committed requests of the index stage that an event replay from the stamp stage's completed
    topic wrote for ``correlation`` (dlq replay marks its own as coming from the DLQ)."""
    source = config.stage("stamp").completed_topic.encode() + b"/"
    return [r for r in read_topic(config, config.stage("index").request_topic)
            if any(name == REPLAYED_FROM_HEADER and value.startswith(source) for name, value in (r.headers() or []))
            and json.loads(r.value())["payload"]["correlation_id"] == correlation]


def indexed_everything(pipeline: Pipeline, correlation: str) -> Callable[[], bool]:
    def check() -> bool:
        return reconcile(pipeline.config, EventSelector(correlation)).all_finished
    return check


# -- the tests -------------------------------------------------------------------------------------


def test_reconcile_names_the_files_stopped_at_index_and_its_commands_re_drive_them(pipeline: Pipeline) -> None:
    config = pipeline.config
    index = config.stage("index")
    stamp = config.stage("stamp")
    # The index stage stalls; the project's files are discovered and stamped meanwhile.
    pipeline.control.start("stage-stalled", stage="index")
    correlation = pipeline.publish_project("stragglers", FILES)
    wait_for(lambda: reconcile(config, EventSelector(correlation)).progress.completed["stamp"] == FILES,
             "every file stamped")
    # Requests lost in transit (the guide's third root cause): those of partition 0 are deleted
    # while the stage cannot read them.
    waiting = reconcile(config, EventSelector(correlation))
    assert {(f.stage, f.status) for f in waiting.stopped} == {("index", "waiting")}, waiting.stopped
    partition_of = {json.loads(r.value())["payload"]["file_path"]: r.partition()
                    for r in read_topic(config, index.request_topic)
                    if json.loads(r.value())["payload"]["correlation_id"] == correlation}
    lost = {path for path, partition in partition_of.items() if partition == 0}
    rejected = set(partition_of) - lost
    assert lost and rejected and len(partition_of) == FILES
    high = end_offsets(config, [index.request_topic])[(index.request_topic, 0)]
    with KafkaSession(config.kafka) as kafka:
        for future in kafka.admin.delete_records([TopicPartition(index.request_topic, 0, high)]).values():
            future.result(timeout=30)
    # The others are dead-lettered when the stage comes back.
    pipeline.control.start("failure-rate", stage="index", share=1.0)
    pipeline.control.stop("stage-stalled")
    wait_for(lambda: reconcile(config, EventSelector(correlation)).progress.dead_lettered["index"] == len(rejected),
             "the rest dead-lettered")
    pipeline.control.stop("failure-rate")

    code, result = pipeline.reconcile_json("--correlation-id", correlation)
    assert code == 1
    assert result["progress"]["discovered"] == FILES
    assert result["progress"]["completed"] == {"stamp": FILES, "index": 0}
    stopped = {f["file_path"]: f for f in result["stopped"]}
    assert set(stopped) == lost | rejected
    assert {path: (f["stage"], f["status"]) for path, f in stopped.items() if path in lost} == \
        {path: ("index", "no event") for path in lost}
    assert {path: (f["stage"], f["status"]) for path, f in stopped.items() if path in rejected} == \
        {path: ("index", "dead-lettered") for path in rejected}
    assert all(stopped[path]["error_type"] in ERROR_TYPES for path in rejected)
    commands = {r["status"]: r for r in result["redrive"]}
    assert set(commands) == {"no event", "dead-lettered"}
    replay_command = commands["no event"]["command"]
    assert replay_command[:6] == ["treewatch", "replay", "--from-topic", stamp.completed_topic, "--to-stage", "index"]
    assert commands["dead-lettered"]["command"][:3] == ["treewatch", "dlq", "replay"]
    # The text output prints the same commands, ready to copy.
    text = pipeline.treewatch("reconcile", "--correlation-id", correlation)
    assert text.returncode == 1
    assert shlex.join(replay_command) in text.stdout
    assert all("STOPPED at index" in line for line in text.stdout.splitlines() if any(p in line for p in lost))

    # A dry run publishes nothing.
    before = end_offsets(config, [index.request_topic])
    dry = pipeline.treewatch(*replay_command[1:], "--json", config=False)
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert planned["dry_run"] and planned["replayed"] == len(lost)
    assert {s["file_path"] for s in planned["samples"]} == lost
    assert planned["skipped_done"] == len(rejected)  # dead letters are dlq replay's
    assert end_offsets(config, [index.request_topic]) == before

    # The printed commands, run with --execute, re-drive exactly the stopped files.
    done = pipeline.treewatch(*replay_command[1:], "--execute", config=False)
    assert done.returncode == 0, done.stderr
    assert f"published: {len(lost)} request(s) of stage index" in done.stdout
    dlq = pipeline.treewatch(*commands["dead-lettered"]["execute"][1:], config=False)
    assert dlq.returncode == 0, dlq.stderr
    wait_for(indexed_everything(pipeline, correlation), "every file indexed after the re-drive")
    final = pipeline.treewatch("reconcile", "--correlation-id", correlation)
    assert final.returncode == 0, final.stdout
    assert "every file reached index" in final.stdout
    assert {json.loads(r.value())["payload"]["file_path"] for r in replayed_requests(config, correlation)} == lost

    # Run again, the replay sends nothing twice: its group's offsets say the range is handled.
    again = pipeline.treewatch(*replay_command[1:], "--execute", "--json", config=False)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["replayed"] == 0
    assert len(replayed_requests(config, correlation)) == len(lost)


def test_replay_only_into_an_existing_request_topic_and_creates_nothing(pipeline: Pipeline) -> None:
    config = pipeline.config
    stamp, index = config.stage("stamp"), config.stage("index")
    with KafkaSession(config.kafka) as kafka:
        topics_before = set(kafka.admin.list_topics(timeout=10).topics)
    misspelt = index.request_topic.replace("index", "indx")
    refused = {
        "a completed topic": (["--to-topic", index.completed_topic], "is the completed topic of stage index"),
        "a dead letter topic": (["--to-topic", index.dlq_topic], "is the dlq topic of stage index"),
        "a misspelt topic": (["--to-topic", misspelt], "is not a request topic of the configured stages"),
        "a misspelt stage": (["--to-stage", "indx"], "no stage 'indx'"),
    }
    for what, (target, reason) in refused.items():
        done = pipeline.treewatch("replay", "--from-topic", stamp.completed_topic, *target,
                                  "--correlation-id", "any", "--execute")
        assert done.returncode == 1, (what, done.stdout, done.stderr)
        assert reason in done.stderr, (what, done.stderr)
    wrong_source = pipeline.treewatch("replay", "--from-topic", misspelt, "--to-stage", "index",
                                      "--correlation-id", "any", "--execute")
    assert wrong_source.returncode == 1 and "not a topic of the configured stages" in wrong_source.stderr
    with KafkaSession(config.kafka) as kafka:
        assert set(kafka.admin.list_topics(timeout=10).topics) - topics_before == set()


def test_a_second_replay_at_the_same_time_fences_the_first_or_finds_nothing_left(pipeline: Pipeline) -> None:
    config = pipeline.config
    files = 60
    correlation = pipeline.publish_project("twice", files)
    wait_for(indexed_everything(pipeline, correlation), "the project indexed")
    stamp = config.stage("stamp")
    command = ["replay", "--from-topic", stamp.completed_topic, "--to-stage", "index", "--correlation-id",
               correlation, "--rate", "5", "--records-per-transaction", "5", "--execute",
               "--config", str(pipeline.config_file)]
    first = subprocess.Popen(treewatch_command(*command), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=REPO)
    wait_for(lambda: replayed_requests(config, correlation), "the first replay's first transaction")
    second = pipeline.treewatch(*command, config=False)
    first_out, first_err = first.communicate(timeout=WITHIN_SECONDS)
    assert second.returncode == 0, second.stderr
    assert first.returncode == 1 and "another replay holds this event replay" in first_err, (first_out, first_err)
    # Whatever each committed, every stamped file is re-requested exactly once.
    paths = [json.loads(r.value())["payload"]["file_path"] for r in replayed_requests(config, correlation)]
    assert len(paths) == files and len(set(paths)) == files


def test_since_bounds_the_scan(pipeline: Pipeline) -> None:
    config = pipeline.config
    earlier = pipeline.publish_project("twice-discovered", 5)
    wait_for(indexed_everything(pipeline, earlier), "the first run indexed")
    between = time.time()
    later = pipeline.publish_project("twice-discovered", 3)
    wait_for(indexed_everything(pipeline, later), "the second run indexed")
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(between)) + f".{int(between % 1 * 1000):03d}Z"
    stamp = config.stage("stamp")
    everything = pipeline.treewatch("replay", "--from-topic", stamp.completed_topic, "--to-stage", "index",
                                    "--project", "twice-discovered", "--json")
    bounded = pipeline.treewatch("replay", "--from-topic", stamp.completed_topic, "--to-stage", "index",
                                 "--project", "twice-discovered", "--since", since, "--json")
    assert everything.returncode == 0 and bounded.returncode == 0, (everything.stderr, bounded.stderr)
    assert json.loads(everything.stdout)["replayed"] == 8
    bounded_report = json.loads(bounded.stdout)
    assert bounded_report["replayed"] == 3
    assert {s["request"]["payload"]["correlation_id"] for s in bounded_report["samples"]} == {later}
    code, result = pipeline.reconcile_json("--project", "twice-discovered", "--since", since)
    assert code == 0 and result["correlation_ids"] == [later]


def test_poison_records_in_the_source_are_counted_and_skipped(kafka: KafkaCluster, tmp_path: Path,
                                                               unique: str) -> None:
    path = tmp_path / "treewatch.yaml"
    path.write_text(yaml.safe_dump({"env": f"poison-{unique}", "kafka": {"bootstrap_servers": kafka.bootstrap_servers},
                                    "services": {}}))
    config = load_config(path, environ={})
    stamp, index = config.stage("stamp"), config.stage("index")
    big = 8 * 1024 * 1024
    admin = kafka.admin()
    topics = [topic for stage in config.stages for topic in stage.topics.values()]
    for future in admin.create_topics([NewTopic(t, 1, 1, config={"max.message.bytes": str(big)})
                                       for t in topics]).values():
        future.result(timeout=30)
    kafka.wait_until(lambda: all(t in admin.list_topics(timeout=5).topics for t in topics), timeout=30,
                     what="topics to exist")
    correlation = "cid-poison"

    def completed(file_path: str) -> bytes:
        return json.dumps(envelope("stamping.generate.completed", {
            "correlation_id": correlation, "project_name": "p", "project_path": "/p", "file_path": file_path})).encode()

    poisons = [b"\xff\xfe not UTF-8", b"[" * 100_000 + b"]" * 100_000,
               b'{"correlation_id": "' + correlation.encode() + b'", "pad": "' + b"x" * 5_000_000 + b'"}',
               b"not json at all", None]
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "message.max.bytes": big})
    for value in [completed("/p/a.py"), *poisons, completed("/p/b.py")]:
        producer.produce(stamp.completed_topic, value, key=b"k", partition=0)
    assert producer.flush(60) == 0

    def treewatch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(treewatch_command(*args, "--config", str(path)), capture_output=True, text=True,
                              timeout=WITHIN_SECONDS, cwd=REPO)

    replay = ["replay", "--from-topic", stamp.completed_topic, "--to-stage", "index", "--correlation-id",
              correlation]
    dry = treewatch(*replay)
    assert dry.returncode == 0, dry.stderr
    assert "would publish: 2 request(s)" in dry.stdout and "unreadable records skipped: 5" in dry.stdout
    done = treewatch(*replay, "--execute", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["replayed"] == 2 and report["unreadable"]["by_reason"] == {
        "not UTF-8": 1, "nested deeper than 64 levels": 1, "not a JSON object": 1, "no value (a tombstone)": 1,
        f"larger than 1,048,576 bytes ({len(poisons[2]):,} bytes)": 1}
    written = [json.loads(r.value()) for r in read_topic(config, index.request_topic)]
    assert [(w["event_type"], w["payload"]["file_path"]) for w in written] == \
        [("tree.index.requested", "/p/a.py"), ("tree.index.requested", "/p/b.py")]
    # reconcile reads the same poison without failing, and says the files were never indexed.
    verdict = treewatch("reconcile", "--correlation-id", correlation, "--json")
    assert verdict.returncode == 1, verdict.stderr
    result = json.loads(verdict.stdout)
    assert result["unreadable"]["by_reason"]["not UTF-8"] == 1
    assert {(f["file_path"], f["stage"], f["status"]) for f in result["stopped"]} == \
        {("/p/a.py", "index", "waiting"), ("/p/b.py", "index", "waiting")}
