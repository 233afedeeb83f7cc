"""``treewatch status``: services' health, the Kafka cluster, lag per stage group and DLQ depth
(argument parsing and output only; tools/status.py gathers it)."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from pipeline.config import Config
from treewatch.tools_cli import add_config_option, add_retry_timeout, dash, deadline, guarded, indented, print_json


def add_status_command(sub: argparse._SubParsersAction) -> None:
    status = sub.add_parser("status", help="services' health, the Kafka cluster, lag per stage group and "
                                           "DLQ depth (exit 1 when something is unhealthy)")
    add_config_option(status)
    status.add_argument("--json", action="store_true", help="print one JSON document")
    add_retry_timeout(status)
    # Status reports an unreachable cluster itself, beside the services' health it still shows.
    status.set_defaults(run=guarded(_status, reach_cluster_first=False))


def _status(args: argparse.Namespace, config: Config) -> int:
    from tools.status import gather_status

    status = gather_status(config, deadline=deadline(args))
    problems = status.problems
    if args.json:
        print_json({**asdict(status), "problems": problems, "warnings": status.warnings})
        return 1 if problems else 0
    print("Services:")
    for s in status.services:
        state = s.status if s.success else f"DOWN ({s.failure_reason})"
        print(f"  {s.service:<20} {state:<28} {s.detail}")
    print("Kafka:")
    if status.cluster.error:
        print(indented(status.cluster.error, "  "))
    else:
        print(f"  cluster {status.cluster.cluster_id}, controller {dash(status.cluster.controller_id)}, "
              f"{len(status.cluster.brokers)} broker(s): {', '.join(status.cluster.brokers)}")
    print("Consumer lag (committed offset to high watermark, summed over partitions):")
    for g in status.groups:
        if g.error or not g.exists:
            print(f"  {g.stage:<10} {g.group:<32} {g.error or 'no such group: the stage has never committed'}")
            continue
        uncommitted = f", {g.partitions_without_commit} partition(s) never committed" \
            if g.partitions_without_commit else ""
        print(f"  {g.stage:<10} {g.group:<32} lag {dash(g.lag):>8}  {g.state}, {g.members} member(s){uncommitted}")
    print("Dead letter queues (records retained):")
    for d in status.dlqs:
        print(f"  {d.stage:<10} {d.topic:<50} {d.error or d.retained}")
    for line in status.warnings:
        print(f"WARNING: {line}")
    for line in problems:
        print(indented(f"UNHEALTHY: {line}", ""))
    print("status: " + ("UNHEALTHY" if problems else "OK"))
    return 1 if problems else 0
