"""``treewatch replay``: a correlation id's (or project's) pipeline events republished as the next
stage's requests, once (argument parsing and output only; tools/replay.py does it)."""

from __future__ import annotations

import argparse
import shlex
from dataclasses import asdict

from pipeline.config import Config
from treewatch.exit_codes import ExitCode
from treewatch.tools_cli import add_kafka_options, guarded, positive_float, positive_int, print_json, utc_time


def since_time(text: str) -> float:
    """--since as seconds since the epoch (tools.times.since_moment: 30m, 2h, 1d or an ISO 8601 time)."""
    from tools.times import since_moment

    try:
        return since_moment(text).timestamp()
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def connection_words(args: argparse.Namespace) -> list[str]:
    """The options that named the cluster, for a command printed to run next."""
    words = []
    for option, value in (("--config", args.config), ("--bootstrap-server", args.bootstrap_server),
                          ("--command-config", args.command_config)):
        if value:
            words += [option, value]
    return words


def add_selector_options(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--correlation-id", help="the events of this correlation id")
    which.add_argument("--project", metavar="NAME", help="the events of this project (project_name), every "
                                                         "correlation id of it")
    parser.add_argument("--since", type=since_time, metavar="TIME",
                        help="scan from the first record at or after this time (2026-12-01T20:00:00Z) or this long "
                             "ago (30m, 2h, 1d); default: the log start")


def add_replay_command(sub: argparse._SubParsersAction) -> None:
    from tools.dlq import RECORDS_PER_TRANSACTION

    replay = sub.add_parser(
        "replay", help="republish a correlation id's events of a stage as the next stage's requests, once",
        description="Takes the events of one correlation id (or project) from a pipeline topic, e.g. "
                    "stamping.generate-completed, and publishes the requests that make the next stage work on "
                    "them again, e.g. into tree.index. A dry run unless --execute. Only into a stage's request "
                    "topic, from the completed topic of the stage before it or from its own request topic; no "
                    "topic is ever created. The scan ends at the high watermarks taken at its start. Exactly once "
                    "as dlq replay: requests and the replay group's offsets (treewatch-replay-<from>-<to>-<selection>) "
                    "are committed in Kafka transactions, a second run continues where the first ended, a replay "
                    "of the same selection started meanwhile fences this one (exit 1).")
    add_kafka_options(replay)
    replay.add_argument("--from-topic", required=True, metavar="TOPIC", help="the topic whose events are replayed")
    target = replay.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-stage", metavar="STAGE", help="the stage asked again (its request topic)")
    target.add_argument("--to-topic", metavar="TOPIC", help="the same, named by its request topic")
    add_selector_options(replay)
    replay.add_argument("--only-missing", action="store_true",
                        help="skip files the target stage completed or dead-lettered in the scanned range (dead "
                             "letters are dlq replay's to re-drive)")
    replay.add_argument("--rerun", action="store_true",
                        help="start again from the range's start, replaying also what an earlier run of this "
                             "replay sent (for files that failed again since)")
    replay.add_argument("--rate", type=positive_float, metavar="N", help="publish at most N requests a second")
    replay.add_argument("--records-per-transaction", type=positive_int, default=RECORDS_PER_TRANSACTION,
                        metavar="N", help="source records handled per transaction (default %(default)s)")
    replay.add_argument("--timeout", type=positive_float, default=300.0, metavar="SECONDS",
                        help="give up after this long (default %(default)g); what was committed stays")
    replay.add_argument("--json", action="store_true", help="print one JSON document")
    mode = replay.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="show what would be published (the default)")
    mode.add_argument("--execute", action="store_true", help="publish for real")
    replay.set_defaults(run=guarded(_replay))


def _replay(args: argparse.Namespace, config: Config) -> int:
    from tools.dlq import ISOLATION_NOTE
    from tools.event_scan import EventSelector
    from tools.replay import replay_events, target_stage

    target = target_stage(config, stage_name=args.to_stage, topic=args.to_topic)
    selector = EventSelector(args.correlation_id, args.project)
    report = replay_events(config, args.from_topic, target, selector, dry_run=not args.execute, since=args.since,
                           only_missing=args.only_missing, rerun=args.rerun, rate=args.rate,
                           records_per_transaction=args.records_per_transaction, timeout_seconds=args.timeout)
    if args.json:
        print_json({**asdict(report), "handled_before": report.handled_before, "left": report.left})
        return ExitCode.OK
    heading = " DRY RUN: nothing published; --execute publishes" if report.dry_run else ""
    print(f"{report.from_topic} -> {report.to_topic} (stage {report.to_stage}), {report.selector}, "
          f"replay group {report.group}{heading}")
    if args.since is not None:
        print(f"scanned from {utc_time(args.since)}")
    for partition in sorted(report.start):
        print(f"  partition {partition}: handled from offset {report.start[partition]} to {report.end[partition]} "
              f"(range {report.range_start[partition]}..{report.high_watermark[partition]})")
    verb = "would publish" if report.dry_run else "published"
    print(f"{verb}: {report.replayed} request(s) of stage {report.to_stage}")
    for sample in report.samples:
        print(f"  [{sample.partition}]@{sample.offset} {sample.file_path}")
    if report.replayed > len(report.samples):
        print(f"  ... and {report.replayed - len(report.samples)} more")
    if report.handled_before:
        print(f"already handled by an earlier run of this replay: {report.handled_before} record(s) "
              f"(--rerun replays them again)")
    if report.skipped_done:
        print(f"skipped, already completed or dead-lettered by {report.to_stage} (--only-missing): "
              f"{report.skipped_done}")
    if report.not_requests:
        print(f"skipped, no correlation_id or file_path (not a request of {report.to_stage}): {report.not_requests}")
    print(f"events of other correlation ids / projects passed over: {report.other_events}")
    print(f"unreadable records skipped: {report.unreadable.total}")
    for sample in report.unreadable.samples:
        print(f"  {sample.topic}[{sample.partition}]@{sample.offset} ({sample.size:,} bytes): {sample.reason}")
    if not report.dry_run:
        print(f"committed in {report.transactions} transaction(s); note: {ISOLATION_NOTE}")
        print(f"follow it: {shlex.join(['treewatch', 'reconcile', *selector.options, *connection_words(args)])}")
    return ExitCode.OK
