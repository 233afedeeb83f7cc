"""``treewatch groups describe|reset``: a consumer group's offsets, shown or moved, and the undo of
a move (argument parsing and output only; tools/groups.py and tools/saved_offsets.py do it)."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from pipeline.config import Config
from treewatch.tools_cli import add_config_option, add_retry_timeout, dash, deadline, guarded, print_json


def add_groups_commands(sub: argparse._SubParsersAction) -> None:
    groups = sub.add_parser("groups", help="describe a consumer group or reset its offsets")
    groups_sub = groups.add_subparsers(dest="groups_command", required=True)
    describe = groups_sub.add_parser("describe", help="per partition: committed, high watermark, lag, owner")
    add_config_option(describe)
    describe.add_argument("--group", required=True)
    describe.add_argument("--json", action="store_true", help="print one JSON document")
    add_retry_timeout(describe)
    describe.set_defaults(run=guarded(_groups_describe))

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
    add_retry_timeout(reset)
    reset.set_defaults(run=guarded(_groups_reset), usage_error=reset.error)


def _reset_target(text: str):
    from tools.groups import ResetTarget

    try:
        return ResetTarget.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _groups_describe(args: argparse.Namespace, config: Config) -> int:
    from tools.groups import describe_group

    result = describe_group(config, args.group, deadline=deadline(args))
    if args.json:
        print_json({**asdict(result), "total_lag": result.total_lag})
        return 0
    print(f"group {result.group}: {result.state}, {len(result.members)} member(s), total lag {result.total_lag}")
    for m in result.members:
        print(f"  member {m.member_id} ({m.client_id}@{m.host}): {len(m.assigned)} partition(s)")
    print(f"  {'topic':<50} {'part':>4} {'committed':>10} {'high wm':>10} {'lag':>8}  owner")
    for p in result.partitions:
        print(f"  {p.topic:<50} {p.partition:>4} {dash(p.committed):>10} {dash(p.high_watermark):>10} "
              f"{dash(p.lag):>8}  {dash(p.owner)}")
    return 0


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
    print(f"group {plan.group} ({plan.state}, {len(plan.members)} member(s)), {plan.description}:")
    for p in plan.partitions:
        print(f"  {p.topic}[{p.partition}]: {dash(p.current)} -> {p.new}  "
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

    result = execute_reset(config, plan, save_to=save_to, deadline=until, on_saved=saved)
    if result.mismatched:
        for (topic, partition), found in result.mismatched.items():
            print(f"MISMATCH: {topic}[{partition}] reads back {dash(found)}")
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
