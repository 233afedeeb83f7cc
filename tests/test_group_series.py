"""The consumer groups' series at every granularity, their text, and the cap that degrades them."""

from __future__ import annotations

import re
from array import array

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.group_series import GroupSeriesBuilder, OffsetChangeTracker, lagging_positions, topic_lags
from exporter.kafka_groups import GroupInfo, GroupsRead
from exporter.kafka_metadata import ClusterView, PartitionInfo
from exporter.metrics import (
    KAFKA_CONSUMER_GROUP_COMMITTED_OFFSET,
    KAFKA_CONSUMER_GROUP_COMMITTED_OFFSET_CHANGE_TIMESTAMP_SECONDS,
    KAFKA_CONSUMER_GROUP_LAG,
    KAFKA_CONSUMER_GROUP_LAG_SECONDS,
    KAFKA_CONSUMER_GROUP_MEMBERS,
    KAFKA_CONSUMER_GROUP_TOPIC_LAG,
    KAFKA_CONSUMER_GROUP_TOPIC_MAX_LAG,
    KAFKA_CONSUMER_GROUP_TOPIC_MAX_LAG_SECONDS,
    KAFKA_CONSUMER_GROUP_TOPIC_OLDEST_PROGRESS_TIMESTAMP_SECONDS,
    KAFKA_CONSUMER_GROUP_TOPIC_PARTITIONS_LAGGING,
    KAFKA_CONSUMER_GROUP_UNCOMMITTED_PARTITIONS,
    METRICS,
    Part,
)
from exporter.record_age import Lookup
from exporter.render import render_openmetrics
from exporter.settings import NameFilter, PartitionSeries
from exporter.snapshot import Snapshot
from exporter.text_format import TextWriter
from pipeline.kafka import Watermarks, offsets_by_topic
from tests.reference_exposition import reference_openmetrics, reference_text

NOW = 10_000.0
PER_PARTITION = [metric for metric in METRICS if metric.per_partition]
PER_TOPIC = [KAFKA_CONSUMER_GROUP_TOPIC_LAG, KAFKA_CONSUMER_GROUP_TOPIC_MAX_LAG,
             KAFKA_CONSUMER_GROUP_TOPIC_MAX_LAG_SECONDS, KAFKA_CONSUMER_GROUP_TOPIC_PARTITIONS_LAGGING,
             KAFKA_CONSUMER_GROUP_TOPIC_OLDEST_PROGRESS_TIMESTAMP_SECONDS, KAFKA_CONSUMER_GROUP_UNCOMMITTED_PARTITIONS]
# A topic name that needs escaping in the exposition, as any name Kafka allows does not, but a
# label value built from it must be written right whatever it holds.
AWKWARD = 'quote " backslash \\ newline \n end'


def cluster() -> tuple[ClusterView, Watermarks, Lookup]:
    """orders (4 partitions) and audit (2): one group lags on orders, with ages known for two of
    its three lagging partitions until told otherwise."""
    view = ClusterView(frozenset({1}), 1, {
        "orders": dict.fromkeys(range(4), PartitionInfo(1, (1,), (1,))),
        "audit": dict.fromkeys(range(2), PartitionInfo(1, (1,), (1,))),
        AWKWARD: dict.fromkeys(range(1), PartitionInfo(1, (1,), (1,))),
    })
    high = {("orders", 0): 10, ("orders", 1): 10, ("orders", 2): 10, ("orders", 3): 10,
            ("audit", 0): 5, ("audit", 1): 5, (AWKWARD, 0): 3}
    low = dict.fromkeys(high, 0) | {("orders", 3): 6}  # retention removed orders[3] below 6
    timestamps = {("orders", 0, 4): NOW - 30, ("orders", 3, 6): NOW - 90, (AWKWARD, 0, 1): NOW - 5}
    return view, Watermarks(high, low, {}), Lookup(timestamps, frozenset())


def groups() -> GroupsRead:
    return GroupsRead([
        # orders: lag 6, 0, 2 (unknown age), 4 (from the log start 6); audit: never committed.
        GroupInfo("billing", "Stable", 2, frozenset({"orders", "audit"}),
                  offsets_by_topic([("orders", 0, 4), ("orders", 1, 10), ("orders", 2, 8), ("orders", 3, 2)])),
        GroupInfo("caught-up", "Empty", 0, frozenset(), offsets_by_topic([("audit", 0, 5), ("audit", 1, 5)])),
        GroupInfo("awkward", "Stable", 1, frozenset(), offsets_by_topic([(AWKWARD, 0, 1)])),
    ])


