"""The one object of selectors and thresholds that both the alert rules and the dashboards read,
so a threshold line on a panel is always the number an alert fires at (one number, one place)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MonitoringConfig:
    # HighConsumerLag (guide): records behind, per group/topic/partition.
    consumer_lag_records: int = 10_000
    # DLQOverflow (guide): new dead letters in 5 minutes, per DLQ topic.
    dlq_overflow_records_5m: int = 10
    # LowThroughput (guide): events per second (1,000 files a minute).
    low_throughput_events_per_second: float = 16.67
    # HighErrorRate (guide): failed / processed over 5 minutes.
    error_ratio: float = 0.05
    # SLO: share of a stage's events that must complete rather than fail.
    slo_objective: float = 0.999


CONFIG = MonitoringConfig()
