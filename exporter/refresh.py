"""The refresh side: sources gather in the background; every run yields a new snapshot.

Each source (Kafka, service health) runs in its own thread on its own clock, so a broker that
hangs never holds back health probes, and a failing collector never takes another down. After
every run the whole snapshot is rebuilt from the latest results and swapped in; a scrape only
reads it. A collector that fails keeps serving its last good samples for ``stale_grace_seconds``
(its age visible in ``treewatch_collector_last_success_timestamp_seconds``), then its series
disappear rather than lie.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from exporter.metrics import (
    TREEWATCH_BUILD_INFO,
    TREEWATCH_COLLECTOR_DURATION_SECONDS,
    TREEWATCH_COLLECTOR_ERRORS_TOTAL,
    TREEWATCH_COLLECTOR_LAST_SUCCESS_TIMESTAMP_SECONDS,
    TREEWATCH_COLLECTOR_SUCCESS,
    TREEWATCH_SERIES_DROPPED,
    Part,
    Sample,
)
from exporter.snapshot import CollectorRun, Snapshot

log = logging.getLogger("treewatch.refresh")


class Source(Protocol):
    """Something that gathers one or more collectors' samples in one pass."""

    name: str
    collectors: tuple[Part, ...]

    def gather(self) -> Mapping[Part, Sequence[Sample] | BaseException]:
        """Samples per collector, or the exception that collector met. May also raise: then
        every collector of the source counts as failed with that error."""
        ...

    def close(self) -> None: ...


def interrupt(source: Source) -> None:
    """Ask a source's gather in progress to end early, if the source can (a source may define
    ``interrupt()``; one that gathers quickly need not)."""
    hook = getattr(source, "interrupt", None)
    if callable(hook):
        hook()


@dataclass
class _CollectorState:
    last_run: CollectorRun | None = None
    last_good: CollectorRun | None = None
    errors: int = 0
    reported_error: str | None = None


