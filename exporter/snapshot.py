"""What a refresh produces and a scrape reads: immutable samples grouped by metric.

A ``Snapshot`` is built whole by the refresh side and swapped in with one assignment; the scrape
side only ever reads the one it picked up, so neither waits on the other and nothing mutable is
shared between them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from exporter.metrics import MetricDef, Part, Sample, SeriesBlock

Series = Sample | SeriesBlock  # one series, or a block of series sharing all labels but the last

# The order in which the series cap serves collectors: the small ones, whose few series say the
# most (is the exporter, a service, the cluster, a stage healthy), before the large ones.
CAP_PRIORITY = (Part.EXPORTER, Part.SERVICES, Part.KAFKA_CLUSTER, Part.PIPELINE, Part.DLQ, Part.KAFKA_TOPICS,
                Part.KAFKA_GROUPS)


def _cap_rank(collector: Part) -> int:
    return CAP_PRIORITY.index(collector) if collector in CAP_PRIORITY else len(CAP_PRIORITY)


@dataclass(frozen=True)
class CollectorRun:
    """One run of one collector: what it gathered, or why it could not."""

    collector: Part
    samples: tuple[Series, ...]
    error: str | None
    started_at: float
    duration_seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Snapshot:
    series: Mapping[MetricDef, tuple[Series, ...]]
    built_at: float
    dropped: Mapping[Part, int] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> Snapshot:
        return cls(series=MappingProxyType({}), built_at=0.0)

    @classmethod
    def build(cls, samples_by_collector: Iterable[tuple[Part, Iterable[Series]]],
              built_at: float, max_series: int) -> Snapshot:
        """Group samples by metric, keeping at most ``max_series``.

        What the cap keeps does not depend on the order the collectors come in: the few series of
        the small collectors first (CAP_PRIORITY), the consumer groups (the one collector whose
        count the cluster's users decide) last, and the groups' per-partition series
        (``MetricDef.per_partition``) only after every collector's other series: past the cap a
        group is told per topic rather than not at all. Within a collector, the series sharing their first
        label (a group, a topic, a service, a stage) are kept or dropped together, so a group never
        loses half of its partitions or of its one-hot state.
        """
        grouped: dict[MetricDef, list[Series]] = {}
        dropped: dict[Part, int] = {}
        kept = 0
        ranked = sorted(samples_by_collector, key=lambda pair: _cap_rank(pair[0]))
        detail: list[tuple[Part, list[Series]]] = []
        for collector, samples in ranked:
            per_partition: list[Series] = []
            units: dict[str, list[Series]] = {}
            for item in samples:
                if item.metric.per_partition:
                    per_partition.append(item)
                else:
                    units.setdefault(item.labels[0] if item.labels else "", []).append(item)
            detail.append((collector, per_partition))
            kept = _keep(units, collector, kept, max_series, grouped, dropped)
        for collector, per_partition in detail:
            units = {}
            for item in per_partition:
                units.setdefault(item.labels[0], []).append(item)
            kept = _keep(units, collector, kept, max_series, grouped, dropped)
        frozen = {metric: tuple(items) for metric, items in grouped.items()}
        return cls(series=MappingProxyType(frozen), built_at=built_at, dropped=MappingProxyType(dropped))

    def with_samples(self, extra: Iterable[Series]) -> Snapshot:
        """This snapshot plus ``extra`` samples (not counted against any cap)."""
        grouped = dict(self.series)
        for item in extra:
            grouped[item.metric] = grouped.get(item.metric, ()) + (item,)
        return Snapshot(series=MappingProxyType(grouped), built_at=self.built_at, dropped=self.dropped)

    def samples(self, metric: MetricDef) -> list[Sample]:
        """Every sample of one metric, blocks of per-partition series unfolded."""
        return unfolded(self.series.get(metric, ()))

    def values(self, metric: MetricDef) -> dict[tuple[str, ...], float]:
        """label values -> value for one metric (for tests and the status tool)."""
        return {item.labels: item.value for item in self.samples(metric)}

    def __len__(self) -> int:
        return sum(_count(item) for items in self.series.values() for item in items)


def _count(item: Series) -> int:
    return len(item) if isinstance(item, SeriesBlock) else 1


def unfolded(series: Iterable[Series]) -> list[Sample]:
    """Samples, the blocks of per-partition series among them unfolded into theirs."""
    found: list[Sample] = []
    for item in series:
        if isinstance(item, SeriesBlock):
            found += item.samples()
        else:
            found.append(item)
    return found


def _keep(units: Mapping[str, list[Series]], collector: Part, kept: int, max_series: int,
          grouped: dict[MetricDef, list[Series]], dropped: dict[Part, int]) -> int:
    """Add the units that fit under ``max_series`` to ``grouped``, count the others in ``dropped``;
    the series kept so far after it."""
    for unit in units.values():
        size = sum(_count(item) for item in unit)
        if kept + size > max_series:
            dropped[collector] = dropped.get(collector, 0) + size
            continue
        for item in unit:
            grouped.setdefault(item.metric, []).append(item)
        kept += size
    return kept
