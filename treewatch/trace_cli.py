"""``treewatch trace``: every record of one correlation id across all stage topics, in time order
(argument parsing and output only; tools/trace.py reads them)."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import TYPE_CHECKING

from pipeline.config import Config
from treewatch.exit_codes import ExitCode
from treewatch.terminal import ProgressLine
from treewatch.tools_cli import add_kafka_options, guarded, positive_int, print_json, utc_time

if TYPE_CHECKING:
    from tools.trace import Trace


def add_trace_command(sub: argparse._SubParsersAction) -> None:
    trace = sub.add_parser("trace", help="every record of one correlation id across all stage topics, in "
                                         "time order")
    add_kafka_options(trace)
    trace.add_argument("--correlation-id", required=True)
    trace.add_argument("--max-events", type=positive_int, metavar="N",
                       help="stop after N events (the first found, not necessarily the earliest; the result then "
                            "says incomplete)")
    trace.add_argument("--summary", action="store_true",
                       help="per stage and role: counts, first and last record time; no events listed")
    trace.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                       help="stop reading after this long (default 120; the result then says incomplete)")
    trace.add_argument("--json", action="store_true", help="print one JSON document")
    trace.set_defaults(run=guarded(_trace))


def _trace(args: argparse.Namespace, config: Config) -> int:
    from pipeline.events import safe_text
    from tools.trace import trace

    line = ProgressLine()

    def progress(read: int, to_read: int, found: int) -> None:
        line.show(f"read {read:,} of {to_read:,} records ({read / max(to_read, 1):.0%}), {found} event(s) found")

    try:
        result = trace(config, args.correlation_id, timeout_seconds=args.timeout, max_events=args.max_events,
                       on_progress=progress)
    finally:
        line.clear()
    if args.json:
        document = asdict(result)
        if args.summary:
            del document["events"]  # the summary is counts and times, without the events' bodies
        print_json(document)
        return trace_exit_code(result)
    print(f"correlation id {result.correlation_id}: {len(result.events)} event(s) in "
          f"{result.records_scanned} record(s) read")
    for e in () if args.summary else result.events:
        event_type = safe_text((e.event or {}).get("event_type"), 100) or ""
        print(f"  {utc_time(e.timestamp)}  {e.stage:<10} {e.role:<9} {e.topic}[{e.partition}]@{e.offset}  "
              f"{event_type}")
    print("per stage:")
    if args.summary:
        for stage, roles in result.spans.items():
            for role, span in roles.items():
                print(f"  {stage:<10} {role:<9} {span.count:>6}  first {utc_time(span.first)}  last "
                      f"{utc_time(span.last)}")
    else:
        for stage, counts in result.summary.items():
            print(f"  {stage:<10} " + "  ".join(f"{name} {count}" for name, count in counts.items()))
    for topic in result.missing_topics:
        print(f"note: topic {topic} does not exist")
    for partition in result.unread_partitions:
        print(f"WARNING: {partition} could not be read")
    if result.unreadable_count:
        print(f"skipped {result.unreadable_count} unreadable record(s) holding the correlation id's text:")
        for u in result.unreadable:
            print(f"  {u.topic}[{u.partition}]@{u.offset} ({u.size:,} bytes): {u.reason}")
        if result.unreadable_count > len(result.unreadable):
            print(f"  ... and {result.unreadable_count - len(result.unreadable)} more")
    if result.max_events_reached:
        print(f"WARNING: incomplete, the read stopped at --max-events {args.max_events}: more events may follow")
    elif not result.complete:
        print(f"WARNING: incomplete, the read stopped after {args.timeout:g}s")
    return trace_exit_code(result)


def trace_exit_code(result: Trace) -> ExitCode:
    """Found (OK) only when the correlation id has events and every partition was read to its end:
    a script waiting for a request's records must not stop on a read that could have missed them."""
    return ExitCode.of(bool(result.events) and result.complete and not result.unread_partitions)
