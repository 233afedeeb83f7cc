"""What a refresh produces and a scrape reads: immutable samples grouped by metric.

A ``Snapshot`` is built whole by the refresh side and swapped in with one assignment; the scrape
side only ever reads the one it picked up, so neither waits on the other and nothing mutable is
shared between them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from exporter.metrics import BY_NAME, Collector

# The order in which the series cap serves collectors: the small ones, whose few series say the
# most (is the exporter, a service, the cluster, a stage healthy), before the large ones.
CAP_PRIORITY = (Collector.EXPORTER, Collector.SERVICES, Collector.KAFKA_CLUSTER, Collector.PIPELINE,
                Collector.DLQ, Collector.KAFKA_TOPICS, Collector.KAFKA_GROUPS)


def _cap_rank(collector: Collector) -> int:
    return CAP_PRIORITY.index(collector) if collector in CAP_PRIORITY else len(CAP_PRIORITY)


class Sample(NamedTuple):
    """One series: metric name, label values in the order of the metric's labels, value."""

    metric: str
    labels: tuple[str, ...]
    value: float


def sample(metric: str, value: float, **labels: str | int) -> Sample:
    """A sample with its labels named, checked against the metric contract.

    Collectors on the hot path may build ``Sample`` directly with label values in order; this
    checked form is for everything else, so a mistyped label fails loudly at the first run.
    """
    definition = BY_NAME[metric]
    if set(labels) != set(definition.labels):
        raise ValueError(f"{metric} takes labels {definition.labels}, got {tuple(labels)}")
    return Sample(metric, tuple(str(labels[name]) for name in definition.labels), float(value))


@dataclass(frozen=True)
class CollectorRun:
    """One run of one collector: what it gathered, or why it could not."""

    collector: Collector
    samples: tuple[Sample, ...]
    error: str | None
    started_at: float
    duration_seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Snapshot:
    series: Mapping[str, tuple[Sample, ...]]
    built_at: float
    dropped: Mapping[Collector, int] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> Snapshot:
        return cls(series=MappingProxyType({}), built_at=0.0)

    @classmethod
    def build(cls, samples_by_collector: Iterable[tuple[Collector, Iterable[Sample]]],
              built_at: float, max_series: int) -> Snapshot:
        """Group samples by metric, keeping at most ``max_series``.

        What the cap keeps does not depend on the order the collectors come in: the few series of
        the small collectors first (CAP_PRIORITY), the consumer groups (the one collector whose
        count the cluster's users decide) last. Within a collector, the series sharing their first
        label (a group, a topic, a service, a stage) are kept or dropped together, so a group never
        loses half of its partitions or of its one-hot state.
        """
        grouped: dict[str, list[Sample]] = {}
        dropped: dict[Collector, int] = {}
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
        frozen = {name: tuple(items) for name, items in grouped.items()}
        return cls(series=MappingProxyType(frozen), built_at=built_at, dropped=MappingProxyType(dropped))

    def with_samples(self, extra: Iterable[Sample]) -> Snapshot:
        """This snapshot plus ``extra`` samples (not counted against any cap)."""
        grouped = dict(self.series)
        for item in extra:
            grouped[item.metric] = grouped.get(item.metric, ()) + (item,)
        return Snapshot(series=MappingProxyType(grouped), built_at=self.built_at, dropped=self.dropped)

    def values(self, metric: str) -> dict[tuple[str, ...], float]:
        """label values -> value for one metric (for tests and the status tool)."""
        return {item.labels: item.value for item in self.series.get(metric, ())}

    def __len__(self) -> int:
        return sum(len(items) for items in self.series.values())
