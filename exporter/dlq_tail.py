"""The dead letter queues' series: how deep each stage's queue is and how old its oldest dead letter
(from the watermarks), and the dead letters by error_type, by tailing the DLQ topics.

The tail reads with assign() only: it never joins a consumer group and never commits, so it
cannot disturb the pipeline's own consumers or show up as a group. It keeps its position in
memory, reading at most a bounded number of records and of bytes per refresh, so a huge backlog
(or a queue of huge records) is caught up over several refreshes instead of stalling one or
filling the exporter's memory. Each record is read on its own (pipeline.events): one that cannot
be read, whatever its bytes, counts as "unparseable" and the rest go on.

Two views of the same records:
- what is retained now, by error_type (a gauge): the retained records are read once at first
  sight, then only the new ones; when the log start moves on (retention, delete_records) what fell
  out is subtracted. Per partition only runs of consecutive offsets with one error_type are kept,
  (first offset, last offset, error_type), so a large DLQ of few kinds costs a few runs, not a
  record each.
- dead letters written since the exporter first saw the partition (a counter): it starts at the
  high watermark of first sight, so an exporter restart does not count the retained records again
  (increase() over a restart would otherwise jump by the whole DLQ).

error_type comes from the records, so it is bounded before it becomes a label: cut to
MAX_ERROR_TYPE_CHARS with a marker and made valid UTF-8 (pipeline.events.safe_text), and at most
MAX_ERROR_TYPES_PER_STAGE distinct ones per stage, the rest counted as OTHER_ERROR_TYPE. A type
holds its slot while the DLQ retains a record of it; once retention or delete_records removed its
last one, the slot is free for a new type and the type's series go (both the retained gauge and
the counter). Should the type come back, its counter starts again from 0. Prometheus expects that
of a counter: a series that vanished and comes back is a new series, whose rate() and increase()
count from its second sample on (the dead letters before that are not an increase); one that
came back before a scrape saw it gone has fallen, which Prometheus takes for a counter reset and
counts the new value as increase. Either way nothing is counted twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from exporter.metrics import (
    TREE_DLQ_OLDEST_RECORD_TIMESTAMP_SECONDS,
    TREE_DLQ_RECORDS_TOTAL,
    TREE_DLQ_RETAINED_RECORDS,
    TREE_DLQ_RETAINED_RECORDS_BY_ERROR_TYPE,
    Sample,
)
from exporter.record_age import Position
from pipeline.config import KafkaSettings, Stage
from pipeline.events import UNPARSEABLE, parse_dead_letter
from pipeline.kafka import LazyReader, Partition, Watermarks, read_records

# The error types the operators' guide names; they are exposed at 0 from the start so the first
# dead letter of a kind is an increase Prometheus can see, not a series appearing.
KNOWN_ERROR_TYPES = ("FILE_NOT_FOUND", "INTELLIGENCE_SERVICE_ERROR", "ENCODING_ERROR", UNPARSEABLE)
# error_type comes from the records themselves; beyond this many distinct values per stage
# retained at once (the known ones aside) the rest are counted as OTHER_ERROR_TYPE, so a producer
# bug cannot explode the series count.
MAX_ERROR_TYPES_PER_STAGE = 100
OTHER_ERROR_TYPE = "other"
_ALWAYS_SHOWN = frozenset({*KNOWN_ERROR_TYPES, OTHER_ERROR_TYPE})
# Bytes read per refresh at most: the records bound's worth of ordinary dead letters (a kilobyte or
# two each), so only a queue of huge records (megabytes each) is read over more refreshes, not in
# one refresh of gigabytes.
MAX_BYTES_PER_REFRESH = 32 * 1024 * 1024

# librdkafka prefetches up to 64 MiB per consumer by default, in fetches of up to 50 MiB: far more
# than a refresh reads. Smaller fetches keep what is read beyond the per-refresh bound (and thrown
# away) small. A record bigger than these limits is still returned, alone in its fetch.
_READER_SETTINGS = {
    "fetch.wait.max.ms": 100,
    "fetch.max.bytes": 8 * 1024 * 1024,
    "max.partition.fetch.bytes": 1024 * 1024,
    "queued.max.messages.kbytes": 8 * 1024,
}


@dataclass
class _PartitionTail:
    position: int  # the next offset to read
    counted_from: int  # records at or after this offset are new to the counter
    # Runs of consecutive offsets with the same error_type, oldest first: [first, last, error_type].
    runs: list[list] = field(default_factory=list)

    def add(self, offset: int, error_type: str) -> None:
        last = self.runs[-1] if self.runs else None
        if last is not None and last[2] == error_type and last[1] + 1 == offset:
            last[1] = offset
        else:
            self.runs.append([offset, offset, error_type])

    def drop_below(self, log_start: int) -> None:
        """Forget the records retention or delete_records removed."""
        kept = 0
        while kept < len(self.runs) and self.runs[kept][1] < log_start:
            kept += 1
        del self.runs[:kept]
        if self.runs and self.runs[0][0] < log_start:
            self.runs[0][0] = log_start


class DlqTail:
    def __init__(self, settings: KafkaSettings, stages: tuple[Stage, ...], *,
                 max_records_per_refresh: int = 20_000, max_bytes_per_refresh: int = MAX_BYTES_PER_REFRESH,
                 read_timeout_seconds: float = 10.0) -> None:
        self._stage_of = {stage.dlq_topic: stage.name for stage in reversed(stages)}
        self._max_records = max_records_per_refresh
        self._max_bytes = max_bytes_per_refresh
        self._read_timeout = read_timeout_seconds
        self._reader = LazyReader(settings, **_READER_SETTINGS)
        self._tails: dict[Partition, _PartitionTail] = {}
        self._counts: dict[str, dict[str, int]] = {}
        self._error_types: dict[str, set[str]] = {}

    def advance(self, partitions: list[Partition], marks: Watermarks, deadline: float | None = None) -> None:
        """Read the dead letters written since the last call (up to the per-refresh bounds), within
        the read timeout or ``deadline`` (time.monotonic()), whichever comes first."""
        starts: dict[Partition, int] = {}
        for key in partitions:
            if key not in marks.high:
                continue
            high, low = marks.high[key], marks.low.get(key, 0)
            tail = self._tails.get(key)
            if tail is None:
                tail = self._tails[key] = _PartitionTail(position=low, counted_from=high)
            elif tail.position > high:
                # The topic was recreated under us: everything in it was written after first sight.
                tail = self._tails[key] = _PartitionTail(position=low, counted_from=low)
            tail.drop_below(low)
            tail.position = max(tail.position, low)
            starts[key] = tail.position
        for topic, _ in starts:
            self._counts.setdefault(self._stage_of[topic], {})
        # Before reading: the records read next may take the slots retention just freed.
        self._free_slots()
        if not starts:
            return  # no DLQ to read (none created yet, or a shard that tails none): no consumer is made
        read_until = time.monotonic() + self._read_timeout
        if deadline is not None:
            read_until = min(read_until, deadline)
        drained: set[Partition] = set()
        records = read_records(self._reader.get(), starts, marks.high, deadline=read_until,
                               max_records=self._max_records, max_bytes=self._max_bytes, drained=drained)
        for message in records:
            stage = self._stage_of[message.topic()]
            error_type = self._bounded(stage, parse_dead_letter(message.value()).error_type)
            key = (message.topic(), message.partition())
            tail = self._tails[key]
            tail.add(message.offset(), error_type)
            if message.offset() >= tail.counted_from:
                counts = self._counts[stage]
                counts[error_type] = counts.get(error_type, 0) + 1
            tail.position = max(tail.position, message.offset() + 1)
        # What is left below the end of a drained partition is only transaction markers, which no
        # read returns: the position moves past them, or the tail would never count as caught up.
        for key in drained:
            self._tails[key].position = max(self._tails[key].position, marks.high[key])

    def _bounded(self, stage: str, error_type: str) -> str:
        if error_type in _ALWAYS_SHOWN:
            return error_type
        slots = self._error_types.setdefault(stage, set())
        if error_type not in slots:
            if len(slots) >= MAX_ERROR_TYPES_PER_STAGE:
                return OTHER_ERROR_TYPE
            slots.add(error_type)
        return error_type

    def _free_slots(self) -> None:
        """Give up the slots (and the series) of the error types no retained record has any more."""
        retained: dict[str, set[str]] = {}
        for (topic, _), tail in self._tails.items():
            retained.setdefault(self._stage_of[topic], set()).update(run[2] for run in tail.runs)
        for stage, slots in self._error_types.items():
            gone = slots - retained.get(stage, set())
            slots -= gone
            counts = self._counts.get(stage, {})
            for error_type in gone:
                counts.pop(error_type, None)

    def samples(self) -> list[Sample]:
        """Dead letters by error_type: counted since first sight, and retained now."""
        samples = []
        for stage, counts in self._counts.items():
            for error_type in KNOWN_ERROR_TYPES:
                if error_type not in counts:
                    samples.append(TREE_DLQ_RECORDS_TOTAL.at((stage, error_type), 0))
            for error_type, count in counts.items():
                samples.append(TREE_DLQ_RECORDS_TOTAL.at((stage, error_type), count))
        for stage, retained in self._retained_by_stage().items():
            for error_type in KNOWN_ERROR_TYPES:
                retained.setdefault(error_type, 0)
            samples.extend(TREE_DLQ_RETAINED_RECORDS_BY_ERROR_TYPE.at((stage, error_type), count)
                           for error_type, count in retained.items())
        return samples

    def _retained_by_stage(self) -> dict[str, dict[str, int]]:
        """Retained records per stage and error_type, for the stages whose every partition was read
        up to its high watermark of first sight: a breakdown half read would be a wrong one."""
        retained: dict[str, dict[str, int]] = {}
        behind: set[str] = set()
        for (topic, _), tail in self._tails.items():
            stage = self._stage_of[topic]
            if tail.position < tail.counted_from:
                behind.add(stage)
                continue
            counts = retained.setdefault(stage, {})
            for first, last, error_type in tail.runs:
                counts[error_type] = counts.get(error_type, 0) + last - first + 1
        return {stage: counts for stage, counts in retained.items() if stage not in behind}

    def close(self) -> None:
        self._reader.close()


def log_starts(partitions: Iterable[Partition], marks: Watermarks) -> list[Position]:
    """The oldest retained record of every partition that retains any: where the age of a queue is read."""
    return [(topic, partition, marks.low[(topic, partition)]) for topic, partition in partitions
            if marks.high.get((topic, partition), 0) > marks.low.get((topic, partition), 0)]


def depth_samples(stages: Iterable[Stage], partitions: Iterable[Partition], known: Watermarks, read_now: Watermarks,
                  record_times: Mapping[Position, float]) -> list[Sample]:
    """How many records each stage's queue retains and when its oldest was written, for the DLQ
    ``partitions`` the cluster has. ``known``: watermarks including the last known ones of partitions
    not read this time; ``read_now``: only this refresh's; ``record_times``: the timestamps at the
    ``log_starts``. A stage with a partition unknown gets no depth, and one with a partition not read
    now no oldest timestamp: a part of the queue would be a wrong answer."""
    by_topic: dict[str, list[Partition]] = {}
    for key in sorted(set(partitions)):  # two stages may share a queue: each partition counts once
        by_topic.setdefault(key[0], []).append(key)
    samples = []
    for stage in stages:
        keys = by_topic.get(stage.dlq_topic)
        if not keys or any(key not in known.high for key in keys):
            continue
        labels = (stage.name, stage.dlq_topic)
        retained = 0
        oldest: float | None = None
        complete = True
        for key in keys:
            high, low = known.high[key], known.low[key]
            if high <= low:
                continue
            retained += high - low
            if key not in read_now.high:
                complete = False
                continue
            timestamp = record_times.get((key[0], key[1], low))
            if timestamp is not None and (oldest is None or timestamp < oldest):
                oldest = timestamp
        samples.append(TREE_DLQ_RETAINED_RECORDS.at(labels, retained))
        if oldest is not None and complete:
            samples.append(TREE_DLQ_OLDEST_RECORD_TIMESTAMP_SECONDS.at(labels, oldest))
    return samples
