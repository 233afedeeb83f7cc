"""The refresh → snapshot → render machinery, driven by a small scripted Source (treewatch's own
abstraction: anything with name, collectors, gather() and close()) and a clock the test moves."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.metrics import (
    KAFKA_BROKERS,
    KAFKA_CONSUMER_GROUP_LAG,
    KAFKA_CONSUMER_GROUP_MEMBERS,
    KAFKA_CONSUMER_GROUP_STATE,
    KAFKA_TOPIC_PARTITION_CURRENT_OFFSET,
    METRICS,
    TREE_DLQ_RECORDS_TOTAL,
    TREE_SERVICE_STATUS,
    TREEWATCH_BUILD_INFO,
    TREEWATCH_COLLECTOR_ERRORS_TOTAL,
    TREEWATCH_COLLECTOR_LAST_SUCCESS_TIMESTAMP_SECONDS,
    TREEWATCH_COLLECTOR_SUCCESS,
    TREEWATCH_SERIES_DROPPED,
    Part,
    Sample,
)
from exporter.refresh import Refresher
from exporter.render import Renderer, render
from exporter.snapshot import Snapshot

BUILD_INFO = {"version": "test", "python_version": "3", "librdkafka_version": "2"}
GRACE = 120.0


class ScriptedSource:
    """Answers each gather() with the next scripted result; an exception is raised as such."""

    name = "scripted"
    collectors = (Part.KAFKA_TOPICS, Part.DLQ)

    def __init__(self, *script: Mapping[Part, Sequence[Sample] | BaseException] | BaseException) -> None:
        self.script = deque(script)
        self.closed = False
        self.calls = 0

    def gather(self) -> Mapping[Part, Sequence[Sample] | BaseException]:
        self.calls += 1
        step = self.script[0] if len(self.script) == 1 else self.script.popleft()
        if isinstance(step, BaseException):
            raise step
        return step

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def offsets(*values: int) -> list[Sample]:
    return [KAFKA_TOPIC_PARTITION_CURRENT_OFFSET.sample(value, topic="t", partition=index)
            for index, value in enumerate(values)]


def dlq(count: int) -> list[Sample]:
    return [TREE_DLQ_RECORDS_TOTAL.sample(count, stage="stamp", error_type="FILE_NOT_FOUND")]


def refresher(source: ScriptedSource, clock: Clock, max_series: int = 1000) -> Refresher:
    return Refresher([source], interval_seconds=60, stale_grace_seconds=GRACE, max_series=max_series,
                     build_info=BUILD_INFO, clock=clock)


def test_a_failing_collector_serves_its_last_values_for_the_grace_period_then_disappears():
    clock = Clock()
    outage = ConnectionError("broker down")
    source = ScriptedSource({Part.KAFKA_TOPICS: offsets(5, 7), Part.DLQ: dlq(2)},
                            {Part.KAFKA_TOPICS: outage, Part.DLQ: dlq(3)})
    loop = refresher(source, clock)
    first = loop.run_once()
    assert first.values(KAFKA_TOPIC_PARTITION_CURRENT_OFFSET) == {("t", "0"): 5, ("t", "1"): 7}
    succeeded_at = clock.now

    clock.now += GRACE / 2
    during = loop.run_once()
    # The failed collector keeps its last values and says it failed; the other one moved on.
    assert during.values(KAFKA_TOPIC_PARTITION_CURRENT_OFFSET) == {("t", "0"): 5, ("t", "1"): 7}
    assert during.values(TREEWATCH_COLLECTOR_SUCCESS) == {("kafka_topics",): 0, ("dlq",): 1}
    # the end of the last good run: its start on the test's clock plus its (real, tiny) duration
    last_success = during.values(TREEWATCH_COLLECTOR_LAST_SUCCESS_TIMESTAMP_SECONDS)
    assert last_success[("kafka_topics",)] == pytest.approx(succeeded_at, abs=1.0)
    assert during.values(TREEWATCH_COLLECTOR_ERRORS_TOTAL) == {("kafka_topics",): 1, ("dlq",): 0}
    assert during.values(TREE_DLQ_RECORDS_TOTAL) == {("stamp", "FILE_NOT_FOUND"): 3}
    assert "ConnectionError: broker down" in loop.collector_status()["kafka_topics"]["error"]

    clock.now += GRACE
    after = loop.run_once()
    assert after.values(KAFKA_TOPIC_PARTITION_CURRENT_OFFSET) == {}
    assert after.values(TREEWATCH_COLLECTOR_ERRORS_TOTAL)[("kafka_topics",)] == 2
    assert after.values(TREE_DLQ_RECORDS_TOTAL) == {("stamp", "FILE_NOT_FOUND"): 3}


def test_a_source_that_raises_fails_every_one_of_its_collectors():
    clock = Clock()
    loop = refresher(ScriptedSource(TimeoutError("metadata timed out")), clock)
    snapshot = loop.run_once()
    assert snapshot.values(TREEWATCH_COLLECTOR_SUCCESS) == {("kafka_topics",): 0, ("dlq",): 0}
    assert not snapshot.values(TREEWATCH_COLLECTOR_LAST_SUCCESS_TIMESTAMP_SECONDS)
    assert loop.ready


def test_the_series_cap_drops_what_exceeds_it_and_counts_it_per_collector():
    clock = Clock()
    two_topics = offsets(1, 2) + [KAFKA_TOPIC_PARTITION_CURRENT_OFFSET.sample(3, topic="u", partition=0)]
    source = ScriptedSource({Part.KAFKA_TOPICS: two_topics, Part.DLQ: dlq(9)})
    snapshot = refresher(source, clock, max_series=2).run_once()
    # The DLQ goes before the topics; topic t (two partitions) no longer fits whole, u still does.
    assert snapshot.values(TREE_DLQ_RECORDS_TOTAL) == {("stamp", "FILE_NOT_FOUND"): 9}
    assert snapshot.values(KAFKA_TOPIC_PARTITION_CURRENT_OFFSET) == {("u", "0"): 3}
    assert snapshot.values(TREEWATCH_SERIES_DROPPED) == {("kafka_topics",): 2, ("dlq",): 0}
    # The exporter's own series are outside the cap: they are how the cap is noticed.
    assert snapshot.values(TREEWATCH_BUILD_INFO) == {tuple(BUILD_INFO.values()): 1}
    assert snapshot.values(TREEWATCH_COLLECTOR_SUCCESS) == {("kafka_topics",): 1, ("dlq",): 1}


def group_series(group: str, partitions: int) -> list[Sample]:
    series = [KAFKA_CONSUMER_GROUP_STATE.sample(1, group=group, state="Stable"),
              KAFKA_CONSUMER_GROUP_MEMBERS.sample(1, group=group)]
    return series + [KAFKA_CONSUMER_GROUP_LAG.sample(0, group=group, topic="t", partition=p)
                     for p in range(partitions)]


def test_the_cap_serves_small_collectors_first_then_groups_per_topic_then_their_partitions():
    services = [TREE_SERVICE_STATUS.sample(1, service=name, status="healthy")
                for name in ("intelligence", "bridge")]
    # Lag series come after every group's state, as the Kafka source writes them.
    groups = group_series("a", 2)[:2] + group_series("b", 3)[:2] + group_series("a", 2)[2:] + group_series("b", 3)[2:]
    cluster = [KAFKA_BROKERS.sample(3)]
    # The groups come first here, the services last: the order given must not matter.
    given = [(Part.KAFKA_GROUPS, groups), (Part.KAFKA_CLUSTER, cluster), (Part.SERVICES, services)]
    # Room for the services and the cluster (3), both groups' own series (4), and the partitions of
    # group a (2) but not those of group b (3): b is told without its partitions, never half of them.
    snapshot = Snapshot.build(given, built_at=1.0, max_series=3 + 4 + 2)
    assert snapshot.values(TREE_SERVICE_STATUS) == {("intelligence", "healthy"): 1, ("bridge", "healthy"): 1}
    assert snapshot.values(KAFKA_BROKERS) == {(): 3}
    assert snapshot.values(KAFKA_CONSUMER_GROUP_MEMBERS) == {("a",): 1, ("b",): 1}
    assert snapshot.values(KAFKA_CONSUMER_GROUP_LAG) == {("a", "t", "0"): 0, ("a", "t", "1"): 0}
    assert dict(snapshot.dropped) == {Part.KAFKA_GROUPS: 3}
    assert len(snapshot) == 9

    # Room for one group's own series only: group b goes whole, and no group has partitions.
    snapshot = Snapshot.build(given, built_at=1.0, max_series=3 + 2 + 1)
    assert snapshot.values(KAFKA_CONSUMER_GROUP_MEMBERS) == {("a",): 1}
    assert snapshot.values(KAFKA_CONSUMER_GROUP_STATE) == {("a", "Stable"): 1}
    assert not snapshot.values(KAFKA_CONSUMER_GROUP_LAG)
    assert dict(snapshot.dropped) == {Part.KAFKA_GROUPS: 2 + 2 + 3}


def test_a_scrape_renders_each_snapshot_once(counted_renders: list[Snapshot]):
    renders = counted_renders
    current = Snapshot.build([(Part.DLQ, dlq(1))], built_at=1.0, max_series=10)
    renderer = Renderer(lambda: current)
    first, second = renderer.metrics_text(), renderer.metrics_text()
    assert len(renders) == 1
    assert b'tree_dlq_records_total{error_type="FILE_NOT_FOUND",stage="stamp"} 1.0' in first
    assert b"tree_dlq_records_total" in second
    current = Snapshot.build([(Part.DLQ, dlq(2))], built_at=2.0, max_series=10)
    assert b'stage="stamp"} 2.0' in renderer.metrics_text()
    assert len(renders) == 2


def test_rendered_text_follows_the_metric_contract():
    awkward = 'quote " backslash \\ newline \n end'
    snapshot = Snapshot.build([
        (Part.DLQ, [TREE_DLQ_RECORDS_TOTAL.at(("stamp", awkward), 4)]),
        (Part.KAFKA_GROUPS, [KAFKA_CONSUMER_GROUP_LAG.sample(12, group="g", topic="t", partition=0)]),
    ], built_at=1.0, max_series=10)
    families = {family.name: family for family in text_string_to_metric_families(render(snapshot).decode())}
    definitions = {definition.family_name: definition for definition in METRICS}
    assert set(families) == {"tree_dlq_records", "kafka_consumer_group_lag"}
    for name, family in families.items():
        assert family.type == definitions[name].kind.value
        assert family.documentation == definitions[name].help
    dead_letters = families["tree_dlq_records"].samples
    assert [(s.name, s.labels, s.value) for s in dead_letters] == [
        ("tree_dlq_records_total", {"stage": "stamp", "error_type": awkward}, 4.0)]


def test_sample_refuses_labels_the_contract_does_not_define():
    with pytest.raises(ValueError, match="kafka_consumer_group_lag takes labels"):
        KAFKA_CONSUMER_GROUP_LAG.sample(1, group="g", topic="t")
    with pytest.raises(ValueError, match="kafka_consumer_group_lag takes labels"):
        KAFKA_CONSUMER_GROUP_LAG.sample(1, group="g", topic="t", partition=0, stage="stamp")
    with pytest.raises(ValueError, match="kafka_consumer_group_lag takes labels"):
        KAFKA_CONSUMER_GROUP_LAG.at(("g", "t"), 1)


def test_the_background_loop_becomes_ready_and_stops_closing_its_sources():
    clock = Clock()
    gathered = threading.Event()

    class SignallingSource(ScriptedSource):
        def gather(self):
            result = super().gather()
            gathered.set()
            return result

    source = SignallingSource({Part.KAFKA_TOPICS: offsets(1), Part.DLQ: dlq(0)})
    loop = refresher(source, clock)
    assert not loop.ready
    loop.start()
    try:
        assert loop.wait_ready(timeout=10)
        assert gathered.is_set()
        assert loop.current.values(KAFKA_TOPIC_PARTITION_CURRENT_OFFSET) == {("t", "0"): 1}
    finally:
        loop.stop(timeout=10)
    assert source.closed


def test_stop_interrupts_a_running_gather_and_never_closes_a_source_still_in_use():
    entered, release = threading.Event(), threading.Event()

    class SlowSource(ScriptedSource):
        """Gathers until released; interrupt() releases it, as a source checking between steps would."""

        interrupted = False

        def gather(self):
            entered.set()
            release.wait(30)
            assert not self.closed, "closed while its gather was running"
            return super().gather()

        def interrupt(self):
            self.interrupted = True
            release.set()

    source = SlowSource({Part.KAFKA_TOPICS: offsets(1), Part.DLQ: dlq(0)})
    loop = refresher(source, Clock())
    loop.start()
    assert entered.wait(10)
    loop.stop(timeout=10)
    assert source.interrupted and source.closed

    # A source that ignores the interruption is left open when the stop timeout passes.
    stuck_release = threading.Event()

    class StuckSource(ScriptedSource):
        def gather(self):
            entered.set()
            stuck_release.wait(30)
            return super().gather()

    entered.clear()
    stuck = StuckSource({Part.KAFKA_TOPICS: offsets(1), Part.DLQ: dlq(0)})
    loop = refresher(stuck, Clock())
    loop.start()
    try:
        assert entered.wait(10)
        loop.stop(timeout=0.2)
        assert not stuck.closed
    finally:
        stuck_release.set()


def test_after_a_failed_run_the_loop_rests_a_whole_interval():
    """A failed run that took longer than the interval (a broker timing out) is not followed by the
    next one at once: between them lies a whole interval of rest, not a hot loop."""
    interval = 0.3
    ended: list[float] = []
    started: list[float] = []
    two_runs = threading.Event()

    class SlowFailingSource(ScriptedSource):
        def gather(self):
            started.append(time.monotonic())
            if len(started) == 2:
                two_runs.set()
                return super().gather()
            threading.Event().wait(interval * 2)  # a request that times out after twice the interval
            ended.append(time.monotonic())
            raise TimeoutError("no answer")

    source = SlowFailingSource({Part.KAFKA_TOPICS: offsets(1), Part.DLQ: dlq(0)})
    loop = Refresher([source], interval_seconds=interval, stale_grace_seconds=GRACE, max_series=100,
                     build_info=BUILD_INFO, clock=Clock())
    loop.start()
    try:
        assert two_runs.wait(30)
    finally:
        loop.stop(timeout=10)
    assert started[1] - ended[0] >= interval
