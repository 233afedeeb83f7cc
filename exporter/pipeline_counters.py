"""The pipeline's counters, from the high watermarks of each stage's topics: every offset written to
a topic is one event (a transaction's commit marker takes an offset too).

The counters are sums over partitions: a partition missing from one refresh (no leader, a timeout)
would make a counter drop, which Prometheus takes for a reset (and increase() for a burst of
events). ``LastKnownWatermarks`` fills such a partition in from the last refresh that read it.
"""

from __future__ import annotations

from collections.abc import Iterable

from exporter.kafka_metadata import ClusterView
from exporter.metrics import (
    TREE_EVENTS_IN_FLIGHT,
    TREE_EVENTS_PROCESSED_TOTAL,
    TREE_EVENTS_REQUESTED_TOTAL,
    TREE_PIPELINE_STAGE_INFO,
    Sample,
)
from pipeline.config import Stage
from pipeline.kafka import Partition, Watermarks


class LastKnownWatermarks:
    """Watermarks of the partitions a refresh could not read (no leader, a timeout), taken from the
    last refresh that read them, for up to ``keep_seconds``. Beyond that the partition counts as
    unknown and the sums that need it are left out."""

    def __init__(self, keep_seconds: float) -> None:
        self._keep = keep_seconds
        self._seen: dict[Partition, tuple[int, int, float]] = {}  # (high, low, read at)

    def fill(self, partitions: Iterable[Partition], marks: Watermarks, now: float) -> Watermarks:
        wanted = list(partitions)
        high: dict[Partition, int] = {}
        low: dict[Partition, int] = {}
        for key in wanted:
            if key in marks.high:
                self._seen[key] = (marks.high[key], marks.low.get(key, 0), now)
            entry = self._seen.get(key)
            if entry is not None and now - entry[2] <= self._keep:
                high[key], low[key] = entry[0], entry[1]
        asked = set(wanted)
        self._seen = {key: entry for key, entry in self._seen.items() if key in asked}
        return Watermarks(high, low, {key: error for key, error in marks.errors.items() if key not in high})


_UNKNOWN = object()  # a topic with a partition whose watermark is not known


def stage_info_samples(stages: Iterable[Stage]) -> list[Sample]:
    """The configured stages, each with its group and topics: what the rules join a consumer group's
    series to, to tell its stage (every shard reports them: exporter/sharding.py)."""
    return [TREE_PIPELINE_STAGE_INFO.sample(1, stage=stage.name, group=stage.group,
                                            request_topic=stage.request_topic, dlq_topic=stage.dlq_topic)
            for stage in stages]


def pipeline_samples(stages: Iterable[Stage], view: ClusterView, marks: Watermarks) -> list[Sample]:
    """The configured stages, and what each was requested and processed. ``marks`` holds every
    partition of the pipeline's topics that is known; a stage sum that would need an unknown one is
    left out, and a topic not created yet gives no series rather than a made-up zero."""

    def written(topic: str) -> int | None | object:
        if topic not in view.topics:
            return None
        keys = view.partitions([topic])
        if any(key not in marks.high for key in keys):
            return _UNKNOWN
        return sum(marks.high[key] for key in keys)

    stages = tuple(stages)
    samples = stage_info_samples(stages)
    for stage in stages:
        requested = written(stage.request_topic)
        completed = written(stage.completed_topic)
        failed = written(stage.failed_topic)
        for status, count in (("completed", completed), ("failed", failed)):
            if isinstance(count, int):
                samples.append(TREE_EVENTS_PROCESSED_TOTAL.sample(count, stage=stage.name, status=status))
        if isinstance(requested, int):
            samples.append(TREE_EVENTS_REQUESTED_TOTAL.sample(requested, stage=stage.name))
            if completed is not _UNKNOWN and failed is not _UNKNOWN:
                in_flight = max(0, requested - (completed or 0) - (failed or 0))
                samples.append(TREE_EVENTS_IN_FLIGHT.sample(in_flight, stage=stage.name))
    return samples
