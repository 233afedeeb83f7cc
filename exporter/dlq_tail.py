"""Dead letters counted by error_type, by tailing the DLQ topics.

The tail reads with assign() only: it never joins a consumer group and never commits, so it
cannot disturb the pipeline's own consumers or show up as a group. It starts at each partition's
log start when the exporter starts and remembers its position in memory, reading at most a bounded
number of records per refresh, so a huge backlog is caught up over several refreshes instead of
stalling one. Counts and positions move together: a read that fails counts nothing twice.
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer

from exporter.snapshot import Sample
from pipeline.config import KafkaSettings, Stage
from pipeline.events import UNPARSEABLE, parse_dead_letter
from pipeline.kafka import Partition, Watermarks, read_records, reader

# The error types the operators' guide names; they are exposed at 0 from the start so the first
# dead letter of a kind is an increase Prometheus can see, not a series appearing.
KNOWN_ERROR_TYPES = ("FILE_NOT_FOUND", "INTELLIGENCE_SERVICE_ERROR", "ENCODING_ERROR", UNPARSEABLE)
# error_type comes from the records themselves; beyond this many distinct values per stage the
# rest are counted as OTHER_ERROR_TYPE so a producer bug cannot explode the series count.
MAX_ERROR_TYPES_PER_STAGE = 100
OTHER_ERROR_TYPE = "other"

_READER_SETTINGS = {"fetch.wait.max.ms": 100}


class DlqTail:
    def __init__(self, settings: KafkaSettings, stages: tuple[Stage, ...], *,
                 max_records_per_refresh: int = 20_000, read_timeout_seconds: float = 10.0) -> None:
        self._settings = settings
        self._stage_of = {stage.dlq_topic: stage.name for stage in reversed(stages)}
        self._max_records = max_records_per_refresh
        self._read_timeout = read_timeout_seconds
        self._consumer: Consumer | None = None
        self._positions: dict[Partition, int] = {}
        self._counts: dict[str, dict[str, int]] = {}

    def advance(self, partitions: list[Partition], marks: Watermarks) -> None:
        """Read the dead letters written since the last call (up to the per-refresh bound)."""
        starts: dict[Partition, int] = {}
        for key in partitions:
            if key not in marks.high:
                continue
            position = self._positions.get(key)
            if position is None or position > marks.high[key]:
                # First sight, or the topic was recreated under us: start over at the log start.
                position = marks.low.get(key, 0)
            self._positions[key] = position
            starts[key] = position
        for topic, _ in starts:
            self._counts.setdefault(self._stage_of[topic], {})
        deadline = time.monotonic() + self._read_timeout
        records = read_records(self._reader(), starts, marks.high, deadline=deadline,
                               max_records=self._max_records)
        for message in records:
            counts = self._counts[self._stage_of[message.topic()]]
            error_type = parse_dead_letter(message.value()).error_type
            if error_type not in counts and len(counts) >= MAX_ERROR_TYPES_PER_STAGE:
                error_type = OTHER_ERROR_TYPE
            counts[error_type] = counts.get(error_type, 0) + 1
            key = (message.topic(), message.partition())
            self._positions[key] = max(self._positions[key], message.offset() + 1)

    def samples(self) -> list[Sample]:
        samples = []
        for stage, counts in self._counts.items():
            for error_type in KNOWN_ERROR_TYPES:
                if error_type not in counts:
                    samples.append(Sample("tree_dlq_records_total", (stage, error_type), 0.0))
            for error_type, count in counts.items():
                samples.append(Sample("tree_dlq_records_total", (stage, error_type), float(count)))
        return samples

    def _reader(self) -> Consumer:
        if self._consumer is None:
            self._consumer = reader(self._settings, **_READER_SETTINGS)
        return self._consumer

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
