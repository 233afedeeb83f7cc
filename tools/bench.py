"""The guide's end-to-end benchmark (benchmark_tree_stamping.sh): publish a discovery request for a
project, follow it through every stage to completion, and measure duration, throughput, per-file
latency and dead letters against the guide's targets.

Against the simulator the project is synthetic and ``files`` is how many files its discovery
reports; against the real pipeline discovery finds the files under ``project_path`` and the
measured counts are what it discovered.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.config import Config
from pipeline.events import discovery_request
from tools.request_journey import FollowedRequest, Progress, follow_request

# The guide's performance targets.
TARGET_FILES_PER_SECOND = 166.0
TARGET_SECONDS_PER_10K_FILES = 60.0
TARGET_DLQ_RATE = 0.001
LATENCY_PERCENTILES = (50, 90, 99, 100)


@dataclass(frozen=True)
class TargetCheck:
    name: str
    target: str
    measured: str
    passed: bool


@dataclass(frozen=True)
class BenchResult:
    project_name: str
    project_path: str
    files_requested: int
    run: FollowedRequest
    files_per_second: float | None  # discovered files / duration, once complete
    # End-to-end per file: its last stage's completed record's timestamp (index-completed with the
    # built-in stages) − the request record's timestamp.
    latency_seconds: dict[str, float]  # "p50", "p90", "p99", "max"; empty when no file was finished
    dlq_rate: float | None  # dead letters (all stages) / discovered files
    targets: tuple[TargetCheck, ...]  # empty unless the run completed

    @property
    def completed(self) -> bool:
        return self.run.completed

    @property
    def progress(self) -> Progress:
        return self.run.progress

    @property
    def targets_met(self) -> bool:
        """Completed and every target of the guide met: what the benchmark checks."""
        return self.completed and bool(self.targets) and all(t.passed for t in self.targets)


def percentiles(values: list[float]) -> dict[str, float]:
    """Nearest-rank percentiles of ``values``; p100 is named "max"."""
    if not values:
        return {}
    ordered = sorted(values)
    found = {}
    for p in LATENCY_PERCENTILES:
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        found["max" if p == 100 else f"p{p}"] = ordered[rank - 1]
    return found


def target_checks(files: int, duration: float, files_per_second: float, dead_letters: int) -> tuple[TargetCheck, ...]:
    allowed_seconds = TARGET_SECONDS_PER_10K_FILES * files / 10_000
    dlq_rate = dead_letters / files if files else 0.0
    return (
        TargetCheck("throughput", f">= {TARGET_FILES_PER_SECOND:g} files/s", f"{files_per_second:.1f} files/s",
                    files_per_second >= TARGET_FILES_PER_SECOND),
        TargetCheck("duration", f"<= {allowed_seconds:.3g}s for {files} files "
                                f"({TARGET_SECONDS_PER_10K_FILES:g}s per 10,000)",
                    f"{duration:.1f}s", duration <= allowed_seconds),
        TargetCheck("dlq rate", f"<= {TARGET_DLQ_RATE:.1%}", f"{dlq_rate:.2%} ({dead_letters} dead letters)",
                    dlq_rate <= TARGET_DLQ_RATE),
    )


def run_bench(config: Config, files: int, *, project_path: str | None = None, timeout_seconds: float = 600.0,
              on_progress: Callable[[Progress], None] | None = None) -> BenchResult:
    correlation_id = str(uuid.uuid4())
    project_name = f"benchmark-{correlation_id[:8]}"
    project_path = project_path or f"/test/{project_name}"
    request = discovery_request(project_path, project_name, correlation_id, synthetic_file_count=files)
    run = follow_request(config, request, timeout_seconds, on_progress)
    progress = run.progress
    latencies = percentiles([stamp - run.requested_at for stamp in run.finished_timestamps])
    discovered = progress.discovered
    dlq_rate = progress.dead_lettered_total / discovered if discovered else None
    if not run.completed or discovered is None:
        return BenchResult(project_name, project_path, files, run, None, latencies, dlq_rate, ())
    # A run finished within the clock's resolution still has a rate, not a division by zero.
    duration = max(run.elapsed_seconds, 1e-6)
    files_per_second = discovered / duration
    return BenchResult(project_name, project_path, files, run, files_per_second, latencies, dlq_rate,
                       target_checks(discovered, duration, files_per_second, progress.dead_lettered_total))
