"""A snapshot as prometheus_client itself writes it: what exporter/text_format.py must equal."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector

from exporter.metrics import METRICS, Kind
from exporter.snapshot import Snapshot


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        for definition in METRICS:
            samples = self._snapshot.samples(definition)
            if not samples:
                continue
            family_type = CounterMetricFamily if definition.kind is Kind.COUNTER else GaugeMetricFamily
            family = family_type(definition.family_name, definition.help, labels=definition.labels)
            for item in samples:
                family.add_metric(item.labels, item.value)
            yield family


def _registry(snapshot: Snapshot) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return registry


def reference_text(snapshot: Snapshot) -> bytes:
    return generate_latest(_registry(snapshot))


def reference_openmetrics(snapshot: Snapshot) -> bytes:
    return openmetrics.generate_latest(_registry(snapshot))
