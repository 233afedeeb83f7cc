"""The file ``treewatch groups reset`` saves a group's committed offsets to before it changes them,
and restores them from (``--from-file``): the undo of a reset, like kafka-consumer-groups.sh's
``--export`` and ``--from-file``.

Format, JSON, version 1 (docs/saved-offsets.md)::

    {
      "format": "treewatch-group-offsets",
      "version": 1,
      "group": "stamping-generator-group",
      "cluster_id": "q1Sh-9_ISia_zwGINzRvyQ",
      "bootstrap_servers": "kafka:9092",
      "saved_at": "2026-01-31T12:00:00Z",
      "saved_before": "reset of dev.archon-intelligence.stamping.generate.v1 to earliest",
      "offsets": [
        {"topic": "dev.archon-intelligence.stamping.generate.v1", "partition": 0, "offset": 1234},
        {"topic": "dev.archon-intelligence.stamping.generate.v1", "partition": 1, "offset": null}
      ]
    }

``offset`` null: the group had no committed offset on that partition. ``cluster_id`` is Kafka's
own id of the cluster, so a file is never applied to another cluster by mistake (a staging file on
production, say); ``bootstrap_servers`` only helps a person find where it came from. A reader
refuses a file of another format or of a newer version, and anything that is not exactly this
shape: it is applied to live consumer groups.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.kafka import Partition
from tools import ToolError

FORMAT = "treewatch-group-offsets"
VERSION = 1
# A saved file holds one line per partition of a group: far below this even for thousands of them.
MAX_FILE_BYTES = 16 * 1024 * 1024
_FIELDS = {"format", "version", "group", "cluster_id", "bootstrap_servers", "saved_at", "saved_before", "offsets"}
_ENTRY_FIELDS = {"topic", "partition", "offset"}
# Kafka's own types: partitions are int32, offsets int64.
_MAX_PARTITION = 2**31 - 1
_MAX_OFFSET = 2**63 - 1


class SavedOffsetsError(ToolError):
    """A saved offsets file that cannot be written, read or used; the message names the file."""

    exit_code = 2  # bad input, as a malformed configuration


@dataclass(frozen=True)
class SavedOffsets:
    group: str
    cluster_id: str
    bootstrap_servers: str
    saved_at: str  # ISO 8601, UTC
    saved_before: str  # what the save preceded, e.g. "reset of <topic> to earliest"
    offsets: dict[Partition, int | None]  # None: no committed offset there

    def to_document(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "group": self.group, "cluster_id": self.cluster_id,
            "bootstrap_servers": self.bootstrap_servers, "saved_at": self.saved_at,
            "saved_before": self.saved_before,
            "offsets": [{"topic": topic, "partition": partition, "offset": offset}
                        for (topic, partition), offset in sorted(self.offsets.items())],
        }


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def default_path(group: str, moment: datetime) -> Path:
    """./treewatch-reset-<group>-<UTC time>.json; characters a file name should not hold become "_"."""
    safe_group = re.sub(r"[^A-Za-z0-9._-]", "_", group)[:100]
    return Path(f"treewatch-reset-{safe_group}-{moment:%Y%m%dT%H%M%SZ}.json")


def write_saved(path: Path, saved: SavedOffsets) -> None:
    """Write the file, never over an existing one (it may be the undo of an earlier reset), and make
    it durable before returning: the reset that follows must not outlive its undo."""
    text = json.dumps(saved.to_document(), indent=2) + "\n"
    try:
        with open(path, "x", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
    except FileExistsError:
        raise SavedOffsetsError(f"{path} already exists: not overwritten (choose another --save-to)") from None
    except OSError as error:
        raise SavedOffsetsError(f"cannot save the current offsets to {path}: {error.strerror or error}; "
                                f"nothing was changed") from None


def read_saved(path: Path) -> SavedOffsets:
    """The saved offsets in ``path``, or SavedOffsetsError saying what is wrong with the file."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise SavedOffsetsError(f"{path}: cannot read: {error.strerror or error}") from None
    if len(data) > MAX_FILE_BYTES:
        raise SavedOffsetsError(f"{path}: larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB: not a saved offsets file")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise SavedOffsetsError(f"{path}: not a saved offsets file (not JSON: {reason})") from None
    return _parse(document, path)


def _parse(document: Any, path: Path) -> SavedOffsets:
    def bad(reason: str) -> SavedOffsetsError:
        return SavedOffsetsError(f"{path}: {reason}")

    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise bad(f"not a saved offsets file (expected a JSON object with \"format\": \"{FORMAT}\")")
    version = document.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise bad(f"version {version!r} is not a format version")
    if version > VERSION:
        raise bad(f"format version {version} is newer than this treewatch reads ({VERSION}): use a newer treewatch")
    unknown = sorted(set(document) - _FIELDS)
    if unknown:
        raise bad(f"unknown field(s) {', '.join(unknown)} for format version {VERSION}")
    texts = {}
    for name in ("group", "cluster_id", "bootstrap_servers", "saved_at", "saved_before"):
        value = document.get(name)
        if not isinstance(value, str) or (name in ("group", "cluster_id") and not value):
            raise bad(f"{name}: expected a{' non-empty' if name in ('group', 'cluster_id') else ''} string")
        texts[name] = value
    entries = document.get("offsets")
    if not isinstance(entries, list) or not entries:
        raise bad("offsets: expected a non-empty list of {topic, partition, offset}")
    offsets: dict[Partition, int | None] = {}
    for index, entry in enumerate(entries):
        where = f"offsets[{index}]"
        if not isinstance(entry, dict) or set(entry) != _ENTRY_FIELDS:
            raise bad(f"{where}: expected exactly topic, partition and offset")
        topic, partition, offset = entry["topic"], entry["partition"], entry["offset"]
        if not isinstance(topic, str) or not topic:
            raise bad(f"{where}.topic: expected a topic name")
        if not _whole(partition, _MAX_PARTITION):
            raise bad(f"{where}.partition: expected a partition number (0 or more)")
        if offset is not None and not _whole(offset, _MAX_OFFSET):
            raise bad(f"{where}.offset: expected an offset (0 or more) or null")
        if (topic, partition) in offsets:
            raise bad(f"{where}: {topic}[{partition}] is listed twice")
        offsets[(topic, partition)] = offset
    return SavedOffsets(offsets=offsets, **texts)


def _whole(value: Any, most: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= most
