"""Metric handles: every sample is made from the metric it belongs to, so a misspelt metric is a
NameError and a wrong label set raises at the first sample; and the exposition of a fixed state is
byte for byte what it was before samples held handles instead of names.

tests/golden/ holds that exposition, captured from the exporter as it was. A metric added later is
not in it and not compared; a deliberate change to an existing one (its help, its labels) is
written there with ``python3 -m tests.test_metric_handles`` and shows in the diff.
"""

from __future__ import annotations

from array import array
from pathlib import Path

import pytest

from exporter import metrics
from exporter.dlq_tail import depth_samples
from exporter.group_series import GroupSeriesBuilder, topic_lags
from exporter.kafka_groups import GroupInfo, GroupsRead
from exporter.kafka_metadata import ClusterView, PartitionInfo, cluster_samples, topic_samples
from exporter.metrics import METRICS, MetricDef, Part, Sample
from exporter.pipeline_counters import pipeline_samples
from exporter.record_age import Lookup
from exporter.render import render, render_openmetrics
from exporter.services_source import probe_samples
from exporter.settings import PartitionSeries
from exporter.snapshot import Snapshot
from pipeline.config import Stage
from pipeline.health import ProbeResult
from pipeline.kafka import Watermarks, offsets_by_topic

GOLDEN = Path(__file__).parent / "golden"
AWKWARD = 'quote " backslash \\ newline \n end'


def test_every_metric_of_the_contract_has_a_handle_named_after_it():
    assert len({metric.name for metric in METRICS}) == len(METRICS)
    for metric in METRICS:
        assert getattr(metrics, metric.name.upper()) is metric
    handles = [value for value in vars(metrics).values() if isinstance(value, MetricDef)]
    assert handles == list(METRICS)


@pytest.mark.parametrize("metric", METRICS, ids=lambda metric: metric.name)
def test_a_sample_with_a_wrong_label_set_raises(metric: MetricDef):
    labels = {name: "x" for name in metric.labels}
    assert metric.sample(1, **labels) == Sample(metric, ("x",) * len(metric.labels), 1.0)
    assert metric.at(("x",) * len(metric.labels), 1) == metric.sample(1, **labels)
    with pytest.raises(ValueError, match=f"{metric.name} takes labels"):
        metric.sample(1, **labels, unknown_label="x")
    with pytest.raises(ValueError, match=f"{metric.name} takes labels"):
        metric.at(("x",) * (len(metric.labels) + 1), 1)
    if metric.labels:
        with pytest.raises(ValueError, match=f"{metric.name} takes labels"):
            metric.sample(1, **dict(list(labels.items())[1:]))
        with pytest.raises(ValueError, match=f"{metric.name} takes labels"):
            metric.at(("x",) * (len(metric.labels) - 1), 1)


def golden_metrics() -> list[MetricDef]:
    """The metrics the golden exposition has, in the contract's order."""
    typed = {line.split()[2] for line in (GOLDEN / "every_metric.prom").read_text().splitlines()
             if line.startswith("# TYPE ")}
    return [metric for metric in METRICS if metric.family_name in typed or metric.name in typed]


def every_metric(defined: list[MetricDef]) -> Snapshot:
    """Two series of every metric ``defined``, one with label values that need escaping."""
    by_part: dict[Part, list[Sample]] = {}
    for index, metric in enumerate(defined):
        labels = {name: AWKWARD if position == 0 and index % 5 == 0 else f"{name}-{index}"
                  for position, name in enumerate(metric.labels)}
        by_part.setdefault(metric.collector, []).append(metric.sample(index * 1.5 + 0.25, **labels))
        if metric.labels:
            by_part[metric.collector].append(metric.sample(-index, **{name: f"{name}-{index}-b"
                                                                     for name in metric.labels}))
    return Snapshot.build(list(by_part.items()), built_at=1.0, max_series=10_000)


def test_the_exposition_of_every_metric_is_unchanged():
    defined = golden_metrics()
    assert len(defined) >= 36  # as many as there were when the golden files were written
    snapshot = every_metric(defined)
    assert render(snapshot) == (GOLDEN / "every_metric.prom").read_bytes()
    assert render_openmetrics(snapshot) == (GOLDEN / "every_metric.openmetrics").read_bytes()