def series(detail: PartitionSeries, lookup: Lookup | None = None) -> Snapshot:
    view, marks, times = cluster()
    read = groups()
    lags = topic_lags(read.groups, marks)
    changed_at = OffsetChangeTracker().observe(read.groups, NOW - 100)
    built = GroupSeriesBuilder(detail).samples(read, view, lags, lookup or times, changed_at, NOW)
    return Snapshot.build([(Part.KAFKA_GROUPS, built)], built_at=NOW, max_series=10_000)


def test_per_topic_series_aggregate_the_partitions_whatever_the_detail():
    for detail in ("all", "lag", "none"):
        snapshot = series(PartitionSeries(detail=detail))
        assert snapshot.values(KAFKA_CONSUMER_GROUP_TOPIC_LAG) == {
            ("billing", "orders"): 12, ("caught-up", "audit"): 0, ("awkward", AWKWARD): 2}, detail
        assert snapshot.values(KAFKA_CONSUMER_GROUP_TOPIC_MAX_LAG) == {
            ("billing", "orders"): 6, ("caught-up", "audit"): 0, ("awkward", AWKWARD): 2}
        assert snapshot.values(KAFKA_CONSUMER_GROUP_TOPIC_PARTITIONS_LAGGING) == {
            ("billing", "orders"): 3, ("caught-up", "audit"): 0, ("awkward", AWKWARD): 1}
        # billing's orders[2] lags with an unknown age: its oldest record's age is unknown too.
        assert snapshot.values(KAFKA_CONSUMER_GROUP_TOPIC_MAX_LAG_SECONDS) == {
            ("caught-up", "audit"): 0, ("awkward", AWKWARD): 5}
        # No lag, no stalest lagging partition.
        assert snapshot.values(KAFKA_CONSUMER_GROUP_TOPIC_OLDEST_PROGRESS_TIMESTAMP_SECONDS) == {
            ("billing", "orders"): NOW - 100, ("awkward", AWKWARD): NOW - 100}
        assert snapshot.values(KAFKA_CONSUMER_GROUP_UNCOMMITTED_PARTITIONS) == {
            ("billing", "orders"): 0, ("billing", "audit"): 2, ("caught-up", "audit"): 0, ("awkward", AWKWARD): 0}


def test_the_topics_oldest_record_is_the_oldest_of_its_lagging_partitions_once_all_ages_are_known():
    view, marks, times = cluster()
    known = Lookup(times.timestamps | {("orders", 2, 8): NOW - 60}, frozenset())
    snapshot = series(PartitionSeries(), known)
    assert snapshot.values(KAFKA_CONSUMER_GROUP_TOPIC_MAX_LAG_SECONDS)[("billing", "orders")] == 90
    assert snapshot.values(KAFKA_CONSUMER_GROUP_LAG_SECONDS) == {
        ("billing", "orders", "0"): 30, ("billing", "orders", "1"): 0, ("billing", "orders", "2"): 60,
        ("billing", "orders", "3"): 90, ("caught-up", "audit", "0"): 0, ("caught-up", "audit", "1"): 0,
        ("awkward", AWKWARD, "0"): 5}


def test_only_transaction_markers_left_is_no_lag():
    view, marks, times = cluster()
    markers = Lookup(times.timestamps, frozenset({("orders", 0, 4), ("orders", 2, 8), ("orders", 3, 6)}))
    snapshot = series(PartitionSeries(), markers)
    assert snapshot.values(KAFKA_CONSUMER_GROUP_TOPIC_LAG)[("billing", "orders")] == 0
    assert ("billing", "orders") not in snapshot.values(KAFKA_CONSUMER_GROUP_TOPIC_OLDEST_PROGRESS_TIMESTAMP_SECONDS)
    assert snapshot.values(KAFKA_CONSUMER_GROUP_TOPIC_MAX_LAG_SECONDS)[("billing", "orders")] == 0


