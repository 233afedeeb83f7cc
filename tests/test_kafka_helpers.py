"""The ground-floor Kafka helpers every tool uses (pipeline.kafka): KafkaSession opens a tool's
clients once and closes them, produce_and_confirm writes records and says what became of each one,
and pipeline.events.payload_of reads an event's fields. Against real brokers."""

from __future__ import annotations

import gc
import re
import signal
import time
import weakref
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from devkafka import KafkaCluster
from pipeline.config import Config, KafkaSettings, parse_config
from pipeline.events import payload_of
from pipeline.kafka import (
    KafkaSession,
    OutgoingRecord,
    ProduceFailed,
    fetch_watermarks,
    produce_and_confirm,
    read_records,
    result_of,
)
from pipeline.kafka_errors import is_transient
from tools.status import gather_status


def settings_of(cluster: KafkaCluster) -> KafkaSettings:
    return parse_config({"kafka": {"bootstrap_servers": cluster.bootstrap_servers,
                                   "request_timeout_seconds": 10}}, source="test").kafka


def create_topic(kafka: KafkaSession, topic: str, partitions: int = 1, **config: str) -> None:
    future = kafka.admin.create_topics([NewTopic(topic, partitions, 1, config=config)])[topic]
    result_of(future, 30)


def read_all(kafka: KafkaSession, topic: str, partitions: int) -> list:
    keys = [(topic, p) for p in range(partitions)]
    watermarks = fetch_watermarks(kafka.admin, keys, 10)
    return read_records(kafka.reader(), watermarks.low, watermarks.high, deadline=time.monotonic() + 30)


# -- produce_and_confirm ---------------------------------------------------------------------------


def test_produce_and_confirm_confirms_every_record_once_in_order(kafka: KafkaCluster, unique: str) -> None:
    topic = f"{unique}.confirmed"
    records = [OutgoingRecord(topic, f"record-{i}".encode(), f"key-{i % 7}".encode(), (("h", b"v"),))
               for i in range(2_000)]
    with KafkaSession(settings_of(kafka)) as session:
        create_topic(session, topic, partitions=3)
        written = produce_and_confirm(session.producer(), records, deadline=time.monotonic() + 60)

        assert [m.value() for m in written] == [r.value for r in records]
        assert all(m.error() is None and m.offset() >= 0 and m.topic() == topic for m in written)
        assert len({(m.partition(), m.offset()) for m in written}) == len(records)
        stored = read_all(session, topic, 3)
    assert sorted(m.value() for m in stored) == sorted(r.value for r in records)  # each once, none lost
    assert all(m.headers() == [("h", b"v")] for m in stored)


@pytest.fixture(scope="module")
def own_kafka() -> Iterator[KafkaCluster]:
    """A broker of this module's own, which gets frozen, and creates any topic a client asks
    metadata for and may create (Kafka's own default, off on the session's broker)."""
    with KafkaCluster(nodes=1, broker_properties={"auto.create.topics.enable": "true"}) as cluster:
        yield cluster


def test_produce_and_confirm_refuses_an_unknown_topic_and_never_creates_it(own_kafka: KafkaCluster,
                                                                           unique: str) -> None:
    settings = settings_of(own_kafka)
    missing = f"{unique}.misspelt"
    with KafkaSession(settings) as session:
        with pytest.raises(ProduceFailed) as raised:
            produce_and_confirm(session.producer(), [OutgoingRecord(missing, b"{}")] * 3,
                                deadline=time.monotonic() + 60)
        assert raised.value.topic == missing
        assert raised.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
        assert f"producing to {missing}: the topic does not exist; none of the 3 record(s) written" in str(raised.value)
        assert missing not in session.admin.list_topics(timeout=10).topics

        # The broker does create topics for a client that lets it: librdkafka's producer by default.
        created = f"{unique}.created-by-producing"
        plain = Producer({"bootstrap.servers": settings.bootstrap_servers})
        plain.produce(created, b"{}")
        assert plain.flush(30) == 0
        assert created in session.admin.list_topics(timeout=10).topics


