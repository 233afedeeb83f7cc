"""The ``treewatch`` command: argument parsing and output only; the work lives below."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from pipeline.config import ConfigError, load_config
from treewatch.incident_cli import DEFAULT_CONTROL, add_incident_commands, control_address
from treewatch.tools_cli import add_config_option, add_tool_commands


def _exporter(args: argparse.Namespace) -> int:
    from exporter.app import run_exporter

    config = load_config(args.config)
    run_exporter(config)
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from exporter.app import check_startable

    config = load_config(args.config)
    check_startable(config)  # what only trying tells: certificates, keys, passwords, librdkafka's view
    print(f"{config.source}: ok ({len(config.stages)} stages, {len(config.services)} services)")
    return 0


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


def _demo(args: argparse.Namespace) -> int:
    from devkafka import KafkaStartError
    from simulator import SimulatorError, WorkerStuck
    from treewatch.demo import DemoError, DemoOptions, run_demo

    if args.log_level != "DEBUG":
        # The demo's own lines are the output; the clients' retries while Kafka warms up and
        # every health probe's request line are noise there.
        logging.getLogger("treewatch.kafka").setLevel(logging.ERROR)
        logging.getLogger("httpx").setLevel(logging.WARNING)
    scale = {"time_scale": args.time_scale} if args.time_scale is not None else {}
    options = DemoOptions(duration_seconds=args.duration, files_per_project=args.files,
                          free_ports=args.free_ports, incident=args.incident, **scale)
    try:
        return run_demo(options, out=lambda line: print(line, flush=True))
    except (DemoError, KafkaStartError, SimulatorError, WorkerStuck) as error:
        print(f"treewatch demo: {error}", file=sys.stderr)
        return 1


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text}")
    return value


def _stage_delay(text: str) -> tuple[str, float]:
    from simulator import SIMULATED_STAGES

    stage, sep, seconds = text.partition("=")
    if not sep or stage not in SIMULATED_STAGES:
        stages = ", ".join(SIMULATED_STAGES)
        raise argparse.ArgumentTypeError(f"expected STAGE=SECONDS with STAGE one of {stages}")
    try:
        return stage, float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{seconds!r} is not a number of seconds") from None


def _time_scale(text: str) -> float:
    value = _positive(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a factor in (0, 1], got {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _add_simulator_commands(sub: argparse._SubParsersAction) -> None:
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

    demo = sub.add_parser("demo", help="run Kafka, the simulated pipeline, the exporter, Prometheus and "
                                       "Alertmanager locally through a short story of incidents (`make demo`)")
    demo.add_argument("--duration", type=_positive, metavar="SECONDS",
                      help="stop after this long (default: run until Ctrl-C)")
    demo.add_argument("--files", type=int, default=40, help="files per synthetic project (one every 2 s)")
    demo.add_argument("--incident", metavar="NAME",
                      help="play this incident of docs/incidents.md instead of the story (e.g. stage-stalled)")
    demo.add_argument("--time-scale", type=_time_scale, metavar="FACTOR",
                      help="multiply every alert duration by FACTOR (default: the demo's, printed when it starts)")
    demo.add_argument("--free-ports", action="store_true",
                      help="use free ports for everything instead of the guide's defaults")
    demo.set_defaults(run=_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="treewatch", description=__doc__)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    exporter = sub.add_parser("exporter", help="serve Prometheus metrics for the pipeline")
    add_config_option(exporter)
    exporter.set_defaults(run=_exporter)

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("--config", required=True)
    check.set_defaults(run=_check_config)

    _add_simulator_commands(sub)
    add_incident_commands(sub)
    add_tool_commands(sub)
    return parser


# What a shell reports for a writer whose reader went away (128 + SIGPIPE), as for `yes` in `yes | head -1`.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def main(argv: list[str] | None = None) -> None:
    """The command line; its exit status is the command's.

    Output cut short by its reader (``treewatch ... | head -1``) ends the command quietly with
    EXIT_BROKEN_PIPE, as other unix tools end: Python turns SIGPIPE into BrokenPipeError, which is
    caught here, and stdout is pointed at /dev/null so the interpreter's last flush at exit has
    nowhere to fail (the recipe of the Python docs, signal module, "Note on SIGPIPE").
    """
    try:
        try:
            code = _run(argv)
        finally:
            # Output still buffered is written now, inside this handler, not at interpreter exit.
            sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(EXIT_BROKEN_PIPE)
    sys.exit(code)


def _run(argv: list[str] | None) -> int:
    # --log-level is accepted before or after the subcommand: people type it where they think of it.
    log_level = argparse.ArgumentParser(prog="treewatch", add_help=False)
    log_level.add_argument("--log-level", type=str.upper, default="INFO",
                           choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    known, rest = log_level.parse_known_args(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(rest)
    args.log_level = known.log_level
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except ConfigError as error:
        print(f"treewatch: {error}", file=sys.stderr)
        return 2
