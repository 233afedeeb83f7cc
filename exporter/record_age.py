"""Timestamps of the records at given offsets, read exactly and remembered per offset.

Lag in seconds and the DLQ's oldest record both need "the timestamp of the record at offset N of
partition P". A record never changes once written, so a timestamp read once is kept for as long
as that offset is still asked for, and an unchanged committed offset costs nothing the next time.
New offsets are read together in one batched assign/consume pass per distinct offset per
partition (a partition can be assigned only once per pass), all within one deadline.

A read at an offset can also reach the high watermark without meeting a record: everything left
there is transaction markers (a transactional producer writes one after each commit, and a
consumer that commits after its last record stays one offset "behind" for ever). That answer is
remembered too, for as long as the offset and the high watermark stay the same.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.config import KafkaSettings
from pipeline.kafka import LazyReader, Partition, read_records, record_timestamp_seconds

log = logging.getLogger("treewatch.record_age")

Position = tuple[str, int, int]  # (topic, partition, offset)
_Drained = tuple[str, int, int, int]  # (topic, partition, offset, high watermark)

# Only the first record at each offset is wanted: fetch little per partition so a pass over
# thousands of partitions does not pull megabytes it throws away, and do not let the broker hold
# a fetch open waiting for more. (Holding the prefetch queue to one message, queued.min.messages=1,
# was measured to make such a pass over a thousand partitions ten times slower.)
_READER_SETTINGS = {
    "max.partition.fetch.bytes": 4096,
    "fetch.wait.max.ms": 10,
}


@dataclass(frozen=True)
class Lookup:
    """What a lookup found: the timestamp of the first record at or after each position, and the
    positions from which only transaction markers are left below the high watermark."""

    timestamps: dict[Position, float]
    only_markers: frozenset[Position]


class RecordTimestamps:
    def __init__(self, settings: KafkaSettings, read_timeout_seconds: float) -> None:
        self._read_timeout = read_timeout_seconds
        self._reader = LazyReader(settings, **_READER_SETTINGS)
        self._known: dict[Position, float] = {}
        self._drained: set[_Drained] = set()
        self._unread_reported: set[Partition] = set()

    def lookup(self, positions: Iterable[Position], high: dict[Partition, int],
               deadline: float | None = None) -> Lookup:
        """Timestamps of the first record at or after each position below the partition's high
        watermark. Positions not read before the read timeout (or ``deadline``, time.monotonic(),
        when sooner) are in neither part of the answer."""
        wanted = set(positions)
        found = {position: self._known[position] for position in wanted if position in self._known}
        drained = {(t, p, o, high[(t, p)]) for t, p, o in wanted if (t, p) in high} & self._drained
        known_drained = {(t, p, o) for t, p, o, _ in drained}
        missing = sorted(wanted - found.keys() - known_drained)
        if missing:
            read_until = time.monotonic() + self._read_timeout
            if deadline is not None:
                read_until = min(read_until, deadline)
            timestamps, newly_drained = self._read(missing, high, read_until)
            found.update(timestamps)
            drained |= {(t, p, o, high[(t, p)]) for t, p, o in newly_drained}
            known_drained |= newly_drained
        else:
            self._unread_reported = set()
        # Remember only what is still asked for: the cache follows the groups, it never grows.
        self._known = found
        self._drained = drained
        return Lookup(dict(found), frozenset(known_drained))

    def _read(self, missing: list[Position], high: dict[Partition, int],
              deadline: float) -> tuple[dict[Position, float], set[Position]]:
        per_partition: dict[Partition, list[int]] = defaultdict(list)
        for topic, partition, offset in missing:
            per_partition[(topic, partition)].append(offset)
        found: dict[Position, float] = {}
        only_markers: set[Position] = set()
        round_index = 0
        while time.monotonic() < deadline:
            starts = {key: offsets[round_index] for key, offsets in per_partition.items()
                      if len(offsets) > round_index}
            if not starts:
                break
            drained: set[Partition] = set()
            for message in read_records(self._reader.get(), starts, high, deadline=deadline, first_only=True,
                                        drained=drained):
                timestamp = record_timestamp_seconds(message)
                if timestamp is not None:
                    key = (message.topic(), message.partition())
                    found[(key[0], key[1], starts[key])] = timestamp
            only_markers.update((topic, partition, starts[(topic, partition)]) for topic, partition in drained)
            round_index += 1
        answered = found.keys() | only_markers
        unread = {(topic, partition) for topic, partition, offset in missing
                  if (topic, partition, offset) not in answered}
        # The same partitions unread refresh after refresh (an open transaction holds the read back,
        # a broker is slow) are one warning, not one per refresh.
        level = logging.WARNING if unread - self._unread_reported else logging.DEBUG
        self._unread_reported = unread
        if unread:
            log.log(level, "no record timestamp for offsets of %d partition(s) (%s) before the refresh's read "
                    "deadline; their age is left out", len(unread),
                    ", ".join(f"{topic}[{partition}]" for topic, partition in sorted(unread)[:5]))
        return found, only_markers

    def close(self) -> None:
        self._reader.close()
