"""Shared fixtures: one real Kafka broker (KRaft, from the pinned jars) for the whole session.

A test that needs the broker and cannot start it fails; it is never skipped. When a test that
used the broker fails, the broker's log tail is attached to its report.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import treewatch  # noqa: F401  (its import registers every section of the configuration file)
from devkafka import KafkaCluster


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaCluster]:
    with KafkaCluster(nodes=1) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def kafka_cluster3() -> Iterator[KafkaCluster]:
    """A 3-node cluster of the module's own, for replication and broker-fault tests: its nodes get
    stopped and killed, so it is never the session's broker."""
    with KafkaCluster(nodes=3) as cluster:
        yield cluster


@pytest.fixture
def unique() -> str:
    """A short random suffix, so tests sharing the session broker never share a topic or group."""
    return uuid.uuid4().hex[:10]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for name in ("kafka", "kafka_cluster3"):
            cluster = item.funcargs.get(name) if hasattr(item, "funcargs") else None
            if isinstance(cluster, KafkaCluster):
                report.sections.append((f"kafka broker log ({name})", cluster.log_tail()))


@pytest.fixture
def counted_renders(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every snapshot written in the text format, in order (the writer still writes)."""
    from exporter.text_format import TextWriter

    renders: list = []
    real_write = TextWriter.write

    def counting_write(writer, snapshot, **options):
        renders.append(snapshot)
        return real_write(writer, snapshot, **options)

    monkeypatch.setattr(TextWriter, "write", counting_write)
    return renders