@pytest.mark.parametrize(("detail", "told"), [
    ("all", set(PER_PARTITION)),
    ("lag", {KAFKA_CONSUMER_GROUP_LAG}),
    ("none", set()),
])
def test_the_detail_chooses_the_per_partition_series(detail, told):
    snapshot = series(PartitionSeries(detail=detail))
    present = {metric for metric in PER_PARTITION if snapshot.values(metric)}
    assert present == told
    if KAFKA_CONSUMER_GROUP_LAG in told:
        assert snapshot.values(KAFKA_CONSUMER_GROUP_LAG) == {
            ("billing", "orders", "0"): 6, ("billing", "orders", "1"): 0, ("billing", "orders", "2"): 2,
            ("billing", "orders", "3"): 4, ("caught-up", "audit", "0"): 0, ("caught-up", "audit", "1"): 0,
            ("awkward", AWKWARD, "0"): 2}
    if detail == "all":
        assert snapshot.values(KAFKA_CONSUMER_GROUP_COMMITTED_OFFSET)[("billing", "orders", "3")] == 2
        assert set(snapshot.values(KAFKA_CONSUMER_GROUP_COMMITTED_OFFSET_CHANGE_TIMESTAMP_SECONDS).values()) == {
            NOW - 100}


def test_allow_and_deny_choose_the_groups_told_per_partition():
    only_billing = PartitionSeries(detail="lag", groups=NameFilter(allow=(re.compile("b.*"), re.compile("c.*")),
                                                                   deny=(re.compile("caught-.*"),)))
    snapshot = series(only_billing)
    assert {labels[0] for labels in snapshot.values(KAFKA_CONSUMER_GROUP_LAG)} == {"billing"}
    # Every group is still told per topic.
    assert {labels[0] for labels in snapshot.values(KAFKA_CONSUMER_GROUP_TOPIC_LAG)} == {
        "billing", "caught-up", "awkward"}


def test_past_the_cap_groups_lose_their_partitions_before_anything_else():
    whole = series(PartitionSeries())
    per_partition = sum(len(whole.samples(metric)) for metric in PER_PARTITION)
    view, marks, times = cluster()
    read = groups()
    built = GroupSeriesBuilder(PartitionSeries()).samples(
        read, view, topic_lags(read.groups, marks), times, OffsetChangeTracker().observe(read.groups, NOW - 100), NOW)
    snapshot = Snapshot.build([(Part.KAFKA_GROUPS, built)], built_at=NOW, max_series=len(whole) - per_partition)
    assert snapshot.dropped == {Part.KAFKA_GROUPS: per_partition}
    assert not any(snapshot.values(metric) for metric in PER_PARTITION)
    for metric in PER_TOPIC + [KAFKA_CONSUMER_GROUP_MEMBERS]:
        assert snapshot.values(metric) == whole.values(metric), metric.name


def test_the_text_is_prometheus_clients_byte_for_byte_and_re_used_only_where_nothing_changed():
    writer = TextWriter()
    first = series(PartitionSeries())
    text = writer.write(first)
    assert text == reference_text(first)  # what prometheus_client writes, every block unfolded
    assert render_openmetrics(first) == reference_openmetrics(first)
    families = {family.name: family for family in text_string_to_metric_families(text.decode())}
    assert {sample.labels["topic"] for sample in families["kafka_consumer_group_lag"].samples} == {
        "orders", "audit", AWKWARD}

    again = series(PartitionSeries())  # the same values, in new objects
    assert writer.write(again) == text
    blocks = sum(1 for items in again.series.values() for item in items if not hasattr(item, "value"))
    assert writer.blocks_reused == blocks

    view, marks, times = cluster()
    moved = Lookup(times.timestamps | {("orders", 0, 4): NOW - 31}, frozenset())
    changed = series(PartitionSeries(), moved)
    text = writer.write(changed)
    assert text == reference_text(changed)
    # One partition's age changed: its lag-seconds block is written again (billing has no max age on
    # orders to change: another partition's age there is unknown).
    assert writer.blocks_reused == blocks - 1


def test_lagging_positions_ask_each_position_once():
    view, marks, times = cluster()
    read = GroupsRead(groups().groups + [GroupInfo("twin", "Stable", 1, frozenset(),
                                                   offsets_by_topic([("orders", 0, 4)]))])
    assert lagging_positions(topic_lags(read.groups, marks)) == {
        ("orders", 0, 4), ("orders", 2, 8), ("orders", 3, 6), (AWKWARD, 0, 1)}


def test_a_block_must_match_its_metric():
    with pytest.raises(ValueError, match="kafka_consumer_group_lag takes labels"):
        KAFKA_CONSUMER_GROUP_LAG.block(("g",), array("i", [0]), array("d", [1.0]))
    with pytest.raises(ValueError, match="2 last values for 1 values"):
        KAFKA_CONSUMER_GROUP_TOPIC_LAG.block(("g",), ("a", "b"), array("d", [1.0]))
