"""Prometheus' text exposition format (version 0.0.4) and OpenMetrics 1.0, written from a snapshot.

The same bytes prometheus_client's ``generate_latest`` (and its OpenMetrics twin, whose series are
spelt the same and whose headers differ) writes for the same families (the tests compare them on
every metric), written without building its family and sample objects first,
and incrementally: the text of a block of series (SeriesBlock: a group's per-topic series, or a
group and topic's per-partition ones) that did not change since the last rendering is re-used as
it was. At a million committed group-partitions that is most of the exposition, and most of it
does not move between two refreshes (a caught-up or stopped consumer commits the same offsets).
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Iterable

from prometheus_client.utils import floatToGoString

from exporter.metrics import METRICS, MetricDef, Sample, SeriesBlock
from exporter.snapshot import Series, Snapshot

_BlockKey = tuple[MetricDef, tuple[str, ...]]  # (metric, the labels its series share)


def escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def header(metric: MetricDef) -> str:
    text = metric.help.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {metric.name} {text}\n# TYPE {metric.name} {metric.kind.value}\n"


def openmetrics_header(metric: MetricDef) -> str:
    """OpenMetrics names a counter's family without _total, and escapes quotes in its help too."""
    return (f"# HELP {metric.family_name} {escape_label_value(metric.help)}\n"
            f"# TYPE {metric.family_name} {metric.kind.value}\n")


class _Family:
    """How one metric's lines are spelt: labels in name order, as prometheus_client writes them."""

    def __init__(self, metric: MetricDef) -> None:
        self.metric = metric
        self.header = header(metric).encode()
        self.openmetrics_header = openmetrics_header(metric).encode()
        self.order = sorted(range(len(metric.labels)), key=lambda index: metric.labels[index])

    def line(self, labels: tuple[str, ...], value: str) -> str:
        if not self.order:
            return f"{self.metric.name} {value}\n"
        names = self.metric.labels
        pairs = ",".join(f'{names[i]}="{escape_label_value(labels[i])}"' for i in self.order)
        return f"{self.metric.name}{{{pairs}}} {value}\n"

    def around_last(self, shared: tuple[str, ...]) -> tuple[str, str]:
        """The text of a line whose labels but the last are ``shared``, before and after the last
        label's (escaped) value."""
        marker = "\0"
        before, _, after = self.line((*shared, marker), "").partition(marker)
        return before, after.removesuffix("\n")


_FAMILIES = {metric: _Family(metric) for metric in METRICS}


class TextWriter:
    """Writes snapshots one after the other, keeping where the last one's blocks are in its text (both
    formats spell a series the same: writing a snapshot in the second format re-uses every block).

    What is kept is a view of each block's part of the last exposition, not a copy: the text of a
    block that did not change is copied once, from the last exposition into the next, and no more
    than two expositions are ever held (at a million series, each is over a hundred megabytes).
    """

    def __init__(self) -> None:
        self._blocks: dict[_BlockKey, tuple[SeriesBlock, memoryview]] = {}
        self._lock = threading.Lock()  # the formats may be rendered by two threads at once
        self.blocks_reused = 0  # in the last write (for tests and benchmarks)

    def write(self, snapshot: Snapshot, *, openmetrics: bool = False, trailer: bytes = b"") -> bytes:
        """The snapshot's series in the text format, or in OpenMetrics without its closing # EOF
        line, followed by ``trailer`` (more families, and the # EOF line: joined here rather than
        after, which would copy the whole exposition once more)."""
        with self._lock:
            return self._write(snapshot, openmetrics, trailer)

    def _write(self, snapshot: Snapshot, openmetrics: bool, trailer: bytes) -> bytes:
        parts: list[bytes | memoryview] = []
        placed: list[tuple[_BlockKey, SeriesBlock, int, int]] = []  # each block's key, and where its text is
        size = 0
        values: dict[float, str] = {}  # a value's text, once per write: lags and offsets repeat a lot
        self.blocks_reused = 0
        for metric in METRICS:
            items = snapshot.series.get(metric)
            if not items:
                continue
            family = _FAMILIES[metric]
            header = family.openmetrics_header if openmetrics else family.header
            parts.append(header)
            size += len(header)
            for text, block in self._family_text(family, items, values):
                if block is not None:
                    placed.append(((block.metric, block.labels), block, size, len(text)))
                parts.append(text)
                size += len(text)
        parts.append(trailer)
        body = b"".join(parts)
        view = memoryview(body)
        # Only what this snapshot has: the cache follows the groups.
        self._blocks = {key: (block, view[start:start + length]) for key, block, start, length in placed}
        return body

    def _family_text(self, family: _Family, items: Iterable[Series],
                     values: dict[float, str]) -> Iterable[tuple[bytes | memoryview, SeriesBlock | None]]:
        lines: list[str] = []
        for item in items:
            if isinstance(item, Sample):
                lines.append(family.line(item.labels, _go(item.value, values)))
                continue
            if lines:
                yield "".join(lines).encode(), None
                lines = []
            text = self._unchanged((item.metric, item.labels), item)
            if text is None:
                text = _block_text(family, item, values)
            else:
                self.blocks_reused += 1
            yield text, item
        if lines:
            yield "".join(lines).encode(), None

    def _unchanged(self, key: _BlockKey, block: SeriesBlock) -> memoryview | None:
        before = self._blocks.get(key)
        if before is None:
            return None
        previous, text = before
        # Compared as bytes: a thousand values in about a microsecond, where array's own == on
        # doubles goes value by value (it must, for NaN); the same bits are the same text.
        if previous.values.tobytes() == block.values.tobytes() and previous.last == block.last:
            return text
        return None


def _block_text(family: _Family, block: SeriesBlock, values: dict[float, str]) -> bytes:
    before, after = family.around_last(block.labels)
    if isinstance(block.last, array):  # partition numbers: nothing to escape
        lasts: Iterable[object] = block.last
    else:
        lasts = map(escape_label_value, block.last)
    return "".join([f"{before}{last}{after}{_go(value, values)}\n"
                    for last, value in zip(lasts, block.values, strict=True)]).encode()


def _go(value: float, known: dict[float, str]) -> str:
    if value == 0:
        return floatToGoString(value)  # -0.0 is written "-0.0", but equals 0.0 as a key
    text = known.get(value)
    if text is None:
        text = known[value] = floatToGoString(value)
    return text
