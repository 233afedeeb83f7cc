"""Timestamps of the records at given offsets, read exactly and remembered per offset.

Lag in seconds and the DLQ's oldest record both need "the timestamp of the record at offset N of
partition P". A record never changes once written, so a timestamp read once is kept for as long
as that offset is still asked for, and an unchanged committed offset costs nothing the next time.
New offsets are read together in one batched assign/consume pass per distinct offset per
partition (a partition can be assigned only once per pass), all within one deadline.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable

from confluent_kafka import Consumer

from pipeline.config import KafkaSettings
from pipeline.kafka import Partition, read_records, reader, record_timestamp_seconds

log = logging.getLogger("treewatch.record_age")

Position = tuple[str, int, int]  # (topic, partition, offset)

# Only the first record at each offset is wanted: fetch little per partition so a pass over
# thousands of partitions does not pull megabytes it throws away, and do not let the broker hold
# a fetch open waiting for more. (Holding the prefetch queue to one message, queued.min.messages=1,
# was measured to make such a pass over a thousand partitions ten times slower.)
_READER_SETTINGS = {
    "max.partition.fetch.bytes": 4096,
    "fetch.wait.max.ms": 10,
}


class RecordTimestamps:
    def __init__(self, settings: KafkaSettings, read_timeout_seconds: float) -> None:
        self._settings = settings
        self._read_timeout = read_timeout_seconds
        self._consumer: Consumer | None = None
        self._known: dict[Position, float] = {}

    def lookup(self, positions: Iterable[Position], high: dict[Partition, int]) -> dict[Position, float]:
        """Timestamp (seconds) of the first record at or after each position below the partition's
        high watermark. Positions not read before the deadline are missing from the answer."""
        wanted = set(positions)
        found = {position: self._known[position] for position in wanted if position in self._known}
        missing = sorted(wanted - found.keys())
        if missing:
            found.update(self._read(missing, high))
        # Remember only what is still asked for: the cache follows the groups, it never grows.
        self._known = found
        return dict(found)

    def _read(self, missing: list[Position], high: dict[Partition, int]) -> dict[Position, float]:
        per_partition: dict[Partition, list[int]] = defaultdict(list)
        for topic, partition, offset in missing:
            per_partition[(topic, partition)].append(offset)
        deadline = time.monotonic() + self._read_timeout
        found: dict[Position, float] = {}
        round_index = 0
        while time.monotonic() < deadline:
            starts = {key: offsets[round_index] for key, offsets in per_partition.items()
                      if len(offsets) > round_index}
            if not starts:
                break
            for message in read_records(self._reader(), starts, high, deadline=deadline, first_only=True):
                timestamp = record_timestamp_seconds(message)
                if timestamp is not None:
                    key = (message.topic(), message.partition())
                    found[(key[0], key[1], starts[key])] = timestamp
            round_index += 1
        unread = len(missing) - len(found)
        if unread:
            log.warning("no record timestamp for %d of %d offsets within %gs; their age is left out",
                        unread, len(missing), self._read_timeout)
        return found

    def _reader(self) -> Consumer:
        if self._consumer is None:
            self._consumer = reader(self._settings, **_READER_SETTINGS)
        return self._consumer

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