def test_produce_and_confirm_fails_at_its_deadline_naming_the_topic_and_what_may_be_written(
        own_kafka: KafkaCluster, unique: str) -> None:
    topic = f"{unique}.unanswered"
    broker = own_kafka.nodes[0].process
    with KafkaSession(settings_of(own_kafka)) as session:
        create_topic(session, topic)
        sender = session.producer()
        produce_and_confirm(sender, [OutgoingRecord(topic, b"first")], deadline=time.monotonic() + 30)
        broker.send_signal(signal.SIGSTOP)  # connections stay open, nothing answers
        try:
            with pytest.raises(ProduceFailed) as raised:
                produce_and_confirm(sender, [OutgoingRecord(topic, b"{}")] * 5, deadline=time.monotonic() + 3,
                                    known_topics={topic})
        finally:
            broker.send_signal(signal.SIGCONT)
        assert raised.value.topic == topic
        assert raised.value.args[0].code() == KafkaError._TIMED_OUT
        assert re.search(rf"producing to {re.escape(topic)}: 5 of 5 record\(s\) not confirmed within [0-9.]+s: "
                         r"\d+ never sent \(not written\), \d+ sent and may or may not have been written",
                         str(raised.value)), str(raised.value)
        assert not is_transient(raised.value)  # asking again could write them twice

        # Nothing answers the topic lookup either: the error still names the topic and says nothing was written.
        broker.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(ProduceFailed, match=rf"producing to {re.escape(topic)}: could not look the topic up "
                                                    r".*; none of the 2 record\(s\) written"):
                produce_and_confirm(sender, [OutgoingRecord(topic, b"{}")] * 2, deadline=time.monotonic() + 2)
        finally:
            broker.send_signal(signal.SIGCONT)


def test_produce_and_confirm_names_the_topic_of_records_the_broker_refuses(kafka: KafkaCluster, unique: str) -> None:
    topic = f"{unique}.small-records"
    with KafkaSession(settings_of(kafka)) as session:
        create_topic(session, topic, **{"max.message.bytes": "1024"})
        with pytest.raises(ProduceFailed) as raised:
            produce_and_confirm(session.producer(), [OutgoingRecord(topic, b"x" * 10_000)],
                                deadline=time.monotonic() + 30)
        assert raised.value.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE
        assert f"producing to {topic}: 1 of 1 record(s) refused" in str(raised.value)


# -- KafkaSession ----------------------------------------------------------------------------------


def test_a_session_makes_one_admin_client_and_closes_every_client(kafka: KafkaCluster, unique: str) -> None:
    topic = f"{unique}.session"
    with KafkaSession(settings_of(kafka)) as session:
        admin = session.admin
        assert session.admin is admin  # one admin client however often it is asked for
        create_topic(session, topic)
        sender = session.producer()
        assert session.producer() is sender and session.producer(**{"linger.ms": 1}) is not sender
        produce_and_confirm(sender, [OutgoingRecord(topic, b"{}")], deadline=time.monotonic() + 30)
        consumer = session.reader()
        assert len(read_all(session, topic, 1)) == 1
        admin_ref = weakref.ref(admin)
        del admin

    with pytest.raises(RuntimeError, match="closed"):
        consumer.assignment()
    with pytest.raises(RuntimeError, match="closed"):
        sender.produce(topic, b"{}")
    gc.collect()
    assert admin_ref() is None  # nothing holds the admin client: librdkafka destroyed it
    with pytest.raises(RuntimeError, match="the Kafka session is closed"):
        session.admin  # noqa: B018


def test_status_reads_everything_through_one_admin_client(kafka: KafkaCluster, unique: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    stages = {name: {"request_topic": f"{unique}.{name}.v1", "completed_topic": f"{unique}.{name}-completed.v1",
                     "failed_topic": f"{unique}.{name}-failed.v1", "dlq_topic": f"{unique}.{name}.v1.dlq",
                     "group": f"{unique}-{name}-group"}
              for name in ("discover", "stamp", "index")}
    config: Config = parse_config({"kafka": {"bootstrap_servers": kafka.bootstrap_servers,
                                             "request_timeout_seconds": 10}, "stages": stages}, source="test")
    with KafkaSession(config.kafka) as session:
        for stage in config.stages:
            for topic in stage.topics.values():
                create_topic(session, topic)
        stamp = config.stage("stamp")
        produce_and_confirm(session.producer(), [OutgoingRecord(stamp.request_topic, b"{}")] * 2,
                            deadline=time.monotonic() + 30)
        committer = session.reader(**{"group.id": stamp.group})
        committer.commit(offsets=[TopicPartition(stamp.request_topic, 0, 1)], asynchronous=False)

    made: list[AdminClient] = []
    original_init = AdminClient.__init__

    def counting_init(self: AdminClient, *args, **kwargs) -> None:
        made.append(self)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(AdminClient, "__init__", counting_init)
    status = gather_status(config)

    assert len(status.cluster.brokers) == 1 and status.cluster.error is None
    lag = {g.stage: (g.exists, g.lag) for g in status.groups}
    assert lag == {"discover": (False, None), "stamp": (True, 1), "index": (False, None)}
    assert {d.stage: d.retained for d in status.dlqs} == {"discover": 0, "stamp": 0, "index": 0}
    assert len(made) == 1, f"status made {len(made)} admin clients"


# -- payload_of ------------------------------------------------------------------------------------


def test_payload_of_an_envelope_a_bare_request_and_nothing() -> None:
    assert payload_of({"event_type": "x", "payload": {"correlation_id": "c"}}) == {"correlation_id": "c"}
    bare = {"correlation_id": "c", "payload": "not an object"}
    assert payload_of(bare) is bare
    assert payload_of(None) == {}
