"""What the simulated services report about their own work, as the guide reads it in its issue 4
("Slow project ingestion"): the intelligence service's ``tree_event_processing_seconds`` histogram
and cache hit rate (``/cache/metrics``), metadata-stamping's ``stamping_latency_ms_p95``.

The numbers are real: every request a stage worker processes is timed (the stage's configured delay
included) and observed here, so a slow stage shows on these metrics as a slow service would. The names
are exporter.metrics.SERVICES_OWN_METRICS', which the rules and dashboards read.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.metrics import STAMPING_LATENCY_MS_P95, TREE_EVENT_PROCESSING_SECONDS

# The stage whose processing is metadata-stamping's work.
STAMPING_STAGE = "stamp"
# Recent stampings the p95 is computed over, as a service would over a sliding window.
STAMPING_WINDOW = 200
# Seconds; 0.3 is the guide's per-file budget (1,000 files in 5 minutes), so its crossing is exact.
PROCESSING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0)
DEFAULT_CACHE_HIT_RATE = 0.85


class _StampingLatency:
    """A collector of the p95 of the recent stampings; no series before the first one."""

    def __init__(self) -> None:
        self._recent: deque[float] = deque(maxlen=STAMPING_WINDOW)
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        with self._lock:
            self._recent.append(seconds)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            recent = sorted(self._recent)
        if recent:
            p95 = recent[max(0, math.ceil(0.95 * len(recent)) - 1)]
            yield GaugeMetricFamily(STAMPING_LATENCY_MS_P95.name, STAMPING_LATENCY_MS_P95.help, value=p95 * 1000)


class ServiceMetrics:
    """Each simulated service's /metrics, and the cache metrics of the services that have a cache."""

    def __init__(self) -> None:
        self._registries = {TREE_EVENT_PROCESSING_SECONDS.service: CollectorRegistry(auto_describe=True),
                            STAMPING_LATENCY_MS_P95.service: CollectorRegistry(auto_describe=True)}
        self._processing = Histogram(TREE_EVENT_PROCESSING_SECONDS.name, TREE_EVENT_PROCESSING_SECONDS.help,
                                     buckets=PROCESSING_BUCKETS,
                                     registry=self._registries[TREE_EVENT_PROCESSING_SECONDS.service])
        self._stamping = _StampingLatency()
        self._registries[STAMPING_LATENCY_MS_P95.service].register(self._stamping)
        self._empty = CollectorRegistry()
        self.cache_hit_rate = DEFAULT_CACHE_HIT_RATE

    def observe(self, stage: str, seconds: float) -> None:
        """One request of ``stage`` took ``seconds``: every stage's events are the intelligence
        service's to process; the stamp stage's are also metadata-stamping's stampings."""
        self._processing.observe(seconds)
        if stage == STAMPING_STAGE:
            self._stamping.observe(seconds)

    def exposition(self, service: str) -> bytes:
        """The service's /metrics in Prometheus' text format (empty for a service with nothing to report)."""
        return generate_latest(self._registries.get(service, self._empty))

    def cache_metrics(self, service: str) -> dict[str, float] | None:
        """The JSON body of the service's /cache/metrics; None for a service without a cache."""
        if service != TREE_EVENT_PROCESSING_SECONDS.service:
            return None
        return {"hit_rate": self.cache_hit_rate}
