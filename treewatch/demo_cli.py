"""``treewatch demo`` (what ``make demo`` runs): argument parsing and output only; the whole
bundle is run by localbundle/demo.py."""

from __future__ import annotations

import argparse
import logging
import sys

from treewatch.incident_cli import DEFAULT_CONTROL, control_address


def add_demo_command(sub: argparse._SubParsersAction) -> None:
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


def _demo(args: argparse.Namespace) -> int:
    from devkafka import KafkaStartError
    from localbundle.demo import DemoError, DemoOptions, run_demo
    from simulator import SimulatorError, WorkerStuck

    if args.log_level != "DEBUG":
        # The demo's own lines are the output; the clients' retries while Kafka warms up and
        # every health probe's request line are noise there.
        logging.getLogger("treewatch.kafka").setLevel(logging.ERROR)
        logging.getLogger("httpx").setLevel(logging.WARNING)
    scale = {"time_scale": args.time_scale} if args.time_scale is not None else {}
    # `treewatch incident` finds the demo's incident control at its default address.
    _host, control_port = control_address(DEFAULT_CONTROL)
    options = DemoOptions(duration_seconds=args.duration, files_per_project=args.files,
                          free_ports=args.free_ports, incident=args.incident, control_port=control_port, **scale)
    try:
        return run_demo(options, out=lambda line: print(line, flush=True))
    except (DemoError, KafkaStartError, SimulatorError, WorkerStuck) as error:
        print(f"treewatch demo: {error}", file=sys.stderr)
        return 1


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
