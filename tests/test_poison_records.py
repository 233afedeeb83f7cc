"""Poison records against a real broker: whatever bytes a record holds (100,000 levels of nesting,
5 MB, binary, NUL bytes, a 100,000-digit number, a list, nothing at all), the exporter's DLQ
collector, ``treewatch dlq inspect``, ``dlq replay`` and ``trace`` count or list it as unreadable
and go on; error_type labels stay bounded; replay says what exactly once needs and which replay
holds a DLQ. The tools run as an operator runs them: ``python3 -m treewatch`` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import NewTopic
from prometheus_client.parser import text_string_to_metric_families

from devkafka import KafkaCluster
from exporter.dlq_tail import KNOWN_ERROR_TYPES, MAX_ERROR_TYPES_PER_STAGE, OTHER_ERROR_TYPE, DlqTail
from exporter.kafka_source import KafkaSource
from exporter.metrics import TREE_DLQ_RETAINED_RECORDS, Part
from exporter.refresh import Refresher
from exporter.render import render
from pipeline.config import Config, parse_config
from pipeline.events import (
    MAX_ERROR_TYPE_CHARS,
    TRUNCATED_MARKER,
    UNKNOWN_ERROR_TYPE,
    UNPARSEABLE,
    UnreadableRecord,
    dead_letter,
    envelope,
    parse_dead_letter,
    read_json_object,
)
from pipeline.kafka import admin_client, fetch_watermarks, producer, read_records, reader
from tools.dlq import ReplayFenced, ReplayReport, fencing_reported, replay_group
from tools.trace import trace

ROOT = Path(__file__).resolve().parent.parent
# Topics of these tests accept records up to this size, so a 5 MB poison can be written at all.
MAX_RECORD_BYTES = 8 * 1024 * 1024
FIVE_MB_LETTER = (b'{"error_type": "FILE_NOT_FOUND", "original_topic": "t", "original_payload": {}, '
                  b'"error_message": "' + b"x" * 5_000_000 + b'"}')

# Records no reader can read, each with the reason an operator is told.
POISONS: dict[str, tuple[bytes | None, str]] = {
    "100,000 nested lists": (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 64 levels"),
    "100,000 nested objects": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested deeper than 64 levels"),
    "5 MB": (FIVE_MB_LETTER, f"larger than 1,048,576 bytes ({len(FIVE_MB_LETTER):,} bytes)"),
    "binary": (bytes(range(256)) * 64, "not UTF-8"),
    "NUL bytes": (b"\x00" * 1000, "not a JSON object"),
    "a 100,000-digit number": (b'{"error_type": "FILE_NOT_FOUND", "n": ' + b"9" * 100_000 + b"}",
                               "holds a number too long to read"),
    "a top-level list": (b'[{"error_type": "FILE_NOT_FOUND"}]', "not a JSON object"),
    "empty": (b"", "not a JSON object"),
    "no value": (None, "no value (a tombstone)"),
}
# Readable, but not what a dead letter should be: counted under UNKNOWN.
ERROR_TYPE_NOT_A_STRING = b'{"error_type": {"nested": ["x"]}, "original_topic": "t"}'


# -- helpers ---------------------------------------------------------------------------------------


def stage_config(kafka: KafkaCluster, unique: str) -> Config:
    """The default stages under a unique env, so no other test's topics or groups count."""
    return parse_config({
        "env": f"p{unique}",
        "kafka": {"bootstrap_servers": kafka.bootstrap_servers, "request_timeout_seconds": 10},
        "services": {},
        "exporter": {"groups": {"allow": [f".*{unique}.*"]}, "topics": {"allow": [f".*{unique}.*"]}},
    }, source=f"test-{unique}")


@pytest.fixture
def config_file(kafka: KafkaCluster, unique: str, tmp_path: Path) -> Path:
    """treewatch.yaml for stage_config(), every stage topic created with one partition (so replay
    order is write order and transaction markers can be counted) and room for huge records."""
    path = tmp_path / "treewatch.yaml"
    path.write_text(yaml.safe_dump({
        "env": f"p{unique}",
        "kafka": {"bootstrap_servers": kafka.bootstrap_servers, "request_timeout_seconds": 10},
        "services": {},
    }))
    config = stage_config(kafka, unique)
    create_topics(kafka, [topic for stage in config.stages for topic in stage.topics.values()])
    return path


