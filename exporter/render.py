"""The scrape side: a snapshot rendered in Prometheus' text exposition format or in OpenMetrics.

A snapshot never changes, so its exposition is rendered once per format, compressed once when a
scraper asks for gzip, and the same bytes serve every scrape until the next snapshot arrives:
two Prometheus servers scraping cost one rendering, not two, and a scrape copies nothing. The
process metrics of prometheus_client (memory, CPU, open files) are sampled into each rendering,
so they are as fresh as the snapshot.

Rendering a large snapshot takes a while (about half a second for 7 MB, holding the GIL), so it
happens on the refresh side (``Renderer.prerender``) as soon as a snapshot is swapped in; a
scrape arriving meanwhile is answered with the rendering before, never made to wait for it.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.process_collector import ProcessCollector

from exporter.snapshot import Snapshot
from exporter.text_format import TextWriter

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_OPENMETRICS_EOF = b"# EOF\n"
_GZIP_LEVEL = 6  # zlib's default: 7 MB of exposition in about 40 ms, to about 1/18 of its size


class Format(Enum):
    """An exposition format, by the Content-Type it is served with."""

    TEXT = CONTENT_TYPE
    OPENMETRICS = openmetrics.CONTENT_TYPE_LATEST


@dataclass(frozen=True)
class Exposition:
    """What a scrape is answered with; ``body`` is shared by every scrape of the same snapshot."""

    content_type: str
    content_encoding: str | None
    body: bytes


def render(snapshot: Snapshot) -> bytes:
    """The snapshot in the text exposition format (version 0.0.4)."""
    return TextWriter().write(snapshot)


def render_openmetrics(snapshot: Snapshot) -> bytes:
    """The snapshot in OpenMetrics 1.0, ``# EOF`` line included."""
    return TextWriter().write(snapshot, openmetrics=True, trailer=_OPENMETRICS_EOF)


class _Rendering:
    """One snapshot in one format, with its gzip form once a scraper has asked for it."""

    def __init__(self, snapshot: Snapshot, body: bytes) -> None:
        self.snapshot = snapshot
        self.body = body
        self._gzipped: bytes | None = None
        self._gzip_lock = threading.Lock()

    def gzipped(self) -> bytes:
        with self._gzip_lock:  # concurrent gzip scrapes share one compression
            if self._gzipped is None:
                # zlib releases the GIL while it compresses: other scrapes go on meanwhile.
                compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
                self._gzipped = compressor.compress(self.body) + compressor.flush()
            return self._gzipped


class Renderer:
    """The current snapshot's exposition, rendered at most once per snapshot and format."""

    def __init__(self, current: Callable[[], Snapshot]) -> None:
        self._current = current
        self._lock = threading.Condition()
        self._latest: dict[Format, _Rendering] = {}
        self._in_progress: set[Format] = set()
        # What prerender() prepares: the classic format from the start (every scraper reads it),
        # anything else once some scraper has asked for it.
        self._formats_asked: set[Format] = {Format.TEXT}
        self._gzip_asked: set[Format] = set()
        self._process = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self._process)
        # Both formats: they spell each series the same, so the second re-uses the first's text.
        self._text_writer = TextWriter()

    def exposition(self, fmt: Format = Format.TEXT, *, gzip: bool = False) -> Exposition:
        """The current snapshot's exposition; while its rendering is in progress in another thread,
        the previous snapshot's."""
        with self._lock:
            self._formats_asked.add(fmt)
            if gzip:
                self._gzip_asked.add(fmt)
        rendering = self._rendering(fmt, wait_for_newest=False)
        if gzip:
            return Exposition(fmt.value, "gzip", rendering.gzipped())
        return Exposition(fmt.value, None, rendering.body)

    def metrics_text(self) -> bytes:
        """The text exposition of the current snapshot."""
        return self.exposition().body

    def prerender(self) -> None:
        """Render the current snapshot in every format and encoding scrapers have asked for, so
        that no scrape pays for it. Called by the refresh side after each new snapshot."""
        with self._lock:
            wanted = [(fmt, fmt in self._gzip_asked) for fmt in self._formats_asked]
        for fmt, gzip in wanted:
            rendering = self._rendering(fmt, wait_for_newest=True)
            if gzip:
                rendering.gzipped()

    def _rendering(self, fmt: Format, *, wait_for_newest: bool) -> _Rendering:
        with self._lock:
            while True:
                # Read under the lock, so a rendering never replaces one of a newer snapshot.
                snapshot = self._current()
                latest = self._latest.get(fmt)
                if latest is not None and latest.snapshot is snapshot:
                    return latest
                if fmt not in self._in_progress:
                    self._in_progress.add(fmt)
                    gzip = fmt in self._gzip_asked
                    break
                if latest is not None and not wait_for_newest:
                    return latest
                self._lock.wait()  # for the rendering in progress, then look again
        rendering = None
        try:
            rendering = _Rendering(snapshot, self._render(fmt, snapshot))
            if gzip:
                rendering.gzipped()  # before it is published: no scrape waits for the compression
        finally:
            with self._lock:
                self._in_progress.discard(fmt)
                if rendering is not None:
                    self._latest[fmt] = rendering
                self._lock.notify_all()
        return rendering

    def _render(self, fmt: Format, snapshot: Snapshot) -> bytes:
        if fmt is Format.TEXT:
            return self._text_writer.write(snapshot, trailer=generate_latest(self._process))
        # One "# EOF" ends an OpenMetrics exposition: the process metrics' (which end with it).
        return self._text_writer.write(snapshot, openmetrics=True, trailer=openmetrics.generate_latest(self._process))
