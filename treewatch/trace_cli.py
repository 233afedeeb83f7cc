"""``treewatch trace``: every record of one correlation id across all stage topics, in time order
(argument parsing and output only; tools/trace.py reads them)."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from pipeline.config import Config
from treewatch.tools_cli import add_config_option, guarded, print_json, utc_time


def add_trace_command(sub: argparse._SubParsersAction) -> None:
    trace = sub.add_parser("trace", help="every record of one correlation id across all stage topics, in "
                                         "time order")
    add_config_option(trace)
    trace.add_argument("--correlation-id", required=True)
    trace.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                       help="stop reading after this long (default 120; the result then says incomplete)")
    trace.add_argument("--json", action="store_true", help="print one JSON document")
    trace.set_defaults(run=guarded(_trace))


def _trace(args: argparse.Namespace, config: Config) -> int:
    from pipeline.events import safe_text
    from tools.trace import trace

    result = trace(config, args.correlation_id, timeout_seconds=args.timeout)
    if args.json:
        print_json(asdict(result))
        return 0 if result.complete else 1
    print(f"correlation id {result.correlation_id}: {len(result.events)} event(s) in "
          f"{result.records_scanned} record(s) read")
    for e in result.events:
        event_type = safe_text((e.event or {}).get("event_type"), 100) or ""
        print(f"  {utc_time(e.timestamp)}  {e.stage:<10} {e.role:<9} {e.topic}[{e.partition}]@{e.offset}  "
              f"{event_type}")
    print("per stage:")
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
    if not result.complete:
        print(f"WARNING: incomplete, the read stopped after {args.timeout:g}s")
    return 0 if result.complete and not result.unread_partitions else 1