def create_topics(kafka: KafkaCluster, topics: list[str]) -> None:
    admin = kafka.admin()
    new = [NewTopic(topic, 1, 1, config={"max.message.bytes": str(MAX_RECORD_BYTES)}) for topic in topics]
    for future in admin.create_topics(new).values():
        future.result(timeout=30)
    kafka.wait_until(lambda: all(topic in admin.list_topics(timeout=5).topics for topic in topics), timeout=30,
                     what="topics to exist")


def produce(kafka: KafkaCluster, topic: str, values: list[bytes | None]) -> None:
    """The values in order to partition 0; returns once every one is written."""
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "enable.idempotence": True,
                         "message.max.bytes": MAX_RECORD_BYTES})
    failures: list[str] = []
    for value in values:
        producer.produce(topic, value, partition=0,
                         on_delivery=lambda error, _message: failures.append(str(error)) if error else None)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not failures


def letter(config: Config, error_type: str, correlation_id: str = "c") -> bytes:
    stage = config.stage("stamp")
    original = envelope("stamp.requested", {"correlation_id": correlation_id, "file_path": f"/src/{correlation_id}"})
    return json.dumps(dead_letter(stage.request_topic, original, error_type, f"{error_type} for {correlation_id}")
                      ).encode()


def treewatch(config_file: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "treewatch", *args, "--config", str(config_file)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def start_treewatch(config_file: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "treewatch", *args, "--config", str(config_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def committed_values(config: Config, topic: str) -> list[bytes]:
    """Every record value of the (one-partition) topic a read_committed consumer sees."""
    watermarks = fetch_watermarks(admin_client(config.kafka), [(topic, 0)], 10)
    consumer = reader(config.kafka, **{"isolation.level": "read_committed"})
    try:
        return [r.value() for r in read_records(consumer, watermarks.low, watermarks.high,
                                                deadline=time.monotonic() + 60)]
    finally:
        consumer.close()


def replayed_ids(config: Config) -> list[str]:
    return [json.loads(value)["payload"]["correlation_id"]
            for value in committed_values(config, config.stage("stamp").request_topic)]


def dlq_values(results: dict, metric: str) -> dict[str, float]:
    """error_type → value of the stamp stage's series of a DLQ metric (the DLQ collector must not fail)."""
    gathered = results[Part.DLQ]
    assert not isinstance(gathered, BaseException), f"the DLQ collector failed: {gathered!r}"
    return {s.labels[1]: s.value for s in gathered if s.metric.name == metric and s.labels[0] == "stamp"}


def gather_until(source: KafkaSource, condition: Callable[[dict], bool], what: str) -> dict:
    deadline = time.monotonic() + 60
    while True:
        results = source.gather()
        if condition(results):
            return results
        assert time.monotonic() < deadline, f"timed out waiting for {what}; last results: {results}"
        time.sleep(0.2)


# -- reading one record ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(POISONS))
def test_every_poison_is_an_unreadable_record_with_its_reason(name: str) -> None:
    value, reason = POISONS[name]
    with pytest.raises(UnreadableRecord) as raised:
        read_json_object(value)
    assert str(raised.value) == reason
    letter = parse_dead_letter(value)
    assert (letter.error_type, letter.unreadable) == (UNPARSEABLE, reason)


def test_dead_letter_texts_are_bounded_valid_utf8_without_control_characters() -> None:
    letter = parse_dead_letter(json.dumps({
        "error_type": "E" * 10_000, "error_message": "line one\nline two \x1b[2J" + "m" * 10_000,
        "correlation_id": "\ud800lone", "original_topic": "topic\udfff"}).encode())
    assert letter.error_type == "E" * (MAX_ERROR_TYPE_CHARS - len(TRUNCATED_MARKER)) + TRUNCATED_MARKER
    assert letter.error_message.startswith("line one line two \ufffd[2J") and letter.error_message.endswith(
        TRUNCATED_MARKER)
    assert (letter.correlation_id, letter.original_topic) == ("\ufffdlone", "topic\ufffd")
    for text in (letter.error_type, letter.error_message, letter.correlation_id, letter.original_topic):
        text.encode("utf-8")  # would raise on a lone surrogate
    assert parse_dead_letter(ERROR_TYPE_NOT_A_STRING).error_type == UNKNOWN_ERROR_TYPE


# -- the exporter's DLQ collector ------------------------------------------------------------------


def test_poison_dead_letters_count_as_unparseable_and_the_dlq_series_stay(kafka: KafkaCluster, unique: str) -> None:
    config = stage_config(kafka, unique)
    dlq = config.stage("stamp").dlq_topic
    create_topics(kafka, [dlq])
    produce(kafka, dlq, [letter(config, "FILE_NOT_FOUND")])  # retained before the exporter starts
    source = KafkaSource(config)
    try:
        first = source.gather()
        assert dlq_values(first, "tree_dlq_retained_records_by_error_type")["FILE_NOT_FOUND"] == 1

        poisons = [value for value, _ in POISONS.values()]
        produce(kafka, dlq, [letter(config, "ENCODING_ERROR"), *poisons, ERROR_TYPE_NOT_A_STRING,
                             letter(config, "ENCODING_ERROR")])
        written = 1 + 2 + len(poisons) + 1
        results = gather_until(source, lambda r: sum(dlq_values(r, "tree_dlq_retained_records_by_error_type")
                                                     .values()) == written, "every dead letter to be read")
        assert {s.labels: s.value for s in results[Part.DLQ] if s.metric is TREE_DLQ_RETAINED_RECORDS} == {
            ("stamp", dlq): written}
        assert dlq_values(results, "tree_dlq_retained_records_by_error_type") == {
            "FILE_NOT_FOUND": 1, "ENCODING_ERROR": 2, UNPARSEABLE: len(poisons), UNKNOWN_ERROR_TYPE: 1,
            "INTELLIGENCE_SERVICE_ERROR": 0}
        assert dlq_values(results, "tree_dlq_records_total") == {
            "FILE_NOT_FOUND": 0, "ENCODING_ERROR": 2, UNPARSEABLE: len(poisons), UNKNOWN_ERROR_TYPE: 1,
            "INTELLIGENCE_SERVICE_ERROR": 0}

        # The refresh after goes on past the poison: only the new dead letter is counted.
        produce(kafka, dlq, [letter(config, "ENCODING_ERROR")])
        later = gather_until(source, lambda r: dlq_values(r, "tree_dlq_records_total")["ENCODING_ERROR"] == 3,
                             "the dead letter after the poison to be counted")
        assert dlq_values(later, "tree_dlq_records_total")[UNPARSEABLE] == len(poisons)
    finally:
        source.close()


def test_error_type_labels_are_bounded_and_slots_of_types_no_longer_retained_are_freed(
        kafka: KafkaCluster, unique: str) -> None:
    config = stage_config(kafka, unique)
    dlq = config.stage("stamp").dlq_topic
    create_topics(kafka, [dlq])
    source = KafkaSource(config)
    refresher = Refresher([source], interval_seconds=60, stale_grace_seconds=300, max_series=100_000,
                          build_info={"version": "t", "python_version": "t", "librdkafka_version": "t"})

    def exposed() -> tuple[str, dict[str, dict[str, float]]]:
        """The rendered exposition and, per DLQ metric, the stamp stage's series by error_type."""
        text = render(refresher.run_once()).decode("utf-8")
        series: dict[str, dict[str, float]] = {}
        for family in text_string_to_metric_families(text):
            for item in family.samples:
                if item.name in ("tree_dlq_records_total", "tree_dlq_retained_records_by_error_type") \
                        and item.labels["stage"] == "stamp":
                    series.setdefault(item.name, {})[item.labels["error_type"]] = item.value
        return text, series

    def cut(error_type: str) -> str:
        return error_type[:MAX_ERROR_TYPE_CHARS - len(TRUNCATED_MARKER)] + TRUNCATED_MARKER

    try:
        exposed()  # first sight of the empty DLQ: from now on every dead letter is counted
        # A lone surrogate and control characters first, then 120 distinct types of 20,000 characters.
        odd = "\ud800 broken\nline"
        long_types = [f"T{i:03d}-" + "x" * 20_000 for i in range(MAX_ERROR_TYPES_PER_STAGE + 20)]
        produce(kafka, dlq, [letter(config, odd)] + [letter(config, t) for t in long_types])
        text, series = exposed()
        assert len(text) < 200_000  # 120 types × 20,000 characters × 2 series would be 4.8 MB
        counted = series["tree_dlq_records_total"]
        own_slots = {"\ufffd broken line"} | {cut(t) for t in long_types[:MAX_ERROR_TYPES_PER_STAGE - 1]}
        assert set(counted) == own_slots | set(KNOWN_ERROR_TYPES) | {OTHER_ERROR_TYPE}
        assert all(len(error_type) <= MAX_ERROR_TYPE_CHARS for error_type in counted)
        assert counted[OTHER_ERROR_TYPE] == 21 and all(counted[t] == 1 for t in own_slots)
        assert series["tree_dlq_retained_records_by_error_type"] == counted

        # Retention removes the first 50 records: the odd one and T000..T048. Their slots and series
        # go; 30 new types then get slots of their own instead of being counted as "other".
        admin = kafka.admin()  # kept referenced until its future resolves
        for future in admin.delete_records([TopicPartition(dlq, 0, 50)]).values():
            future.result(timeout=30)
        new_types = [f"NEW-{i}" for i in range(30)]
        produce(kafka, dlq, [letter(config, t) for t in new_types])
        _, series = exposed()
        still = {cut(t) for t in long_types[49:MAX_ERROR_TYPES_PER_STAGE - 1]}
        expected = {**dict.fromkeys(KNOWN_ERROR_TYPES, 0), **dict.fromkeys(still | set(new_types), 1),
                    OTHER_ERROR_TYPE: 21}
        assert series["tree_dlq_records_total"] == expected
        assert series["tree_dlq_retained_records_by_error_type"] == expected
    finally:
        refresher.stop()


def test_the_dlq_tail_reads_a_bounded_number_of_bytes_per_refresh(kafka: KafkaCluster, unique: str) -> None:
    config = stage_config(kafka, unique)
    dlq = config.stage("index").dlq_topic
    create_topics(kafka, [dlq])
    big = json.dumps({"error_type": "FILE_NOT_FOUND", "error_message": "x" * 900_000}).encode()
    produce(kafka, dlq, [big] * 8)
    admin = admin_client(config.kafka)
    key = (dlq, 0)
    tail = DlqTail(config.kafka, config.stages, max_bytes_per_refresh=2_000_000, read_timeout_seconds=10)

    def retained() -> float | None:
        tail.advance([key], fetch_watermarks(admin, [key], 10))
        return {(metric.name, labels): value for metric, labels, value in tail.samples()}.get(
            ("tree_dlq_retained_records_by_error_type", ("index", "FILE_NOT_FOUND")))

    try:
        # 0.9 MB each, 2 MB a refresh: three records, three, then the last two; the breakdown
        # appears once all eight retained at first sight are read.
        assert [retained() for _ in range(4)] == [None, None, 8, 8]
    finally:
        tail.close()


# -- the operator tools ----------------------------------------------------------------------------


def test_dlq_inspect_shows_poison_as_unreadable_and_counts_the_rest(kafka: KafkaCluster, unique: str,
                                                                    config_file: Path) -> None:
    config = stage_config(kafka, unique)
    produce(kafka, config.stage("stamp").dlq_topic, [
        letter(config, "FILE_NOT_FOUND"), POISONS["100,000 nested lists"][0], POISONS["5 MB"][0],
        POISONS["binary"][0], letter(config, "INTELLIGENCE_SERVICE_ERROR")])

    done = treewatch(config_file, "dlq", "inspect", "--stage", "stamp")

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"{config.stage('stamp').dlq_topic}: 5 retained, 5 read, 3 malformed"
    unreadable = [line.split(" skipped: ")[1] for line in lines if "UNREADABLE" in line]
    assert unreadable == ["nested deeper than 64 levels", POISONS["5 MB"][1], "not UTF-8"]
    assert any(line.split() == ["FILE_NOT_FOUND", "1"] for line in lines)
    assert any(line.split() == ["INTELLIGENCE_SERVICE_ERROR", "1"] for line in lines)


def test_dlq_replay_skips_poison_at_its_offsets_and_republishes_the_rest_once(
        kafka: KafkaCluster, unique: str, config_file: Path) -> None:
    config = stage_config(kafka, unique)
    produce(kafka, config.stage("stamp").dlq_topic, [
        letter(config, "INTELLIGENCE_SERVICE_ERROR", "c1"), POISONS["100,000 nested objects"][0],
        letter(config, "INTELLIGENCE_SERVICE_ERROR", "c2"), POISONS["5 MB"][0],
        letter(config, "INTELLIGENCE_SERVICE_ERROR", "c3")])

    done = treewatch(config_file, "dlq", "replay", "--stage", "stamp", "--execute")

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "republished: 3" in done.stdout
    lines = done.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("skipped, unreadable or malformed"))
    assert lines[first].endswith(": 2")
    assert lines[first + 1:first + 3] == [
        "  [0]@1: nested deeper than 64 levels", f"  [0]@3: {POISONS['5 MB'][1]}"]
    assert "left in the DLQ after this run: 0" in lines
    assert replayed_ids(config) == ["c1", "c2", "c3"]
    again = treewatch(config_file, "dlq", "replay", "--stage", "stamp", "--execute")
    assert again.returncode == 0 and "republished: 0" in again.stdout
    assert replayed_ids(config) == ["c1", "c2", "c3"]


def test_dlq_replay_commits_in_small_transactions_and_says_consumers_must_read_committed(
        kafka: KafkaCluster, unique: str, config_file: Path) -> None:
    config = stage_config(kafka, unique)
    stage = config.stage("stamp")
    produce(kafka, stage.dlq_topic, [letter(config, "INTELLIGENCE_SERVICE_ERROR", f"c{i}") for i in range(250)])

    def commit_markers() -> int:
        """Each committed transaction leaves one marker (an offset no consumer reads) in the request
        topic's partition it wrote to."""
        high = fetch_watermarks(admin_client(config.kafka), [(stage.request_topic, 0)], 10).high
        return high[(stage.request_topic, 0)] - len(committed_values(config, stage.request_topic))

    by_default = treewatch(config_file, "dlq", "replay", "--stage", "stamp", "--execute")
    assert by_default.returncode == 0, by_default.stderr
    assert "committed in 3 transaction(s) of at most 100 dead letters" in by_default.stdout
    assert "exactly once only for consumers with isolation.level=read_committed" in by_default.stdout
    assert "the pipeline's consumers must set isolation.level=read_committed" in by_default.stdout
    assert commit_markers() == 3

    produce(kafka, stage.dlq_topic, [letter(config, "INTELLIGENCE_SERVICE_ERROR", f"d{i}") for i in range(100)])
    smaller = treewatch(config_file, "dlq", "replay", "--stage", "stamp", "--execute",
                        "--records-per-transaction", "40")
    assert smaller.returncode == 0, smaller.stderr
    assert "committed in 3 transaction(s) of at most 40 dead letters" in smaller.stdout
    assert commit_markers() == 6
    assert sorted(replayed_ids(config)) == sorted([f"c{i}" for i in range(250)] + [f"d{i}" for i in range(100)])


def test_a_second_replay_of_the_same_dlq_fences_the_first_which_says_which_replay_holds_it(
        kafka: KafkaCluster, unique: str, config_file: Path) -> None:
    config = stage_config(kafka, unique)
    stage = config.stage("stamp")
    count = 5_000
    produce(kafka, stage.dlq_topic, [letter(config, "INTELLIGENCE_SERVICE_ERROR", f"c{i}") for i in range(count)])
    group = replay_group(stage)
    admin = admin_client(config.kafka)
    request = (stage.request_topic, 0)

    # The first replay commits one dead letter per transaction: it is still running when the second
    # starts, which it does once the first has committed something: the request topic then holds a
    # record and its transaction's commit marker. (Not asked of the replay group's offsets: an admin
    # client's ListConsumerGroupOffsets of the group while its transactions run crashed this process
    # in librdkafka 2.16, a segfault in rd_kafka_cgrp_op under rd_kafka_handle_OffsetFetch.)
    first = start_treewatch(config_file, "dlq", "replay", "--stage", "stamp", "--execute",
                            "--records-per-transaction", "1")
    try:
        deadline = time.monotonic() + 60
        while fetch_watermarks(admin, [request], 10).high[request] < 2:
            assert first.poll() is None, f"the first replay ended early: {first.communicate()}"
            assert time.monotonic() < deadline, "the first replay never committed a transaction"
            time.sleep(0.1)
        second = treewatch(config_file, "dlq", "replay", "--stage", "stamp", "--execute", timeout=240)
        first_out, first_err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()

    assert second.returncode == 0, second.stderr
    assert first.returncode == 1, (first_out, first_err)
    assert f"another replay holds this DLQ (transactional id {group})" in first_err
    assert "Traceback" not in first_err
    ids = replayed_ids(config)
    assert len(ids) == count and set(ids) == {f"c{i}" for i in range(count)}


def test_a_fenced_producer_is_reported_as_another_replay_when_kafka_says_only_fatal(kafka: KafkaCluster,
                                                                                   unique: str) -> None:
    config = stage_config(kafka, unique)
    stage = config.stage("stamp")
    create_topics(kafka, [stage.request_topic])
    group = replay_group(stage)
    fenced = producer(config.kafka, **{"transactional.id": group})
    fenced.init_transactions(30)
    newer = producer(config.kafka, **{"transactional.id": group})
    newer.init_transactions(30)  # fences the first
    fenced.begin_transaction()
    # librdkafka learns of the fence in the background and names it (_FENCED) in the next call...
    deadline = time.monotonic() + 30
    with pytest.raises(KafkaException):
        while time.monotonic() < deadline:
            fenced.produce(stage.request_topic, b"{}")
            fenced.poll(0.05)
    # ...and every produce() after that says only _FATAL: the replay must still tell what happened.
    with pytest.raises(ReplayFenced, match=rf"another replay holds this DLQ \(transactional id {group}\)") as raised:
        with fencing_reported(fenced, ReplayReport(stage.name, stage.dlq_topic, group, dry_run=False), 10):
            fenced.produce(stage.request_topic, b"{}")
    assert raised.value.__cause__.args[0].code() == KafkaError._FATAL


def test_trace_lists_unreadable_records_holding_the_id_and_finds_the_others(
        kafka: KafkaCluster, unique: str, config_file: Path) -> None:
    config = stage_config(kafka, unique)
    discover, stamp = config.stage("discover"), config.stage("stamp")
    cid = f"cid-{unique}"
    deep_with_id = (b'{"payload": {"correlation_id": "' + cid.encode() + b'"}, "x": '
                    + b"[" * 100_000 + b"]" * 100_000 + b"}")
    huge_with_id = b'{"correlation_id": "' + cid.encode() + b'", "pad": "' + b"x" * 5_000_000 + b'"}'
    produce(kafka, discover.request_topic, [
        json.dumps(envelope("tree.discover.requested", {"correlation_id": cid})).encode(),
        POISONS["100,000 nested lists"][0], POISONS["binary"][0], None])
    produce(kafka, stamp.request_topic, [
        deep_with_id, json.dumps(envelope("stamp.requested", {"correlation_id": "someone-else"})).encode(),
        huge_with_id, json.dumps(envelope("stamp.requested", {"correlation_id": cid})).encode()])
    produce(kafka, stamp.dlq_topic, [letter(config, "INTELLIGENCE_SERVICE_ERROR", cid)])

    done = treewatch(config_file, "trace", "--correlation-id", cid)

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"correlation id {cid}: 3 event(s) in 9 record(s) read"
    assert lines[lines.index("skipped 2 unreadable record(s) holding the correlation id's text:") + 1:][:2] == [
        f"  {stamp.request_topic}[0]@0 ({len(deep_with_id):,} bytes): nested deeper than 64 levels",
        f"  {stamp.request_topic}[0]@2 ({len(huge_with_id):,} bytes): larger than 1,048,576 bytes "
        f"({len(huge_with_id):,} bytes)"]
    as_json = treewatch(config_file, "trace", "--correlation-id", cid, "--json")
    document = json.loads(as_json.stdout)
    assert [(e["topic"], e["offset"]) for e in document["events"]] == [
        (discover.request_topic, 0), (stamp.request_topic, 3), (stamp.dlq_topic, 0)]
    assert document["unreadable_count"] == 2


@pytest.mark.parametrize("correlation_id", ["proj-ü-42", 'with "quotes" and \\', "日本語", "tab\tid"])
def test_trace_finds_ids_whatever_characters_json_escapes_in_them(kafka: KafkaCluster, unique: str,
                                                                  correlation_id: str) -> None:
    config = stage_config(kafka, unique)
    stamp = config.stage("stamp")
    create_topics(kafka, [stamp.request_topic, stamp.completed_topic])
    event = envelope("stamp.requested", {"correlation_id": correlation_id})
    # Python escapes every non-ASCII character by default; Java and Go producers write UTF-8.
    produce(kafka, stamp.request_topic, [json.dumps(event).encode(),
                                         json.dumps(envelope("x", {"correlation_id": "other"})).encode()])
    produce(kafka, stamp.completed_topic, [json.dumps(event, ensure_ascii=False).encode()])

    result = trace(config, correlation_id, timeout_seconds=60)

    assert result.complete and result.records_scanned == 3
    assert [(e.topic, e.offset) for e in result.events] == [(stamp.request_topic, 0), (stamp.completed_topic, 0)]
