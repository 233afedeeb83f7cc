"""The scrape side: a snapshot rendered in Prometheus' text exposition format.

A snapshot never changes, so its text is rendered once and reused by every scrape until the next
snapshot arrives; two Prometheus servers scraping cost one rendering, not two. The process
metrics of prometheus_client (memory, CPU, open files) are rendered per scrape beside it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector as RegistryCollector

from exporter.metrics import METRICS, Kind
from exporter.snapshot import Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def families(snapshot: Snapshot) -> Iterator[Metric]:
    """Metric families for every metric of the contract that the snapshot holds samples of."""
    for definition in METRICS:
        samples = snapshot.series.get(definition.name)
        if not samples:
            continue
        family_type = CounterMetricFamily if definition.kind is Kind.COUNTER else GaugeMetricFamily
        family = family_type(definition.family_name, definition.help, labels=definition.labels)
        for item in samples:
            family.add_metric(item.labels, item.value)
        yield family


class _SnapshotCollector(RegistryCollector):
    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        return families(self._snapshot)


def render(snapshot: Snapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return generate_latest(registry)


class Renderer:
    """Text of the current snapshot, rendered at most once per snapshot."""

    def __init__(self, current: Callable[[], Snapshot]) -> None:
        self._current = current
        self._lock = threading.Lock()
        self._rendered_for: Snapshot | None = None
        self._text = b""
        self._process = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self._process)

    def metrics_text(self) -> bytes:
        snapshot = self._current()
        with self._lock:
            if snapshot is not self._rendered_for:
                self._text = render(snapshot)
                self._rendered_for = snapshot
            text = self._text
        return text + generate_latest(self._process)
