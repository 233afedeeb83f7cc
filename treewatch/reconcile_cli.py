"""``treewatch reconcile``: a project's (or correlation id's) files discovered vs completed per
stage, which never finished, where each stopped and the command that re-drives them (argument
parsing and output only; tools/reconcile.py does it)."""

from __future__ import annotations

import argparse
import shlex
from dataclasses import asdict

from pipeline.config import Config
from treewatch.exit_codes import ExitCode
from treewatch.replay_cli import add_selector_options, connection_words
from treewatch.tools_cli import add_kafka_options, dash, guarded, positive_float, print_json, utc_time


def add_reconcile_command(sub: argparse._SubParsersAction) -> None:
    reconcile = sub.add_parser(
        "reconcile", help="which files of a project never reached the last stage, where they stopped, how to "
                          "re-drive them",
        description="Reads every stage's topics (up to their high watermarks at the start) for one correlation id "
                    "or project: files discovered, completed per stage, failed and dead-lettered; lists the files "
                    "the last stage never completed with the stage they stopped at (dead-lettered with the DLQ's "
                    "error type, failed with its error, no event at all, or waiting unconsumed in the request "
                    "topic) and the treewatch replay / dlq replay commands that re-drive them. Exit 0 when every "
                    "discovered file reached the end, 1 otherwise.")
    add_kafka_options(reconcile)
    add_selector_options(reconcile)
    reconcile.add_argument("--timeout", type=positive_float, default=300.0, metavar="SECONDS",
                           help="give up reading after this long (default %(default)g)")
    reconcile.add_argument("--json", action="store_true", help="print one JSON document")
    reconcile.set_defaults(run=guarded(_reconcile))


def _reconcile(args: argparse.Namespace, config: Config) -> int:
    from tools.event_scan import EventSelector
    from tools.reconcile import reconcile

    result = reconcile(config, EventSelector(args.correlation_id, args.project), since=args.since,
                       connection_options=tuple(connection_words(args)), timeout_seconds=args.timeout)
    code = ExitCode.of(result.all_finished)
    if args.json:
        print_json({**asdict(result), "all_finished": result.all_finished, "found": result.found})
        return code
    progress = result.progress
    print(f"{result.selector}" + (f" (correlation ids: {', '.join(result.correlation_ids)})"
                                  if len(result.correlation_ids) > 1 else "")
          + (f", since {utc_time(args.since)}" if args.since is not None else ""))
    if not result.found:
        print("no event of it in the scanned topics: is the id right, or was it before --since / retention?")
        return code
    stages = list(progress.completed)
    print(f"  discovered: {dash(progress.discovered)}" + ("  (DISCOVERY FAILED)" if progress.discovery_failed else ""))
    for stage in stages:
        print(f"  {stage + ' completed:':<22} {progress.completed[stage]}")
    print(f"  failed events: {sum(progress.failed.values())}, dead letters: {progress.dead_lettered_total}"
          f"  (files named by any event: {result.files_seen})")
    if result.all_finished:
        print(f"every file reached {stages[-1] if stages else 'the end'}")
    for file in result.stopped:
        error = f" {dash(file.error_type)}: {dash(file.error_message)}" if file.error_type else ""
        print(f"  STOPPED at {file.stage:<10} {file.status:<14} {file.file_path}{error}")
    if result.unnamed_missing:
        print(f"  {result.unnamed_missing} discovered file(s) no event names at all (requests lost before any stage "
              f"saw them): rediscover the project (treewatch reindex)")
    waiting = sum(1 for f in result.stopped if f.status == "waiting")
    if waiting:
        print(f"  {waiting} file(s) waiting: their requests are not consumed yet; the stage is behind, replaying "
              f"would double them")
    for redrive in result.redrive:
        print(f"re-drive {redrive.files} file(s) {redrive.status} at {redrive.stage} (a dry run; then with "
              f"--execute):\n  {shlex.join(redrive.command)}")
    if result.unreadable.total:
        print(f"unreadable records skipped: {result.unreadable.total}")
    if result.missing_topics:
        print(f"topics not found: {', '.join(result.missing_topics)}")
    if not result.complete:
        print("WARNING: incomplete, the read stopped at --timeout")
    return code
