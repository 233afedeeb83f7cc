"""What a refresh produces and a scrape reads: immutable samples grouped by metric.

A ``Snapshot`` is built whole by the refresh side and swapped in with one assignment; the scrape
side only ever reads the one it picked up, so neither waits on the other and nothing mutable is
shared between them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from exporter.metrics import MetricDef, Part, Sample

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
    samples: tuple[Sample, ...]
    error: str | None
    started_at: float
    duration_seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Snapshot:
    series: Mapping[MetricDef, tuple[Sample, ...]]
    built_at: float
    dropped: Mapping[Part, int] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> Snapshot:
        return cls(series=MappingProxyType({}), built_at=0.0)

    @classmethod
    def build(cls, samples_by_collector: Iterable[tuple[Part, Iterable[Sample]]],
              built_at: float, max_series: int) -> Snapshot:
        """Group samples by metric, keeping at most ``max_series``.

        What the cap keeps does not depend on the order the collectors come in: the few series of
        the small collectors first (CAP_PRIORITY), the consumer groups (the one collector whose
        count the cluster's users decide) last. Within a collector, the series sharing their first
        label (a group, a topic, a service, a stage) are kept or dropped together, so a group never
        loses half of its partitions or of its one-hot state.
        """
        grouped: dict[MetricDef, list[Sample]] = {}
        dropped: dict[Part, int] = {}
        kept = 0
        for collector, samples in sorted(samples_by_collector, key=lambda pair: _cap_rank(pair[0])):
            units: dict[str, list[Sample]] = {}
            for item in samples:
                units.setdefault(item.labels[0] if item.labels else "", []).append(item)
            for unit in units.values():
                if kept + len(unit) > max_series:
                    dropped[collector] = dropped.get(collector, 0) + len(unit)
                    continue
                for item in unit:
                    grouped.setdefault(item.metric, []).append(item)
                kept += len(unit)
        frozen = {metric: tuple(items) for metric, items in grouped.items()}
        return cls(series=MappingProxyType(frozen), built_at=built_at, dropped=MappingProxyType(dropped))

    def with_samples(self, extra: Iterable[Sample]) -> Snapshot:
        """This snapshot plus ``extra`` samples (not counted against any cap)."""
        grouped = dict(self.series)
        for item in extra:
            grouped[item.metric] = grouped.get(item.metric, ()) + (item,)
        return Snapshot(series=MappingProxyType(grouped), built_at=self.built_at, dropped=self.dropped)

    def values(self, metric: MetricDef) -> dict[tuple[str, ...], float]:
        """label values -> value for one metric (for tests and the status tool)."""
        return {item.labels: item.value for item in self.series.get(metric, ())}

    def __len__(self) -> int:
        return sum(len(items) for items in self.series.values())
