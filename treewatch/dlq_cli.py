"""``treewatch dlq inspect|replay``: a stage's dead letter queue, read or re-driven (argument parsing
and output only; tools/dlq.py does it)."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import TYPE_CHECKING

from pipeline.config import Config
from treewatch.exit_codes import ExitCode
from treewatch.terminal import ProgressLine
from treewatch.tools_cli import add_kafka_options, dash, guarded, positive_int, print_json, stage_name, utc_time

if TYPE_CHECKING:
    from tools.dlq import ReplayReport


def add_dlq_commands(sub: argparse._SubParsersAction) -> None:
    dlq = sub.add_parser("dlq", help="inspect or replay a stage's dead letter queue")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    inspect = dlq_sub.add_parser("inspect", help="dead letters by error type, with samples")
    add_kafka_options(inspect)
    inspect.add_argument("--stage", required=True)
    inspect.add_argument("--limit", type=positive_int, help="read at most this many dead letters")
    inspect.add_argument("--error-type", metavar="TYPE",
                         help="count and show only dead letters of this error type (exit 1 when there are none)")
    inspect.add_argument("--since", type=_since, metavar="WHEN",
                         help="only dead letters written since then: a duration ago (30m, 2h, 1d) or an ISO 8601 "
                              "time (UTC when no zone is given); older ones are not read (Kafka's time index)")
    inspect.add_argument("--json", action="store_true", help="print one JSON document")
    inspect.set_defaults(run=guarded(_dlq_inspect))

    replay = dlq_sub.add_parser(
        "replay", help="republish dead letters' original_payload to their original_topic, once",
        description="Republishes each handled dead letter once: records and the replay group's offsets "
                    "(treewatch-dlq-replay-<dlq topic>) are committed in Kafka transactions, so a crash loses "
                    "nothing and a second run does not replay again. That is exactly once only for consumers "
                    "with isolation.level=read_committed: a run killed inside a transaction leaves its records "
                    "aborted in the topic, and read_uncommitted consumers (the default of most clients) read "
                    "them as duplicates; --records-per-transaction bounds how many. Per DLQ partition, in "
                    "order: matching dead letters are republished, --discard-error-type ones and unreadable "
                    "or malformed ones (whose original payload cannot be re-driven) are marked handled "
                    "without republishing and listed with their offsets; the first dead letter that does not "
                    "match stops that partition, so only a contiguous prefix is ever marked handled. A second "
                    "replay of the same DLQ started meanwhile fences this one, which then exits 1.")
    add_kafka_options(replay)
    replay.add_argument("--stage", required=True)
    replay.add_argument("--correlation-id", help="replay only dead letters of this correlation id")
    replay.add_argument("--error-type", help="replay only dead letters of this error type")
    replay.add_argument("--discard-error-type", action="append", default=[], metavar="TYPE",
                        help="mark dead letters of this type handled without republishing, whatever the "
                             "other filters (e.g. FILE_NOT_FOUND; repeatable)")
    replay.add_argument("--limit", type=positive_int, help="republish at most this many in this run")
    from tools.dlq import RECORDS_PER_TRANSACTION

    replay.add_argument("--records-per-transaction", type=positive_int, default=RECORDS_PER_TRANSACTION,
                        metavar="N", help="dead letters handled per transaction (default %(default)s): a run "
                                          "killed inside one leaves at most N aborted records, duplicates to "
                                          "read_uncommitted consumers")
    replay.add_argument("--json", action="store_true", help="print the run (or the dry run's counts) as JSON")
    mode = replay.add_mutually_exclusive_group(required=True)
    mode.add_argument("--dry-run", action="store_true", help="show what would happen; change nothing")
    mode.add_argument("--execute", dest="confirm", action="store_true", help="republish for real")
    # One documented spelling for "really do it", as groups reset has; the first spelling still works.
    mode.add_argument("--confirm", dest="confirm", action="store_true", help=argparse.SUPPRESS)
    replay.set_defaults(run=guarded(_dlq_replay))


def _dlq_inspect(args: argparse.Namespace, config: Config) -> int:
    from tools.dlq import inspect_dlq

    result = inspect_dlq(config, stage_name(config, args.stage), limit=args.limit, error_type=args.error_type,
                         since=args.since)
    # A filter that matches nothing is "not found", as trace without events.
    found = args.error_type is None or result.matched > 0
    if args.json:
        print_json({**asdict(result), "matched": result.matched})
        return ExitCode.of(result.complete and found)
    print(f"{result.topic}: {result.retained} retained, {result.read} read, {result.malformed} malformed")
    if args.since is not None:
        print(f"  since {utc_time(result.since)}: {result.in_range} offset(s) from the first dead letter that recent")
    if args.error_type is not None and not found:
        print(f"no dead letters of error type {args.error_type!r} among the {result.read} read")
    for error_type, count in result.by_error_type.items():
        print(f"  {error_type:<32} {count}")
    print("samples:")
    for s in result.samples:
        if s.unreadable is not None:
            print(f"  [{s.partition}]@{s.offset} {utc_time(s.timestamp)} UNREADABLE ({s.size:,} bytes), skipped: "
                  f"{s.unreadable}")
            continue
        print(f"  [{s.partition}]@{s.offset} {utc_time(s.timestamp)} {s.error_type} correlation "
              f"{dash(s.correlation_id)} from {dash(s.original_topic)}: {dash(s.error_message)}")
    if not result.complete:
        print("WARNING: incomplete, the read stopped at its time limit")
    return ExitCode.of(result.complete and found)


def _since(text: str):
    from tools.times import since_moment

    try:
        return since_moment(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _dlq_replay(args: argparse.Namespace, config: Config) -> int:
    from tools.dlq import ISOLATION_NOTE, ReplayFilter, replay_dlq

    replay_filter = ReplayFilter(args.correlation_id, args.error_type, frozenset(args.discard_error_type))
    line = ProgressLine()

    def progress(so_far: ReplayReport) -> None:
        handled = so_far.replayed_total + sum(so_far.discarded.values()) + len(so_far.malformed)
        retained = sum(so_far.high_watermark.values()) - sum(so_far.start.values())
        line.show(f"handled {handled:,} of {retained:,} dead letters: {so_far.replayed_total:,} republished"
                  + ("" if so_far.dry_run else f" in {so_far.transactions} transaction(s)"))

    try:
        report = replay_dlq(config, stage_name(config, args.stage), replay_filter, limit=args.limit,
                            dry_run=args.dry_run, records_per_transaction=args.records_per_transaction,
                            on_progress=progress)
    finally:
        line.clear()
    if args.json:
        # asdict() rebuilds a Counter from its (key, count) pairs, counting the pairs: given as the dicts they are.
        print_json({**asdict(report), "replayed": dict(report.replayed), "discarded": dict(report.discarded),
                    "replayed_total": report.replayed_total, "left": report.left, "note": ISOLATION_NOTE})
        return ExitCode.OK
    heading = " DRY RUN: nothing changed, the counts are what a run with --execute would do" \
        if report.dry_run else ""
    print(f"{report.dlq_topic} (replay group {report.group}){heading}")
    for partition in sorted(report.start):
        print(f"  partition {partition}: handled from offset {report.start[partition]} to {report.end[partition]} "
              f"(high watermark {report.high_watermark[partition]})")
    print(f"republished: {report.replayed_total}")
    for topic, count in report.replayed.items():
        print(f"  -> {topic}: {count}")
    print(f"discarded (handled, not republished): {sum(report.discarded.values())}")
    for error_type, count in report.discarded.items():
        print(f"  {error_type}: {count}")
    print(f"skipped, unreadable or malformed (handled, not republished: their original payload cannot be "
          f"re-driven): {len(report.malformed)}")
    for skipped in report.malformed:
        print(f"  [{skipped.partition}]@{skipped.offset}: {skipped.reason}")
    for skipped in report.stopped:
        print(f"stopped partition {skipped.partition} at offset {skipped.offset}: {skipped.reason}")
    if report.limit_reached:
        print(f"stopped at --limit {args.limit}")
    print(f"left in the DLQ after this run: {report.left}")
    if not report.dry_run:
        print(f"committed in {report.transactions} transaction(s) of at most {report.records_per_transaction} "
              f"dead letters")
    print(f"note: {ISOLATION_NOTE}")
    return ExitCode.OK
