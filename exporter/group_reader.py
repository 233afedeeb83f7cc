"""Consumer-group reads in a child process of their own, replaced when it dies or stops answering.

librdkafka (2.16 is the newest release, and still has it) can abort the whole process from its
admin coordinator path: the assertion ``eonce->refcnt > 0`` in
``rd_kafka_enq_once_del_source_return`` fires when a coordinator-targeted request
(DescribeConsumerGroups, ListConsumerGroupOffsets) cannot be sent because the connection just
dropped, which is what happens around a broker that stops or comes back (librdkafka issue 4605;
the fix, pull request 5397, is not in a release). An ``abort()`` cannot be caught in Python, and
the same admin client has also been seen to stay stuck after a broker restart, its group reads
failing for minutes.

These reads are the only coordinator-targeted calls the exporter makes, so they run here, in a
spawned process that holds its own admin client. When that process dies, or does not answer by the
gather's deadline, the groups collector fails for that refresh (its last values are served for the
grace period, like any collector's), the process is replaced by a fresh one with a fresh client,
and the exporter goes on. Everything the exporter builds from the reads (when offsets last moved,
the groups held while their coordinator is away) stays in the exporter's own process, so a
replaced reader loses nothing.

The reader is a fresh interpreter (``python -m exporter.group_reader``), not a fork: the exporter
has librdkafka threads running, and a forked child would inherit their locks in whatever state
they were. Nor is it multiprocessing's "spawn", which imports the parent's main module again in the
child. Requests and answers are pickled over a socket pair; the settings (secrets included) travel
the same way, never on a command line.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

from exporter.kafka_groups import GroupInfo, GroupsRead, fetch_groups
from pipeline.config import KafkaSettings
from pipeline.kafka import admin_client

log = logging.getLogger("treewatch.group_reader")

# Of the time a read is given, the part kept for sending the answer back (a large answer is
# pickled and sent after fetch_groups returns), at most this many seconds.
_ANSWER_MARGIN_SECONDS = 2.0
# How often a wait for the reader looks whether the exporter is stopping.
_POLL_SLICE_SECONDS = 0.25
_EXIT_WAIT_SECONDS = 2.0
# A client whose reads keep coming back partial this many times in a row is replaced: after a
# broker restart, a long-lived admin client has been seen to go on failing some of its groups for
# minutes while a fresh one read them all at once.
PARTIAL_READS_BEFORE_REPLACING = 3


class GroupReadError(Exception):
    """An error met in the reader process, carried back as its text: librdkafka's error objects
    do not survive pickling, and only their text is ever shown."""


class GroupReaderLost(RuntimeError):
    """The reader process died or stopped answering; a new one is started on the next read."""


class IsolatedGroupReader:
    """``fetch_groups`` run in a supervised child process: same arguments, same result."""

    def __init__(self, kafka: KafkaSettings, allowed: Callable[[str], bool], request_timeout: float, concurrency: int,
                 *, interrupted: threading.Event | None = None) -> None:
        self._arguments = (kafka, allowed, request_timeout, concurrency, logging.getLogger().getEffectiveLevel())
        self._interrupted = interrupted or threading.Event()
        self._process: subprocess.Popen | None = None
        self._connection: Connection | None = None
        self._starts = 0
        self._partial_reads = 0
        self._asked = False  # a request was sent and its answer not yet received
        self._deadline = 0.0

    @property
    def replacements(self) -> int:
        """Reader processes started after the first one."""
        return max(0, self._starts - 1)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        """Start the reader process now rather than on the first read (spawning takes a moment)."""
        if self._process is not None and self._process.poll() is None:
            return
        self._discard()
        self._starts += 1
        parent_end, child_end = socket.socketpair()
        with parent_end, child_end:
            # The reader imports this package the way the exporter did, installed or not.
            environ = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
            process = subprocess.Popen([sys.executable, "-m", "exporter.group_reader", str(child_end.fileno())],
                                       pass_fds=(child_end.fileno(),), stdin=subprocess.DEVNULL, env=environ)
            connection = Connection(parent_end.detach())
        connection.send(self._arguments)
        self._process, self._connection = process, connection

    def read(self, deadline: float) -> GroupsRead:
        """The groups, read by the child and answered by ``deadline`` (time.monotonic()); a reader
        that has not answered by then is taken for wedged and replaced."""
        self.begin(deadline)
        return self.answer()

    def begin(self, deadline: float) -> None:
        """Ask the reader for the groups and return at once: the exporter reads the watermarks while
        the reader reads the groups (``answer()`` then waits for them)."""
        if self._asked:  # the last request was never answered: its answer would come first
            self._discard()
        self.start()
        assert self._connection is not None
        self._deadline = deadline
        budget = max(0.0, deadline - time.monotonic())
        try:
            self._connection.send(budget - min(_ANSWER_MARGIN_SECONDS, budget / 4))
        except (OSError, BrokenPipeError):
            self._asked = False  # answer() finds the reader gone and says how
        else:
            self._asked = True

    def answer(self) -> GroupsRead:
        """The answer to ``begin()``'s request, by its deadline."""
        try:
            if not self._asked or self._connection is None:
                raise EOFError
            self._asked = False
            while not self._connection.poll(_POLL_SLICE_SECONDS):
                if self._interrupted.is_set() or time.monotonic() >= self._deadline:
                    reason = ("the exporter is stopping" if self._interrupted.is_set()
                              else "it did not answer by the refresh's deadline")
                    self._discard()
                    raise GroupReaderLost(f"consumer-group reader replaced: {reason}")
            outcome = self._connection.recv()
        except (EOFError, OSError, BrokenPipeError):
            ended = self._exit_description()
            self._discard()
            log.warning("the consumer-group reader process died (%s); the groups of this refresh are "
                        "missing, a new reader starts on the next one", ended)
            raise GroupReaderLost(f"consumer-group reader process died ({ended}); replaced") from None
        if isinstance(outcome, BaseException):
            self._discard()  # nothing could be read: the next read starts with a fresh client
            raise outcome
        self._partial_reads = self._partial_reads + 1 if outcome.error_count else 0
        if self._partial_reads >= PARTIAL_READS_BEFORE_REPLACING:
            log.info("%d partial consumer-group reads in a row: the next read starts with a fresh client",
                     self._partial_reads)
            self._partial_reads = 0
            self._discard()
        return outcome

    def close(self) -> None:
        if self._connection is not None and self._process is not None and self._process.poll() is None:
            try:
                self._connection.send(None)  # asks the reader to leave
            except OSError:
                pass
        self._discard(wait=_EXIT_WAIT_SECONDS)

    def _exit_description(self) -> str:
        process = self._process
        if process is None:
            return "not running"
        try:
            code = process.wait(_EXIT_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def _discard(self, wait: float = 0.0) -> None:
        process, connection = self._process, self._connection
        self._process = self._connection = None
        if connection is not None:
            connection.close()
        if process is not None:
            try:
                process.wait(wait)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(_EXIT_WAIT_SECONDS)


def _portable(read: GroupsRead) -> GroupsRead:
    return GroupsRead([GroupInfo(info.group, info.state, info.members, info.assigned_topics, dict(info.committed),
                                 info.committed_read) for info in read.groups],
                      {step: [_portable_error(error) for error in errors] for step, errors in read.errors.items()})


def _portable_error(error: BaseException) -> BaseException:
    if isinstance(error, TimeoutError):
        return TimeoutError(str(error))
    return GroupReadError(str(error) or type(error).__name__)


def _serve(connection: Connection) -> None:
    """The reader process: one read per request, until asked to leave or the exporter is gone."""
    # Ctrl-C reaches the whole process group; the exporter decides when its reader ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        kafka, allowed, request_timeout, concurrency, log_level = connection.recv()
    except (EOFError, OSError):
        return
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s (group reader): %(message)s")
    admin = admin_client(kafka)
    while True:
        try:
            budget = connection.recv()
        except (EOFError, OSError):
            return  # the exporter is gone
        if budget is None:
            return
        try:
            answer: GroupsRead | BaseException = _portable(
                fetch_groups(admin, allowed, request_timeout, concurrency, deadline=time.monotonic() + budget))
        except Exception as error:  # sent back: the exporter decides what a failure means
            answer = _portable_error(error)
        try:
            connection.send(answer)
        except (EOFError, OSError):
            return


if __name__ == "__main__":
    # Served from the module under its own name, so that what the reader pickles (GroupReadError)
    # names a class the exporter can find, not one of "__main__".
    from exporter.group_reader import _serve as serve

    serve(Connection(int(sys.argv[1])))
