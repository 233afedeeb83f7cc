"""The operator tools' subcommands (status, trace, dlq, groups, bench, reindex): argument parsing and
output only;
the work lives in ``tools``. Exit codes: 0 all well, 1 something unhealthy or refused, 2 bad input
(a misspelled group, an unusable saved offsets file), 141 output cut short by its reader (``| head``)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime

from pipeline.config import load_config


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="treewatch.yaml (default: the guide's pipeline on localhost)")


def add_tool_commands(sub: argparse._SubParsersAction) -> None:
    status = sub.add_parser("status", help="services' health, the Kafka cluster, lag per stage group and "
                                           "DLQ depth (exit 1 when something is unhealthy)")
    add_config_option(status)
    status.add_argument("--json", action="store_true", help="print one JSON document")
    _add_retry_timeout(status)
    # Status reports an unreachable cluster itself, beside the services' health it still shows.
    status.set_defaults(run=_guarded(_status, reach_cluster_first=False))

    trace = sub.add_parser("trace", help="every record of one correlation id across all stage topics, in "
                                         "time order")
    add_config_option(trace)
    trace.add_argument("--correlation-id", required=True)
    trace.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                       help="stop reading after this long (default 120; the result then says incomplete)")
    trace.add_argument("--json", action="store_true", help="print one JSON document")
    trace.set_defaults(run=_guarded(_trace))

    dlq = sub.add_parser("dlq", help="inspect or replay a stage's dead letter queue")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    inspect = dlq_sub.add_parser("inspect", help="dead letters by error type, with samples")
    add_config_option(inspect)
    inspect.add_argument("--stage", required=True)
    inspect.add_argument("--limit", type=_positive_int, help="read at most this many dead letters")
    inspect.add_argument("--json", action="store_true", help="print one JSON document")
    inspect.set_defaults(run=_guarded(_dlq_inspect))

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
    add_config_option(replay)
    replay.add_argument("--stage", required=True)
    replay.add_argument("--correlation-id", help="replay only dead letters of this correlation id")
    replay.add_argument("--error-type", help="replay only dead letters of this error type")
    replay.add_argument("--discard-error-type", action="append", default=[], metavar="TYPE",
                        help="mark dead letters of this type handled without republishing, whatever the "
                             "other filters (e.g. FILE_NOT_FOUND; repeatable)")
    replay.add_argument("--limit", type=_positive_int, help="republish at most this many in this run")
    from tools.dlq import RECORDS_PER_TRANSACTION

    replay.add_argument("--records-per-transaction", type=_positive_int, default=RECORDS_PER_TRANSACTION,
                        metavar="N", help="dead letters handled per transaction (default %(default)s): a run "
                                          "killed inside one leaves at most N aborted records, duplicates to "
                                          "read_uncommitted consumers")
    mode = replay.add_mutually_exclusive_group(required=True)
    mode.add_argument("--dry-run", action="store_true", help="show what would happen; change nothing")
    mode.add_argument("--execute", dest="confirm", action="store_true", help="republish for real")
    # One documented spelling for "really do it", as groups reset has; the first spelling still works.
    mode.add_argument("--confirm", dest="confirm", action="store_true", help=argparse.SUPPRESS)
    replay.set_defaults(run=_guarded(_dlq_replay))

    groups = sub.add_parser("groups", help="describe a consumer group or reset its offsets")
    groups_sub = groups.add_subparsers(dest="groups_command", required=True)
    describe = groups_sub.add_parser("describe", help="per partition: committed, high watermark, lag, owner")
    add_config_option(describe)
    describe.add_argument("--group", required=True)
    describe.add_argument("--json", action="store_true", help="print one JSON document")
    _add_retry_timeout(describe)
    describe.set_defaults(run=_guarded(_groups_describe))

    reset = groups_sub.add_parser(
        "reset", help="move a group's committed offsets on a topic, or put back saved ones (dry run unless "
                      "--execute)",
        description="Plans the move (current -> new offset per partition) and changes nothing unless --execute "
                    "is given. The group must exist and have no members. Before changing anything, --execute "
                    "saves the group's current offsets of those partitions to a file (--save-to, by default "
                    "./treewatch-reset-<group>-<UTC time>.json, never overwritten); `--from-file` with that "
                    "file puts them back: the undo. The file is JSON, format treewatch-group-offsets version 1 "
                    "(docs/saved-offsets.md); a file of another group or another cluster is refused.")
    add_config_option(reset)
    reset.add_argument("--group", required=True)
    reset.add_argument("--topic", help="the topic whose offsets to move (with --to)")
    target = reset.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", type=_reset_target, metavar="TARGET",
                        help="earliest, latest, offset:N (clamped to the retained range) or timestamp:ISO-8601 "
                             "(UTC when no zone is given)")
    target.add_argument("--from-file", metavar="FILE",
                        help="put back the offsets an earlier reset saved in FILE (the undo of that reset)")
    reset.add_argument("--save-to", metavar="FILE",
                       help="save the current offsets here before changing them (default "
                            "./treewatch-reset-<group>-<UTC time>.json)")
    reset.add_argument("--execute", action="store_true",
                       help="apply the reset (refused unless the group is Empty)")
    # One spelling is documented for "really do it"; dlq replay's --confirm is accepted here too.
    reset.add_argument("--confirm", dest="execute", action="store_true", help=argparse.SUPPRESS)
    _add_retry_timeout(reset)
    reset.set_defaults(run=_guarded(_groups_reset), usage_error=reset.error)

    bench = sub.add_parser(
        "bench", help="publish a discovery request for a project of N files, follow it through every stage "
                      "and report duration, throughput, latency and dead letters against the guide's targets",
        description="Publishes one discovery request (new correlation id) and reads each stage's completed, "
                    "failed and DLQ topic from where they ended before it, counting that correlation id's "
                    "records until every discovered file is indexed or failed. Exit 0 when the run "
                    "completed (whether or not the targets were met), 1 when it did not within --timeout. "
                    "Against the simulator --files is how many files discovery reports; the real pipeline "
                    "discovers the files under --project-path.")
    add_config_option(bench)
    bench.add_argument("--files", type=_positive_int, required=True, help="files in the benchmark project")
    bench.add_argument("--project-path", help="project to discover (default: /test/benchmark-<id>)")
    bench.add_argument("--timeout", type=_positive_float, default=600.0, metavar="SECONDS",
                       help="give up after this long (default 600, as the guide)")
    bench.add_argument("--json", action="store_true", help="print one JSON document (no progress lines)")
    bench.set_defaults(run=_guarded(_bench))

    reindex = sub.add_parser(
        "reindex", help="re-stamp and re-index a project (discovery request with force_regenerate) and "
                        "follow it to completion",
        description="Steps 2 and 3 of the guide's reindex procedure: publishes a discovery request with "
                    "force_regenerate=true and prints the indexing progress until every discovered file is "
                    "indexed or failed (exit 0), or --timeout passes (exit 1). Step 1, clearing the project "
                    "from Qdrant and Memgraph, is NOT done: those stores are outside treewatch; clear them "
                    "first with the guide's commands if the index is corrupted.")
    add_config_option(reindex)
    reindex.add_argument("--project-path", required=True)
    reindex.add_argument("--project-name", required=True)
    reindex.add_argument("--timeout", type=_positive_float, default=3600.0, metavar="SECONDS",
                         help="give up after this long (default 3600)")
    reindex.set_defaults(run=_guarded(_reindex))


def _guarded(command, *, reach_cluster_first: bool = True):
    """The command, with the errors a tool reports on purpose (and Kafka's) printed in words.

    Every tool builds its Kafka clients from the same configuration, so whether the cluster can be
    reached at all is checked here, once, before a tool starts: a wrong bootstrap address fails
    within the request timeout with what answers there (pipeline.kafka_probe), rather than after a
    tool retried for its whole timeout, or as a bare KafkaError{...}.
    """
    from confluent_kafka import KafkaException

    from pipeline.kafka_errors import RetriesExhausted, error_text
    from pipeline.kafka_probe import KafkaUnreachable, check_reachable
    from tools import ToolError

    def run(args: argparse.Namespace) -> int:
        try:
            if reach_cluster_first:
                check_reachable(load_config(args.config))
            return command(args)
        except (ToolError, KafkaUnreachable, RetriesExhausted) as error:
            print(f"treewatch {args.command}: {error}", file=sys.stderr)
            return getattr(error, "exit_code", 1)
        except (KafkaException, TimeoutError) as error:
            print(f"treewatch {args.command}: {error_text(error)}", file=sys.stderr)
            return 1

    return run


def _add_retry_timeout(parser: argparse.ArgumentParser) -> None:
    from pipeline.kafka_errors import DEFAULT_RETRY_SECONDS

    parser.add_argument("--timeout", type=_positive_float, default=DEFAULT_RETRY_SECONDS, metavar="SECONDS",
                        help="while Kafka is in a passing state (a leader election, a coordinator loading), keep "
                             "asking for this long before giving up (default %(default)g)")


def _deadline(args: argparse.Namespace) -> float:
    import time

    return time.monotonic() + args.timeout


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _reset_target(text: str):
    from tools.groups import ResetTarget

    try:
        return ResetTarget.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "-" * 23
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def _indented(text: str, prefix: str) -> str:
    """A message of several lines (an unreachable cluster's) under a line that starts with ``prefix``."""
    first, *rest = text.splitlines() or [""]
    return "\n".join([prefix + first, *(prefix + "  " + line.strip() for line in rest)])


def _print_json(document: object) -> None:
    json.dump(document, sys.stdout, indent=2, default=str)
    print()


def _stage_name(config, name: str) -> str:
    from pipeline.config import ConfigError

    try:
        return config.stage(name).name
    except KeyError as error:
        raise ConfigError(error.args[0]) from None


# -- status ----------------------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    from tools.status import gather_status

    status = gather_status(load_config(args.config), deadline=_deadline(args))
    problems = status.problems
    if args.json:
        _print_json({**asdict(status), "problems": problems, "warnings": status.warnings})
        return 1 if problems else 0
    print("Services:")
    for s in status.services:
        state = s.status if s.success else f"DOWN ({s.failure_reason})"
        print(f"  {s.service:<20} {state:<28} {s.detail}")
    print("Kafka:")
    if status.cluster.error:
        print(_indented(status.cluster.error, "  "))
    else:
        print(f"  cluster {status.cluster.cluster_id}, controller {_dash(status.cluster.controller_id)}, "
              f"{len(status.cluster.brokers)} broker(s): {', '.join(status.cluster.brokers)}")
    print("Consumer lag (committed offset to high watermark, summed over partitions):")
    for g in status.groups:
        if g.error or not g.exists:
            print(f"  {g.stage:<10} {g.group:<32} {g.error or 'no such group: the stage has never committed'}")
            continue
        uncommitted = f", {g.partitions_without_commit} partition(s) never committed" \
            if g.partitions_without_commit else ""
        print(f"  {g.stage:<10} {g.group:<32} lag {_dash(g.lag):>8}  {g.state}, {g.members} member(s){uncommitted}")
    print("Dead letter queues (records retained):")
    for d in status.dlqs:
        print(f"  {d.stage:<10} {d.topic:<50} {d.error or d.retained}")
    for line in status.warnings:
        print(f"WARNING: {line}")
    for line in problems:
        print(_indented(f"UNHEALTHY: {line}", ""))
    print("status: " + ("UNHEALTHY" if problems else "OK"))
    return 1 if problems else 0


# -- trace -----------------------------------------------------------------------------------------


def _trace(args: argparse.Namespace) -> int:
    from pipeline.events import safe_text
    from tools.trace import trace

    result = trace(load_config(args.config), args.correlation_id, timeout_seconds=args.timeout)
    if args.json:
        _print_json(asdict(result))
        return 0 if result.complete else 1
    print(f"correlation id {result.correlation_id}: {len(result.events)} event(s) in "
          f"{result.records_scanned} record(s) read")
    for e in result.events:
        event_type = safe_text((e.event or {}).get("event_type"), 100) or ""
        print(f"  {_time(e.timestamp)}  {e.stage:<10} {e.role:<9} {e.topic}[{e.partition}]@{e.offset}  {event_type}")
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


# -- dlq -------------------------------------------------------------------------------------------


def _dlq_inspect(args: argparse.Namespace) -> int:
    from tools.dlq import inspect_dlq

    config = load_config(args.config)
    result = inspect_dlq(config, _stage_name(config, args.stage), limit=args.limit)
    if args.json:
        _print_json(asdict(result))
        return 0 if result.complete else 1
    print(f"{result.topic}: {result.retained} retained, {result.read} read, {result.malformed} malformed")
    for error_type, count in result.by_error_type.items():
        print(f"  {error_type:<32} {count}")
    print("samples:")
    for s in result.samples:
        if s.unreadable is not None:
            print(f"  [{s.partition}]@{s.offset} {_time(s.timestamp)} UNREADABLE ({s.size:,} bytes), skipped: "
                  f"{s.unreadable}")
            continue
        print(f"  [{s.partition}]@{s.offset} {_time(s.timestamp)} {s.error_type} correlation {_dash(s.correlation_id)} "
              f"from {_dash(s.original_topic)}: {_dash(s.error_message)}")
    if not result.complete:
        print("WARNING: incomplete, the read stopped at its time limit")
    return 0 if result.complete else 1


def _dlq_replay(args: argparse.Namespace) -> int:
    from tools.dlq import ISOLATION_NOTE, ReplayFilter, replay_dlq

    config = load_config(args.config)
    replay_filter = ReplayFilter(args.correlation_id, args.error_type, frozenset(args.discard_error_type))
    report = replay_dlq(config, _stage_name(config, args.stage), replay_filter, limit=args.limit,
                        dry_run=args.dry_run, records_per_transaction=args.records_per_transaction)
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
    return 0


# -- groups ----------------------------------------------------------------------------------------


def _groups_describe(args: argparse.Namespace) -> int:
    from tools.groups import describe_group

    result = describe_group(load_config(args.config), args.group, deadline=_deadline(args))
    if args.json:
        _print_json({**asdict(result), "total_lag": result.total_lag})
        return 0
    print(f"group {result.group}: {result.state}, {len(result.members)} member(s), total lag {result.total_lag}")
    for m in result.members:
        print(f"  member {m.member_id} ({m.client_id}@{m.host}): {len(m.assigned)} partition(s)")
    print(f"  {'topic':<50} {'part':>4} {'committed':>10} {'high wm':>10} {'lag':>8}  owner")
    for p in result.partitions:
        print(f"  {p.topic:<50} {p.partition:>4} {_dash(p.committed):>10} {_dash(p.high_watermark):>10} "
              f"{_dash(p.lag):>8}  {_dash(p.owner)}")
    return 0


def _groups_reset(args: argparse.Namespace) -> int:
    import shlex
    from pathlib import Path

    from tools.groups import execute_reset, plan_reset, plan_restore
    from tools.saved_offsets import default_path, read_saved, utc_now

    if args.to is not None and args.topic is None:
        args.usage_error("--to needs --topic, the topic whose offsets to move")
    if args.from_file is not None and args.topic is not None:
        args.usage_error("--from-file puts back every partition the file holds: leave out --topic")
    config = load_config(args.config)
    deadline = _deadline(args)
    if args.from_file is not None:
        saved = read_saved(Path(args.from_file))
        plan = plan_restore(config, args.group, saved, source=args.from_file, deadline=deadline)
    else:
        plan = plan_reset(config, args.group, args.topic, args.to, deadline=deadline)
    print(f"group {plan.group} ({plan.state}, {len(plan.members)} member(s)), {plan.description}:")
    for p in plan.partitions:
        print(f"  {p.topic}[{p.partition}]: {_dash(p.current)} -> {p.new}  "
              f"(log start {p.log_start}, high watermark {p.high_watermark}){_outside_the_log(p)}")
    for topic, partition in plan.not_restorable:
        print(f"  {topic}[{partition}]: had no committed offset when saved; left as it is (Kafka's admin API "
              f"here cannot remove a committed offset; kafka-consumer-groups.sh --delete-offsets can)")
    if not plan.partitions:
        print("nothing to change")
        return 0
    save_to = Path(args.save_to) if args.save_to else default_path(plan.group, utc_now())
    if not args.execute:
        where = save_to if args.save_to else "./treewatch-reset-<group>-<UTC time>.json"
        print(f"dry run: nothing changed (add --execute to apply; the current offsets are saved to {where} first)")
        return 0

    def saved(path: Path) -> None:
        # Said before the change, so whatever becomes of this process, the operator knows the undo.
        print(f"saved the current offsets to {path}; to undo this reset: treewatch groups reset "
              f"--group {shlex.quote(plan.group)} --from-file {shlex.quote(str(path))} --execute", flush=True)

    result = execute_reset(config, plan, save_to=save_to, deadline=deadline, on_saved=saved)
    if result.mismatched:
        for (topic, partition), found in result.mismatched.items():
            print(f"MISMATCH: {topic}[{partition}] reads back {_dash(found)}")
        return 1
    print(f"reset applied and verified on {len(plan.partitions)} partition(s)")
    return 0


def _outside_the_log(p) -> str:
    if p.new < p.log_start:
        return "  NOTE: below the log start: retention deleted those records, the consumer starts at its " \
               "auto.offset.reset"
    if p.new > p.high_watermark:
        return "  NOTE: beyond the high watermark (was the topic recreated?)"
    return ""


# -- bench and reindex -----------------------------------------------------------------------------

# Progress lines are printed at most this often (and on the last change), so a 10,000-file run is a
# few dozen lines, not one per poll.
PROGRESS_LINE_SECONDS = 2.0


def _progress_line(progress) -> str:
    if progress.discovered is None:
        return "discovery in progress..."
    failed = f", {progress.failed_files} failed" if progress.failed_files else ""
    return (f"indexed {progress.indexed} / {progress.discovered} files ({progress.percent_indexed:.0f}%)"
            f"{failed}")


class _ProgressLines:
    """on_progress for bench and reindex: the correlation id once, then a line per change, at most
    one per PROGRESS_LINE_SECONDS except the last."""

    def __init__(self) -> None:
        self.printed_at: float | None = None
        self.line: str | None = None

    def __call__(self, progress) -> None:
        import time

        if self.printed_at is None:
            print(f"discovery request published, correlation id {progress.correlation_id}", flush=True)
        line = _progress_line(progress)
        now = time.monotonic()
        due = self.printed_at is None or progress.done or now - self.printed_at >= PROGRESS_LINE_SECONDS
        if due and line != self.line:
            print(f"  {line}", flush=True)
            self.line = line
            self.printed_at = now


def _not_finished(run, timeout: float) -> str:
    progress = run.progress
    if progress.discovery_failed:
        return (f"discovery of the project failed (correlation id {run.correlation_id}); see "
                f"`treewatch trace --correlation-id {run.correlation_id}`")
    return (f"timed out after {timeout:g}s: {_progress_line(progress)}, waiting on the {progress.waiting_on} "
            f"stage (correlation id {run.correlation_id}; `treewatch status` shows its consumer group's lag)")


def _bench(args: argparse.Namespace) -> int:
    from tools.bench import run_bench

    config = load_config(args.config)
    show = None if args.json else _ProgressLines()
    result = run_bench(config, args.files, project_path=args.project_path, timeout_seconds=args.timeout,
                       on_progress=show)
    run, progress = result.run, result.progress
    if args.json:
        _print_json({
            "completed": result.completed, "correlation_id": run.correlation_id,
            "project_name": result.project_name, "project_path": result.project_path,
            "files_requested": result.files_requested, "duration_seconds": run.elapsed_seconds,
            "files_per_second": result.files_per_second, "latency_seconds": result.latency_seconds,
            "dlq_rate": result.dlq_rate, "progress": asdict(progress),
            "targets": [asdict(t) for t in result.targets], "missing_topics": list(run.missing_topics),
        })
    else:
        print(f"=== Benchmark results ({result.project_name}, {result.project_path}) ===")
        print(f"status: {'COMPLETED' if result.completed else 'NOT COMPLETED'}")
        print(f"duration: {run.elapsed_seconds:.2f}s")
        print(f"files: {_dash(progress.discovered)} discovered (requested {result.files_requested}), "
              f"{progress.stamped} stamped, {progress.indexed} indexed, {progress.failed_files} failed")
        if result.files_per_second is not None:
            print(f"throughput: {result.files_per_second:.1f} files/s")
        if result.latency_seconds:
            print("end-to-end latency per file (index-completed − request record timestamps): "
                  + ", ".join(f"{name} {seconds:.3f}s" for name, seconds in result.latency_seconds.items()))
        rate = "" if result.dlq_rate is None else f" ({result.dlq_rate:.2%} of discovered files)"
        print(f"dead letters: {progress.dead_lettered_total}{rate}; "
              + ", ".join(f"{stage} {count}" for stage, count in progress.dead_lettered.items()))
        if progress.unreadable:
            print(f"WARNING: {progress.unreadable} record(s) of this correlation id could not be counted")
        for topic in run.missing_topics:
            print(f"note: topic {topic} does not exist, not followed")
        if result.targets:
            print("=== Performance targets (the guide's) ===")
            for t in result.targets:
                print(f"  {t.name}: {'PASS' if t.passed else 'FAIL'} {t.measured} (target {t.target})")
    if not result.completed:
        print(f"treewatch bench: {_not_finished(run, args.timeout)}", file=sys.stderr)
        return 1
    if progress.discovered is not None and progress.discovered != result.files_requested and not args.json:
        print(f"note: discovery found {progress.discovered} files, not the {result.files_requested} requested")
    return 0


def _reindex(args: argparse.Namespace) -> int:
    from tools.reindex import NOT_CLEARED, run_reindex

    config = load_config(args.config)
    print(f"reindexing project {args.project_name} ({args.project_path})")
    print(f"note: {NOT_CLEARED}")
    lines = _ProgressLines()
    run = run_reindex(config, args.project_path, args.project_name, timeout_seconds=args.timeout,
                      on_progress=lines)
    if not run.completed:
        print(f"treewatch reindex: {_not_finished(run, args.timeout)}", file=sys.stderr)
        return 1
    progress = run.progress
    lines(progress)  # the counts after settling, when they changed
    print(f"reindexing complete in {run.elapsed_seconds:.1f}s")
    if progress.failed_files:
        print(f"WARNING: {progress.failed_files} file(s) failed ({progress.dead_lettered_total} dead letters); "
              f"`treewatch dlq inspect --stage stamp` / `--stage index` shows why")
    return 0
