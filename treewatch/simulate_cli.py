"""``treewatch simulate``: the stand-in for the pipeline's services, run until stopped (argument
parsing and output only; simulator/ is the stand-in)."""

from __future__ import annotations

import argparse
import sys

from pipeline.config import load_config
from treewatch.incident_cli import DEFAULT_CONTROL, control_address
from treewatch.tools_cli import add_config_option


def add_simulate_command(sub: argparse._SubParsersAction) -> None:
    simulate = sub.add_parser("simulate", help="run a stand-in for the pipeline's services (topics, consumer "
                                               "groups, DLQs, /health endpoints) with synthetic load")
    add_config_option(simulate)
    simulate.add_argument("--files", type=int, default=100, help="files per synthetic project (0: no load)")
    simulate.add_argument("--project-interval", type=float, default=60.0, metavar="SECONDS",
                          help="publish a new project this often (0: one project at start)")
    simulate.add_argument("--error-rate", type=_share, default=0.02,
                          help="share of stamping requests that fail into the DLQ (default 0.02)")
    simulate.add_argument("--delay", type=_stage_delay, action="append", default=[], metavar="STAGE=SECONDS",
                          help="processing time per request of a stage, e.g. index=0.01 (repeatable)")
    simulate.add_argument("--partitions", type=int, default=3, help="partitions of topics it creates")
    simulate.add_argument("--dlq-replication-factor", type=int, default=-1, metavar="N",
                          help="replicas of the DLQs it creates (default: the broker's; 1 makes a broker's "
                               "stop leave DLQ partitions without a leader)")
    simulate.add_argument("--bind-host", help="serve the health endpoints on this address instead of the "
                                              "URLs' host (0.0.0.0 in a container)")
    simulate.add_argument("--seed", type=int, help="seed for the random failures, for repeatable runs")
    simulate.add_argument("--control", nargs="?", const=control_address(DEFAULT_CONTROL), type=control_address,
                          metavar="HOST:PORT", help="serve the incident control there (default address "
                                                    f"{DEFAULT_CONTROL}), for `treewatch incident start|stop`")
    simulate.set_defaults(run=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    from simulator import SimulatorError, SimulatorSettings, StageBehaviour, WorkerStuck
    from simulator.app import run_simulator

    config = load_config(args.config)
    delays = dict(args.delay)
    stages = set(delays) | {"stamp"}
    behaviours = {stage: StageBehaviour(delay_seconds=delays.get(stage, 0.0),
                                        error_rate=args.error_rate if stage == "stamp" else 0.0)
                  for stage in stages}
    settings = SimulatorSettings(partitions=args.partitions, default_files_per_project=args.files,
                                 bind_host=args.bind_host, behaviours=behaviours, seed=args.seed,
                                 dlq_replication_factor=args.dlq_replication_factor)
    try:
        return run_simulator(config, settings, files_per_project=args.files,
                             project_interval_seconds=args.project_interval, control_address=args.control)
    except (SimulatorError, WorkerStuck) as error:
        print(f"treewatch simulate: {error}", file=sys.stderr)
        return 1


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text}")
    return value


def _stage_delay(text: str) -> tuple[str, float]:
    # The stage names are the configuration's, read later: the simulator refuses one it does not have.
    stage, sep, seconds = text.partition("=")
    if not sep or not stage:
        raise argparse.ArgumentTypeError("expected STAGE=SECONDS, a configured stage's name")
    try:
        return stage, float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{seconds!r} is not a number of seconds") from None