def collector_samples() -> list[tuple[Part, list[Sample]]]:
    """The Kafka and services collectors' samples of one fixed state of a cluster and its services."""
    p = PartitionInfo
    view = ClusterView(frozenset({1, 2}), 1, {
        "orders": {0: p(1, (1, 2), (1, 2)), 1: p(-1, (2, 3), (2,)), 2: p(2, (1, 2), (1, 2))},
        "stamp.requests": {0: p(1, (1,), (1,)), 1: p(2, (2,), (2,))},
        "stamp.completed": {0: p(1, (1,), (1,))},
        "stamp.failed": {0: p(1, (1,), (1,))},
        "stamp.dlq": {0: p(1, (1,), (1,)), 1: p(2, (2,), (2,))},
        "index.requests": {0: p(1, (1,), (1,))},
        "index.dlq": {0: p(1, (1,), (1,))},
    })
    stages = (Stage("stamp", "stamp.requests", "stamp.completed", "stamp.failed", "stamp.dlq", "stamper"),
              Stage("index", "index.requests", "index.completed", "index.failed", "index.dlq", "indexer"),
              Stage("gone", "gone.requests", "gone.completed", "gone.failed", "gone.dlq", "goner"))
    high = {("orders", 0): 10, ("orders", 2): 7, ("stamp.requests", 0): 20, ("stamp.requests", 1): 5,
            ("stamp.completed", 0): 12, ("stamp.failed", 0): 3, ("stamp.dlq", 0): 9, ("stamp.dlq", 1): 4,
            ("index.requests", 0): 2, ("index.dlq", 0): 0}
    low = {key: (2 if key[0] == "stamp.dlq" else 0) for key in high}
    marks = Watermarks(high, low, {("orders", 1): RuntimeError("no leader")})
    read_now = Watermarks({key: value for key, value in high.items() if key != ("stamp.dlq", 1)}, low, {})
    groups = GroupsRead([
        GroupInfo("stamper", "Stable", 2, frozenset({"stamp.requests"}),
                  offsets_by_topic([("stamp.requests", 0, 18), ("stamp.requests", 1, 5)])),
        GroupInfo("orders-app", "PreparingRebalance", 0, frozenset(),
                  offsets_by_topic([("orders", 0, 4), ("orders", 2, 7), ("orders", 9, 1)])),
        GroupInfo("blind", "Empty", 1, frozenset({"orders"}), {}, committed_read=False),
        GroupInfo("idle", "Dead", 0, frozenset({"orders"}), {}),
    ], {"describe": [RuntimeError("no answer")]})
    # orders[9]: a partition the metadata does not know, whose high watermark was read: its lag is
    # told, and 0 as only transaction markers are left after the group's position.
    marks_with_9 = Watermarks({**high, ("orders", 9): 4}, low, marks.errors)
    changed_at = {("stamper", "stamp.requests"): array("d", [950.0, 960.0]),
                  ("orders-app", "orders"): array("d", [900.5, 930.0, 940.0])}
    record_times = Lookup({("stamp.requests", 0, 18): 990.0, ("stamp.dlq", 0, 2): 800.0, ("stamp.dlq", 1, 2): 700.0},
                          frozenset({("orders", 9, 1)}))
    topics = view.selected_topics(lambda name: name == "orders", ["stamp.requests", "stamp.dlq", "gone.requests"])
    dlq_partitions = view.partitions(stage.dlq_topic for stage in stages)
    probes = [ProbeResult("bridge", True, "degraded", 0.125, 200, None),
              ProbeResult("onextree", False, "unknown", 2.5, 0, "timeout")]
    return [
        (Part.KAFKA_CLUSTER, cluster_samples(view, topics)),
        (Part.KAFKA_TOPICS, topic_samples(view, topics, marks)),
        (Part.PIPELINE, pipeline_samples(stages, view, marks)),
        (Part.KAFKA_GROUPS, GroupSeriesBuilder(PartitionSeries()).samples(
            groups, view, topic_lags(groups.groups, marks_with_9), record_times, changed_at, 1000.0)),
        (Part.DLQ, depth_samples(stages, dlq_partitions, marks, read_now, record_times.timestamps)),
        (Part.DLQ, depth_samples(stages, dlq_partitions, marks, marks, record_times.timestamps)),
        (Part.SERVICES, [item for result in probes for item in probe_samples(result)]),
    ]


def test_the_collectors_expose_a_fixed_state_as_before():
    gathered = collector_samples()
    for part, samples in gathered:
        assert samples and all(item.metric.collector is part for item in samples), part
    snapshot = Snapshot.build(gathered, built_at=1.0, max_series=10_000)
    assert render(snapshot) == (GOLDEN / "collectors.prom").read_bytes()


if __name__ == "__main__":  # rewrite the golden files from the exporter as it is now
    every = every_metric(list(METRICS))
    (GOLDEN / "every_metric.prom").write_bytes(render(every))
    (GOLDEN / "every_metric.openmetrics").write_bytes(render_openmetrics(every))
    (GOLDEN / "collectors.prom").write_bytes(render(Snapshot.build(collector_samples(), built_at=1.0,
                                                                   max_series=10_000)))
    print(f"wrote {GOLDEN}")
