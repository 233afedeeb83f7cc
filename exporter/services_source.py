"""The services collector: every configured health URL probed concurrently on each refresh.

Every state and every failure reason is written on every refresh (one-hot), so a series that
was 1 last time is 0 now rather than left over. A service that fails its probe is not a failing
collector: the collector did its job and reports the failure per service.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from exporter.metrics import (
    TREE_SERVICE_PROBE_DURATION_SECONDS,
    TREE_SERVICE_PROBE_FAILURE,
    TREE_SERVICE_PROBE_HTTP_STATUS_CODE,
    TREE_SERVICE_PROBE_SUCCESS,
    TREE_SERVICE_STATUS,
    Part,
    Sample,
)
from pipeline import health
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
        self.targets = tuple(health.Target(service.name, service.url) for service in config.services)
        self.max_body_bytes = settings.health_max_body_bytes
        limit = settings.refresh_interval_seconds * _MAX_SHARE_OF_INTERVAL
        self.timeout_seconds = min(settings.health_timeout_seconds, limit)
        if settings.health_timeout_seconds > limit:
            log.warning("health_timeout_seconds %gs is not below the refresh interval %gs; "
                        "probing with a %.3gs timeout", settings.health_timeout_seconds,
                        settings.refresh_interval_seconds, self.timeout_seconds)

    def gather(self) -> Mapping[Part, Sequence[Sample] | BaseException]:
        results = health.probe_all(self.targets, timeout_seconds=self.timeout_seconds,
                                   max_body_bytes=self.max_body_bytes)
        samples: list[Sample] = []
        for result in results:
            samples.extend(probe_samples(result))
        return {Part.SERVICES: samples}

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
