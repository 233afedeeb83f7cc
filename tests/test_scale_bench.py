"""The scale benchmark's state builder on the session broker (its offsets and lags are what it says),
its growth fit and goals on known numbers, and its exposition scan on a real rendering."""

from __future__ import annotations

import math

import pytest

from bench.exporter_bench import config_data
from bench.scale_bench import (
    RECORDS_PER_PARTITION,
    ExpositionScan,
    Shape,
    build_state,
    goals,
    growth_exponent,
    growth_exponents,
    planned_commits,
    planned_group_partitions,
    varied_topic_sizes,
)
from pipeline.config import parse_config
from pipeline.kafka import admin_client, fetch_committed_offsets, fetch_watermarks


def test_the_builder_commits_the_offsets_it_plans_each_behind_the_high_watermark(kafka, unique) -> None:
    # 3 groups on 4 partitions each, two topics per group over three topics (wrapping round)
    shape = Shape(f"t{unique}", topic_partitions=(2, 2, 2), groups=3, topics_per_group=2)
    data = config_data(kafka.bootstrap_servers, "127.0.0.1:0")
    data["env"] = f"scale{unique}"
    config = parse_config(data, source="test")

    build_state(config, shape)

    planned = {request.group_id: {(tp.topic, tp.partition): tp.offset for tp in request.topic_partitions}
               for request in planned_commits(shape, config.stages)}
    assert planned[shape.group(0)].keys() == {(shape.topic(t), p) for t in (0, 1) for p in (0, 1)}
    assert planned[shape.group(1)].keys() == {(shape.topic(t), p) for t in (2, 0) for p in (0, 1)}
    assert sum(map(len, planned.values())) == planned_group_partitions(shape, config.stages) == 12 + 3 * 3
    admin = admin_client(config.kafka)
    committed = fetch_committed_offsets(admin, planned, request_timeout=30, concurrency=4)
    # the stages' groups have fixed names, which other tests on the session broker may commit under too
    ours = {shape.topic(t) for t in range(3)} | {stage.request_topic for stage in config.stages}
    assert {group: {key: offset for key, offset in offsets.items() if key[0] in ours}
            for group, offsets in committed.items()} == planned
    assert all(committed[shape.group(g)] == planned[shape.group(g)] for g in range(shape.groups))
    watermarks = fetch_watermarks(admin, {key for offsets in planned.values() for key in offsets}, 30)
    assert not watermarks.errors
    assert set(watermarks.high.values()) == {RECORDS_PER_PARTITION}
    assert set(watermarks.low.values()) == {0}
    lags = {(group, key): watermarks.high[key] - offset
            for group, offsets in planned.items() for key, offset in offsets.items()}
    assert lags == {(group, key): RECORDS_PER_PARTITION - offset
                    for group, offsets in planned.items() for key, offset in offsets.items()}
    assert set(lags.values()) == set(range(1, RECORDS_PER_PARTITION))  # every partition behind, by varied lags


def test_varied_topic_sizes_stay_in_range_and_sum_exactly() -> None:
    sizes = varied_topic_sizes(10_000, 10, 50)
    assert sum(sizes) == 10_000
    assert min(sizes) >= 10 and max(sizes) <= 50
    assert len(set(sizes)) == 41
    with pytest.raises(ValueError, match="cannot split"):
        varied_topic_sizes(5, 10, 50)


def test_growth_exponent_of_known_powers() -> None:
    committed = [2_500, 29_655, 1_000_000]
    assert math.isclose(growth_exponent(committed, [3 * x ** 0.5 for x in committed]), 0.5)
    assert math.isclose(growth_exponent(committed, [7e-6 * x for x in committed]), 1.0)
    assert math.isclose(growth_exponent(committed, [80.0] * 3), 0.0, abs_tol=1e-12)
    # not on one line: least squares over log10 x = 0, 1, 2 and log10 y = 0, 2, 2 gives slope 1
    assert math.isclose(growth_exponent([1, 10, 100], [1, 100, 100]), 1.0)
    with pytest.raises(ValueError, match="two different x"):
        growth_exponent([10, 10], [1, 2])
    with pytest.raises(ValueError, match="positive"):
        growth_exponent([10, 100], [0, 2])


def test_goals_missed_for_a_size_that_never_refreshed_and_for_superlinear_growth() -> None:
    measured = {
        "bench": {"completed": True, "committed_group_partitions": 2_509, "gather_median_seconds": 0.4,
                  "scrape_gzip_p50_seconds": 0.003, "scrape_plain_p50_seconds": 0.002,
                  "exposition_bytes": 1.6e6, "peak_sum_bytes": 150e6},
        "large": {"completed": True, "committed_group_partitions": 29_655, "gather_median_seconds": 1.5,
                  "scrape_gzip_p50_seconds": 0.02, "scrape_gzip_p99_seconds": 0.06,
                  "scrape_plain_p50_seconds": 0.05, "exposition_bytes": 20e6, "peak_sum_bytes": 240e6},
        "extreme": {"completed": False, "committed_group_partitions": 1_000_009, "peak_sum_bytes": 5e9},
    }
    growth = growth_exponents(measured)
    assert growth["sizes"] == ["bench", "large"]
    assert growth["exponents"]["exposition_bytes"] > 1 > growth["exponents"]["peak_sum_bytes"]
    checked = {(goal["size"], goal["name"]): goal for goal in goals(measured, growth)}
    assert checked[("large", "gather (median)")]["passed"] is True
    assert checked[("large", "scrape p99, gzip, 4 scrapers")]["passed"] is False
    assert checked[("large", "resident memory, exporter + reader (peak)")]["passed"] is True
    extreme = [goal for (size, _), goal in checked.items() if size == "extreme"]
    assert len(extreme) == 5 and not any(goal["passed"] for goal in extreme)
    assert {goal["measured"] for goal in extreme} == {"not measured"}
    assert checked[("growth", "exposition bytes grows as committed^k")]["passed"] is False
    assert checked[("growth", "resident memory (peak, sum) grows as committed^k")]["passed"] is True


def test_the_exposition_scan_counts_series_and_reads_lines_across_chunk_boundaries() -> None:
    text = (b"# HELP a_metric A.\n# TYPE a_metric gauge\n"
            + b"".join(b'a_metric{p="%d"} %d.0\n' % (i, i) for i in range(1000))
            + b'# HELP treewatch_collector_duration_seconds D.\n'
            + b'xtreewatch_collector_duration_seconds{collector="kafka_groups"} 99.0\n'
            + b'treewatch_collector_duration_seconds{collector="kafka_groups"} 12.5\n')
    wanted = b'treewatch_collector_duration_seconds{collector="kafka_groups"} '
    for chunk_size in (1, 7, 64, 1 << 20):
        scan = ExpositionScan((wanted,))
        for start in range(0, len(text), chunk_size):
            scan.feed(text[start:start + chunk_size])
        scan.finish()
        assert scan.series == 1002
        assert scan.values == {wanted: 12.5}
