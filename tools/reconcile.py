"""Reconcile one project (or correlation id): which discovered files never reached the last stage's
completed topic, where each stopped, and the command that re-drives them (the guide's Issue 3,
"Missing files in search results").

Every topic of every stage is scanned once over a bounded range (tools.event_scan: from --since or
the log start to the high watermarks taken at the start). The stage counts are the request
follower's (tools.request_journey.RequestFollower.count, fed the scanned records): discovered,
completed per stage, failed and dead-lettered. Files are told apart by ``file_path``; a file is
known from any record about it, its requests included (the first stage's completed event only
says how many files it found). A file that has no completed event of the last stage stopped at the
first stage after discovery that did not complete it, as:

- ``dead-lettered``: that stage dead-lettered it (the DLQ's error_type); ``treewatch dlq replay``
  re-drives it;
- ``failed``: a failed event without a dead letter (its error); ``treewatch replay`` re-drives it;
- ``no event``: its request was consumed (or never written) and nothing came of it: the guide's
  "event lost in transit"; ``treewatch replay`` re-drives it;
- ``waiting``: its request is still in the request topic, not yet consumed by the stage's group
  (lag, a stalled consumer): nothing to re-drive, replaying would only double it.

The replay command re-drives from the completed topic of the stage before (or the stage's own
request topic, after the first file stage) with ``--only-missing``, so files that were completed
or dead-lettered meanwhile are not sent again, and neither command overlaps the other.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field

from confluent_kafka import Message

from pipeline.config import Config, Stage
from pipeline.events import MAX_ERROR_TYPE_CHARS, MAX_TEXT_CHARS, parse_dead_letter, payload_of, safe_text
from pipeline.kafka import KafkaSession, Partition, fetch_committed_offsets, iter_records
from pipeline.kafka_errors import DEFAULT_RETRY_SECONDS
from tools.event_scan import EventSelector, ScanRange, Unreadable, read_event, scan_range
from tools.request_journey import FOLLOWED_ROLES, Progress, RequestFollower, file_path_of

DEAD_LETTERED = "dead-lettered"
FAILED = "failed"
NO_EVENT = "no event"
WAITING = "waiting"


@dataclass(frozen=True)
class StoppedFile:
    file_path: str
    correlation_id: str | None
    stage: str  # the first stage after discovery that did not complete it
    status: str  # DEAD_LETTERED, FAILED, NO_EVENT or WAITING
    error_type: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class Redrive:
    """One command that re-drives ``files`` files stopped at ``stage`` with ``status``: ``command``
    as a dry run (what it would do), ``execute`` doing it."""

    stage: str
    status: str
    files: int
    command: tuple[str, ...]
    execute: tuple[str, ...]


@dataclass(frozen=True)
class Reconciliation:
    selector: str
    correlation_ids: tuple[str, ...]
    progress: Progress  # the request follower's counts over the scanned records
    files_seen: int  # distinct files any record names
    stopped: tuple[StoppedFile, ...]
    unnamed_missing: int  # discovered files no record names at all
    redrive: tuple[Redrive, ...]
    records_read: int
    unreadable: Unreadable
    missing_topics: tuple[str, ...]
    complete: bool  # the scan reached every end before its deadline

    @property
    def found(self) -> bool:
        return self.progress.discovered is not None or self.progress.discovery_failed or self.files_seen > 0

    @property
    def all_finished(self) -> bool:
        return (self.complete and self.found and not self.progress.discovery_failed and not self.stopped
                and self.unnamed_missing == 0)


@dataclass
class FileTrails:
    """What the scanned records say of each file, per stage."""

    request_offsets: dict[str, dict[str, tuple[Partition, int]]] = field(default_factory=lambda: defaultdict(dict))
    completed: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    failed: dict[str, dict[str, tuple[str | None, str | None]]] = field(default_factory=lambda: defaultdict(dict))
    dead_lettered: dict[str, dict[str, tuple[str | None, str | None]]] = field(
        default_factory=lambda: defaultdict(dict))
    correlation_of: dict[str, str | None] = field(default_factory=dict)

    def add(self, record: Message, stage: str, role: str, event: dict) -> None:
        path = file_path_of(record, role)
        if path is None:
            return
        fields = payload_of(event)
        self.correlation_of.setdefault(path, safe_text(fields.get("correlation_id"), MAX_TEXT_CHARS))
        if role == "request":
            self.request_offsets[stage][path] = ((record.topic(), record.partition()), record.offset())
        elif role == "completed":
            self.completed[stage].add(path)
        elif role == "failed":
            self.failed[stage][path] = (safe_text(fields.get("error_type"), MAX_ERROR_TYPE_CHARS),
                                        safe_text(fields.get("error_message"), MAX_TEXT_CHARS))
        elif role == "dlq":
            letter = parse_dead_letter(record.value())
            self.dead_lettered[stage][path] = (letter.error_type, letter.error_message)
            original = letter.original_payload if isinstance(letter.original_payload, dict) else None
            self.correlation_of[path] = self.correlation_of[path] or letter.correlation_id or \
                safe_text(payload_of(original).get("correlation_id"), MAX_TEXT_CHARS)

    @property
    def files(self) -> set[str]:
        return set(self.correlation_of)

    def outcome_at(self, stage: str, path: str) -> tuple[str, str | None, str | None] | None:
        """(status, error type, error message) of a file at a stage that did not complete it; None
        when it did."""
        if path in self.completed[stage]:
            return None
        if path in self.dead_lettered[stage]:
            return (DEAD_LETTERED, *self.dead_lettered[stage][path])
        if path in self.failed[stage]:
            return (FAILED, *self.failed[stage][path])
        return NO_EVENT, None, None


def stage_topics(stages: list[Stage], roles: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """topic → (stage, role) of the ``roles`` (request, completed, failed, dlq) topics of ``stages``."""
    return {getattr(stage, f"{role}_topic"): (stage.name, role) for stage in stages for role in roles}


def scan_trails(kafka: KafkaSession, selector: EventSelector, topic_roles: dict[str, tuple[str, str]],
                since: float | None, deadline: float, follower: RequestFollower | None = None,
                ) -> tuple[FileTrails, ScanRange, Unreadable, int, bool]:
    """(trails, range scanned, unreadable records, records read, whether the scan completed) of the
    selected records of ``topic_roles`` (stage_topics()); ``follower`` is fed those of its topics."""
    scan = scan_range(kafka, topic_roles, since, deadline)
    trails, unreadable, read = FileTrails(), Unreadable(), 0
    records = iter_records(kafka.reader(), scan.starts, scan.ends, deadline=deadline)
    with contextlib.closing(records):
        for record in records:
            read += 1
            event = read_event(record, unreadable)
            if event is None or not selector.matches(event):
                continue
            stage, role = topic_roles[record.topic()]
            if follower is not None and role in FOLLOWED_ROLES:
                follower.count(record)
            trails.add(record, stage, role, event)
    return trails, scan, unreadable, read, time.monotonic() < deadline


def reconcile(config: Config, selector: EventSelector, *, since: float | None = None,
              connection_options: tuple[str, ...] = (), timeout_seconds: float = 300.0) -> Reconciliation:
    """Reconcile the selected events of every stage (see the module docstring). ``connection_options``:
    the options naming the cluster (--config, ...) that the printed commands carry."""
    deadline = time.monotonic() + timeout_seconds
    first, file_stages = config.stages[0], list(config.stages[1:])
    # The request follower counts the records it is given; its correlation id only names the run.
    follower = RequestFollower(config, selector.correlation_id or str(selector))
    with KafkaSession(config.kafka) as kafka:
        # The first stage's requests are about the project, not files: the follower's topics of every
        # stage, and the requests of the others.
        topics = {**stage_topics(list(config.stages), FOLLOWED_ROLES), **stage_topics(file_stages, ("request",))}
        trails, scan, unreadable, read, complete = scan_trails(kafka, selector, topics, since, deadline, follower)
        stopped = _stopped_files(trails, file_stages)
        stopped = _waiting_told_apart(kafka, config, trails, stopped, deadline)
    progress = follower.progress()
    known = trails.files
    discovered = progress.discovered
    unnamed = max(0, discovered - len(known)) if discovered is not None else 0
    redrive = _redrive_commands(config, selector, stopped, since, connection_options)
    if progress.discovery_failed:
        redrive = (_dlq_redrive(first, DEAD_LETTERED, 1, selector.correlation_id, connection_options), *redrive) \
            if selector.correlation_id is not None else redrive
    correlation_ids = tuple(sorted({c for c in trails.correlation_of.values() if c is not None}))
    return Reconciliation(str(selector), correlation_ids, progress, len(known), tuple(stopped), unnamed,
                          tuple(redrive), read, unreadable, scan.missing_topics, complete)


def _stopped_files(trails: FileTrails, file_stages: list[Stage]) -> list[StoppedFile]:
    stopped = []
    for path in sorted(trails.files):
        for stage in file_stages:
            outcome = trails.outcome_at(stage.name, path)
            if outcome is not None:
                status, error_type, message = outcome
                stopped.append(StoppedFile(path, trails.correlation_of.get(path), stage.name, status,
                                           error_type, message))
                break
    return stopped


def _waiting_told_apart(kafka: KafkaSession, config: Config, trails: FileTrails, stopped: list[StoppedFile],
                        deadline: float) -> list[StoppedFile]:
    """Files with no outcome whose request the stage's group has not consumed yet are waiting, not lost."""
    quiet = [f for f in stopped if f.status == NO_EVENT and f.file_path in trails.request_offsets[f.stage]]
    if not quiet:
        return stopped
    groups = {stage.name: stage.group for stage in config.stages}
    timeout = config.kafka.request_timeout_seconds
    committed = fetch_committed_offsets(kafka.admin, {groups[f.stage] for f in quiet}, timeout, concurrency=4,
                                        deadline=min(deadline, time.monotonic() + DEFAULT_RETRY_SECONDS))
    result = []
    for file in stopped:
        request = trails.request_offsets[file.stage].get(file.file_path) if file.status == NO_EVENT else None
        offsets = committed.get(groups[file.stage]) if request is not None else None
        if request is not None and isinstance(offsets, dict):
            key, offset = request
            if offsets.get(key, -1) <= offset:
                file = StoppedFile(file.file_path, file.correlation_id, file.stage, WAITING)
        result.append(file)
    return result


