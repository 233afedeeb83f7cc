"""``treewatch groups list|describe|reset``: consumer groups listed, described (offsets and
assignments) or moved, and the undo of a move (argument parsing and output only; tools/groups.py
and tools/saved_offsets.py do it)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

from pipeline.config import Config
from treewatch.exit_codes import ExitCode
from treewatch.tools_cli import add_kafka_options, add_retry_timeout, dash, deadline, guarded, print_json

if TYPE_CHECKING:
    from tools.groups import ResetPlan, ResetResult


def add_groups_commands(sub: argparse._SubParsersAction) -> None:
    groups = sub.add_parser("groups", help="list consumer groups, describe them or reset their offsets")
    groups_sub = groups.add_subparsers(dest="groups_command", required=True)
    listing = groups_sub.add_parser("list", help="every consumer group: stage, state, members, lag (largest first)")
    add_kafka_options(listing)
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    add_retry_timeout(listing)
    listing.set_defaults(run=guarded(_groups_list))

    describe = groups_sub.add_parser(
        "describe", help="per partition: committed, high watermark, lag, owner; each member's assignment",
        description="Describes each group named (or every group with --all): its state, each member's client id, "
                    "host and assigned partitions, and per partition the committed offset, high watermark, lag "
                    "and owner. Says when members outnumber the partitions (idle consumers: scaling out will not "
                    "help) and when a Stable group leaves partitions of its topics to nobody. --json prints the "
                    "group's document for one group named, {\"groups\": [...]} for --all or several.")
    add_kafka_options(describe)
    describe.add_argument("groups", nargs="*", metavar="GROUP", help="the consumer group(s) to describe")
    describe.add_argument("--group", action="append", dest="group_options", default=[], metavar="GROUP",
                          help="a group to describe (repeatable; the same as naming it)")
    describe.add_argument("--all", action="store_true", help="describe every consumer group the cluster lists")
    describe.add_argument("--json", action="store_true", help="print one JSON document")
    add_retry_timeout(describe)
    describe.set_defaults(run=guarded(_groups_describe), usage_error=describe.error)

    reset = groups_sub.add_parser(
        "reset", help="move a group's committed offsets on a topic, or put back saved ones (dry run unless "
                      "--execute)",
        description="Plans the move (current -> new offset per partition) and changes nothing unless --execute "
                    "is given. The group must exist and have no members. Before changing anything, --execute "
                    "saves the group's current offsets of those partitions to a file (--save-to, by default "
                    "./treewatch-reset-<group>-<UTC time>.json, never overwritten); `--from-file` with that "
                    "file puts them back: the undo. The file is JSON, format treewatch-group-offsets version 1 "
                    "(docs/saved-offsets.md); a file of another group or another cluster is refused.")
    add_kafka_options(reset)
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
    reset.add_argument("--json", action="store_true",
                       help="print the plan and what was done as one JSON document (the undo line goes to stderr)")
    add_retry_timeout(reset)
    reset.set_defaults(run=guarded(_groups_reset), usage_error=reset.error)


def _reset_target(text: str):
    from tools.groups import ResetTarget

    try:
        return ResetTarget.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _groups_list(args: argparse.Namespace, config: Config) -> int:
    from tools.groups import list_groups

    listing = list_groups(config, deadline=deadline(args))
    if args.json:
        print_json(asdict(listing))
        return 0
    if not listing.groups:
        print("no consumer groups")
    else:
        width = max(len("group"), *(len(g.group) for g in listing.groups))
        print(f"{'group':<{width}}  {'stage':<10} {'state':<19} {'members':>7} {'partitions':>10} {'lag':>12}")
        for g in listing.groups:
            lag = "?" if g.lag is None else f"{g.lag}{'+' if g.unread_partitions else ''}"
            print(f"{g.group:<{width}}  {dash(g.stage):<10} {g.state:<19} {g.members:>7} {g.partitions:>10} "
                  f"{lag:>12}")
    for g in listing.groups:
        if g.error is not None:
            print(f"WARNING: the committed offsets of {g.group} could not be read: {g.error}")
        elif g.unread_partitions:
            print(f"WARNING: {g.group}: {g.unread_partitions} partition(s) could not be read, left out of its lag (+)")
    for stage, group in listing.missing_stage_groups.items():
        print(f"note: stage {stage}'s group {group} does not exist (never started, or its offsets expired)")
    return 0


def _groups_describe(args: argparse.Namespace, config: Config) -> int:
    from tools.groups import describe_groups

    named = [*args.groups, *args.group_options]
    if args.all == bool(named):
        args.usage_error("name the group(s) to describe, or --all for every group")
    results = describe_groups(config, None if args.all else named, deadline=deadline(args))
    if args.json:
        documents = [{**asdict(r), "total_lag": r.total_lag, "idle_members": [m.member_id for m in r.idle_members],
                      "unowned_partitions": [{"topic": t, "partition": p} for t, p in r.unowned_partitions],
                      "findings": list(r.findings)} for r in results]
        print_json(documents[0] if len(named) == 1 else {"groups": documents})
        return 0
    if not results:
        print("no consumer groups")
    for index, result in enumerate(results):
        if index:
            print()
        _print_description(result)
    return 0


def _print_description(result) -> None:
    from tools.groups import partition_list

    print(f"group {result.group}: {result.state}, {len(result.members)} member(s), total lag {result.total_lag}")
    idle = {m.member_id for m in result.idle_members}
    for m in result.members:
        assigned = partition_list(m.assigned) if m.assigned else "no partition" + (" (idle)" if m.member_id in idle
                                                                                    else "")
        print(f"  member {m.member_id}  client {m.client_id}  host {m.host}: {assigned}")
    print(f"  {'topic':<50} {'part':>4} {'committed':>10} {'high wm':>10} {'lag':>8}  owner")
    for p in result.partitions:
        print(f"  {p.topic:<50} {p.partition:>4} {dash(p.committed):>10} {dash(p.high_watermark):>10} "
              f"{dash(p.lag):>8}  {dash(p.owner)}")
    for finding in result.findings:
        print(f"  NOTE: {finding}")


def _groups_reset(args: argparse.Namespace, config: Config) -> int:
    import shlex
    from pathlib import Path

    from tools.groups import execute_reset, plan_reset, plan_restore
    from tools.saved_offsets import default_path, read_saved, utc_now

    if args.to is not None and args.topic is None:
        args.usage_error("--to needs --topic, the topic whose offsets to move")
    if args.from_file is not None and args.topic is not None:
        args.usage_error("--from-file puts back every partition the file holds: leave out --topic")
    until = deadline(args)
    if args.from_file is not None:
        saved = read_saved(Path(args.from_file))
        plan = plan_restore(config, args.group, saved, source=args.from_file, deadline=until)
    else:
        plan = plan_reset(config, args.group, args.topic, args.to, deadline=until)
    if not args.json:
        print(f"group {plan.group} ({plan.state}, {len(plan.members)} member(s)), {plan.description}:")
        for p in plan.partitions:
            print(f"  {p.topic}[{p.partition}]: {dash(p.current)} -> {p.new}  "
                  f"(log start {p.log_start}, high watermark {p.high_watermark}){_outside_the_log(p)}")
        for topic, partition in plan.not_restorable:
            print(f"  {topic}[{partition}]: had no committed offset when saved; left as it is (Kafka's admin API "
                  f"here cannot remove a committed offset; kafka-consumer-groups.sh --delete-offsets can)")
    if not plan.partitions:
        return _reset_outcome(args, plan, "nothing to change")
    save_to = Path(args.save_to) if args.save_to else default_path(plan.group, utc_now())
    if not args.execute:
        where = save_to if args.save_to else "./treewatch-reset-<group>-<UTC time>.json"
        return _reset_outcome(args, plan, f"dry run: nothing changed (add --execute to apply; the current offsets "
                                          f"are saved to {where} first)")

    def saved(path: Path) -> None:
        # Said before the change, so whatever becomes of this process, the operator knows the undo.
        print(f"saved the current offsets to {path}; to undo this reset: treewatch groups reset "
              f"--group {shlex.quote(plan.group)} --from-file {shlex.quote(str(path))} --execute",
              file=sys.stderr if args.json else sys.stdout, flush=True)

    result = execute_reset(config, plan, save_to=save_to, deadline=until, on_saved=saved)
    verified = "reset applied and verified" if not result.mismatched else "reset applied, NOT verified"
    return _reset_outcome(args, plan, f"{verified} on {len(plan.partitions)} partition(s)", result)


def _reset_outcome(args: argparse.Namespace, plan: ResetPlan, outcome: str, result: ResetResult | None = None
                   ) -> ExitCode:
    """The end of a reset, in words or as JSON; FAILURE when offsets read back differ from the plan."""
    mismatched = result.mismatched if result is not None else {}
    if args.json:
        print_json({"plan": asdict(plan), "executed": result is not None, "outcome": outcome,
                    "saved_to": result.saved_to if result is not None else None,
                    "mismatched": [{"topic": topic, "partition": partition, "reads_back": found}
                                   for (topic, partition), found in mismatched.items()]})
    else:
        for (topic, partition), found in mismatched.items():
            print(f"MISMATCH: {topic}[{partition}] reads back {dash(found)}")
        print(outcome)
    return ExitCode.of(not mismatched)


def _outside_the_log(p) -> str:
    if p.new < p.log_start:
        return "  NOTE: below the log start: retention deleted those records, the consumer starts at its " \
               "auto.offset.reset"
    if p.new > p.high_watermark:
        return "  NOTE: beyond the high watermark (was the topic recreated?)"
    return ""
