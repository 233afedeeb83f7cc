"""``treewatch status``: services' health, the Kafka cluster, lag per stage group and DLQ depth
(argument parsing and output only; tools/status.py gathers it)."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import TYPE_CHECKING

from pipeline.config import Config
from treewatch.exit_codes import ExitCode
from treewatch.terminal import GREEN, RED, YELLOW, Cell, Column, paint, print_table
from treewatch.tools_cli import add_kafka_options, add_retry_timeout, dash, deadline, guarded, indented, print_json

if TYPE_CHECKING:
    from tools.status import GroupLag


def add_status_command(sub: argparse._SubParsersAction) -> None:
    status = sub.add_parser("status", help="services' health, the Kafka cluster, lag per stage group and "
                                           "DLQ depth (exit 1 when something is unhealthy)")
    add_kafka_options(status)
    status.add_argument("--json", action="store_true", help="print one JSON document")
    add_retry_timeout(status)
    # Status reports an unreachable cluster itself, beside the services' health it still shows.
    status.set_defaults(run=guarded(_status, reach_cluster_first=False))


def _status(args: argparse.Namespace, config: Config) -> int:
    from pipeline.health import HEALTHY
    from tools.status import gather_status

    status = gather_status(config, deadline=deadline(args))
    problems = status.problems
    if args.json:
        print_json({**asdict(status), "problems": problems, "warnings": status.warnings})
        return ExitCode.of(not problems)
    print("Services:")
    print_table([Column(shrink=True), Column(shrink=True), Column(shrink=True)], [
        (s.service, Cell(s.status, None if s.status == HEALTHY else YELLOW) if s.success
         else Cell(f"DOWN ({s.failure_reason})", RED), s.detail)
        for s in status.services])
    print("Kafka:")
    if status.cluster.error:
        print(paint(indented(status.cluster.error, "  "), RED))
    else:
        print(f"  cluster {status.cluster.cluster_id}, controller {dash(status.cluster.controller_id)}, "
              f"{len(status.cluster.brokers)} broker(s): {', '.join(status.cluster.brokers)}")
    print("Consumer lag (committed offset to high watermark, summed over partitions):")
    print_table([Column("stage"), Column("group", shrink=True), Column("lag", right=True),
                 Column("state", shrink=True)], [(g.stage, g.group, g.lag, _group_state(g)) for g in status.groups])
    print("Dead letter queues (records retained):")
    print_table([Column(), Column(shrink=True), Column(right=True)], [
        (d.stage, d.topic, Cell(d.error, RED) if d.error else Cell(str(d.retained), YELLOW if d.retained else None))
        for d in status.dlqs])
    for line in status.warnings:
        print(paint(f"WARNING: {line}", YELLOW))
    for line in problems:
        print(paint(indented(f"UNHEALTHY: {line}", ""), RED))
    print("status: " + (paint("UNHEALTHY", RED) if problems else paint("OK", GREEN)))
    return ExitCode.of(not problems)


def _group_state(g: GroupLag) -> Cell:
    if g.error:
        return Cell(g.error, RED)
    if not g.exists:
        return Cell("no such group: the stage has never committed", YELLOW)
    uncommitted = f", {g.partitions_without_commit} partition(s) never committed" if g.partitions_without_commit else ""
    return Cell(f"{g.state}, {g.members} member(s){uncommitted}", RED if g.lag and not g.members else None)