def _redrive_commands(config: Config, selector: EventSelector, stopped: list[StoppedFile], since: float | None,
                      connection_options: tuple[str, ...]) -> list[Redrive]:
    commands: list[Redrive] = []
    stages = list(config.stages)
    by_stage: dict[tuple[str, str], list[StoppedFile]] = defaultdict(list)
    for file in stopped:
        by_stage[(file.stage, file.status)].append(file)
    for (stage_name, status), files in by_stage.items():
        stage = config.stage(stage_name)
        if status == DEAD_LETTERED:
            # dlq replay selects by correlation id only: one command per correlation id.
            per_id: dict[str | None, int] = defaultdict(int)
            for file in files:
                per_id[file.correlation_id] += 1
            commands += [_dlq_redrive(stage, status, count, correlation, connection_options)
                         for correlation, count in per_id.items() if correlation is not None]
        elif status in (FAILED, NO_EVENT):
            index = stages.index(stage)
            previous = stages[index - 1]
            # The first stage's completed event counts files, it does not carry them: after it, the
            # stage's own requests are what can be sent again.
            source = stage.request_topic if index == 1 else previous.completed_topic
            command = ["treewatch", "replay", "--from-topic", source, "--to-stage", stage.name, *selector.options,
                       "--only-missing"]
            if since is not None:
                command += ["--since", _iso(since)]
            command += connection_options
            commands.append(Redrive(stage.name, status, len(files), tuple(command), (*command, "--execute")))
    return commands


def _dlq_redrive(stage: Stage, status: str, files: int, correlation: str | None,
                 connection_options: tuple[str, ...]) -> Redrive:
    command = ["treewatch", "dlq", "replay", "--stage", stage.name, "--correlation-id", str(correlation),
               *connection_options]
    return Redrive(stage.name, status, files, (*command, "--dry-run"), (*command, "--execute"))


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
