"""The services collector: every configured health URL probed concurrently on each refresh, and
beside them every configured cache metrics URL read for its hit rate (pipeline/cache_metrics.py).

Every state and every failure reason is written on every refresh (one-hot), so a series that
was 1 last time is 0 now rather than left over. A service that fails its probe is not a failing
collector: the collector did its job and reports the failure per service.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from exporter.metrics import (
    TREE_SERVICE_CACHE_HIT_RATIO,
    TREE_SERVICE_CACHE_METRICS_FAILURE,
    TREE_SERVICE_PROBE_DURATION_SECONDS,
    TREE_SERVICE_PROBE_FAILURE,
    TREE_SERVICE_PROBE_HTTP_STATUS_CODE,
    TREE_SERVICE_PROBE_SUCCESS,
    TREE_SERVICE_STATUS,
    Part,
    Sample,
)
from pipeline import cache_metrics, health
from pipeline.config import Config

log = logging.getLogger("treewatch.services")

# The share of the refresh interval a probe round may take at most, so probes finish before the
# next refresh is due even when the configured timeout is longer than the interval.
_MAX_SHARE_OF_INTERVAL = 0.8


class ServicesSource:
    name = "services"
    collectors = (Part.SERVICES,)

    def __init__(self, config: Config) -> None:
        settings = config.exporter
        self.targets = health.targets(config.services)
        self.cache_targets = tuple(health.Target(service.name, service.cache_metrics_url)
                                   for service in config.services if service.cache_metrics_url)
        self.max_body_bytes = settings.health_max_body_bytes
        limit = settings.refresh_interval_seconds * _MAX_SHARE_OF_INTERVAL
        self.timeout_seconds = min(settings.health_timeout_seconds, limit)
        if settings.health_timeout_seconds > limit:
            log.warning("health_timeout_seconds %gs is not below the refresh interval %gs; "
                        "probing with a %.3gs timeout", settings.health_timeout_seconds,
                        settings.refresh_interval_seconds, self.timeout_seconds)

    def gather(self) -> Mapping[Part, Sequence[Sample] | BaseException]:
        results, readings = asyncio.run(self._round())
        samples: list[Sample] = []
        for result in results:
            samples.extend(probe_samples(result))
        for reading in readings:
            samples.extend(cache_samples(reading))
        return {Part.SERVICES: samples}

    async def _round(self) -> tuple[list[health.ProbeResult], list[cache_metrics.CacheReading]]:
        # The cache reads run beside the health probes, so the round still ends within one timeout.
        probes = health.probe_all_async(self.targets, timeout_seconds=self.timeout_seconds,
                                        max_body_bytes=self.max_body_bytes)
        reads = cache_metrics.read_all_async(self.cache_targets, timeout_seconds=self.timeout_seconds,
                                             max_body_bytes=self.max_body_bytes)
        results, readings = await asyncio.gather(probes, reads)
        return results, readings

    def close(self) -> None:
        """Nothing to release: each round opens and closes its own connections."""


def probe_samples(result: health.ProbeResult) -> list[Sample]:
    service = result.service
    samples = [
        TREE_SERVICE_PROBE_SUCCESS.sample(1 if result.success else 0, service=service),
        TREE_SERVICE_PROBE_DURATION_SECONDS.sample(result.duration_seconds, service=service),
        TREE_SERVICE_PROBE_HTTP_STATUS_CODE.sample(result.http_status_code, service=service),
    ]
    samples += [TREE_SERVICE_STATUS.sample(1 if result.status == status else 0, service=service, status=status)
                for status in health.STATES]
    samples += [TREE_SERVICE_PROBE_FAILURE.sample(1 if result.failure_reason == reason else 0,
                                                  service=service, reason=reason)
                for reason in health.FAILURE_REASONS]
    return samples


def cache_samples(reading: cache_metrics.CacheReading) -> list[Sample]:
    """The hit ratio when the read succeeded (no stale value after a failure), and why it failed, one-hot."""
    service = reading.service
    samples = [] if reading.hit_rate is None else [TREE_SERVICE_CACHE_HIT_RATIO.sample(reading.hit_rate,
                                                                                         service=service)]
    samples += [TREE_SERVICE_CACHE_METRICS_FAILURE.sample(1 if reading.failure_reason == reason else 0,
                                                          service=service, reason=reason)
                for reason in cache_metrics.FAILURE_REASONS]
    if reading.failure_reason is not None:
        log.debug("%s: cache metrics read failed: %s", service, reading.detail)
    return samples