def describe_error(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return f"{type(error).__name__}: {text}" if not text.startswith(type(error).__name__) else text


class Refresher:
    """Runs the sources, keeps the latest snapshot in ``current``."""

    def __init__(
        self,
        sources: Sequence[Source],
        *,
        interval_seconds: float,
        stale_grace_seconds: float,
        max_series: int,
        build_info: Mapping[str, str],
        clock: Callable[[], float] = time.time,
        on_snapshot: Callable[[], None] | None = None,
    ) -> None:
        self.sources = list(sources)
        # Called in the refresh thread after each new snapshot, outside the lock (the renderer
        # renders it there, so that no scrape has to).
        self.on_snapshot = on_snapshot
        self.interval_seconds = interval_seconds
        self.stale_grace_seconds = stale_grace_seconds
        self.max_series = max_series
        self.build_info = dict(build_info)
        self.clock = clock
        self.current: Snapshot = Snapshot.empty()
        self._states: dict[Part, _CollectorState] = {
            c: _CollectorState() for s in self.sources for c in s.collectors
        }
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sources_without_a_run = len(self.sources)
        self._ready = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        for source in self.sources:
            thread = threading.Thread(target=self._loop, args=(source,), name=f"refresh-{source.name}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        if not self.sources:
            self._rebuild()
            self._ready.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the loops within ``timeout`` in all, then close the sources whose loop has ended.

        A source whose gather is still running is left open: closing a Kafka client another
        thread is reading from crashes or hangs the process. Its thread is a daemon; it ends with
        the process.
        """
        self._stop.set()
        for source in self.sources:
            interrupt(source)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        # Threads were started one per source, in the sources' order; run_once() starts none.
        running = {id(source) for source, thread in zip(self.sources, self._threads, strict=False)
                   if thread.is_alive()}
        for source in self.sources:
            if id(source) in running:
                log.warning("source %s did not stop within %gs; left open", source.name, timeout)
                continue
            try:
                source.close()
            except Exception:  # closing is best effort; the process is leaving anyway
                log.exception("closing source %s failed", source.name)

    @property
    def ready(self) -> bool:
        """True once every source has finished one run (successful or not)."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def run_once(self) -> Snapshot:
        """Run every source once in this thread (for tools, tests and benchmarks)."""
        for source in self.sources:
            self._run(source)
        self._ready.set()
        return self.current

    # -- the loop --------------------------------------------------------------------------------

    def _loop(self, source: Source) -> None:
        first = True
        while not self._stop.is_set():
            started = time.monotonic()
            ok = False
            try:
                ok = self._run(source)
            except Exception:  # a bug in building the snapshot must not end this source's refreshes
                log.exception("refresh of source %s failed", source.name)
            if first:
                first = False
                self._arrive_first_run()
            # After a failure, a whole interval of rest: a failed run may have taken the interval
            # itself (waiting on a down broker), and starting the next at once would be a hot loop.
            pause = self.interval_seconds if not ok else self.interval_seconds - (time.monotonic() - started)
            self._stop.wait(max(0.0, pause))

    def _arrive_first_run(self) -> None:
        with self._lock:
            self._sources_without_a_run -= 1
            if self._sources_without_a_run == 0:
                self._ready.set()

    def _run(self, source: Source) -> bool:
        """One gather of ``source`` into the snapshot; True when every collector of it succeeded."""
        started_at = self.clock()
        started = time.monotonic()
        try:
            results: Mapping[Part, Sequence[Sample] | BaseException] = source.gather()
        except Exception as error:  # one bad run must not end the loop
            results = {collector: error for collector in source.collectors}
        if self._stop.is_set() and self._threads:
            return False  # stopping: a gather cut short is no failure worth reporting
        duration = time.monotonic() - started
        runs = []
        for collector in source.collectors:
            result = results.get(collector, RuntimeError(f"source {source.name} returned nothing for it"))
            if isinstance(result, BaseException):
                runs.append(CollectorRun(collector, (), describe_error(result), started_at, duration))
                self._report_failure(collector, result)
            else:
                runs.append(CollectorRun(collector, tuple(result), None, started_at, duration))
        with self._lock:
            for run in runs:
                state = self._states[run.collector]
                state.last_run = run
                if run.ok:
                    state.last_good = run
                    if state.reported_error is not None:
                        log.info("collector %s recovered", run.collector.value)
                        state.reported_error = None
                else:
                    state.errors += 1
            self._rebuild()
        if self.on_snapshot is not None:
            self.on_snapshot()
        return all(run.ok for run in runs)

    def _report_failure(self, collector: Part, error: BaseException) -> None:
        """Log a failure once with its context; the same failure again is only counted."""
        state = self._states[collector]
        described = describe_error(error)
        if state.reported_error == described:
            return
        state.reported_error = described
        log.warning("collector %s failed: %s (logged once; counted in treewatch_collector_errors_total)",
                    collector.value, described,
                    # The error itself, not True: this runs outside the except block, where True
                    # would print "NoneType: None" instead of the stack.
                    exc_info=error if not isinstance(error, (OSError, TimeoutError))
                    and log.isEnabledFor(logging.DEBUG) else None)

    # -- snapshot --------------------------------------------------------------------------------

    def _rebuild(self) -> None:
        now = self.clock()
        served: list[tuple[Part, tuple[Sample, ...]]] = []
        for collector, state in self._states.items():
            good = state.last_good
            if good is not None and now - (good.started_at + good.duration_seconds) <= self.stale_grace_seconds:
                served.append((collector, good.samples))
        snapshot = Snapshot.build(served, built_at=now, max_series=self.max_series)
        # The exporter's own series are outside the cap: they are what tells that the cap bit.
        self.current = snapshot.with_samples(self._own_samples(snapshot))

    def _own_samples(self, snapshot: Snapshot) -> list[Sample]:
        own = [TREEWATCH_BUILD_INFO.sample(1, **self.build_info)]
        for collector, state in self._states.items():
            name = collector.value
            run = state.last_run
            if run is None:
                continue
            own.append(TREEWATCH_COLLECTOR_SUCCESS.sample(1 if run.ok else 0, collector=name))
            own.append(TREEWATCH_COLLECTOR_DURATION_SECONDS.sample(run.duration_seconds, collector=name))
            own.append(TREEWATCH_COLLECTOR_ERRORS_TOTAL.sample(state.errors, collector=name))
            own.append(TREEWATCH_SERIES_DROPPED.sample(snapshot.dropped.get(collector, 0), collector=name))
            if state.last_good is not None:
                finished = state.last_good.started_at + state.last_good.duration_seconds
                own.append(TREEWATCH_COLLECTOR_LAST_SUCCESS_TIMESTAMP_SECONDS.sample(finished, collector=name))
        return own

    def collector_status(self) -> dict[str, dict[str, object]]:
        """Per collector: ok, last error, last success (for the landing page and logs)."""
        with self._lock:
            return {
                collector.value: {
                    "ok": state.last_run.ok if state.last_run else None,
                    "error": state.last_run.error if state.last_run else None,
                    "last_success": state.last_good.started_at if state.last_good else None,
                    "errors": state.errors,
                }
                for collector, state in self._states.items()
            }


def default_build_info(version: str) -> dict[str, str]:
    import confluent_kafka

    return {
        "version": version,
        "python_version": platform.python_version(),
        "librdkafka_version": confluent_kafka.libversion()[0],
    }
